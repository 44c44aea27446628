"""`havs.edge.addresses` against the host kernel (root), in a network namespace of the test's own: floating
addresses added and removed (IPv4 and IPv6), listed, links up and down, advert sources, an interface
re-created under the same name, a kernel refusal. Each on asyncio's loop and on uvloop (the daemon's); what
the kernel holds is read back with `ip`, independently of the code under test."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import os
import re
import socket
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
import uvloop

from havs.edge.addresses import AddressError, Addresses
from havs.edge.netns import run_in_netns
from integration.namespaces import delete_netns, delete_stale

pytestmark = pytest.mark.netns

if os.geteuid() != 0:
    pytest.skip("needs root for network namespaces", allow_module_level=True)

T = TypeVar("T")
NS = f"havsaddr{os.getpid()}"
V4 = ipaddress.ip_interface("10.77.0.100/32")
V4_SUBNET = ipaddress.ip_interface("10.77.0.50/24")  # in the primary's subnet: a secondary
V6 = ipaddress.ip_interface("2001:db8:77::100/128")
LOOPS = ["asyncio", "uvloop"]


def ip(*args: str) -> str:
    return subprocess.run(["ip", "-n", NS, *args], check=True, capture_output=True, text=True).stdout


def veth(name: str) -> None:
    ip("link", "add", name, "type", "veth", "peer", "name", f"{name}p")
    ip("link", "set", f"{name}p", "up")


def kernel_addresses(ifname: str) -> dict[str, dict[str, Any]]:
    """{"address/prefix": ip's fields} as `ip -j address show` reports them."""
    (link,) = json.loads(ip("-j", "address", "show", "dev", ifname))
    return {f"{a['local']}/{a['prefixlen']}": a for a in link["addr_info"]}


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    delete_stale(re.compile(r"^havsaddr(\d+)$"))
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        yield NS
    finally:
        delete_netns([NS])


@pytest.fixture
def d0(netns: str) -> Iterator[str]:
    """A veth interface (the host kernel may have no dummy), up with its peer, with a primary IPv4 address."""
    veth("d0")
    ip("address", "add", "10.77.0.1/24", "dev", "d0")
    ip("link", "set", "d0", "up")
    try:
        yield "d0"
    finally:
        subprocess.run(["ip", "-n", NS, "link", "del", "d0"], capture_output=True)


def run(loop: str, body: Callable[[Addresses], Awaitable[T]]) -> T:
    """`body(addresses)` on a fresh loop of that kind, in a thread inside the namespace: the socket opens there."""
    async def main() -> T:
        addrs = await Addresses().open()
        try:
            return await body(addrs)
        finally:
            await addrs.close()

    def in_thread() -> T:
        if loop == "uvloop":
            return uvloop.run(main())
        return asyncio.run(main())

    return run_in_netns(NS, in_thread)


@pytest.mark.parametrize("loop", LOOPS)
def test_ipv4_add_list_remove_idempotent(d0: str, loop: str) -> None:
    async def body(a: Addresses) -> None:
        assert await a.add(d0, V4) is True
        assert "10.77.0.100/32" in kernel_addresses(d0)
        assert await a.add(d0, V4) is False  # present: nothing to do
        assert await a.present(d0, V4)
        assert await a.add(d0, V4_SUBNET) is True
        listed = await a.list(d0)
        assert listed[0] == (ipaddress.ip_interface("10.77.0.1/24"), True)  # kernel order: primary first
        assert (V4, True) in listed and (V4_SUBNET, False) in listed  # /32 elsewhere: primary; same subnet: not
        assert await a.primary_ipv4(d0, exclude={V4.ip, V4_SUBNET.ip}) == ipaddress.IPv4Address("10.77.0.1")
        await a.ensure(d0, V4)  # "replace": present already, no error
        assert await a.remove(d0, V4) is True
        assert "10.77.0.100/32" not in kernel_addresses(d0)
        assert await a.remove(d0, V4) is False  # absent
        assert await a.remove(d0, ipaddress.ip_interface("10.77.0.50/32")) is False  # other prefix: not ours
        assert "10.77.0.50/24" in kernel_addresses(d0)
        assert await a.remove("nosuch0", V4) is False  # no interface: absent

    run(loop, body)


@pytest.mark.parametrize("loop", LOOPS)
def test_ipv6_floating_address_skips_dad_and_link_local_is_the_source(d0: str, loop: str) -> None:
    async def body(a: Addresses) -> None:
        assert await a.add(d0, V6) is True
        held = kernel_addresses(d0)["2001:db8:77::100/128"]
        assert held.get("nodad") is True and not held.get("tentative")
        listed = await a.list(d0, socket.AF_INET6)
        assert (V6, True) in listed
        for _ in range(100):  # made once the carrier is seen (linkwatch runs up to 1 s later)
            lladdr = [k.split("/")[0] for k in kernel_addresses(d0) if k.startswith("fe80:")]
            if lladdr:
                break
            await asyncio.sleep(0.05)
        assert await a.link_local(d0) == ipaddress.IPv6Address(lladdr[0])  # tentative (DAD running) or not
        assert await a.remove(d0, V6) is True and await a.remove(d0, V6) is False
        assert "2001:db8:77::100/128" not in kernel_addresses(d0)

    run(loop, body)


@pytest.mark.parametrize("loop", LOOPS)
def test_link_up_follows_admin_state_and_carrier(netns: str, loop: str) -> None:
    ip("link", "add", "v0", "type", "veth", "peer", "name", "v1")
    try:
        async def body(a: Addresses) -> list[bool]:
            states = [await a.link_up("v0")]  # down
            ip("link", "set", "v0", "up")
            states.append(await a.link_up("v0"))  # up, no carrier: the peer is down
            ip("link", "set", "v1", "up")
            states.append(await a.link_up("v0"))
            ip("link", "del", "v0")
            states.append(await a.link_up("v0"))  # gone: down
            return states

        assert run(loop, body) == [False, False, True, False]
    finally:
        subprocess.run(["ip", "-n", NS, "link", "del", "v0"], capture_output=True)


@pytest.mark.parametrize("loop", LOOPS)
def test_an_interface_recreated_under_the_same_name_is_looked_up_again(d0: str, loop: str) -> None:
    def recreate() -> None:
        ip("link", "del", d0)
        veth(d0)
        ip("link", "set", d0, "up")

    async def body(a: Addresses) -> None:
        assert await a.add(d0, V4) and await a.add(d0, V6)
        old = await a.index(d0)
        recreate()
        ip("address", "add", str(V4), "dev", d0)
        ip("address", "add", str(V6), "dev", d0, "nodad")
        assert await a.present(d0, V4) and await a.present(d0, V6)  # listed by the new index, not the old one
        assert await a.index(d0) != old
        recreate()
        await a.ensure(d0, V4)  # ENODEV on the cached index: looked up again, then added
        await a.ensure(d0, V6)
        assert {"10.77.0.100/32", "2001:db8:77::100/128"} <= set(kernel_addresses(d0))
        recreate()
        ip("address", "add", str(V4), "dev", d0)
        assert await a.remove(d0, V4) is True  # the new interface's, not "absent" by a stale index
        assert "10.77.0.100/32" not in kernel_addresses(d0)

    run(loop, body)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_kernel_refusal_is_an_address_error_naming_interface_and_address(d0: str, loop: str) -> None:
    subprocess.run(["ip", "netns", "exec", NS, "sysctl", "-qw", f"net.ipv6.conf.{d0}.disable_ipv6=1"], check=True)

    async def body(a: Addresses) -> AddressError:
        with pytest.raises(AddressError) as e:
            await a.ensure(d0, V6)
        with pytest.raises(AddressError, match="no interface nosuch0"):
            await a.ensure("nosuch0", V4)
        return e.value

    err = run(loop, body)
    assert isinstance(err, OSError) and err.errno == errno.EACCES
    assert "d0" in str(err) and "2001:db8:77::100/128" in str(err)
