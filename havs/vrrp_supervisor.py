"""The daemon's hold on its VRRP instances: start them, change them on reload, stop them — and never drop
them by accident. A reload whose VRRP part cannot be applied keeps the running instances (their addresses
stay where they are) and says so; the next reload tries again.

Every instance runs in one process of its own (`havs.vrrp.VrrpProcess`); every call to it that can
block goes through a worker thread so the daemon's loop keeps running probes, passes, status and metrics
meanwhile. That includes the priority decrement: `VrrpProcess.set_priority_decrement` does not wait for
the child, but it takes the lock a blocking send on another thread (a reload's update, a restart) holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from havs.core.controller import Controller
from havs.core.model import NodeView
from havs.edge.links import interface_exists
from havs.failback import Failback

OnState = Callable[[str, str, str, str], None]  # (instance, from, to, reason)
Decrement = dict[str, int]  # instance → priority decrement (a missing instance: 0)


class VrrpProcess(Protocol):
    """What the supervisor uses of `havs.vrrp.VrrpProcess` (the daemon hands the class in; tests a fake)."""

    view: NodeView

    def spawn(self) -> None: ...

    def start(self) -> None: ...

    def stop(self, graceful: bool = True) -> None: ...

    def update(self, view: NodeView) -> bool: ...

    def set_priority_decrement(self, n: Decrement) -> None: ...

    def snapshot(self) -> dict[str, Any]: ...

    def alive(self) -> bool: ...


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


class VrrpSupervisor:
    def __init__(self, controller: Controller, factory: Callable[..., VrrpProcess], *, log: Any, log_format: str,
                 on_state: OnState) -> None:
        self.controller = controller  # its vrrp_view: the view the running instance was made from
        self.log, self.log_format, self.on_state = log, log_format, on_state
        self.process: VrrpProcess | None = None
        self.factory = factory  # VrrpProcess(view, log=, log_format=, on_state=)
        self._decrement: Decrement = {}  # wanted; `_sent` is (process, decrement) last handed over
        self._sent: tuple[object, Decrement] | None = None
        self._started: object | None = None  # the process whose start succeeded: the child's first
        # message must be Start, so a decrement known earlier (quorum lost at start) waits for it
        self._pushing: asyncio.Task[None] | None = None
        # the connection catch-up of a returning director (holds preemption) and the master's replays
        self.failback = Failback(controller, log, self._hold)
        self._loop: asyncio.AbstractEventLoop | None = None

    def _hold(self, reason: str) -> None:
        hold = getattr(self.process, "hold_preemption", None)  # never blocks (as the decrement)
        if hold is not None:
            hold(reason)

    def _state(self, instance: str, from_: str, to: str, reason: str) -> None:
        # any thread (the process's reader): the daemon's callback first, the catch-up on the loop
        self.on_state(instance, from_, to, reason)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.failback.state_changed, instance, to)

    def _new(self, view: NodeView) -> VrrpProcess:
        return self.factory(view, log=self.log, log_format=self.log_format, on_state=self._state)

    def spawn(self, view: NodeView) -> bool:
        """The child imports while the daemon programs IPVS; it announces only after `start`. False
        (logged) when no process can be made (EAGAIN, ENOMEM, EMFILE)."""
        self.process = self._new(view)
        try:
            self.process.spawn()
            return True
        except OSError as e:
            self.log.error("vrrp.unavailable", error=f"cannot start the VRRP process: {e}")
            self.process = None
            return False

    def alive(self) -> bool:
        """For the systemd watchdog: no VRRP, or a VRRP process that answers."""
        return self.process is None or self.process.alive()

    def snapshot(self) -> dict[str, Any] | None:
        """The process's latest pushed snapshot: never waits for it."""
        return self.process.snapshot() if self.process is not None else None

    def set_decrement(self, n: Decrement) -> None:
        """Per instance; returns at once, the latest values reach the started process from a worker thread.
        Zeros are left out (a missing instance is 0): nothing lost is nothing sent."""
        self._decrement = {name: d for name, d in n.items() if d}
        self._kick()

    def _kick(self) -> None:
        process = self.process
        if process is not None and process is self._started and self._sent != (process, self._decrement) and (
                self._pushing is None or self._pushing.done()):
            self._pushing = asyncio.ensure_future(self._push())

    async def _push(self) -> None:
        while (process := self.process) is self._started and process is not None and \
                self._sent != (process, n := self._decrement):
            try:
                await in_thread(process.set_priority_decrement, n)
            except Exception as e:  # the next pass tries again
                self.log.error("vrrp.decrement_failed", decrement=n, error=str(e))
                return
            self._sent = (process, n)

    async def start(self) -> bool:
        assert self.process is not None
        try:
            await in_thread(self.process.start)
        except RuntimeError as e:
            self.log.error("vrrp.unavailable", error=str(e))
            return False
        self._started = self.process
        self._kick()
        self._loop = asyncio.get_running_loop()
        self.failback.start()
        return True

    async def stop(self) -> None:
        """Gracefully (priority 0, addresses released), whatever ended the run; never raises."""
        if self._pushing is not None:
            self._pushing.cancel()
        await self.failback.stop()
        if self.process is None:
            return
        try:
            await in_thread(self.process.stop, True)
        except Exception as e:  # the rest of the shutdown must go on
            self.log.error("vrrp.stop_failed", error=str(e))

    async def apply(self, view: NodeView, instances: tuple[str, ...] = ()) -> str:
        """A reload's VRRP part (`instances`: the ones it adds, removes or changes, for the log). The process
        takes it in place, instance by instance (an unchanged one keeps its state and adverts); a new process
        only when there is none, or the running one does not answer. Returns what happened, for the
        `config.reloaded` event."""
        old, previous = self.process, self.controller.vrrp_view
        if old is not None and await in_thread(old.update, view):
            self.controller.vrrp_view = view
            self.controller.vrrp_updated(view)
            return "updated"
        missing = [name for name in self.controller.vrrp_interfaces(view) if not interface_exists(name)]
        if missing:  # known before anything is stopped: the running instance stays as it is
            self.log.error("config.vrrp_not_applied", reason="no such interface", interfaces=missing,
                           instances=list(instances), kept="running VRRP instances" if old else "no VRRP")
            return "kept running instance"
        if old is not None and view.config.vrrp and old.alive():
            # it answered: it changes every instance in place, identities too, and refuses only an instance
            # it could not start (vrrp.reload_failed says why). A new process would refuse the same at its
            # start, after every instance had handed its addresses to the peer: keep it; the next reload
            # tries again. Only a process that does not answer is restarted.
            self.log.error("config.vrrp_not_applied", reason="the VRRP process could not apply it (see "
                           "vrrp.reload_failed)", instances=list(instances), kept="running VRRP instances")
            return "kept running instance"
        if old is not None:
            self.log.info("config.vrrp_changed", action="restart" if view.config.vrrp else "stop",
                          instances=list(instances))
            await in_thread(old.stop, True)
            self.process = None
        self.controller.vrrp_view = view
        self.controller.vrrp_restarted(view)  # the old process is gone: no report of it can come after this
        if not view.config.vrrp:
            return "stopped"
        self.process = await self._start_new(view)
        if self.process is not None:
            self._kick()
            return "restarted"
        self.controller.vrrp_view = previous  # not applied: the next reload tries again
        if old is not None:  # the new one would not start: bring the previous one back rather than none
            self.log.error("config.vrrp_not_applied", reason="the new VRRP process did not start",
                           instances=list(instances), kept="previous VRRP config, restarted")
            self.controller.vrrp_restarted(previous)
            self.process = await self._start_new(previous)
            self._kick()
        return "kept previous config" if self.process is not None else "unavailable"

    async def _start_new(self, view: NodeView) -> VrrpProcess | None:
        process = self._new(view)
        try:
            await in_thread(process.start)
            self._started = process
            return process
        except RuntimeError as e:
            self.log.error("vrrp.unavailable", error=str(e))
            return None
