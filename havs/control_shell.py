"""The control socket's side of the daemon: `havs status`, `havs reload`, `havs drain`/`enable`.

`havs.core.controller` parses each request and decides; this shell carries the decision out: a drain is
written to `<state_dir>/drained.json` (`havs.drains`) and wakes the reconciler, a reload is handed to the
daemon's loop, a status request gets the daemon's snapshot (which never waits: see `Daemon.snapshot`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from havs.core.controller import Controller, MaintenanceRequest, ReloadRequest, RequestError, parse_request
from havs.core.status import StatusSnapshot
from havs.drains import load_drained, save_drained
from havs.edge.control import ControlServer
from havs.errors import HavsError


class ControlShell:
    def __init__(self, controller: Controller, log: Any, *, on_reload: Callable[[bool], None],
                 on_change: Callable[[], None], snapshot: Callable[[], StatusSnapshot]) -> None:
        self.controller, self.log = controller, log
        self.on_reload, self.on_change, self.snapshot = on_reload, on_change, snapshot
        self.server: ControlServer | None = None

    @property
    def state_dir(self) -> str:
        return self.controller.config.settings.state_dir

    async def start(self) -> None:
        """Listen on the config's control socket; one that cannot be bound is logged, not fatal."""
        path = self.controller.config.settings.control_socket
        server = ControlServer(path, self.handle)
        try:
            await server.start()
        except (OSError, HavsError) as e:
            self.log.error("control.unavailable", path=path, error=str(e))
            return
        self.server = server

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()

    def load_drained(self) -> None:
        self.controller.drained = load_drained(self.state_dir, self.log)

    def save_drained(self) -> None:
        save_drained(self.state_dir, self.controller.drained, self.log)

    async def handle(self, raw: dict[str, Any]) -> dict[str, Any]:
        try:
            request = parse_request(raw)
        except RequestError as e:
            return {"ok": False, "error": str(e)}
        if isinstance(request, ReloadRequest):
            self.on_reload(request.force)
            return {"ok": True, "force": request.force}
        if isinstance(request, MaintenanceRequest):
            reply, changed = self.controller.maintenance(request)
            for key in changed:
                self.log.info("health.maintenance", service=key.service, server=key.server, drained=request.drain)
            if changed:
                self.save_drained()
                self.on_change()
            return reply
        return {"ok": True, "status": self.snapshot().to_dict()}
