"""The first half of a reload: read the file and judge it, before anything running is touched.

The file is parsed on a worker thread (a large one takes seconds; probes and the control socket keep
running) and a stop request does not wait for the parse. `havs.core.reload_guard.judge`, through the
controller, names what the new file would take away; such a reload is refused unless forced. Every
outcome is logged here; the daemon applies what this returns.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from havs.configfile import load_view
from havs.core.controller import Controller
from havs.core.model import NodeView
from havs.core.reload_guard import judge
from havs.errors import ConfigError


@dataclass
class Verdict:
    view: NodeView | None  # None: keep the running config
    status: str  # for systemd's status line
    reasons: list[str] = field(default_factory=list)  # what the guard objected to (applied anyway: forced)
    problems: list[str] = field(default_factory=list)  # a bad file's file:line problems (`havs reload` prints them)


async def read_reload(path: str, node: str | None, controller: Controller, *, force: bool, log: Any,
                      stopping: asyncio.Event) -> Verdict:
    parse = asyncio.ensure_future(asyncio.to_thread(load_view, path, node))
    stop = asyncio.ensure_future(stopping.wait())
    await asyncio.wait((parse, stop), return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    if not parse.done():
        parse.cancel()
        return Verdict(None, "stopping")
    try:
        view = parse.result()
    except ConfigError as e:
        problems = [str(p) for p in e.problems]
        log.error("config.reload_failed", file=path, problems=problems, kept="running config")
        return Verdict(None, "reload failed; running config kept", problems=problems)
    reasons = controller.review_reload(view, judge)
    if reasons and not force:
        log.error("config.reload_refused", file=path, reasons=reasons, kept="running config",
                  override="havs reload --force")
        return Verdict(None, "reload refused; running config kept", reasons)
    if reasons:
        log.warning("config.reload_forced", file=path, reasons=reasons)
    return Verdict(view, "running", reasons)
