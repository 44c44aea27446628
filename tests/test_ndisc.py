"""Unsolicited neighbour advertisements: frame bytes (checksum checked by an independent sum and a
hand-computed vector), the Router flag, and the announcer sending each family its own announcement."""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from typing import Any

import pytest

from havs.core import wire
from havs.edge import garp as ndisc
from havs.vrrp.announcer import Announcer, RateLimitedLog

MAC = bytes.fromhex("020000000001")
VIP6 = ipaddress.IPv6Address("2001:db8::10")


def independent_checksum(src: bytes, dst: bytes, icmp: bytes) -> int:
    """RFC 4443 checksum written out longhand: no code shared with havs.core.wire."""
    data = src + dst + len(icmp).to_bytes(4, "big") + b"\x00\x00\x00\x3a" + icmp
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) + (data[i + 1] if i + 1 < len(data) else 0)
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return 0xFFFF - total


def test_na_frame_layout_every_field() -> None:
    f = wire.neighbour_advertisement(MAC, VIP6)
    assert len(f) == 14 + 40 + 24 + 8 == 86
    assert f[0:6] == bytes.fromhex("333300000001")  # ff02::1's multicast MAC
    assert f[6:12] == MAC and f[12:14] == b"\x86\xdd"
    ip = f[14:54]
    assert ip[0] >> 4 == 6 and struct.unpack("!H", ip[4:6])[0] == 32  # payload length: NA 24 + option 8
    assert ip[6] == 58 and ip[7] == 255  # ICMPv6, hop limit 255 (RFC 4861 §7.1.2 drops anything else)
    assert ipaddress.IPv6Address(ip[8:24]) == VIP6  # from the floating address itself
    assert ipaddress.IPv6Address(ip[24:40]) == ipaddress.IPv6Address("ff02::1")
    icmp = f[54:]
    assert icmp[0] == 136 and icmp[1] == 0
    assert icmp[4] == 0x20 and icmp[5:8] == b"\x00\x00\x00"  # Override only: unsolicited, not a router
    assert ipaddress.IPv6Address(icmp[8:24]) == VIP6
    assert icmp[24:26] == b"\x02\x01" and icmp[26:32] == MAC  # target link-layer address option
    got = struct.unpack("!H", icmp[2:4])[0]
    assert got == independent_checksum(ip[8:24], ip[24:40], icmp[:2] + b"\x00\x00" + icmp[4:])


def test_na_checksum_hand_computed_vector() -> None:
    # fe80::1 → ff02::1, target fe80::1, MAC 02:00:00:00:00:01, flags 0x20, worked out by hand:
    # pseudo-header words: fe80 + 0001 + ff02 + 0001 + 0020 (length) + 003a (next header) = 0x1fdde → 0xfddf
    # message words: 8800 + 2000 + fe80 + 0001 + 0201 + 0200 + 0000 + 0001 = 0x1aa83 → 0xaa84
    # 0xfddf + 0xaa84 = 0x1a863 → 0xa864; checksum ~0xa864 = 0x579b
    src = ipaddress.IPv6Address("fe80::1")
    f = wire.neighbour_advertisement(MAC, src, src=src)
    assert f[56:58] == b"\x57\x9b"


def test_router_flag_and_validation() -> None:
    f = wire.neighbour_advertisement(MAC, VIP6, router=True)
    assert f[58] == 0xA0  # Router + Override, never Solicited (to a multicast group)
    assert struct.unpack("!H", f[56:58])[0] == independent_checksum(f[22:38], f[38:54], f[54:56] + b"\0\0" + f[58:])
    with pytest.raises(ValueError):
        wire.neighbour_advertisement(b"\x00" * 5, VIP6)
    with pytest.raises(ValueError):
        ndisc.Ndisc().frame("eth0", MAC, ipaddress.IPv4Address("192.0.2.1"))


def test_router_flag_follows_forwarding(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "eth0").mkdir()
    (tmp_path / "eth0" / "forwarding").write_text("1\n")
    monkeypatch.setattr(ndisc, "PROC_CONF", tmp_path)
    assert ndisc.forwarding("eth0") is True
    assert ndisc.forwarding("missing") is False


class _Sender:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def announce(self, ifname: str, addresses: Any) -> int:
        self.calls.append((ifname, [str(a) for a in addresses]))
        return len(self.calls[-1][1])

    def close(self) -> None:
        pass


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.lines.append((event, kw))

    warning = error = info


async def test_one_announce_sends_garp_for_ipv4_and_na_for_ipv6() -> None:
    floating = ((ifname, ipaddress.ip_interface(a)) for ifname, a in
                [("eth0", "192.0.2.10/24"), ("eth0", "2001:db8::10/64"), ("eth1", "2001:db8:1::1/64")])
    log = _Log()
    ann = Announcer(tuple(floating), None, log, RateLimitedLog(log))  # type: ignore[arg-type]
    garp, na = _Sender(), _Sender()
    ann._senders = {4: garp, 6: na}  # type: ignore[dict-item]
    ann.announce(rounds=2, interval=0.0, reason="takeover")
    await asyncio.sleep(0.01)
    assert garp.calls == [("eth0", ["192.0.2.10"])] * 2
    assert na.calls == [("eth0", ["2001:db8::10"]), ("eth1", ["2001:db8:1::1"])] * 2
    events = sorted((e, kw["interface"], kw["count"]) for e, kw in log.lines)
    assert events == [("vrrp.garp", "eth0", 2), ("vrrp.unsolicited_na", "eth0", 2), ("vrrp.unsolicited_na", "eth1", 2)]
