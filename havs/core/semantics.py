"""What a config means, checked across keys: the mistakes a schema accepts and a director cannot run.

Each check takes the parts of the file that validated on their own, so a file with a typo in one service
still gets every other problem reported in the same run (`havs check` finds everything at once). Every
problem is (key path, message); `core.config` adds file and line. Pure: nothing here looks at the host
(interfaces, notify commands on disk: `havs.configfile.host_problems`).
"""

from __future__ import annotations

import ipaddress
import posixpath
from collections.abc import Iterator, Sequence

from havs.core.model import IPAddress, Node, Notify, Settings, SyncGroup, VirtualService, Vrrp

Path = tuple[str | int, ...]
Found = tuple[Path, str]
UNIX_PATH_MAX = 107  # sun_path is 108 bytes with the terminating NUL


def semantic_problems(
    settings: Settings | None,
    nodes: dict[str, Node],
    vrrp: Sequence[tuple[int, Vrrp]],
    services: Sequence[tuple[int, VirtualService]],
    groups: Sequence[tuple[int, SyncGroup]] = (),
) -> list[Found]:
    """`vrrp`, `groups`: (index in the file, item) for each instance or sync group that validated on its own."""
    found: list[Found] = []
    if settings is not None:
        found += _settings(settings)
    found += _nodes(nodes)
    for i, v in vrrp:
        found += _vrrp(i, v)
    for i, g in groups:
        found += _notify(("vrrp_sync_groups", i, "notify"), g.notify)
    families = {v.family for _, v in vrrp}
    if len(families) == 1:  # unicast_src is one address: it can only serve instances of its family
        family = families.pop()
        found += [(("nodes", name, "unicast_src"), f"{n.unicast_src} is IPv{n.unicast_src.version}, the floating "
                   f"addresses IPv{family}: adverts go from an address of their family")
                  for name, n in nodes.items() if n.unicast_src is not None and n.unicast_src.version != family]
    found += _services(services, vrrp)
    return found


def host_address(ip: IPAddress, *, remote: bool = False) -> str | None:
    """Why `ip` cannot be one host's address (a VIP, a real server, a peer), or None. remote: it must be
    reachable from another host (a floating address, a VRRP peer); a real server may be loopback (LVS's
    local node: the director serves the service itself)."""
    if ip.is_unspecified:
        return f"{ip} is the unspecified address, not a host"
    if ip.is_multicast:
        return f"{ip} is a multicast address, not a host"
    if remote and ip.is_loopback:
        return f"{ip} is a loopback address, not reachable from another host"
    if ip == ipaddress.IPv4Address("255.255.255.255"):
        return f"{ip} is the broadcast address, not a host"
    return None


def _settings(s: Settings) -> Iterator[Found]:
    if not s.state_dir:
        yield ("settings", "state_dir"), "must not be empty (drained servers are kept there across restarts)"
    elif not s.state_dir.startswith("/"):
        yield ("settings", "state_dir"), f"must be an absolute path, got {s.state_dir!r}"
    sock = s.control_socket
    where = ("settings", "control_socket")
    if not sock:
        yield where, "must not be empty"
        return
    if not sock.startswith("/"):
        yield where, f"must be an absolute path, got {sock!r} (relative to what the daemon's directory is)"
        return
    if sock.endswith("/"):
        yield where, f"is a directory, not a socket path, got {sock!r}"
        return
    if len(sock.encode("utf-8", "surrogateescape")) > UNIX_PATH_MAX:
        yield where, f"is longer than a Unix socket path may be ({UNIX_PATH_MAX} bytes)"
    if s.state_dir.startswith("/") and posixpath.normpath(sock) == posixpath.normpath(s.state_dir):
        yield where, "is the state_dir; the socket needs a path of its own"


def socket_collision(socket_path: str, config_path: str) -> str | None:
    """Why the control socket cannot live at `socket_path` given the config's absolute path, or None.
    (Binding the socket replaces whatever file is at its path.)"""
    sock, config = posixpath.normpath(socket_path), posixpath.normpath(config_path)
    if sock == config:
        return "is the config file itself: starting the daemon would replace the file with a socket"
    if sock == posixpath.dirname(config):
        return "is the config's directory, not a socket path"
    return None


def _nodes(nodes: dict[str, Node]) -> Iterator[Found]:
    owner: dict[str, str] = {}
    for name, node in nodes.items():
        names = {name, node.hostname or name}
        where: Path = ("nodes", name, "hostname") if node.hostname else ("nodes", name)
        for host in sorted(names):
            other = owner.get(host)
            if other is not None and other != name:
                yield where, f"{host!r} also names node {other}: each director must be told apart by its hostname"
                break
        for host in names:
            owner.setdefault(host, name)
        if node.unicast_src is not None and (why := host_address(node.unicast_src, remote=True)):
            yield ("nodes", name, "unicast_src"), why
        if not node.interfaces:
            yield ("nodes", name, "interfaces"), "must name at least one interface"


def _vrrp(n: int, v: Vrrp) -> Iterator[Found]:
    for i, fa in enumerate(v.addresses):
        where: Path = ("vrrp", n, "addresses", i, "address")
        net, ip = fa.address.network, fa.address.ip
        if net.prefixlen == 0:
            yield where, f"{fa.address} covers every address; a floating address is one host with its LAN's prefix"
        elif why := host_address(ip, remote=True):
            yield where, why
        elif ip.version == 4 and net.prefixlen < 31 and ip in (net.network_address, net.broadcast_address):
            kind = "network" if ip == net.network_address else "broadcast"
            yield where, f"{ip} is the {kind} address of {net}, not a host"
    family = v.addresses[0].address.version  # one family per instance (RFC 9568); the model checks the rest
    if family == 6 and v.version == 2:
        yield ("vrrp", n, "version"), "VRRPv2 is IPv4 only: IPv6 floating addresses need version 3"
    for i, peer in enumerate(v.unicast_peers):
        if why := host_address(peer, remote=True):
            yield ("vrrp", n, "unicast_peers", i), why
        elif peer.version != family:
            yield ("vrrp", n, "unicast_peers", i), (f"{peer} is IPv{peer.version}, the floating addresses IPv{family}: "
                                                 "adverts go over the family of the addresses they carry")
    yield from _notify(("vrrp", n, "notify"), v.notify)


def _notify(base: Path, notify: Notify) -> Iterator[Found]:
    """An instance's or a sync group's hooks: each an absolute program (`havs check`'s host checks then
    look for it on disk, and skip what is already an error here)."""
    for hook in ("master", "backup", "fault", "stop"):
        argv = getattr(notify, hook)
        if argv is None:
            continue
        where = (*base, hook)
        if not argv:
            yield where, "is an empty command; leave the key out to run nothing"
        elif not argv[0].startswith("/"):
            yield (*where, 0), (f"{argv[0]!r} must be an absolute path: hooks run without a shell, and the unit's "
                                "PATH is not the operator's")


def _services(services: Sequence[tuple[int, VirtualService]], vrrp: Sequence[tuple[int, Vrrp]]) -> Iterator[Found]:
    floating = {fa.address.ip: f"vrrp[{n}].addresses[{i}]" if len(vrrp) > 1 or n else f"vrrp.addresses[{i}]"
                for n, v in vrrp for i, fa in enumerate(v.addresses)}
    for i, vs in services:
        base: Path = ("virtual_services", i)
        if vs.address is not None and (why := host_address(vs.address)):
            yield (*base, "address"), why
        for j, rs in enumerate(vs.real_servers):
            where: Path = (*base, "real_servers", j, "address")
            if why := host_address(rs.address):
                yield where, why
            elif rs.address in floating:
                k = floating[rs.address]
                yield where, (f"{rs.address} is a floating address ({k}): the VIP or the gateway "
                              "cannot also be a real server")
            elif rs.address == vs.address:
                yield where, f"{rs.address} is the service's own address"
            for key in ("connect_address", "source_address"):
                ip = getattr(rs.check, key) if rs.check else None  # the service's own is reported once, below
                if ip is not None and ip != getattr(vs.check, key) and (ip.is_unspecified or ip.is_multicast):
                    yield (*base, "real_servers", j, "check", key), f"{ip} is not a host address"
        if vs.quorum is not None and vs.quorum.sorry_server is not None:
            ip = vs.quorum.sorry_server.address
            where = (*base, "quorum", "sorry_server", "address")
            if why := host_address(ip):
                yield where, why
            elif ip in floating:
                yield where, f"{ip} is a floating address ({floating[ip]}), not a sorry server"
        for key in ("connect_address", "source_address"):
            ip = getattr(vs.check, key)
            if ip is not None and (ip.is_unspecified or ip.is_multicast):
                yield (*base, "check", key), f"{ip} is not a host address"
