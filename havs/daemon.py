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
import time
from typing import Any

from structlog.stdlib import BoundLogger as Log

from havs import __version__
from havs.bgp import BgpSupervisor
from havs.configfile import load_view
from havs.control_shell import ControlShell
from havs.core.controller import Controller, needs_ipvs
from havs.core.health import HealthChanged
from havs.core.model import NodeView
from havs.core.status import StatusSnapshot
from havs.edge.ipvs import IpvsSocket
from havs.edge.sdnotify import SystemdNotifier
from havs.health_service import HealthService
from havs.reconcile import IpvsSide
from havs.reload_reader import read_reload
from havs.startup import EarlySignals, StartError, install_signals, take_lock, watchdog
from havs.vrrp import VrrpProcess
from havs.vrrp_supervisor import VrrpSupervisor


class Daemon:
    def __init__(self, config_path: str, node_name: str | None, log: Log, log_format: str = "json",
                 early: EarlySignals | None = None) -> None:
        self.config_path, self.node_name, self.early = config_path, node_name, early
        self.view: NodeView = load_view(config_path, node_name)
        self.log = log = log.bind(node=self.view.name)  # before any shell takes it
        self.controller = Controller(self.view)
        self.notifier = SystemdNotifier()
        self.wake, self.stopping = asyncio.Event(), asyncio.Event()
        self.reload_pending: bool | None = None  # None: no reload asked for; else whether it is forced
        self.ipvs = IpvsSide(self.controller, log, lambda: IpvsSocket())
        self.health: HealthService | None = None
        self.bgp = BgpSupervisor(log)  # announce: bgp services; each pass feeds it (docs/scaleout.md)
        self.vrrp = VrrpSupervisor(self.controller, VrrpProcess, log=log, log_format=log_format,
                                   on_state=self._on_vrrp_state)
        self.control = ControlShell(self.controller, log, on_reload=self._request_reload, on_change=self.wake.set,
                                    snapshot=self.snapshot)
        self.metrics: Any = None  # havs.metrics.Metrics, when settings.metrics_listen asks for it
        self.started, self._ready = time.monotonic(), False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        install_signals(self.loop, self.early, self._on_signal)  # first: start queues a SIGHUP, honours a SIGTERM
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
        except Exception as e:  # a bug at start: said as an event, never a traceback to the operator
            self.log.exception("daemon.start_failed", error=str(e), error_type=type(e).__name__)
            return 1
        finally:
            await self._shutdown()
            lock.release()

    async def _start(self) -> None:
        cfg = self.view.config
        self.log.info("config.loaded", file=self.config_path, node=self.view.name, services=len(cfg.virtual_services),
                      real_servers=sum(len(vs.real_servers) for vs in cfg.virtual_services),
                      vrrp=[v.name for v in cfg.vrrp])
        self.control.load_drained()
        if cfg.settings.metrics_listen:
            from havs.metrics import serve_metrics  # only when asked for: it starts a thread

            self.metrics = serve_metrics(cfg.settings.metrics_listen, self.loop, self.snapshot,  # type: ignore[arg-type]
                                         lambda: self.ipvs.last_actual, self.log, failback=self.vrrp.failback.status)
        if cfg.vrrp and not self.vrrp.spawn(self.view):
            raise StartError
        if needs_ipvs(cfg):
            if not await self._open_ipvs(cfg.settings.initial_health):
                raise StartError
            await self._pass()  # READY only once the kernel holds the configured table
        if self.vrrp.process is not None and not self.stopping.is_set():
            await self.ipvs.sync_connections()  # every director starts as a backup
            if not await self.vrrp.start():
                raise StartError
        if self.stopping.is_set():
            return  # stopped while starting: never READY
        await self.control.start()
        self.notifier.notify("READY=1", "STATUS=running")
        self.log.info("daemon.ready", node=self.view.name, pid=os.getpid())
        self._ready = True
        if self.notifier.watchdog_interval():
            # only while the heartbeat is alive: a wedged VRRP process must get us restarted
            self._spawn(watchdog(self.notifier, self.vrrp.alive))

    async def _shutdown(self) -> None:
        ready = self._ready  # a failed start was said once (its error event): nothing more to say
        self.notifier.notify("STOPPING=1")
        if ready:
            self.log.info("daemon.stopping")
        for task in list(self._tasks):
            task.cancel()
        # each step whatever the one before did (VRRP must release its addresses); BGP withdraws first
        health = [("health", self.health.stop)] if self.health is not None else []
        for name, step in [("bgp", self.bgp.stop), ("control", self.control.stop), ("vrrp", self.vrrp.stop), *health]:
            try:
                await step()
            except Exception as e:
                self.log.error("daemon.stop_failed", step=name, error=str(e), error_type=type(e).__name__)
        if ready:
            self.log.info("daemon.stopped")

    async def _open_ipvs(self, initial: str | None) -> bool:
        """The IPVS side and the health checks, made when the first config that needs IPVS arrives; by a
        reload (`initial` None) they start empty and the reload's update() adds servers as new: down, checked
        at once."""
        if self.health is not None or not await self.ipvs.open():
            return self.health is not None
        services = self.view.config.virtual_services if initial is not None else []
        self.health = HealthService(services, log=self.log, on_change=self.on_health_change,
                                    on_agent_weight=lambda _change: self.wake.set(), initial=initial or "down",  # type: ignore[arg-type]
                                    on_result=self.metrics.observe_probe if self.metrics else None,
                                    max_in_flight=self.view.config.settings.health_max_in_flight)
        self.health.start()
        if self.metrics is not None:
            self.metrics.health_counters = lambda: (self.health.overload_checks, self.health.inconclusive_checks)  # type: ignore[union-attr]
        return True

    async def _main_loop(self) -> None:
        while not self.stopping.is_set():
            desired, interval = self.controller.desired, self.view.config.settings.reconcile_interval  # reloadable
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
                await self._pass()
            except Exception as e:  # only a stop ends the daemon; the next round retries
                self.log.exception("daemon.error", error=str(e), error_type=type(e).__name__)

    async def _pass(self) -> None:  # the priority decrement follows each pass's quorum
        desired = await self.ipvs.run_pass(self.health.states() if self.health else {})
        self.bgp.feed(self.view, desired, self.ipvs)
        if desired is not None:
            self.vrrp.set_decrement(desired.priority_decrement)  # per instance

    async def _reload(self, force: bool) -> None:
        self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        status = "reload failed; see the log"
        try:  # the control shell answers `havs reload` with the outcome
            status = await self.control.reloading(self._adopt(force))
        finally:  # whatever happened, systemd hears the reload is over (else `systemctl reload` hangs)
            self.notifier.notify("READY=1", f"STATUS={status}")

    async def _adopt(self, force: bool) -> str:
        """Read the file and apply it; what the systemd status line says after."""
        verdict = await read_reload(self.config_path, self.node_name, self.controller, force=force, log=self.log,
                                    stopping=self.stopping)
        if (view := self.control.judged(verdict)) is None:
            return verdict.status
        plan = self.controller.reload(view, self.health.states() if self.health else {})
        self.view = view
        if plan.restart_needed:
            self.log.warning("config.restart_needed", settings=list(plan.restart_needed), applied="at the next start")
        if plan.state_dir_moved:
            self.control.save_drained()  # where the next start will look for them
        if plan.needs_ipvs:
            await self._open_ipvs(None)  # servers added by a reload earn their place with `rise` checks
        if self.health is not None:
            self.health.update(view.config.virtual_services)
        vrrp = await self.vrrp.apply(view, plan.vrrp_instances) if plan.vrrp_changed else "unchanged"
        if plan.resync:
            self._spawn(self.ipvs.sync_connections())
        self.log.info("config.reloaded", file=self.config_path, services=len(view.config.virtual_services),
                      added=len(plan.added), removed=len(plan.removed), vrrp=vrrp,
                      vrrp_instances=list(plan.vrrp_instances), forced=bool(verdict.reasons))
        return "running"

    def on_health_change(self, change: HealthChanged) -> None:
        self.controller.health_changed(change)
        self.wake.set()

    def _on_vrrp_state(self, instance: str, from_: str, to: str, reason: str) -> None:
        # any thread: hand over to the main loop, never block the heartbeat
        if self.metrics is not None:
            group = self.controller.vrrp_view.config.group_of(instance)
            self.metrics.vrrp_transitions.labels(instance, group.name if group else "", to).inc()
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._vrrp_changed, instance, to)

    def _vrrp_changed(self, instance: str, to: str) -> None:
        self.controller.vrrp_changed(instance, to)
        states = self.controller.vrrp_states
        self.notifier.notify("STATUS=VRRP " + (to if len(states) == 1 else
                                               ", ".join(f"{name} {state}" for name, state in states.items())))
        sync = self.controller.sync_instance
        if sync is not None and sync.name == instance:  # the kernel's sync threads follow that instance only
            self._spawn(self.ipvs.sync_connections())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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

    def snapshot(self) -> StatusSnapshot:
        """For `havs status` and metrics. Never waits: VRRP's part is the snapshot its process last pushed."""
        return self.controller.status(
            now=time.monotonic(), version=__version__, pid=os.getpid(), started=self.started,
            config_file=self.config_path, health=self.health.snapshot() if self.health else None,
            vrrp=self.vrrp.snapshot(), reconciler=self.ipvs.counters(), actual=self.ipvs.last_actual,
            draining=self.controller.removals.draining())

