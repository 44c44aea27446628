"""Connection entries: /proc/net/ip_vs_conn, the kernel's sync messages (v1), the catch-up channel."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from havs.core import ipvs_sync_wire as w

PROC = """\
Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData
TCP C0A80069 D4E2 C0A8006C 0050 C0A84880 0050 ESTABLISHED     894
TCP C0A80069 D4E3 C0A8006C 0050 C0A84881 0050 SYN_RECV         55
TCP C0A80069 D4E4 C0A8006C 0050 C0A84881 0050 TIME_WAIT       100
UDP C0A80069 1000 C0A8006C 0035 C0A84880 0035 UDP             290
TCP C0A80069 0000 C0A8006C 0050 C0A84880 0050 NONE            300
SCTP C0A80069 1000 C0A8006C 0050 C0A84880 0050 ESTABLISHED    300
"""
PROC += ("TCP 2001:0db8:0000:0000:0000:0000:0000:0001 D4E2 2001:0db8:0000:0000:0000:0000:0000:0002 0050 "
         "2001:0db8:0000:0000:0000:0000:0000:0003 0050 ESTABLISHED     894\n")
ip = ipaddress.ip_address


def test_parse_proc_conn() -> None:
    conns = w.parse_proc_conn(PROC)
    assert [(c.protocol, c.cport, c.state) for c in conns] == [
        (6, 0xD4E2, "ESTABLISHED"), (6, 0xD4E3, "SYN_RECV"), (6, 0xD4E4, "TIME_WAIT"), (17, 0x1000, "UDP"),
        (6, 0xD4E2, "ESTABLISHED")]  # templates (NONE) and SCTP left out
    first = conns[0]
    assert (first.client, first.vip, first.server, first.vport, first.dport, first.expires) == (
        ip("192.168.0.105"), ip("192.168.0.108"), ip("192.168.72.128"), 80, 80, 894)
    assert conns[-1].client == ip("2001:db8::1")
    # what is worth a replay: no half-open TCP, no IPv6
    assert [c.cport for c in w.replayable(conns)] == [0xD4E2, 0xD4E4, 0x1000]


def test_parse_proc_conn_names_a_bad_line() -> None:
    with pytest.raises(ValueError, match="line 2"):
        w.parse_proc_conn("Pro FromIP\nTCP C0A80069 ZZZZ C0A8006C 0050 C0A84880 0050 ESTABLISHED 1\n")
    with pytest.raises(ValueError, match="line 1"):
        w.parse_proc_conn("TCP C0A80069\n")


def test_sync_message_layout_is_the_kernels() -> None:
    conn = w.parse_proc_conn(PROC)[0]
    [msg] = w.encode_sync([conn], syncid=7)
    assert len(msg) == 8 + 36
    # header: reserved 0, syncid, size, one entry, version 1, spare 0
    assert struct.unpack("!BBHBbH", msg[:8]) == (0, 7, 44, 1, 1, 0)
    kind, proto, ver_size, flags, state, cport, vport, dport, mark, timeout = struct.unpack("!BBHIHHHHII", msg[8:32])
    assert (kind, proto, ver_size, flags, state, cport, vport, dport, mark, timeout) == (
        0, 6, 36, 0, 1, 0xD4E2, 80, 80, 0, 0)
    assert msg[32:] == bytes([192, 168, 0, 105, 192, 168, 0, 108, 192, 168, 72, 128])


def test_sync_messages_split_at_maxlen_and_round_trip() -> None:
    base = w.parse_proc_conn(PROC)[2]  # TIME_WAIT: sent inactive
    conns = [w.Conn(6, base.client, 1000 + i, base.vip, 80, base.server, 80, "TIME_WAIT") for i in range(100)]
    msgs = w.encode_sync(conns, syncid=0)
    assert all(len(m) <= w.SYNC_MAXLEN for m in msgs) and len(msgs) == 3  # 40 entries per 1472 bytes
    flags = struct.unpack("!I", msgs[0][12:16])[0]
    assert flags == w.CONN_F_INACTIVE
    decoded = [c for m in msgs for c in w.decode_sync(m)[1]]
    assert [c.key for c in decoded] == [c.key for c in conns]
    assert {c.state for c in decoded} == {"TIME_WAIT"}
    assert len(w.encode_sync(conns, maxlen=8 + 36)) == 100
    with pytest.raises(ValueError):
        w.encode_sync(conns, maxlen=40)
    assert w.encode_sync([]) == []


def test_decode_sync_refuses_what_the_kernel_refuses() -> None:
    [msg] = w.encode_sync(w.parse_proc_conn(PROC)[:1])
    with pytest.raises(ValueError):
        w.decode_sync(msg[:-1])  # size field disagrees
    with pytest.raises(ValueError):
        w.decode_sync(b"\x01" + msg[1:])  # reserved byte set: a v0 message
    with pytest.raises(ValueError):
        w.decode_sync(msg[:10] + b"\x10\x24" + msg[12:])  # entry version 1


def test_ipv6_entries_are_not_encoded() -> None:
    with pytest.raises(ValueError, match="IPv6"):
        w.encode_sync(w.parse_proc_conn(PROC)[-1:])


def test_channel_request_round_trip() -> None:
    data = w.encode_request(w.Request(2**63 + 5, syncid=3))
    assert w.decode_channel(data) == w.Request(2**63 + 5, 3)
    for bad in (b"", data[:-1], b"XXXX" + data[4:], data + b"x"):
        with pytest.raises(ValueError):
            w.decode_channel(bad)


def test_channel_answer_in_parts_reassembles() -> None:
    conns = w.replayable(w.parse_proc_conn(PROC))
    base = conns[0]
    keys = {w.Conn(6, base.client, i, base.vip, 80, base.server, 80).key for i in range(200)}
    parts = w.encode_answer(42, keys)
    assert len(parts) > 1 and all(len(p) <= w.PART_BYTES for p in parts)
    asm = w.Assembly(42)
    for p in reversed(parts):  # any order
        assert asm.done() is None
        assert asm.add(w.decode_channel(p))  # type: ignore[arg-type]
    assert asm.done() == keys
    assert not asm.add(w.AnswerPart(41, 0, 1, 0, ()))  # another round's part


def test_channel_answer_empty_table_is_one_part() -> None:
    [part] = w.encode_answer(1, [])
    asm = w.Assembly(1)
    decoded = w.decode_channel(part)
    assert isinstance(decoded, w.AnswerPart) and asm.add(decoded)
    assert asm.done() == frozenset()


def test_channel_answer_inconsistent_part_is_ignored() -> None:
    asm = w.Assembly(1)
    assert asm.add(w.AnswerPart(1, 0, 2, 5, ()))
    assert not asm.add(w.AnswerPart(1, 1, 3, 5, ()))
    with pytest.raises(ValueError):
        w.decode_channel(w.encode_answer(1, [])[0][:-1] + b"\x00\x00\x00\x00\x01")
