"""The kernel's IPVS table over generic netlink: dump, apply ops, flush, zero, timeouts, info,
sync daemons, the connection table.

Why our own codec and not pyroute2's IPVS layer (see /work/shared/notes/pyroute2-ipvs.md, every
point checked against a real kernel): its "update" verb deletes; a partial "set" resets the
fields it was not given (a dest becomes DR, a service loses persistence); `from_message` returns
defaults instead of the kernel's values; the IPv6 netmask and the tunnel port are encoded wrongly;
FLUSH, ZERO, timeouts, daemons and GET_INFO are missing; and it spends ~240 µs of CPU encoding
each message. IPVS over genl is a dozen fixed attributes, so a `struct` codec is ~2 µs per
message and lets us batch: a batch of requests goes out in one send() with NLM_F_ACK on the last
one only — the kernel handles the requests in order inside that send(), always reports errors,
and the final ack marks the end. 11,000 ops then cost ~90 syscalls instead of 22,000, which is
what beats `ipvsadm -R`. Nothing of pyroute2 is used here (the family id is one GETFAMILY).

Attribute numbers and encodings follow include/uapi/linux/ip_vs.h and net/netfilter/ipvs/
ip_vs_ctl.c: ports and the tunnel port are big-endian; an IPv4 netmask is the mask in network
order, an IPv6 one the prefix length as a native u32; addresses are sent as 4/16 bytes and come
back as 16.

Async on the caller's loop (non-blocking socket, `loop.sock_recv`); `SyncIpvs` is a blocking
façade for the CLI. `IpvsSocket(netns="lb")` opens the socket inside /run/netns/lb from a
short-lived thread that setns()'s there — no fork.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno as errno_mod
import functools
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, TypeVar

from havs.core.ipvs_diff import (
    AddDestination,
    AddService,
    DeleteDestination,
    DeleteService,
    EditDestination,
    EditService,
    Op,
)
from havs.core.ipvs_table import (
    Connection,
    Destination,
    DestinationKey,
    DestinationStats,
    IpvsInfo,
    IpvsTable,
    Service,
    ServiceKey,
    Stats,
    SyncDaemon,
    Timeouts,
    sched_flag_names,
)
from havs.errors import ApplyError, IpvsUnavailable

# ---- netlink / generic netlink constants ----
NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32

# ---- include/uapi/linux/ip_vs.h ----
IPVS_GENL_NAME = "IPVS"
IPVS_GENL_VERSION = 1
(CMD_NEW_SERVICE, CMD_SET_SERVICE, CMD_DEL_SERVICE, CMD_GET_SERVICE,
 CMD_NEW_DEST, CMD_SET_DEST, CMD_DEL_DEST, CMD_GET_DEST,
 CMD_NEW_DAEMON, CMD_DEL_DAEMON, CMD_GET_DAEMON,
 CMD_SET_CONFIG, CMD_GET_CONFIG, CMD_SET_INFO, CMD_GET_INFO, CMD_ZERO, CMD_FLUSH) = range(1, 18)
(CMD_ATTR_SERVICE, CMD_ATTR_DEST, CMD_ATTR_DAEMON,
 CMD_ATTR_TIMEOUT_TCP, CMD_ATTR_TIMEOUT_TCP_FIN, CMD_ATTR_TIMEOUT_UDP) = range(1, 7)
(SVC_ATTR_AF, SVC_ATTR_PROTOCOL, SVC_ATTR_ADDR, SVC_ATTR_PORT, SVC_ATTR_FWMARK,
 SVC_ATTR_SCHED_NAME, SVC_ATTR_FLAGS, SVC_ATTR_TIMEOUT, SVC_ATTR_NETMASK, SVC_ATTR_STATS,
 SVC_ATTR_PE_NAME, SVC_ATTR_STATS64) = range(1, 13)
(DEST_ATTR_ADDR, DEST_ATTR_PORT, DEST_ATTR_FWD_METHOD, DEST_ATTR_WEIGHT, DEST_ATTR_U_THRESH,
 DEST_ATTR_L_THRESH, DEST_ATTR_ACTIVE_CONNS, DEST_ATTR_INACT_CONNS, DEST_ATTR_PERSIST_CONNS,
 DEST_ATTR_STATS, DEST_ATTR_ADDR_FAMILY, DEST_ATTR_STATS64, DEST_ATTR_TUN_TYPE, DEST_ATTR_TUN_PORT,
 DEST_ATTR_TUN_FLAGS) = range(1, 16)
(DAEMON_ATTR_STATE, DAEMON_ATTR_MCAST_IFN, DAEMON_ATTR_SYNC_ID, DAEMON_ATTR_SYNC_MAXLEN,
 DAEMON_ATTR_MCAST_GROUP, DAEMON_ATTR_MCAST_GROUP6, DAEMON_ATTR_MCAST_PORT,
 DAEMON_ATTR_MCAST_TTL) = range(1, 9)
(STATS_ATTR_CONNS, STATS_ATTR_INPKTS, STATS_ATTR_OUTPKTS, STATS_ATTR_INBYTES, STATS_ATTR_OUTBYTES,
 STATS_ATTR_CPS, STATS_ATTR_INPPS, STATS_ATTR_OUTPPS, STATS_ATTR_INBPS, STATS_ATTR_OUTBPS) = range(1, 11)
INFO_ATTR_VERSION, INFO_ATTR_CONN_TAB_SIZE = 1, 2
SVC_F_PERSISTENT, SVC_F_HASHED, SVC_F_ONEPACKET, SVC_F_SCHED_MASK = 0x1, 0x2, 0x4, 0x38
STATE_MASTER, STATE_BACKUP = 1, 2

AF = {"inet": socket.AF_INET, "inet6": socket.AF_INET6}
AF_NAME = {socket.AF_INET: "inet", socket.AF_INET6: "inet6"}
PROTO = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": 132}
PROTO_NAME = {v: k for k, v in PROTO.items()}
FWD = {"masq": 0, "local": 1, "tunnel": 2, "route": 3}
FWD_NAME = {v: k for k, v in FWD.items()}
TUN_TYPE = {"ipip": 0, "gue": 1, "gre": 2}
TUN_TYPE_NAME = {v: k for k, v in TUN_TYPE.items()}
TUN_FLAGS = {"nocsum": 0, "csum": 1, "remcsum": 2}
TUN_FLAGS_NAME = {v: k for k, v in TUN_FLAGS.items()}

_HDR = struct.Struct("=IHHII")  # nlmsghdr: len type flags seq pid
_GENL = struct.Struct("=BBH")  # genlmsghdr: cmd version reserved
_NLA = struct.Struct("=HH")  # nlattr: len type
_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")
_U64 = struct.Struct("=Q")
_BE16 = struct.Struct("!H")
_FLAGS = struct.Struct("=II")


# ============================ codec (pure functions, unit-tested) ============================

def nla(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return _NLA.pack(n, kind) + payload + b"\0" * (-n & 3)


def nla_nest(kind: int, *attrs: bytes) -> bytes:
    return nla(kind | NLA_F_NESTED, b"".join(attrs))


def nla_u8(kind: int, v: int) -> bytes:
    return nla(kind, bytes((v,)))


def nla_u16(kind: int, v: int) -> bytes:
    return nla(kind, _U16.pack(v))


def nla_be16(kind: int, v: int) -> bytes:
    return nla(kind, _BE16.pack(v))


def nla_u32(kind: int, v: int) -> bytes:
    return nla(kind, _U32.pack(v))


def nla_str(kind: int, v: str) -> bytes:
    return nla(kind, v.encode() + b"\0")


def genl_message(family: int, cmd: int, flags: int, seq: int, attrs: bytes = b"",
                 version: int = IPVS_GENL_VERSION) -> bytes:
    return _HDR.pack(20 + len(attrs), family, flags, seq, 0) + _GENL.pack(cmd, version, 0) + attrs


def parse_attrs(buf: bytes | memoryview, start: int = 0, end: int | None = None) -> dict[int, bytes]:
    """nlattrs → {type: payload}; nested ones are parsed again by the caller."""
    out: dict[int, bytes] = {}
    if isinstance(buf, memoryview):
        buf = bytes(buf[start:end]) if (start or end is not None) else bytes(buf)
        start, end = 0, None
    end = len(buf) if end is None else end
    pos = start
    unpack = _NLA.unpack_from
    while pos + 4 <= end:
        n, kind = unpack(buf, pos)
        if n < 4:
            break
        out[kind & NLA_TYPE_MASK] = buf[pos + 4:pos + n]
        pos += (n + 3) & ~3
    return out


def iter_messages(buf: bytes | memoryview) -> Iterator[tuple[int, int, int, memoryview]]:
    """Netlink messages in a datagram: (type, flags, seq, payload after nlmsghdr)."""
    view = memoryview(buf)
    pos = 0
    while pos + 16 <= len(view):
        n, kind, flags, seq, _pid = _HDR.unpack_from(view, pos)
        if n < 16:
            break
        yield kind, flags, seq, view[pos + 16:pos + n]
        pos += (n + 3) & ~3


def genl_attrs(payload: memoryview | bytes) -> dict[int, bytes]:
    """Top-level attributes of a generic-netlink message payload (skips genlmsghdr)."""
    return parse_attrs(payload, 4)


def _packed(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


@functools.lru_cache(maxsize=65536)
def _address(raw: bytes, family: str) -> str:
    if family == "inet":
        return socket.inet_ntoa(raw[:4])
    return str(ipaddress.IPv6Address(raw[:16]))


def service_key_attrs(key: ServiceKey) -> bytes:
    if key.protocol == "fwmark":
        return nla_u16(SVC_ATTR_AF, AF[key.family]) + nla_u32(SVC_ATTR_FWMARK, key.fwmark)
    assert key.address is not None
    return (nla_u16(SVC_ATTR_AF, AF[key.family]) + nla_u16(SVC_ATTR_PROTOCOL, PROTO[key.protocol])
            + nla(SVC_ATTR_ADDR, _packed(key.address)) + nla_be16(SVC_ATTR_PORT, key.port))


def _netmask_bytes(service: Service) -> bytes:
    if service.key.family == "inet6":
        return _U32.pack(int(service.netmask))  # prefix length, native order (the kernel's quirk)
    return ipaddress.IPv4Address(service.netmask).packed  # type: ignore[arg-type]


def service_attrs(service: Service) -> bytes:
    """The complete service (every field: the kernel resets what is left out)."""
    body = [service_key_attrs(service.key), nla_str(SVC_ATTR_SCHED_NAME, service.scheduler)]
    if service.pe_name:
        body.append(nla_str(SVC_ATTR_PE_NAME, service.pe_name))
    body.append(nla(SVC_ATTR_FLAGS, _FLAGS.pack(service.flags, 0xFFFFFFFF)))
    body.append(nla_u32(SVC_ATTR_TIMEOUT, service.timeout))
    body.append(nla(SVC_ATTR_NETMASK, _netmask_bytes(service)))
    return b"".join(body)


def dest_key_attrs(d: Destination) -> bytes:
    return (nla(DEST_ATTR_ADDR, _packed(d.address)) + nla_be16(DEST_ATTR_PORT, d.port)
            + nla_u16(DEST_ATTR_ADDR_FAMILY, AF[d.family]))


def dest_attrs(d: Destination) -> bytes:
    """The complete destination (omitting the forwarding method would make it DR)."""
    return (dest_key_attrs(d) + nla_u32(DEST_ATTR_FWD_METHOD, FWD[d.forwarding])
            + nla(DEST_ATTR_WEIGHT, _I32.pack(d.weight))
            + nla_u32(DEST_ATTR_U_THRESH, d.upper_threshold)
            + nla_u32(DEST_ATTR_L_THRESH, d.lower_threshold)
            + nla_u8(DEST_ATTR_TUN_TYPE, TUN_TYPE[d.tunnel_type])
            + nla_be16(DEST_ATTR_TUN_PORT, d.tunnel_port)
            + nla_u16(DEST_ATTR_TUN_FLAGS, TUN_FLAGS[d.tunnel_flags]))


def encode_op(family: int, op: Op, seq: int, flags: int = NLM_F_REQUEST | NLM_F_ACK) -> bytes:
    """One IPVS op as a complete netlink message."""
    if isinstance(op, AddService):
        return genl_message(family, CMD_NEW_SERVICE, flags, seq,
                            nla_nest(CMD_ATTR_SERVICE, service_attrs(op.service)))
    if isinstance(op, EditService):
        return genl_message(family, CMD_SET_SERVICE, flags, seq,
                            nla_nest(CMD_ATTR_SERVICE, service_attrs(op.service)))
    if isinstance(op, DeleteService):
        return genl_message(family, CMD_DEL_SERVICE, flags, seq,
                            nla_nest(CMD_ATTR_SERVICE, service_key_attrs(op.service.key)))
    svc = nla_nest(CMD_ATTR_SERVICE, service_key_attrs(op.service))
    if isinstance(op, AddDestination):
        return genl_message(family, CMD_NEW_DEST, flags, seq,
                            svc + nla_nest(CMD_ATTR_DEST, dest_attrs(op.destination)))
    if isinstance(op, EditDestination):
        return genl_message(family, CMD_SET_DEST, flags, seq,
                            svc + nla_nest(CMD_ATTR_DEST, dest_attrs(op.destination)))
    if isinstance(op, DeleteDestination):
        return genl_message(family, CMD_DEL_DEST, flags, seq,
                            svc + nla_nest(CMD_ATTR_DEST, dest_key_attrs(op.destination)))
    raise TypeError(f"not an IPVS op: {op!r}")


_STATS64_FAST = struct.Struct("=" + "HHQ" * 10)  # ten u64 attrs, types 1..10, no padding attrs


def decode_stats(attrs: dict[int, bytes], stats64: int, stats32: int) -> Stats:
    raw64 = attrs.get(stats64)
    if raw64 is not None and len(raw64) == _STATS64_FAST.size:
        v = _STATS64_FAST.unpack(raw64)
        if v[1::3] == tuple(range(1, 11)) and all(n == 12 for n in v[0::3]):  # the usual x86 layout
            return Stats(*v[2::3])
    if stats64 in attrs:
        raw, fmt = parse_attrs(attrs[stats64]), _U64
    elif stats32 in attrs:
        raw, fmt = parse_attrs(attrs[stats32]), _U32
    else:
        return Stats()

    def get(k: int) -> int:
        v = raw.get(k)
        return fmt.unpack(v[:fmt.size])[0] if v and len(v) >= fmt.size else 0

    return Stats(get(STATS_ATTR_CONNS), get(STATS_ATTR_INPKTS), get(STATS_ATTR_OUTPKTS),
                 get(STATS_ATTR_INBYTES), get(STATS_ATTR_OUTBYTES), get(STATS_ATTR_CPS),
                 get(STATS_ATTR_INPPS), get(STATS_ATTR_OUTPPS), get(STATS_ATTR_INBPS),
                 get(STATS_ATTR_OUTBPS))


def decode_service(svc: dict[int, bytes], *, stats: bool = True) -> tuple[Service, Stats]:
    """A nested IPVS_CMD_ATTR_SERVICE (already parsed) → (Service, Stats)."""
    family = AF_NAME[_U16.unpack(svc[SVC_ATTR_AF][:2])[0]]
    fwmark = _U32.unpack(svc[SVC_ATTR_FWMARK][:4])[0] if SVC_ATTR_FWMARK in svc else 0
    if fwmark:
        key = ServiceKey.mark(fwmark, family)  # type: ignore[arg-type]
    else:
        proto = PROTO_NAME[_U16.unpack(svc[SVC_ATTR_PROTOCOL][:2])[0]]
        key = ServiceKey(family, proto, _address(svc[SVC_ATTR_ADDR], family),  # type: ignore[arg-type]
                         _BE16.unpack(svc[SVC_ATTR_PORT][:2])[0])
    sched = svc[SVC_ATTR_SCHED_NAME].split(b"\0", 1)[0].decode()
    pe = svc.get(SVC_ATTR_PE_NAME, b"").split(b"\0", 1)[0].decode()
    flags, mask = _FLAGS.unpack(svc[SVC_ATTR_FLAGS][:8])
    flags &= mask
    raw_mask = svc[SVC_ATTR_NETMASK][:4]
    netmask: str | int = (str(ipaddress.IPv4Address(raw_mask)) if family == "inet"
                          else _U32.unpack(raw_mask)[0])
    service = Service(
        key, scheduler=sched, persistent=bool(flags & SVC_F_PERSISTENT),
        timeout=_U32.unpack(svc[SVC_ATTR_TIMEOUT][:4])[0], netmask=netmask, pe_name=pe,
        one_packet=bool(flags & SVC_F_ONEPACKET),
        sched_flags=frozenset(sched_flag_names(sched, flags & SVC_F_SCHED_MASK)),
    )
    return service, decode_stats(svc, SVC_ATTR_STATS64, SVC_ATTR_STATS) if stats else Stats()


def decode_dest(d: dict[int, bytes], service_family: str) -> tuple[Destination, DestinationStats]:
    """A nested IPVS_CMD_ATTR_DEST (already parsed) → (Destination, DestinationStats)."""
    def u32(k: int) -> int:
        return _U32.unpack(d[k][:4])[0] if k in d else 0

    family = AF_NAME[_U16.unpack(d[DEST_ATTR_ADDR_FAMILY][:2])[0]] if DEST_ATTR_ADDR_FAMILY in d \
        else service_family
    dest = Destination(
        DestinationKey(_address(d[DEST_ATTR_ADDR], family), _BE16.unpack(d[DEST_ATTR_PORT][:2])[0]),
        forwarding=FWD_NAME[u32(DEST_ATTR_FWD_METHOD) & 0x7],  # type: ignore[arg-type]
        weight=_I32.unpack(d[DEST_ATTR_WEIGHT][:4])[0],
        upper_threshold=u32(DEST_ATTR_U_THRESH), lower_threshold=u32(DEST_ATTR_L_THRESH),
        tunnel_type=TUN_TYPE_NAME.get(d[DEST_ATTR_TUN_TYPE][0] if DEST_ATTR_TUN_TYPE in d else 0,
                                      "ipip"),  # type: ignore[arg-type]
        tunnel_port=_BE16.unpack(d[DEST_ATTR_TUN_PORT][:2])[0] if DEST_ATTR_TUN_PORT in d else 0,
        tunnel_flags=TUN_FLAGS_NAME.get(_U16.unpack(d[DEST_ATTR_TUN_FLAGS][:2])[0]
                                        if DEST_ATTR_TUN_FLAGS in d else 0, "nocsum"),  # type: ignore[arg-type]
    )
    stats = DestinationStats(decode_stats(d, DEST_ATTR_STATS64, DEST_ATTR_STATS),
                             u32(DEST_ATTR_ACTIVE_CONNS), u32(DEST_ATTR_INACT_CONNS),
                             u32(DEST_ATTR_PERSIST_CONNS))
    return dest, stats


# The kernel (ip_vs_genl_fill_dest) writes a destination's scalar attributes in a fixed order;
# one struct.unpack reads them all. Anything else (older/newer kernels) takes the generic path.
_DEST_FAST = struct.Struct("=HH16s" "HH2s2x" "HHI" "HHi" "HHB3x" "HH2s2x" "HHH2x"
                           "HHI" "HHI" "HHI" "HHI" "HHI" "HHH2x")
_DEST_FAST_TYPES = (DEST_ATTR_ADDR, DEST_ATTR_PORT, DEST_ATTR_FWD_METHOD, DEST_ATTR_WEIGHT,
                    DEST_ATTR_TUN_TYPE, DEST_ATTR_TUN_PORT, DEST_ATTR_TUN_FLAGS, DEST_ATTR_U_THRESH,
                    DEST_ATTR_L_THRESH, DEST_ATTR_ACTIVE_CONNS, DEST_ATTR_INACT_CONNS,
                    DEST_ATTR_PERSIST_CONNS, DEST_ATTR_ADDR_FAMILY)
_DEST_FAST_LENS = (20, 6, 8, 8, 5, 6, 6, 8, 8, 8, 8, 8, 6)


@functools.lru_cache(maxsize=65536)
def _dest_key(raw: bytes, family: str, port: int) -> DestinationKey:
    return DestinationKey(_address(raw, family), port)


def decode_dest_fast(nest: bytes) -> tuple[Destination, bytes, tuple[int, int, int]] | None:
    """A nested IPVS_CMD_ATTR_DEST in the kernel's usual layout → (Destination, the raw stats
    attributes that follow, (active, inactive, persistent)); None if the layout differs."""
    if len(nest) < _DEST_FAST.size:
        return None
    v = _DEST_FAST.unpack_from(nest)
    if v[1::3] != _DEST_FAST_TYPES or v[0::3] != _DEST_FAST_LENS:
        return None
    (_, _, addr, _, _, port, _, _, fwd, _, _, weight, _, _, tun_type, _, _, tun_port, _, _, tun_flags,
     _, _, u_thr, _, _, l_thr, _, _, active, _, _, inact, _, _, persist, _, _, af) = v
    family = AF_NAME[af]
    dest = Destination(
        _dest_key(addr, family, int.from_bytes(port, "big")), FWD_NAME[fwd & 0x7],  # type: ignore[arg-type]
        weight, u_thr, l_thr, TUN_TYPE_NAME.get(tun_type, "ipip"),  # type: ignore[arg-type]
        int.from_bytes(tun_port, "big"), TUN_FLAGS_NAME.get(tun_flags, "nocsum"))  # type: ignore[arg-type]
    return dest, nest[_DEST_FAST.size:], (active, inact, persist)


class LazyStats(Mapping[Any, Any]):
    """Counters decoded only when read: a reconcile pass never looks at them, a listing does."""

    def __init__(self, decode: Callable[[Any], Any]) -> None:
        self._raw: dict[Any, Any] = {}
        self._done: dict[Any, Any] = {}
        self._decode = decode

    def put(self, key: Any, raw: Any) -> None:
        self._raw[key] = raw

    def put_decoded(self, key: Any, value: Any) -> None:
        self._raw[key] = None
        self._done[key] = value

    def __getitem__(self, key: Any) -> Any:
        try:
            return self._done[key]
        except KeyError:
            value = self._done[key] = self._decode(self._raw[key])
            return value

    def __iter__(self) -> Iterator[Any]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)


def _decode_dest_stats(raw: tuple[bytes, tuple[int, int, int]]) -> DestinationStats:
    rest, (active, inact, persist) = raw
    return DestinationStats(decode_stats(parse_attrs(rest), DEST_ATTR_STATS64, DEST_ATTR_STATS),
                            active, inact, persist)


def decode_daemon(a: dict[int, bytes]) -> SyncDaemon:
    state = _U32.unpack(a[DAEMON_ATTR_STATE][:4])[0]
    group = None
    if DAEMON_ATTR_MCAST_GROUP in a:
        group = str(ipaddress.IPv4Address(a[DAEMON_ATTR_MCAST_GROUP][:4]))
    elif DAEMON_ATTR_MCAST_GROUP6 in a:
        group = str(ipaddress.IPv6Address(a[DAEMON_ATTR_MCAST_GROUP6][:16]))
    return SyncDaemon(
        state="master" if state & STATE_MASTER else "backup",
        ifname=a[DAEMON_ATTR_MCAST_IFN].split(b"\0", 1)[0].decode(),
        syncid=_U32.unpack(a[DAEMON_ATTR_SYNC_ID][:4])[0],
        maxlen=_U16.unpack(a[DAEMON_ATTR_SYNC_MAXLEN][:2])[0] if DAEMON_ATTR_SYNC_MAXLEN in a else 0,
        group=group,
        port=_U16.unpack(a[DAEMON_ATTR_MCAST_PORT][:2])[0] if DAEMON_ATTR_MCAST_PORT in a else 0,
        ttl=a[DAEMON_ATTR_MCAST_TTL][0] if DAEMON_ATTR_MCAST_TTL in a else 0,
    )


def daemon_attrs(d: SyncDaemon) -> bytes:
    body = [nla_u32(DAEMON_ATTR_STATE, STATE_MASTER if d.state == "master" else STATE_BACKUP),
            nla_str(DAEMON_ATTR_MCAST_IFN, d.ifname), nla_u32(DAEMON_ATTR_SYNC_ID, d.syncid)]
    if d.maxlen:
        body.append(nla_u16(DAEMON_ATTR_SYNC_MAXLEN, d.maxlen))
    if d.group:
        ip = ipaddress.ip_address(d.group)
        body.append(nla(DAEMON_ATTR_MCAST_GROUP if ip.version == 4 else DAEMON_ATTR_MCAST_GROUP6, ip.packed))
    if d.port:
        body.append(nla_u16(DAEMON_ATTR_MCAST_PORT, d.port))
    if d.ttl:
        body.append(nla_u8(DAEMON_ATTR_MCAST_TTL, d.ttl))
    return nla_nest(CMD_ATTR_DAEMON, *body)


def _conn_addr(text: str) -> str:
    if ":" in text:
        return str(ipaddress.IPv6Address(text))
    return str(ipaddress.IPv4Address(int(text, 16)))


def parse_ip_vs_conn(text: str) -> list[Connection]:
    """/proc/net/ip_vs_conn → connections (what `ipvsadm -Lc` reads too)."""
    out = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 9:
            continue
        out.append(Connection(
            protocol=f[0], client=_conn_addr(f[1]), client_port=int(f[2], 16),
            virtual=_conn_addr(f[3]), virtual_port=int(f[4], 16),
            destination=_conn_addr(f[5]), destination_port=int(f[6], 16),
            state=f[7], expires=int(f[8]),
            pe_name=f[9] if len(f) > 9 else "", pe_data=f[10] if len(f) > 10 else "",
        ))
    return out


_MESSAGES: dict[tuple[type, int], str] = {
    (AddService, errno_mod.EEXIST): "Service already exists",
    (AddService, errno_mod.ENOENT): "Scheduler or persistence engine not found",
    (EditService, errno_mod.ESRCH): "No such service",
    (EditService, errno_mod.ENOENT): "Scheduler or persistence engine not found",
    (DeleteService, errno_mod.ESRCH): "No such service",
    (AddDestination, errno_mod.ESRCH): "Service not defined",
    (AddDestination, errno_mod.EEXIST): "Destination already exists",
    (EditDestination, errno_mod.ESRCH): "Service not defined",
    (EditDestination, errno_mod.ENOENT): "No such destination",
    (DeleteDestination, errno_mod.ESRCH): "Service not defined",
    (DeleteDestination, errno_mod.ENOENT): "No such destination",
}


def ipvs_strerror(op: Op | None, err: int) -> str:
    """libipvs's wording for an error, per operation."""
    if op is not None and (type(op), err) in _MESSAGES:
        return _MESSAGES[(type(op), err)]
    if err == errno_mod.EINVAL:
        return "Invalid operation.  Possibly wrong module version, address not unicast, ..."
    if err == errno_mod.EPERM:
        return "Permission denied (you must be root)"
    return os.strerror(err)


def apply_error(op: Op, err: int) -> ApplyError:
    verb = {AddService: "add service", EditService: "edit service", DeleteService: "delete service",
            AddDestination: "add destination", EditDestination: "edit destination",
            DeleteDestination: "delete destination"}[type(op)]
    return ApplyError(op.target, f"{verb}: {ipvs_strerror(op, err)}", err)


# ================================= the socket =================================

_libc: ctypes.CDLL | None = None
CLONE_NEWNET = 0x40000000


def _in_netns(netns: str, fn: Callable[[], Any]) -> Any:
    """Run fn in a throwaway thread that has setns()'d into /run/netns/NAME (or a path)."""
    global _libc
    path = netns if "/" in netns else f"/run/netns/{netns}"
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # FileNotFoundError for a typo: never creates
    box: dict[str, Any] = {}

    def run() -> None:
        global _libc
        try:
            if _libc is None:
                _libc = ctypes.CDLL(None, use_errno=True)
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                e = ctypes.get_errno()
                raise OSError(e, f"setns({path}): {os.strerror(e)}")
            box["value"] = fn()
        except BaseException as e:  # handed back to the caller's thread
            box["error"] = e

    try:
        t = threading.Thread(target=run, name=f"setns-{netns}")
        t.start()
        t.join()
    finally:
        os.close(fd)
    if "error" in box:
        raise box["error"]
    return box["value"]


def _new_socket() -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_GENERIC)
    s.bind((0, 0))
    # Batches can produce many error replies at once: give them room (FORCE needs root).
    for force, plain, size in ((SO_RCVBUFFORCE, socket.SO_RCVBUF, 8 << 20),
                               (SO_SNDBUFFORCE, socket.SO_SNDBUF, 4 << 20)):
        try:
            s.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, plain, size)
    with contextlib.suppress(OSError):  # errors echo only the failed request's header
        s.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
    return s


def _resolve_family(s: socket.socket, name: str) -> int:
    """GETFAMILY on a blocking socket (the kernel loads ip_vs on demand for this)."""
    s.send(genl_message(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, NLM_F_REQUEST | NLM_F_ACK, 1,
                        nla_str(CTRL_ATTR_FAMILY_NAME, name), version=1))
    family = None
    while True:
        for kind, _flags, _seq, payload in iter_messages(s.recv(65536)):
            if kind == NLMSG_ERROR:
                err = -_I32.unpack_from(payload)[0]
                if err in (errno_mod.ENOENT, errno_mod.EOPNOTSUPP):
                    raise IpvsUnavailable("this kernel has no IPVS (modprobe ip_vs?)")
                if err:
                    raise OSError(err, f"resolving genl family {name}: {os.strerror(err)}")
                if family is None:
                    raise IpvsUnavailable("this kernel has no IPVS (modprobe ip_vs?)")
                return family
            if kind == GENL_ID_CTRL:
                a = genl_attrs(payload)
                if CTRL_ATTR_FAMILY_ID in a:
                    family = _U16.unpack(a[CTRL_ATTR_FAMILY_ID][:2])[0]


class NetlinkError(OSError):
    """A kernel reply with a negative errno to a non-op request (dump, flush, daemon...)."""


_T = TypeVar("_T")


class IpvsSocket:
    """One generic-netlink socket to the kernel's IPVS (in `netns` if given). Not thread-safe;
    use it from one event loop, one request at a time (an asyncio.Lock serialises callers)."""

    def __init__(self, netns: str | None = None, *, batch: int = 256) -> None:
        """Nothing happens until `open()` (or the first request, which opens on demand)."""
        self.netns = netns
        self.batch = batch
        self._sock: socket.socket | None = None
        self.family = 0
        self._seq = 1
        self._lock: asyncio.Lock | None = None
        self.ops_sent = 0  # IPVS write requests sent (for tests and benchmarks)
        self.requests_sent = 0  # every netlink request

    def open_now(self) -> IpvsSocket:
        """Open the socket and find the IPVS family (blocking, ~1 ms; one round trip).
        Raises IpvsUnavailable when the kernel has no IPVS, FileNotFoundError for a missing netns."""
        if self._sock is not None:
            return self
        try:
            sock = _in_netns(self.netns, _new_socket) if self.netns else _new_socket()
        except OSError as e:
            if e.errno == errno_mod.EPROTONOSUPPORT:
                raise IpvsUnavailable("this kernel has no generic netlink") from e
            raise
        try:
            self.family = _resolve_family(sock, IPVS_GENL_NAME)
        except BaseException:
            sock.close()
            raise
        sock.setblocking(False)
        self._sock = sock
        return self

    async def open(self) -> IpvsSocket:
        return self.open_now()

    # ---- plumbing ----
    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    @property
    def sock(self) -> socket.socket:
        return self._sock if self._sock is not None else self.open_now()._sock  # type: ignore[return-value]

    def __enter__(self) -> IpvsSocket:
        return self.open_now()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> IpvsSocket:
        return self.open_now()

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def _next_seq(self, n: int = 1) -> int:
        seq = self._seq
        self._seq = (self._seq + n) & 0x7FFFFFFF or 1
        if self._seq < seq:  # wrapped: restart past zero so a batch never straddles the wrap
            seq, self._seq = 1, 1 + n
        return seq

    def _locked(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def _recv(self) -> bytes:
        sock = self.sock
        try:
            return sock.recv(1 << 16)
        except BlockingIOError:
            return await asyncio.get_running_loop().sock_recv(sock, 1 << 16)

    async def _send(self, data: bytes) -> None:
        sock = self.sock
        try:
            sock.send(data)
        except BlockingIOError:
            await asyncio.get_running_loop().sock_sendall(sock, data)

    async def _request(self, cmd: int, attrs: bytes = b"", *, dump: bool = False) -> list[dict[int, bytes]]:
        """One request; returns the top-level attrs of every reply; raises NetlinkError."""
        self.open_now()
        async with self._locked():
            seq = self._next_seq()
            flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else NLM_F_ACK)
            await self._send(genl_message(self.family, cmd, flags, seq, attrs))
            self.requests_sent += 1
            return await self._collect(seq, dump)

    async def _collect(self, seq: int, dump: bool) -> list[dict[int, bytes]]:
        replies: list[dict[int, bytes]] = []
        while True:
            data = await self._recv()
            for kind, _flags, mseq, payload in iter_messages(data):
                if mseq != seq:
                    continue  # a stale reply from a cancelled request
                if kind == NLMSG_DONE:
                    return replies
                if kind == NLMSG_ERROR:
                    err = -_I32.unpack_from(payload)[0]
                    if err:
                        raise NetlinkError(err, os.strerror(err))
                    if not dump:
                        return replies
                    continue
                replies.append(genl_attrs(payload))

    # ---- the table ----
    async def dump(self, *, yield_every: int = 64) -> IpvsTable:
        """The kernel's whole table, with counters: one service dump + one dest dump per service
        (the kernel has no all-destinations dump). Counters are decoded only when read.
        Yields to the loop every `yield_every` services so that VRRP never waits long."""
        svc_replies = await self._request(CMD_GET_SERVICE, dump=True)
        entries: list[tuple[Service, list[Destination]]] = []
        svc_stats: LazyStats = LazyStats(lambda a: decode_stats(a, SVC_ATTR_STATS64, SVC_ATTR_STATS))
        dst_stats: LazyStats = LazyStats(_decode_dest_stats)
        async with self._locked():
            for i, top in enumerate(svc_replies):
                if CMD_ATTR_SERVICE not in top:
                    continue
                attrs = parse_attrs(top[CMD_ATTR_SERVICE])
                service, _ = decode_service(attrs, stats=False)
                key = service.key
                svc_stats.put(key, attrs)
                seq = self._next_seq()
                await self._send(genl_message(self.family, CMD_GET_DEST, NLM_F_REQUEST | NLM_F_DUMP, seq,
                                              nla_nest(CMD_ATTR_SERVICE, service_key_attrs(key))))
                self.requests_sent += 1
                try:
                    nests = await self._collect_nests(seq, CMD_ATTR_DEST)
                except NetlinkError as e:
                    if e.errno == errno_mod.ESRCH:  # deleted between the two dumps
                        continue
                    raise
                dests = []
                for nest in nests:
                    fast = decode_dest_fast(nest)
                    if fast is not None:
                        d, rest, conns = fast
                        dst_stats.put((key, d.key), (rest, conns))
                    else:
                        d, ds = decode_dest(parse_attrs(nest), key.family)
                        dst_stats.put_decoded((key, d.key), ds)
                    dests.append(d)
                entries.append((service, dests))
                if yield_every and i % yield_every == yield_every - 1:
                    await asyncio.sleep(0)
        return IpvsTable(entries, service_stats=svc_stats, destination_stats=dst_stats)

    async def _collect_nests(self, seq: int, attr: int) -> list[bytes]:
        """Replies to dump `seq`: the payload of top-level attribute `attr` of each."""
        out: list[bytes] = []
        while True:
            data = await self._recv()
            for kind, _flags, mseq, payload in iter_messages(data):
                if mseq != seq:
                    continue
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    err = -_I32.unpack_from(payload)[0]
                    if err:
                        raise NetlinkError(err, os.strerror(err))
                    continue
                # genlmsghdr (4) then, in IPVS replies, the one nested attribute
                n, kind_ = _NLA.unpack_from(payload, 4)
                if kind_ & NLA_TYPE_MASK == attr:
                    out.append(bytes(payload[8:4 + n]))
                else:
                    nest = genl_attrs(payload).get(attr)
                    if nest is not None:
                        out.append(nest)

    async def apply(self, ops: Sequence[Op]) -> list[tuple[Op, ApplyError | None]]:
        """Send every op (in order, `batch` per send()); one failure does not stop the others.
        Returns each op with None or the ApplyError (errno + the service/destination named)."""
        results: list[tuple[Op, ApplyError | None]] = []
        self.open_now()
        async with self._locked():
            for start in range(0, len(ops), self.batch):
                chunk = ops[start:start + self.batch]
                errors = await self._send_batch(chunk)
                results.extend((op, apply_error(op, errors[i]) if i in errors else None)
                               for i, op in enumerate(chunk))
                if start + self.batch < len(ops):
                    await asyncio.sleep(0)  # let the loop breathe between batches
        return results

    async def _send_batch(self, chunk: Sequence[Op]) -> dict[int, int]:
        """One send() for the chunk; only the last request asks for an ack, which therefore
        arrives after every error the earlier ones produced. Returns {index: errno}."""
        n = len(chunk)
        seq0 = self._next_seq(n)
        last = n - 1
        data = b"".join(encode_op(self.family, op, seq0 + i,
                                  NLM_F_REQUEST | (NLM_F_ACK if i == last else 0))
                        for i, op in enumerate(chunk))
        await self._send(data)
        self.ops_sent += n
        self.requests_sent += n
        errors: dict[int, int] = {}
        while True:
            for kind, _flags, seq, payload in iter_messages(await self._recv()):
                i = seq - seq0
                if kind != NLMSG_ERROR or not 0 <= i < n:
                    continue
                err = -_I32.unpack_from(payload)[0]
                if err:
                    errors[i] = err
                if i == last:
                    return errors

    async def flush(self) -> None:
        """`ipvsadm -C`: every service and destination goes."""
        await self._request(CMD_FLUSH)

    async def zero(self, service: ServiceKey | None = None) -> None:
        """`ipvsadm -Z [service]`: reset counters."""
        attrs = nla_nest(CMD_ATTR_SERVICE, service_key_attrs(service)) if service else b""
        await self._request(CMD_ZERO, attrs)

    # ---- settings and info ----
    async def get_timeouts(self) -> Timeouts:
        r = (await self._request(CMD_GET_CONFIG))[0]
        def u32(k: int) -> int:
            return _U32.unpack(r[k][:4])[0] if k in r else 0
        return Timeouts(u32(CMD_ATTR_TIMEOUT_TCP), u32(CMD_ATTR_TIMEOUT_TCP_FIN), u32(CMD_ATTR_TIMEOUT_UDP))

    async def set_timeouts(self, tcp: int = 0, tcp_fin: int = 0, udp: int = 0) -> None:
        """`ipvsadm --set tcp tcpfin udp`; 0 leaves that timeout unchanged."""
        attrs = b"".join(nla_u32(k, v) for k, v in ((CMD_ATTR_TIMEOUT_TCP, tcp),
                                                    (CMD_ATTR_TIMEOUT_TCP_FIN, tcp_fin),
                                                    (CMD_ATTR_TIMEOUT_UDP, udp)) if v)
        await self._request(CMD_SET_CONFIG, attrs)

    async def info(self) -> IpvsInfo:
        r = (await self._request(CMD_GET_INFO))[0]
        v = _U32.unpack(r[INFO_ATTR_VERSION][:4])[0]
        return IpvsInfo(f"{(v >> 16) & 0xFF}.{(v >> 8) & 0xFF}.{v & 0xFF}",
                        _U32.unpack(r[INFO_ATTR_CONN_TAB_SIZE][:4])[0])

    async def version(self) -> str:
        return (await self.info()).version

    # ---- sync daemons ----
    async def start_daemon(self, state: Literal["master", "backup"], ifname: str, syncid: int = 0, *,
                           maxlen: int = 0, group: str | None = None, port: int = 0, ttl: int = 0) -> None:
        """`ipvsadm --start-daemon`; EEXIST (as NetlinkError) if that state already runs."""
        d = SyncDaemon(state, ifname, syncid, maxlen, group, port, ttl)
        await self._request(CMD_NEW_DAEMON, daemon_attrs(d))

    async def stop_daemon(self, state: Literal["master", "backup"]) -> None:
        await self._request(CMD_DEL_DAEMON, nla_nest(
            CMD_ATTR_DAEMON, nla_u32(DAEMON_ATTR_STATE, STATE_MASTER if state == "master" else STATE_BACKUP)))

    async def daemons(self) -> list[SyncDaemon]:
        out = []
        for r in await self._request(CMD_GET_DAEMON, dump=True):
            if CMD_ATTR_DAEMON in r:
                out.append(decode_daemon(parse_attrs(r[CMD_ATTR_DAEMON])))
        return out

    # ---- connection table ----
    def connections(self) -> list[Connection]:
        """The connection table (`ipvsadm -Lcn`), read from /proc in this socket's netns."""
        def read() -> str:
            with open("/proc/thread-self/net/ip_vs_conn" if self.netns else "/proc/net/ip_vs_conn") as f:
                return f.read()
        return parse_ip_vs_conn(_in_netns(self.netns, read) if self.netns else read())


class SyncIpvs:
    """Blocking façade for the CLI: the same methods as IpvsSocket, each run with asyncio.run()."""

    def __init__(self, netns: str | None = None) -> None:
        self.socket = IpvsSocket(netns).open_now()

    def close(self) -> None:
        self.socket.close()

    def __enter__(self) -> SyncIpvs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, aw: Awaitable[_T]) -> _T:
        async def main() -> _T:
            self.socket._lock = None  # a lock belongs to one loop; each call is a new loop
            return await aw
        return asyncio.run(main())

    def dump(self) -> IpvsTable:
        return self._run(self.socket.dump(yield_every=0))

    def apply(self, ops: Sequence[Op]) -> list[tuple[Op, ApplyError | None]]:
        return self._run(self.socket.apply(ops))

    def flush(self) -> None:
        self._run(self.socket.flush())

    def zero(self, service: ServiceKey | None = None) -> None:
        self._run(self.socket.zero(service))

    def get_timeouts(self) -> Timeouts:
        return self._run(self.socket.get_timeouts())

    def set_timeouts(self, tcp: int = 0, tcp_fin: int = 0, udp: int = 0) -> None:
        self._run(self.socket.set_timeouts(tcp, tcp_fin, udp))

    def info(self) -> IpvsInfo:
        return self._run(self.socket.info())

    def version(self) -> str:
        return self._run(self.socket.version())

    def start_daemon(self, state: Literal["master", "backup"], ifname: str, syncid: int = 0,
                     **kw: Any) -> None:
        self._run(self.socket.start_daemon(state, ifname, syncid, **kw))

    def stop_daemon(self, state: Literal["master", "backup"]) -> None:
        self._run(self.socket.stop_daemon(state))

    def daemons(self) -> list[SyncDaemon]:
        return self._run(self.socket.daemons())

    def connections(self) -> list[Connection]:
        return self.socket.connections()


def errors_only(results: Iterable[tuple[Op, ApplyError | None]]) -> list[ApplyError]:
    return [e for _op, e in results if e is not None]
