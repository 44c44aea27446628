"""Whether a reload is dangerous: the reasons a valid new config should not replace the running one unforced.

A file that validates can still be the wrong file: half of it (a copy caught mid-way: every prefix of a
YAML mapping is a YAML mapping), an empty services list, a VRRP section gone. Applied, such a file
releases the VIP or empties IPVS on both directors at once, since one file serves both. `judge` names
what the reload would take away; the daemon refuses a reload with reasons unless it is forced
(`havs reload --force`). Pure: two configs in, reasons out.

What counts as taking a real server out: removing it, removing its service, or setting its weight to 0
(it stays in IPVS but gets no new connections: for the clients, the same thing). Only servers that carry
traffic in the running config (weight > 0) count, in both the share and the "every server" rule.
"""

from __future__ import annotations

from havs.core.health import server_name
from havs.core.model import Config


def _active_servers(config: Config) -> dict[str, set[str]]:
    """service name → its real servers that take new connections (configured weight > 0)."""
    return {
        vs.name: {server_name(rs.address, vs.real_server_port(rs)) for rs in vs.real_servers if rs.weight > 0}
        for vs in config.virtual_services
    }


def _addresses(config: Config) -> dict[str, tuple[str, str]]:
    """floating IP → ('address/len on role' as the config declares it, the instance floating it), across
    every instance."""
    return {str(fa.address.ip): (f"{fa.address} on {fa.interface}", v.name) for v in config.vrrp for fa in v.addresses}


def _vrrp_reasons(old: Config, new: Config) -> list[str]:
    """Addresses a reload releases or moves: an instance removed with its addresses (they are released on
    both directors at once), an address dropped, changed, or moved to another instance (it goes where that
    instance is MASTER, maybe the other director)."""
    before, after = _addresses(old), _addresses(new)
    kept = {v.name for v in new.vrrp}
    reasons: list[str] = []
    for v in old.vrrp:
        released = [before[str(fa.address.ip)][0] for fa in v.addresses if str(fa.address.ip) not in after]
        if v.name not in kept and released:
            reasons.append(f"removes VRRP instance {v.name}: its floating addresses would be released "
                           f"({', '.join(released)})")
    for ip, (declared, instance) in before.items():
        if ip not in after:
            if instance in kept:
                reasons.append(f"drops floating address {declared}")
            continue
        if after[ip][0] != declared:
            reasons.append(f"changes floating address {declared} to {after[ip][0]}")
        if after[ip][1] != instance:
            reasons.append(f"moves floating address {declared} from VRRP instance {instance} to {after[ip][1]}")
    return reasons


def judge(old: Config, new: Config, *, max_removed: float) -> list[str]:
    """The reasons replacing `old` (running) with `new` is dangerous; [] = safe.

    `max_removed` is a share 0..1 of the running config's active real servers: a reload that takes out at
    least that share (and at least one server) is dangerous. "At least", so that the default 0.5 refuses
    losing one server of two, which is what a copy cut off before the last server looks like.
    """
    reasons: list[str] = []
    if old.vrrp and not new.vrrp:
        reasons.append("removes the vrrp section: VRRP would stop and the floating addresses be released")
    else:
        reasons += _vrrp_reasons(old, new)

    before_servers, after_servers = _active_servers(old), _active_servers(new)
    total = sum(len(servers) for servers in before_servers.values())
    removed = 0
    for service, servers in before_servers.items():
        kept = after_servers.get(service)
        gone = servers - (kept or set())
        removed += len(gone)
        if kept is not None and servers and not kept:
            reasons.append(f"takes every real server out of {service} ({len(servers)} in service now, none after)")
    if total and removed and removed / total >= max_removed:
        reasons.append(f"takes {removed} of {total} real servers out ({removed / total:.0%}; the limit is "
                       f"settings.reload_max_removed = {max_removed:.0%})")
    return reasons
