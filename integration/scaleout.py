"""The scale-out lab: an upstream router running BIRD with ECMP, directors announcing the VIP over BGP+BFD,
real servers in DR mode, clients behind the router. Network namespaces; every address inside the lab::

    client 10.10.0.100 ── lan "c" ── router r (10.10.0.1 / 10.20.0.1 / 10.30.0.1, BIRD AS 65000, ECMP)
    router 10.20.0.1 ── lan "u" ── d1 10.20.0.11, d2 .12, d3 .13, d4 .14 (BIRD AS 65001 started by havs)
    directors 10.30.0.1x ── lan "s" ── rs1 10.30.0.21, rs2 .22, rs3 .23 (VIP on lo, default via 10.30.0.1)

VIP 10.99.0.1:80, scheduler mh, forwarding dr. Works on the host kernel (BGP/BFD only: no IPVS) and in the
UML lab (real IPVS). `integration/scaleout_agent.py` stands in for havs where there is no IPVS.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from integration.lab import in_uml
from integration.namespaces import claim_prefix, delete_netns, delete_stale, kill_process, list_netns, release_prefix
from integration.waits import poll

REPO = Path(__file__).resolve().parent.parent
VIP = "10.99.0.1"
VIP_TUN = "10.99.0.2"  # the same real servers through IP-in-IP (forwarding: tun)
ROUTER = "r"
CLIENT = "cl"
SWITCH = "sws"
DIRECTORS = {"d1": 11, "d2": 12, "d3": 13, "d4": 14}
REAL_SERVERS = {"rs1": "10.30.0.21", "rs2": "10.30.0.22", "rs3": "10.30.0.23"}
CLIENT_ADDRESSES = [f"10.10.0.{100 + i}" for i in range(8)]
NODES = (ROUTER, CLIENT, *DIRECTORS, *REAL_SERVERS)
# (node, ifname, lan, address)
LINKS = (
    [(CLIENT, "eth0", "c", f"{CLIENT_ADDRESSES[0]}/24"), (ROUTER, "eth0", "c", "10.10.0.1/24"),
     (ROUTER, "eth1", "u", "10.20.0.1/24"), (ROUTER, "eth2", "s", "10.30.0.1/24")]
    + [(d, "eth0", "u", f"10.20.0.{n}/24") for d, n in DIRECTORS.items()]
    + [(d, "eth1", "s", f"10.30.0.{n}/24") for d, n in DIRECTORS.items()]
    + [(rs, "eth0", "s", f"{ip}/24") for rs, ip in REAL_SERVERS.items()]
)
_PREFIX_RE = re.compile(r"^hso(\d+)-(?:" + "|".join((*NODES, SWITCH)) + ")$")


class LabError(RuntimeError):
    pass


def run(argv: Sequence[str], *, input: str | None = None, timeout: float = 60) -> str:
    p = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed (rc={p.returncode}): {(p.stderr or p.stdout).strip()}")
    return p.stdout


def router_bird_config(directors: Sequence[str], bfd: bool = True, log: str | None = None) -> str:
    """The upstream router: every director a BGP neighbour, their VIP routes merged into one ECMP route."""
    bfd_proto = ('protocol bfd { interface "*" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }; }\n'
                 if bfd else "")
    peers = "".join(f"protocol bgp {d} from directors {{ neighbor 10.20.0.{DIRECTORS[d]} as 65001; }}\n"
                    for d in directors)
    return ((f'log "{log}" all;\n' if log else "") + "router id 10.20.0.1;\nprotocol device { scan time 10; }\n"
            "protocol kernel { merge paths on; ipv4 { import none; export all; }; }\n" + bfd_proto +
            "template bgp directors { local as 65000; hold time 9; keepalive time 3; connect retry time 1;\n"
            f"  error wait time 1, 5; {'bfd on; ' if bfd else ''}ipv4 {{ import all; export none; }}; }}\n" + peers)


def director_config(directors: Sequence[str], *, bfd: bool = True, forwarding: str = "dr",
                    run_dir: str = "/run/havs/bird") -> str:
    """The havs config every director shares (each picks its node with --node)."""
    nodes = "".join(f"  {d}:\n    interfaces: {{up: eth0, server: eth1}}\n    router_id: 10.20.0.{DIRECTORS[d]}\n"
                    for d in directors)
    servers = "".join(f"      - address: {ip}\n" for ip in REAL_SERVERS.values())
    return (f"settings:\n  reconcile_interval: 1\n  control_socket: {run_dir}/../control.sock\n"
            f"  state_dir: {run_dir}/../state\nnodes:\n{nodes}"
            f"bgp:\n  asn: 65001\n  run_dir: {run_dir}\n  neighbors:\n    - {{address: 10.20.0.1, asn: 65000}}\n"
            f"  bfd: {{enabled: {'true' if bfd else 'false'}}}\n"
            f"virtual_services:\n  - address: {VIP}\n    port: 80\n    scheduler: mh\n"
            f"    scheduler_flags: [mh-fallback, mh-port]\n    forwarding: {forwarding}\n    on_down: inhibit\n"
            f"    announce: bgp\n    check: {{type: tcp, interval: 1, timeout: 1, rise: 1, fall: 3}}\n"
            f"    real_servers:\n{servers}"
            f"  - address: {VIP_TUN}\n    port: 80\n    scheduler: mh\n    scheduler_flags: [mh-port]\n"
            f"    forwarding: tun\n    on_down: inhibit\n    announce: bgp\n"
            f"    check: {{type: tcp, interval: 1, timeout: 1, rise: 1, fall: 3}}\n"
            f"    real_servers:\n{servers}")


class ScaleoutLab:
    def __init__(self, prefix: str | None = None) -> None:
        self._claimed = prefix is None
        self.prefix = claim_prefix("" if in_uml() else f"hso{os.getpid()}-") if prefix is None else prefix
        self.workdir = Path(tempfile.mkdtemp(prefix="havs-scaleout-", dir=_workdir_root()))
        self._created: list[str] = []
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.tun = False  # whether the real servers take IP-in-IP (the ipip module could be loaded)

    def ns(self, node: str) -> str:
        return f"{self.prefix}{node}"

    def __enter__(self) -> ScaleoutLab:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> ScaleoutLab:
        if not in_uml():
            delete_stale(_PREFIX_RE)
        atexit.register(self.down)
        try:
            names = [self.ns(n) for n in (*NODES, SWITCH)]
            clash = sorted(set(names) & set(list_netns()))
            if clash:
                raise LabError(f"namespaces already exist: {clash}")
            run(["ip", "-batch", "-"], input="".join(f"netns add {n}\n" for n in names))
            self._created = names
            sw = []
            for lan in ("c", "u", "s"):
                sw += [f"link add {lan} type bridge stp_state 0 forward_delay 0 mcast_snooping 0", f"link set {lan} up"]
            for i, (node, ifname, lan, _) in enumerate(LINKS):
                sw += [f"link add p{i} type veth peer name {ifname} netns {self.ns(node)}",
                       f"link set p{i} master {lan}", f"link set p{i} up"]
            self.batch(SWITCH, sw)
            for node in NODES:
                cmds = ["link set lo up"]
                for n, ifname, _, addr in LINKS:
                    if n == node:
                        cmds += [f"addr add {addr} dev {ifname}", f"link set {ifname} up"]
                self.batch(node, cmds)
            self.batch(CLIENT, [f"addr add {a}/24 dev eth0" for a in CLIENT_ADDRESSES[1:]]
                       + ["route add default via 10.10.0.1"])
            self.sysctl(ROUTER, "net.ipv4.ip_forward", "1")
            for ifname in ("all", "eth0", "eth1", "eth2"):
                # DR replies come from the servers' LAN with the VIP as source, which the router routes
                # towards the directors: a strict reverse-path filter would drop every one of them
                self.sysctl(ROUTER, f"net.ipv4.conf.{ifname}.rp_filter", "0")
            self.sysctl(ROUTER, "net.ipv4.fib_multipath_hash_policy", "1")  # L4: ports spread flows
            for rs in REAL_SERVERS:
                # DR: the VIP is local to the real server but it must never answer ARP for it
                self.batch(rs, [f"addr add {VIP}/32 dev lo", "route add default via 10.30.0.1"])
                for key, value in (("arp_ignore", "1"), ("arp_announce", "2")):
                    self.sysctl(rs, f"net.ipv4.conf.all.{key}", value)
                    self.sysctl(rs, f"net.ipv4.conf.eth0.{key}", value)
            self.tun = in_uml() and _load_ipip()  # never a module load on the host kernel
            for rs in REAL_SERVERS if self.tun else ():
                # TUN: decapsulated on tunl0, whose inner source (the client) is not routed via tunl0
                self.batch(rs, ["link set tunl0 up", f"addr add {VIP_TUN}/32 dev tunl0"])
                for key, value in (("rp_filter", "0"), ("arp_ignore", "1")):
                    self.sysctl(rs, f"net.ipv4.conf.tunl0.{key}", value)
                self.sysctl(rs, "net.ipv4.conf.all.rp_filter", "0")
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        for proc in self.procs.values():
            kill_process(proc)
        self.procs.clear()
        delete_netns(self._created)
        self._created = []
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self._claimed:
            release_prefix(self.prefix)
            self._claimed = False
        atexit.unregister(self.down)

    # ------------------------------------------------------------------ primitives
    def batch(self, node: str, cmds: Sequence[str]) -> None:
        run(["ip", "-4", "-n", self.ns(node), "-batch", "-"], input="".join(c + "\n" for c in cmds))

    def sysctl(self, node: str, key: str, value: str) -> None:
        run(["ip", "netns", "exec", self.ns(node), "sysctl", "-qw", f"{key}={value}"])

    def exec(self, node: str, argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.ns(node), *argv], capture_output=True, text=True,
                              check=check, timeout=60)

    def start(self, name: str, node: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        """A process in `node`, its output in workdir/<name>.log, killed by down()."""
        with open(self.workdir / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", self.ns(node), *argv], stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log(name).splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    # ------------------------------------------------------------------ the router
    def start_router(self, directors: Sequence[str] = ("d1", "d2", "d3"), bfd: bool = True) -> None:
        d = self.workdir / "router"
        d.mkdir(exist_ok=True)
        (d / "bird.conf").write_text(router_bird_config(directors, bfd, str(d / "bird.log")))
        self.start("router-bird", ROUTER, ["nice", "-n", "-10", "bird", "-f", "-c", str(d / "bird.conf"),
                                           "-s", str(d / "bird.ctl"), "-P", str(d / "bird.pid")])
        if poll(lambda: (d / "bird.ctl").exists(), 10, 0.02) is None:
            raise LabError(f"router BIRD did not start: {self.log('router-bird')}")

    def router_cli(self, command: str) -> str:
        return run(["birdc", "-s", str(self.workdir / "router" / "bird.ctl"), command])

    def nexthops(self) -> list[str]:
        """The router's kernel next hops for the VIP: the directors it sends flows to now."""
        routes = json.loads(run(["ip", "-j", "-n", self.ns(ROUTER), "route", "show", f"{VIP}/32"]) or "[]")
        out: list[str] = []
        for r in routes:
            if "gateway" in r:
                out.append(r["gateway"])
            out += [h["gateway"] for h in r.get("nexthops", []) if "gateway" in h]
        return sorted(out)

    def director_of(self, address: str) -> str:
        return next(d for d, n in DIRECTORS.items() if address == f"10.20.0.{n}")

    def wait_nexthops(self, want: Sequence[str], timeout: float = 30, step: float = 0.005) -> float | None:
        """Seconds until the router's next hops are exactly the given directors (None: not within timeout)."""
        target = sorted(f"10.20.0.{DIRECTORS[d]}" for d in want)
        return poll(lambda: self.nexthops() == target, timeout, step)

    # ------------------------------------------------------------------ directors
    def write_config(self, directors: Sequence[str], **kw: Any) -> dict[str, Path]:
        """One havs config per director (each with its own run directory under workdir)."""
        out = {}
        for d in directors:
            run_dir = self.workdir / d / "run" / "bird"
            run_dir.mkdir(parents=True, exist_ok=True)
            (self.workdir / d / "etc").mkdir(exist_ok=True)
            path = self.workdir / d / "etc" / "havs.yaml"
            path.write_text(director_config(list(DIRECTORS), run_dir=str(run_dir), **kw))
            out[d] = path
        return out

    def start_agent(self, director: str, config: Path) -> subprocess.Popen[bytes]:
        """The BGP shell of havs alone (no IPVS on the host kernel): integration/scaleout_agent.py."""
        return self.start(director, director, [sys.executable, "-m", "integration.scaleout_agent", str(config),
                                               director])

    def start_havs(self, director: str, config: Path) -> subprocess.Popen[bytes]:
        return self.start(director, director, [sys.executable, "-m", "havs", "run", "-c", str(config), "--node",
                                               director, "--log-format", "json"])

    def crash(self, director: str) -> None:
        """The director dies whole: havs and BIRD frozen (no FIN, no BGP notification), links down."""
        for pid in (self.procs[director].pid, self.bird_pid(director)):
            if pid is not None:
                os.kill(pid, signal.SIGSTOP)
        self.batch(director, ["link set eth0 down", "link set eth1 down"])

    def carrier(self, sports: Sequence[int], src: str = CLIENT_ADDRESSES[0]) -> dict[int, str]:
        """Which director the router sends each client flow (by source port) to now: its ECMP hash."""
        cmds = "".join(f"route get {VIP} from {src} iif eth0 ipproto tcp sport {p} dport 80\n" for p in sports)
        out = run(["ip", "-n", self.ns(ROUTER), "-batch", "-"], input=cmds)
        hops = re.findall(r" via (\S+) ", out)
        return {p: self.director_of(h) for p, h in zip(sports, hops, strict=True)}

    def connections(self, director: str) -> set[int]:
        """Client source ports of the connections this director's IPVS holds."""
        out = self.exec(director, ["ipvsadm", "-Lnc"], check=False).stdout
        return {int(parts[3].rsplit(":", 1)[1]) for parts in (line.split() for line in out.splitlines())
                if len(parts) >= 6 and parts[0] == "TCP" and parts[4].startswith(VIP + ":")}

    def start_web(self) -> None:
        """Every real server answers on 0.0.0.0:80 (DR: packets arrive for the VIP) with its own name."""
        for rs in REAL_SERVERS:
            root = self.workdir / "www" / rs
            root.mkdir(parents=True, exist_ok=True)
            (root / "index.html").write_text(rs + "\n")
            self.start(f"web-{rs}", rs, [sys.executable, "-I", "-S", "-u", str(REPO / "integration" / "webserver.py"),
                                         "0.0.0.0", "80", str(root), "1"])
        for rs in REAL_SERVERS:
            if poll(lambda rs=rs: "listening" in self.log(f"web-{rs}"), 30, 0.02) is None:
                raise LabError(f"web server in {rs} did not start: {self.log(f'web-{rs}')}")

    def bird_pid(self, director: str) -> int | None:
        path = self.workdir / director / "run" / "bird" / "bird.pid"
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            return None


def _load_ipip() -> bool:
    """The ipip module for the real servers' tunl0 (UML: the lab's module tree, via its modprobe wrapper)."""
    for argv in (["/run/havs-modprobe", "ipip"],):
        with contextlib.suppress(OSError):
            if subprocess.run(argv, capture_output=True, timeout=30).returncode == 0:
                return True
    return False


def _workdir_root() -> str | None:
    """Inside UML /tmp is a fresh tmpfs the host cannot see: keep lab files in the repo's out directory."""
    if in_uml():
        out = REPO / "integration" / "out"
        out.mkdir(exist_ok=True)
        return str(out)
    return None
