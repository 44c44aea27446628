"""`auth_hmac` trailer: keepalived 2.4.3's own vectors (test/auth_hmac_test.c, the draft's appendix), the
mutations it checks, and the replay/freshness rules, all against havs.core.vrrp_auth."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from havs.core import vrrp_auth, wire
from havs.core.vrrp_auth import (
    BAD_MAC,
    MALFORMED,
    MISSING,
    REPLAY,
    STALE,
    UNKNOWN_KEY,
    Authenticator,
    AuthParams,
)

KEY = bytes(range(32))
V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address
# keepalived 2.4.3 test/auth_hmac_test.c: key 00..1f, VRID 51, prio 200, sequence 0x6800000080000000
IPV4_VEC = bytes.fromhex("3133c80100644402c0000264" "010100006800000080000000" "1b84bc4e8e43892dc6d98448f8ee2265")
IPV6_VEC = bytes.fromhex("3133c8010064a2e9" "fe800000000000000000000000000100" "010100006800000080000000"
                         "c8c56146ebfd66ee10ec4d8186461b78")
VEC_WALL = 0x68000000 + 0.5  # the vectors' own time (their stamps lie outside any live window)


def auth(mode: str = "enforce", anti_replay: str = "monotonic", window: int = 5, keys: dict[int, bytes] | None = None,
         active: int = 1) -> Authenticator:
    return Authenticator(AuthParams(keys=keys or {1: KEY}, active_key=active, anti_replay=anti_replay,  # type: ignore[arg-type]
                                    time_window=window, mode=mode))  # type: ignore[arg-type]


def check(a: Authenticator, pkt: bytes, src: object, wall: float = VEC_WALL, router_id: int = 51) -> str | None:
    msg, tail = vrrp_auth.split(pkt, src.version)  # type: ignore[attr-defined]
    return a.check(msg, tail, version=3, router_id=router_id, src=src, wall=wall)  # type: ignore[arg-type]


@pytest.mark.parametrize("pkt,src", [(IPV4_VEC, V4("198.51.100.10")), (IPV6_VEC, V6("fe80::10"))], ids=["v4", "v6"])
def test_keepalived_vectors_verify(pkt: bytes, src: object) -> None:
    assert check(auth(), pkt, src) is None
    assert check(auth(anti_replay="time"), pkt, src) is None  # at the vector's own time


@pytest.mark.parametrize("pkt,src", [(IPV4_VEC, V4("198.51.100.10")), (IPV6_VEC, V6("fe80::10"))], ids=["v4", "v6"])
def test_signing_reproduces_the_vectors_byte_for_byte(pkt: bytes, src: object) -> None:
    msg = pkt[:-28]
    tail = vrrp_auth.trailer(1, KEY, 0x6800000080000000, msg, version=3, router_id=51, src=src)  # type: ignore[arg-type]
    assert msg + tail == pkt


def test_encode_builds_the_ipv4_vector_and_decode_reads_it() -> None:
    adv = wire.Advertisement(3, 51, 200, (V4("192.0.2.100"),), 100)
    src = V4("198.51.100.10")
    msg = wire.encode(adv, src=src, dst=wire.MULTICAST_V4, checksum="message")
    tail = vrrp_auth.trailer(1, KEY, 0x6800000080000000, msg, version=3, router_id=51, src=src)
    assert wire.encode(adv, src=src, dst=wire.MULTICAST_V4, checksum="message", trailer=tail) == IPV4_VEC
    # the checksum is not covered: the pseudo-header checksum carries the same trailer
    pseudo = wire.encode(adv, src=src, dst=wire.MULTICAST_V4, trailer=tail)
    assert pseudo[-28:] == tail and check(auth(), pseudo, src) is None
    m, t = vrrp_auth.split(pseudo, 4)
    assert wire.decode(m, src=src, dst=wire.MULTICAST_V4, ttl=255, trailer=t or b"") == adv


def test_ipv6_checksum_covers_the_trailer_as_the_kernel_does() -> None:
    # keepalived's test: the kernel's transport checksum for destination fe80::20 over message + trailer
    src, dst = V6("fe80::10"), V6("fe80::20")
    adv = wire.Advertisement(3, 51, 200, (V6("fe80::100"),), 100)
    msg = wire.encode(adv, src=src, dst=dst)
    tail = vrrp_auth.trailer(1, KEY, 0x6800000080000000, msg, version=3, router_id=51, src=src)
    pkt = wire.encode(adv, src=src, dst=dst, trailer=tail)
    assert wire.internet_checksum(wire._pseudo_header(src, dst, len(pkt)) + pkt) == 0
    m, t = vrrp_auth.split(pkt, 6)
    assert wire.decode(m, src=src, dst=dst, ttl=255, trailer=t or b"") == adv
    with pytest.raises(Exception, match="checksum"):
        wire.decode(m, src=src, dst=dst, ttl=255)  # without the trailer the sum is wrong


TRAILER_AT = 24  # the IPv6 vector's message length


@pytest.mark.parametrize("offset,expected", [
    (2, BAD_MAC),  # priority
    (5, BAD_MAC),  # advert interval
    (6, None),  # checksum: not covered
    (8 + 15, BAD_MAC),  # the VIP
    (TRAILER_AT + 0, MALFORMED),  # ext type
    (TRAILER_AT + 1, UNKNOWN_KEY),  # key id
    (TRAILER_AT + 2, MALFORMED),  # reserved
    (TRAILER_AT + 4, BAD_MAC),  # seconds
    (TRAILER_AT + 10, BAD_MAC),  # counter
    (TRAILER_AT + 12, BAD_MAC),  # the MAC
], ids=["priority", "interval", "checksum", "vip", "ext_type", "key_id", "reserved", "seconds", "counter", "mac"])
def test_keepalived_mutations(offset: int, expected: str | None) -> None:
    pkt = bytearray(IPV6_VEC)
    pkt[offset] ^= 0x01
    assert check(auth(), bytes(pkt), V6("fe80::10")) == expected


def test_source_address_and_router_id_are_bound() -> None:
    assert check(auth(), IPV6_VEC, V6("fe80::20")) == BAD_MAC
    assert check(auth(), IPV6_VEC, V6("fe80::10"), router_id=52) == BAD_MAC


def test_replay_and_a_second_receiver() -> None:
    a, b = auth(), auth()
    assert check(a, IPV4_VEC, V4("198.51.100.10")) is None
    assert check(a, IPV4_VEC, V4("198.51.100.10")) == REPLAY
    assert check(b, IPV4_VEC, V4("198.51.100.10")) is None  # one signature serves every peer


def test_time_window_stale_and_future() -> None:
    a = auth(anti_replay="time", window=5)
    assert check(a, IPV4_VEC, V4("198.51.100.10"), wall=VEC_WALL + 100) == STALE
    assert check(a, IPV4_VEC, V4("198.51.100.10"), wall=VEC_WALL - 100) == STALE
    assert check(a, IPV4_VEC, V4("198.51.100.10"), wall=VEC_WALL + 5) is None  # edge of the window


def test_stale_is_decided_before_the_digest_and_never_moves_the_mark() -> None:
    a = auth(anti_replay="time")
    forged = bytearray(IPV4_VEC)
    forged[-1] ^= 1
    assert check(a, bytes(forged), V4("198.51.100.10"), wall=VEC_WALL + 100) == STALE
    assert check(a, bytes(forged), V4("198.51.100.10")) == BAD_MAC
    assert a.marks == {}  # forged data never moves the replay mark


SENDER = V4("10.0.0.1")


def sign_at(a: Authenticator, wall: float, src: V4 = SENDER, prio: int = 100) -> bytes:
    msg = wire.encode(wire.Advertisement(3, 51, prio, (V4("10.0.0.100"),), 100), src=src, dst=wire.MULTICAST_V4)
    return msg + a.sign(msg, version=3, router_id=51, src=src, wall=wall)


def test_sequence_grows_even_when_the_clock_does_not() -> None:
    tx = auth(anti_replay="time")
    rx = auth(anti_replay="time")
    pkts = [sign_at(tx, 1_700_000_000.0) for _ in range(3)]
    seqs = [struct.unpack("!Q", p[-24:-16])[0] for p in pkts]
    assert seqs == [seqs[0], seqs[0] + 1, seqs[0] + 2]
    assert [check(rx, p, V4("10.0.0.1"), wall=1_700_000_000.0) for p in pkts] == [None, None, None]
    # reordered: an older advert after a newer one is a replay (keepalived keeps no reorder window)
    rx2 = auth(anti_replay="time")
    assert check(rx2, pkts[2], V4("10.0.0.1"), wall=1_700_000_000.0) is None
    assert check(rx2, pkts[1], V4("10.0.0.1"), wall=1_700_000_000.0) == REPLAY


def test_clock_step_back_time_mode_restarts_monotonic_keeps_growth() -> None:
    t = 1_700_000_000.0
    tm, mono = auth(anti_replay="time"), auth(anti_replay="monotonic")
    tm.send_seq = mono.send_seq = int(t + 3600) << 32
    tm.next_seq(t)
    assert abs((tm.send_seq >> 32) - t) <= 1  # back to the clock: receivers' marks expire after the window
    mono.next_seq(t)
    assert mono.send_seq == (int(t + 3600) << 32) + 1


def test_receiver_mark_beyond_the_window_expires_in_time_mode_only() -> None:
    t = 1_700_000_000.0
    src = V4("10.0.0.1")
    pkt = sign_at(auth(anti_replay="time"), t)
    rx = auth(anti_replay="time")
    rx.marks[src] = int(t + 3600) << 32
    assert check(rx, pkt, src, wall=t) is None
    assert check(rx, pkt, src, wall=t) == REPLAY
    rxm = auth(anti_replay="monotonic")
    rxm.marks[src] = int(t + 7200) << 32
    assert check(rxm, pkt, src, wall=t) == REPLAY


def test_modes() -> None:
    plain = wire.encode(wire.Advertisement(3, 51, 100, (V4("10.0.0.100"),), 100), src=V4("10.0.0.1"),
                        dst=wire.MULTICAST_V4)
    assert check(auth("enforce"), plain, V4("10.0.0.1")) == MISSING
    assert check(auth("permissive"), plain, V4("10.0.0.1")) is None
    assert check(auth("receive_only"), plain, V4("10.0.0.1")) is None
    ro = auth("receive_only")
    assert ro.sign(plain, version=3, router_id=51, src=V4("10.0.0.1"), wall=1.0) == b""
    # receive_only still verifies a trailer that is there
    assert check(auth("receive_only"), IPV4_VEC[:-1] + bytes([IPV4_VEC[-1] ^ 1]), V4("198.51.100.10")) == BAD_MAC


def test_rotation_verifies_any_configured_key_and_signs_with_the_active_one() -> None:
    k2 = bytes(range(100, 164))  # 64 bytes: the largest key
    old = auth(keys={1: KEY}, active=1)
    both = auth(keys={1: KEY, 2: k2}, active=2)
    t = 1_700_000_000.0
    p_old = sign_at(old, t)
    p_new = sign_at(both, t + 1)
    assert p_new[-27] == 2 and p_old[-27] == 1
    rx = auth(keys={1: KEY, 2: k2}, active=1)
    assert check(rx, p_old, V4("10.0.0.1"), wall=t) is None
    assert check(rx, p_new, V4("10.0.0.1"), wall=t) is None
    assert check(auth(keys={1: KEY}), p_new, V4("10.0.0.1"), wall=t) == UNKNOWN_KEY


def test_multicast_replay_table_is_bounded() -> None:
    rx = auth(anti_replay="time")
    t = 1_700_000_000.0
    for i in range(10):
        src = V4(f"10.0.0.{i + 1}")
        assert check(rx, sign_at(auth(anti_replay="time"), t, src), src, wall=t) is None
    assert len(rx.marks) == vrrp_auth.MCAST_SENDERS


def test_split_recognises_the_trailer_by_exact_length_only() -> None:
    msg, tail = vrrp_auth.split(IPV4_VEC, 4)
    assert len(msg) == 12 and tail is not None and len(tail) == 28
    assert vrrp_auth.split(IPV4_VEC[:-1], 4) == (IPV4_VEC[:-1], None)
    assert vrrp_auth.split(IPV4_VEC[:12], 4) == (IPV4_VEC[:12], None)


@pytest.mark.parametrize("spec,ok", [
    ("hex:" + "ab" * 32, True), ("hex:" + "ab" * 64, True), ("hex:" + "ab" * 31, False), ("hex:" + "ab" * 65, False),
    ("hex:zz" + "ab" * 31, False), ("x" * 32, True), ("x" * 31, False), ("é" * 32, False),
])
def test_parse_key(spec: str, ok: bool) -> None:
    if ok:
        assert 32 <= len(vrrp_auth.parse_key(spec)) <= 64
    else:
        with pytest.raises(ValueError) as e:
            vrrp_auth.parse_key(spec)
        assert "ab" * 8 not in str(e.value)  # the key never appears in the message


def test_keys_never_in_repr() -> None:
    p = AuthParams(keys={1: KEY}, active_key=1)
    assert KEY.hex() not in repr(p) and repr(KEY) not in repr(p)


def test_default_window() -> None:
    assert vrrp_auth.default_window(0.1) == 5 and vrrp_auth.default_window(4) == 12
    assert vrrp_auth.default_window(200) == 300


# Captured from keepalived 2.4.3 itself (integration/test_auth_netns.py prints them): VRRPv3 from
# 192.168.72.132 to 224.0.0.18, VRID 51, priority 100, 0.1 s, VIP and gateway, key 1 = 00..1f.
KA_SRC = V4("192.168.72.132")
KA_CAPTURED = [
    bytes.fromhex("31336402000ab6c0c0a8006cc0a84882010100006b0ca76c7f39000006f402a55801963dcd5a0c2f31ce4c8c"),
    bytes.fromhex("31336402000ab6c0c0a8006cc0a84882010100006b0ca774d6600000a27bca1941fab11c96d117ae9a5f7bef"),
]


@pytest.mark.parametrize("pkt", KA_CAPTURED, ids=["time", "monotonic"])
def test_adverts_captured_from_keepalived_verify_decode_and_reproduce(pkt: bytes) -> None:
    msg, tail = vrrp_auth.split(pkt, 4)
    assert tail is not None
    sec = struct.unpack("!I", tail[4:8])[0]
    assert check(auth(anti_replay="time"), pkt, KA_SRC, wall=sec + 0.5) is None
    assert check(auth(anti_replay="monotonic"), pkt, KA_SRC, wall=0.0) is None
    adv = wire.decode(msg, src=KA_SRC, dst=wire.MULTICAST_V4, ttl=255, trailer=tail)
    assert (adv.router_id, adv.priority, adv.advert_interval) == (51, 100, 10)
    # havs signs the same message with the same sequence into the same bytes
    seq = struct.unpack("!Q", tail[4:12])[0]
    again = wire.encode(adv, src=KA_SRC, dst=wire.MULTICAST_V4)
    assert again + vrrp_auth.trailer(1, KEY, seq, again, version=3, router_id=51, src=KA_SRC) == pkt


def test_our_own_advert_replayed_at_us_is_a_replay() -> None:
    a = auth(anti_replay="time")
    pkt = sign_at(a, 1_700_000_000.0)
    assert check(a, pkt, SENDER, wall=1_700_000_000.0) == REPLAY
    assert a.marks == {}
