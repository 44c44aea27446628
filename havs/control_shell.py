"""The control socket's side of the daemon: `havs status`, `havs reload`, `havs drain`/`enable`.

`havs.core.controller` parses each request and decides; this shell carries the decision out: a drain is
written to `<state_dir>/drained.json` (`havs.drains`) and wakes the reconciler, a reload is handed to the
daemon's loop, a status request gets the daemon's snapshot (which never waits: see `Daemon.snapshot`).

A reload request waits for the outcome of the reload it asked for, and answers with it (`havs reload`
exits non-zero and prints the file:line problems or the guard's reasons). Requests are coalesced as the
daemon coalesces reloads: those made before a reload starts are answered by it; one made while a reload
runs waits for the next (the file may have changed after the running one read it). The daemon runs each
reload through `reloading()` and hands the reload's verdict to `judged()`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from havs.core.controller import Controller, MaintenanceRequest, ReloadRequest, RequestError, parse_request
from havs.core.model import NodeView
from havs.core.status import StatusSnapshot
from havs.drains import load_drained, save_drained
from havs.edge.control import ControlServer
from havs.errors import HavsError

RELOAD_WAIT = 120.0  # a reload request answers within this, whatever the reload does
SEE_LOG = "see the daemon's log (config.reload_*)"


@dataclass(frozen=True)
class ReloadOutcome:
    outcome: str  # applied, forced, failed (bad file), refused (the guard), error, stopping
    problems: tuple[str, ...] = ()  # file:line problems, or the guard's reasons

    def reply(self) -> dict[str, Any]:
        if self.outcome in ("applied", "forced"):
            return {"ok": True, "outcome": self.outcome, "warnings": list(self.problems)}
        what = {"failed": "the config has problems; the running config is kept",
                "refused": "reload refused (havs reload --force applies it); the running config is kept",
                "stopping": "the daemon is stopping; nothing was reloaded"}.get(
            self.outcome, f"the reload failed; {SEE_LOG}")
        return {"ok": False, "outcome": self.outcome, "error": what, "problems": list(self.problems)}


def outcome_of(verdict: Any, status: str) -> ReloadOutcome:
    """From `havs.reload_reader.Verdict` (None: the reload failed before its verdict) and the status line
    the daemon ended the reload with ("running" when applied)."""
    if verdict is None:
        return ReloadOutcome("error")
    problems = tuple(getattr(verdict, "problems", ()) or ())
    reasons = tuple(verdict.reasons)
    if verdict.view is None:
        if verdict.status == "stopping":
            return ReloadOutcome("stopping")
        if reasons:
            return ReloadOutcome("refused", reasons)
        return ReloadOutcome("failed", problems or (SEE_LOG,))
    if status != "running":
        return ReloadOutcome("error")
    return ReloadOutcome("forced" if reasons else "applied", reasons)


class ControlShell:
    def __init__(self, controller: Controller, log: Any, *, on_reload: Callable[[bool], None],
                 on_change: Callable[[], None], snapshot: Callable[[], StatusSnapshot]) -> None:
        self.controller, self.log = controller, log
        self.on_reload, self.on_change, self.snapshot = on_reload, on_change, snapshot
        self.server: ControlServer | None = None
        self._asked: list[asyncio.Future[ReloadOutcome]] = []  # reload requests no reload has started for
        self._verdict: Any = None

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
        self._answer(self._asked, ReloadOutcome("stopping"))

    def load_drained(self) -> None:
        self.controller.drained = load_drained(self.state_dir, self.log)

    def save_drained(self) -> str | None:
        return save_drained(self.state_dir, self.controller.drained, self.log)

    # -- reloads

    async def reloading(self, reload: Awaitable[str]) -> str:
        """Run one reload (it returns the status line it ended with) and answer the requests made before it."""
        done, status = self.reload_begun(), "reload failed; see the log"
        try:
            status = await reload
        finally:
            done(status)
        return status

    def reload_begun(self) -> Callable[[str], None]:
        """The daemon starts a reload: it answers the requests made so far. Call what this returns with the
        status line the reload ended with."""
        waiting, self._asked, self._verdict = self._asked, [], None

        def done(status: str) -> None:
            outcome = outcome_of(self._verdict, status)
            self._verdict = None
            reloads = self.controller.reloads
            reloads[outcome.outcome] = reloads.get(outcome.outcome, 0) + 1
            self._answer(waiting, outcome)

        return done

    def judged(self, verdict: Any) -> NodeView | None:
        """The reload's verdict (`havs.reload_reader.Verdict`); returns the view to apply (None: keep)."""
        self._verdict = verdict
        view: NodeView | None = verdict.view
        return view

    @staticmethod
    def _answer(waiting: list[asyncio.Future[ReloadOutcome]], outcome: ReloadOutcome) -> None:
        for fut in waiting:
            if not fut.done():
                fut.set_result(outcome)
        waiting.clear()

    async def _reload(self, force: bool) -> dict[str, Any]:
        fut: asyncio.Future[ReloadOutcome] = asyncio.get_running_loop().create_future()
        self._asked.append(fut)
        self.on_reload(force)
        try:
            outcome = await asyncio.wait_for(asyncio.shield(fut), RELOAD_WAIT)
        except TimeoutError:
            return {"ok": False, "outcome": "pending", "force": force,
                    "error": f"no outcome within {RELOAD_WAIT:g} s; the reload goes on: {SEE_LOG}"}
        finally:
            with contextlib.suppress(ValueError):
                self._asked.remove(fut)
        return {**outcome.reply(), "force": force}

    # -- requests

    async def handle(self, raw: dict[str, Any]) -> dict[str, Any]:
        try:
            request = parse_request(raw)
        except RequestError as e:
            return {"ok": False, "error": str(e)}
        if isinstance(request, ReloadRequest):
            return await self._reload(request.force)
        if isinstance(request, MaintenanceRequest):
            reply, changed = self.controller.maintenance(request)
            for key in changed:
                self.log.info("health.maintenance", service=key.service, server=key.server, drained=request.drain)
            if changed:
                self.on_change()  # in force now, saved or not: an operator draining a server needs it out
                error = self.save_drained()
                if error is not None:
                    what = "drained" if request.drain else "enabled"
                    return {**reply, "ok": False, "persisted": False,
                            "error": f"{what} in the running daemon but NOT saved ({error}): a restart "
                                     "would forget it; fix the state directory and repeat the command"}
            return reply
        return {"ok": True, "status": self.snapshot().to_dict()}
