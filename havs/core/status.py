"""`havs status` for people: the daemon's JSON snapshot in the shape an `ipvsadm -Ln` user reads at once."""

from __future__ import annotations

from typing import Any

_FORWARD = {"masq": "Masq", "route": "Route", "tunnel": "Tunnel", "local": "Local"}


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    if s < 120:
        return f"{seconds:.1f}s" if seconds < 100 else f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def render_status(snap: dict[str, Any]) -> str:
    lines = [f"havs {snap.get('version', '?')} on {snap.get('node', '?')}, pid {snap.get('pid', '?')}, "
             f"up {_ago(snap.get('uptime'))}, config {snap.get('config_file', '?')}"]
    vrrp = snap.get("vrrp")
    if vrrp:
        prio = vrrp.get("priority")
        dec = vrrp.get("priority_decrement") or 0
        prio_text = f"{prio}" + (f" (lowered by {dec}: quorum lost)" if dec else "")
        master = vrrp.get("master") or vrrp.get("master_address")
        lines.append(
            f"VRRP {vrrp.get('state', '?')} since {_ago(vrrp.get('since_ago'))} ago — router {vrrp.get('router_id')} "
            f"v{vrrp.get('version')} priority {prio_text}, {vrrp.get('mode', '?')} on {vrrp.get('interface', '?')}"
            + (f", master {master}" if master else "")
        )
        if vrrp.get("addresses"):
            lines.append("  floating: " + ", ".join(vrrp["addresses"]))
    else:
        lines.append("VRRP off")
    rec = snap.get("reconciler") or {}
    if rec:
        lines.append(f"IPVS: {rec.get('passes', 0)} passes, {rec.get('ops_applied', 0)} ops applied, "
                     f"{rec.get('failures', 0)} failed, {rec.get('drift_repairs', 0)} drift repairs")
    lines.append("Prot LocalAddress:Port Scheduler Flags")
    lines.append("  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn Health Last result  Latency")
    for svc in snap.get("services", []):
        flags = " ".join(svc.get("flags", []))
        quorum = "" if svc.get("quorum", True) else "  QUORUM LOST"
        proto, _, where = str(svc.get("name", "")).partition(" ")
        lines.append(f"{proto:<4} {where:<21} {svc.get('scheduler', ''):<8} {flags}{quorum}".rstrip())
        for rs in svc.get("real_servers", []):
            weight = rs.get("effective_weight")
            configured = rs.get("configured_weight")
            w = "-" if weight is None else str(weight)
            if weight != configured:
                w += f"/{configured}"
            health = str(rs.get("health", "?")) + (" drained" if rs.get("drained") else "")
            latency = rs.get("latency_ms")
            lat = "" if latency is None else f"{latency:.1f}ms"
            lines.append(
                f"  -> {rs.get('server', ''):<28} {_FORWARD.get(rs.get('forwarding', ''), '-'):<7} {w:<6} "
                f"{_num(rs.get('active_conns')):<10} {_num(rs.get('inactive_conns')):<9} {health:<6} "
                f"{rs.get('last_result', '')!s:<12} {lat}".rstrip()
            )
    draining = snap.get("draining") or []
    for d in draining:
        lines.append(f"  draining {d.get('service')} -> {d.get('server')} (deleted in {_ago(d.get('left'))})")
    return "\n".join(lines)


def _num(v: object) -> str:
    return "-" if v is None else str(v)
