"""The rtnetlink address and link codec (havs.core.rtnl): requests as the kernel reads them, replies as the
kernel writes them; pyroute2 (a test dependency) as an independent encoder and decoder of the same bytes."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from havs.core import rtnl
from havs.core.genl import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, iter_messages, nla, parse_attrs
from havs.core.rtnl import (
    AF_INET,
    AF_INET6,
    IFA_ADDRESS,
    IFA_F_NODAD,
    IFA_F_SECONDARY,
    IFA_F_TENTATIVE,
    IFA_FLAGS,
    IFA_LOCAL,
    IFF_RUNNING,
    IFF_UP,
    NLM_F_CREATE,
    NLM_F_REPLACE,
    RTM_DELADDR,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_NEWADDR,
    Address,
    Link,
    address_request,
    getaddr_dump,
    getlink_request,
    parse_address,
    parse_link,
)

ifaddrmsg = pytest.importorskip("pyroute2.netlink.rtnl.ifaddrmsg").ifaddrmsg
ifinfmsg = pytest.importorskip("pyroute2.netlink.rtnl.ifinfmsg").ifinfmsg


def one(data: bytes) -> tuple[int, int, int, bytes]:
    (msg,) = list(iter_messages(data))
    kind, flags, seq, payload = msg
    assert struct.unpack_from("=I", data)[0] == len(data)  # the length covers the whole message
    return kind, flags, seq, bytes(payload)


def test_getlink_asks_for_one_link_by_name() -> None:
    kind, flags, seq, payload = one(getlink_request("eth1", 7))
    assert (kind, flags, seq) == (RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, 7)
    assert payload[:16] == bytes(16)  # family, type, index, flags, change: all zero (strict checking wants it)
    assert parse_attrs(payload, 16) == {rtnl.IFLA_IFNAME: b"eth1\0"}
    theirs = ifinfmsg(getlink_request("eth1", 7))
    theirs.decode()
    assert theirs.get_attr("IFLA_IFNAME") == "eth1" and theirs["index"] == 0


def test_address_dump_names_family_and_interface_only() -> None:
    kind, flags, seq, payload = one(getaddr_dump(AF_INET6, 5, 9))
    assert (kind, flags & NLM_F_DUMP, seq) == (RTM_GETADDR, NLM_F_DUMP, 9) and flags & NLM_F_REQUEST
    assert not flags & NLM_F_ACK  # a dump ends with NLMSG_DONE
    assert payload == struct.pack("=BBBBi", AF_INET6, 0, 0, 0, 5)  # prefixlen, flags, scope zero: strict-valid


def test_ipv4_add_is_replace_with_local_and_address() -> None:
    vip = ipaddress.ip_interface("192.168.72.130/24")
    data = address_request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, 3, 4, vip)
    kind, flags, seq, _payload = one(data)
    assert (kind, seq) == (RTM_NEWADDR, 3)
    assert flags == NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
    theirs = ifaddrmsg(data)
    theirs.decode()
    assert (theirs["family"], theirs["prefixlen"], theirs["index"], theirs["flags"]) == (AF_INET, 24, 4, 0)
    assert theirs.get_attr("IFA_LOCAL") == theirs.get_attr("IFA_ADDRESS") == "192.168.72.130"


def test_ipv6_add_carries_nodad_and_the_address() -> None:
    vip = ipaddress.ip_interface("2001:db8::10/64")
    data = address_request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, 3, 4, vip, IFA_F_NODAD)
    theirs = ifaddrmsg(data)
    theirs.decode()
    assert (theirs["family"], theirs["prefixlen"], theirs["index"], theirs["flags"]) == (AF_INET6, 64, 4, IFA_F_NODAD)
    assert theirs.get_attr("IFA_ADDRESS") == "2001:db8::10" and theirs.get_attr("IFA_LOCAL") is None


def test_delete_asks_for_an_ack_only() -> None:
    data = address_request(RTM_DELADDR, 0, 11, 2, ipaddress.ip_interface("10.0.0.9/32"))
    kind, flags, seq, payload = one(data)
    assert (kind, flags, seq) == (RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK, 11)
    assert parse_attrs(payload, 8) == {IFA_LOCAL: bytes([10, 0, 0, 9]), IFA_ADDRESS: bytes([10, 0, 0, 9])}


def kernel_address(family: int, prefixlen: int, flags: int, index: int, attrs: list[tuple[str, object]]) -> bytes:
    """An RTM_NEWADDR as the kernel sends it, encoded by pyroute2."""
    m = ifaddrmsg()
    m["header"]["type"] = RTM_NEWADDR
    m["family"], m["prefixlen"], m["flags"], m["index"] = family, prefixlen, flags, index
    m["attrs"] = attrs
    m.encode()
    return bytes(m.data)


def payload_of(data: bytes) -> bytes:
    return one(data)[3]


def test_ipv4_address_reply_local_first_secondary_flag() -> None:
    data = kernel_address(AF_INET, 24, IFA_F_SECONDARY, 3,
                          [("IFA_ADDRESS", "10.0.0.5"), ("IFA_LOCAL", "10.0.0.5"), ("IFA_LABEL", "eth0"),
                           ("IFA_FLAGS", IFA_F_SECONDARY)])
    a = parse_address(payload_of(data))
    assert a == Address(3, AF_INET, 24, IFA_F_SECONDARY, ipaddress.IPv4Address("10.0.0.5"),
                        ipaddress.IPv4Address("10.0.0.5"))
    assert a.interface == ipaddress.ip_interface("10.0.0.5/24") and not a.primary


def test_point_to_point_ipv4_is_our_local_address() -> None:
    data = kernel_address(AF_INET, 32, 0, 3, [("IFA_ADDRESS", "10.9.9.9"), ("IFA_LOCAL", "10.0.0.5")])
    a = parse_address(payload_of(data))
    assert a is not None and a.interface == ipaddress.ip_interface("10.0.0.5/32") and a.primary


def test_ipv6_flags_attribute_wins_over_the_header_byte() -> None:
    # IFA_FLAGS carries the 32-bit flags; the header's byte is their low 8 bits (older kernels send only that)
    data = kernel_address(AF_INET6, 64, 0x80, 2, [("IFA_ADDRESS", "fe80::1"), ("IFA_FLAGS", 0x80 | IFA_F_TENTATIVE)])
    a = parse_address(payload_of(data))
    assert a is not None and a.flags == 0x80 | IFA_F_TENTATIVE and a.local is None
    assert a.interface == ipaddress.ip_interface("fe80::1/64")
    without = kernel_address(AF_INET6, 64, IFA_F_TENTATIVE, 2, [("IFA_ADDRESS", "fe80::1")])
    assert parse_address(payload_of(without)).flags == IFA_F_TENTATIVE  # type: ignore[union-attr]


def test_broken_or_foreign_address_replies_are_none_or_addressless() -> None:
    assert parse_address(b"\x02\x18\x00") is None  # shorter than ifaddrmsg
    assert parse_address(struct.pack("=BBBBi", 17, 0, 0, 0, 1)) is None  # AF_PACKET: not ours
    bad_length = struct.pack("=BBBBi", AF_INET, 32, 0, 0, 1) + nla(IFA_ADDRESS, b"\x0a\x00\x00")  # 3 bytes
    a = parse_address(bad_length)
    assert a is not None and a.address is None and a.interface is None
    short_flags = struct.pack("=BBBBi", AF_INET, 32, 1, 0, 1) + nla(IFA_FLAGS, b"\x00")
    assert parse_address(short_flags).flags == 1  # type: ignore[union-attr]


@pytest.mark.parametrize(("flags", "up"), [(IFF_UP | IFF_RUNNING, True), (IFF_UP, False), (IFF_RUNNING, False),
                                           (0, False)])
def test_link_reply_index_flags_and_up(flags: int, up: bool) -> None:
    m = ifinfmsg()
    m["header"]["type"] = rtnl.RTM_NEWLINK
    m["index"], m["flags"] = 7, flags
    m["attrs"] = [("IFLA_IFNAME", "eth0"), ("IFLA_MTU", 1500)]
    m.encode()
    link = parse_link(payload_of(bytes(m.data)))
    assert link == Link(7, flags) and link.up is up
    assert parse_link(b"\0" * 15) is None
