"""`Addresses` on uvloop (the daemon's loop, where the BGP supervisor's loopback VIPs live) and on asyncio's
(the VRRP child's). pyroute2's async socket was a datagram endpoint on AF_NETLINK, which uvloop refuses
("cannot open a UDP handle, invalid family 16"); ours is a plain socket read at once, or on the loop's
reader when the answer is not there yet. The kernel itself answers here without privileges (lookups, reads,
a missing interface); a fake kernel on a socket pair answers late, never, wrongly, or with an error."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import re
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
import uvloop

from havs.core.genl import NLMSG_DONE, NLMSG_ERROR, iter_messages, nla
from havs.core.rtnl import (
    AF_INET,
    IFA_ADDRESS,
    IFA_F_SECONDARY,
    IFA_LOCAL,
    IFF_RUNNING,
    IFF_UP,
    RTM_DELADDR,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    message,
)
from havs.edge.addresses import AddressError, Addresses

VIP = ipaddress.ip_interface("10.99.0.1/32")
RUNNERS: dict[str, Callable[[Coroutine[Any, Any, Any]], Any]] = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.fixture(params=sorted(RUNNERS))
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    return RUNNERS[request.param]


def test_addresses_open_and_the_kernel_answers_on_either_loop(run: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
    async def main() -> str:
        addrs = await Addresses().open()
        try:
            assert await addrs.link_up("lo")
            assert (ipaddress.ip_interface("127.0.0.1/8"), True) in await addrs.list("lo")
            assert await addrs.primary_ipv4("lo") == ipaddress.IPv4Address("127.0.0.1")
            assert await addrs.index("lo") == socket.if_nametoindex("lo")
            assert not await addrs.link_up("nosuchif0")  # a missing interface is down
            assert await addrs.remove("nosuchif0", VIP) is False  # and holds nothing
            with pytest.raises(AddressError, match="nosuchif0") as e:
                await addrs.add("nosuchif0", VIP)
            assert e.value.errno == errno.ENODEV and isinstance(e.value, OSError)
        finally:
            await addrs.close()
        await addrs.close()  # twice: a no-op
        return type(asyncio.get_running_loop()).__module__

    assert run(main()).split(".")[0] in ("asyncio", "uvloop")


# ---- a fake kernel: the other end of a SOCK_SEQPACKET pair keeps datagram boundaries, as netlink does ----

def link_reply(seq: int, index: int, flags: int) -> bytes:
    return message(RTM_NEWLINK, 0, seq, struct.pack("=BxHiII", 0, 0, index, flags, 0))


def ack(seq: int, err: int = 0) -> bytes:
    return message(NLMSG_ERROR, 0, seq, struct.pack("=i", -err) + bytes(16))


def address_reply(seq: int, index: int, iface: str, flags: int = 0) -> bytes:
    a = ipaddress.ip_interface(iface)
    return message(RTM_NEWADDR, 2, seq, struct.pack("=BBBBi", AF_INET, a.network.prefixlen, flags, 0, index)
                   + nla(IFA_ADDRESS, a.ip.packed) + nla(IFA_LOCAL, a.ip.packed))


def done(seq: int, err: int = 0) -> bytes:
    return message(NLMSG_DONE, 2, seq, struct.pack("=i", -err))


class FakeKernel:
    def __init__(self) -> None:
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.ours.setblocking(False)
        self.theirs.setblocking(False)
        self.requests: list[tuple[int, int]] = []  # (type, seq)

    async def serve(self, answer: Callable[[int, int], Awaitable[list[bytes]]]) -> None:
        """Each request as it comes: `answer(type, seq)` gives the datagrams to send back."""
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.theirs, 1 << 16)
            ((kind, _flags, seq, _payload),) = list(iter_messages(data))
            self.requests.append((kind, seq))
            for datagram in await answer(kind, seq):
                self.theirs.send(datagram)

    def addresses(self, timeout: float = 1.0) -> Addresses:
        addrs = Addresses(timeout=timeout)
        addrs._sock = self.ours  # in place of open(): the same socket calls, another peer
        return addrs

    def close(self) -> None:
        self.ours.close()
        self.theirs.close()


async def serving(kernel: FakeKernel, answer: Callable[[int, int], Awaitable[list[bytes]]]) -> asyncio.Task[None]:
    task = asyncio.ensure_future(kernel.serve(answer))
    await asyncio.sleep(0)
    return task


def test_a_late_answer_is_awaited_on_the_loop_which_keeps_running(run: Callable[..., Any]) -> None:
    async def main() -> tuple[bool, int]:
        kernel = FakeKernel()

        async def late(kind: int, seq: int) -> list[bytes]:
            await asyncio.sleep(0.1)
            return [link_reply(seq, 4, IFF_UP | IFF_RUNNING), ack(seq)]

        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        server, tick = await serving(kernel, late), asyncio.ensure_future(ticker())
        try:
            up = await kernel.addresses().link_up("eth9")
            return up, ticks
        finally:
            server.cancel()
            tick.cancel()
            kernel.close()

    up, ticks = run(main())
    assert up and ticks >= 5  # the loop ran other work while the answer was awaited


def test_no_answer_times_out_and_its_late_answer_is_not_taken_for_the_next(run: Callable[..., Any]) -> None:
    async def main() -> None:
        kernel = FakeKernel()
        stale: list[bytes] = []

        async def answer(kind: int, seq: int) -> list[bytes]:
            if seq == 1:  # no answer in time: it comes only before the next request's own
                stale.append(link_reply(seq, 4, 0) + ack(seq))
                return []
            return [*stale, link_reply(seq, 5, IFF_UP | IFF_RUNNING), ack(seq)]

        server = await serving(kernel, answer)
        addrs = kernel.addresses(timeout=0.1)
        try:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(AddressError, match=re.escape("no answer from the kernel in 0.1 s: link eth9")) as e:
                await addrs.link_up("eth9")
            assert e.value.errno == errno.ETIMEDOUT and 0.09 <= loop.time() - t0 < 1.0
            assert await addrs.link_up("eth9") is True  # index 5, up: its own answer, not the stale "down"
            assert await addrs.index("eth9") == 5
        finally:
            server.cancel()
            kernel.close()

    run(main())


def test_a_kernel_refusal_names_interface_and_address_and_a_dump_spans_datagrams(run: Callable[..., Any]) -> None:
    async def main() -> None:
        kernel = FakeKernel()

        async def answer(kind: int, seq: int) -> list[bytes]:
            if kind == RTM_GETLINK:
                return [link_reply(seq, 4, IFF_UP) + ack(seq)]
            if kind == RTM_GETADDR:  # three datagrams, another interface's address filtered out
                return [address_reply(seq, 4, "10.0.0.1/24") + address_reply(seq, 9, "10.9.0.1/24"),
                        address_reply(seq, 4, "10.0.0.7/24", IFA_F_SECONDARY), done(seq)]
            return [ack(seq, errno.EPERM)]

        server = await serving(kernel, answer)
        addrs = kernel.addresses()
        try:
            with pytest.raises(AddressError) as e:
                await addrs.ensure("eth9", VIP)
            assert e.value.errno == errno.EPERM and str(e.value) == (
                "[Errno 1] Operation not permitted: add 10.99.0.1/32 dev eth9")
            with pytest.raises(AddressError, match=re.escape("delete 10.99.0.1/32 dev eth9")):
                await addrs.remove("eth9", VIP)  # EPERM is not "absent"
            assert await addrs.list("eth9") == [(ipaddress.ip_interface("10.0.0.1/24"), True),
                                                (ipaddress.ip_interface("10.0.0.7/24"), False)]
            # the index looked up once, then cached
            assert [k for k, _ in kernel.requests] == [RTM_GETLINK, RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR]
            assert [s for _, s in kernel.requests] == [1, 2, 3, 4]
        finally:
            server.cancel()
            kernel.close()

    run(main())


def test_a_dump_refused_at_its_end_is_an_error(run: Callable[..., Any]) -> None:
    async def main() -> None:
        kernel = FakeKernel()

        async def answer(kind: int, seq: int) -> list[bytes]:
            if kind == RTM_GETLINK:
                return [link_reply(seq, 4, IFF_UP) + ack(seq)]
            return [done(seq, errno.EINVAL)]

        server = await serving(kernel, answer)
        try:
            with pytest.raises(AddressError, match="addresses of eth9") as e:
                await kernel.addresses().list("eth9")
            assert e.value.errno == errno.EINVAL
        finally:
            server.cancel()
            kernel.close()

    run(main())


def test_requests_before_open_are_refused() -> None:
    async def main() -> None:
        with pytest.raises(RuntimeError, match="open"):
            await Addresses().link_up("lo")

    asyncio.run(main())


def test_closing_while_a_request_awaits_its_answer_ends_it_within_the_timeout(run: Callable[..., Any]) -> None:
    async def main() -> None:
        kernel = FakeKernel()

        async def never(kind: int, seq: int) -> list[bytes]:
            return []

        server = await serving(kernel, never)
        addrs = kernel.addresses(timeout=0.2)
        try:
            pending = asyncio.ensure_future(addrs.link_up("eth9"))
            await asyncio.sleep(0.05)
            await addrs.close()
            with pytest.raises(AddressError) as e:
                await asyncio.wait_for(pending, 1.0)
            assert e.value.errno == errno.ETIMEDOUT
            with pytest.raises(RuntimeError, match="open"):
                await addrs.link_up("eth9")  # closed: refused, not a read of a closed fd
        finally:
            server.cancel()
            kernel.close()

    run(main())
