"""Render an IpvsTable the way ipvsadm does: -Ln (plain, --stats, --rate, --thresholds,
--persistent-conn, --tun-info), -Sn (restorable by ipvsadm -R), -Lc, --timeout, --daemon; and JSON.

Byte-compatible with ipvsadm 1.31 (numeric mode): same column widths (print_title /
print_service_entry), same truncation of IPv4 names to 33/28 columns, same glibc inet_ntop text
for IPv6, and the same order — ipvsadm sorts with qsort and a comparator that subtracts
unsigned addresses into an int, so 192.x sorts before 10.x; glibc's qsort is a stable top-down
merge sort, which `_msort` reproduces step for step so that even that order matches.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from typing import Any, Literal, TypeVar

from havs.core.ipvs_table import (
    Connection,
    Destination,
    DestinationStats,
    IpvsInfo,
    IpvsTable,
    Service,
    ServiceKey,
    Stats,
    SyncDaemon,
    TableEntry,
    Timeouts,
    sched_flag_names,
)
from havs.core.vocab import Forwarding

ListMode = Literal["plain", "stats", "rate", "thresholds", "persistent-conn", "tun-info"]

_T = TypeVar("_T")
_AF = {"inet": 2, "inet6": 10}
_PROTO_NUM = {"tcp": 6, "udp": 17, "sctp": 132, "fwmark": 0}
_SAVE_OPTION = {"tcp": "-t", "udp": "-u", "sctp": "--sctp-service"}
_TUN_FLAG_SHORT = {"nocsum": "-c", "csum": "+c", "remcsum": "r+c"}


# ---- ordering (ipvs_cmp_services / ipvs_cmp_dests under glibc's msort) ----

def _i32(x: int) -> int:
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x & 0x80000000 else x


def _words(address: str | None) -> tuple[int, int, int, int]:
    """union nf_inet_addr as four host-order u32 (IPv4 in the first one)."""
    if address is None:
        return (0, 0, 0, 0)
    packed = ipaddress.ip_address(address).packed.ljust(16, b"\0")
    return tuple(int.from_bytes(packed[i:i + 4], "big") for i in range(0, 16, 4))  # type: ignore[return-value]


def _cmp_addr(af: str, a: tuple[int, ...], b: tuple[int, ...]) -> int:
    if af == "inet6":
        for x, y in zip(a, b, strict=True):
            r = _i32(x - y)
            if r:
                return r
        return 0
    return _i32(a[0] - b[0])


def _cmp_services(s1: ServiceKey, s2: ServiceKey) -> int:
    r = _i32(s1.fwmark - s2.fwmark)
    if r:
        return r
    r = _AF[s1.family] - _AF[s2.family]
    if r:
        return r
    r = _PROTO_NUM[s1.protocol] - _PROTO_NUM[s2.protocol]
    if r:
        return r
    r = _cmp_addr(s1.family, _words(s1.address), _words(s2.address))
    if r:
        return r
    return s1.port - s2.port


def _cmp_dests(d1: Destination, d2: Destination) -> int:
    r = _cmp_addr(d1.family, _words(d1.address), _words(d2.address))
    if r:
        return r
    return d1.port - d2.port


def _msort(items: Sequence[_T], cmp: Callable[[_T, _T], int]) -> list[_T]:
    """glibc msort_with_tmp: split n/2, sort halves, merge taking the left one while cmp <= 0."""
    n = len(items)
    if n <= 1:
        return list(items)
    n1 = n // 2
    left, right = _msort(items[:n1], cmp), _msort(items[n1:], cmp)
    out: list[_T] = []
    i = j = 0
    while i < len(left) and j < len(right):
        if cmp(left[i], right[j]) <= 0:
            out.append(left[i])
            i += 1
        else:
            out.append(right[j])
            j += 1
    out.extend(left[i:])
    out.extend(right[j:])
    return out


def sorted_entries(table: IpvsTable) -> list[TableEntry]:
    """Services in ipvsadm's listing order."""
    keys = _msort(list(table.keys()), _cmp_services)
    return [table[k] for k in keys]


def sorted_destinations(entry: TableEntry) -> list[Destination]:
    return _msort(list(entry.destinations.values()), _cmp_dests)


# ---- names ----

def ntop(address: str) -> str:
    """glibc inet_ntop text (IPv6: ::ffff:1.2.3.4 and ::1.2.3.4 keep the dotted tail)."""
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        return str(ip)
    packed = ip.packed
    words = [int.from_bytes(packed[i:i + 2], "big") for i in range(0, 16, 2)]
    best_base, best_len, cur_base, cur_len = -1, 0, -1, 0
    for i, w in enumerate(words):
        if w == 0:
            if cur_base == -1:
                cur_base, cur_len = i, 1
            else:
                cur_len += 1
        elif cur_base != -1:
            if best_base == -1 or cur_len > best_len:
                best_base, best_len = cur_base, cur_len
            cur_base = -1
    if cur_base != -1 and (best_base == -1 or cur_len > best_len):
        best_base, best_len = cur_base, cur_len
    if best_base != -1 and best_len < 2:
        best_base = -1
    out = ""
    for i, w in enumerate(words):
        if best_base != -1 and best_base <= i < best_base + best_len:
            if i == best_base:
                out += ":"
            continue
        if i != 0:
            out += ":"
        if i == 6 and best_base == 0 and (best_len == 6 or (best_len == 5 and words[5] == 0xFFFF)):
            out += ".".join(str(b) for b in packed[12:])
            break
        out += f"{w:x}"
    if best_base != -1 and best_base + best_len == 8:
        out += ":"
    return out


def _addrport(address: str, family: str, port: int) -> str:
    return f"[{ntop(address)}]:{port}" if family == "inet6" else f"{address}:{port}"


def _service_name(key: ServiceKey, rule: bool) -> str:
    if key.protocol == "fwmark":
        six = key.family == "inet6"
        if rule:
            return f"-f {key.fwmark}" + (" -6" if six else "")
        return f"FWM  {key.fwmark}" + (" IPv6" if six else "")
    assert key.address is not None
    vname = _addrport(key.address, key.family, key.port)
    if rule:
        return f"{_SAVE_OPTION[key.protocol]} {vname}"
    name = f"{key.protocol.upper():<4} {vname}"
    return name if key.family == "inet6" else name[:33]


def _dest_name(d: Destination, rule: bool) -> str:
    name = _addrport(d.address, d.family, d.port)
    return name if rule or d.family == "inet6" else name[:28]


def _sched_flags_text(service: Service) -> str:
    return ",".join(_ordered_flags(service))


def _ordered_flags(service: Service) -> list[str]:
    names = list(sched_flag_names(service.scheduler, service.sched_flag_bits))
    if service.scheduler in ("sh", "mh"):
        names = [n for n in names if n != "flag-3"]  # ipvsadm names only two flags for sh/mh
    return names


def _largenum(i: int, exact: bool) -> str:
    if exact:
        s = str(i)
        return s.rjust(9 if len(s) <= 8 else len(s) + 1)
    if i < 100_000_000:
        return f"{i:9d}"
    if i < 1_000_000_000:
        return f"{i // 1000:8d}K"
    if i < 100_000_000_000:
        return f"{i // 1_000_000:8d}M"
    if i < 100_000_000_000_000:
        return f"{i // 1_000_000_000:8d}G"
    return f"{i // 1_000_000_000_000:8d}T"


# ---- ipvsadm -Ln ----

def _title(mode: ListMode) -> str:
    head = "Prot LocalAddress:Port"
    if mode == "stats":
        return f"{head:<33} {'Conns':>8} {'InPkts':>8} {'OutPkts':>8} {'InBytes':>8} {'OutBytes':>8}\n" \
               "  -> RemoteAddress:Port\n"
    if mode == "rate":
        return f"{head:<33} {'CPS':>8} {'InPPS':>8} {'OutPPS':>8} {'InBPS':>8} {'OutBPS':>8}\n" \
               "  -> RemoteAddress:Port\n"
    if mode == "thresholds":
        return f"{head:<33} {'Uthreshold':<10} {'Lthreshold':<10} {'ActiveConn':<10} {'InActConn':<10}\n" \
               "  -> RemoteAddress:Port\n"
    if mode == "persistent-conn":
        return f"{head:<33} {'Weight':<9} {'PersistConn':<11} {'ActiveConn':<10} {'InActConn':<10}\n" \
               "  -> RemoteAddress:Port\n"
    if mode == "tun-info":
        return "Prot LocalAddress:Port Scheduler Flags\n" \
               "  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn InActConn\n"
    return "Prot LocalAddress:Port Scheduler Flags\n" \
           "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"


def _service_line(entry: TableEntry, table: IpvsTable, mode: ListMode, exact: bool) -> str:
    s = entry.service
    name = _service_name(s.key, rule=False)
    if mode in ("stats", "rate"):
        st = table.service_stats(s.key) or Stats()
        vals = (st.conns, st.inpkts, st.outpkts, st.inbytes, st.outbytes) if mode == "stats" else \
               (st.cps, st.inpps, st.outpps, st.inbps, st.outbps)
        return f"{name:<33}" + "".join(_largenum(v, exact) for v in vals) + "\n"
    return " ".join((name, s.scheduler, *service_flags(s))) + "\n"


def service_flags(s: Service) -> tuple[str, ...]:
    """What ipvsadm -Ln prints after the scheduler: `(sh-fallback)`, `persistent 300`, `mask …`, `pe sip`,
    `ops` (also `havs status`'s Flags column)."""
    words: list[str] = []
    if s.sched_flag_bits:
        words.append(f"({_sched_flags_text(s)})")
    if s.persistent:
        words.append(f"persistent {s.timeout}")
        if s.key.family == "inet" and s.netmask != "255.255.255.255":
            words.append(f"mask {s.netmask}")
        if s.key.family == "inet6" and s.netmask != 128:
            words.append(f"mask {s.netmask}")
        if s.pe_name:
            words.append(f"pe {s.pe_name}")
    if s.one_packet:
        words.append("ops")
    return tuple(words)


def _tun_info(d: Destination) -> str:
    if d.forwarding is not Forwarding.TUNNEL:
        return "n/a"
    if d.tunnel_type == "gue":
        return f"gue:{d.tunnel_port}:{_TUN_FLAG_SHORT[d.tunnel_flags]}"[:15]
    if d.tunnel_type == "gre":
        return f"gre:{_TUN_FLAG_SHORT[d.tunnel_flags]}"
    return "ipip"


def _dest_line(key: ServiceKey, d: Destination, table: IpvsTable, mode: ListMode, exact: bool) -> str:
    name = _dest_name(d, rule=False)
    ds = table.destination_stats(key, d.key) or DestinationStats()
    st = ds.stats
    if mode == "stats":
        vals = (st.conns, st.inpkts, st.outpkts, st.inbytes, st.outbytes)
        return f"  -> {name:<28}" + "".join(_largenum(v, exact) for v in vals) + "\n"
    if mode == "rate":
        return f"  -> {name:<28} {st.cps:8d} {st.inpps:8d} {st.outpps:8d}" + \
               _largenum(st.inbps, exact) + _largenum(st.outbps, exact) + "\n"
    if mode == "thresholds":
        return f"  -> {name:<28} {d.upper_threshold:<10} {d.lower_threshold:<10} " \
               f"{ds.active_conns:<10} {ds.inactive_conns:<10}\n"
    if mode == "persistent-conn":
        return f"  -> {name:<28} {d.weight:<9} {ds.persistent_conns:<11} " \
               f"{ds.active_conns:<10} {ds.inactive_conns:<10}\n"
    fwd = d.forwarding.ipvsadm
    if mode == "tun-info":
        return f"  -> {name:<28} {fwd:<7} {_tun_info(d):<13} {d.weight:<6} " \
               f"{ds.active_conns:<10} {ds.inactive_conns:<10}\n"
    return f"  -> {name:<28} {fwd:<7} {d.weight:<6} {ds.active_conns:<10} {ds.inactive_conns:<10}\n"


def format_list(
    table: IpvsTable, mode: ListMode = "plain", *, info: IpvsInfo | None = None, exact: bool = False
) -> str:
    """`ipvsadm -Ln` (mode "plain"), `-Ln --stats`, `--rate`, `--thresholds`, `--persistent-conn`,
    `--tun-info`; `exact` is `--exact`."""
    info = info or IpvsInfo()
    out = [f"IP Virtual Server version {info.version} (size={info.conn_table_size})\n", _title(mode)]
    for entry in sorted_entries(table):
        out.append(_service_line(entry, table, mode, exact))
        out.extend(_dest_line(entry.service.key, d, table, mode, exact) for d in sorted_destinations(entry))
    return "".join(out)


# ---- ipvsadm -Sn ----

def format_save(table: IpvsTable, *, thresholds: bool = False) -> str:
    """`ipvsadm -Sn`, restorable with `ipvsadm -R`. ipvsadm leaves out dest thresholds (and turns
    Local into -g); `thresholds=True` adds `-x/-y` where set so that a restore loses nothing."""
    out = []
    for entry in sorted_entries(table):
        s = entry.service
        name = _service_name(s.key, rule=True)
        line = f"-A {name} -s {s.scheduler}"
        if s.persistent:
            line += f" -p {s.timeout}"
            if s.key.family == "inet" and s.netmask != "255.255.255.255":
                line += f" -M {s.netmask}"
            if s.key.family == "inet6" and s.netmask != 128:
                line += f" -M {s.netmask}"
        if s.pe_name:
            line += f" --pe {s.pe_name}"
        if s.one_packet:
            line += " -o"
        if s.sched_flag_bits:
            line += f" -b {_sched_flags_text(s)}"
        out.append(line + "\n")
        for d in sorted_destinations(entry):
            line = f"-a {name} -r {_dest_name(d, rule=True)} {d.forwarding.ipvsadm_switch} -w {d.weight}"
            if d.forwarding is Forwarding.TUNNEL:
                if d.tunnel_type == "gre":
                    line += f" --tun-type gre --tun-{d.tunnel_flags}"
                elif d.tunnel_type == "gue":
                    line += f" --tun-type gue --tun-port {d.tunnel_port} --tun-{d.tunnel_flags}"
                else:
                    line += " --tun-type ipip"
            if thresholds and (d.upper_threshold or d.lower_threshold):
                line += f" -x {d.upper_threshold} -y {d.lower_threshold}"
            out.append(line + "\n")
    return "".join(out)


# ---- other ipvsadm listings ----

def format_timeouts(t: Timeouts) -> str:
    """`ipvsadm -Ln --timeout`."""
    return f"Timeout (tcp tcpfin udp): {t.tcp} {t.tcp_fin} {t.udp}\n"


def format_daemons(daemons: Iterable[SyncDaemon]) -> str:
    """`ipvsadm -Ln --daemon` (master first, as the kernel reports them)."""
    out = []
    for d in daemons:
        line = f"{d.state} sync daemon (mcast={d.ifname}, syncid={d.syncid}"
        if d.maxlen:
            line += f", maxlen={d.maxlen}"
        if d.group:
            line += f", group={ntop(d.group)}"
        if d.port:
            line += f", port={d.port}"
        if d.ttl:
            line += f", ttl={d.ttl}"
        out.append(line + ")\n")
    return "".join(out)


def format_connections(conns: Iterable[Connection], *, persistent_conn: bool = False) -> str:
    """`ipvsadm -Lcn` (`--persistent-conn` adds the persistence-engine columns)."""
    if persistent_conn:
        out = [f"IPVS connection entries\npro expire {'state':<11} {'source':<18} {'virtual':<18} "
               f"{'destination':<18} {'pe name':<16} pe_data\n"]
    else:
        out = [f"IPVS connection entries\npro expire {'state':<11} {'source':<18} {'virtual':<18} destination\n"]
    for c in conns:
        expire = f"{c.expires // 60:02d}:{c.expires % 60:02d}"

        def fam(a: str) -> str:
            return "inet6" if ":" in a else "inet"

        src = _addrport(c.client, fam(c.client), c.client_port)
        vip = _addrport(c.virtual, fam(c.virtual), c.virtual_port)
        dst = _addrport(c.destination, fam(c.destination), c.destination_port)
        if persistent_conn and c.pe_name:
            out.append(f"{c.protocol:<3} {expire:<6} {c.state:<11} {src:<18} {vip:<18} {dst:<16} "
                       f"{c.pe_name:<18} {c.pe_data}\n")
        else:
            out.append(f"{c.protocol:<3} {expire:<6} {c.state:<11} {src:<18} {vip:<18} {dst}\n")
    return "".join(out)


# ---- JSON ----

def _service_json(s: Service) -> dict[str, Any]:
    k = s.key
    return {
        "protocol": k.protocol, "family": k.family, "address": k.address, "port": k.port,
        "fwmark": k.fwmark, "name": str(k), "scheduler": s.scheduler,
        "sched_flags": _ordered_flags(s), "persistent": s.persistent, "timeout": s.timeout,
        "netmask": s.netmask, "pe_name": s.pe_name, "one_packet": s.one_packet,
    }


def _dest_json(d: Destination) -> dict[str, Any]:
    return {
        "address": d.address, "port": d.port, "family": d.family, "name": str(d.key),
        "forwarding": d.forwarding.value, "weight": d.weight,
        "upper_threshold": d.upper_threshold, "lower_threshold": d.lower_threshold,
        "tunnel_type": d.tunnel_type, "tunnel_port": d.tunnel_port, "tunnel_flags": d.tunnel_flags,
    }


def to_json(table: IpvsTable, *, info: IpvsInfo | None = None) -> dict[str, Any]:
    """The table as plain JSON-able data, in ipvsadm's order, counters included where known."""
    services = []
    for entry in sorted_entries(table):
        key = entry.service.key
        svc = _service_json(entry.service)
        st = table.service_stats(key)
        svc["stats"] = asdict(st) if st is not None else None
        dests = []
        for d in sorted_destinations(entry):
            dj = _dest_json(d)
            ds = table.destination_stats(key, d.key)
            if ds is not None:
                dj["stats"] = asdict(ds.stats)
                dj["active_conns"] = ds.active_conns
                dj["inactive_conns"] = ds.inactive_conns
                dj["persistent_conns"] = ds.persistent_conns
            else:
                dj["stats"] = None
            dests.append(dj)
        svc["destinations"] = dests
        services.append(svc)
    out: dict[str, Any] = {"services": services}
    if info is not None:
        out["version"] = info.version
        out["conn_table_size"] = info.conn_table_size
    return out
