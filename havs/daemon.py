"""The composition root: config in, cores decide, edges act.

One asyncio loop runs health probes and the IPVS reconciler; VRRP runs in a process of its own
(`VrrpProcess`) so that neither 10,000 probes a second, a garbage collection nor a large IPVS apply
can delay an advert.
The reconciler is level-triggered: every pass dumps the kernel's table, builds the desired one, diffs
and applies, so a stray `ipvsadm -C` is repaired on the next pass and a missed event heals itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from havs import __version__
from havs.configfile import load_view
from havs.core.desired import (
    Desired,
    HealthKey,
    Removals,
    ServerState,
    build_desired,
    ipvs_destination,
    service_key,
)
from havs.core.health import HealthChanged, server_name
from havs.core.ipvs_diff import AddDestination, EditDestination, EditService, Op, describe, diff, drift
from havs.core.ipvs_table import DestinationKey, IpvsTable
from havs.core.model import NodeView
from havs.edge.control import ControlServer
from havs.edge.ipvs import IpvsSocket
from havs.edge.sdnotify import SystemdNotifier
from havs.errors import ConfigError, HavsError, IpvsUnavailable
from havs.health_service import HealthService
from havs.log import LogFormat, resolve_format, setup_logging
from havs.vrrp import VrrpProcess

if TYPE_CHECKING:
    from havs.metrics import Metrics

Log = structlog.stdlib.BoundLogger


class Reconciler:
    """Keeps the kernel's IPVS table equal to the desired one, one pass at a time."""

    def __init__(self, ipvs: IpvsSocket, log: Log) -> None:
        self.ipvs = ipvs
        self.log = log
        self.removals = Removals()
        self.passes = 0
        self.ops_applied = 0
        self.failures = 0
        self.drift_repairs = 0
        self.last_actual: IpvsTable | None = None

    async def run_pass(self, desired: Desired, *, now: float, drain_timeout: float, purge_unmanaged: bool,
                       expected: IpvsTable | None) -> IpvsTable:
        """One dump → diff → apply. `expected` is what the previous pass left; a difference from it that
        havs did not make is drift and is logged as such. Returns the table the kernel should now hold."""
        actual = await self.ipvs.dump()
        self.last_actual = actual
        target = self.removals.apply(desired, actual, now, drain_timeout)
        ops = diff(actual, target.table, managed=set(target.managed), purge_unmanaged=purge_unmanaged)
        self.passes += 1
        if not ops:
            return target.table
        if expected is not None:
            # What the kernel holds differs from what the last pass left there: someone else changed it.
            drifted = drift(actual, expected, managed=target.managed)
            if drifted:
                self.drift_repairs += 1
                self.log.warning("ipvs.drift", differences=drifted[:20], count=len(drifted))
        results = await self.ipvs.apply(ops)
        for op, error in results:
            if error is None:
                self.ops_applied += 1
                self.log.info("ipvs.apply", **_op_fields(op))
            else:
                self.failures += 1
                self.log.error("ipvs.apply_failed", **_op_fields(op), error=str(error), errno=error.errno)
        return target.table


def _op_fields(op: Op) -> dict[str, object]:
    fields: dict[str, object] = {"op": type(op).__name__, "target": op.target}
    if isinstance(op, EditService | EditDestination):
        fields["change"] = describe(op).split(": ", 1)[-1]
    dest = getattr(op, "destination", None)
    if isinstance(op, AddDestination) and dest is not None:
        fields["weight"] = dest.weight
        fields["forwarding"] = dest.forwarding
    return fields


class Daemon:
    def __init__(self, config_path: str, node_name: str | None, log: Log, log_format: str = "json") -> None:
        self.config_path = config_path
        self.log_format = log_format  # the VRRP process logs the same way
        self.node_name = node_name
        self.log = log
        self.view: NodeView = self._load()
        self.notifier = SystemdNotifier()
        self.ramp_from: dict[HealthKey, float] = {}  # when a server came back from down (slow start)
        self.drained: set[HealthKey] = set()
        self.desired: Desired | None = None
        self.expected: IpvsTable | None = None
        self.wake = asyncio.Event()
        self.stopping = asyncio.Event()
        self.reload_requested = False
        self.reconciler: Reconciler | None = None
        self.health_service: HealthService | None = None
        self.vrrp: VrrpProcess | None = None
        self.control: ControlServer | None = None
        self.metrics: Metrics | None = None
        self.started = time.monotonic()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def _load(self) -> NodeView:
        return load_view(self.config_path, self.node_name)

    # ------------------------------------------------------------------ events from the health checks
    def on_health_change(self, change: HealthChanged) -> None:
        key = (change.service, change.server)
        if change.to == "up" and change.from_ == "down":
            self.ramp_from[key] = change.at  # a recovered server ramps up; a first verdict does not
        self.wake.set()

    def health(self) -> dict[HealthKey, ServerState]:
        """The health checks' current verdicts, as the desired-table builder takes them."""
        if self.health_service is None:
            return {}
        return {
            key: ServerState(up=h.is_up, since_up=self.ramp_from.get(key, float("-inf")),
                             agent_fraction=h.agent_weight)
            for key, h in self.health_service.states().items()
        }

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> int:
        loop = self.loop = asyncio.get_running_loop()
        cfg = self.view.config
        self.log.info("config.loaded", file=self.config_path, node=self.view.name,
                      services=len(cfg.virtual_services),
                      real_servers=sum(len(vs.real_servers) for vs in cfg.virtual_services),
                      vrrp=cfg.vrrp is not None)
        for sig, handler in ((signal.SIGTERM, self._request_stop), (signal.SIGINT, self._request_stop),
                             (signal.SIGHUP, self._request_reload)):
            loop.add_signal_handler(sig, handler)
        self._load_drained()
        self._start_metrics()
        if cfg.vrrp is not None:
            self.vrrp = VrrpProcess(self.view, log=self.log, log_format=self.log_format,
                                    on_state=self._on_vrrp_state)
            self.vrrp.spawn()  # it imports while we program IPVS; it starts announcing only after that
        if cfg.virtual_services or cfg.settings.purge_unmanaged:
            try:
                ipvs = IpvsSocket()
                await ipvs.open()
            except IpvsUnavailable as e:
                self.log.error("ipvs.unavailable", error=str(e))
                if self.vrrp is not None:
                    self.vrrp.stop(graceful=False)
                return 1
            self.reconciler = Reconciler(ipvs, self.log)
            # Servers start as up (keepalived's default): a restarted daemon must not pull healthy servers
            # out of a live table while it waits for `rise` checks; a dead one is out after `fall`.
            self.health_service = HealthService(cfg.virtual_services, log=self.log, on_change=self.on_health_change,
                                                on_agent_weight=lambda _change: self.wake.set(), initial="up",
                                                on_result=self.metrics.observe_probe if self.metrics else None)
            self.health_service.start()
            await self._reconcile()  # READY only once the kernel holds the configured table
        if cfg.vrrp is not None:
            if cfg.vrrp.connection_sync is not None:
                await self._sync_connections("BACKUP")  # every director starts as a backup
            assert self.vrrp is not None
            try:
                await loop.run_in_executor(None, self.vrrp.start)
            except RuntimeError as e:
                self.log.error("vrrp.unavailable", error=str(e))
                return 1
        self.control = ControlServer(cfg.settings.control_socket, self.handle_request)
        try:
            await self.control.start()
        except OSError as e:
            self.log.error("control.unavailable", path=cfg.settings.control_socket, error=str(e))
            self.control = None
        self.notifier.notify("READY=1", "STATUS=running")
        self.log.info("daemon.ready", node=self.view.name, pid=os.getpid())
        watchdog = asyncio.create_task(self._watchdog()) if self.notifier.watchdog_interval() else None
        try:
            await self._main_loop()
        finally:
            self.notifier.notify("STOPPING=1")
            self.log.info("daemon.stopping")
            if watchdog:
                watchdog.cancel()
            if self.control is not None:
                await self.control.stop()
            if self.vrrp is not None:
                await loop.run_in_executor(None, self.vrrp.stop, True)
            if self.health_service is not None:
                await self.health_service.stop()
            self.log.info("daemon.stopped")
        return 0

    async def _main_loop(self) -> None:
        interval = self.view.config.settings.reconcile_interval
        while not self.stopping.is_set():
            timeout = interval
            if self.desired is not None and self.desired.next_change is not None:
                timeout = max(0.0, min(timeout, self.desired.next_change - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout)
            self.wake.clear()
            if self.stopping.is_set():
                break
            if self.reload_requested:
                self.reload_requested = False
                await self._reload()
            if self.reconciler is not None:
                await self._reconcile()

    async def _reconcile(self) -> None:
        assert self.reconciler is not None
        cfg = self.view.config
        now = time.monotonic()
        self.desired = build_desired(cfg, self.health(), frozenset(self.drained), now)
        try:
            self.expected = await self.reconciler.run_pass(
                self.desired, now=now, drain_timeout=cfg.settings.drain_timeout,
                purge_unmanaged=cfg.settings.purge_unmanaged, expected=self.expected)
        except HavsError as e:
            self.log.error("ipvs.pass_failed", error=str(e))
            return
        if self.vrrp is not None:
            self.vrrp.set_priority_decrement(self.desired.priority_decrement)

    async def _reload(self) -> None:
        self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            # A large file takes seconds to parse: on a worker thread, probes and passes keep running.
            view = await asyncio.get_running_loop().run_in_executor(None, self._load)
        except ConfigError as e:
            self.log.error("config.reload_failed", file=self.config_path,
                           problems=[str(p) for p in e.problems], kept="running config")
            self.notifier.notify("READY=1", "STATUS=reload failed; running config kept")
            return
        old_desired = self.desired
        old = self.view
        self.view = view
        if self.health_service is not None:
            self.health_service.update(view.config.virtual_services)
        if self.reconciler is not None and old_desired is not None:
            self.reconciler.removals.retire(old_desired, build_desired(view.config, self.health()))
        if view.config.vrrp != old.config.vrrp or view.node != old.node:
            await self._reload_vrrp(view)
        self.log.info("config.reloaded", file=self.config_path, services=len(view.config.virtual_services))
        self.notifier.notify("READY=1", "STATUS=running")

    async def _reload_vrrp(self, view: NodeView) -> None:
        """Tunables change in place (no state change, no advert gap); a new identity needs a new instance."""
        loop = asyncio.get_running_loop()
        if self.vrrp is not None and await loop.run_in_executor(None, self.vrrp.update, view):
            return
        if self.vrrp is not None:
            self.log.info("config.vrrp_changed", action="restart")
            await loop.run_in_executor(None, self.vrrp.stop, True)
            self.vrrp = None
        if view.config.vrrp is not None:
            self.vrrp = VrrpProcess(view, log=self.log, log_format=self.log_format, on_state=self._on_vrrp_state)
            try:
                await loop.run_in_executor(None, self.vrrp.start)
            except RuntimeError as e:
                self.log.error("vrrp.unavailable", error=str(e))
                self.vrrp = None

    def _start_metrics(self) -> None:
        listen = self.view.config.settings.metrics_listen
        if not listen:
            return
        from havs.metrics import Metrics  # only when asked for: it starts a thread

        self.metrics = Metrics(self.snapshot_threadsafe,
                               lambda: self.reconciler.last_actual if self.reconciler else None)
        try:
            self.metrics.serve(listen)
        except OSError as e:
            self.log.error("metrics.unavailable", listen=listen, error=str(e))
            self.metrics = None
            return
        self.log.info("metrics.listening", listen=listen)

    def snapshot_threadsafe(self) -> dict[str, Any]:
        """The snapshot, taken on the daemon's loop for a caller on another thread (the metrics server)."""
        assert self.loop is not None

        async def take() -> dict[str, Any]:
            return self.snapshot()

        return asyncio.run_coroutine_threadsafe(take(), self.loop).result(timeout=5)

    def _on_vrrp_state(self, from_: str, to: str, reason: str) -> None:
        # Called on the VRRP thread: hand over to the main loop, never block the heartbeat.
        self.notifier.notify(f"STATUS=VRRP {to}")
        if self.metrics is not None:
            self.metrics.vrrp_transitions.labels(to).inc()
        if self.loop is not None and self.view.config.vrrp and self.view.config.vrrp.connection_sync:
            self.loop.call_soon_threadsafe(self._schedule_sync, to)

    def _schedule_sync(self, state: str) -> None:
        task = asyncio.ensure_future(self._sync_connections(state))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sync_connections(self, vrrp_state: str) -> None:
        """Run the kernel's connection-sync threads as the config and the VRRP state say."""
        vrrp = self.view.config.vrrp
        if self.reconciler is None or vrrp is None or vrrp.connection_sync is None:
            return
        sync = vrrp.connection_sync
        ifname = self.view.ifname(sync.interface)
        wanted = {"master", "backup"} if sync.mode == "both" else (
            {"master"} if vrrp_state == "MASTER" else {"backup"})
        ipvs = self.reconciler.ipvs
        try:
            running = {d.state: d for d in await ipvs.daemons()}
            for state in ("master", "backup"):
                have = running.get(state)
                ok = have is not None and have.ifname == ifname and have.syncid == sync.sync_id
                if have is not None and (state not in wanted or not ok):
                    await ipvs.stop_daemon(state)  # type: ignore[arg-type]
                    self.log.info("ipvs.sync_daemon", action="stop", state=state, interface=have.ifname)
                if state in wanted and not ok:
                    await ipvs.start_daemon(state, ifname, sync.sync_id)  # type: ignore[arg-type]
                    self.log.info("ipvs.sync_daemon", action="start", state=state, interface=ifname,
                                  sync_id=sync.sync_id, vrrp=vrrp_state)
        except OSError as e:
            self.log.error("ipvs.sync_daemon_failed", error=str(e), interface=ifname)

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval() or 1.0
        while True:
            await asyncio.sleep(interval)
            # Only while the heartbeat is alive: a wedged VRRP thread must get us restarted.
            if self.vrrp is None or self.vrrp.alive():
                self.notifier.notify("WATCHDOG=1")

    def _request_stop(self) -> None:
        self.log.info("daemon.signal", signal="TERM")
        self.stopping.set()
        self.wake.set()

    def _request_reload(self) -> None:
        self.log.info("daemon.signal", signal="HUP")
        self.reload_requested = True
        self.wake.set()

    # ------------------------------------------------------------------ the control socket
    async def handle_request(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request.get("command")
        if command == "status":
            return {"ok": True, "status": self.snapshot()}
        if command == "reload":
            self._request_reload()
            return {"ok": True}
        if command in ("drain", "enable"):
            server = str(request.get("server", ""))
            matches = [key for key in self._server_keys() if server in (key[1], key[1].rsplit(":", 1)[0])
                       and request.get("service") in (None, key[0])]
            if not matches:
                return {"ok": False, "error": f"no real server {server!r} in the config"}
            for key in matches:
                self.set_drained(key, command == "drain")
                self.log.info("health.maintenance", service=key[0], server=key[1], drained=command == "drain")
            return {"ok": True, "servers": [f"{s} {r}" for s, r in matches]}
        return {"ok": False, "error": f"unknown command {command!r}"}

    def _server_keys(self) -> list[HealthKey]:
        return [(vs.name, server_name(rs.address, vs.real_server_port(rs)))
                for vs in self.view.config.virtual_services for rs in vs.real_servers]

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        health = self.health_service.snapshot() if self.health_service else {}
        actual = self.reconciler.last_actual if self.reconciler else None
        table = self.desired.table if self.desired else None
        services = []
        for vs in self.view.config.virtual_services:
            skey = service_key(vs)
            servers = []
            for rs in vs.real_servers:
                name = server_name(rs.address, vs.real_server_port(rs))
                h = health.get(vs.name, {}).get(name, {})
                dkey = DestinationKey(str(rs.address), vs.real_server_port(rs))
                in_table = table[skey].destinations.get(dkey) if table and skey in table else None
                stats = actual.destination_stats(skey, dkey) if actual is not None else None
                servers.append({
                    "server": name, "forwarding": ipvs_destination(vs, rs, 0).forwarding,
                    "configured_weight": rs.weight, "effective_weight": in_table.weight if in_table else None,
                    "health": h.get("state", "unchecked"), "last_result": h.get("reason"),
                    "latency_ms": h.get("latency_ms"), "drained": (vs.name, name) in self.drained,
                    "active_conns": stats.active_conns if stats else None,
                    "inactive_conns": stats.inactive_conns if stats else None,
                })
            services.append({
                "name": vs.name, "scheduler": vs.scheduler, "real_servers": servers,
                "quorum": self.desired is None or vs.name not in self.desired.quorum_lost,
            })
        vrrp = self.vrrp.snapshot() if self.vrrp else None
        if vrrp is not None and isinstance(vrrp.get("since"), float):
            vrrp["since_ago"] = now - vrrp["since"]
        rec = self.reconciler
        return {
            "version": __version__, "node": self.view.name, "pid": os.getpid(), "uptime": now - self.started,
            "config_file": self.config_path, "vrrp": vrrp, "services": services,
            "reconciler": {"passes": rec.passes, "ops_applied": rec.ops_applied, "failures": rec.failures,
                           "drift_repairs": rec.drift_repairs} if rec else None,
            "draining": [{"service": str(s), "server": str(d), "left": t - now}
                         for s, d, t in (rec.removals.draining() if rec else [])],
        }

    # ------------------------------------------------------------------ maintenance drains
    def _drained_file(self) -> Path:
        return Path(self.view.config.settings.state_dir) / "drained.json"

    def _load_drained(self) -> None:
        try:
            data = json.loads(self._drained_file().read_text())
            self.drained = {(str(s), str(r)) for s, r in data}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError) as e:
            self.log.warning("state.unreadable", file=str(self._drained_file()), error=str(e))

    def set_drained(self, key: HealthKey, drained: bool) -> None:
        (self.drained.add if drained else self.drained.discard)(key)
        path = self._drained_file()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(sorted(self.drained)))
            tmp.replace(path)
        except OSError as e:
            self.log.error("state.write_failed", file=str(path), error=str(e))
        self.wake.set()


def _raise_open_files_limit() -> None:
    """One kept-alive probe connection per real server: the default soft limit (1024) is too small."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_daemon(config_path: str, node: str | None, *, log_format: LogFormat = "auto",
               log_level: str = "info") -> int:
    log = setup_logging(log_format, node=node, level=log_level)
    _raise_open_files_limit()

    async def main() -> int:
        daemon = Daemon(config_path, node, log, resolve_format(log_format, sys.stdout))
        daemon.log = log.bind(node=daemon.view.name)
        return await daemon.run()

    try:
        return asyncio.run(main())
    except ConfigError as e:
        for problem in e.problems:
            log.error("config.invalid", problem=str(problem))
        return 1
