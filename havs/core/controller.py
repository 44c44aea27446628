"""The controller: what the daemon decides, without the daemon.

Events in (health changes, drains, reloads, the VRRP state, control requests), decisions out (the
desired IPVS table, the sync-daemon actions, replies, a typed status snapshot). No I/O, no clock: the
caller passes `now` (monotonic seconds). The daemon feeds it from its edges and carries out what it says;
`havs.reconcile` turns a `Desired` into kernel operations.

Where a failed check becomes an IPVS delete: `HealthService` (shell) observes a failing probe →
`core.health.ServerHealth` decides "down" after `fall` results → the daemon calls
`Controller.health_changed` and wakes the reconciler → `Controller.plan` leaves the server out of the
desired table (`on_down: remove`) → `core.ipvs_diff.diff` makes a `DeleteDestination` →
`havs.reconcile.Reconciler` has `edge.ipvs.IpvsSocket` apply it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from havs.core.desired import (
    Desired,
    RealServerKey,
    Removals,
    ServerState,
    build_desired,
    ipvs_destination,
    ipvs_service,
    service_key,
)
from havs.core.health import HealthChanged
from havs.core.ipvs_format import service_flags
from havs.core.ipvs_table import IpvsTable, SyncDaemon
from havs.core.model import Config, ConnectionSync, NodeView, VirtualService, Vrrp
from havs.core.status import (
    DrainingStatus,
    ReconcilerStatus,
    ServerStatus,
    ServiceStatus,
    StatusSnapshot,
    VrrpStatus,
    parse_push,
    push_process,
)

SyncState = Literal["master", "backup"]
Judge = Callable[..., list[str]]  # havs.core.reload_guard.judge(old, new, *, max_removed) -> reasons


class HealthView(Protocol):
    """What the controller reads of one server's health (core.health.ServerHealth satisfies it)."""

    @property
    def is_up(self) -> bool: ...

    @property
    def agent_weight(self) -> float | None: ...


# ---------------------------------------------------------------------------------------------- requests

@dataclass(frozen=True)
class StatusRequest:
    pass


@dataclass(frozen=True)
class ReloadRequest:
    force: bool = False  # apply even what the reload guard calls dangerous (`havs reload --force`)


@dataclass(frozen=True)
class MaintenanceRequest:
    drain: bool  # True: drain, False: enable
    server: str  # "192.168.72.128" or "192.168.72.128:80"
    service: str | None = None


Request = StatusRequest | ReloadRequest | MaintenanceRequest


class RequestError(ValueError):
    """A control request that cannot be understood; the message is the reply's error."""


def parse_request(raw: Mapping[str, Any]) -> Request:
    command = raw.get("command")
    if command == "status":
        return StatusRequest()
    if command == "reload":
        force = raw.get("force", False)
        if not isinstance(force, bool):
            raise RequestError(f"force must be true or false, not {force!r}")
        return ReloadRequest(force=force)
    if command in ("drain", "enable"):
        service = raw.get("service")
        return MaintenanceRequest(drain=command == "drain", server=str(raw.get("server", "")),
                                  service=None if service is None else str(service))
    raise RequestError(f"unknown command {command!r}")


# ---------------------------------------------------------------------------------------------- sync daemons

@dataclass(frozen=True)
class SyncAction:
    action: Literal["start", "stop"]
    state: SyncState
    ifname: str
    sync_id: int = 0


def sync_daemon_actions(sync: ConnectionSync | None, ifname: str | None, vrrp_state: str,
                        running: Iterable[SyncDaemon]) -> list[SyncAction]:
    """Which kernel connection-sync threads to stop and start so that what runs matches the config for
    this VRRP state: `both` runs master and backup threads always (each director sends its connections
    and receives the other's); `follow` sends only while MASTER and receives otherwise."""
    if sync is None or ifname is None:
        return []  # connection sync not configured: leave the kernel's sync threads to whoever runs them
    have = {d.state: d for d in running}
    wanted: set[str] = {"master", "backup"} if sync.mode == "both" else (
        {"master"} if vrrp_state == "MASTER" else {"backup"})
    actions: list[SyncAction] = []
    for state in ("master", "backup"):
        current = have.get(state)
        ok = current is not None and current.ifname == ifname and current.syncid == sync.sync_id
        if current is not None and (state not in wanted or not ok):
            actions.append(SyncAction("stop", state, current.ifname, current.syncid))
        if state in wanted and not ok:
            actions.append(SyncAction("start", state, ifname, sync.sync_id))
    return actions


# ---------------------------------------------------------------------------------------------- reloads

@dataclass(frozen=True)
class ReloadPlan:
    # the VRRP part differs from what the running VRRP process was made from. One bool, not one per
    # instance: every instance runs in the one process, which the supervisor updates in place or restarts
    # as a whole; which instances changed is `vrrp_instances` (said in the reload's event)
    vrrp_changed: bool
    needs_ipvs: bool  # the new config has services, purges or syncs connections: the IPVS socket must be open
    added: frozenset[RealServerKey]  # servers the running config did not have
    removed: frozenset[RealServerKey]
    resync: bool = False  # connection sync is configured: bring the kernel's sync threads to the new config
    restart_needed: tuple[str, ...] = ()  # changed settings only a restart applies (said, not silently ignored)
    state_dir_moved: bool = False  # the drains must be written where the next start will read them
    vrrp_instances: tuple[str, ...] = ()  # instances added, removed or changed (new config order, then removed)


RESTART_ONLY = ("control_socket", "metrics_listen", "health_max_in_flight")


def needs_ipvs(config: Config) -> bool:
    """Connection sync counts: a director whose services come by a later reload still runs sync threads."""
    return bool(config.virtual_services) or config.settings.purge_unmanaged or sync_instance(config) is not None


def sync_instance(config: Config) -> Vrrp | None:
    """The VRRP instance that runs the connection sync (at most one: the kernel has one sync daemon per role)."""
    return next((v for v in config.vrrp if v.connection_sync is not None), None)


def changed_instances(old: NodeView, new: NodeView) -> tuple[str, ...]:
    """The VRRP instances a reload from `old` to `new` adds, removes or changes (its settings, its sync
    group, or this node's identity, which every instance's priority and interfaces come from)."""
    before = {v.name: v for v in old.config.vrrp}
    after = {v.name: v for v in new.config.vrrp}
    node = (old.name, old.node) != (new.name, new.node)
    names = [*after, *(name for name in before if name not in after)]
    return tuple(name for name in names if node or before.get(name) != after.get(name)
                 or old.config.group_of(name) != new.config.group_of(name))


def servers_of(config: Config) -> list[RealServerKey]:
    return [RealServerKey.of(vs, rs) for vs in config.virtual_services for rs in vs.real_servers]


# ---------------------------------------------------------------------------------------------- the controller

class Controller:
    """State the daemon's decisions need across passes: drains, slow-start ramps, removals in progress,
    the last desired table. Everything else is recomputed from the config and the health each pass."""

    def __init__(self, view: NodeView, drained: Iterable[RealServerKey] = ()) -> None:
        self.view = view
        self.drained: set[RealServerKey] = {RealServerKey(*k) for k in drained}
        self.ramp_from: dict[RealServerKey, float] = {}  # when a server came back from down (slow start)
        self.removals = Removals()
        self.desired: Desired | None = None
        # the view the running VRRP instance was made from: a reload whose VRRP part could not be applied
        # leaves it behind `view`, and the next reload tries again
        self.vrrp_view = view
        # instance → its VRRP state: every director starts as a backup; the VRRP process says what follows
        self.vrrp_states: dict[str, str] = {v.name: "BACKUP" for v in view.config.vrrp}
        # instances a reload took out of the running process: it hands them over after it answered the
        # update, so their last reports (RESIGNING, INIT) come after it and must not bring them back
        self._dropped: set[str] = set()
        self.reloads: dict[str, int] = {}  # reload outcome (applied, forced, failed, refused, …) → count

    @property
    def config(self) -> Config:
        return self.view.config

    # -- events

    def health_changed(self, change: HealthChanged) -> None:
        if change.to == "up" and change.from_ == "down":
            # a recovered server ramps up (slow start); a first verdict does not
            self.ramp_from[RealServerKey(change.service, change.server)] = change.at

    def server_states(self, health: Mapping[tuple[str, str], HealthView]) -> dict[RealServerKey, ServerState]:
        return {
            RealServerKey(*key): ServerState(up=h.is_up, since_up=self.ramp_from.get(RealServerKey(*key), -math.inf),
                                             agent_fraction=h.agent_weight)
            for key, h in health.items()
        }

    def plan(self, health: Mapping[tuple[str, str], HealthView], now: float) -> Desired:
        """The table the kernel should hold now (before removals in progress: the reconciler adds those)."""
        self.desired = build_desired(self.config, self.server_states(health), frozenset(self.drained), now)
        return self.desired

    def review_reload(self, new: NodeView, judge: Judge) -> list[str]:
        """Why applying `new` would be dangerous ([] = safe). The running config's `reload_max_removed`
        decides: a file caught mid-copy must not lower its own guard."""
        return judge(self.config, new.config, max_removed=self.config.settings.reload_max_removed)

    def reload(self, new: NodeView, health: Mapping[tuple[str, str], HealthView]) -> ReloadPlan:
        """Adopt `new`: services it drops are drained, then deleted (Removals)."""
        old = self.view
        old_servers, new_servers = set(servers_of(old.config)), set(servers_of(new.config))
        if self.desired is not None:
            self.removals.retire(self.desired, build_desired(new.config, self.server_states(health)))
        self.view = new
        for key in old_servers - new_servers:
            self.ramp_from.pop(key, None)
        was, now = old.config.settings, new.config.settings
        instances = changed_instances(self.vrrp_view, new)
        return ReloadPlan(
            vrrp_changed=bool(instances) or new.config.vrrp_sync_groups != self.vrrp_view.config.vrrp_sync_groups,
            vrrp_instances=instances,
            needs_ipvs=needs_ipvs(new.config),
            added=frozenset(new_servers - old_servers),
            removed=frozenset(old_servers - new_servers),
            # always, not only on a change: a sync start that failed earlier is retried here
            resync=sync_instance(new.config) is not None,
            restart_needed=tuple(k for k in RESTART_ONLY if getattr(was, k) != getattr(now, k)),
            state_dir_moved=was.state_dir != now.state_dir,
        )

    def vrrp_interfaces(self, view: NodeView) -> list[str]:
        """The interfaces `view`'s VRRP needs to run at all: each instance's heartbeat interface (the VRRP
        process refuses an instance without it: no socket, no advert source) and the connection-sync one
        (the daemon's sync threads). A missing tracked or address interface is not here: as keepalived, the
        process runs that instance in FAULT until the interface appears."""
        roles: set[str] = set()
        for v in view.config.vrrp:
            roles.add(v.interface)
            if v.connection_sync is not None:
                roles.add(v.connection_sync.interface)
        return sorted({view.ifname(role) for role in roles})

    # -- maintenance

    def match(self, server: str, service: str | None = None) -> list[RealServerKey]:
        """The configured real servers an operator's `server` (address or address:port) names."""
        return [key for key in servers_of(self.config)
                if server in (key.server, key.host) and service in (None, key.service)]

    def maintenance(self, request: MaintenanceRequest) -> tuple[dict[str, Any], list[RealServerKey]]:
        """The reply, and the servers whose drain flag it set (the caller persists and reconciles)."""
        matches = self.match(request.server, request.service)
        if not matches:
            return {"ok": False, "error": f"no real server {request.server!r} in the config"}, []
        for key in matches:
            (self.drained.add if request.drain else self.drained.discard)(key)
        return {"ok": True, "servers": [str(k) for k in matches]}, matches

    # -- VRRP state and sync daemons

    def vrrp_changed(self, instance: str, to: str) -> None:
        if instance not in self._dropped:
            self.vrrp_states[instance] = to

    def vrrp_restarted(self, view: NodeView) -> None:
        """A new VRRP process runs `view`'s instances: each starts as a backup (before its first report)."""
        self.vrrp_states = {v.name: "BACKUP" for v in view.config.vrrp}
        self._dropped = set()  # the old process is gone: nothing of it reports any more

    def vrrp_updated(self, view: NodeView) -> None:
        """The running process took `view` in place: its instances keep their states, one it gained starts as
        a backup, one it dropped is forgotten (and its handover's reports ignored)."""
        names = {v.name for v in view.config.vrrp}
        self._dropped = (self._dropped | self.vrrp_states.keys()) - names
        self.vrrp_states = {v.name: self.vrrp_states.get(v.name, "BACKUP") for v in view.config.vrrp}

    @property
    def sync_instance(self) -> Vrrp | None:
        return sync_instance(self.config)

    @property
    def sync_state(self) -> str:
        """The state of the instance that has `connection_sync` (the sync threads and failback follow it)."""
        v = self.sync_instance
        return self.vrrp_states.get(v.name, "BACKUP") if v is not None else "BACKUP"

    @property
    def syncs_connections(self) -> bool:
        return self.sync_instance is not None

    def sync_actions(self, running: Iterable[SyncDaemon]) -> list[SyncAction]:
        """For the latest VRRP state: a run that started before a later state change still ends right."""
        vrrp = self.sync_instance
        sync = vrrp.connection_sync if vrrp is not None else None
        ifname = self.view.ifname(sync.interface) if sync is not None else None
        return sync_daemon_actions(sync, ifname, self.sync_state, running)

    def vrrp_status(self, push: Mapping[str, Any] | None, now: float) -> tuple[list[VrrpStatus], dict[str, str]]:
        """Every instance the running VRRP process was made from, in config order, as it last pushed it (one
        it has not pushed yet: INIT, with what the config says), and the sync groups' states. None: no VRRP
        process."""
        if push is None:
            return [], {}
        view = self.vrrp_view
        cfg = view.config
        pushed, groups = parse_push(push, now, [v.name for v in cfg.vrrp])
        by_name = {s.instance: s for s in pushed}
        out = []
        for v in cfg.vrrp:
            group = cfg.group_of(v.name)
            st = by_name.pop(v.name, None) or VrrpStatus(
                instance=v.name, priority=v.priority_of(view.name, view.node), router_id=v.router_id,
                version=v.version, mode="unicast" if v.unicast_peers else "multicast",
                interface=view.ifname(v.interface),
                addresses=tuple(f"{fa.address} dev {view.ifname(fa.interface)}" for fa in v.addresses))
            out.append(st if st.group or group is None else replace(st, group=group.name))
        out.extend(by_name.values())  # not in the config (yet): still what runs
        for g in cfg.vrrp_sync_groups:  # a process that says nothing of a group: its members' common state
            states = {s.state for s in out if s.instance in g.instances}
            groups.setdefault(g.name, states.pop() if len(states) == 1 else "INIT")
        return out, groups

    # -- status

    def status(self, *, now: float, version: str, pid: int | None, started: float, config_file: str,
               health: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
               vrrp: Mapping[str, Any] | None = None, reconciler: ReconcilerStatus | None = None,
               actual: IpvsTable | None = None,
               draining: Iterable[tuple[object, object, float]] = ()) -> StatusSnapshot:
        """Everything `havs status` shows. `health`: HealthService.snapshot(); `vrrp`: the VRRP process's
        latest pushed snapshot; `actual`: the last dumped kernel table (connection counts)."""
        health = health or {}
        instances, groups = self.vrrp_status(vrrp, now)
        table = self.desired.table if self.desired else None
        quorum_lost = set(self.desired.quorum_lost) if self.desired else set()
        services = []
        for vs in self.config.virtual_services:
            skey = service_key(vs)
            servers = []
            for rs in vs.real_servers:
                key = RealServerKey.of(vs, rs)
                h = health.get(key.service, {}).get(key.server, {})
                dest = ipvs_destination(vs, rs, 0)
                in_table = table[skey].destinations.get(dest.key) if table and skey in table else None
                stats = actual.destination_stats(skey, dest.key) if actual is not None else None
                effective = in_table.weight if in_table else None
                servers.append(ServerStatus(
                    server=key.server, forwarding=dest.forwarding, configured_weight=rs.weight,
                    effective_weight=effective,
                    health=str(h.get("state", "unchecked")), last_result=h.get("reason"),
                    latency_ms=h.get("latency_ms"), drained=key in self.drained,
                    active_conns=stats.active_conns if stats else None,
                    inactive_conns=stats.inactive_conns if stats else None,
                    weight_reason=weight_reason(vs, effective, h, drained=key in self.drained,
                                                since_up=self.ramp_from.get(key), now=now,
                                                quorum_lost=vs.name in quorum_lost),
                ))
            services.append(ServiceStatus(name=vs.name, scheduler=vs.scheduler, flags=service_flags(ipvs_service(vs)),
                                          quorum=vs.name not in quorum_lost, real_servers=tuple(servers)))
        return StatusSnapshot(
            version=version, node=self.view.name, pid=pid, uptime=now - started, config_file=config_file,
            vrrp=instances, vrrp_groups=groups, vrrp_process=push_process(vrrp),
            services=tuple(services), reconciler=reconciler,
            draining=tuple(DrainingStatus(str(s), str(d), t - now) for s, d, t in draining),
            reloads=dict(self.reloads),
        )


def weight_reason(vs: VirtualService, effective: int | None, health: Mapping[str, Any], *,
                  drained: bool, since_up: float | None, now: float, quorum_lost: bool) -> str:
    """Why a server's effective weight is what it is, in the order `core.health.effective_weight` applies
    them: "down", "drained", "agent 50%", "slow start 35%", and "quorum lost" (the service's sorry server
    is in, or its VRRP priority is lowered). "" when nothing lowers the configured weight."""
    reasons: list[str] = []
    up = health.get("up", health.get("state", "up") in ("up", "unchecked"))
    if effective is None or not up:
        reasons.append("down")
    elif drained:
        reasons.append("drained")
    else:
        agent = health.get("agent_weight")
        if isinstance(agent, int | float) and agent < 1:
            reasons.append(f"agent {round(max(0.0, agent) * 100)}%")
        if vs.slow_start > 0 and since_up is not None and 0 <= now - since_up < vs.slow_start:
            reasons.append(f"slow start {round(100 * (now - since_up) / vs.slow_start)}%")
    if quorum_lost:
        sorry = vs.quorum is not None and vs.quorum.sorry_server is not None
        reasons.append("quorum lost" + (": sorry server in" if sorry else ""))
    return ", ".join(reasons)
