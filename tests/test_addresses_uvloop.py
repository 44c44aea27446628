"""The daemon runs on uvloop, whose datagram endpoints refuse AF_NETLINK sockets: pyroute2's async rtnetlink
socket cannot open there (the BGP supervisor's loopback VIPs failed in the scale-out drill with "cannot open
a UDP handle, invalid family 16"). `OwnLoopAddresses` runs them on a standard loop in a thread of its own."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterator

import pytest
import uvloop

from havs.edge.addresses import AddressError, Addresses, OwnLoopAddresses
from havs.edge.probe import install_uvloop

VIP = ipaddress.ip_interface("10.99.0.1/32")


@pytest.fixture(autouse=True)
def uvloop_policy() -> Iterator[None]:
    """As `havs run` sets it: every new loop is a uvloop one unless asked otherwise."""
    install_uvloop()
    yield
    asyncio.set_event_loop_policy(None)


def test_plain_addresses_cannot_open_on_uvloop() -> None:
    async def main() -> None:
        with pytest.raises((ValueError, OSError)):
            await Addresses().open()

    uvloop.run(main())


def test_own_loop_addresses_work_from_uvloop_and_close() -> None:
    async def main() -> None:
        addrs = await OwnLoopAddresses().open()
        try:
            with pytest.raises(AddressError, match="nosuchif0"):
                await addrs.add("nosuchif0", VIP)  # the kernel answered through the thread's loop
        finally:
            await addrs.close()
        await addrs.close()  # twice: a no-op, not a wait on a loop that no longer runs
        addrs._thread.join(5)
        assert not addrs._thread.is_alive() and addrs._loop.is_closed()

    uvloop.run(main())
