"""The VRRP child process (`python -m havs.vrrp --fd N`): one asyncio loop, no other thread.

The parent link is read on the loop; every VRRP instance of the node runs on it (`Instances`: one
`VrrpShell` each, their sync groups); snapshots are pushed to the parent on every state change and every
`PUSH_EVERY` seconds, so the daemon never waits to read them (and a push that stops coming means this
loop is stuck). It dies with its parent (PR_SET_PDEATHSIG): a crashed
daemon is a crashed director, never half of one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import os
import signal
import socket
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from havs.core.model import NodeView
from havs.vrrp import protocol
from havs.vrrp.protocol import (
    HoldPreemption,
    ProtocolError,
    Ready,
    SetDecrement,
    Snapshot,
    Start,
    StartFailed,
    StateChange,
    Stop,
    Update,
    Updated,
)

PUSH_EVERY = 0.5
LINE_LIMIT = 16 * 1024 * 1024  # one message from the parent at most (a config file is at most 4 MiB)
NICE = -10
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _raise_priority(rt_priority: int) -> str:
    """A heartbeat process must not wait behind other work for a CPU. Real-time round-robin at
    `rt_priority` (`vrrp.rt_priority`, keepalived's `vrrp_rt_priority`; 0 = none) when allowed, else
    nice -10 (`vrrp_priority`), else as the daemon; both need CAP_SYS_NICE. The loop blocks in epoll
    between packets and timers, so it holds a CPU only while there is VRRP work; the kernel's RT throttling
    bounds even a flood. Measured (bench_flood, host with load 4 on 2 cores): worst advert gap 121–135 ms
    at nice -10."""
    if rt_priority > 0:
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(rt_priority))
            return f"SCHED_RR {rt_priority}"
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, NICE)
    return f"nice {os.getpriority(os.PRIO_PROCESS, 0)}"


def _no_watcher_threads() -> None:
    # Python 3.11's default child watcher starts a thread per hook process; pidfd needs none.
    if sys.version_info < (3, 12):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            watcher = asyncio.PidfdChildWatcher()
            watcher.attach_loop(asyncio.get_running_loop())
            asyncio.set_child_watcher(watcher)


async def serve(fd: int, log_format: str) -> int:
    from havs.log import setup_logging
    from havs.vrrp.instances import Instances, rt_priority

    _no_watcher_threads()
    link = socket.socket(fileno=fd)
    # a message is one line; asyncio's 64 KiB default would end the link on a large one (a Start or an
    # Update with many keys or peers): the parent sends no more than this
    reader, writer = await asyncio.open_unix_connection(sock=link, limit=LINE_LIMIT)

    def send(message: protocol.Message) -> None:
        if not writer.is_closing():
            writer.write(protocol.encode(message))  # buffered: never blocks the loop

    try:
        first = protocol.decode(await reader.readline())
        if not isinstance(first, Start):
            raise ProtocolError(f"expected Start, got {type(first).__name__}")
        view = NodeView.model_validate(first.view)
    except (ProtocolError, ValueError) as e:
        send(StartFailed(f"VRRP did not start: bad start message: {e}"))
        await writer.drain()
        return 2
    log = setup_logging(log_format, node=view.name)  # type: ignore[arg-type]
    wanted = rt_priority(view)  # one process, one policy: the most any instance asks for
    log.info("vrrp.scheduling", policy=_raise_priority(wanted), rt_priority=wanted)
    shell: Instances

    def push() -> None:
        send(Snapshot(shell.snapshot()))

    def state(instance: str, from_: str, to: str, reason: str, group: str) -> None:
        send(StateChange(instance, from_, to, reason, group))

    try:
        shell = Instances(view, log=log, on_state=state, on_change=push)
        await shell.start()
    except (RuntimeError, ValueError) as e:
        send(StartFailed(str(e) if str(e).startswith("VRRP") else f"VRRP did not start: {e}"))
        await writer.drain()
        return 1
    gc.freeze()  # what is loaded now lives as long as the process: keep it out of every collection
    send(Ready())
    push()
    pusher = asyncio.get_running_loop().create_task(_push_every(push))
    graceful = await _commands(reader, send, shell, log)
    pusher.cancel()
    await shell.stop(graceful=graceful)
    push()
    with contextlib.suppress(OSError):
        await writer.drain()
    writer.close()
    return 0


async def _push_every(push: Any) -> None:
    while True:
        await asyncio.sleep(PUSH_EVERY)
        push()


async def _commands(reader: asyncio.StreamReader, send: Any, shell: Any, log: Any) -> bool:
    """Until Stop (graceful as asked) or EOF (the parent died: do as a crash would)."""
    while True:
        try:
            line = await reader.readline()
        except ValueError as e:  # one message over LINE_LIMIT: refused and skipped, the link goes on
            log.error("vrrp.link_error", error=f"a message from the daemon is too long: {e}")
            continue
        except OSError:
            return False
        if not line:
            return False
        try:
            message = protocol.decode(line)
        except ProtocolError as e:
            log.error("vrrp.link_error", error=str(e))
            continue
        if isinstance(message, Stop):
            return message.graceful
        if isinstance(message, SetDecrement):
            shell.set_priority_decrement(message.n)
            send(Snapshot(shell.snapshot()))
        elif isinstance(message, HoldPreemption):
            shell.set_preempt_hold(message.reason)
            send(Snapshot(shell.snapshot()))
        elif isinstance(message, Update):
            try:
                applied = await shell.update(NodeView.model_validate(message.view))
            except ValueError as e:
                log.error("vrrp.reload_failed", error=str(e))
                applied = False
            send(Updated(message.id, applied))
            send(Snapshot(shell.snapshot()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m havs.vrrp", description="havs's VRRP child process")
    parser.add_argument("--fd", type=int, required=True, help="the socketpair end inherited from the daemon")
    parser.add_argument("--log-format", choices=("json", "console"), default="json")
    args = parser.parse_args(argv)
    _die_with_parent()
    # The parent orchestrates: a terminal's Ctrl-C or a HUP reaches the whole process group, not us.
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    return asyncio.run(serve(args.fd, args.log_format))
