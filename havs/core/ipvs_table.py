"""The IPVS table in ipvsadm's words: virtual services, their real servers, and counters.

Pure data. `IpvsTable` is what the kernel holds (from `edge.ipvs.IpvsSocket.dump`) or what
the configuration wants (from `core.desired`); `core.ipvs_diff.diff` turns one into the other.

Desired fields (scheduler, flags, weights, ...) live in `Service`/`Destination` and take part in
equality; counters (`Stats`, `DestinationStats`) are kept beside them in the table and never do,
so a busy service never looks different from its configuration.

Values are normalised on construction so that equal things compare equal: addresses are in
their canonical text form, an IPv4 netmask is a dotted quad and an IPv6 one a prefix length,
scheduler flags are named as ipvsadm names them for that scheduler, a non-persistent service has
timeout 0.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from havs.core.vocab import BY_VALUE as _FORWARDING_BY_VALUE
from havs.core.vocab import Forwarding

Family = Literal["inet", "inet6"]
Protocol = Literal["tcp", "udp", "sctp", "fwmark"]
TunnelType = Literal["ipip", "gue", "gre"]
TunnelFlags = Literal["nocsum", "csum", "remcsum"]

PROTOCOLS: tuple[str, ...] = ("tcp", "udp", "sctp", "fwmark")
FORWARDINGS: tuple[str, ...] = tuple(f.value for f in Forwarding)
TUNNEL_TYPES: tuple[str, ...] = ("ipip", "gue", "gre")
TUNNEL_FLAGS: tuple[str, ...] = ("nocsum", "csum", "remcsum")

# Scheduler flag bits (IP_VS_SVC_F_SCHED1..3); their names depend on the scheduler, as in ipvsadm.
SCHED_FLAG_BITS: tuple[int, ...] = (0x08, 0x10, 0x20)
_SCHED_FLAG_NAMES: dict[str, tuple[str, str, str]] = {
    "sh": ("sh-fallback", "sh-port", "flag-3"),
    "mh": ("mh-fallback", "mh-port", "flag-3"),
}
_GENERIC_FLAG_NAMES = ("flag-1", "flag-2", "flag-3")
# Any name is accepted for its bit, whatever the scheduler (sh-port on rr is "flag-2").
_FLAG_BIT_BY_NAME: dict[str, int] = {
    "sh-fallback": 0x08, "mh-fallback": 0x08, "flag-1": 0x08,
    "sh-port": 0x10, "mh-port": 0x10, "flag-2": 0x10,
    "flag-3": 0x20,
}


def sched_flag_names(scheduler: str, bits: int) -> tuple[str, ...]:
    """Scheduler flag bits → ipvsadm's names for this scheduler, in bit order."""
    names = _SCHED_FLAG_NAMES.get(scheduler, _GENERIC_FLAG_NAMES)
    return tuple(name for bit, name in zip(SCHED_FLAG_BITS, names, strict=True) if bits & bit)


def sched_flag_bits(names: Iterable[str]) -> int:
    """ipvsadm scheduler flag names → bits; ValueError on an unknown name."""
    bits = 0
    for name in names:
        try:
            bits |= _FLAG_BIT_BY_NAME[name]
        except KeyError:
            raise ValueError(f"unknown scheduler flag {name!r}") from None
    return bits


@functools.lru_cache(maxsize=65536)  # a dump builds thousands of keys from few addresses
def _canonical_address(address: str) -> tuple[str, Family]:
    ip = ipaddress.ip_address(address)
    return str(ip), ("inet" if ip.version == 4 else "inet6")


def _hostport(address: str, family: str, port: int) -> str:
    return f"[{address}]:{port}" if family == "inet6" else f"{address}:{port}"


@dataclass(frozen=True)
class ServiceKey:
    """What identifies a virtual service: protocol + address + port, or a firewall mark + family."""

    family: Family
    protocol: Protocol
    address: str | None = None
    port: int = 0
    fwmark: int = 0

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, not {self.protocol!r}")
        if self.protocol == "fwmark":
            if not 1 <= self.fwmark <= 0xFFFFFFFF:
                raise ValueError(f"fwmark must be 1..4294967295, not {self.fwmark}")
            if self.address is not None or self.port:
                raise ValueError("a fwmark service has no address or port")
            if self.family not in ("inet", "inet6"):
                raise ValueError(f"family must be inet or inet6, not {self.family!r}")
            return
        if self.address is None:
            raise ValueError(f"a {self.protocol} service needs an address")
        if self.fwmark:
            raise ValueError(f"a {self.protocol} service has no fwmark")
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError(f"port must be 0..65535, not {self.port}")
        address, family = _canonical_address(self.address)
        object.__setattr__(self, "address", address)
        object.__setattr__(self, "family", family)

    @classmethod
    def virtual(cls, protocol: str, address: str, port: int) -> ServiceKey:
        """`ServiceKey.virtual("tcp", "192.168.0.108", 80)`; the family follows the address."""
        return cls(_canonical_address(address)[1], protocol, address, port)  # type: ignore[arg-type]

    @classmethod
    def tcp(cls, address: str, port: int) -> ServiceKey:
        return cls.virtual("tcp", address, port)

    @classmethod
    def udp(cls, address: str, port: int) -> ServiceKey:
        return cls.virtual("udp", address, port)

    @classmethod
    def sctp(cls, address: str, port: int) -> ServiceKey:
        return cls.virtual("sctp", address, port)

    @classmethod
    def mark(cls, fwmark: int, family: Family = "inet") -> ServiceKey:
        """A firewall-mark service (`ipvsadm -f 42 [-6]`)."""
        return cls(family, "fwmark", None, 0, fwmark)

    @property
    def is_fwmark(self) -> bool:
        return self.protocol == "fwmark"

    def __str__(self) -> str:
        """ipvsadm's words: `TCP 192.168.0.108:80`, `UDP [fd00::1]:53`, `FWM 42`, `FWM 42 IPv6`."""
        if self.protocol == "fwmark":
            return f"FWM {self.fwmark}" + (" IPv6" if self.family == "inet6" else "")
        assert self.address is not None
        return f"{self.protocol.upper()} {_hostport(self.address, self.family, self.port)}"


@dataclass(frozen=True)
class Service:
    """A virtual service and every setting `ipvsadm -A/-E` can give it."""

    key: ServiceKey
    scheduler: str = "wlc"
    persistent: bool = False
    timeout: int = 0  # persistence timeout, seconds (0 unless persistent)
    # IPv4: a dotted mask (default 255.255.255.255); IPv6: a prefix length (default 128).
    netmask: str | int | None = None
    pe_name: str = ""  # persistence engine ("sip")
    one_packet: bool = False  # ops
    sched_flags: frozenset[str] = frozenset()  # sh-fallback sh-port mh-fallback mh-port flag-N

    def __post_init__(self) -> None:
        if not self.scheduler or len(self.scheduler) > 15:
            raise ValueError(f"bad scheduler name {self.scheduler!r}")
        if len(self.pe_name) > 15:
            raise ValueError(f"bad persistence engine name {self.pe_name!r}")
        if not 0 <= self.timeout <= 0xFFFFFFFF:
            raise ValueError(f"timeout out of range: {self.timeout}")
        if not self.persistent:
            object.__setattr__(self, "timeout", 0)
        object.__setattr__(self, "netmask", _normalise_netmask(self.key.family, self.netmask))
        bits = sched_flag_bits(self.sched_flags)
        object.__setattr__(self, "sched_flags", frozenset(sched_flag_names(self.scheduler, bits)))

    @property
    def sched_flag_bits(self) -> int:
        return sched_flag_bits(self.sched_flags)

    @property
    def flags(self) -> int:
        """The kernel's service flag word (without the kernel-internal HASHED bit)."""
        return (0x1 if self.persistent else 0) | (0x4 if self.one_packet else 0) | self.sched_flag_bits

    @property
    def netmask_value(self) -> int:
        """The netmask as the kernel keeps it: IPv4 mask as an integer, IPv6 prefix length."""
        if isinstance(self.netmask, int):
            return self.netmask
        return int(ipaddress.IPv4Address(self.netmask))


def _normalise_netmask(family: str, netmask: str | int | None) -> str | int:
    if family == "inet6":
        if netmask is None:
            return 128
        value = int(netmask)
        if not 1 <= value <= 128:
            raise ValueError(f"IPv6 netmask is a prefix length 1..128, not {netmask!r}")
        return value
    if netmask is None:
        return "255.255.255.255"
    if isinstance(netmask, int) or (isinstance(netmask, str) and netmask.isdigit()):
        # An IPv4 prefix length is accepted for convenience: /24 → 255.255.255.0.
        return str(ipaddress.IPv4Network(f"0.0.0.0/{int(netmask)}").netmask)
    return str(ipaddress.IPv4Address(netmask))


@dataclass(frozen=True, order=True)
class DestinationKey:
    """What identifies a real server within a service: address and port."""

    address: str
    port: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError(f"port must be 0..65535, not {self.port}")
        object.__setattr__(self, "address", _canonical_address(self.address)[0])

    @property
    def family(self) -> Family:
        return _canonical_address(self.address)[1]

    def __str__(self) -> str:
        return _hostport(self.address, self.family, self.port)


@dataclass(frozen=True)
class Destination:
    """A real server and every setting `ipvsadm -a/-e` can give it."""

    key: DestinationKey
    forwarding: Forwarding = Forwarding.MASQ
    weight: int = 1
    upper_threshold: int = 0
    lower_threshold: int = 0
    tunnel_type: TunnelType = "ipip"
    tunnel_port: int = 0
    tunnel_flags: TunnelFlags = "nocsum"

    def __post_init__(self) -> None:
        fwd = _FORWARDING_BY_VALUE.get(self.forwarding)  # a plain "masq" becomes Forwarding.MASQ
        if fwd is None:
            raise ValueError(f"forwarding must be one of {FORWARDINGS}, not {self.forwarding!r}")
        object.__setattr__(self, "forwarding", fwd)
        if self.tunnel_type not in TUNNEL_TYPES:
            raise ValueError(f"tunnel type must be one of {TUNNEL_TYPES}, not {self.tunnel_type!r}")
        if self.tunnel_flags not in TUNNEL_FLAGS:
            raise ValueError(f"tunnel flags must be one of {TUNNEL_FLAGS}, not {self.tunnel_flags!r}")
        if not 0 <= self.weight <= 0x7FFFFFFF:
            raise ValueError(f"weight out of range: {self.weight}")
        for name in ("upper_threshold", "lower_threshold"):
            if not 0 <= getattr(self, name) <= 0xFFFFFFFF:
                raise ValueError(f"{name} out of range: {getattr(self, name)}")
        if not 0 <= self.tunnel_port <= 0xFFFF:
            raise ValueError(f"tunnel port out of range: {self.tunnel_port}")

    @classmethod
    def at(cls, address: str, port: int = 0, **settings: object) -> Destination:
        """`Destination.at("192.168.72.129", 80, weight=1)`."""
        return cls(DestinationKey(address, port), **settings)  # type: ignore[arg-type]

    @property
    def address(self) -> str:
        return self.key.address

    @property
    def port(self) -> int:
        return self.key.port

    @property
    def family(self) -> Family:
        return self.key.family


@dataclass(frozen=True)
class Stats:
    """Counters of a service or destination (64-bit in the kernel); rates are per second."""

    conns: int = 0
    inpkts: int = 0
    outpkts: int = 0
    inbytes: int = 0
    outbytes: int = 0
    cps: int = 0
    inpps: int = 0
    outpps: int = 0
    inbps: int = 0
    outbps: int = 0


@dataclass(frozen=True)
class DestinationStats:
    """A destination's counters plus its connection counts."""

    stats: Stats = field(default_factory=Stats)
    active_conns: int = 0
    inactive_conns: int = 0
    persistent_conns: int = 0


@dataclass(frozen=True)
class IpvsInfo:
    """What `ipvsadm -Ln` prints in its first line."""

    version: str = "1.2.1"
    conn_table_size: int = 4096


@dataclass(frozen=True)
class TableEntry:
    """One virtual service with its destinations (insertion-ordered, keyed by DestinationKey)."""

    service: Service
    destinations: Mapping[DestinationKey, Destination]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TableEntry):
            return NotImplemented
        return self.service == other.service and dict(self.destinations) == dict(other.destinations)

    __hash__ = None  # type: ignore[assignment]


class IpvsTable(Mapping[ServiceKey, TableEntry]):
    """ServiceKey → TableEntry(service, {DestinationKey: Destination}), immutable.

    Equality compares services and destinations only, never counters.
    """

    __slots__ = ("_dest_stats", "_entries", "_svc_stats")

    def __init__(
        self,
        entries: Iterable[tuple[Service, Iterable[Destination]]] = (),
        *,
        service_stats: Mapping[ServiceKey, Stats] | None = None,
        destination_stats: Mapping[tuple[ServiceKey, DestinationKey], DestinationStats] | None = None,
    ) -> None:
        built: dict[ServiceKey, TableEntry] = {}
        for service, dests in entries:
            if service.key in built:
                raise ValueError(f"{service.key} appears twice")
            by_key: dict[DestinationKey, Destination] = {}
            for d in dests:
                if d.key in by_key:
                    raise ValueError(f"{service.key} -> {d.key} appears twice")
                by_key[d.key] = d
            built[service.key] = TableEntry(service, MappingProxyType(by_key))
        self._entries = built
        # Kept as given unless a plain dict (copied): an edge may pass a mapping that decodes
        # counters only when asked, since a reconcile pass never reads them.
        self._svc_stats: Mapping[ServiceKey, Stats] = (
            dict(service_stats) if isinstance(service_stats, dict) else service_stats or {})
        self._dest_stats: Mapping[tuple[ServiceKey, DestinationKey], DestinationStats] = (
            dict(destination_stats) if isinstance(destination_stats, dict) else destination_stats or {})

    @classmethod
    def from_records(
        cls, services: Iterable[Service], destinations: Iterable[tuple[ServiceKey, Destination]] = ()
    ) -> IpvsTable:
        """Build from flat records: services, and (service key, destination) pairs."""
        svcs = list(services)
        dests: dict[ServiceKey, list[Destination]] = {s.key: [] for s in svcs}
        for key, d in destinations:
            if key not in dests:
                raise ValueError(f"destination {d.key} for unknown service {key}")
            dests[key].append(d)
        return cls((s, dests[s.key]) for s in svcs)

    def __getitem__(self, key: ServiceKey) -> TableEntry:
        return self._entries[key]

    def __iter__(self) -> Iterator[ServiceKey]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IpvsTable):
            return NotImplemented
        return self._entries == other._entries

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        n = sum(len(e.destinations) for e in self._entries.values())
        return f"<IpvsTable {len(self._entries)} services, {n} destinations>"

    def services(self) -> list[Service]:
        return [e.service for e in self._entries.values()]

    def destinations(self, key: ServiceKey) -> list[Destination]:
        return list(self._entries[key].destinations.values())

    def service_stats(self, key: ServiceKey) -> Stats | None:
        return self._svc_stats.get(key)

    def destination_stats(self, key: ServiceKey, dkey: DestinationKey) -> DestinationStats | None:
        return self._dest_stats.get((key, dkey))

    def without_stats(self) -> IpvsTable:
        return IpvsTable((e.service, e.destinations.values()) for e in self._entries.values())


@dataclass(frozen=True)
class Timeouts:
    """Connection timeouts in seconds (`ipvsadm --set tcp tcpfin udp`)."""

    tcp: int
    tcp_fin: int
    udp: int


@dataclass(frozen=True)
class SyncDaemon:
    """A connection-sync daemon (`ipvsadm --start-daemon`); 0 / None mean the kernel's default."""

    state: Literal["master", "backup"]
    ifname: str
    syncid: int = 0
    maxlen: int = 0
    group: str | None = None  # IPv4 or IPv6 multicast group
    port: int = 0
    ttl: int = 0


@dataclass(frozen=True)
class Connection:
    """One entry of the kernel's connection table (/proc/net/ip_vs_conn)."""

    protocol: str  # as the kernel writes it: TCP, UDP, SCTP, IP
    client: str
    client_port: int
    virtual: str
    virtual_port: int
    destination: str
    destination_port: int
    state: str
    expires: int  # seconds
    pe_name: str = ""
    pe_data: str = ""
