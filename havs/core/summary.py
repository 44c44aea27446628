"""One screen that says what a node's effective config is (`havs check`), in ipvsadm's and keepalived's words."""

from __future__ import annotations

from havs.core.bgp import describe
from havs.core.model import AuthHmac, NodeView, VirtualService
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


def config_summary(view: NodeView, file: str) -> str:
    cfg = view.config
    node = view.node
    lines = [f"{file}: OK — node {view.name}"]
    if cfg.vrrp:
        v = cfg.vrrp
        ifaces = ", ".join(f"{role}={name}" for role, name in node.interfaces.items())
        lines.append(
            f"VRRP v{v.version} router_id {v.router_id} priority {node.priority} advert {v.advert_interval:g}s "
            f"preempt {'on' if v.preempt else 'off'}"
            + (f" delay {v.preempt_delay:g}s" if v.preempt and v.preempt_delay else "")
            + f" heartbeat {view.ifname(v.interface)}"
            + (f" unicast {', '.join(map(str, v.unicast_peers))}" if v.unicast_peers
               else f" multicast {MULTICAST_V6 if v.addresses[0].address.version == 6 else '224.0.0.18'}")
        )
        lines.append(f"  interfaces: {ifaces}")
        if v.auth_hmac is not None:
            lines.append(_auth_line(v.auth_hmac, v.advert_interval))
        for fa in v.addresses:
            lines.append(f"  floating {fa.address} on {view.ifname(fa.interface)} ({fa.interface})")
    else:
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
