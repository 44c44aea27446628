"""The heartbeat path (havs.vrrp.heartbeat) against a late event loop: an advert already queued when
Master_Down comes is fed first and keeps the backup BACKUP; with nothing queued the takeover comes when it
always did. Real cores, timers and `Demux`; the socket is a fake whose queue the test fills (a blocking
sleep plays the saturated CPU that holds the loop past the deadline)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
import time
from collections.abc import Sequence
from typing import Any

import pytest

from havs.core import wire
from havs.core.vrrp import Action, SendAdvertisement, StateChanged, VrrpInstance
from havs.core.vrrp_model import VrrpParams
from havs.edge import vrrp_socket
from havs.edge.vrrp_socket import Received
from havs.vrrp.announcer import RateLimitedLog
from havs.vrrp.heartbeat import READ_BATCH, Demux, Heartbeat
from tests.fakes import ListLog

MASTER = ipaddress.IPv4Address("10.0.72.1")
BACKUP = ipaddress.IPv4Address("10.0.72.2")
GROUP = ipaddress.IPv4Address("224.0.0.18")
VIP = ipaddress.IPv4Address("10.0.0.100")
INTERVAL = 0.05


class QueueSock:
    """A VRRP socket whose queue the test fills; `wake` makes the fd readable (the reader runs), without
    it the packet sits there unseen until something reads (the race the timer loses)."""

    unicast = False
    destinations = (GROUP,)

    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self.queue: list[Received] = []
        self.reads = 0
        self.drained = True
        self.sent: list[bytes] = []

    def put(self, r: Received, *, wake: bool = True) -> None:
        self.queue.append(r)
        if wake:
            self._w.send(b"x")

    def fileno(self) -> int:
        return self._r.fileno()

    def receive(self, limit: int = 1 << 30) -> list[Received]:
        self.reads += 1
        with contextlib.suppress(BlockingIOError):
            self._r.recv(4096)
        out, self.queue = self.queue[:limit], self.queue[limit:]
        self.drained = not self.queue
        return out

    def send(self, payload: bytes, dst: Any) -> None:
        self.sent.append(payload)

    def close(self) -> None:
        self._r.close()
        self._w.close()


def master_advert(stamp: float | None, priority: int = 150) -> Received:
    adv = wire.Advertisement(3, 51, priority, (VIP,), round(INTERVAL * 100))
    return Received(wire.encode(adv, src=MASTER, dst=GROUP), MASTER, GROUP, 255, stamp)


class Backup:
    """One started instance (priority 100) on a `Demux`, its state changes recorded with the loop time."""

    def __init__(self, sock: QueueSock) -> None:
        loop = asyncio.get_running_loop()
        self.sock = sock
        self.changes: list[tuple[float, str]] = []
        self.inst = VrrpInstance(VrrpParams(router_id=51, priority=100, advert_interval=INTERVAL,
                                            primary_address=BACKUP, addresses=(VIP,)), loop.time())
        self.demux = Demux(sock)  # type: ignore[arg-type]
        self.hb = Heartbeat(sock, BACKUP, self.inst, checksum="pseudo_header",  # type: ignore[arg-type]
                            warn=RateLimitedLog(ListLog()), dispatch=self.dispatch, after_batch=lambda: None,
                            on_tick=lambda: None)
        self.demux.add(51, self.hb)
        self.dispatch(self.inst.start(loop.time()))

    def dispatch(self, actions: Sequence[Action]) -> None:
        for a in actions:
            if isinstance(a, StateChanged):
                self.changes.append((asyncio.get_running_loop().time(), str(a.to)))
            elif isinstance(a, SendAdvertisement):
                self.hb.send(a.adv)
        self.hb.rearm()

    async def follow(self) -> float:
        """Hear the master once (read by the loop); its Master_Down deadline."""
        self.sock.put(master_advert(time.time()))
        await asyncio.sleep(0.005)
        assert self.inst.master_address == MASTER and self.inst.timers.master_down is not None
        return self.inst.timers.master_down

    def close(self) -> None:
        self.hb.cancel()
        self.demux.close()


def block_until(loop_time: float) -> None:
    """Hold the loop (a saturated CPU) until `loop_time`."""
    time.sleep(max(0.0, loop_time - time.monotonic()))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.mark.parametrize("wake", [True, False], ids=["reader", "timer"])
def test_an_advert_queued_before_master_down_keeps_the_backup_backup(wake: bool) -> None:
    """The soak's false takeover: the loop is held past Master_Down while the master's advert (received
    before the deadline) waits in the socket. Whether the reader or the timer runs first, the advert is fed
    first, at its receive time, and the deadline it sets counts from then."""

    async def main() -> None:
        b = Backup(QueueSock())
        try:
            deadline = await b.follow()
            block_until(deadline - 0.01)
            stamp = time.time()
            arrived = time.monotonic()
            b.sock.put(master_advert(stamp), wake=wake)
            block_until(deadline + 0.03)  # the loop comes back 30 ms late
            await asyncio.sleep(0.001)
            assert [to for _, to in b.changes] == ["BACKUP"]  # the start only: never MASTER
            assert b.inst.state == "BACKUP" and not b.sock.queue
            # counted from when it arrived, not from when the late loop read it (30+ ms later)
            assert b.inst.timers.master_down == pytest.approx(arrived + b.inst.master_down_interval, abs=0.003)
        finally:
            b.close()

    run(main())


def test_an_advert_queued_after_the_deadline_but_before_the_late_timer_also_counts() -> None:
    """"It was already there when the timer fired": the master is alive at the moment of the decision."""

    async def main() -> None:
        b = Backup(QueueSock())
        try:
            deadline = await b.follow()
            block_until(deadline + 0.01)
            b.sock.put(master_advert(time.time()), wake=False)
            block_until(deadline + 0.03)
            await asyncio.sleep(0.001)
            assert [to for _, to in b.changes] == ["BACKUP"] and b.inst.state == "BACKUP"
        finally:
            b.close()

    run(main())


def test_no_advert_queued_the_takeover_comes_at_master_down_as_before() -> None:
    """A dead master: one empty read when the deadline comes, then the takeover at 3 x interval + skew
    after its last advert (received), not later."""

    async def main() -> None:
        b = Backup(QueueSock())
        try:
            deadline = await b.follow()
            heard = b.inst.last_master_advert
            assert heard is not None
            assert deadline == pytest.approx(heard + 3 * INTERVAL + (256 - 100) * INTERVAL / 256)
            reads = b.sock.reads
            while b.inst.state == "BACKUP":
                await asyncio.sleep(0.005)
            at, to = b.changes[-1]
            assert to == "MASTER" and deadline <= at < deadline + 0.1  # bound: a loaded test machine
            assert b.inst.since >= deadline
            assert b.sock.reads == reads + 1  # one non-blocking read (EAGAIN) before acting on the deadline
            assert b.sock.sent  # the new master advertises
        finally:
            b.close()

    run(main())


def test_a_stale_receive_time_never_goes_before_what_was_read_empty() -> None:
    """A wall-clock step forward makes an advert look older than it is: it is never counted from before
    the last read that found the queue empty (which would let Master_Down fire on a live master)."""

    async def main() -> None:
        b = Backup(QueueSock())
        try:
            floor = asyncio.get_running_loop().time()
            await b.follow()  # that read emptied the queue: nothing read later arrived before it
            await asyncio.sleep(0.02)
            b.sock.put(master_advert(time.time() - 10.0))  # stamped "10 s ago"
            await asyncio.sleep(0.005)
            assert b.inst.state == "BACKUP"
            assert b.inst.last_master_advert is not None and b.inst.last_master_advert >= floor
        finally:
            b.close()

    run(main())


def test_a_due_deadline_waits_for_at_most_one_read_batch() -> None:
    """A flood cannot hold a due deadline back: it fires after one batch, the rest of the flood after it."""

    async def main() -> None:
        b = Backup(QueueSock())
        try:
            deadline = await b.follow()
            block_until(deadline + 0.01)
            junk = Received(b"\x31\x07" + bytes(10), MASTER, GROUP, 255, time.time())  # another router id
            for _ in range(3 * READ_BATCH):
                b.sock.put(junk, wake=False)
            block_until(deadline + 0.02)
            await asyncio.sleep(0.001)
            assert b.inst.state == "MASTER"
            assert len(b.sock.queue) >= READ_BATCH  # it did not wait for the whole flood
        finally:
            b.close()

    run(main())


def test_received_carries_the_kernel_receive_time() -> None:
    """SO_TIMESTAMPNS ancillary data (a struct timespec) becomes `stamp`, for IPv4 and IPv6; without it
    the stamp is unknown."""
    ts = struct.pack("@ll", 1_700_000_000, 250_000_000)
    anc = [(socket.SOL_SOCKET, vrrp_socket.SO_TIMESTAMPNS, ts)]
    assert vrrp_socket._stamp(anc) == pytest.approx(1_700_000_000.25)
    assert vrrp_socket._stamp([]) is None
    header = bytes([0x45, 0, 0, 28]) + bytes(4) + bytes([255, 112, 0, 0]) + MASTER.packed + GROUP.packed
    got = vrrp_socket._parse_ipv4(header + bytes(8), vrrp_socket._stamp(anc))
    assert got is not None and got.stamp == pytest.approx(1_700_000_000.25) and got.ttl == 255
    v6 = [(socket.IPPROTO_IPV6, vrrp_socket.IPV6_PKTINFO, ipaddress.IPv6Address("ff02::12").packed + bytes(4)),
          (socket.IPPROTO_IPV6, vrrp_socket.IPV6_HOPLIMIT, struct.pack("@i", 255)), *anc]
    got6 = vrrp_socket._parse_ipv6(b"x", v6, ("fe80::a%eth1", 0, 0, 3))
    assert got6 is not None and got6.stamp == pytest.approx(1_700_000_000.25)


def test_a_read_error_is_said_and_master_down_still_fires() -> None:
    """A socket error on read (none is expected from a raw socket, but one may come) is an error event, and
    no timer is lost: with nothing heard the backup still takes over at Master_Down."""

    class FailingSock(QueueSock):
        def receive(self, limit: int = 1 << 30) -> list[Received]:
            out = super().receive(limit)
            self.error = OSError(105, "No buffer space available")
            return out

    async def main() -> None:
        log = ListLog()
        b = Backup(FailingSock())
        b.hb.warn = RateLimitedLog(log)
        try:
            deadline = await b.follow()
            await asyncio.sleep(max(0.0, deadline - asyncio.get_running_loop().time()) + 0.02)
            assert [to for _, to in b.changes] == ["BACKUP", "MASTER"]
            said = [(level, kw["error"]) for level, event, kw in log.events if event == "vrrp.receive_failed"]
            assert said[:1] == [("error", "No buffer space available")]
        finally:
            b.close()

    run(main())
