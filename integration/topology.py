"""The seed's LVS-NAT topology, built from network namespaces.

Works on the host kernel (netns tier: everything but IPVS) and inside the UML
lab (real IPVS)::

    client 192.168.0.105 ──┐ lan0 (client LAN)     lan1 (server LAN) ┌── rs1 192.168.72.128 "lvs-web1"
    lvs1 eth0 .0.111 ──────┤                                          ├── rs2 192.168.72.129 "lvs-web2"
    lvs2 eth0 .0.112 ──────┘   lvs1 eth1 .72.131, lvs2 eth1 .72.132 ──┘

Both LANs are bridges inside a namespace of their own (``sw``), so nothing is
created in the caller's namespace. VIP 192.168.0.108 and gateway 192.168.72.130
are not assigned: the daemon (or a test) owns them.

CLI: ``python -m integration.topology up|down [--prefix P]``.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import contextlib
import ctypes
import itertools
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from integration.lab import in_uml

REPO = Path(__file__).resolve().parent.parent

VIP = "192.168.0.108"
GATEWAY = "192.168.72.130"
CLIENT_IP = "192.168.0.105"
VIP_URL = f"http://{VIP}/"
DIRECTORS = ("lvs1", "lvs2")
REAL_SERVERS = {"rs1": "192.168.72.128", "rs2": "192.168.72.129"}
BODIES = {"rs1": "lvs-web1", "rs2": "lvs-web2"}
SWITCH = "sw"
NODES = ("client", "lvs1", "lvs2", "rs1", "rs2")
LANS = ("lan0", "lan1")  # client LAN, server LAN


@dataclass(frozen=True)
class Link:
    node: str
    ifname: str
    lan: str
    address: str  # CIDR


LINKS = (
    Link("client", "eth0", "lan0", f"{CLIENT_IP}/24"),
    Link("lvs1", "eth0", "lan0", "192.168.0.111/24"),
    Link("lvs1", "eth1", "lan1", "192.168.72.131/24"),
    Link("lvs2", "eth0", "lan0", "192.168.0.112/24"),
    Link("lvs2", "eth1", "lan1", "192.168.72.132/24"),
    Link("rs1", "eth0", "lan1", f"{REAL_SERVERS['rs1']}/24"),
    Link("rs2", "eth0", "lan1", f"{REAL_SERVERS['rs2']}/24"),
)

_CLONE_NEWNET = 0x40000000
# Host namespaces we make are named havs<pid>-[anything-]<node>: stale once <pid> is gone.
_PREFIX_RE = re.compile(r"^havs(\d+)-(?:.*-)?(?:" + "|".join((*NODES, SWITCH)) + ")$")

# A tiny docroot web server: starts much faster than `python3 -m http.server`
# (syscalls are slow in UML) and behaves the same for our needs: GET/HEAD of
# files under the docroot, "/" -> index.html, 404 otherwise; one line per request.
_WEB_SERVER = r"""
import os, socket, sys, threading
addr, port, root, keep_alive = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((addr, port))
srv.listen(128)
print("listening", addr, port, flush=True)
def reply(c, version, keep, code, reason, body):
    head = "%s %d %s\r\nContent-Type: text/html\r\nContent-Length: %d\r\nConnection: %s\r\n\r\n"
    c.sendall((head % (version, code, reason, len(body), "keep-alive" if keep else "close")).encode() + body)
def serve(c):
    # Like the seed's httpd: HTTP/1.1 clients keep their connection (5 s idle), HTTP/1.0 ones do not.
    try:
        c.settimeout(5)
        data = b""
        while True:
            while b"\r\n\r\n" not in data and len(data) < 65536:
                d = c.recv(4096)
                if not d:
                    return
                data += d
            request, _, data = data.partition(b"\r\n\r\n")
            lines = request.decode("latin-1").split("\r\n")
            parts = lines[0].split()
            method, path, version = (parts + ["", "", ""])[:3]
            headers = {k.strip().lower(): v.strip().lower() for k, _, v in (x.partition(":") for x in lines[1:])}
            keep = keep_alive and version == "HTTP/1.1" and headers.get("connection") != "close"
            version = "HTTP/1.1" if version == "HTTP/1.1" else "HTTP/1.0"
            path = path.split("?", 1)[0]
            rel = os.path.normpath(path.lstrip("/")) if path not in ("", "/") else "index.html"
            full = os.path.join(root, rel)
            if rel.startswith("..") or not os.path.isfile(full):
                reply(c, version, keep, 404, "Not Found", b"not found\n")
                code = 404
            else:
                with open(full, "rb") as f:
                    body = f.read()
                reply(c, version, keep, 200, "OK", b"" if method == "HEAD" else body)
                code = 200
            print(lines[0].strip(), code, flush=True)
            if not keep:
                return
    except OSError:
        pass
    finally:
        c.close()
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


class TopologyError(RuntimeError):
    pass


# Default prefixes held by live SeedLabs of this process (several may coexist).
_claimed: set[str] = set()
_claimed_lock = threading.Lock()


def default_prefix() -> str:
    """Claim the first free default prefix: "" inside UML (the kernel is ours
    alone), ``havs<pid>-`` on the host (parallel runs must not collide); then
    "<that>2-", "<that>3-"... for further labs alive in the same process."""
    base = "" if in_uml() else f"havs{os.getpid()}-"
    with _claimed_lock:
        candidate, n = base, 1
        while candidate in _claimed:
            n += 1
            candidate = f"{base}{n}-"
        _claimed.add(candidate)
        return candidate


def ipvs_available() -> bool:
    return Path("/proc/net/ip_vs").exists()


def _run(argv: Sequence[str], *, input: str | None = None, timeout: float = 60) -> str:
    p = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        detail = (p.stderr or p.stdout).strip()
        raise TopologyError(f"{shlex.join(argv)} failed (rc={p.returncode}): {detail}")
    return p.stdout


def _setns(path: str) -> None:
    """Move the *calling thread* into a network namespace."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if hasattr(os, "setns"):  # Python >= 3.12
            os.setns(fd, _CLONE_NEWNET)
            return
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


T = TypeVar("T")


def run_in_netns(ns_name: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a throwaway thread that has entered ``ns_name``.

    Network namespaces are per thread, and sockets keep the namespace they were
    created in, so this is a cheap way (no fork, no exec: UML makes those slow) to
    get sockets or /proc/sys/net files of another namespace.
    """
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            _setns(f"/run/netns/{ns_name}")
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=work, name=f"netns-{ns_name}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class HttpError(OSError):
    pass


def http_get_here(url: str, timeout: float) -> str:
    """GET ``url`` from the current thread's namespace; return the body of a 200 or raise."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"GET {url}: read timed out")
            s.settimeout(left)
            d = s.recv(65536)
            if not d:
                break
            chunks.append(d)
    raw = b"".join(chunks)
    head, sep, body = raw.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if not sep or len(status) < 2:
        raise HttpError(f"GET {url}: malformed response {raw[:80]!r}")
    if status[1] != b"200":
        raise HttpError(f"GET {url}: status {status[1].decode()}")
    return body.decode("utf-8", "replace")


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
    removed on down()).
    """

    def __init__(self, prefix: str | None = None, workdir: str | os.PathLike[str] | None = None) -> None:
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
                self._baseline(node)
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
                with _claimed_lock:
                    _claimed.discard(self.prefix)
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

    def _batch(self, node: str, cmds: Sequence[str]) -> None:
        # One `ip` process per namespace: process start-up is the slow part in UML.
        # -4: "addr flush" must not drop IPv6 link-local addresses.
        _run(["ip", "-4", "-n", self.ns(node), "-batch", "-"], input="".join(c + "\n" for c in cmds))

    # ---------------------------------------------------------- primitives
    def exec(
        self, node: str, argv: Sequence[str], *, check: bool = True, timeout: float = 60, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``node``'s namespace and wait (output captured as text)."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(["ip", "netns", "exec", self.ns(node), *argv], check=check, timeout=timeout, **kw)

    def popen(
        self, node: str, argv: Sequence[str], log_path: str | os.PathLike[str] | None = None, **kw: Any
    ) -> subprocess.Popen[bytes]:
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

        Defaults for rs1/rs2 are the seed's (their address, "lvs-webN\\n"). ``keep_alive=False``: every
        response says ``Connection: close``, as some servers do."""
        self.stop_web(node)
        w = self._web.get(node)
        if w is None or bind is not None or body is not None:
            ip = bind or REAL_SERVERS.get(node)
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
            [sys.executable, "-I", "-S", "-u", "-c", _WEB_SERVER, w.bind, str(w.port), str(w.docroot),
             "1" if keep_alive else "0"],
            w.log_path,
        )
        deadline = time.monotonic() + timeout
        while "listening" not in w.log_path.read_text():
            if w.proc.poll() is not None:
                raise TopologyError(f"web server in {node} exited: {w.log_path.read_text().strip()}")
            if time.monotonic() > deadline:
                raise TopologyError(f"web server in {node} did not start within {timeout}s")
            time.sleep(0.02)
        return w.proc

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


def _kill(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL, timeout: float = 5, group: bool = True) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        # Each process leads its own session: signal the group to catch its children.
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if group:
        # The leader may be gone while children linger.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


# ------------------------------------------------------------------ client loop
@dataclass(frozen=True)
class Sample:
    start: float  # time.monotonic()
    end: float
    ok: bool
    body: str  # stripped body on success, error text on failure


@dataclass(frozen=True)
class LoopStats:
    requests: int
    successes: int
    failures: int
    longest_outage: float  # seconds between the successes around the worst run of failures
    max_gap: float  # longest time between two consecutive successes' starts
    per_backend: dict[str, int] = field(default_factory=dict)  # body -> count


class ClientLoop:
    """Background HTTP client in ``node`` (default: client) hitting ``url`` every ``period`` s.

    A thread entered into the namespace does the requests (no subprocess: cheap in
    UML). Use as a context manager or start()/stop(); read stats() any time.
    """

    def __init__(
        self,
        lab: SeedLab,
        url: str = VIP_URL,
        period: float = 0.05,
        timeout: float = 1.0,
        node: str = "client",
    ) -> None:
        self.lab = lab
        self.url = url
        self.period = period
        self.timeout = timeout
        self.node = node
        self._samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._cond = threading.Condition()

    def __enter__(self) -> ClientLoop:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> ClientLoop:
        ns = self.lab.ns(self.node)
        self._thread = threading.Thread(target=self._run, args=(ns,), name="client-loop", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> LoopStats:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 5)
        if self._error is not None:
            raise self._error
        return self.stats()

    def _run(self, ns: str) -> None:
        try:
            _setns(f"/run/netns/{ns}")
        except BaseException as e:
            self._error = e
            return
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                body, ok = http_get_here(self.url, self.timeout).strip(), True
            except (OSError, ValueError) as e:
                body, ok = f"{type(e).__name__}: {e}", False
            with self._cond:
                self._samples.append(Sample(start, time.monotonic(), ok, body))
                self._cond.notify_all()
            self._stop.wait(max(0.0, start + self.period - time.monotonic()))

    @property
    def samples(self) -> list[Sample]:
        with self._cond:
            return list(self._samples)

    def now(self) -> float:
        """A timestamp to pass to stats(since=...) later."""
        return time.monotonic()

    def wait_for(self, pred: Callable[[LoopStats], bool], timeout: float, since: float | None = None) -> LoopStats:
        """Block until ``pred(stats(since))`` holds; raise TimeoutError with the stats otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                st = self.stats(since)
                if pred(st):
                    return st
                left = deadline - time.monotonic()
                if left <= 0 or self._error is not None:
                    raise TimeoutError(f"client loop condition not met in {timeout}s: {st}") from self._error
                self._cond.wait(min(left, 0.5))

    def stats(self, since: float | None = None) -> LoopStats:
        with self._cond:
            samples = [s for s in self._samples if since is None or s.start >= since]
        ok_starts = [s.start for s in samples if s.ok]
        backends = collections.Counter(s.body for s in samples if s.ok)
        max_gap = max((b - a for a, b in itertools.pairwise(ok_starts)), default=0.0)
        longest = 0.0
        last_ok: float | None = samples[0].start if samples else None
        in_failure = False
        for s in samples:
            if s.ok:
                if in_failure and last_ok is not None:
                    longest = max(longest, s.start - last_ok)
                last_ok, in_failure = s.start, False
            else:
                in_failure = True
        if in_failure and last_ok is not None:  # still down at the end
            longest = max(longest, samples[-1].end - last_ok)
        return LoopStats(
            requests=len(samples),
            successes=len(ok_starts),
            failures=len(samples) - len(ok_starts),
            longest_outage=longest,
            max_gap=max_gap,
            per_backend=dict(backends),
        )


def log_events(path: Path, name: str) -> list[dict[str, Any]]:
    """The events called ``name`` in a daemon's JSON log (other lines, e.g. a traceback, are skipped)."""
    out = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == name:
            out.append(event)
    return out


def wait_until(what: str, pred: Callable[[], bool], timeout: float, step: float = 0.05) -> float:
    """Poll ``pred`` until it holds and return the seconds it took. Every wait in the lab is bounded:
    past ``timeout``, TimeoutError names what did not happen."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{what}: not within {timeout}s")
        time.sleep(step)
    return time.monotonic() - t0


# --------------------------------------------------------------- housekeeping
def list_netns() -> list[str]:
    p = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return [line.split()[0] for line in p.stdout.splitlines() if line.strip()]


def kill_netns_pids(names: Sequence[str]) -> None:
    """SIGKILL every process still running in the given namespaces."""
    for n in names:
        p = subprocess.run(["ip", "netns", "pids", n], capture_output=True, text=True)
        for pid in p.stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)


def delete_netns(names: Sequence[str]) -> None:
    if not names:
        return
    kill_netns_pids(names)
    subprocess.run(
        ["ip", "-force", "-batch", "-"],
        input="".join(f"netns del {n}\n" for n in names),
        capture_output=True,
        text=True,
    )


def cleanup_stale() -> list[str]:
    """Delete host namespaces left by earlier runs (``havs<pid>-*`` whose pid is gone)."""
    stale = []
    for n in list_netns():
        m = _PREFIX_RE.match(n)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            stale.append(n)
    delete_netns(stale)
    return stale


def _iter_names(prefix: str) -> Iterator[str]:
    for node in (SWITCH, *NODES):
        yield f"{prefix}{node}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m integration.topology", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("up", "down"))
    parser.add_argument(
        "--prefix",
        default=None,
        help="namespace name prefix (default: none inside UML, 'havs-' on the host)",
    )
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
