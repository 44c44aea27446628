"""VRRP in a process of its own, as keepalived does; `VrrpProcess` is the daemon's handle on it.

Measured in the lab (integration/bench_heartbeat.py): with VRRP on a thread of the main process, a
garbage collection or a reload of a 12,000-server config holds the GIL for 100–500 ms and delays adverts
past the backup's master-down interval. A child process shares no GIL, no collector and no event loop
with health checks and the IPVS reconciler, so nothing they do can delay an advert.

The child (`python -m havs.vrrp`, `havs.vrrp.child`) talks over a socketpair in `havs.vrrp.protocol`'s
typed messages and pushes its snapshot on every state change and every 0.5 s: `snapshot()` returns the
latest push and never waits. One thread here reads the link (the daemon's loop must not). The child runs
every VRRP instance of the node: the snapshot is `{"instances": [...], "groups": {...}}`, the decrement
a mapping by instance name, and `on_state(instance, from_, to, reason)` names the instance.

A child that dies without being asked (kill -9, OOM) is noticed at once (EOF on the link) and restarted,
not failed over: the daemon's other work (IPVS, health checks) is intact, and a restarted child starts
as BACKUP and first removes the floating addresses its predecessor left, so the peer — which took over
when the adverts stopped — is the only holder, and the usual election (preemption included) decides
from there. Stopping the whole daemon instead would take the IPVS table's upkeep with it and rely on
systemd to bring everything back; a restart restores redundancy within about a second. The cost: if the
child died as MASTER with a long advert interval, the addresses may be gone from here a moment before
the peer's master-down timer fires.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
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

OnState = Callable[[str, str, str, str], None]  # instance, from, to, reason
SECRETS = {"secrets": True}  # the view goes to our own child with its auth_hmac keys (masked everywhere else)


def child_view(view: NodeView) -> dict[str, Any]:
    """What the VRRP child is told: the view without the virtual services, which it never reads. A config of
    10,000 real servers is megabytes of JSON; sent whole it also cost the child seconds to validate."""
    trimmed = view.model_copy(update={"config": view.config.model_copy(update={"virtual_services": []})})
    return trimmed.model_dump(mode="json", context=SECRETS)
START_TIMEOUT = 60.0  # a cold start imports the interpreter's asyncio and havs: seconds on a slow machine
REPLY_TIMEOUT = 5.0
PUSH_WINDOW = 2.0  # alive(): a snapshot pushed within this long (the child pushes every 0.5 s)
RESTART_BACKOFF = (0.0, 1.0, 2.0, 5.0)  # seconds before restart attempts 1, 2, 3, 4+


class VrrpProcess:
    def __init__(self, view: NodeView, *, log: Any, log_format: str = "json",
                 on_state: OnState | None = None) -> None:
        self.view = view
        self._log = log
        self._log_format = log_format
        self._on_state = on_state
        self._lock = threading.Lock()  # guards proc/sock swaps and sends
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: str | None = None
        self._started = False  # start() succeeded once: from then on a dead child is restarted
        self._stopping = False
        self._decrement: dict[str, int] = {}  # instance name → decrement; a name left out: 0
        self._sent_decrement: dict[str, int] = {}  # what the running child was told
        self._hold = self._sent_hold = ""  # why preemption is deferred (connection catch-up); "" not
        self._snapshot: dict[str, Any] = {"instances": [], "groups": {}}
        self._last_push = time.monotonic()
        self._replies: dict[int, tuple[threading.Event, list[bool]]] = {}
        self._next_id = 0
        self.restarts = 0
        self._attempt = 0  # restarts in a row without a ready child: the backoff

    # ----------------------------------------------------------------------------- the daemon's API

    def spawn(self) -> None:
        """Start the child early: it imports its modules (seconds on a slow machine) while the daemon
        programs IPVS, and waits for `start` before it sends anything."""
        with self._lock:
            if self._proc is None:
                self._spawn_locked()
        if self._reader is None:
            self._reader = threading.Thread(target=self._read_forever, name="havs-vrrp-link", daemon=True)
            self._reader.start()

    def start(self) -> None:
        """Blocking. RuntimeError with the child's reason if VRRP cannot start."""
        self.spawn()
        self._ready.clear()
        self._send(Start(child_view(self.view)))
        if not self._ready.wait(START_TIMEOUT) or self._start_error is not None:
            error = self._start_error or f"VRRP did not start: no answer in {START_TIMEOUT:.0f}s"
            self.stop(graceful=False)
            raise RuntimeError(error)
        self._started = True
        self._flush_decrement()

    def stop(self, graceful: bool = True) -> None:
        """graceful: a MASTER resigns and hands the addresses over (make before break); anything else
        releases stale ones. Not graceful: stop as a crash would. Blocking."""
        self._stopping = True
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(OSError):
            self._send(Stop(graceful))
        try:
            proc.wait(timeout=self._stop_timeout() if graceful else 5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with self._lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)  # wakes the reader thread
                self._sock.close()
            self._proc = self._sock = None

    def set_priority_decrement(self, n: dict[str, int]) -> None:
        """Per instance name (a name left out: 0). Never blocks: if the link is busy or full, the child's next
        push retries it."""
        self._decrement = {k: v for k, v in n.items() if v}
        self._flush_decrement()

    def hold_preemption(self, reason: str) -> None:
        """Defer preemption while the daemon catches up on connections ("" preempts again). Never blocks,
        as the decrement: sent with it, retried on the child's next push."""
        self._hold = reason
        self._flush_decrement()

    def update(self, view: NodeView) -> bool:
        """Reloaded settings in place; False: the caller restarts the process. Blocking."""
        with self._lock:
            self._next_id += 1
            rid = self._next_id
        done, box = threading.Event(), []
        self._replies[rid] = (done, box)
        try:
            self._send(Update(rid, child_view(view)))
            if done.wait(REPLY_TIMEOUT) and box and box[0]:
                self.view = view
                return True
            return False
        except OSError:
            return False
        finally:
            self._replies.pop(rid, None)

    def snapshot(self) -> dict[str, Any]:
        """The child's latest pushed snapshot, `{"instances": [one dict per instance], "groups": {name:
        state}}` (`{"instances": [], "groups": {}}` before the first push), plus `restarts`; never blocks.
        A child that does not answer: every instance's state is "UNKNOWN" and `error` says why."""
        snap = dict(self._snapshot)
        if not self.alive():
            error = "the VRRP process does not answer"
            snap["instances"] = [{**i, "state": "UNKNOWN", "error": error} for i in snap.get("instances", [])]
            snap["groups"] = {g: "UNKNOWN" for g in snap.get("groups", {})}
            snap["error"] = error
        snap["restarts"] = self.restarts
        return snap

    def alive(self) -> bool:
        """The child runs and pushed a snapshot recently (for the systemd watchdog)."""
        proc = self._proc
        return (proc is not None and proc.poll() is None
                and time.monotonic() - self._last_push < max(3 * 0.5, PUSH_WINDOW))

    # ----------------------------------------------------------------------------- plumbing

    def _spawn_locked(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "havs.vrrp", "--fd", str(child.fileno()), "--log-format", self._log_format],
                pass_fds=[child.fileno()], stdin=subprocess.DEVNULL,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self._sock = parent
        self._last_push = time.monotonic()

    def _stop_timeout(self) -> float:
        interval = max((v.advert_interval for v in self.view.config.vrrp), default=1.0)
        return 3 * interval + 0.5 + 5.0  # the handovers (in parallel) wait, then some

    def _send(self, message: protocol.Message) -> None:
        data = protocol.encode(message)
        with self._lock:
            if self._sock is None:
                raise OSError("VRRP process not started")
            self._sock.sendall(data)

    def _flush_decrement(self) -> None:
        """The wanted decrement and preemption hold, whichever the running child has not been told."""
        n, hold = self._decrement, self._hold
        if (n, hold) == (self._sent_decrement, self._sent_hold) or not self._ready.is_set() or \
                self._start_error is not None:
            return  # before Ready the child takes nothing but Start
        if not self._lock.acquire(blocking=False):
            return
        try:
            if self._sock is None:
                return
            if n != self._sent_decrement:
                self._send_now(SetDecrement(n))
                self._sent_decrement = n
            if hold != self._sent_hold:
                self._send_now(HoldPreemption(hold))
                self._sent_hold = hold
        except OSError:  # BlockingIOError included: the next push retries
            pass
        finally:
            self._lock.release()

    def _send_now(self, message: protocol.Message) -> None:
        assert self._sock is not None  # under the lock
        data = protocol.encode(message)
        sent = self._sock.send(data, socket.MSG_DONTWAIT)
        if sent < len(data):
            self._sock.sendall(data[sent:])  # a line is never left half-written

    def _read_forever(self) -> None:
        """Read the link; when it ends without a stop, restart the child."""
        while True:
            sock = self._sock
            if sock is not None:
                self._read(sock)
            if self._stopping or not self._started:
                # EOF before a successful start: a start still waiting must not wait for nothing
                if not self._ready.is_set():
                    self._start_error = self._start_error or "VRRP did not start: the VRRP process exited"
                    self._ready.set()
                return
            self._restart()

    def _restart(self) -> None:
        proc = self._proc
        rc = None
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                rc = proc.wait(timeout=2.0)
        self._log.error("vrrp.process_exited", rc=rc, restarts=self.restarts)
        time.sleep(RESTART_BACKOFF[min(self._attempt, len(RESTART_BACKOFF) - 1)])
        self._attempt += 1  # back to 0 once a restarted child is ready
        if self._stopping:
            return
        try:
            with self._lock:
                if self._sock is not None:
                    self._sock.close()
                self._spawn_locked()
            self._ready.clear()
            self._start_error = None
            self._send(Start(child_view(self.view)))
            self._sent_decrement = {}  # a new child starts at the configured priority, preempting
            self._sent_hold = ""
            self._flush_decrement()
        except OSError as e:
            self._log.error("vrrp.restart_failed", error=str(e))
            return
        threading.Thread(target=self._await_restart, daemon=True, name="havs-vrrp-restart").start()

    def _await_restart(self) -> None:
        # on its own short-lived thread: the reader must keep reading for Ready to arrive
        if self._ready.wait(START_TIMEOUT) and self._start_error is None:
            self._attempt = 0
            self.restarts += 1
            self._log.info("vrrp.process_restarted", restarts=self.restarts, pid=self._proc.pid if self._proc else None)
        else:
            self._log.error("vrrp.restart_failed", error=self._start_error or "no answer")

    def _read(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError, ValueError), sock.makefile("rb") as stream:  # a reset is an EOF too
            for raw in stream:
                try:
                    message = protocol.decode(raw)
                except ProtocolError as e:
                    self._log.error("vrrp.link_error", error=str(e))
                    continue
                self._dispatch(message)

    def _dispatch(self, message: protocol.Message) -> None:
        if isinstance(message, Snapshot):
            self._snapshot = message.data
            self._last_push = time.monotonic()
            self._flush_decrement()
        elif isinstance(message, StateChange):
            if self._on_state is not None:
                try:
                    self._on_state(message.instance, message.from_, message.to, message.reason)
                except Exception as e:  # a bad callback must not cut the link
                    self._log.error("vrrp.on_state_failed", error=f"{type(e).__name__}: {e}")
        elif isinstance(message, Ready):
            self._last_push = time.monotonic()
            self._ready.set()
        elif isinstance(message, StartFailed):
            self._start_error = message.error
            self._ready.set()
        elif isinstance(message, Updated):
            waiter = self._replies.get(message.id)
            if waiter is not None:
                waiter[1].append(message.applied)
                waiter[0].set()
