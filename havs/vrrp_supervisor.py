"""The daemon's hold on its VRRP instance: start it, change it on reload, stop it — and never drop it by
accident. A reload whose VRRP part cannot be applied keeps the running instance (its addresses stay
where they are) and says so; the next reload tries again.

The instance itself runs in a process of its own (`havs.vrrp.VrrpProcess`); every blocking call to it
goes through a worker thread so the daemon's loop keeps running probes and passes meanwhile.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from havs.core.controller import Controller
from havs.core.model import NodeView

if TYPE_CHECKING:
    from havs.vrrp import VrrpProcess

OnState = Callable[[str, str, str], None]


def interface_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
        return True
    except OSError:
        return False


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


class VrrpSupervisor:
    def __init__(self, controller: Controller, *, log: Any, log_format: str, on_state: OnState) -> None:
        self.controller = controller  # its vrrp_view: the view the running instance was made from
        self.log, self.log_format, self.on_state = log, log_format, on_state
        self.process: VrrpProcess | None = None
        self.factory: Callable[..., VrrpProcess] | None = None  # tests give a fake

    def _new(self, view: NodeView) -> VrrpProcess:
        if self.factory is None:
            from havs.vrrp import VrrpProcess  # its imports are the child's business until VRRP is configured

            self.factory = VrrpProcess
        return self.factory(view, log=self.log, log_format=self.log_format, on_state=self.on_state)

    def spawn(self, view: NodeView) -> None:
        """The child imports while the daemon programs IPVS; it announces only after `start`."""
        self.process = self._new(view)
        self.process.spawn()

    async def start(self) -> bool:
        assert self.process is not None
        try:
            await in_thread(self.process.start)
            return True
        except RuntimeError as e:
            self.log.error("vrrp.unavailable", error=str(e))
            return False

    async def stop(self) -> None:
        """Gracefully (priority 0, addresses released), whatever ended the run; never raises."""
        if self.process is None:
            return
        try:
            await in_thread(self.process.stop, True)
        except Exception as e:  # the rest of the shutdown must go on
            self.log.error("vrrp.stop_failed", error=str(e))

    async def apply(self, view: NodeView) -> str:
        """A reload's VRRP part. Tunables change in place (no state change, no advert gap); a new identity
        needs a new instance. Returns what happened, for the `config.reloaded` event."""
        old, previous = self.process, self.controller.vrrp_view
        if old is not None and await in_thread(old.update, view):
            self.controller.vrrp_view = view
            return "updated"
        missing = [name for name in self.controller.vrrp_interfaces(view) if not interface_exists(name)]
        if missing:  # known before anything is stopped: the running instance stays as it is
            self.log.error("config.vrrp_not_applied", reason="no such interface", interfaces=missing,
                           kept="running VRRP instance" if old else "no VRRP")
            return "kept running instance"
        if old is not None:
            self.log.info("config.vrrp_changed", action="restart" if view.config.vrrp else "stop")
            await in_thread(old.stop, True)
            self.process = None
        self.controller.vrrp_view = view
        if view.config.vrrp is None:
            return "stopped"
        self.process = await self._start_new(view)
        if self.process is not None:
            return "restarted"
        self.controller.vrrp_view = previous  # not applied: the next reload tries again
        if old is not None:  # the new one would not start: bring the previous one back rather than none
            self.log.error("config.vrrp_not_applied", reason="the new VRRP instance did not start",
                           kept="previous VRRP config, restarted")
            self.process = await self._start_new(previous)
        return "kept previous config" if self.process is not None else "unavailable"

    async def _start_new(self, view: NodeView) -> VrrpProcess | None:
        process = self._new(view)
        try:
            await in_thread(process.start)
            return process
        except RuntimeError as e:
            self.log.error("vrrp.unavailable", error=str(e))
            return None
