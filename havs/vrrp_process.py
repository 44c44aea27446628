"""VRRP in a process of its own, as keepalived does.

Measured in the lab (integration/bench_heartbeat.py): with VRRP on a thread of the main process, a
garbage collection or a reload of a 12,000-server config holds the GIL for 100–500 ms and delays adverts
past the backup's master-down interval. A child process shares no GIL, no collector and no event loop
with health checks and the IPVS reconciler, so nothing they do can delay an advert.

`VrrpProcess` is the parent's handle, with the `VrrpService` interface. The child (`python -m
havs.vrrp_process`) runs a `VrrpService` and talks over a socketpair, one JSON object per line:
parent → child `start`, `decrement`, `update`, `snapshot`, `stop`; child → parent `ready`, `error`,
`state`, `tick`, `reply`. The child writes its logs to the same stdout as the parent. It dies with its
parent (PR_SET_PDEATHSIG), so a crashed daemon is a crashed director, never half of one.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from havs.core.model import NodeView

OnState = Callable[[str, str, str], None]
START_TIMEOUT = 60.0  # a cold start imports asyncio and pyroute2: seconds on a slow machine
REPLY_TIMEOUT = 5.0
TICK_EVERY = 0.5
PR_SET_PDEATHSIG = 1


class VrrpProcess:
    def __init__(self, view: NodeView, *, log: Any, log_format: str = "json",
                 on_state: OnState | None = None) -> None:
        self._view = view
        self._log = log
        self._log_format = log_format
        self._on_state = on_state
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._ready = threading.Event()
        self._start_error: str | None = None
        self._replies: dict[int, tuple[threading.Event, list[dict[str, Any]]]] = {}
        self._next_id = 0
        self._last_tick = time.monotonic()
        self._decrement = 0
        self._reader: threading.Thread | None = None

    # ----------------------------------------------------------------------------- the parent's API

    def spawn(self) -> None:
        """Start the child early: it imports its modules (seconds on a slow machine) while the daemon
        programs IPVS, and waits for `start` before it sends anything."""
        if self._proc is not None:
            return
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock = parent
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "havs.vrrp_process", "--fd", str(child.fileno()),
             "--log-format", self._log_format],
            pass_fds=[child.fileno()], stdin=subprocess.DEVNULL,
        )
        child.close()
        self._reader = threading.Thread(target=self._read, name="havs-vrrp-link", daemon=True)
        self._reader.start()

    def start(self) -> None:
        self.spawn()
        self._send({"cmd": "start", "view": self._view.model_dump(mode="json")})
        if not self._ready.wait(START_TIMEOUT) or self._start_error is not None:
            error = self._start_error or f"VRRP did not start: no answer in {START_TIMEOUT:.0f}s"
            self.stop(graceful=False)
            raise RuntimeError(error)

    def stop(self, graceful: bool = True) -> None:
        """graceful: resign with a priority-0 advert and hand the addresses over (see VrrpService.stop)."""
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(OSError):
            self._send({"cmd": "stop", "graceful": graceful})
        try:
            proc.wait(timeout=self._stop_timeout() if graceful else 5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._sock is not None:
            self._sock.close()
        self._proc = None

    def set_priority_decrement(self, n: int) -> None:
        if n != self._decrement and self._proc is not None:
            self._decrement = n
            with contextlib.suppress(OSError):
                self._send({"cmd": "decrement", "n": n})

    def update(self, view: NodeView) -> bool:
        """Reloaded settings in place (VrrpService.update); False: the caller restarts the process."""
        reply = self._request({"cmd": "update", "view": view.model_dump(mode="json")})
        if reply is not None and reply.get("applied"):
            self._view = view
            return True
        return False

    def snapshot(self) -> dict[str, Any]:
        reply = self._request({"cmd": "snapshot"})
        if reply is None:
            return {"state": "UNKNOWN", "error": "the VRRP process does not answer"}
        snap: dict[str, Any] = reply["snapshot"]
        # monotonic clocks are system-wide on Linux: `since` means the same here as in the child
        return snap

    def alive(self) -> bool:
        """The child runs and its heartbeat loop ticked recently (for the systemd watchdog)."""
        return (self._proc is not None and self._proc.poll() is None
                and time.monotonic() - self._last_tick < max(3 * TICK_EVERY, 2.0))

    # ----------------------------------------------------------------------------- plumbing

    def _stop_timeout(self) -> float:
        vrrp = self._view.config.vrrp
        interval = vrrp.advert_interval if vrrp else 1.0
        return 3 * interval + 0.5 + 5.0  # the handover wait, then some

    def _send(self, message: dict[str, Any]) -> None:
        if self._sock is None:
            raise OSError("VRRP process not started")
        with self._send_lock:
            self._sock.sendall(json.dumps(message).encode() + b"\n")

    def _request(self, message: dict[str, Any]) -> dict[str, Any] | None:
        if self._proc is None or self._proc.poll() is not None:
            return None
        with self._send_lock:
            self._next_id += 1
            rid = self._next_id
        done = threading.Event()
        box: list[dict[str, Any]] = []
        self._replies[rid] = (done, box)
        try:
            self._send({**message, "id": rid})
            if not done.wait(REPLY_TIMEOUT):
                return None
            return box[0]
        except OSError:
            return None
        finally:
            self._replies.pop(rid, None)

    def _read(self) -> None:
        assert self._sock is not None
        with contextlib.suppress(OSError), self._sock.makefile("rb") as stream:  # a reset is an EOF too
            for raw in stream:
                try:
                    message = json.loads(raw)
                except ValueError:
                    continue
                self._dispatch(message)
        # EOF: the child is gone; a start still waiting must not wait for nothing
        if not self._ready.is_set():
            self._start_error = "VRRP did not start: the VRRP process exited"
            self._ready.set()
        elif self._proc is not None and self._proc.poll() is not None and self._proc.returncode != 0:
            self._log.error("vrrp.process_exited", rc=self._proc.returncode)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "tick":
            self._last_tick = time.monotonic()
        elif kind == "state" and self._on_state is not None:
            try:
                self._on_state(message["from"], message["to"], message["reason"])
            except Exception as e:  # a bad callback must not cut the link
                self._log.error("vrrp.on_state_failed", error=f"{type(e).__name__}: {e}")
        elif kind == "ready":
            self._last_tick = time.monotonic()
            self._ready.set()
        elif kind == "error":
            self._start_error = str(message.get("error"))
            self._ready.set()
        elif kind == "reply":
            waiter = self._replies.get(int(message.get("id", -1)))
            if waiter is not None:
                waiter[1].append(message)
                waiter[0].set()


# --------------------------------------------------------------------------------------- the child


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def worker(fd: int, log_format: str) -> int:
    from havs.log import setup_logging
    from havs.vrrp_service import VrrpService

    _die_with_parent()
    # The parent orchestrates: a terminal's Ctrl-C or a HUP reaches the whole process group, not us.
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    link = socket.socket(fileno=fd)
    lock = threading.Lock()

    def send(message: dict[str, Any]) -> None:
        with lock, contextlib.suppress(OSError):
            link.sendall(json.dumps(message, default=str).encode() + b"\n")

    stream = link.makefile("rb")
    first = json.loads(stream.readline() or b"{}")
    try:
        view = NodeView.model_validate(first["view"])
    except (KeyError, ValueError) as e:
        send({"type": "error", "error": f"bad start message: {e}"})
        return 2
    log = setup_logging(log_format, node=view.name)  # type: ignore[arg-type]
    service = VrrpService(view, log=log, on_state=lambda f, t, r: send({"type": "state", "from": f, "to": t,
                                                                        "reason": r}))
    try:
        service.start()
    except (RuntimeError, ValueError) as e:
        send({"type": "error", "error": str(e) if str(e).startswith("VRRP") else f"VRRP did not start: {e}"})
        return 1
    gc.freeze()  # what is loaded now lives as long as the process: keep it out of every collection
    send({"type": "ready"})
    stopping = threading.Event()

    def ticker() -> None:
        while not stopping.wait(TICK_EVERY):
            if service.alive():
                send({"type": "tick"})

    threading.Thread(target=ticker, name="havs-vrrp-tick", daemon=True).start()
    graceful = False  # EOF without a stop: the parent died, so do as a crash would
    for raw in stream:
        try:
            message = json.loads(raw)
        except ValueError:
            continue
        cmd = message.get("cmd")
        if cmd == "stop":
            graceful = bool(message.get("graceful", True))
            break
        if cmd == "decrement":
            service.set_priority_decrement(int(message["n"]))
        elif cmd == "snapshot":
            send({"type": "reply", "id": message.get("id"), "snapshot": service.snapshot()})
        elif cmd == "update":
            try:
                applied = service.update(NodeView.model_validate(message["view"]))
            except (KeyError, ValueError) as e:
                log.error("vrrp.reload_failed", error=str(e))
                applied = False
            send({"type": "reply", "id": message.get("id"), "applied": applied})
    stopping.set()
    service.stop(graceful=graceful)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m havs.vrrp_process", description="havs's VRRP child process")
    parser.add_argument("--fd", type=int, required=True, help="the socketpair end inherited from the daemon")
    parser.add_argument("--log-format", choices=("json", "console"), default="json")
    args = parser.parse_args(argv)
    return worker(args.fd, args.log_format)


if __name__ == "__main__":
    sys.exit(main())
