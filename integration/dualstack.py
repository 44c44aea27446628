"""Lab configs with several VRRP instances (dual-stack, active/active) and the havs pair that runs them.

`write_configs` writes one havs config per director from `Instance`s (a list under ``vrrp:``, with per-node
priorities when given), sync groups and virtual services (`service`: the seed's rr NAT service with its HTTP
check, for any VIP and real servers, IPv4 or IPv6). `Pair` starts havs on both directors and reads each
instance's state from their logs. Used by test_dualstack_uml.py, test_active_active_uml.py and
bench_failover6.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from integration.client import ClientLoop, LoopStats
from integration.logs import log_events
from integration.seed import GATEWAY, GATEWAY6, REAL_SERVERS, REAL_SERVERS6, VIP, VIP6
from integration.topology import SeedLab, wait_until

DIRECTORS = ("lvs1", "lvs2")
ROLES = {"client": "eth0", "server": "eth1"}  # interface roles → the lab's interfaces (both directors)


@dataclass(frozen=True)
class Instance:
    """One VRRP instance of a lab config: its floating addresses as (CIDR, interface role)."""

    name: str
    router_id: int
    addresses: Sequence[tuple[str, str]]
    priority: dict[str, int] | None = None  # per node; None: the nodes' own (lvs1 150, lvs2 100)

    def yaml(self, interval: float) -> str:
        addrs = "".join(f"\n      - {{address: {a}, interface: {role}}}" for a, role in self.addresses)
        prio = "" if self.priority is None else "\n    priority: {" + ", ".join(
            f"{n}: {p}" for n, p in self.priority.items()) + "}"
        return f"""  - name: {self.name}
    router_id: {self.router_id}
    advert_interval: {interval:g}
    interface: server{prio}
    addresses:{addrs}
    track_interfaces: [client, server]
"""


FAMILY4 = Instance("VI_4", 51, [(f"{VIP}/24", "client"), (f"{GATEWAY}/24", "server")])
FAMILY6 = Instance("VI_6", 51, [(f"{VIP6}/64", "client"), (f"{GATEWAY6}/64", "server")])


def service(vip: str, reals: Sequence[str]) -> str:
    """An rr NAT service on port 80 with the seed's HTTP check (1 s, rise 2, fall 1)."""
    servers = "".join(f'\n      - {{address: "{r}", port: 80}}' for r in reals)
    return f"""  - address: "{vip}"
    port: 80
    protocol: tcp
    scheduler: rr
    forwarding: nat
    check: {{type: http, path: /, interval: 1.0, timeout: 0.5, rise: 2, fall: 1}}
    real_servers:{servers}
"""


SERVICE4 = service(VIP, list(REAL_SERVERS.values()))
SERVICE6 = service(VIP6, list(REAL_SERVERS6.values()))


def write_configs(tmp: Path, instances: Sequence[Instance], services: Sequence[str],
                  groups: dict[str, Sequence[str]] | None = None, interval: float = 0.1) -> dict[str, Path]:
    """One config per director in ``tmp`` (its own control socket and state dir: both directors share one
    filesystem in the lab), VRRPv3 at ``interval`` (the seed's 0.1 s)."""
    (tmp / "run").mkdir(exist_ok=True)
    sync = "" if not groups else "vrrp_sync_groups:\n" + "".join(
        f"  - {{name: {name}, instances: [{', '.join(members)}]}}\n" for name, members in groups.items())
    out = {}
    for node in DIRECTORS:
        path = tmp / f"havs-{node}.yaml"
        path.write_text(f"""settings:
  reconcile_interval: 1
  control_socket: {tmp / 'run' / f'control-{node}.sock'}
  state_dir: {tmp / f'state-{node}'}
nodes:
  lvs1: {{priority: 150, interfaces: {{client: eth0, server: eth1}}}}
  lvs2: {{priority: 100, interfaces: {{client: eth0, server: eth1}}}}
vrrp:
{''.join(i.yaml(interval) for i in instances)}{sync}virtual_services:
{''.join(services)}""")
        out[node] = path
    return out


class Pair:
    """havs on lvs1 and lvs2 with the configs of write_configs."""

    def __init__(self, lab: SeedLab, configs: dict[str, Path]) -> None:
        self.lab = lab
        self.configs = configs
        # In the lab's workdir: the lab fixture prints those logs under a failed test.
        self.logs = {n: lab.workdir / f"{p.parent.name}-havs-{n}.log" for n, p in configs.items()}

    def start(self, *nodes: str) -> None:
        for node in nodes or DIRECTORS:
            self.lab.start_havs(node, self.configs[node], log_path=self.logs[node])

    def events(self, node: str, name: str) -> list[dict[str, object]]:
        return log_events(self.logs[node], name)

    def state(self, node: str, instance: str) -> str | None:
        """The latest VRRP state ``node`` logged for ``instance``."""
        found = [e["to"] for e in self.events(node, "vrrp.state") if e.get("instance", instance) == instance]
        return str(found[-1]) if found else None

    def _have(self, node: str) -> set[tuple[str, str]]:
        """(interface, CIDR) of every address on ``node``, both families: one `ip` process (slow in UML)."""
        return {(str(i["ifname"]), f"{a['local']}/{a['prefixlen']}")
                for i in self.lab.ip_json(node, "addr", "show") for a in i.get("addr_info", [])}

    def holds(self, node: str, inst: Instance) -> bool:
        """``node`` has every floating address of ``inst``."""
        return bool(self.holding(node, [inst]))

    def holding(self, node: str, instances: Sequence[Instance]) -> list[str]:
        """The names of those ``instances`` whose every floating address is on ``node`` (one look)."""
        have = self._have(node)
        return [i.name for i in instances if all((ROLES[role], cidr) in have for cidr, role in i.addresses)]

    def holds_none(self, node: str, inst: Instance) -> bool:
        have = {cidr for _, cidr in self._have(node)}
        return not any(cidr in have for cidr, _ in inst.addresses)

    def ipvs(self, node: str) -> str:
        return self.lab.exec(node, ["ipvsadm", "-Ln"]).stdout

    def settle(self, masters: dict[str, str], instances: Sequence[Instance], reals: Sequence[str]) -> None:
        """Wait until each instance's master holds its addresses, the other director holds none of them and
        logged BACKUP last (started a moment apart, the later one may win first and be preempted), and both
        directors' IPVS tables list every real server in ``reals``."""
        for inst in instances:
            master = masters[inst.name]
            other = next(n for n in DIRECTORS if n != master)
            wait_until(f"{master} holds {inst.name}", lambda i=inst, m=master: self.holds(m, i), 60)
            wait_until(f"{other} is BACKUP for {inst.name} and holds none of it",
                       lambda i=inst, o=other: self.state(o, i.name) == "BACKUP" and self.holds_none(o, i), 30)
        for node in DIRECTORS:
            wait_until(f"IPVS on {node}", lambda n=node: all(r in self.ipvs(n) for r in reals), 60)


def first_success_per_backend(loop: ClientLoop, n: int) -> None:
    loop.wait_for(lambda s: len(s.per_backend) == 2 and min(s.per_backend.values()) >= n, 30)


def outage_line(name: str, st: LoopStats) -> str:
    return f"{name}: outage {st.longest_outage:.2f}s, {st.failures} failed of {st.requests}"
