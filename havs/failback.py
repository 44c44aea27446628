"""Failback without losing connections: the catch-up's asyncio shell (docs/connection-sync.md).

Both sides live in every daemon that has `vrrp.connection_sync`:
- the returning director (started with the higher priority, preempt on, `catchup_deadline` > 0) holds
  preemption in its VRRP process from its start, asks the master for a replay, and releases the hold when
  `havs.core.catchup.CatchUp` says so (caught up, deadline, or it became MASTER on its own);
- the MASTER answers a request: it reads its kernel's connection table, sends it as kernel sync messages
  to the sync group (the other director's backup sync thread installs them), then the list of the tuples
  it sent, unicast to the requester.
Never raises into the daemon: a socket or table that fails is one error event, and the hold is released
(a catch-up that cannot run must not keep the primary director from its role).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import Any

from havs.core import ipvs_sync_wire as wire
from havs.core.catchup import Action, CatchUp, Progress, Released, ReplayLimiter, SendRequest
from havs.core.controller import Controller
from havs.core.model import ConnectionSync
from havs.edge.ipvs_sync import CatchUpSocket, read_conn_table

HOLD_REASON = "catching up on connections"
TABLE_POLL = 0.05  # seconds between reads of our own table once the master has answered (at least)
PACE_EVERY, PACE_SLEEP = 32, 0.002  # a replay pauses after this many sync messages: the receiving
# thread's socket buffer (about 200 kB by default) must not overflow on a big table (100k entries: 2500)


class Failback:
    def __init__(self, controller: Controller, log: Any, hold: Callable[[str], None],
                 read_table: Callable[[], str] = read_conn_table,
                 open_socket: Callable[[str, int], Any] = CatchUpSocket) -> None:
        self.controller, self.log, self._hold = controller, log, hold
        self._read_table, self._open_socket = read_table, open_socket
        self.sock: Any = None
        self.catchup: CatchUp | None = None
        self._assembly: wire.Assembly | None = None
        self._answered = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._limiter = ReplayLimiter()
        self._replaying: set[asyncio.Task[None]] = set()
        self.replays = 0
        self.table_size: int | None = None  # our kernel's entries at the last read (metrics, status)

    # ---------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """After the VRRP process started (every director starts as a backup). The catch-up follows the
        instance that has `connection_sync` (its preemption is what the kernel's table must be ready for)."""
        vrrp = self.controller.sync_instance
        sync = vrrp.connection_sync if vrrp is not None else None
        if vrrp is None or sync is None:
            return
        loop = asyncio.get_running_loop()
        ifname = self.controller.view.ifname(sync.interface)
        try:
            sock = self._open_socket(ifname, sync.catchup_port)
            sock.open()
        except OSError as e:
            self.log.error("sync.catchup_unavailable", interface=ifname, error=str(e))
            return
        self.sock = sock
        loop.add_reader(sock.fileno(), self._on_readable)
        if vrrp.preempt and sync.catchup_deadline > 0 and self.controller.sync_state != "MASTER":
            now = loop.time()
            self.catchup = CatchUp(now, deadline=sync.catchup_deadline,
                                   first_nonce=int.from_bytes(os.urandom(6), "big") << 16)
            self._hold(HOLD_REASON)
            self.log.info("sync.catchup_started", instance=vrrp.name, interface=ifname,
                          deadline=sync.catchup_deadline)
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

    def state_changed(self, instance: str, to: str) -> None:
        """On the loop, for every VRRP state change: the connection-sync instance's count."""
        vrrp = self.controller.sync_instance
        if vrrp is not None and instance == vrrp.name and to == "MASTER" and self.catchup is not None:
            self._act(self.catchup.became_master(asyncio.get_running_loop().time()))

    def status(self) -> dict[str, Any]:
        cu = self.catchup
        return {
            "table_size": self.table_size, "replays": self.replays,
            "catchup": None if cu is None else {
                "done": cu.done, "reason": cu.released.reason if cu.released else None,
                "waited": cu.released.waited if cu.released else None,
                "expected": len(cu.expected) if cu.expected is not None else None, "missing": cu.missing},
        }

    def _sync(self) -> ConnectionSync | None:
        vrrp = self.controller.sync_instance
        return vrrp.connection_sync if vrrp is not None else None

    # ---------------------------------------------------------------------------- the returning director

    async def _run(self) -> None:
        cu = self.catchup
        assert cu is not None
        loop = asyncio.get_running_loop()
        try:
            while not cu.done:
                self._act(cu.tick(loop.time()))
                if cu.done:
                    break
                if cu.expected is not None:
                    t0 = loop.time()
                    keys = await self._own_keys()
                    self._act(cu.table(keys, loop.time()))
                    # a big table takes a while to read and compare (100k entries: about a second): not
                    # more than a third of the time on it
                    await asyncio.sleep(max(TABLE_POLL, 2 * (loop.time() - t0)))
                    continue
                wake = cu.next_wake()
                self._answered.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._answered.wait(), max(0.0, (wake or 0.0) - loop.time()))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # never keep the primary from its role because the catch-up broke
            self.log.error("sync.catchup_failed", error=f"{type(e).__name__}: {e}")
            self._act(cu.stop(loop.time()))

    async def _own_keys(self) -> set[wire.Key]:
        text = await asyncio.get_running_loop().run_in_executor(None, self._read_table)
        conns = wire.parse_proc_conn(text)
        self.table_size = len(conns)
        return {c.key for c in conns}

    def _act(self, actions: list[Action]) -> None:
        cu = self.catchup
        for a in actions:
            if isinstance(a, SendRequest) and self.sock is not None:
                self._assembly = wire.Assembly(a.nonce)
                sync = self._sync()
                try:
                    self.sock.request(wire.encode_request(wire.Request(a.nonce, sync.sync_id if sync else 0)))
                except OSError as e:
                    self.log.error("sync.catchup_request_failed", error=str(e))
                if cu is not None and cu.requests == 1:
                    self.log.info("sync.catchup_request", attempt=cu.requests)
            elif isinstance(a, Progress):
                self.log.info("sync.catchup_progress", have=a.have, total=a.total)
            elif isinstance(a, Released):
                self._hold("")
                level = self.log.warning if a.reason == "deadline" else self.log.info
                level("sync.catchup_done", reason=a.reason, waited=round(a.waited, 3), entries=a.total,
                      missing=a.missing)

    # ---------------------------------------------------------------------------- datagrams in

    def _on_readable(self) -> None:
        if self.sock is None:
            return
        for data, addr in self.sock.receive():
            try:
                msg = wire.decode_channel(data)
            except ValueError as e:
                self.log.warning("sync.catchup_bad_datagram", src=addr[0], error=str(e))
                continue
            if isinstance(msg, wire.Request):
                self._requested(msg, addr)
            else:
                self._answer_part(msg)

    def _answer_part(self, part: wire.AnswerPart) -> None:
        cu = self.catchup
        if cu is None or cu.done:
            return
        if self._assembly is None or self._assembly.nonce != part.nonce:
            if not cu.first_nonce <= part.nonce <= cu.nonce:
                return
            self._assembly = wire.Assembly(part.nonce)  # a late answer to an earlier request still counts
        self._assembly.add(part)
        keys = self._assembly.done()
        if keys is not None:
            self.log.info("sync.catchup_answer", entries=len(keys))
            self._act(cu.answer(part.nonce, keys, asyncio.get_running_loop().time()))
            self._answered.set()

    # ---------------------------------------------------------------------------- the master

    def _requested(self, req: wire.Request, addr: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        if self.controller.sync_state != "MASTER" or not self._limiter.allow(loop.time()):
            return  # only the master's table is the truth; a burst of requests gets one replay
        task = asyncio.ensure_future(self._replay(req, addr))
        self._replaying.add(task)
        task.add_done_callback(self._replaying.discard)

    async def _replay(self, req: wire.Request, addr: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        sync = self._sync()
        try:
            text = await loop.run_in_executor(None, self._read_table)
            all_conns = wire.parse_proc_conn(text)
            self.table_size = len(all_conns)
            conns = wire.replayable(all_conns)
            messages = wire.encode_sync(conns, sync.sync_id if sync else 0)
            sock = self.sock
            if sock is None:
                return
            for i, m in enumerate(messages, 1):
                sock.sync_message(m)
                if i % PACE_EVERY == 0:
                    await asyncio.sleep(PACE_SLEEP)
            for part in wire.encode_answer(req.nonce, (c.key for c in conns)):
                sock.answer(part, addr)
        except Exception as e:  # one failed replay; the requester asks again
            self.log.error("sync.catchup_replay_failed", to=addr[0], error=f"{type(e).__name__}: {e}")
            return
        self.replays += 1
        self.log.info("sync.catchup_replay", to=addr[0], entries=len(conns), messages=len(messages),
                      table=len(all_conns), ms=round((loop.time() - t0) * 1000, 1))
