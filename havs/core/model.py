"""The configuration model: what an operator declares in havs.yaml.

pydantic models, frozen and strict about unknown keys (a typo in keepalived's config is the classic cause of
two MASTERs). Validation lives here as constraints; `core.config` turns pydantic's error locations back into
`file:line: path: message`. The base (Strict, Range, Problem) is core.model_base; the `vrrp:` and `bgp:`
sections are core.model_vrrp and core.model_bgp, re-exported here so every model is `havs.core.model.X`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from havs.core.model_base import Interface as Interface
from havs.core.model_base import IPAddress as IPAddress
from havs.core.model_base import Problem as Problem
from havs.core.model_base import Range as Range
from havs.core.model_base import Seconds as Seconds
from havs.core.model_base import Strict as Strict
from havs.core.model_bgp import Asn as Asn
from havs.core.model_bgp import Bfd as Bfd
from havs.core.model_bgp import Bgp as Bgp
from havs.core.model_bgp import BgpNeighbor as BgpNeighbor
from havs.core.model_vrrp import AuthHmac as AuthHmac
from havs.core.model_vrrp import ConnectionSync as ConnectionSync
from havs.core.model_vrrp import FloatingAddress as FloatingAddress
from havs.core.model_vrrp import Garp as Garp
from havs.core.model_vrrp import Notify as Notify
from havs.core.model_vrrp import SyncGroup as SyncGroup
from havs.core.model_vrrp import Vrrp as Vrrp

SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo", "ovf")
SCHEDULER_FLAGS = ("sh-fallback", "sh-port", "mh-fallback", "mh-port")
Port = Annotated[int, Range(0, 65535)]
_STATUS_RANGE = re.compile(r"^(\d{3})(?:-(\d{3}))?$")


# ---------------------------------------------------------------------------------------------- checks


class Check(Strict):
    """How one real server's health is probed. Every field has a default; a service's `check` is the
    default for its real servers, and a real server's `check` overrides it key by key."""

    type: Literal["http", "https", "tcp", "none"] = "tcp"
    interval: Seconds = 1.0
    fast_interval: Seconds | None = Field(
        default=None, description="re-check interval while a server is changing state; default interval/5"
    )
    timeout: Seconds = 1.0
    rise: Annotated[int, Range(1, 100)] = 2
    fall: Annotated[int, Range(1, 100)] = 2
    jitter: Annotated[float, Range(0, 1)] = 0.1
    # HTTP(S)
    method: Literal["GET", "HEAD"] = "GET"
    path: str = "/"
    host: str | None = None
    expect_status: list[int | str] = Field(default_factory=lambda: ["200-399"])
    expect_body: str | None = None
    max_body: Annotated[int, Range(0, 16 * 1024 * 1024)] = 64 * 1024
    verify_tls: bool = False
    sni: str | None = None
    agent_weight_header: str | None = None
    # where to connect (defaults: the real server's address and port)
    connect_address: IPAddress | None = None
    connect_port: Port | None = None
    source_address: IPAddress | None = None

    @field_validator("path")
    @classmethod
    def _path_absolute(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"must start with '/', got {v!r}")
        return v

    @field_validator("expect_status")
    @classmethod
    def _status_codes(cls, v: list[int | str]) -> list[int | str]:
        for item in v:
            text = str(item)
            m = _STATUS_RANGE.match(text)
            if not m or not all(100 <= int(g) <= 599 for g in m.groups() if g):
                raise ValueError(f"status codes are 100..599 or ranges like '200-399', got {item!r}")
        return v

    @field_validator("expect_body")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"not a valid regular expression: {e}") from None
        return v

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> Check:
        if self.timeout > self.interval:
            raise Problem(("timeout",), f"must not exceed interval ({self.interval}), got {self.timeout}")
        return self

    def status_ok(self, status: int) -> bool:
        for item in self.expect_status:
            m = _STATUS_RANGE.match(str(item))
            assert m is not None  # validated above
            lo = int(m.group(1))
            hi = int(m.group(2) or lo)
            if lo <= status <= hi:
                return True
        return False

    @property
    def effective_fast_interval(self) -> float:
        return self.fast_interval if self.fast_interval is not None else max(self.interval / 5, 0.05)


# -------------------------------------------------------------------------------------- IPVS services


class Tunnel(Strict):
    """Tunnel settings for TUN forwarding (ipvsadm --tun-type/--tun-port/--tun-*csum)."""

    type: Literal["ipip", "gue", "gre"] = "ipip"
    port: Port | None = None
    checksum: Literal["nocsum", "csum", "remcsum"] = "nocsum"

    @model_validator(mode="after")
    def _gue_needs_port(self) -> Tunnel:
        if self.type == "gue" and not self.port:
            raise Problem(("port",), "a gue tunnel needs a port")
        if self.type != "gue" and self.port:
            raise Problem(("port",), f"only gue tunnels have a port, not {self.type}")
        return self


class RealServer(Strict):
    """A destination of a virtual service (ipvsadm -a)."""

    address: IPAddress
    port: Port | None = Field(default=None, description="default: the service's port")
    weight: Annotated[int, Range(0, 65535)] = 1
    forwarding: Literal["nat", "dr", "tun"] | None = Field(default=None, description="default: the service's")
    upper_threshold: Annotated[int, Field(ge=0)] = 0
    lower_threshold: Annotated[int, Field(ge=0)] = 0
    tunnel: Tunnel | None = None
    check: Check | None = Field(
        default=None, description="overrides of the service's check, merged key by key when the file is loaded"
    )

    @model_validator(mode="after")
    def _thresholds(self) -> RealServer:
        if self.upper_threshold and self.lower_threshold > self.upper_threshold:
            raise Problem(
                ("lower_threshold",),
                f"must not exceed upper_threshold ({self.upper_threshold}), got {self.lower_threshold}",
            )
        return self


class Persistence(Strict):
    timeout: Annotated[int, Range(1, 2**31)] = 300
    netmask: str | None = Field(default=None, description="IPv4 mask (255.255.255.0) or IPv6 prefix length")
    engine: Literal["sip"] | None = None


class SorryServer(Strict):
    address: IPAddress
    port: Port | None = None
    forwarding: Literal["nat", "dr", "tun"] | None = None


class Quorum(Strict):
    """Minimum healthy weight for the service; below it the sorry server takes the traffic and the
    director's VRRP priority drops by `priority_decrement` so a healthier director takes over."""

    min_weight: Annotated[int, Field(ge=1)] = 1
    sorry_server: SorryServer | None = None
    priority_decrement: Annotated[int, Range(0, 254)] = 0


class VirtualService(Strict):
    """A virtual service (ipvsadm -A): address:port/protocol or a firewall mark."""

    address: IPAddress | None = None
    port: Port | None = None
    protocol: Literal["tcp", "udp", "sctp"] = "tcp"
    fwmark: Annotated[int, Range(1, 2**32 - 1)] | None = None
    family: Literal["inet", "inet6"] | None = Field(default=None, description="needed with fwmark only")
    scheduler: str = "wlc"
    scheduler_flags: list[Literal["sh-fallback", "sh-port", "mh-fallback", "mh-port"]] = Field(
        default_factory=list
    )
    one_packet: bool = Field(default=False, description="ops: one-packet scheduling (UDP)")
    forwarding: Literal["nat", "dr", "tun"] = "nat"
    persistence: Persistence | None = None
    on_down: Literal["remove", "inhibit"] = "remove"
    slow_start: Annotated[float, Range(0, 3600)] = 0.0
    quorum: Quorum | None = None
    check: Check = Field(default_factory=Check)
    real_servers: list[RealServer] = Field(default_factory=list)
    # vrrp: the address floats with the VRRP MASTER; bgp: every director announces it (docs/scaleout.md)
    announce: Literal["vrrp", "bgp"] = "vrrp"

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, v: str) -> str:
        if v not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {v!r}; one of {', '.join(SCHEDULERS)}")
        return v

    @model_validator(mode="after")
    def _shape(self) -> VirtualService:
        if self.fwmark is None:
            if self.address is None or self.port is None:
                raise ValueError("a service needs address and port, or fwmark")
            if self.family is not None:
                raise Problem(("family",), "only fwmark services have a family (it follows from the address)")
        else:
            if self.address is not None or self.port is not None:
                raise Problem(("fwmark",), "a fwmark service has no address or port")
        for i, flag in enumerate(self.scheduler_flags):
            if not flag.startswith(self.scheduler + "-"):
                raise Problem(("scheduler_flags", i), f"{flag} does not apply to scheduler {self.scheduler}")
        if self.persistence and self.persistence.netmask:
            try:
                _check_netmask(self.persistence.netmask, self.ip_version)
            except ValueError as e:
                raise Problem(("persistence", "netmask"), str(e)) from None
        seen: set[tuple[str, int | None]] = set()
        for i, rs in enumerate(self.real_servers):
            key = (str(rs.address), self.real_server_port(rs))
            if key in seen:
                raise Problem(("real_servers", i), f"{rs.address}:{key[1]} is listed twice")
            seen.add(key)
            fwd = self.real_server_forwarding(rs)
            if fwd == "nat" and rs.address.version != self.ip_version:
                raise Problem(("real_servers", i, "address"), "NAT needs the service's address family")
            if rs.tunnel is not None and fwd != "tun":
                raise Problem(("real_servers", i, "tunnel"), "tunnel settings need forwarding: tun")
        return self

    @property
    def ip_version(self) -> int:
        if self.address is not None:
            return self.address.version
        return 6 if self.family == "inet6" else 4

    @property
    def name(self) -> str:
        """The service as ipvsadm writes it: TCP 192.168.0.108:80, FWM 42."""
        if self.fwmark is not None:
            return f"FWM {self.fwmark}"
        host = f"[{self.address}]" if self.ip_version == 6 else str(self.address)
        return f"{self.protocol.upper()} {host}:{self.port}"

    def real_server_check(self, rs: RealServer) -> Check:
        """The check that applies to one real server (overrides were merged at load time)."""
        return rs.check or self.check

    def real_server_port(self, rs: RealServer) -> int:
        return rs.port if rs.port is not None else (self.port or 0)

    def real_server_forwarding(self, rs: RealServer) -> str:
        return rs.forwarding or self.forwarding


def _check_netmask(netmask: str, version: int) -> None:
    if version == 4:
        try:
            ipaddress.IPv4Network(f"0.0.0.0/{netmask}")
        except ValueError:
            raise ValueError(f"{netmask!r} is not an IPv4 netmask") from None
    elif not (netmask.isdigit() and 1 <= int(netmask) <= 128):
        raise ValueError(f"an IPv6 netmask is a prefix length 1..128, got {netmask!r}")


# ----------------------------------------------------------------------------------------------- nodes


class Node(Strict):
    """One director: its identity and overrides."""

    hostname: str | None = Field(default=None, description="default: the node's key")
    priority: Annotated[int, Range(1, 254)] = 100
    interfaces: dict[str, str] = Field(description="role name (client, server, …) → interface name")
    unicast_src: IPAddress | None = None
    router_id: ipaddress.IPv4Address | None = Field(default=None, description="BGP router id; needed with bgp")

    @field_validator("interfaces")
    @classmethod
    def _ifnames(cls, v: dict[str, str]) -> dict[str, str]:
        for role, name in v.items():
            if not name or len(name) > 15 or "/" in name or " " in name:
                raise ValueError(f"{role}: {name!r} is not a valid interface name")
        return v


class Settings(Strict):
    reconcile_interval: Annotated[float, Field(gt=0, le=3600)] = 5.0
    drain_timeout: Annotated[float, Range(0, 86400)] = 300.0
    purge_unmanaged: bool = False
    control_socket: str = "/run/havs/control.sock"
    state_dir: str = "/var/lib/havs"
    metrics_listen: str | None = Field(default=None, description="host:port for Prometheus; off by default")
    # keepalived's `alpha`: `down` makes every real server earn its place with `rise` passing checks at start
    initial_health: Literal["up", "down"] = "up"
    # a reload that would take more than this share of the running table's real servers out is refused
    # unless forced (`havs reload --force`): a file caught mid-copy must not empty IPVS
    reload_max_removed: Annotated[float, Range(0, 1)] = 0.5
    # at most this many health checks run at once; the rest queue, and a queued check's timeout starts when
    # it runs: a burst (start, a reload, a slow CPU) waits instead of timing out healthy servers
    health_max_in_flight: Annotated[int, Range(1, 100000)] = 64

    @field_validator("metrics_listen")
    @classmethod
    def _host_port(cls, v: str | None) -> str | None:
        if v is None:
            return v
        host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"must be host:port, e.g. 127.0.0.1:9101, got {v!r}")
        if host.strip("[]"):
            ipaddress.ip_address(host.strip("[]"))  # an address, not a name: say exactly where it listens
        return v


class Config(Strict):
    """The whole file: one config for both directors."""

    settings: Settings = Field(default_factory=Settings)
    nodes: dict[str, Node] = Field(min_length=1)
    # one instance (a mapping, as before) or several (a list); always a list once loaded
    vrrp: list[Vrrp] = Field(default_factory=list)
    vrrp_sync_groups: list[SyncGroup] = Field(default_factory=list)
    bgp: Bgp | None = None
    virtual_services: list[VirtualService] = Field(default_factory=list)

    @field_validator("vrrp", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        if v is None:
            return []
        return v if isinstance(v, list | tuple) else [v]

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        _bgp_checks(self)
        _instance_checks(self)
        keys: set[str] = set()
        for i, vs in enumerate(self.virtual_services):
            if vs.name in keys:
                raise Problem(("virtual_services", i), f"{vs.name} is declared twice")
            keys.add(vs.name)
        return self

    def instance(self, name: str) -> Vrrp:
        """The VRRP instance called `name` (KeyError if none)."""
        for v in self.vrrp:
            if v.name == name:
                return v
        raise KeyError(name)

    def group_of(self, name: str) -> SyncGroup | None:
        """The sync group instance `name` belongs to, if any."""
        for g in self.vrrp_sync_groups:
            if name in g.instances:
                return g
        return None

    @property
    def floating(self) -> dict[str, str]:
        """Every floating address (its IP as text) → the name of the instance that floats it."""
        return {str(fa.address.ip): v.name for v in self.vrrp for fa in v.addresses}


def _instance_checks(config: Config) -> None:
    for where, message in instance_problems(config.nodes, list(enumerate(config.vrrp)),
                                            list(enumerate(config.vrrp_sync_groups))):
        raise Problem(where, message)  # the model names the first; the loader reports them all


def instance_problems(nodes: Mapping[str, Node], vrrp: Sequence[tuple[int, Vrrp]],
                      groups: Sequence[tuple[int, SyncGroup]], *, node_names: Collection[str] | None = None,
                      instance_names: Collection[str] | None = None) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Across VRRP instances and nodes: names, router ids, addresses, groups, priorities, interfaces.
    `vrrp`, `groups`: (index in the file, item). A file that failed validation passes the parts that are
    valid on their own, and every node and instance name it declares (`node_names`, `instance_names`), so
    that one left out for its own mistake is not also called unknown."""
    node_names = set(nodes) if node_names is None else set(node_names)
    names: dict[str, int] = {}
    found: dict[str, Vrrp] = {}  # the first instance of each name
    owner: dict[str, str] = {}  # floating IP → instance name
    router_ids: dict[tuple[str, str, int, int], str] = {}  # (node, ifname, family, router id) → instance
    for i, v in vrrp:
        if v.name in names:
            yield ("vrrp", i, "name"), f"instance {v.name} is declared twice (also vrrp[{names[v.name]}])"
        names.setdefault(v.name, i)
        found.setdefault(v.name, v)
        for j, fa in enumerate(v.addresses):
            ip = str(fa.address.ip)
            if ip in owner:
                yield ("vrrp", i, "addresses", j), (f"{ip} is already an address of instance {owner[ip]}: "
                                                    "an address floats in exactly one instance")
            owner.setdefault(ip, v.name)
        if v.priority is not None:
            missing = sorted(node_names - v.priority.keys())
            unknown = sorted(v.priority.keys() - node_names)
            if unknown:
                yield ("vrrp", i, "priority", unknown[0]), f"{unknown[0]} is not a node"
            elif missing:
                yield ("vrrp", i, "priority"), (f"no priority for node(s) {', '.join(missing)}: "
                                                "a per-node priority map names every node")
        roles = {v.interface, *(fa.interface for fa in v.addresses), *v.track_interfaces}
        if v.connection_sync is not None:
            roles.add(v.connection_sync.interface)
        for name, node in nodes.items():
            missing = sorted(roles - node.interfaces.keys())
            if missing:
                which = f"vrrp instance {v.name}" if len(vrrp) > 1 else "vrrp"
                yield ("nodes", name, "interfaces"), f"no interface for role(s) {', '.join(missing)} used by {which}"
                break  # the first node says it; the others most likely miss the same role
            key = (name, node.interfaces[v.interface], v.family, v.router_id)
            if key in router_ids:
                yield ("vrrp", i, "router_id"), (f"router id {v.router_id} is already used by instance "
                                                 f"{router_ids[key]} on {key[1]} (IPv{v.family}) of node "
                                                 f"{name}: one router id per interface and family")
                break  # once per instance, not once per node
            router_ids[key] = v.name
    synced = [(i, v) for i, v in vrrp if v.connection_sync is not None]
    for i, _ in synced[1:]:
        yield ("vrrp", i, "connection_sync"), ("connection_sync on one instance only (the kernel runs one sync "
                                               f"daemon per role; it is on instance {synced[0][1].name})")
    known = set(names) if instance_names is None else set(instance_names)
    grouped: dict[str, str] = {}
    gnames: set[str] = set()
    for g_i, g in groups:
        if g.name in gnames:
            yield ("vrrp_sync_groups", g_i, "name"), f"sync group {g.name} is declared twice"
        gnames.add(g.name)
        for m_i, member in enumerate(g.instances):
            where: tuple[str | int, ...] = ("vrrp_sync_groups", g_i, "instances", m_i)
            if member not in known:
                yield where, f"no VRRP instance is called {member}"
            elif member in grouped:
                yield where, f"{member} is already in sync group {grouped[member]}: an instance is in at most one group"
            grouped.setdefault(member, g.name)
        members = [found[m] for m in dict.fromkeys(g.instances) if m in found]
        if (why := _preference_conflict(nodes, members)) is not None:
            yield ("vrrp_sync_groups", g_i, "instances"), why


def _preference_conflict(nodes: Mapping[str, Node], members: Sequence[Vrrp]) -> str | None:
    """Why a sync group's members cannot agree on their master, or None. The group moves them together, so
    members preferring different nodes (both preempting) would pull the group back and forth: failback is
    lost both ways and both directors can step down at once. Ties count: at equal priorities the higher
    address wins, which need not be the node another member prefers."""
    def order(v: Vrrp) -> tuple[int, ...]:
        prio = [v.priority_of(name, node) for name, node in nodes.items()]
        return tuple((a > b) - (a < b) for i, a in enumerate(prio) for b in prio[i + 1:])

    def shown(v: Vrrp) -> str:
        return f"{v.name}: " + ", ".join(f"{name} {v.priority_of(name, node)}" for name, node in nodes.items())

    for v in members[1:]:
        if order(v) != order(members[0]):
            return (f"{members[0].name} and {v.name} prefer different nodes ({shown(members[0])}; {shown(v)}): "
                    "a sync group moves all its members together (keepalived's vrrp_sync_group), so they must "
                    "prefer the same node: give them the same per-node priority order")
    return None


def _bgp_checks(config: Config) -> None:
    """What active-active needs (docs/scaleout.md): a `bgp:` section and a router id per director; replies
    that never cross the director (DR or TUN, not NAT); a scheduler every director computes alike (mh/sh);
    and destinations that keep their order, so health failures set weight 0 (inhibit) and never remove."""
    announced = [(i, vs) for i, vs in enumerate(config.virtual_services) if vs.announce == "bgp"]
    if config.bgp is not None:
        for name, node in config.nodes.items():
            if node.router_id is None:
                raise Problem(("nodes", name), "bgp needs a router_id for every node (an IPv4 address)")
    for i, vs in announced:
        where: tuple[str | int, ...] = ("virtual_services", i)
        if config.bgp is None:
            raise Problem((*where, "announce"), "announce: bgp needs a top-level bgp: section")
        if vs.address is None:
            raise Problem((*where, "announce"), "a fwmark service has no VIP to announce; announce its address")
        if vs.scheduler not in ("mh", "sh"):
            raise Problem((*where, "scheduler"), f"announce: bgp needs mh (or sh): every director must pick the "
                                                 f"same real server for a flow, got {vs.scheduler}")
        if vs.on_down != "inhibit":
            raise Problem((*where, "on_down"), "announce: bgp needs on_down: inhibit (a removed and re-added "
                                               "server changes the destination order mh hashes over)")
        for j, rs in enumerate(vs.real_servers):
            if vs.real_server_forwarding(rs) == "nat":
                key = (*where, "real_servers", j, "forwarding") if rs.forwarding else (*where, "forwarding")
                raise Problem(key, "announce: bgp needs dr or tun: with several active directors NAT replies "
                                   "cannot find their way back")
    if config.vrrp:
        vrrp_ips = config.floating
        for i, vs in announced:
            if str(vs.address) in vrrp_ips:
                raise Problem(("virtual_services", i, "address"), f"{vs.address} is a VRRP address; a VIP is "
                                                                  "announced by one of vrrp or bgp")


class NodeView(Strict):
    """The effective config of one director: the shared config with that node's identity applied."""

    name: str
    node: Node
    config: Config

    def ifname(self, role: str) -> str:
        return self.node.interfaces[role]
