"""The IPVS table this director should have: f(config, health, maintenance drains, removals in progress, now).

Both directors build the same table whatever their VRRP state, so a failover only moves addresses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from havs.core.health import WeightPlan, quorum_met, server_name
from havs.core.ipvs_table import Destination, DestinationKey, IpvsTable, Service, ServiceKey
from havs.core.model import Config, RealServer, SorryServer, VirtualService
from havs.core.vocab import Forwarding


@dataclass(frozen=True)
class ServerState:
    """What the health checks know of one real server. Missing = no verdict yet = taken as up (as
    keepalived does), so a restarted daemon never pulls healthy servers out of a live table."""

    up: bool
    since_up: float = float("-inf")  # when it became up; slow start counts from here
    agent_fraction: float | None = None


class RealServerKey(NamedTuple):
    """One real server of one virtual service, as health, drains, status and logs name it:
    ("TCP 192.168.0.108:80", "192.168.72.128:80"). A tuple, so the health checks' (service, server)
    keys are equal to it; `destination` is the same server as the IPVS table keys it."""

    service: str  # VirtualService.name, as ipvsadm writes the service
    server: str  # server_name(): as ipvsadm writes the real server

    @classmethod
    def of(cls, vs: VirtualService, rs: RealServer) -> RealServerKey:
        return cls(vs.name, server_name(rs.address, vs.real_server_port(rs)))

    @property
    def destination(self) -> DestinationKey:
        host, _, port = self.server.rpartition(":")
        return DestinationKey(host.strip("[]"), int(port))

    @property
    def host(self) -> str:
        """The server without its port, as an operator may type it (`havs drain 192.168.72.128`)."""
        return self.server.rpartition(":")[0].strip("[]")

    def __str__(self) -> str:
        return f"{self.service} {self.server}"


@dataclass(frozen=True)
class Desired:
    table: IpvsTable
    managed: frozenset[ServiceKey]  # services whose kernel state havs owns
    quorum_lost: tuple[str, ...] = ()  # services below quorum (their sorry server is in)
    # VRRP instance → how much priority it gives up for lost quorums (every instance named, 0 included)
    priority_decrement: dict[str, int] = field(default_factory=dict)
    next_change: float | None = None  # when a slow-start ramp next changes a weight
    # every real server the config declares, in the table or not (health may have taken it out)
    configured: frozenset[tuple[ServiceKey, DestinationKey]] = frozenset()


def service_key(vs: VirtualService) -> ServiceKey:
    if vs.fwmark is not None:
        return ServiceKey.mark(vs.fwmark, "inet6" if vs.ip_version == 6 else "inet")
    assert vs.address is not None and vs.port is not None
    return ServiceKey.virtual(vs.protocol, str(vs.address), vs.port)


def ipvs_service(vs: VirtualService) -> Service:
    p = vs.persistence
    return Service(
        key=service_key(vs),
        scheduler=vs.scheduler,
        persistent=p is not None,
        timeout=p.timeout if p else 0,
        netmask=p.netmask if p and p.netmask else None,
        pe_name=(p.engine or "") if p else "",
        one_packet=vs.one_packet,
        sched_flags=frozenset(vs.scheduler_flags),
    )


def ipvs_destination(vs: VirtualService, rs: RealServer | SorryServer, weight: int) -> Destination:
    forwarding = Forwarding.from_config(rs.forwarding or vs.forwarding)
    tunnel = getattr(rs, "tunnel", None)
    return Destination.at(
        str(rs.address),
        rs.port if rs.port is not None else (vs.port or 0),
        forwarding=forwarding,
        weight=weight,
        upper_threshold=getattr(rs, "upper_threshold", 0),
        lower_threshold=getattr(rs, "lower_threshold", 0),
        tunnel_type=tunnel.type if tunnel else "ipip",
        tunnel_port=(tunnel.port or 0) if tunnel else 0,
        tunnel_flags=tunnel.checksum if tunnel else "nocsum",
    )


def quorum_instances(vs: VirtualService, floating: Mapping[str, str], instances: Iterable[str]) -> list[str]:
    """The VRRP instances whose priority a lost quorum of `vs` lowers: the one floating its address (giving
    it up moves the service and nothing else); a fwmark service, or an address no instance floats, cannot
    say which instance carries its traffic, so every instance gives way. An `announce: bgp` service lowers
    none: every director serves its VIP, and its failover is this director's BGP withdrawal, not a VRRP
    instance moving unrelated addresses (and the gateway) to the peer."""
    if vs.announce == "bgp":
        return []
    owner = floating.get(str(vs.address)) if vs.address is not None else None
    return [owner] if owner is not None else list(instances)


def build_desired(
    config: Config,
    health: Mapping[RealServerKey, ServerState] | None = None,
    drained: frozenset[RealServerKey] | frozenset[tuple[str, str]] = frozenset(),
    now: float = 0.0,
) -> Desired:
    """The table for the config as health and maintenance allow. `havs apply` passes no health: all up."""
    entries: list[tuple[Service, list[Destination]]] = []
    lost: list[str] = []
    decrement = dict.fromkeys((v.name for v in config.vrrp), 0)
    floating = config.floating  # floating IP → the instance that floats it
    wake: list[float] = []
    configured: set[tuple[ServiceKey, DestinationKey]] = set()
    for vs in config.virtual_services:
        skey = service_key(vs)
        dests: list[Destination] = []
        weights: list[int | None] = []
        for rs in vs.real_servers:
            key = RealServerKey.of(vs, rs)
            state = (health or {}).get(key, ServerState(up=True))
            plan = WeightPlan(
                configured=rs.weight,
                up=state.up,
                since_up=state.since_up,
                slow_start=vs.slow_start,
                agent_fraction=state.agent_fraction,
                drained=key in drained,
                on_down=vs.on_down,
            )
            weight = plan.weight(now)
            weights.append(weight)
            dest = ipvs_destination(vs, rs, weight or 0)
            configured.add((skey, dest.key))
            if weight is not None:
                dests.append(dest)
            change = plan.next_change(now)
            if change is not None:
                wake.append(change)
        if vs.real_servers and not quorum_met(vs, weights):
            lost.append(vs.name)
            assert vs.quorum is not None
            for name in quorum_instances(vs, floating, decrement):
                decrement[name] += vs.quorum.priority_decrement
            sorry = vs.quorum.sorry_server
            if sorry is not None:
                dests = [d for d in dests if d.key != ipvs_destination(vs, sorry, 1).key]
                dests.append(ipvs_destination(vs, sorry, 1))
        entries.append((ipvs_service(vs), dests))
    table = IpvsTable(entries)
    return Desired(
        table=table,
        managed=frozenset(table),
        quorum_lost=tuple(lost),
        priority_decrement={name: min(n, 254) for name, n in decrement.items()},
        next_change=min(wake) if wake else None,
        configured=frozenset(configured),
    )


@dataclass
class Removals:
    """Real servers (and services) removed from the config are drained before they are deleted
    (keepalived deletes them at once and drops their connections, its #1228): weight 0 first, then
    deletion after `drain_timeout` or as soon as the kernel shows no active connection."""

    retired_services: dict[ServiceKey, Service] = field(default_factory=dict)
    _deadlines: dict[tuple[ServiceKey, DestinationKey], float] = field(default_factory=dict)

    def retire(self, old: Desired, new: Desired) -> None:
        """On reload: services the old config managed and the new one does not are drained, then deleted."""
        for key in old.managed - new.managed:
            self.retired_services[key] = old.table[key].service

    def apply(self, desired: Desired, actual: IpvsTable, now: float, drain_timeout: float) -> Desired:
        """`desired` plus the draining destinations at weight 0; the ones done draining are left out (so
        the diff deletes them), and so are retired services once empty."""
        extra: dict[ServiceKey, list[Destination]] = {}
        alive: dict[tuple[ServiceKey, DestinationKey], float] = {}
        for key in desired.managed | self.retired_services.keys():
            if key not in actual:
                continue
            for dkey, dest in actual[key].destinations.items():
                if (key, dkey) in desired.configured:
                    continue  # the config's own server: health and weights decide, not draining
                deadline = self._deadlines.get((key, dkey), now + drain_timeout)
                stats = actual.destination_stats(key, dkey)
                active = stats.active_conns if stats else 0
                started = (key, dkey) in self._deadlines
                if now >= deadline or (started and dest.weight == 0 and active == 0):
                    continue  # drained: leave it out, the diff deletes it
                alive[(key, dkey)] = deadline
                extra.setdefault(key, []).append(replace(dest, weight=0))
        self._deadlines = alive
        for key in list(self.retired_services):
            if key not in actual:
                del self.retired_services[key]
        entries = []
        for key, entry in desired.table.items():
            entries.append((entry.service, [*entry.destinations.values(), *extra.get(key, [])]))
        for key, service in self.retired_services.items():
            if key not in desired.table and extra.get(key):
                entries.append((service, extra[key]))
        table = IpvsTable(entries)
        return Desired(
            table=table,
            managed=desired.managed | frozenset(self.retired_services),
            quorum_lost=desired.quorum_lost,
            priority_decrement=desired.priority_decrement,
            next_change=desired.next_change,
            configured=desired.configured,
        )

    def draining(self) -> list[tuple[ServiceKey, DestinationKey, float]]:
        return [(s, d, t) for (s, d), t in self._deadlines.items()]
