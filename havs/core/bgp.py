"""BGP announcement of `announce: bgp` VIPs through BIRD 2: the decisions, no I/O.

- `render_bird`: the BIRD configuration havs writes for this director (one disabled `protocol static` per
  VIP, so BIRD starts announcing nothing; havs enables a VIP's protocol while this director can serve it).
- `servable`: which VIPs this director may announce now: the IPVS service is in the kernel, its quorum
  is met and it has healthy weight. havs being alive is the shell's part: BIRD dies with havs.
- `Framer` / `Reply`: BIRD's control-socket line protocol ("Remote control" in BIRD's documentation):
  every line starts with a 4-digit code and '-' (more follows) or ' ' (last line); a line starting with a
  space continues the previous code. Codes 8xxx and 9xxx are errors.
- `parse_protocols` / `exported_routes`: what `show protocols [all]` says, for convergence checks.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from havs.core.desired import Desired, service_key
from havs.core.ipvs_table import IpvsTable
from havs.core.model import Bgp, Config, NodeView, VirtualService

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
BFD_PROTOCOL = "havs_bfd"


def vip_protocol(vip: IPAddress) -> str:
    """The BIRD protocol that announces one VIP, named after it so a reload keeps the name."""
    return "havs_vip_" + re.sub(r"[.:]", "_", vip.exploded if vip.version == 6 else str(vip))


def neighbor_protocol(index: int) -> str:
    return f"havs_peer{index}"


def bgp_services(config: Config) -> list[VirtualService]:
    return [vs for vs in config.virtual_services if vs.announce == "bgp"]


def announced_vips(config: Config) -> list[IPAddress]:
    """Every VIP this config announces over BGP, in config order, once each."""
    out: list[IPAddress] = []
    for vs in bgp_services(config):
        if vs.address is not None and vs.address not in out:
            out.append(vs.address)
    return out


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))} ms"


def render_bird(view: NodeView, log_file: str) -> str:
    """BIRD 2's configuration for this director. Requires `config.bgp` and the node's router_id."""
    bgp = view.config.bgp
    assert bgp is not None and view.node.router_id is not None, "validated by the model"
    vips = announced_vips(view.config)
    lines = [
        f"# Written by havs for node {view.name}; every start and reload rewrites it (do not edit).",
        f"log {_quote(log_file)} all;",
        f"router id {view.node.router_id};",
        "protocol device { scan time 10; }",
    ]
    if bgp.bfd.enabled:
        iv = _ms(bgp.bfd.interval)
        lines.append(f'protocol bfd {BFD_PROTOCOL} {{ interface "*" {{ min rx interval {iv}; '
                     f"min tx interval {iv}; multiplier {bgp.bfd.multiplier}; }}; }}")
    for vip in vips:
        family, length = ("ipv4", 32) if vip.version == 4 else ("ipv6", 128)
        # disabled: nothing is announced before havs has seen the IPVS service and its health
        lines.append(f"protocol static {vip_protocol(vip)} {{ disabled; {family}; route {vip}/{length} blackhole; }}")
    lines.append(f"filter havs_export {{ if source != RTS_STATIC then reject; {_attributes(bgp)}accept; }}")
    for i, n in enumerate(bgp.neighbors):
        body = [f"local as {bgp.asn};", f"neighbor {n.address} as {n.asn};",
                f"hold time {bgp.hold_time};", f"keepalive time {bgp.keepalive_time};",
                "connect retry time 1;", "error wait time 1, 10;"]
        if n.multihop:
            body.append("multihop;")
        if n.password is not None:
            body.append(f"password {_quote(n.password)};")
        if bgp.bfd.enabled:
            body.append("bfd on;")
        channels = [f"{fam} {{ import none; export filter havs_export; }};"
                    for fam, ver in (("ipv4", 4), ("ipv6", 6)) if any(v.version == ver for v in vips)]
        body += channels or ["ipv4 { import none; export none; };"]
        lines.append(f"protocol bgp {neighbor_protocol(i)} {{ " + " ".join(body) + " }")
    return "\n".join(lines) + "\n"


def _attributes(bgp: Bgp) -> str:
    out = "".join(f"bgp_community.add(({c.replace(':', ',')})); " for c in bgp.communities)
    if bgp.med is not None:
        out += f"bgp_med = {bgp.med}; "
    return out


# ------------------------------------------------------------------------------------ the decision


@dataclass(frozen=True)
class Verdict:
    vip: IPAddress
    announce: bool
    reason: str  # why not (empty when announced)


def servable(config: Config, desired: Desired | None, actual: IpvsTable | None) -> list[Verdict]:
    """Whether each BGP VIP may be announced by this director. A VIP is announced only if *every* BGP
    service on it can be served here: a director that announces a VIP draws all of its ports' flows."""
    verdicts = []
    for vip in announced_vips(config):
        reason = ""
        for vs in bgp_services(config):
            if vs.address != vip:
                continue
            reason = _why_not(vs, desired, actual)
            if reason:
                break
        verdicts.append(Verdict(vip, not reason, reason))
    return verdicts


def _why_not(vs: VirtualService, desired: Desired | None, actual: IpvsTable | None) -> str:
    key = service_key(vs)
    if desired is None:
        return "no reconcile pass yet"
    if actual is None or key not in actual:
        return f"{vs.name} is not in the kernel's IPVS table"
    if vs.name in desired.quorum_lost:
        return f"{vs.name} is below its quorum"
    if key not in desired.table or not any(d.weight > 0 for d in desired.table.destinations(key)):
        return f"{vs.name} has no healthy real server"
    return ""


# ------------------------------------------------------------------------------ the control socket


class BirdError(Exception):
    """BIRD answered a command with an error code (8xxx runtime, 9xxx syntax)."""


@dataclass(frozen=True)
class Reply:
    code: int  # the last line's code: 0 = OK
    lines: tuple[tuple[int, str], ...]  # (code, text) per line; continuation lines carry their code

    @property
    def ok(self) -> bool:
        return self.code < 8000

    @property
    def text(self) -> str:
        return "\n".join(text for _, text in self.lines)


class Framer:
    """Bytes from the control socket → complete replies (a reply ends at a line 'NNNN ' with a space)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._lines: list[tuple[int, str]] = []
        self._code = 0

    def feed(self, data: bytes) -> list[Reply]:
        self._buffer += data
        out: list[Reply] = []
        while b"\n" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\n", 1)
            line = raw.decode("utf-8", "replace")
            if len(line) >= 5 and line[:4].isdigit() and line[4] in "- ":
                self._code = int(line[:4])
                self._lines.append((self._code, line[5:]))
                if line[4] == " ":
                    out.append(Reply(self._code, tuple(self._lines)))
                    self._lines = []
            else:  # " text": continues the previous code
                self._lines.append((self._code, line[1:] if line.startswith(" ") else line))
        return out


@dataclass(frozen=True)
class ProtocolState:
    name: str
    proto: str  # BGP, Static, BFD, Device
    state: str  # up, down, start, ...
    info: str  # for BGP: Established, Idle, Active, Connect, ...

    @property
    def established(self) -> bool:
        return self.proto == "BGP" and self.info.startswith("Established")


def parse_protocols(reply: Reply) -> dict[str, ProtocolState]:
    """`show protocols` → name → state. Lines: name proto table state since [info]."""
    out: dict[str, ProtocolState] = {}
    for code, text in reply.lines:
        if code != 1002:
            continue
        parts = text.split(None, 5)
        if len(parts) >= 5:
            info = parts[5].strip() if len(parts) > 5 else ""
            out[parts[0]] = ProtocolState(parts[0], parts[1], parts[3], info)
    return out


_ROUTES = re.compile(r"Routes:\s+(\d+) imported, (?:\d+ filtered, )?(\d+) exported")


def exported_routes(reply: Reply) -> dict[str, int]:
    """`show protocols all` → BGP protocol name → routes it currently exports (sums its channels)."""
    out: dict[str, int] = {}
    current: str | None = None
    for code, text in reply.lines:
        if (m := _ROUTES.search(text)) is not None:  # a detail line, whatever code it continues
            if current is not None:
                out[current] += int(m.group(2))
        elif code == 1002:
            parts = text.split()
            current = parts[0] if len(parts) > 1 and parts[1] == "BGP" else None
            if current is not None:
                out.setdefault(current, 0)
    return out


def converged(protocols: Mapping[str, ProtocolState], exported: Mapping[str, int], peers: Iterable[str]) -> bool:
    """After a withdrawal: no established session to a router still exports one of our routes."""
    return all(not protocols[p].established or exported.get(p, 0) == 0 for p in peers if p in protocols)


def describe(view: NodeView) -> list[str]:
    """What `havs check` says this node announces over BGP."""
    bgp = view.config.bgp
    vips = announced_vips(view.config)
    if bgp is None:
        return []
    bfd = f"BFD {bgp.bfd.interval * 1000:g} ms x {bgp.bfd.multiplier}" if bgp.bfd.enabled else "no BFD"
    peers = ", ".join(f"{n.address} AS {n.asn}" for n in bgp.neighbors)
    return [f"bgp: AS {bgp.asn}, router id {view.node.router_id}, {bfd}, hold {bgp.hold_time} s; neighbors {peers}",
            "bgp: announces " + (", ".join(f"{v}/{32 if v.version == 4 else 128}" for v in vips) or "nothing")
            + " while each service on it is in IPVS with quorum and healthy weight"]
