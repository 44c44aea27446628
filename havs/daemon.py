"""The composition root: config in, the controller (`havs.core.controller`) decides, edges act.

One asyncio loop runs health probes and the reconcile pass (`havs.reconcile`); VRRP runs in a process of
its own so no probe, GC or IPVS apply can delay an advert. This module wires them and owns the lifecycle.
It ends only on a stop request or an unrecoverable start error, and then still stops VRRP gracefully.
See docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

import structlog

from havs import __version__
from havs.configfile import load_view
from havs.core.controller import Controller, MaintenanceRequest, ReloadRequest, RequestError, needs_ipvs, parse_request
from havs.core.desired import RealServerKey
from havs.core.health import HealthChanged
from havs.core.model import NodeView
from havs.core.status import StatusSnapshot
from havs.drains import load_drained, save_drained
from havs.edge.control import ControlServer
from havs.edge.ipvs import IpvsSocket
from havs.edge.sdnotify import SystemdNotifier
from havs.errors import ConfigError, HavsError
from havs.health_service import HealthService
from havs.log import LogFormat, resolve_format, setup_logging
from havs.reconcile import Reconciler
from havs.startup import EarlySignals, StartError, raise_open_files_limit, take_lock, watchdog
from havs.vrrp_supervisor import VrrpSupervisor, in_thread

if TYPE_CHECKING:
    from havs.metrics import Metrics

Log = structlog.stdlib.BoundLogger


class Daemon:
    def __init__(self, config_path: str, node_name: str | None, log: Log, log_format: str = "json",
                 early: EarlySignals | None = None) -> None:
        self.config_path, self.node_name, self.log = config_path, node_name, log
        self.early = early
        self.view: NodeView = load_view(config_path, node_name)
        self.controller = Controller(self.view)
        self.notifier = SystemdNotifier()
        self.wake, self.stopping = asyncio.Event(), asyncio.Event()
        self.reload_pending: bool | None = None  # None: no reload asked for; else whether it is forced
        self.reconciler: Reconciler | None = None
        self.health: HealthService | None = None
        self.vrrp = VrrpSupervisor(self.controller, log=log, log_format=log_format, on_state=self._on_vrrp_state)
        self.control: ControlServer | None = None
        self.metrics: Metrics | None = None
        self.started = time.monotonic()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._ready = False

    @property
    def drained(self) -> set[RealServerKey]:
        return self.controller.drained

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        self._install_signals()  # first: a SIGHUP during start is queued, a SIGTERM honoured
        try:
            lock = take_lock(self.view.config.settings.control_socket, self.log)
        except StartError:
            return 1  # another daemon holds the node: touch nothing of its
        try:
            await self._start()
            await self._main_loop()
            return 0
        except StartError:
            return 1
        finally:
            await self._shutdown()
            lock.release()

    async def _start(self) -> None:
        cfg = self.view.config
        self.log.info("config.loaded", file=self.config_path, node=self.view.name, services=len(cfg.virtual_services),
                      real_servers=sum(len(vs.real_servers) for vs in cfg.virtual_services), vrrp=cfg.vrrp is not None)
        self._load_drained()
        if cfg.settings.metrics_listen:
            from havs.metrics import serve_metrics  # only when asked for: it starts a thread

            self.metrics = serve_metrics(cfg.settings.metrics_listen, self.loop, self.snapshot,
                                         lambda: self.reconciler.last_actual if self.reconciler else None, self.log)
        if cfg.vrrp is not None:
            self.vrrp.spawn(self.view)
        if needs_ipvs(cfg):
            if not await self._ensure_ipvs(cfg.settings.initial_health):
                raise StartError
            await self._reconcile()  # READY only once the kernel holds the configured table
        if self.vrrp.process is not None and not self.stopping.is_set():
            await self._sync_connections("BACKUP")  # every director starts as a backup
            if not await self.vrrp.start():
                raise StartError
        self.control = ControlServer(cfg.settings.control_socket, self.handle_request)
        try:
            await self.control.start()
        except (OSError, HavsError) as e:
            self.log.error("control.unavailable", path=cfg.settings.control_socket, error=str(e))
            self.control = None
        self.notifier.notify("READY=1", "STATUS=running")
        self.log.info("daemon.ready", node=self.view.name, pid=os.getpid())
        self._ready = True
        if self.notifier.watchdog_interval():
            # only while the heartbeat is alive: a wedged VRRP process must get us restarted
            self._spawn(watchdog(self.notifier, lambda: self.vrrp.process is None or self.vrrp.process.alive()))

    async def _shutdown(self) -> None:
        ready = self._ready  # a failed start was said once (its error event): nothing more to say
        self.notifier.notify("STOPPING=1")
        if ready:
            self.log.info("daemon.stopping")
        for task in list(self._tasks):
            task.cancel()
        if self.control is not None:
            await self.control.stop()
        await self.vrrp.stop()  # gracefully, whatever ended the run: priority 0, addresses released
        if self.health is not None:
            await self.health.stop()
        if ready:
            self.log.info("daemon.stopped")

    async def _ensure_ipvs(self, initial: str) -> bool:
        """The reconciler and the health checks, made when the first config with services arrives."""
        if self.reconciler is not None:
            return True
        ipvs = IpvsSocket()
        try:
            await ipvs.open()
        except (HavsError, OSError) as e:
            self.log.error("ipvs.unavailable", error=str(e))
            return False
        self.reconciler = Reconciler(ipvs, self.log)
        self.health = HealthService(self.view.config.virtual_services, log=self.log, on_change=self.on_health_change,
                                    on_agent_weight=lambda _change: self.wake.set(), initial=initial,  # type: ignore[arg-type]
                                    on_result=self.metrics.observe_probe if self.metrics else None)
        self.health.start()
        return True

    async def _main_loop(self) -> None:
        interval = self.view.config.settings.reconcile_interval
        while not self.stopping.is_set():
            desired = self.controller.desired
            timeout = interval if desired is None or desired.next_change is None else \
                max(0.0, min(interval, desired.next_change - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout)
            self.wake.clear()
            if self.stopping.is_set():
                break
            try:
                if self.reload_pending is not None:
                    force, self.reload_pending = self.reload_pending, None
                    await self._reload(force)
                if self.reconciler is not None:
                    await self._reconcile()
            except Exception as e:  # only a stop ends the daemon; the next round retries
                self.log.exception("daemon.error", error=str(e), error_type=type(e).__name__)

    async def _reconcile(self) -> None:
        assert self.reconciler is not None
        settings, now = self.view.config.settings, time.monotonic()
        desired = self.controller.plan(self.health.states() if self.health else {}, now)
        await self.reconciler.run_pass(desired, now=now, removals=self.controller.removals,
                                       drain_timeout=settings.drain_timeout, purge_unmanaged=settings.purge_unmanaged)
        if self.vrrp.process is not None:
            self.vrrp.process.set_priority_decrement(desired.priority_decrement)

    # ------------------------------------------------------------------ reload
    async def _reload(self, force: bool) -> None:
        self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:  # parsing a large file takes seconds: on a worker thread, probes and passes keep running
            view = await in_thread(load_view, self.config_path, self.node_name)
        except ConfigError as e:
            self.log.error("config.reload_failed", file=self.config_path, problems=[str(p) for p in e.problems],
                           kept="running config")
            self.notifier.notify("READY=1", "STATUS=reload failed; running config kept")
            return
        from havs.core.reload_guard import judge

        reasons = self.controller.review_reload(view, judge)
        if reasons and not force:
            self.log.error("config.reload_refused", file=self.config_path, reasons=reasons, kept="running config",
                           override="havs reload --force")
            self.notifier.notify("READY=1", "STATUS=reload refused; running config kept")
            return
        if reasons:
            self.log.warning("config.reload_forced", file=self.config_path, reasons=reasons)
        plan = self.controller.reload(view, self.health.states() if self.health else {})
        self.view = view
        if self.health is not None:
            self.health.update(view.config.virtual_services)
        if plan.needs_ipvs:
            await self._ensure_ipvs("down")  # servers added by a reload earn their place with `rise` checks
        vrrp = await self.vrrp.apply(view) if plan.vrrp_changed else "unchanged"
        self.log.info("config.reloaded", file=self.config_path, services=len(view.config.virtual_services),
                      added=len(plan.added), removed=len(plan.removed), vrrp=vrrp, forced=bool(reasons))
        self.notifier.notify("READY=1", "STATUS=running")

    # ------------------------------------------------------------------ events
    def on_health_change(self, change: HealthChanged) -> None:
        self.controller.health_changed(change)
        self.wake.set()

    def _on_vrrp_state(self, from_: str, to: str, reason: str) -> None:
        # any thread: hand over to the main loop, never block the heartbeat
        self.notifier.notify(f"STATUS=VRRP {to}")
        if self.metrics is not None:
            self.metrics.vrrp_transitions.labels(to).inc()
        if self.loop is not None:
            self.loop.call_soon_threadsafe(lambda: self._spawn(self._sync_connections(to)))

    async def _sync_connections(self, vrrp_state: str) -> None:
        vrrp = self.view.config.vrrp
        if self.reconciler is not None and vrrp is not None and vrrp.connection_sync is not None:
            await self.reconciler.sync_daemons(lambda running: self.controller.sync_actions(vrrp_state, running))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _install_signals(self) -> None:
        assert self.loop is not None
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self.loop.add_signal_handler(sig, self._on_signal, sig)
        for sig in self.early.take() if self.early else ():
            self._on_signal(sig)

    def _on_signal(self, sig: int) -> None:
        if sig == signal.SIGHUP:
            self._request_reload(False)  # a signal is never a forced reload
        else:
            self.stopping.set()  # before logging: a log that fails must not cost the stop
            self.wake.set()
        self.log.info("daemon.signal", signal=signal.Signals(sig).name.removeprefix("SIG"))

    def _request_reload(self, force: bool) -> None:
        self.reload_pending = bool(self.reload_pending) or force
        self.wake.set()

    # ------------------------------------------------------------------ control socket, status, metrics
    async def handle_request(self, raw: dict[str, Any]) -> dict[str, Any]:
        try:
            request = parse_request(raw)
        except RequestError as e:
            return {"ok": False, "error": str(e)}
        if isinstance(request, ReloadRequest):
            self._request_reload(request.force)
            return {"ok": True, "force": request.force}
        if isinstance(request, MaintenanceRequest):
            reply, changed = self.controller.maintenance(request)
            for key in changed:
                self.log.info("health.maintenance", service=key.service, server=key.server, drained=request.drain)
            if changed:
                self._save_drained()
                self.wake.set()
            return reply
        return {"ok": True, "status": self.snapshot().to_dict()}

    def snapshot(self) -> StatusSnapshot:
        """Never waits: VRRP's part is the snapshot its process last pushed."""
        rec = self.reconciler
        return self.controller.status(
            now=time.monotonic(), version=__version__, pid=os.getpid(), started=self.started,
            config_file=self.config_path, health=self.health.snapshot() if self.health else None,
            vrrp=self.vrrp.process.snapshot() if self.vrrp.process else None,
            reconciler=rec.counters() if rec else None, actual=rec.last_actual if rec else None,
            draining=self.controller.removals.draining())

    # ------------------------------------------------------------------ maintenance drains, kept across restarts
    def _load_drained(self) -> None:
        self.controller.drained = load_drained(self.view.config.settings.state_dir, self.log)

    def _save_drained(self) -> None:
        save_drained(self.view.config.settings.state_dir, self.controller.drained, self.log)


def run_daemon(config_path: str, node: str | None, *, log_format: LogFormat = "auto", log_level: str = "info",
               early: EarlySignals | None = None) -> int:
    early = early or EarlySignals.install()
    log = setup_logging(log_format, node=node, level=log_level)
    raise_open_files_limit()

    async def main() -> int:
        daemon = Daemon(config_path, node, log, resolve_format(log_format, sys.stdout), early)
        daemon.log = log.bind(node=daemon.view.name)
        return await daemon.run()

    try:
        return asyncio.run(main())
    except ConfigError as e:
        for problem in e.problems:
            log.error("config.invalid", problem=str(problem))
        return 1
