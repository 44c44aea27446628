"""The generic-netlink IPVS codec without a kernel: encode → our parser, and hand-built kernel replies."""

from __future__ import annotations

import socket
import struct

import pytest

from havs.core.ipvs_diff import AddDestination, AddService, DeleteDestination, DeleteService, EditDestination
from havs.core.ipvs_table import Destination, Service, ServiceKey, SyncDaemon
from havs.edge import ipvs as g

FAMILY = 0x1C


def parse_request(data: bytes) -> tuple[int, int, int, dict[int, bytes]]:
    [(kind, flags, seq, payload)] = list(g.iter_messages(data))
    assert kind == FAMILY
    cmd, version, _ = struct.unpack_from("=BBH", payload)
    assert version == 1
    return cmd, flags, seq, g.genl_attrs(payload)


def test_add_service_carries_every_field_in_kernel_encoding() -> None:
    svc = Service(ServiceKey.tcp("192.168.0.108", 80), "rr", persistent=True, timeout=300,
                  netmask="255.255.255.0", pe_name="sip", one_packet=True)
    cmd, flags, seq, top = parse_request(g.encode_op(FAMILY, AddService(svc), 7))
    assert (cmd, seq) == (g.CMD_NEW_SERVICE, 7)
    assert flags == g.NLM_F_REQUEST | g.NLM_F_ACK
    a = g.parse_attrs(top[g.CMD_ATTR_SERVICE])
    assert struct.unpack("=H", a[g.SVC_ATTR_AF])[0] == socket.AF_INET
    assert struct.unpack("=H", a[g.SVC_ATTR_PROTOCOL])[0] == socket.IPPROTO_TCP
    assert a[g.SVC_ATTR_ADDR] == bytes([192, 168, 0, 108])
    assert a[g.SVC_ATTR_PORT] == b"\x00\x50"  # big-endian
    assert a[g.SVC_ATTR_SCHED_NAME] == b"rr\0"
    assert a[g.SVC_ATTR_PE_NAME] == b"sip\0"
    assert struct.unpack("=II", a[g.SVC_ATTR_FLAGS]) == (0x1 | 0x4, 0xFFFFFFFF)
    assert struct.unpack("=I", a[g.SVC_ATTR_TIMEOUT])[0] == 300
    assert a[g.SVC_ATTR_NETMASK] == bytes([255, 255, 255, 0])  # network order
    # and our own decoder gets the same service back
    assert g.decode_service(a)[0] == svc


def test_ipv6_netmask_is_a_native_prefix_length_and_fwmark_has_no_address() -> None:
    svc = Service(ServiceKey.mark(42, "inet6"), "sh", persistent=True, timeout=60, netmask=64,
                  sched_flags=frozenset({"sh-fallback", "sh-port"}))
    _cmd, _f, _s, top = parse_request(g.encode_op(FAMILY, AddService(svc), 1))
    a = g.parse_attrs(top[g.CMD_ATTR_SERVICE])
    assert a[g.SVC_ATTR_NETMASK] == struct.pack("=I", 64)
    assert struct.unpack("=I", a[g.SVC_ATTR_FWMARK])[0] == 42
    assert g.SVC_ATTR_ADDR not in a and g.SVC_ATTR_PORT not in a
    assert struct.unpack("=II", a[g.SVC_ATTR_FLAGS])[0] == 0x1 | 0x8 | 0x10
    assert g.decode_service(a)[0] == svc


def test_destination_edit_is_complete_and_tunnel_port_big_endian() -> None:
    key = ServiceKey.udp("fd00::1", 53)
    d = Destination.at("10.1.0.2", 0, forwarding="tunnel", weight=5, upper_threshold=100,
                       lower_threshold=10, tunnel_type="gue", tunnel_port=6080, tunnel_flags="remcsum")
    cmd, _f, _s, top = parse_request(g.encode_op(FAMILY, EditDestination(key, d), 3))
    assert cmd == g.CMD_SET_DEST
    s = g.parse_attrs(top[g.CMD_ATTR_SERVICE])
    assert s[g.SVC_ATTR_ADDR] == socket.inet_pton(socket.AF_INET6, "fd00::1")
    assert g.SVC_ATTR_SCHED_NAME not in s  # a dest op names its service by key only
    a = g.parse_attrs(top[g.CMD_ATTR_DEST])
    assert struct.unpack("=I", a[g.DEST_ATTR_FWD_METHOD])[0] == 2
    assert a[g.DEST_ATTR_TUN_PORT] == struct.pack("!H", 6080)
    assert struct.unpack("=H", a[g.DEST_ATTR_ADDR_FAMILY])[0] == socket.AF_INET
    back, _stats = g.decode_dest(a, "inet6")
    assert back == d


def test_deletes_send_keys_only() -> None:
    key = ServiceKey.tcp("10.0.0.1", 80)
    cmd, _f, _s, top = parse_request(g.encode_op(FAMILY, DeleteService(Service(key)), 1))
    assert cmd == g.CMD_DEL_SERVICE
    assert set(g.parse_attrs(top[g.CMD_ATTR_SERVICE])) == {g.SVC_ATTR_AF, g.SVC_ATTR_PROTOCOL,
                                                           g.SVC_ATTR_ADDR, g.SVC_ATTR_PORT}
    cmd, _f, _s, top = parse_request(g.encode_op(FAMILY, DeleteDestination(key, Destination.at("10.1.0.1", 80)), 2))
    assert cmd == g.CMD_DEL_DEST
    assert set(g.parse_attrs(top[g.CMD_ATTR_DEST])) == {g.DEST_ATTR_ADDR, g.DEST_ATTR_PORT, g.DEST_ATTR_ADDR_FAMILY}


def _kernel_dest_reply(seq: int) -> bytes:
    """A GET_DEST dump message as ip_vs_genl_fill_dest builds it (16-byte address, STATS64 with PAD)."""
    stats = b"".join(g.nla(k, struct.pack("=Q", v)) for k, v in
                     ((1, 10), (2, 63), (3, 50), (4, 4096), (5, 8192), (6, 1), (7, 2), (8, 3), (9, 4), (10, 5)))
    stats += g.nla(11, b"")  # IPVS_STATS_ATTR_PAD
    dest = (g.nla(g.DEST_ATTR_ADDR, socket.inet_aton("192.168.72.129") + b"\0" * 12)
            + g.nla_be16(g.DEST_ATTR_PORT, 80) + g.nla_u32(g.DEST_ATTR_FWD_METHOD, 0)
            + g.nla_u32(g.DEST_ATTR_WEIGHT, 1) + g.nla_u8(g.DEST_ATTR_TUN_TYPE, 0)
            + g.nla_be16(g.DEST_ATTR_TUN_PORT, 0) + g.nla_u16(g.DEST_ATTR_TUN_FLAGS, 0)
            + g.nla_u32(g.DEST_ATTR_U_THRESH, 0) + g.nla_u32(g.DEST_ATTR_L_THRESH, 0)
            + g.nla_u32(g.DEST_ATTR_ACTIVE_CONNS, 2) + g.nla_u32(g.DEST_ATTR_INACT_CONNS, 7)
            + g.nla_u32(g.DEST_ATTR_PERSIST_CONNS, 0)
            + g.nla_nest(g.DEST_ATTR_STATS, g.nla_u32(1, 10))
            + g.nla_nest(g.DEST_ATTR_STATS64, stats) + g.nla_u16(g.DEST_ATTR_ADDR_FAMILY, socket.AF_INET))
    return g.genl_message(FAMILY, g.CMD_NEW_DEST, 0x2, seq, g.nla_nest(g.CMD_ATTR_DEST, dest))


def test_decode_hand_built_kernel_dest_reply_with_stats() -> None:
    done = struct.pack("=IHHII", 20, g.NLMSG_DONE, 0x2, 9, 0) + struct.pack("=i", 0)
    msgs = list(g.iter_messages(_kernel_dest_reply(9) + done))
    assert [m[0] for m in msgs] == [FAMILY, g.NLMSG_DONE]
    top = g.genl_attrs(msgs[0][3])
    d, ds = g.decode_dest(g.parse_attrs(top[g.CMD_ATTR_DEST]), "inet")
    assert d == Destination.at("192.168.72.129", 80, weight=1)
    assert (ds.active_conns, ds.inactive_conns) == (2, 7)
    assert ds.stats.conns == 10 and ds.stats.inbytes == 4096 and ds.stats.outbps == 5  # STATS64 wins


def test_decode_kernel_service_drops_hashed_flag() -> None:
    svc = (g.nla_u16(g.SVC_ATTR_AF, socket.AF_INET) + g.nla_u16(g.SVC_ATTR_PROTOCOL, 6)
           + g.nla(g.SVC_ATTR_ADDR, socket.inet_aton("192.168.0.108") + b"\0" * 12)
           + g.nla_be16(g.SVC_ATTR_PORT, 80) + g.nla_str(g.SVC_ATTR_SCHED_NAME, "wlc")
           + g.nla(g.SVC_ATTR_FLAGS, struct.pack("=II", 0x2 | 0x1, 0xFFFFFFFF))
           + g.nla_u32(g.SVC_ATTR_TIMEOUT, 300) + g.nla(g.SVC_ATTR_NETMASK, b"\xff\xff\xff\xff"))
    service, stats = g.decode_service(g.parse_attrs(svc))
    assert service == Service(ServiceKey.tcp("192.168.0.108", 80), "wlc", persistent=True, timeout=300)
    assert stats.conns == 0


def test_error_reply_parsing_and_wording() -> None:
    # NLMSG_ERROR: header, then int error and the original request header (CAP_ACK)
    err = struct.pack("=IHHII", 36, g.NLMSG_ERROR, 0, 5, 0) + struct.pack("=i", -17) + b"\0" * 16
    [(kind, _f, seq, payload)] = list(g.iter_messages(err))
    assert (kind, seq, -struct.unpack_from("=i", payload)[0]) == (g.NLMSG_ERROR, 5, 17)
    op = AddDestination(ServiceKey.tcp("192.168.0.108", 80), Destination.at("192.168.72.129", 80))
    e = g.apply_error(op, 17)
    assert e.errno == 17
    assert str(e) == "TCP 192.168.0.108:80 -> 192.168.72.129:80: add destination: Destination already exists"


def test_daemon_roundtrip() -> None:
    d = SyncDaemon("master", "eth1", 7, maxlen=1400, group="224.0.0.81", port=8848, ttl=2)
    top = g.parse_attrs(g.daemon_attrs(d))
    assert g.decode_daemon(g.parse_attrs(top[g.CMD_ATTR_DAEMON])) == d


def test_parse_proc_ip_vs_conn() -> None:
    text = ("Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData\n"
            "TCP C0A8000A D431 C0A8006C 0050 C0A84881 0050 TIME_WAIT        98\n"
            "UDP fd00:0000:0000:0000:0000:0000:0000:0002 0035 fd00:0000:0000:0000:0000:0000:0000:0001 0035 "
            "0A010002 0035 UDP             290 sip 1234@x\n")
    a, b = g.parse_ip_vs_conn(text)
    assert (a.client, a.client_port, a.virtual, a.destination, a.state, a.expires) == (
        "192.168.0.10", 0xD431, "192.168.0.108", "192.168.72.129", "TIME_WAIT", 98)
    assert (b.client, b.destination, b.pe_name, b.pe_data) == ("fd00::2", "10.1.0.2", "sip", "1234@x")


@pytest.mark.parametrize("n", [1, 3])
def test_batch_flags_ack_only_the_last(n: int) -> None:
    key = ServiceKey.tcp("10.0.0.1", 80)
    ops = [AddDestination(key, Destination.at("10.1.0.1", 80 + i)) for i in range(n)]
    data = b"".join(g.encode_op(FAMILY, op, 100 + i, g.NLM_F_REQUEST | (g.NLM_F_ACK if i == n - 1 else 0))
                    for i, op in enumerate(ops))
    msgs = list(g.iter_messages(data))
    assert [m[2] for m in msgs] == list(range(100, 100 + n))
    assert [bool(m[1] & g.NLM_F_ACK) for m in msgs] == [False] * (n - 1) + [True]


def _dest_nest(pad_stats: bool) -> bytes:
    """A dest nest in ip_vs_genl_fill_dest's order; `pad_stats` puts PAD attrs before each u64
    as architectures without efficient unaligned access (UML among them) do."""
    u64s = b""
    for k, v in ((1, 10), (2, 63), (3, 50), (4, 4096), (5, 8192), (6, 1), (7, 2), (8, 3), (9, 4), (10, 5)):
        if pad_stats:
            u64s += g.nla(11, b"")
        u64s += g.nla(k, struct.pack("=Q", v))
    return (g.nla(g.DEST_ATTR_ADDR, socket.inet_aton("192.168.72.129") + b"\0" * 12)
            + g.nla_be16(g.DEST_ATTR_PORT, 80) + g.nla_u32(g.DEST_ATTR_FWD_METHOD, 2)
            + g.nla_u32(g.DEST_ATTR_WEIGHT, 4) + g.nla_u8(g.DEST_ATTR_TUN_TYPE, 1)
            + g.nla_be16(g.DEST_ATTR_TUN_PORT, 6080) + g.nla_u16(g.DEST_ATTR_TUN_FLAGS, 2)
            + g.nla_u32(g.DEST_ATTR_U_THRESH, 9) + g.nla_u32(g.DEST_ATTR_L_THRESH, 3)
            + g.nla_u32(g.DEST_ATTR_ACTIVE_CONNS, 2) + g.nla_u32(g.DEST_ATTR_INACT_CONNS, 7)
            + g.nla_u32(g.DEST_ATTR_PERSIST_CONNS, 1) + g.nla_u16(g.DEST_ATTR_ADDR_FAMILY, socket.AF_INET)
            + g.nla_nest(g.DEST_ATTR_STATS, g.nla_u32(1, 10)) + g.nla_nest(g.DEST_ATTR_STATS64, u64s))


@pytest.mark.parametrize("pad", [False, True])
def test_fast_dest_decoder_agrees_with_generic(pad: bool) -> None:
    nest = _dest_nest(pad)
    slow, slow_stats = g.decode_dest(g.parse_attrs(nest), "inet")
    fast = g.decode_dest_fast(nest)
    assert fast is not None
    d, rest, conns = fast
    assert d == slow == Destination.at("192.168.72.129", 80, forwarding="tunnel", weight=4, upper_threshold=9,
                                       lower_threshold=3, tunnel_type="gue", tunnel_port=6080,
                                       tunnel_flags="remcsum")
    assert g._decode_dest_stats((rest, conns)) == slow_stats
    assert slow_stats.stats.outbps == 5 and (slow_stats.active_conns, slow_stats.persistent_conns) == (2, 1)
    # an unexpected layout (attributes reordered) is refused, not misread
    assert g.decode_dest_fast(g.nla_be16(g.DEST_ATTR_PORT, 80) + nest) is None


def test_kernel_without_ipvs_gives_a_clear_error() -> None:
    """The build host's kernel has no IPVS (the UML lab has): opening says so plainly."""
    import os

    from havs.errors import IpvsUnavailable

    if os.path.exists("/proc/net/ip_vs"):
        pytest.skip("this kernel has IPVS")
    sock = g.IpvsSocket()
    with pytest.raises(IpvsUnavailable, match=r"this kernel has no IPVS \(modprobe ip_vs\?\)"):
        sock.open_now()
