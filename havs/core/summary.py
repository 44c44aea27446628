"""One screen that says what a node's effective config is (`havs check`), in ipvsadm's and keepalived's words."""

from __future__ import annotations

from havs.core.bgp import describe
from havs.core.model import AuthHmac, NodeView, VirtualService, Vrrp
from havs.core.vocab import Forwarding
from havs.core.vrrp_auth import default_window
from havs.core.wire import MULTICAST_V6


def _service_flags(vs: VirtualService) -> str:
    parts = []
    if vs.persistence:
        parts.append(f"persistent {vs.persistence.timeout}")
        if vs.persistence.netmask:
            parts.append(f"mask {vs.persistence.netmask}")
        if vs.persistence.engine:
            parts.append(f"pe {vs.persistence.engine}")
    if vs.one_packet:
        parts.append("ops")
    if vs.scheduler_flags:
        parts.append("(" + ",".join(vs.scheduler_flags) + ")")
    return " ".join(parts)


def _auth_line(a: AuthHmac, advert_interval: float) -> str:
    """Mode, anti-replay and key ids: never a key, nor where a key file is (ids only, as status and logs)."""
    seconds = a.time_window if a.time_window is not None else default_window(advert_interval)
    window = f" window {seconds:g}s" if a.anti_replay == "time" else ""
    keys = ", ".join(f"{kid}=**********" for kid in sorted(a.keys))
    return f"  auth_hmac: {a.mode}, anti_replay {a.anti_replay}{window}, keys {keys}, signing with {a.active_key}"


def _instance_lines(view: NodeView, v: Vrrp) -> list[str]:
    """One VRRP instance as this node runs it: identity and timers, the interfaces it uses, auth, addresses."""
    group = view.config.group_of(v.name)
    lines = [
        f"VRRP {v.name}" + (f" in sync group {group.name}" if group else "") + ": "
        f"v{v.version} router_id {v.router_id} priority {v.priority_of(view.name, view.node)} "
        f"advert {v.advert_interval:g}s preempt {'on' if v.preempt else 'off'}"
        + (f" delay {v.preempt_delay:g}s" if v.preempt and v.preempt_delay else "")
        + f" heartbeat {view.ifname(v.interface)}"
        + (f" unicast {', '.join(map(str, v.unicast_peers))}" if v.unicast_peers
           else f" multicast {MULTICAST_V6 if v.family == 6 else '224.0.0.18'}")
    ]
    roles = {v.interface, *(fa.interface for fa in v.addresses), *v.track_interfaces}
    if v.connection_sync is not None:
        roles.add(v.connection_sync.interface)
    lines.append("  interfaces: " + ", ".join(f"{role}={name}" for role, name in view.node.interfaces.items()
                                              if role in roles))
    if v.auth_hmac is not None:
        lines.append(_auth_line(v.auth_hmac, v.advert_interval))
    for fa in v.addresses:
        lines.append(f"  floating {fa.address} on {view.ifname(fa.interface)} ({fa.interface})")
    sync = v.connection_sync
    if sync is not None:
        lines.append(f"  connection_sync on {view.ifname(sync.interface)} sync_id {sync.sync_id}, mode {sync.mode}")
    return lines


def config_summary(view: NodeView, file: str) -> str:
    cfg = view.config
    lines = [f"{file}: OK — node {view.name}"]
    for v in cfg.vrrp:
        lines += _instance_lines(view, v)
    for g in cfg.vrrp_sync_groups:
        notify = [state for state in ("master", "backup", "fault", "stop") if getattr(g.notify, state)]
        lines.append(f"sync group {g.name}: {', '.join(g.instances)}"
                     + (f" (notify on {', '.join(notify)})" if notify else ""))
    if not cfg.vrrp:
        lines.append("VRRP: off (this director owns no floating addresses)")
    lines += describe(view)
    lines.append(f"{len(cfg.virtual_services)} virtual service(s):")
    lines.append("Prot LocalAddress:Port Scheduler Flags")
    lines.append("  -> RemoteAddress:Port           Forward Weight Check")
    for vs in cfg.virtual_services:
        name = vs.name.split(" ", 1)
        lines.append(f"{name[0]:<4} {name[1]:<21} {vs.scheduler:<8} {_service_flags(vs)}".rstrip())
        for rs in vs.real_servers:
            chk = vs.real_server_check(rs)
            port = vs.real_server_port(rs)
            host = f"[{rs.address}]" if rs.address.version == 6 else str(rs.address)
            desc = chk.type if chk.type in ("tcp", "none") else f"{chk.type} {chk.method} {chk.path}"
            fwd = Forwarding.from_config(vs.real_server_forwarding(rs)).ipvsadm
            lines.append(
                f"  -> {host + ':' + str(port):<28} {fwd:<7} {rs.weight:<6} "
                f"{desc} every {chk.interval:g}s rise {chk.rise} fall {chk.fall}"
            )
    s = cfg.settings
    lines.append(
        f"reconcile every {s.reconcile_interval:g}s, drain {s.drain_timeout:g}s, "
        f"purge_unmanaged {'on' if s.purge_unmanaged else 'off'}"
    )
    return "\n".join(lines)
