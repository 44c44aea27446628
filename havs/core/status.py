"""`havs status`: the typed snapshot the controller produces, its JSON form, and its rendering for people
in the shape an `ipvsadm -Ln` user reads at once.

The snapshot crosses the control socket as JSON (`to_dict` / `from_dict`); `from_dict` accepts what an
older or newer daemon sends (missing keys take defaults, unknown VRRP keys are kept in `extra`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from havs.core.vocab import BY_VALUE as FORWARDING_BY_VALUE
from havs.core.vocab import Forwarding


@dataclass(frozen=True)
class ServerStatus:
    server: str  # "192.168.72.128:80"
    forwarding: Forwarding | None
    configured_weight: int | None
    effective_weight: int | None  # None: not in IPVS (down, on_down remove)
    health: str = "unchecked"  # up / down / unknown / unchecked (no health checks running)
    last_result: str | None = None
    latency_ms: float | None = None
    drained: bool = False
    active_conns: int | None = None
    inactive_conns: int | None = None
    # why the effective weight is not the configured one: "slow start 35%", "agent 50%", "drained",
    # "down", "quorum lost" (a sorry server is in) … ("" when it is the configured weight)
    weight_reason: str = ""


@dataclass(frozen=True)
class ServiceStatus:
    name: str  # "TCP 192.168.0.108:80"
    scheduler: str
    flags: tuple[str, ...] = ()  # as ipvsadm -Ln prints them after the scheduler
    quorum: bool = True
    real_servers: tuple[ServerStatus, ...] = ()


_VRRP_KNOWN = ("instance", "group", "state", "since_ago", "priority", "priority_decrement", "router_id", "version",
               "mode", "interface", "master", "addresses", "held", "adverts_sent", "adverts_received", "dropped",
               "preempt_hold")
DEFAULT_INSTANCE = "VI_1"  # what an instance is called when the config (or an older daemon) names none


@dataclass(frozen=True)
class VrrpStatus:
    """One VRRP instance as the VRRP process last pushed it; counters and details the renderer does not use
    stay in `extra`."""

    instance: str = DEFAULT_INSTANCE
    group: str | None = None  # its sync group, if any
    state: str = "INIT"
    since_ago: float | None = None
    priority: int | None = None
    priority_decrement: int = 0
    router_id: int | None = None
    version: int | None = None
    mode: str | None = None
    interface: str | None = None
    master: str | None = None
    addresses: tuple[str, ...] = ()  # configured floating addresses, "192.168.0.108/24 dev eth0"
    held: tuple[str, ...] = ()  # those this director holds now (same form)
    adverts_sent: int = 0
    adverts_received: int = 0
    dropped: Mapping[str, int] = field(default_factory=dict)
    # why this director defers taking the addresses back (None: it does not): a returning director's
    # failback catch-up holds preemption until its connection table has caught up (docs/connection-sync.md)
    preempt_hold: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_push(cls, snap: Mapping[str, Any], now: float) -> VrrpStatus:
        """From the VRRP process's pushed snapshot (`since` is monotonic: made an age against `now`)."""
        data = dict(snap)
        since = data.pop("since", None)
        if isinstance(since, int | float) and "since_ago" not in data:
            data["since_ago"] = now - since
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VrrpStatus:
        known = {k: d[k] for k in _VRRP_KNOWN if d.get(k) is not None}
        if "master" not in known and d.get("master_address"):
            known["master"] = d["master_address"]
        known["addresses"] = tuple(known.get("addresses", ()))
        known["held"] = tuple(known.get("held", ()))
        known["dropped"] = dict(known.get("dropped", {}))
        extra = {k: v for k, v in d.items() if k not in _VRRP_KNOWN and k != "extra"}
        extra.update(d.get("extra") or {})
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out = {**dict(self.extra), **{k: getattr(self, k) for k in _VRRP_KNOWN}}
        out["addresses"] = list(self.addresses)
        out["held"] = list(self.held)
        out["dropped"] = dict(self.dropped)
        return out


def parse_push(push: Mapping[str, Any], now: float,
               names: Sequence[str] = ()) -> tuple[list[VrrpStatus], dict[str, str]]:
    """The VRRP process's pushed snapshot → its instances and its sync groups' states. The push is
    `{"instances": [...], "groups": {...}}`; a child from before several instances pushed one instance's
    mapping. An entry without its `instance` takes the name at its place in `names` (config order)."""
    entries = [push] if "instances" not in push else [i for i in push.get("instances") or ()
                                                      if isinstance(i, Mapping)]
    out = []
    for i, entry in enumerate(entries):
        if not entry.get("instance") and i < len(names):
            entry = {**entry, "instance": names[i]}
        out.append(VrrpStatus.from_push(entry, now))
    return out, {str(k): str(v) for k, v in (push.get("groups") or {}).items()}


def push_process(push: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a push says of the VRRP process itself (`restarts`, `error`), beside its instances."""
    if push is None or "instances" not in push:
        return {}  # an older child's single mapping keeps these among its instance's details (`extra`)
    return {k: v for k, v in push.items() if k not in ("instances", "groups")}


@dataclass(frozen=True)
class ReconcilerStatus:
    passes: int = 0
    ops_applied: int = 0
    failures: int = 0  # operations the kernel refused
    drift_repairs: int = 0
    pass_failures: int = 0  # whole passes that failed (dump or socket errors), retried on the next


@dataclass(frozen=True)
class DrainingStatus:
    service: str
    server: str
    left: float  # seconds until it is deleted (sooner once its connections end)


@dataclass(frozen=True)
class StatusSnapshot:
    version: str
    node: str
    pid: int | None
    uptime: float | None
    config_file: str
    vrrp: list[VrrpStatus] = field(default_factory=list)  # every instance, in config order ([]: VRRP off)
    services: tuple[ServiceStatus, ...] = ()
    reconciler: ReconcilerStatus | None = None
    draining: tuple[DrainingStatus, ...] = ()
    reloads: Mapping[str, int] = field(default_factory=dict)  # reload outcome → count since start
    vrrp_groups: Mapping[str, str] = field(default_factory=dict)  # sync group → its state
    vrrp_process: Mapping[str, Any] = field(default_factory=dict)  # the VRRP process: restarts, error

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["vrrp"] = [v.to_dict() for v in self.vrrp]
        out["vrrp_groups"] = dict(self.vrrp_groups)
        out["vrrp_process"] = dict(self.vrrp_process)
        for svc in out["services"]:
            svc["flags"] = list(svc["flags"])
            svc["real_servers"] = list(svc["real_servers"])
            for rs in svc["real_servers"]:
                rs["forwarding"] = rs["forwarding"].value if rs["forwarding"] else None
        out["services"] = list(out["services"])
        out["draining"] = list(out["draining"])
        out["reloads"] = dict(self.reloads)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StatusSnapshot:
        vrrp = d.get("vrrp") or []
        rec = d.get("reconciler")
        return cls(
            version=str(d.get("version", "?")), node=str(d.get("node", "?")), pid=d.get("pid"),
            uptime=d.get("uptime"), config_file=str(d.get("config_file", "?")),
            # a daemon before several instances sent one mapping (or null without VRRP)
            vrrp=[VrrpStatus.from_dict(v) for v in ([vrrp] if isinstance(vrrp, Mapping) else vrrp)],
            vrrp_groups={str(k): str(v) for k, v in (d.get("vrrp_groups") or {}).items()},
            vrrp_process=dict(d.get("vrrp_process") or {}),
            services=tuple(_service(s) for s in d.get("services") or ()),
            reconciler=ReconcilerStatus(**_only(ReconcilerStatus, rec)) if rec else None,
            draining=tuple(DrainingStatus(**_only(DrainingStatus, x)) for x in d.get("draining") or ()),
            reloads={str(k): int(v) for k, v in (d.get("reloads") or {}).items()},
        )


def _only(cls: type, d: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def _service(d: Mapping[str, Any]) -> ServiceStatus:
    servers = []
    for rs in d.get("real_servers") or ():
        data = _only(ServerStatus, rs)
        data["forwarding"] = FORWARDING_BY_VALUE.get(str(rs.get("forwarding")))
        data.setdefault("server", "?")
        data.setdefault("configured_weight", None)
        data.setdefault("effective_weight", None)
        servers.append(ServerStatus(**data))
    return ServiceStatus(name=str(d.get("name", "")), scheduler=str(d.get("scheduler", "")),
                         flags=tuple(d.get("flags") or ()), quorum=bool(d.get("quorum", True)),
                         real_servers=tuple(servers))


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    if s < 120:
        return f"{seconds:.1f}s" if seconds < 100 else f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _vrrp_lines(vrrp: VrrpStatus) -> list[str]:
    """One instance: its state line, then why preemption is held and where its addresses are."""
    dec = vrrp.priority_decrement
    prio_text = f"{vrrp.priority}" + (f" (lowered by {dec}: quorum lost)" if dec else "")
    lines = [
        f"VRRP {vrrp.state} since {_ago(vrrp.since_ago)} ago — {vrrp.instance}"
        + (f" in sync group {vrrp.group}" if vrrp.group else "")
        + f", router {vrrp.router_id} v{vrrp.version} priority {prio_text}, {vrrp.mode or '?'} on "
        f"{vrrp.interface or '?'}" + (f", master {vrrp.master}" if vrrp.master else "")
    ]
    if vrrp.preempt_hold:
        lines.append(f"  preemption held: {vrrp.preempt_hold}")
    if vrrp.addresses:
        held = set(vrrp.held)
        lines.append("  floating: " + ", ".join(f"{a} ({'held' if a in held else 'absent'})" for a in vrrp.addresses))
    return lines


def render_status(snapshot: StatusSnapshot | Mapping[str, Any]) -> str:
    snap = snapshot if isinstance(snapshot, StatusSnapshot) else StatusSnapshot.from_dict(snapshot)
    lines = [f"havs {snap.version} on {snap.node}, pid {'?' if snap.pid is None else snap.pid}, "
             f"up {_ago(snap.uptime)}, config {snap.config_file}"]
    for vrrp in snap.vrrp:
        lines += _vrrp_lines(vrrp)
    for group, state in snap.vrrp_groups.items():
        members = [v.instance for v in snap.vrrp if v.group == group]
        lines.append(f"sync group {group}: {state} ({', '.join(members)})")
    if not snap.vrrp:
        lines.append("VRRP off")
    if snap.vrrp_process.get("error"):
        lines.append(f"VRRP process: {snap.vrrp_process['error']}")
    if snap.vrrp_process.get("restarts"):
        lines.append(f"VRRP process restarted {snap.vrrp_process['restarts']} time(s) (died unasked)")
    rec = snap.reconciler
    if rec:
        failed_passes = f", {rec.pass_failures} failed passes" if rec.pass_failures else ""
        lines.append(f"IPVS: {rec.passes} passes, {rec.ops_applied} ops applied, "
                     f"{rec.failures} failed, {rec.drift_repairs} drift repairs{failed_passes}")
    lines.append("Prot LocalAddress:Port Scheduler Flags")
    lines.append("  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn Health Last result  Latency"
                 "  Weight because")
    for svc in snap.services:
        flags = " ".join(svc.flags)
        quorum = "" if svc.quorum else "  QUORUM LOST"
        proto, _, where = svc.name.partition(" ")
        lines.append(f"{proto:<4} {where:<21} {svc.scheduler:<8} {flags}{quorum}".rstrip())
        for rs in svc.real_servers:
            w = "-" if rs.effective_weight is None else str(rs.effective_weight)
            if rs.effective_weight != rs.configured_weight:
                w += f"/{_num(rs.configured_weight)}"
            health = rs.health + (" drained" if rs.drained else "")
            lat = "" if rs.latency_ms is None else f"{rs.latency_ms:.1f}ms"
            # "down" and "drained" are in the Health column already
            why = ", ".join(r for r in rs.weight_reason.split(", ") if r not in ("down", "drained"))
            fwd = rs.forwarding.ipvsadm if rs.forwarding else "-"
            lines.append(
                f"  -> {rs.server:<28} {fwd:<7} {w:<6} {_num(rs.active_conns):<10} {_num(rs.inactive_conns):<9} "
                f"{health:<6} {rs.last_result or '':<12} {lat:<8} {why}".rstrip()
            )
    if snap.reloads:
        lines.append("reloads: " + ", ".join(f"{n} {k}" for k, n in sorted(snap.reloads.items())))
    for d in snap.draining:
        lines.append(f"  draining {d.service} -> {d.server} (deleted in {_ago(d.left)})")
    return "\n".join(lines)


def _num(v: object) -> str:
    return "-" if v is None else str(v)
