"""The kernel's IPVS over generic netlink, as bytes: requests encoded, replies decoded. Pure: no socket,
no clock; `havs.edge.ipvs` sends and receives what this builds and reads.

The facts it relies on (attribute numbers and types, byte orders, what the kernel resets when a field is
left out, the layout of its replies) are in docs/ipvs.md, with where each was checked. Unit-tested byte for
byte, and against pyroute2's IPVS message classes as an independent decoder (tests/test_ipvs_codec.py).
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from havs.core.genl import (
    NLM_F_ACK,
    NLM_F_REQUEST,
    genl_message,
    nla,
    nla_be16,
    nla_nest,
    nla_str,
    nla_u8,
    nla_u16,
    nla_u32,
    parse_attrs,
)
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
    Service,
    ServiceKey,
    Stats,
    SyncDaemon,
    Timeouts,
    sched_flag_names,
)
from havs.core.vocab import Forwarding

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

# Linux ABI numbers (AF_INET, AF_INET6; IPPROTO_TCP, _UDP, _SCTP): the same on every architecture
AF = {"inet": 2, "inet6": 10}
AF_NAME = {v: k for k, v in AF.items()}
PROTO = {"tcp": 6, "udp": 17, "sctp": 132}
PROTO_NAME = {v: k for k, v in PROTO.items()}
TUN_TYPE = {"ipip": 0, "gue": 1, "gre": 2}
TUN_TYPE_NAME = {v: k for k, v in TUN_TYPE.items()}
TUN_FLAGS = {"nocsum": 0, "csum": 1, "remcsum": 2}
TUN_FLAGS_NAME = {v: k for k, v in TUN_FLAGS.items()}

_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")
_U64 = struct.Struct("=Q")
_BE16 = struct.Struct("!H")
_FLAGS = struct.Struct("=II")


def _packed(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


@functools.lru_cache(maxsize=65536)
def _address(raw: bytes, family: str) -> str:
    # cached: a dump meets the same few real-server addresses thousands of times
    return str(ipaddress.IPv4Address(raw[:4]) if family == "inet" else ipaddress.IPv6Address(raw[:16]))


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
    return (dest_key_attrs(d) + nla_u32(DEST_ATTR_FWD_METHOD, d.forwarding.kernel)
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
    nest = attrs.get(stats64, attrs.get(stats32))
    if nest is None:
        return Stats()
    raw = parse_attrs(nest)

    def get(k: int) -> int:
        # by size: in the 32-bit STATS nest the byte counters are u64 too (ip_vs_genl_fill_stats)
        v = raw.get(k)
        if v is None or len(v) < 4:
            return 0
        return _U64.unpack(v[:8])[0] if len(v) >= 8 else _U32.unpack(v[:4])[0]

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
        forwarding=Forwarding.from_kernel(u32(DEST_ATTR_FWD_METHOD)),
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
        _dest_key(addr, family, int.from_bytes(port, "big")), Forwarding.from_kernel(fwd),
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


def decode_dest_stats(raw: tuple[bytes, tuple[int, int, int]]) -> DestinationStats:
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


# ---- requests besides the table ops ----
def service_key_nest(key: ServiceKey) -> bytes:
    return nla_nest(CMD_ATTR_SERVICE, service_key_attrs(key))


def timeouts_attrs(tcp: int, tcp_fin: int, udp: int) -> bytes:
    """SET_CONFIG attributes; a 0 is left out, which the kernel reads as "unchanged"."""
    return b"".join(nla_u32(k, v) for k, v in ((CMD_ATTR_TIMEOUT_TCP, tcp), (CMD_ATTR_TIMEOUT_TCP_FIN, tcp_fin),
                                               (CMD_ATTR_TIMEOUT_UDP, udp)) if v)


def decode_timeouts(r: dict[int, bytes]) -> Timeouts:
    def u32(k: int) -> int:
        return _U32.unpack(r[k][:4])[0] if k in r else 0
    return Timeouts(u32(CMD_ATTR_TIMEOUT_TCP), u32(CMD_ATTR_TIMEOUT_TCP_FIN), u32(CMD_ATTR_TIMEOUT_UDP))


def decode_info(r: dict[int, bytes]) -> IpvsInfo:
    """GET_INFO's reply (attributes numbered on their own: INFO_ATTR_*): version as "1.2.1" and table size."""
    v = _U32.unpack(r[INFO_ATTR_VERSION][:4])[0]
    return IpvsInfo(f"{(v >> 16) & 0xFF}.{(v >> 8) & 0xFF}.{v & 0xFF}", _U32.unpack(r[INFO_ATTR_CONN_TAB_SIZE][:4])[0])


def daemon_state_nest(state: str) -> bytes:
    """DEL_DAEMON names the daemon by its state only."""
    return nla_nest(CMD_ATTR_DAEMON, nla_u32(DAEMON_ATTR_STATE, STATE_MASTER if state == "master" else STATE_BACKUP))

