"""VRRP advertisements ↔ bytes, gratuitous ARP frames and unsolicited neighbour advertisements.

Pure: no sockets. `encode` builds the VRRP message (the IP header is the kernel's business); `decode`
checks everything RFC 3768 §7.1 / RFC 5798 §7.1 asks of a receiver that can be checked without local
configuration, and raises `PacketError(reason)` with a short stable word for each kind of bad input, so
the caller counts drops by reason and never crashes on what a peer sends.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from dataclasses import dataclass
from typing import Literal

from havs.errors import PacketError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
ChecksumMode = Literal["pseudo_header", "message"]

PROTOCOL = 112
MULTICAST_V4 = ipaddress.IPv4Address("224.0.0.18")
MULTICAST_V6 = ipaddress.IPv6Address("ff02::12")
TTL = 255
TYPE_ADVERTISEMENT = 1
AUTH_NONE = 0
AUTH_PASS = 1
AUTH_DATA_LEN = 8


@dataclass(frozen=True)
class Advertisement:
    """One VRRP advertisement as the operator reads it.

    `advert_interval` is in the packet's own unit: centiseconds for v3 (12 bits), seconds for v2 (8 bits).
    `auth_pass` is VRRPv2 simple-text authentication (keepalived `auth_type PASS`), None for none.
    """

    version: int
    router_id: int
    priority: int
    addresses: tuple[IPAddress, ...]
    advert_interval: int
    auth_pass: str | None = None

    @property
    def interval_seconds(self) -> float:
        return self.advert_interval / 100 if self.version == 3 else float(self.advert_interval)


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def internet_checksum(data: bytes) -> int:
    """RFC 1071: one's complement of the one's-complement sum of 16-bit words."""
    return ~_sum16(data) & 0xFFFF


def _pseudo_header(src: IPAddress, dst: IPAddress, length: int) -> bytes:
    if src.version == 4:
        return src.packed + dst.packed + struct.pack("!BBH", 0, PROTOCOL, length)
    return src.packed + dst.packed + struct.pack("!I3xB", length, PROTOCOL)


def _checksum_for(
    message: bytes, version: int, src: IPAddress, dst: IPAddress, mode: ChecksumMode
) -> int:
    # v2 never had a pseudo-header; IPv6 always has one; IPv4 v3 is the disputed case (see notes).
    if version == 2 or (src.version == 4 and mode == "message"):
        return internet_checksum(message)
    return internet_checksum(_pseudo_header(src, dst, len(message)) + message)


def encode(
    adv: Advertisement,
    *,
    src: IPAddress,
    dst: IPAddress,
    checksum: ChecksumMode = "pseudo_header",
    trailer: bytes = b"",
) -> bytes:
    """The VRRP message for `adv`, sent from `src` to `dst` (both go into the v3 pseudo-header).

    `trailer`: an `auth_hmac` trailer (havs.core.vrrp_auth) appended after the message. As keepalived does,
    the IPv4 checksum covers the message only; the IPv6 one (the kernel's, on keepalived) covers it too."""
    if adv.version not in (2, 3):
        raise ValueError(f"VRRP version {adv.version}")
    if not 1 <= adv.router_id <= 255 or not 0 <= adv.priority <= 255:
        raise ValueError("router_id 1..255, priority 0..255")
    if not 1 <= len(adv.addresses) <= 255:
        raise ValueError("1..255 addresses")
    if any(a.version != src.version for a in adv.addresses) or src.version != dst.version:
        raise ValueError("addresses, source and destination must share one family")
    addrs = b"".join(a.packed for a in adv.addresses)
    if adv.version == 2:
        if src.version != 4:
            raise ValueError("VRRPv2 is IPv4 only")
        if not 1 <= adv.advert_interval <= 255:
            raise ValueError("v2 advert interval is 1..255 s")
        auth_type = AUTH_PASS if adv.auth_pass is not None else AUTH_NONE
        auth = (adv.auth_pass or "").encode("latin-1")[:AUTH_DATA_LEN].ljust(AUTH_DATA_LEN, b"\x00")
        head = struct.pack(
            "!BBBBBBH", 0x21, adv.router_id, adv.priority, len(adv.addresses), auth_type, adv.advert_interval, 0
        )
        message = head + addrs + auth
    else:
        if adv.auth_pass is not None:
            raise ValueError("VRRPv3 has no authentication")
        if not 1 <= adv.advert_interval <= 0xFFF:
            raise ValueError("v3 advert interval is 1..4095 cs")
        head = struct.pack("!BBBBHH", 0x31, adv.router_id, adv.priority, len(adv.addresses), adv.advert_interval, 0)
        message = head + addrs
    if src.version == 6:
        csum = _checksum_for(message + trailer, adv.version, src, dst, checksum)
    else:
        csum = _checksum_for(message, adv.version, src, dst, checksum)
    return message[:6] + struct.pack("!H", csum) + message[8:] + trailer


@functools.lru_cache(maxsize=64)
def decode(payload: bytes, *, src: IPAddress, dst: IPAddress, ttl: int | None,
           trailer: bytes = b"") -> Advertisement:
    """Parse and check one received VRRP message. `ttl=None` skips the TTL-255 rule (unicast peers, as
    keepalived does). Raises PacketError for anything a conforming receiver must discard. `trailer`: the
    `auth_hmac` trailer split off the payload (vrrp_auth.split); only the IPv6 checksum covers it.

    Memoized: a peer sends the same bytes every interval, and a flood repeats itself; the result is
    immutable and a pure function of the arguments."""
    if len(payload) < 8:
        raise PacketError("short", f"{len(payload)} bytes")
    if ttl is not None and ttl != TTL:
        raise PacketError("ttl", f"ttl {ttl}, must be 255")
    version, kind = payload[0] >> 4, payload[0] & 0x0F
    if version not in (2, 3) or (version == 2 and src.version != 4):
        raise PacketError("version", f"version {version} from IPv{src.version}")
    if kind != TYPE_ADVERTISEMENT:
        raise PacketError("type", f"type {kind}")
    router_id, priority, count = payload[1], payload[2], payload[3]
    if router_id == 0:
        raise PacketError("router_id", "router id 0")
    if count == 0:
        raise PacketError("count", "no addresses")
    alen = 4 if src.version == 4 else 16
    expected = 8 + count * alen + (AUTH_DATA_LEN if version == 2 else 0)
    if len(payload) < expected:
        raise PacketError("short", f"{len(payload)} bytes, {count} addresses need {expected}")
    if len(payload) > expected:
        raise PacketError("count", f"{len(payload)} bytes, {count} addresses need {expected}")
    if not _checksum_ok(payload + trailer if src.version == 6 else payload, version, src, dst):
        raise PacketError("checksum", f"bad checksum {payload[6]:02x}{payload[7]:02x}")
    addresses = _addresses(payload[8 : 8 + count * alen], alen)
    auth_pass: str | None = None
    if version == 2:
        auth_type, interval = payload[4], payload[5]
        if auth_type == AUTH_PASS:
            auth_pass = payload[expected - AUTH_DATA_LEN :].rstrip(b"\x00").decode("latin-1")
        elif auth_type != AUTH_NONE:
            raise PacketError("auth", f"auth type {auth_type} not supported")
    else:
        interval = struct.unpack("!H", payload[4:6])[0] & 0x0FFF  # top 4 bits reserved: ignore
    if interval == 0:
        raise PacketError("interval", "advert interval 0")
    return Advertisement(version, router_id, priority, addresses, interval, auth_pass)


@functools.lru_cache(maxsize=256)
def _addresses(raw: bytes, alen: int) -> tuple[IPAddress, ...]:
    # a peer (or a flood) repeats the same list: decode it once
    family = ipaddress.IPv4Address if alen == 4 else ipaddress.IPv6Address
    return tuple(family(raw[i : i + alen]) for i in range(0, len(raw), alen))


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _checksum_ok(payload: bytes, version: int, src: IPAddress, dst: IPAddress) -> bool:
    if version == 2 or src.version == 6:
        return _checksum_for(payload, version, src, dst, "pseudo_header") == 0
    # v3 over IPv4: accept keepalived/FRR (pseudo-header), RFC 9568/vendors (message only), and
    # keepalived < 1.3.6 unicast, which put the multicast group in the pseudo-header. The message is
    # summed once and each pseudo-header's sum added to it (one's-complement sums add).
    message = _sum16(payload)
    if message == 0xFFFF:
        return True
    n = len(payload)
    return (_fold(message + _sum16(_pseudo_header(src, dst, n))) == 0xFFFF
            or _fold(message + _sum16(_pseudo_header(src, MULTICAST_V4, n))) == 0xFFFF)


BROADCAST_MAC = b"\xff" * 6


def arp_announcement(mac: bytes, ip: ipaddress.IPv4Address) -> bytes:
    """The 42-byte Ethernet broadcast gratuitous ARP that keepalived sends: an ARP request (op 1) with
    sender = target = the VIP, sender hardware = our MAC, target hardware = broadcast."""
    if len(mac) != 6:
        raise ValueError("MAC must be 6 bytes")
    ether = BROADCAST_MAC + mac + struct.pack("!H", 0x0806)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip.packed + BROADCAST_MAC + ip.packed
    return ether + arp


ALL_NODES_V6 = ipaddress.IPv6Address("ff02::1")
ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"  # RFC 2464: 33:33 + the group's low 32 bits
ICMPV6 = 58
ND_NEIGHBOR_ADVERT = 136
NA_ROUTER, NA_SOLICITED, NA_OVERRIDE = 0x80, 0x40, 0x20
OPT_TARGET_LLADDR = 2


def icmpv6_checksum(src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, message: bytes) -> int:
    """RFC 4443 §2.3: the checksum over the IPv6 pseudo-header (RFC 8200 §8.1) and the message."""
    pseudo = src.packed + dst.packed + struct.pack("!I3xB", len(message), ICMPV6)
    return internet_checksum(pseudo + message)


def neighbour_advertisement(mac: bytes, target: ipaddress.IPv6Address, *, router: bool = False,
                            src: ipaddress.IPv6Address | None = None) -> bytes:
    """The 86-byte Ethernet frame of an unsolicited neighbour advertisement (RFC 4861 §7.2.6), the IPv6
    twin of `arp_announcement`: to all nodes (ff02::1), hop limit 255, Override set (replace the cached
    link-layer address), Solicited clear, target = the floating address, with a target link-layer address
    option carrying our MAC. Sent from `src`, by default the target itself (as keepalived does).
    `router`: the R flag; a host that sees it drop removes us from its default router list."""
    if len(mac) != 6:
        raise ValueError("MAC must be 6 bytes")
    src = target if src is None else src
    flags = NA_OVERRIDE | (NA_ROUTER if router else 0)
    option = struct.pack("!BB", OPT_TARGET_LLADDR, 1) + mac
    icmp = struct.pack("!BBHB3x", ND_NEIGHBOR_ADVERT, 0, 0, flags) + target.packed + option
    csum = icmpv6_checksum(src, ALL_NODES_V6, icmp)
    icmp = icmp[:2] + struct.pack("!H", csum) + icmp[4:]
    ipv6 = struct.pack("!IHBB", 6 << 28, len(icmp), ICMPV6, TTL) + src.packed + ALL_NODES_V6.packed
    ether = ALL_NODES_MAC + mac + struct.pack("!H", 0x86DD)
    return ether + ipv6 + icmp
