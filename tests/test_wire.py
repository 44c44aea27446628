"""VRRP wire format: known-good bytes, round trips, and hostile input only ever raising PacketError."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from havs.core import wire
from havs.core.wire import Advertisement, arp_announcement, decode, encode
from havs.errors import PacketError

SRC = ipaddress.IPv4Address("192.168.0.1")
PEER = ipaddress.IPv4Address("192.168.0.2")
GROUP = wire.MULTICAST_V4
VIP = ipaddress.IPv4Address("192.168.0.108")
GW = ipaddress.IPv4Address("192.168.72.130")
SRC6 = ipaddress.IPv6Address("fe80::1")


# v2, VRID 51, priority 150, one address, auth PASS "secret", 1 s. Checksum by hand over the message:
# 2133+9601+0101+c0a8+006c+7365+6372+6574+0000 = 2b594 → fold b594+2 = b596 → complement 4a69.
V2_BYTES = bytes.fromhex("21339601 01014a69 c0a8006c 73656372 65740000".replace(" ", ""))
V2_ADV = Advertisement(2, 51, 150, (VIP,), 1, "secret")

# v3, VRID 51, priority 100, two addresses, 100 cs, 192.168.0.1 → 224.0.0.18.
# message words 3133+6402+0064+c0a8+006c+c0a8+4882 = 25fd7; IPv4 pseudo-header
# c0a8+0001+e000+0012+0070(proto 112)+0010(len 16) = 1a13b; total 40112 → 0116 → fee9.
# Message only (RFC 9568): 25fd7 → 5fd9 → a026.
V3_BYTES = bytes.fromhex("31336402 0064fee9 c0a8006c c0a84882".replace(" ", ""))
V3_BYTES_MESSAGE_ONLY = bytes.fromhex("31336402 0064a026 c0a8006c c0a84882".replace(" ", ""))
V3_ADV = Advertisement(3, 51, 100, (VIP, GW), 100)


def test_v2_known_bytes() -> None:
    assert encode(V2_ADV, src=SRC, dst=GROUP) == V2_BYTES
    assert decode(V2_BYTES, src=SRC, dst=GROUP, ttl=255) == V2_ADV


def test_v3_known_bytes_pseudo_header_is_default() -> None:
    assert encode(V3_ADV, src=SRC, dst=GROUP) == V3_BYTES
    assert encode(V3_ADV, src=SRC, dst=GROUP, checksum="message") == V3_BYTES_MESSAGE_ONLY


def test_v3_accepts_both_checksum_forms() -> None:
    assert decode(V3_BYTES, src=SRC, dst=GROUP, ttl=255) == V3_ADV
    assert decode(V3_BYTES_MESSAGE_ONLY, src=SRC, dst=GROUP, ttl=255) == V3_ADV


def test_v3_pseudo_header_binds_source() -> None:
    # the pseudo-header form checked against another source must fail (it is not a message-only sum)
    with pytest.raises(PacketError) as e:
        decode(V3_BYTES, src=PEER, dst=GROUP, ttl=255)
    assert e.value.reason == "checksum"


def test_old_keepalived_unicast_checksum_accepted() -> None:
    # keepalived < 1.3.6 put the multicast group in the pseudo-header even when sending unicast
    payload = encode(V3_ADV, src=SRC, dst=GROUP)
    assert decode(payload, src=SRC, dst=PEER, ttl=None) == V3_ADV


def test_v2_without_auth() -> None:
    adv = Advertisement(2, 7, 100, (VIP, GW), 3)
    payload = encode(adv, src=SRC, dst=GROUP)
    assert payload[4] == 0 and payload[-8:] == bytes(8)
    assert decode(payload, src=SRC, dst=GROUP, ttl=255) == adv


def test_v2_password_is_cut_to_eight_bytes() -> None:
    payload = encode(Advertisement(2, 7, 100, (VIP,), 1, "longpassword"), src=SRC, dst=GROUP)
    assert payload[-8:] == b"longpass"
    assert decode(payload, src=SRC, dst=GROUP, ttl=255).auth_pass == "longpass"


def test_ipv6_v3_roundtrip_uses_ipv6_pseudo_header() -> None:
    adv = Advertisement(3, 9, 200, (ipaddress.IPv6Address("fe80::9"), ipaddress.IPv6Address("2001:db8::9")), 50)
    payload = encode(adv, src=SRC6, dst=wire.MULTICAST_V6)
    assert len(payload) == 8 + 32
    assert decode(payload, src=SRC6, dst=wire.MULTICAST_V6, ttl=255) == adv
    # message-only is not accepted for IPv6
    with pytest.raises(PacketError):
        decode(payload, src=ipaddress.IPv6Address("fe80::2"), dst=wire.MULTICAST_V6, ttl=255)


@pytest.mark.parametrize(
    ("mutate", "reason", "ttl"),
    [
        (lambda b: b[:7], "short", 255),
        (lambda b: b[:-1], "short", 255),
        (lambda b: b + b"\x00\x00\x00\x00", "count", 255),
        (lambda b: b, "ttl", 254),
        (lambda b: bytes([0x41]) + b[1:], "version", 255),
        (lambda b: bytes([0x32]) + b[1:], "type", 255),
        (lambda b: b[:6] + b"\x00\x00" + b[8:], "checksum", 255),
        (lambda b: b[:3] + b"\x00" + b[4:], "count", 255),
    ],
)
def test_bad_packets_name_their_reason(mutate, reason: str, ttl: int) -> None:
    with pytest.raises(PacketError) as e:
        decode(mutate(V3_BYTES), src=SRC, dst=GROUP, ttl=ttl)
    assert e.value.reason == reason


def _with_checksum(message: bytes) -> bytes:
    zeroed = message[:6] + b"\x00\x00" + message[8:]
    csum = wire.internet_checksum(zeroed)
    return zeroed[:6] + csum.to_bytes(2, "big") + zeroed[8:]


def test_zero_interval_and_unknown_auth_rejected_even_with_good_checksum() -> None:
    with pytest.raises(PacketError) as e:
        decode(_with_checksum(V3_BYTES[:4] + b"\xf0\x00" + V3_BYTES[6:]), src=SRC, dst=GROUP, ttl=255)
    assert e.value.reason == "interval"
    with pytest.raises(PacketError) as e:
        decode(_with_checksum(V2_BYTES[:4] + b"\x02" + V2_BYTES[5:]), src=SRC, dst=GROUP, ttl=255)
    assert e.value.reason == "auth"
    with pytest.raises(PacketError) as e:
        decode(_with_checksum(V2_BYTES[:5] + b"\x00" + V2_BYTES[6:]), src=SRC, dst=GROUP, ttl=255)
    assert e.value.reason == "interval"
    with pytest.raises(PacketError) as e:
        decode(_with_checksum(V2_BYTES[:1] + b"\x00" + V2_BYTES[2:]), src=SRC, dst=GROUP, ttl=255)
    assert e.value.reason == "router_id"


def test_v3_reserved_bits_ignored() -> None:
    payload = _with_checksum(V3_BYTES[:4] + bytes([0xF0 | V3_BYTES[4]]) + V3_BYTES[5:])
    assert decode(payload, src=SRC, dst=GROUP, ttl=255).advert_interval == 100


@pytest.mark.parametrize("good", [V2_BYTES, V3_BYTES, V3_BYTES_MESSAGE_ONLY])
def test_every_single_bitflip_and_truncation_is_a_packet_error(good: bytes) -> None:
    for i in range(len(good) * 8):
        flipped = bytearray(good)
        flipped[i // 8] ^= 0x80 >> (i % 8)
        with pytest.raises(PacketError):
            decode(bytes(flipped), src=SRC, dst=GROUP, ttl=255)
    for n in range(len(good)):
        with pytest.raises(PacketError):
            decode(good[:n], src=SRC, dst=GROUP, ttl=255)


v4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
v6 = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1))


@st.composite
def adverts(draw: st.DrawFn) -> tuple[Advertisement, ipaddress.IPv4Address | ipaddress.IPv6Address]:
    version = draw(st.sampled_from([2, 3]))
    family = 4 if version == 2 else draw(st.sampled_from([4, 6]))
    addrs = tuple(draw(st.lists(v4 if family == 4 else v6, min_size=1, max_size=20)))
    src = draw(v4 if family == 4 else v6)
    if version == 2:
        interval = draw(st.integers(1, 255))
        auth = draw(st.none() | st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=8))
    else:
        interval, auth = draw(st.integers(1, 4095)), None
    adv = Advertisement(version, draw(st.integers(1, 255)), draw(st.integers(0, 255)), addrs, interval, auth)
    return adv, src


@given(adverts(), st.sampled_from(["pseudo_header", "message"]))
def test_roundtrip(case, mode) -> None:
    adv, src = case
    dst = GROUP if src.version == 4 else wire.MULTICAST_V6
    assert decode(encode(adv, src=src, dst=dst, checksum=mode), src=src, dst=dst, ttl=255) == adv


@given(adverts(), st.data())
@settings(max_examples=300)
def test_mangled_adverts_raise_only_packet_error(case, data) -> None:
    adv, src = case
    dst = GROUP if src.version == 4 else wire.MULTICAST_V6
    payload = bytearray(encode(adv, src=src, dst=dst))
    cut = data.draw(st.integers(0, len(payload)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(payload) - 1), st.integers(0, 7)), max_size=4))
    for pos, bit in flips:
        payload[pos] ^= 1 << bit
    try:
        out = decode(bytes(payload[:cut]), src=src, dst=dst, ttl=255)
    except PacketError:
        return
    # multiple flips can cancel out in a 16-bit sum; whatever got through must be well-formed
    assert isinstance(out, Advertisement) and out.addresses


@given(st.binary(max_size=200), v4)
def test_random_bytes_never_crash(payload: bytes, src: ipaddress.IPv4Address) -> None:
    with contextlib.suppress(PacketError):
        decode(payload, src=src, dst=GROUP, ttl=255)


def test_arp_announcement_frame() -> None:
    mac = bytes.fromhex("020000000001")
    frame = arp_announcement(mac, VIP)
    assert len(frame) == 42
    assert frame[0:6] == b"\xff" * 6  # broadcast
    assert frame[6:12] == mac
    assert frame[12:14] == b"\x08\x06"
    assert frame[14:22] == bytes.fromhex("0001080006040001")  # ethernet/IPv4, op 1 (request)
    assert frame[22:28] == mac and frame[28:32] == VIP.packed  # sender = us, the VIP
    assert frame[32:38] == b"\xff" * 6 and frame[38:42] == VIP.packed  # target = the VIP too
