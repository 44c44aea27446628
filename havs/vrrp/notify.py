"""Notify hooks: run one at a time, in order, each an asyncio subprocess bounded by a timeout.

On the VRRP loop (no thread): starting a process and waiting for it are non-blocking, so a slow script
never delays an advert. Hooks see keepalived's states (master, backup, fault, stop); RESIGNING is part of
leaving MASTER and runs none, so `stop` after a handover still says HAVS_PREVIOUS=MASTER.

Each hook runs in a process group (session) of its own: at the timeout the whole group is killed, so a
script's children do not outlive it. A hook is over when its process exits: its output goes to a
temporary file, never a pipe, so a background job it leaves holding stdout/stderr cannot make a hook
that exited 0 look timed out (nor hold back the hooks after it). That background job is left alone:
starting one is the hook's business. Failures (non-zero, timed out, not startable) are logged at error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
from typing import IO, Any

from havs.core.model import Notify

HOOKS = {"MASTER": "master", "BACKUP": "backup", "FAULT": "fault", "INIT": "stop"}


class NotifyRunner:
    def __init__(self, notify: Notify, log: Any, node: str, env: dict[str, str] | None = None) -> None:
        """`env`: added to every hook's (HAVS_INSTANCE and HAVS_GROUP: whose state this is)."""
        self.notify = notify  # replaced on reload; read per hook
        self.node = node
        self.env = dict(env or {})
        self._log = log
        self._queue: asyncio.Queue[tuple[str, str, list[str], dict[str, str]] | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._previous = "INIT"  # the last state hooks were told about

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def submit(self, state: str, reason: str) -> None:
        hook = HOOKS.get(state)
        if hook is None:
            return
        previous, self._previous = self._previous, state
        argv: list[str] | None = getattr(self.notify, hook)
        if not argv:
            return
        env = {**os.environ, "HAVS_STATE": state, "HAVS_PREVIOUS": previous, "HAVS_REASON": reason,
               "HAVS_NODE": self.node, **self.env}
        self._queue.put_nowait((state, hook, list(argv), env))

    async def stop(self, wait: bool) -> None:
        """wait: run what is queued (bounded by the timeouts); else drop it and kill a running hook."""
        task = self._task
        if task is None:
            return
        self._queue.put_nowait(None)
        if not wait:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self._task = None

    async def _run(self) -> None:
        while (item := await self._queue.get()) is not None:
            state, _hook, argv, env = item
            try:
                fields = await self._one(argv, env)
            except Exception as e:  # a hook must never stop VRRP
                fields = {"rc": None, "error": f"{type(e).__name__}: {e}"}
            failed = fields.get("rc") != 0
            (self._log.error if failed else self._log.info)("vrrp.notify", state=state, argv=argv, **fields)

    async def _one(self, argv: list[str], env: dict[str, str]) -> dict[str, Any]:
        with tempfile.TemporaryFile() as out:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
                    start_new_session=True)
            except OSError as e:
                return {"rc": None, "error": str(e)}
            try:
                rc = await asyncio.wait_for(proc.wait(), self.notify.timeout)
            except (TimeoutError, asyncio.CancelledError) as e:
                _kill_group(proc.pid)
                await proc.wait()
                if isinstance(e, asyncio.CancelledError):
                    raise
                return {"rc": None, "error": f"timed out after {self.notify.timeout}s (its process group killed)",
                        **_output(out)}
            return {"rc": rc, **(_output(out) if rc else {})}


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _output(out: IO[bytes]) -> dict[str, str]:
    """The last 500 characters the hook wrote (stdout and stderr), for the log."""
    size = out.seek(0, os.SEEK_END)
    out.seek(max(0, size - 2000))
    text = out.read().decode("utf-8", "replace")[-500:]
    return {"output": text} if text else {}
