"""Heartbeat under load: does lvs1 keep advertising on time while the daemon is busy? Prints figures, asserts nothing.

    python -m integration.bench_heartbeat [--seconds 20] [--advert 0.1] [--checks 3000]

On the host it boots user-mode Linux once and runs itself inside (``--inside``). There, on the seed topology
(integration/topology.py, no web servers), ``havs run`` on lvs1 alone with a generated config:

* the seed's vrrp section (etc/havs.yaml) at ``--advert`` seconds, ``notify.master: [/bin/sleep, 5]``;
* a large IPVS table: ``--services`` services (192.168.0.108:20000...) x ``--per-service`` real servers on
  the server LAN (fake addresses 192.168.72.10..., ``check: {type: none}``);
* health-check load (scenarios b and d): ``--checks`` more real servers (192.168.72.20..., ten per service,
  ports 30000...) with HTTP checks every 1 s, all sent through ``connect_address`` to one keep-alive HTTP
  server in rs1 (uvloop, ``--ports`` listening ports) that counts the requests it answers.

lvs1's adverts are captured in lvs2's namespace (lvs2 runs no daemon) by a raw protocol-112 socket that
joined 224.0.0.18 on eth1; each advert's time is the kernel's receive timestamp (SO_TIMESTAMPNS), taken
as the packet enters lvs2's stack: the veth/bridge path runs synchronously from lvs1's send, so the
capture process's own scheduling does not blur the gaps. Scenarios, ``--seconds`` each:

  a  idle: the big table, periodic reconcile passes only;
  b  health-check load;
  c  large IPVS apply: ``ipvsadm -C`` at 15 % (the level-triggered reconciler re-adds every service and
     destination on its next pass), then at 55 % a SIGHUP reload to a config where every big-table weight
     changed (one EditDestination per destination);
  d  all together: b's checks, a VRRP flap at 10 % (a fake peer in lvs2 advertises priority 254 for 1 s:
     lvs1 goes BACKUP, then MASTER again and runs the 5 s notify script), c's ``ipvsadm -C`` at 30 % and
     the weights reload at 60 %. The gap across the flap (lvs1 silent on purpose) is left out.

A reference sender runs through every scenario: keepalived 2.2.7 (VRRP only, VRID 52, same interval) in rs2,
captured the same way. It shares the one UML CPU and the host, so its gaps are the lab's own noise floor; a
havs gap well above the reference's in the same window is havs's.

Per scenario: adverts seen, median / p99 / worst gap, worst - interval against the target (interval +
20 ms), checks/s answered by rs1's server, lvs1's CPU (/proc/<pid>/stat) and the whole UML CPU's busy share.
UML has one CPU: havs, the HTTP server, the capture and the kernel all share it.

``--havs-gc no-full|freeze-only`` start the same daemon through a wrapper that switches off the cyclic GC's
automatic full collections (and, freeze-only, makes HealthService's post-reload unfreeze + full collect a plain
gc.freeze()): experiments that show what the GC's GIL-holding collections cost the heartbeat.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import itertools
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "integration" / "out" / "bench_heartbeat"
SEED_CONFIG = REPO / "etc" / "havs.yaml"
# Inside UML /tmp is a tmpfs shared by every namespace: the daemon's log and the request counter live there,
# so neither pays for hostfs writes (a real daemon logs to journald's pipe, not to a slow filesystem).
FAST = Path("/tmp/bench_heartbeat")
COUNTER = FAST / "requests.json"
VIP = "192.168.0.108"
RS1 = "192.168.72.128"
LVS1_HB = "192.168.72.131"  # lvs1's eth1: the source of its adverts
LVS2_HB = "192.168.72.132"
REF_SRC = "192.168.72.129"  # rs2's eth0: the reference sender's adverts
REF_VRID = 52
GROUP = "224.0.0.18"
PROTO_VRRP = 112
SLACK = 0.020  # the target: worst gap <= interval + 20 ms
HTTP_PORT0 = 8000
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


# ------------------------------------------------------------------------------------------------ configs
@dataclass(frozen=True)
class Shape:
    advert: float
    services: int
    per_service: int
    checks: int
    ports: int


def build_config(shape: Shape, *, weight: int, checks: bool) -> dict[str, Any]:
    """The seed's nodes, settings and vrrp section, plus the big table and (optionally) the HTTP-checked servers."""
    import yaml

    seed = yaml.safe_load(SEED_CONFIG.read_text())
    settings = dict(seed["settings"], control_socket=str(FAST / "control.sock"), state_dir=str(FAST / "state"))
    vrrp = dict(seed["vrrp"], advert_interval=shape.advert,
                version=2 if shape.advert == int(shape.advert) else 3,
                notify={"master": ["/bin/sleep", "5"], "timeout": 10})
    services: list[dict[str, Any]] = []
    big_reals = [f"192.168.72.{10 + j}" for j in range(shape.per_service)]
    for i in range(shape.services):
        services.append({
            "address": VIP, "port": 20000 + i, "scheduler": "wrr", "forwarding": "nat", "check": {"type": "none"},
            "real_servers": [{"address": a, "port": 80, "weight": weight} for a in big_reals],
        })
    if checks:
        per = 10
        for k in range((shape.checks + per - 1) // per):
            n = min(per, shape.checks - k * per)
            services.append({
                "address": VIP, "port": 30000 + k, "scheduler": "rr", "forwarding": "nat",
                "check": {"type": "http", "path": "/", "interval": 1.0, "timeout": 0.5, "rise": 2, "fall": 3,
                          "connect_address": RS1, "connect_port": HTTP_PORT0 + k % shape.ports},
                "real_servers": [{"address": f"192.168.72.{20 + j}", "port": 80} for j in range(n)],
            })
    return {"settings": settings, "nodes": seed["nodes"], "vrrp": vrrp, "virtual_services": services}


def write_config(path: Path, cfg: dict[str, Any]) -> None:
    # JSON is YAML; one line per service keeps the file small. Replaced atomically: the daemon may reload it.
    lines = [json.dumps({k: v for k, v in cfg.items() if k != "virtual_services"})[:-1] + ', "virtual_services": [']
    lines += [json.dumps(vs) + ("," if i + 1 < len(cfg["virtual_services"]) else "")
              for i, vs in enumerate(cfg["virtual_services"])]
    lines.append("]}")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.chmod(0o644)  # havs refuses a world-writable config
    tmp.replace(path)


# -------------------------------------------------------------------------------------- the HTTP server (rs1)
class _Responder(asyncio.Protocol):
    count = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        # probe requests are tiny and arrive whole; one answer per request head
        n = data.count(b"\r\n\r\n")
        _Responder.count += n
        self.transport.write(RESPONSE * n)


async def _serve(address: str, ports: int) -> None:
    loop = asyncio.get_running_loop()
    for i in range(ports):
        await loop.create_server(_Responder, address, HTTP_PORT0 + i, backlog=4096)
    print("listening", flush=True)
    tmp = COUNTER.with_suffix(".tmp")
    while True:
        tmp.write_text(json.dumps({"count": _Responder.count, "t": time.monotonic()}))
        tmp.replace(COUNTER)
        await asyncio.sleep(0.5)


def serve(ports: int) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_serve(RS1, ports))


def read_counter() -> tuple[int, float] | None:
    try:
        d = json.loads(COUNTER.read_text())
        return int(d["count"]), float(d["t"])
    except (OSError, ValueError, KeyError):
        return None


# ------------------------------------------------------------------------------------------- advert capture
class AdvertCapture:
    """Every VRRP packet lvs2's eth1 receives: (kernel timestamp, time.monotonic() at recv, source, priority)."""

    def __init__(self, sock: socket.socket) -> None:
        self.heard: list[tuple[float, float, str, int]] = []
        self.kernel_stamps = True
        self._sock = sock
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                        struct.pack("4s4s", socket.inet_aton(GROUP), socket.inet_aton(LVS2_HB)))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.settimeout(0.2)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="advert-capture", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        space = socket.CMSG_SPACE(16)
        while not self._stop.is_set():
            try:
                pkt, anc, _flags, _addr = self._sock.recvmsg(2048, space)
            except TimeoutError:
                continue
            except OSError:
                return
            mono = time.monotonic()
            stamp = None
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
                    sec, nsec = struct.unpack("qq", data[:16])
                    stamp = sec + nsec / 1e9
            if stamp is None:
                self.kernel_stamps = False
                stamp = time.time() - (time.monotonic() - mono)
            ihl = (pkt[0] & 0x0F) * 4
            if len(pkt) < ihl + 3:
                continue
            with self._lock:
                self.heard.append((stamp, mono, socket.inet_ntoa(pkt[12:16]), pkt[ihl + 2]))

    def adverts(self, src: str, t0: float, t1: float) -> list[tuple[float, float]]:
        """Adverts (priority > 0) from ``src`` received between monotonic t0 and t1: (kernel stamp, monotonic)."""
        with self._lock:
            return [(s, m) for s, m, frm, prio in self.heard if frm == src and prio > 0 and t0 <= m <= t1]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()


class FakePeer:
    """A VRRP peer in lvs2 that advertises a higher priority for a while: lvs1 must go BACKUP, then (master-down
    interval after the last fake advert) MASTER again, which runs its notify script."""

    def __init__(self, lab: Any, advert: float, version: int, router_id: int, addresses: Sequence[str]) -> None:
        from havs.core import wire
        from havs.edge.vrrp_socket import VrrpSocket
        from integration.topology import run_in_netns

        self._sock = run_in_netns(lab.ns("lvs2"), lambda: VrrpSocket("eth1", ipaddress.IPv4Address(LVS2_HB)))
        interval = round(advert * 100) if version == 3 else round(advert)
        adv = wire.Advertisement(version=version, router_id=router_id, priority=254,
                                 addresses=tuple(ipaddress.IPv4Address(a) for a in addresses),
                                 advert_interval=interval)
        dst = ipaddress.IPv4Address(GROUP)
        self._payload = wire.encode(adv, src=ipaddress.IPv4Address(LVS2_HB), dst=dst)
        self._dst = dst
        self._advert = advert

    def advertise(self, seconds: float) -> tuple[float, float]:
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            self._sock.send(self._payload, self._dst)
            time.sleep(self._advert)
        return t0, time.monotonic()

    def close(self) -> None:
        self._sock.close()


# -------------------------------------------------------------------------------------------------- figures
def percentile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process, all threads."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def system_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole (one-CPU) UML kernel."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals) - idle, sum(vals)


class HavsLog:
    """The daemon's JSON log lines, parsed incrementally."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[dict[str, Any]] = []
        self._offset = 0

    def refresh(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return self.events
        end = data.rfind(b"\n") + 1
        self._offset += end
        for raw in data[:end].splitlines():
            try:
                ev = json.loads(raw)
                ev["_t"] = datetime.fromisoformat(str(ev["timestamp"]).replace("Z", "+00:00")).timestamp()
            except (ValueError, KeyError, TypeError):
                continue
            self.events.append(ev)
        return self.events

    def find(self, event: str, since_wall: float, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.refresh() if e.get("event") == event and e["_t"] >= since_wall
                and all(e.get(k) == v for k, v in match.items())]

    def wait(self, event: str, since_wall: float, timeout: float, **match: Any) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.find(event, since_wall, **match)
            if found:
                return found[0]
            time.sleep(0.1)
        return None


@dataclass
class Gaps:
    """One sender's adverts in one window."""

    adverts: int = 0
    gaps: list[float] = field(default_factory=list)
    ends: list[tuple[float, float]] = field(default_factory=list)  # (gap, its end: seconds into the window)

    @classmethod
    def of(cls, heard: list[tuple[float, float]], excluded: Sequence[tuple[float, float]], t0: float) -> Gaps:
        g = cls(adverts=len(heard))
        # gaps between consecutive adverts, not across a window where lvs1 was made silent on purpose
        kept = [(s, m) for s, m in heard if not any(a <= m <= b for a, b in excluded)]
        for (s_prev, m_prev), (s, m) in itertools.pairwise(kept):
            if any(m_prev <= b and m >= a for a, b in excluded):
                continue
            g.gaps.append(s - s_prev)
            g.ends.append((s - s_prev, m - t0))
        return g

    def cells(self, interval: float) -> str:
        if not self.gaps:
            return f"{self.adverts:>8}  no gaps measured"
        worst = max(self.gaps)
        verdict = "met" if worst <= interval + SLACK else "MISSED"
        return (f"{self.adverts:>8}{statistics.median(self.gaps) * 1000:>10.1f}"
                f"{percentile(self.gaps, 0.99) * 1000:>8.1f}{worst * 1000:>9.1f}{(worst - interval) * 1000:>+10.1f}"
                f"{verdict:>8}")

    def longest(self, n: int = 5) -> str:
        return ", ".join(f"{g * 1000:.0f} (+{at:.1f}s)" for g, at in sorted(self.ends, reverse=True)[:n])


@dataclass
class Row:
    name: str
    title: str
    seconds: float = 0.0
    havs: Gaps = field(default_factory=Gaps)
    ref: Gaps = field(default_factory=Gaps)
    checks_per_s: float | None = None
    cpu: float = 0.0  # lvs1's share of one CPU
    busy: float = 0.0  # the UML CPU's busy share
    notes: list[str] = field(default_factory=list)


Event = tuple[float, str, Callable[[], "tuple[float, float] | None"]]


class Bench:
    def __init__(self, lab: Any, shape: Shape, config: Path, log: HavsLog, capture: AdvertCapture) -> None:
        self.lab = lab
        self.shape = shape
        self.config = config
        self.log = log
        self.capture = capture
        self.rows: dict[str, Row] = {}
        self.hups = 0
        self.dump: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        proc = self.lab.havs_proc("lvs1")
        if proc is None or proc.poll() is not None:
            raise RuntimeError("havs on lvs1 is not running")
        return int(proc.pid)

    def reload(self, *, weight: int, checks: bool) -> float:
        write_config(self.config, build_config(self.shape, weight=weight, checks=checks))
        wall = time.time()
        os.kill(self.pid, signal.SIGHUP)
        self.hups += 1
        return wall

    def clear_ipvs(self) -> None:
        self.lab.exec("lvs1", ["ipvsadm", "-C"])

    def quiet(self, timeout: float) -> bool:
        """Wait until the main loop has no work we caused: every SIGHUP reloaded, no IPVS op for 1.5 s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = self.log.refresh()
            reloads = sum(1 for e in events if e.get("event") in ("config.reloaded", "config.reload_failed"))
            applies = [e["_t"] for e in events[-200:] if e.get("event") == "ipvs.apply"]
            if reloads >= self.hups and (not applies or time.time() - applies[-1] > 1.5):
                return True
            time.sleep(0.2)
        return False

    def run(self, name: str, title: str, seconds: float, events: Sequence[Event] = (), settle: bool = False) -> Row:
        """Measure for ``seconds``, firing ``events`` on the way; with ``settle`` the window is stretched (up to
        2 x seconds more) until the work they caused is done, so a slow reload is measured whole."""
        row = Row(name, title)
        pid = self.pid
        excluded: list[tuple[float, float]] = []
        c0, s0, k0 = proc_cpu(pid), system_cpu(), read_counter()
        t0, wall0 = time.monotonic(), time.time()
        for at, label, fn in sorted(events, key=lambda e: e[0]):
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            started = time.monotonic() - t0
            window = fn()
            if window is not None:
                excluded.append(window)
            row.notes.append(f"{label} at +{started:.1f}s")
        time.sleep(max(0.0, t0 + seconds - time.monotonic()))
        if settle and not self.quiet(2 * seconds):
            row.notes.append("main loop still busy at the end of the window")
        t1 = time.monotonic()
        row.seconds = t1 - t0
        c1, s1, k1 = proc_cpu(pid), system_cpu(), read_counter()
        time.sleep(0.3)  # adverts stamped before t1 may still be on their way to the capture thread
        heard = self.capture.adverts(LVS1_HB, t0, t1)
        ref = self.capture.adverts(REF_SRC, t0, t1)
        row.havs = Gaps.of(heard, excluded, t0)
        row.ref = Gaps.of(ref, [], t0)
        row.cpu = (c1 - c0) / (t1 - t0)
        row.busy = (s1[0] - s0[0]) / max(1, s1[1] - s0[1])
        if k0 is not None and k1 is not None and k1[1] > k0[1]:
            row.checks_per_s = (k1[0] - k0[0]) / (k1[1] - k0[1])
        row.notes += self._log_notes(wall0)
        self.rows[name] = row
        self.dump[name] = {"t0": t0, "wall0": wall0, "t1": t1, "excluded": excluded, "lvs1": heard, "ref": ref}
        (OUT / "adverts.json").write_text(json.dumps(self.dump))
        worst = max(row.havs.gaps, default=float("nan"))
        print(f"  {name}: {row.seconds:.1f}s, {row.havs.adverts} adverts, worst gap {worst * 1000:.1f} ms "
              f"(reference {max(row.ref.gaps, default=float('nan')) * 1000:.1f} ms), checks/s "
              f"{row.checks_per_s or 0:.0f}, lvs1 CPU {row.cpu * 100:.0f}%, UML CPU {row.busy * 100:.0f}%", flush=True)
        return row

    def _log_notes(self, wall0: float) -> list[str]:
        notes = []
        ev = self.log.find("ipvs.apply", wall0)
        if ev:
            notes.append(f"{len(ev)} IPVS ops logged +{ev[0]['_t'] - wall0:.1f}..+{ev[-1]['_t'] - wall0:.1f}s")
        for e in self.log.find("ipvs.drift", wall0):
            notes.append(f"drift seen +{e['_t'] - wall0:.1f}s")
        for name in ("ipvs.apply_failed", "ipvs.pass_failed", "config.reload_failed", "vrrp.crashed"):
            bad = self.log.find(name, wall0)
            if bad:
                notes.append(f"{len(bad)} x {name}")
        for e in self.log.find("daemon.signal", wall0, signal="HUP"):
            notes.append(f"SIGHUP handled +{e['_t'] - wall0:.1f}s")
        for e in self.log.find("config.reloaded", wall0):
            notes.append(f"reloaded +{e['_t'] - wall0:.1f}s")
        for e in self.log.find("vrrp.state", wall0):
            notes.append(f"{e.get('to')} +{e['_t'] - wall0:.2f}s")
        for e in self.log.find("vrrp.notify", wall0):
            notes.append(f"notify {e.get('state')} rc={e.get('rc')} done +{e['_t'] - wall0:.1f}s")
        changes = self.log.find("health.change", wall0)
        if changes:
            down = sum(1 for e in changes if e.get("to") == "down")
            notes.append(f"{len(changes)} health changes ({down} to down)")
        return notes


# ------------------------------------------------------------------------------------------------- report
def report(rows: dict[str, Row], shape: Shape, kernel_stamps: bool, ref_note: str) -> str:
    target = shape.advert + SLACK
    head = (f"{'scenario':<40}{'secs':>5}{'adverts':>8}{'median ms':>10}{'p99 ms':>8}{'worst ms':>9}"
            f"{'worst-int':>10}{'target':>8}{'checks/s':>9}{'lvs1 CPU':>9}{'UML CPU':>8}")
    lines = [
        f"advert interval {shape.advert * 1000:.0f} ms; target: worst gap <= interval + {SLACK * 1000:.0f} ms "
        f"= {target * 1000:.0f} ms; gaps from "
        + ("kernel receive timestamps (SO_TIMESTAMPNS) in lvs2" if kernel_stamps else "time.monotonic() at recv"),
        f"big table: {shape.services} services x {shape.per_service} real servers = "
        f"{shape.services * (shape.per_service + 1)} IPVS rules (check none); HTTP checks (b, d): {shape.checks} "
        f"servers every 1 s to {shape.ports} ports in rs1",
        f"ref = reference sender on the same UML CPU in the same windows: {ref_note}",
        "",
        head,
        "-" * len(head),
    ]
    for key in ("a", "b", "c", "d"):
        r = rows.get(key)
        if r is None:
            continue
        cps = f"{r.checks_per_s:.0f}" if r.checks_per_s else "-"
        lines.append(f"{f'{r.name}) {r.title}':<40}{r.seconds:>5.0f}{r.havs.cells(shape.advert)}{cps:>9}"
                     f"{r.cpu * 100:>8.0f}%{r.busy * 100:>7.0f}%")
        lines.append(f"{'   ref (keepalived, rs2)':<40}{'':>5}{r.ref.cells(shape.advert)}")
    lines.append("")
    for key in ("a", "b", "c", "d"):
        r = rows.get(key)
        if r is not None:
            lines.append(f"{key}: longest gaps ms (+end in window): havs {r.havs.longest()} | ref {r.ref.longest(3)}")
            if r.notes:
                lines.append(f"   {'; '.join(r.notes)}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- inside
def _raise_fd_limit() -> None:
    # UML's PID 1 starts with 1024/4096; thousands of kept-alive checks (and the server's end of them) need more.
    # Inherited by the daemon and the HTTP server, which we start.
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (65536, 65536))
    except (ValueError, OSError):
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _wait(pred: Callable[[], bool], timeout: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def start_reference(lab: Any, advert: float) -> tuple[subprocess.Popen[bytes], str]:
    """keepalived 2.2.7 (VRRP only, C, its own timer) advertising VRID 52 from rs2 at the same interval: what the
    lab itself (one UML CPU under this load, on a shared host) does to a sender that holds no GIL."""
    version = 2 if advert == int(advert) else 3
    cfg = FAST / "ref-keepalived.conf"
    cfg.write_text(f"""global_defs {{
    router_id ref
}}
vrrp_instance REF {{
    state MASTER
    interface eth0
    virtual_router_id {REF_VRID}
    version {version}
    priority 100
    advert_int {advert:g}
    virtual_ipaddress {{
        192.168.72.200/24 dev eth0
    }}
}}
""")
    argv = ["keepalived", "-n", "-l", "-D", "-G", "-P", "-f", str(cfg), "-p", str(FAST / "ref.pid"),
            "-r", str(FAST / "ref-vrrp.pid")]
    proc = lab.popen("rs2", argv, OUT / "ref-keepalived.log")
    note = f"keepalived 2.2.7 VRRP-only, VRID {REF_VRID} v{version} from rs2"
    if _wait(lambda: (FAST / "ref-vrrp.pid").exists(), 20):
        with contextlib.suppress(OSError, ValueError):
            vpid = int((FAST / "ref-vrrp.pid").read_text().split()[0])
            policy = {os.SCHED_OTHER: "SCHED_OTHER", os.SCHED_FIFO: "SCHED_FIFO", os.SCHED_RR: "SCHED_RR"}.get(
                os.sched_getscheduler(vpid), "other")
            note += f" ({policy}, nice {os.getpriority(os.PRIO_PROCESS, vpid)})"
    return proc, note


def inside(shape: Shape, seconds: float, scenarios: str, havs_gc: str = "default") -> int:
    from integration.lab import in_uml
    from integration.topology import SeedLab, TopologyError

    if not in_uml():
        print("--inside runs in the UML lab only (it needs IPVS)", file=sys.stderr)
        return 2
    start = time.monotonic()
    _raise_fd_limit()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True, exist_ok=True)
    FAST.mkdir(parents=True, exist_ok=True)
    (FAST / "state").mkdir(exist_ok=True)
    config = FAST / "havs.yaml"
    log_path = FAST / "havs-lvs1.log"
    write_config(config, build_config(shape, weight=1, checks=False))
    try:
        lab = SeedLab(prefix="", workdir=OUT / "lab").up(web=False)
    except (TopologyError, subprocess.SubprocessError, OSError) as e:
        print(f"lab broke: {e}", flush=True)
        return 2
    capture: AdvertCapture | None = None
    peer: FakePeer | None = None
    rc = 0
    try:
        server = lab.popen("rs1", [sys.executable, "-m", "integration.bench_heartbeat", "--serve",
                                   "--ports", str(shape.ports)], OUT / "server-rs1.log")
        if not _wait(lambda: "listening" in (OUT / "server-rs1.log").read_text() or server.poll() is not None, 60):
            raise RuntimeError("HTTP server in rs1 did not start")
        if server.poll() is not None:
            raise RuntimeError(f"HTTP server in rs1 exited: {(OUT / 'server-rs1.log').read_text()[-500:]}")
        capture = AdvertCapture(lab.socket("lvs2", socket.AF_INET, socket.SOCK_RAW, PROTO_VRRP))
        _ref, ref_note = start_reference(lab, shape.advert)
        log = HavsLog(log_path)
        t_start, wall = time.monotonic(), time.time()
        if havs_gc == "default":
            lab.start_havs("lvs1", config, log_path=log_path)
        else:
            # the same `havs run`, with the cyclic GC's automatic full (generation 2) collections switched off:
            # an experiment for the report, not a recommended setting as is
            wrapper = "import gc, sys; gc.set_threshold(700, 10, 10**9)\n"
            if havs_gc == "freeze-only":
                # and HealthService's post-(re)load gc.unfreeze(); gc.collect(); gc.freeze() becomes gc.freeze()
                wrapper += ("import havs.health_service as hs\n"
                            "def _freeze(self):\n    self._freeze_timer = None\n    gc.freeze()\n"
                            "hs.HealthService._freeze = _freeze\n")
            wrapper += "from havs.cli import main\nsys.exit(main(sys.argv[1:]))\n"
            lab.start_daemon("lvs1", [sys.executable, "-c", wrapper, "run", "-c", str(config), "--node", "lvs1",
                                      "--log-format", "json"], log_path)
        if log.wait("daemon.ready", wall, 240) is None:
            raise RuntimeError("havs on lvs1 not ready in 240 s")
        ready = time.monotonic()
        if log.wait("vrrp.notify", wall, 60, state="MASTER") is None:
            raise RuntimeError("lvs1 did not become MASTER (and run its notify script) within 60 s")
        ops = log.find("ipvs.apply", wall)
        print(f"havs up: ready {ready - t_start:.1f}s (first pass {len(ops)} IPVS ops), MASTER and notify done "
              f"+{time.monotonic() - ready:.1f}s; reference: {ref_note}", flush=True)
        bench = Bench(lab, shape, config, log, capture)
        time.sleep(1.0)
        vrrp = build_config(shape, weight=1, checks=False)["vrrp"]
        peer = FakePeer(lab, shape.advert, vrrp["version"], vrrp["router_id"],
                        [a["address"].split("/")[0] for a in vrrp["addresses"]])
        fake = peer
        weight = 1

        def reweigh(checks: bool) -> None:
            nonlocal weight
            weight = 3 - weight
            bench.reload(weight=weight, checks=checks)

        if "a" in scenarios:
            bench.run("a", "idle (big table)", seconds)
        if "c" in scenarios:
            bench.run("c", "IPVS: ipvsadm -C, weights reload", seconds, [
                (0.10 * seconds, "ipvsadm -C", lambda: bench.clear_ipvs()),
                (0.35 * seconds, "SIGHUP (every weight changed)", lambda: reweigh(False)),
            ], settle=True)
        if "b" in scenarios or "d" in scenarios:
            wall = time.time()
            reweigh(True)
            expect = shape.services + (shape.checks + 9) // 10
            reloaded = log.wait("config.reloaded", wall, 180, services=expect)
            if reloaded is None:
                raise RuntimeError("reload with health checks did not finish within 180 s")
            bench.quiet(60)
            print(f"health checks on: reload took {reloaded['_t'] - wall:.1f}s, quiet after "
                  f"{time.time() - wall:.1f}s; settling 4 s", flush=True)
            time.sleep(4.0)
        if "b" in scenarios:
            bench.run("b", f"health checks ({shape.checks}/s offered)", seconds)
        if "d" in scenarios:
            bench.run("d", "all: checks+flap/notify+-C+reload", seconds, [
                (0.10 * seconds, "VRRP flap (fake peer 1 s)", lambda: fake.advertise(1.0)),
                (0.30 * seconds, "ipvsadm -C", lambda: bench.clear_ipvs()),
                (0.50 * seconds, "SIGHUP (every weight changed)", lambda: reweigh(True)),
            ], settle=True)
        gc_note = {"default": "", "no-full": ", havs with automatic full GC collections OFF (--havs-gc no-full)",
                   "freeze-only": ", havs with automatic full GC collections OFF and HealthService's unfreeze+collect "
                                  "replaced by gc.freeze() (--havs-gc freeze-only)"}[havs_gc]
        print(f"\n=== heartbeat under load: havs on lvs1{gc_note}, UML lab, {time.monotonic() - start:.0f}s ===",
              flush=True)
        print(report(bench.rows, shape, capture.kernel_stamps, ref_note), flush=True)
    except (RuntimeError, TopologyError, subprocess.SubprocessError, OSError) as e:
        print(f"benchmark broke: {type(e).__name__}: {e}", flush=True)
        rc = 2
    finally:
        if peer is not None:
            peer.close()
        if capture is not None:
            capture.close()
        with contextlib.suppress(Exception):
            lab.stop_havs("lvs1", timeout=20)
        lab.down()
        for p in (log_path, config):
            with contextlib.suppress(OSError):
                shutil.copy(p, OUT / p.name)
        print(f"logs, config and advert stamps: {OUT}", flush=True)
    return rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m integration.bench_heartbeat", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each scenario")
    parser.add_argument("--advert", type=float, default=0.1, help="VRRP advert interval (s)")
    parser.add_argument("--checks", type=int, default=1000, help="HTTP-checked real servers, 1 check/s each")
    parser.add_argument("--services", type=int, default=1000, help="big-table services")
    parser.add_argument("--per-service", type=int, default=10, help="real servers per big-table service")
    parser.add_argument("--ports", type=int, default=50, help="listening ports of rs1's HTTP server")
    parser.add_argument("--scenarios", default="abcd", help="which scenarios to run (run order: a c b d)")
    parser.add_argument("--havs-gc", choices=("default", "no-full", "freeze-only"), default="default",
                        help="experiments: no-full runs havs with gc.set_threshold(700, 10, 10**9); freeze-only also "
                             "makes HealthService._freeze a plain gc.freeze() (no unfreeze + full collect)")
    parser.add_argument("--mem", default="1G", help="UML memory")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.ports)
        return 0
    shape = Shape(args.advert, args.services, args.per_service, args.checks, args.ports)
    if args.inside:
        return inside(shape, args.seconds, args.scenarios, args.havs_gc)
    from integration.lab import LabError, run_in_uml

    argv_in = [sys.executable, "-m", "integration.bench_heartbeat", "--inside", "--seconds", str(args.seconds),
               "--advert", str(args.advert), "--checks", str(args.checks), "--services", str(args.services),
               "--per-service", str(args.per_service), "--ports", str(args.ports), "--scenarios", args.scenarios,
               "--havs-gc", args.havs_gc]
    try:
        return run_in_uml(argv_in, mem=args.mem, timeout=300 + 8 * args.seconds)
    except LabError as e:
        print(f"integration.bench_heartbeat: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
