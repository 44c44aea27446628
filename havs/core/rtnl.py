"""rtnetlink messages for addresses and links: the requests `havs.edge.addresses` sends, and the replies it
reads. Pure (bytes in, values out), on the netlink framing of `havs.core.genl` (header, attributes, replies).
Layouts: include/uapi/linux/rtnetlink.h, if_addr.h, if_link.h; host byte order.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from havs.core.genl import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, nla, nla_str, parse_attrs

RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
NLM_F_REPLACE = 0x100
NLM_F_CREATE = 0x400
IFLA_IFNAME = 3
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
AF_INET, AF_INET6 = 2, 10  # socket's numbers, spelled here: a core imports no socket
IFF_UP = 0x1
IFF_RUNNING = 0x40  # operstate UP (or UNKNOWN for carrier-less devices such as dummy/lo)
IFA_F_SECONDARY = 0x01
IFA_F_NODAD = 0x02  # an IPv6 floating address is usable at once: no duplicate-address wait after a takeover
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40

_HDR = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id (0: the kernel fills it)
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBi")  # ifaddrmsg: family, prefixlen, flags, scope, index
_U32 = struct.Struct("=I")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True)
class Link:
    index: int
    flags: int  # IFF_*

    @property
    def up(self) -> bool:
        """Administratively up and running (carrier)."""
        return bool(self.flags & IFF_UP and self.flags & IFF_RUNNING)


@dataclass(frozen=True)
class Address:
    index: int
    family: int
    prefixlen: int
    flags: int  # IFA_FLAGS (32 bits) when the kernel sends it, else ifaddrmsg's 8
    address: IPAddress | None  # IFA_ADDRESS: the peer's on a point-to-point address
    local: IPAddress | None  # IFA_LOCAL: IPv4's own address (IPv6 sends it only with a peer)

    @property
    def interface(self) -> Interface | None:
        """Our own address with its prefix (IFA_LOCAL, else IFA_ADDRESS)."""
        ip = self.local or self.address
        if ip is None:
            return None
        if ip.version == 4:
            return ipaddress.IPv4Interface((ip, self.prefixlen))
        return ipaddress.IPv6Interface((ip, self.prefixlen))

    @property
    def primary(self) -> bool:
        return not self.flags & IFA_F_SECONDARY


def message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return _HDR.pack(_HDR.size + len(body), kind, flags, seq, 0) + body


def getlink_request(ifname: str, seq: int) -> bytes:
    """One link by name: answered by an RTM_NEWLINK and an ack, or ENODEV."""
    return message(RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, seq,
                   _IFINFO.pack(0, 0, 0, 0, 0) + nla_str(IFLA_IFNAME, ifname))


def getaddr_dump(family: int, index: int, seq: int) -> bytes:
    """Every address of `family`; the kernel keeps only interface `index`'s under NETLINK_GET_STRICT_CHK
    (ENODEV when there is no such interface), else the reader filters."""
    return message(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, _IFADDR.pack(family, 0, 0, 0, index))


def address_request(kind: int, flags: int, seq: int, index: int, address: Interface, ifa_flags: int = 0) -> bytes:
    """RTM_NEWADDR / RTM_DELADDR for `address` on interface `index`, as `ip address add/del` sends it: IPv4
    with IFA_LOCAL and IFA_ADDRESS both the address (no peer), IPv6 with IFA_ADDRESS."""
    family = AF_INET if address.version == 4 else AF_INET6
    raw = address.ip.packed
    attrs = (nla(IFA_LOCAL, raw) if address.version == 4 else b"") + nla(IFA_ADDRESS, raw)
    return message(kind, NLM_F_REQUEST | NLM_F_ACK | flags, seq,
                   _IFADDR.pack(family, address.network.prefixlen, ifa_flags, 0, index) + attrs)


def parse_link(payload: bytes | memoryview) -> Link | None:
    """An RTM_NEWLINK's index and flags (None if too short)."""
    if len(payload) < _IFINFO.size:
        return None
    _family, _type, index, flags, _change = _IFINFO.unpack_from(payload)
    return Link(index, flags)


def parse_address(payload: bytes | memoryview) -> Address | None:
    """An RTM_NEWADDR (None if too short or of a family other than IPv4/IPv6)."""
    if len(payload) < _IFADDR.size:
        return None
    family, prefixlen, flags, _scope, index = _IFADDR.unpack_from(payload)
    if family not in (AF_INET, AF_INET6):
        return None
    attrs = parse_attrs(payload, _IFADDR.size)
    raw_flags = attrs.get(IFA_FLAGS)
    if raw_flags is not None and len(raw_flags) >= 4:
        flags = _U32.unpack_from(raw_flags)[0]
    return Address(index, family, prefixlen, flags, _ip(attrs.get(IFA_ADDRESS), family),
                   _ip(attrs.get(IFA_LOCAL), family))


def _ip(raw: bytes | None, family: int) -> IPAddress | None:
    if raw is None:
        return None
    if family == AF_INET:
        return ipaddress.IPv4Address(raw) if len(raw) == 4 else None
    return ipaddress.IPv6Address(raw) if len(raw) == 16 else None
