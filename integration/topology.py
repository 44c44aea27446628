"""The seed's LVS-NAT topology (integration/seed.py), built from network namespaces.

Works on the host kernel (netns tier: everything but IPVS) and inside the UML lab (real IPVS). Both LANs
are bridges inside a namespace of their own (``sw``), so nothing is created in the caller's namespace.
Real servers run the lab's web server (integration/webserver.py); the client side is integration/client.py.
Dual-stack on demand (``SeedLab(ipv6=True)``, ``enable_ipv6()``): the IPv6 addresses of seed.py on top.

CLI: ``python -m integration.topology up|down [--prefix P]``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from havs.edge.netns import enter_netns, run_in_netns
from integration.client import ClientLoop, HttpError, LoopStats, Sample, http_get_here
from integration.lab import in_uml
from integration.logs import log_events
from integration.namespaces import claim_prefix, delete_netns, delete_stale, kill_netns_pids, list_netns, release_prefix
from integration.namespaces import kill_process as _kill
from integration.seed import (
    BODIES,
    CLIENT_IP,
    DIRECTORS,
    GATEWAY,
    GATEWAY6,
    LANS,
    LINKS,
    NODES,
    REAL_SERVERS,
    REAL_SERVERS6,
    SWITCH,
    VIP,
    VIP_URL,
    Link,
)
from integration.waits import poll, wait_until

# Names other modules import from here (kept while drills and benchmarks move to the modules above).
__all__ = ["BODIES", "CLIENT_IP", "DIRECTORS", "GATEWAY", "LANS", "LINKS", "NODES", "REAL_SERVERS", "SWITCH",
           "VIP", "VIP_URL", "ClientLoop", "HttpError", "Link", "LoopStats", "Sample", "SeedLab", "TopologyError",
           "cleanup_stale", "default_prefix", "delete_netns", "http_get_here", "in_uml", "ipvs_available",
           "kill_netns_pids", "list_netns", "log_events", "run_in_netns", "wait_until"]

REPO = Path(__file__).resolve().parent.parent
WEB_SERVER = REPO / "integration" / "webserver.py"
# Host namespaces we make are named havs<pid>-[anything-]<node>: stale once <pid> is gone.
_PREFIX_RE = re.compile(r"^havs(\d+)-(?:.*-)?(?:" + "|".join((*NODES, SWITCH)) + ")$")
_setns = enter_netns  # the old name, for callers that still use it


class TopologyError(RuntimeError):
    pass


def default_prefix() -> str:
    """Claim the first free default prefix: "" inside UML (the kernel is ours alone), ``havs<pid>-`` on the
    host (parallel runs must not collide); then "<that>2-"... for further labs alive in this process."""
    return claim_prefix("" if in_uml() else f"havs{os.getpid()}-")


def ipvs_available() -> bool:
    return Path("/proc/net/ip_vs").exists()


def _run(argv: Sequence[str], *, input: str | None = None, timeout: float = 60) -> str:
    p = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        detail = (p.stderr or p.stdout).strip()
        raise TopologyError(f"{shlex.join(argv)} failed (rc={p.returncode}): {detail}")
    return p.stdout


@dataclass
class _WebServer:
    node: str
    bind: str
    port: int
    docroot: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None


class SeedLab:
    """The seed topology. Use as a context manager, or call up()/down().

    ``prefix`` is prepended to every namespace name (default: none in UML,
    ``havs<pid>-`` on the host; see default_prefix() when several labs coexist).
    ``workdir`` holds docroots and logs (default: a fresh temporary directory,
    removed on down()). ``ipv6``: dual-stack (seed.py's IPv6 addresses too; see enable_ipv6()).
    """

    def __init__(self, prefix: str | None = None, workdir: str | os.PathLike[str] | None = None, *,
                 ipv6: bool = False) -> None:
        self.ipv6 = ipv6
        self._claimed_prefix = prefix is None
        self.prefix = default_prefix() if prefix is None else prefix
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="havs-lab-") if workdir is None else workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._procs: list[subprocess.Popen[bytes]] = []
        self._havs: dict[str, subprocess.Popen[bytes]] = {}
        self._web: dict[str, _WebServer] = {}
        self._created: list[str] = []
        self._lock = threading.Lock()
        self.up_seconds: float | None = None

    # ----------------------------------------------------------------- names
    def ns(self, node: str) -> str:
        """Real namespace name of ``node`` (client, lvs1, lvs2, rs1, rs2, sw)."""
        if node not in NODES and node != SWITCH:
            raise KeyError(f"unknown node {node!r}")
        return f"{self.prefix}{node}"

    def links_of(self, node: str) -> list[Link]:
        return [lk for lk in LINKS if lk.node == node]

    # ------------------------------------------------------------- lifecycle
    def __enter__(self) -> SeedLab:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self, *, web: bool = True) -> SeedLab:
        t0 = time.monotonic()
        if not in_uml():
            cleanup_stale()
        atexit.register(self.down)
        try:
            names = list(_iter_names(self.prefix))
            existing = set(list_netns())
            clash = [n for n in names if n in existing]
            if clash:
                raise TopologyError(f"namespaces already exist: {clash} (python -m integration.topology down)")
            _run(["ip", "-batch", "-"], input="".join(f"netns add {n}\n" for n in names))
            self._created = names
            sw = [f"link add {lan} type bridge stp_state 0 forward_delay 0 mcast_snooping 0" for lan in LANS]
            sw += [f"link set {lan} up" for lan in LANS]
            for lk in LINKS:
                port = f"{lk.node}-{lk.ifname}"
                sw += [
                    f"link add {port} type veth peer name {lk.ifname} netns {self.ns(lk.node)}",
                    f"link set {port} master {lk.lan}",
                    f"link set {port} up",
                ]
            self._batch(SWITCH, sw)
            for node in DIRECTORS:
                # Directors route between the LANs (LVS-NAT needs it).
                self.sysctl(node, "net.ipv4.ip_forward", "1")
            for node in NODES:
                if self.ipv6:
                    self._sysctls6(node)
                self._baseline(node)
            if self.ipv6:
                self._wait_link_local()
            if web:
                for rs in REAL_SERVERS:
                    self.start_web(rs)
        except BaseException:
            self.down()
            raise
        self.up_seconds = time.monotonic() - t0
        return self

    def down(self) -> None:
        """Kill everything we started and delete our namespaces. Idempotent."""
        with self._lock:
            for proc in [*self._havs.values(), *self._procs]:
                _kill(proc)
            self._havs.clear()
            self._procs.clear()
            for w in self._web.values():
                w.proc = None
            names = self._created
            self._created = []
            delete_netns(names)
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
            if self._claimed_prefix:
                release_prefix(self.prefix)
                self._claimed_prefix = False
        atexit.unregister(self.down)

    def reset(self) -> None:
        """Back to the state right after up(): no daemons or extra processes,
        links up, baseline addresses and routes only, empty IPVS tables, web
        servers running, client neighbour cache empty."""
        for node in list(self._havs):
            self.stop_havs(node, timeout=5)
        with self._lock:
            keep = {id(w.proc) for w in self._web.values() if w.proc is not None}
            for proc in self._procs:
                if id(proc) not in keep:
                    _kill(proc)
            self._procs = [p for p in self._procs if id(p) in keep]
        for node in NODES:
            self._baseline(node)
        if ipvs_available():
            for node in DIRECTORS:
                self.exec(node, ["ipvsadm", "-C"])
        for node in list(self._web):
            if node not in REAL_SERVERS:
                self.stop_web(node)
                del self._web[node]
        for rs in REAL_SERVERS:
            self._web[rs].docroot.joinpath("index.html").write_text(BODIES[rs] + "\n")
            if not self.web_running(rs):
                self.start_web(rs)
        self._batch("client", ["neigh flush all"])
        if self.ipv6:
            for node in ("client", *REAL_SERVERS):
                self._batch(node, ["neigh flush all"], family=6)

    # ------------------------------------------------------------- dual stack
    def enable_ipv6(self) -> None:
        """Make the running lab dual-stack: seed.py's IPv6 addresses, the real servers' IPv6 default route via
        the IPv6 gateway, IPv6 forwarding on the directors, web servers on both families. No DAD anywhere
        (a tentative address cannot be used for a second or two; nothing else claims these). reset() and
        recover() keep it; disable_ipv6() takes it away again."""
        self.ipv6 = True
        for node in NODES:
            self._sysctls6(node)
            self._baseline6(node)
        self._wait_link_local()
        for rs in REAL_SERVERS:
            if rs in self._web:
                self.start_web(rs, bind=self._web_bind(rs))

    def disable_ipv6(self) -> None:
        """Back to IPv4 only: global IPv6 addresses and static IPv6 routes gone, web servers on IPv4."""
        self.ipv6 = False
        for node in NODES:
            self._batch(node, ["route flush proto boot",
                               *(f"addr flush dev {lk.ifname} scope global" for lk in self.links_of(node))], family=6)
        for rs in REAL_SERVERS:
            if rs in self._web:
                self.start_web(rs, bind=self._web_bind(rs))

    def _sysctls6(self, node: str) -> None:
        # The kernel takes the larger of "all" and the interface's accept_dad: all three must be 0.
        for key in ("all", "default", *(lk.ifname for lk in self.links_of(node))):
            self.sysctl(node, f"net.ipv6.conf.{key}.accept_dad", "0")
        if node in DIRECTORS:
            self.sysctl(node, "net.ipv6.conf.all.forwarding", "1")

    def _baseline6(self, node: str) -> None:
        # Global addresses only: the link-local ones carry IPv6 VRRP (RFC 9568) and neighbour discovery.
        cmds = ["route flush proto boot"]
        for lk in self.links_of(node):
            cmds += [f"addr flush dev {lk.ifname} scope global", f"addr add {lk.address6} dev {lk.ifname} nodad"]
        if node in REAL_SERVERS:
            cmds.append(f"route replace default via {GATEWAY6} dev eth0")
        self._batch(node, cmds, family=6)

    def _wait_link_local(self) -> None:
        """Link-local addresses made before accept_dad=0 may still be tentative: wait them out."""
        for node in NODES:
            wait_until(f"{node}: IPv6 link-local addresses past DAD",
                       lambda n=node: not self.ip_json(n, "-6", "addr", "show", "tentative"), 10)

    def _web_bind(self, node: str) -> str:
        return REAL_SERVERS[node] + (f",{REAL_SERVERS6[node]}" if self.ipv6 else "")

    def _baseline(self, node: str) -> None:
        cmds = ["link set lo up"]
        for lk in self.links_of(node):
            cmds += [
                f"route flush dev {lk.ifname}",
                f"addr flush dev {lk.ifname}",
                f"addr add {lk.address} dev {lk.ifname}",
                f"link set {lk.ifname} up",
            ]
        if node in REAL_SERVERS:
            cmds.append(f"route replace default via {GATEWAY} dev eth0")
        self._batch(node, cmds)
        if self.ipv6:
            self._baseline6(node)

    def _batch(self, node: str, cmds: Sequence[str], family: int = 4) -> None:
        # One `ip` process per namespace and family: process start-up is the slow part in UML.
        # -4: "addr flush" must not drop IPv6 link-local addresses.
        _run(["ip", f"-{family}", "-n", self.ns(node), "-batch", "-"], input="".join(c + "\n" for c in cmds))

    # ---------------------------------------------------------- primitives
    def exec(self, node: str, argv: Sequence[str], *, check: bool = True, timeout: float = 60,
             **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``node``'s namespace and wait (output captured as text)."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(["ip", "netns", "exec", self.ns(node), *argv], check=check, timeout=timeout, **kw)

    def popen(self, node: str, argv: Sequence[str], log_path: str | os.PathLike[str] | None = None,
              **kw: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` in ``node``'s namespace, output (stdout+stderr) to ``log_path``.

        The process gets its own session and is killed on reset()/down()."""
        if log_path is None:
            log_path = self.workdir / f"{node}-{Path(argv[0]).name}-{time.time_ns()}.log"
        with open(log_path, "ab") as log:
            kw.setdefault("stdout", log)
            kw.setdefault("stderr", subprocess.STDOUT)
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(node), *argv],
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                **kw,
            )
        with self._lock:
            self._procs.append(proc)
        return proc

    def sysctl(self, node: str, key: str, value: str) -> None:
        path = "/proc/sys/" + key.replace(".", "/")
        run_in_netns(self.ns(node), lambda: Path(path).write_text(value))

    def ip_json(self, node: str, *args: str) -> list[dict[str, Any]]:
        out = _run(["ip", "-j", "-n", self.ns(node), *args])
        return json.loads(out) if out.strip() else []

    def mac(self, node: str, ifname: str) -> str:
        return str(self.ip_json(node, "link", "show", "dev", ifname)[0]["address"])

    def addresses(self, node: str, ifname: str, family: int = 4) -> list[str]:
        """Addresses on ``ifname`` as CIDR strings, e.g. ["192.168.0.111/24"]."""
        info = self.ip_json(node, f"-{family}", "addr", "show", "dev", ifname)
        return [f"{a['local']}/{a['prefixlen']}" for i in info for a in i.get("addr_info", [])]

    def add_address(self, node: str, ifname: str, cidr: str) -> None:
        self._batch(node, [f"addr add {cidr} dev {ifname}"])

    def del_address(self, node: str, ifname: str, cidr: str) -> None:
        self._batch(node, [f"addr del {cidr} dev {ifname}"])

    def neigh(self, node: str, ip: str) -> str | None:
        """MAC that ``node``'s neighbour table holds for ``ip`` (None if none/unresolved)."""
        for e in self.ip_json(node, "neigh", "show", "to", ip):
            state = set(e.get("state", []))
            if e.get("lladdr") and not state & {"FAILED", "INCOMPLETE"}:
                return str(e["lladdr"])
        return None

    def socket(
        self, node: str, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM, proto: int = 0
    ) -> socket.socket:
        """A socket that lives in ``node``'s namespace (usable from any thread)."""
        return run_in_netns(self.ns(node), lambda: socket.socket(family, type, proto))

    def http_get(self, node: str, url: str, timeout: float = 5.0) -> str:
        """GET ``url`` from inside ``node``: body of a 200 response, else raises OSError."""
        return run_in_netns(self.ns(node), lambda: http_get_here(url, timeout))

    def links_down(self, node: str) -> None:
        self._batch(node, [f"link set {lk.ifname} down" for lk in self.links_of(node)])

    def links_up(self, node: str) -> None:
        self._batch(node, [f"link set {lk.ifname} up" for lk in self.links_of(node)])

    # ------------------------------------------------------------ web servers
    def docroot(self, node: str) -> Path:
        return self.workdir / "www" / node

    def start_web(
        self, node: str, *, bind: str | None = None, port: int = 80, body: str | None = None, timeout: float = 30,
        keep_alive: bool = True,
    ) -> subprocess.Popen[bytes]:
        """Start (or restart) ``node``'s web server; wait until it listens.

        Defaults for rs1/rs2 are the seed's (their address, both families in a dual-stack lab, "lvs-webN\\n");
        ``bind`` may list several addresses, comma-separated. ``keep_alive=False``: every response says
        ``Connection: close``, as some servers do."""
        self.stop_web(node)
        w = self._web.get(node)
        if w is None or bind is not None or body is not None:
            ip = bind or (self._web_bind(node) if node in REAL_SERVERS else None)
            if ip is None:
                raise TopologyError(f"start_web({node!r}) needs bind=")
            root = self.docroot(node)
            root.mkdir(parents=True, exist_ok=True)
            text = body if body is not None else BODIES.get(node, node)
            root.joinpath("index.html").write_text(text + "\n")
            w = _WebServer(node, ip, port, root, self.workdir / f"web-{node}.log")
            self._web[node] = w
        w.log_path.write_text("")
        # -S/-I: skip site imports and env, for start-up speed and isolation.
        w.proc = self.popen(
            node,
            [sys.executable, "-I", "-S", "-u", str(WEB_SERVER), w.bind, str(w.port), str(w.docroot),
             "1" if keep_alive else "0"],
            w.log_path,
        )
        proc, log = w.proc, w.log_path
        if poll(lambda: "listening" in log.read_text() or proc.poll() is not None, timeout, 0.02) is None:
            raise TopologyError(f"web server in {node} did not start within {timeout}s")
        if "listening" not in log.read_text():
            raise TopologyError(f"web server in {node} exited: {log.read_text().strip()}")
        return proc

    def stop_web(self, node: str, sig: int = signal.SIGTERM) -> None:
        w = self._web.get(node)
        if w is None or w.proc is None:
            return
        _kill(w.proc, sig)
        with self._lock, contextlib.suppress(ValueError):
            self._procs.remove(w.proc)
        w.proc = None

    def kill_web(self, node: str) -> None:
        """SIGKILL ``node``'s web server (a crashed backend)."""
        self.stop_web(node, signal.SIGKILL)

    def web_running(self, node: str) -> bool:
        w = self._web.get(node)
        return w is not None and w.proc is not None and w.proc.poll() is None

    def web_log(self, node: str) -> str:
        w = self._web.get(node)
        return w.log_path.read_text() if w else ""

    # ---------------------------------------------------------- havs daemon
    def start_havs(
        self,
        node: str,
        config_path: str | os.PathLike[str],
        extra_args: Sequence[str] = (),
        log_path: str | os.PathLike[str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Run ``havs run -c CONFIG --node NODE --log-format json`` inside ``node``.

        stdout (JSON log lines) and stderr go to ``log_path`` (default workdir/havs-NODE.log)."""
        havs = REPO / ".venv" / "bin" / "havs"
        argv = [str(havs), "run", "-c", str(config_path), "--node", node, "--log-format", "json", *extra_args]
        return self.start_daemon(node, argv, log_path)

    def start_daemon(
        self, node: str, argv: Sequence[str], log_path: str | os.PathLike[str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``node``'s director daemon (havs, or e.g. keepalived for interop tests):
        the process that stop_havs()/crash() act on. One per node."""
        if node in self._havs and self._havs[node].poll() is None:
            raise TopologyError(f"a daemon is already running in {node}")
        proc = self.popen(node, argv, log_path or self.workdir / f"havs-{node}.log")
        self._havs[node] = proc
        return proc

    def stop_havs(self, node: str, sig: int = signal.SIGTERM, timeout: float = 10) -> int | None:
        """Signal the daemon in ``node`` and wait; SIGKILL after ``timeout``. Returns its exit code."""
        proc = self._havs.pop(node, None)
        if proc is None:
            return None
        _kill(proc, sig, timeout=timeout, group=False)
        return proc.returncode

    def crash(self, node: str) -> None:
        """Hard director crash: kill -9 the daemon and take the node's links down."""
        proc = self._havs.pop(node, None)
        if proc is not None:
            _kill(proc, signal.SIGKILL)
        self.links_down(node)

    def recover(self, node: str) -> None:
        """Bring a crashed node back as after a reboot: baseline addresses only, links up."""
        self._baseline(node)

    def havs_proc(self, node: str) -> subprocess.Popen[bytes] | None:
        return self._havs.get(node)


def cleanup_stale() -> list[str]:
    """Delete host namespaces left by earlier runs (``havs<pid>-*`` whose pid is gone)."""
    return delete_stale(_PREFIX_RE)


def _iter_names(prefix: str) -> Iterator[str]:
    for node in (SWITCH, *NODES):
        yield f"{prefix}{node}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m integration.topology", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("up", "down"))
    parser.add_argument("--prefix", default=None,
                        help="namespace name prefix (default: none inside UML, 'havs-' on the host)")
    args = parser.parse_args(argv)
    prefix = args.prefix if args.prefix is not None else ("" if in_uml() else "havs-")
    if args.action == "down":
        names = [n for n in _iter_names(prefix) if n in set(list_netns())]
        delete_netns(names)
        print(f"deleted: {' '.join(names) or '(nothing)'}")
        return 0
    # Detached: the web servers keep running after we exit; "down" kills them.
    workdir = Path(tempfile.gettempdir()) / f"havs-topology-{prefix or 'uml'}"
    lab = SeedLab(prefix=prefix, workdir=workdir)
    lab.up()
    atexit.unregister(lab.down)
    print(f"up in {lab.up_seconds:.2f}s: namespaces {' '.join(_iter_names(prefix))}; logs in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
