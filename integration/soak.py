"""The 50 ms soak: a VRRP pair at ``advert_interval: 0.05`` under the 500-server check load for minutes,
havs then keepalived 2.2.7 in the same UML run. Prints figures, asserts nothing.

    python -m integration.soak [--minutes 10] [--keepalived-minutes M] [--servers 500] [--advert 0.05]
                               [--impls havs,keepalived]

On the host it boots user-mode Linux once and runs itself inside (``--inside``); a thread on the host samples
the host's load average meanwhile (the machine is shared: other work shows in every figure). Inside, on the
seed topology (integration/topology.py):

* the check load, as integration/bench_load.py makes it: one process in rs1 listening on ``--servers`` ports
  of 192.168.72.128 (20000...), answering ``200 ok`` and closing every connection, counting what it answered;
* havs on lvs1 (priority 150) and lvs2 (100): etc/havs.yaml with ``advert_interval`` replaced, plus one
  service 192.168.0.108:8080 whose real servers are those ports, checked over HTTP every 1 s with timeout 1 s
  (``initial_health: down``: each server earns its place); both directors check all of them, as a pair does;
* keepalived, the same pair: bench_failover's ``vrrp_instance`` (both addresses, heartbeat on eth1, both
  links tracked) at the same interval, its seed ``virtual_server`` and bench_load's 500-server one.

Per implementation: convergence (lvs1 MASTER with both addresses, lvs2 BACKUP with none, 95 % of the real
servers in both directors' IPVS, and no VRRP transition for 10 s; at most 300 s; state changes until then
are counted too: flaps at start-up), then the soak. Counted after convergence: VRRP transitions on BOTH
directors (havs ``vrrp.state`` events, keepalived ``Entering ... STATE`` lines) — each one is a false
takeover or a flap, since nothing is failed on purpose —, adverts heard from lvs2 (a backup that speaks
took over), healthy servers removed, and havs's ``health.overload`` lines. The master's adverts are captured
in rs2 (a raw protocol-112 socket that joined 224.0.0.18 on the server LAN, kernel receive timestamps): worst,
p99 and median gap, and gaps longer than the master-down interval's 3 adverts. Also checks/s answered (of
2 x servers offered), CPU seconds per second of each director's processes, RSS at the end, and the lab
CPU's load average every 10 s (UML has one CPU: both directors, the servers and the kernel share it).

Logs go to /tmp/soak inside UML (tmpfs: a busy log on hostfs costs the lab CPU) and are copied to
integration/out/soak at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from integration.benchlib import edit_seed_config, percentile, raise_fd_limit

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "integration" / "out" / "soak"
FAST = Path("/tmp/soak")
VIP = "192.168.0.108"
VIP_CIDR = "192.168.0.108/24"
GW_CIDR = "192.168.72.130/24"
RS1 = "192.168.72.128"
RS2 = "192.168.72.129"  # the capture listens here, on the server LAN
SOURCE = {"lvs1": "192.168.72.131", "lvs2": "192.168.72.132"}  # eth1: where each director's adverts come from
LOAD_PORT = 8080
CONVERGE = 300.0
HOLD = 10.0  # convergence: elected with no VRRP transition for this long
TICK = 10.0


# ------------------------------------------------------------------------------------------------ configs
def havs_config(node: str, servers: int, advert: float) -> str:
    import json

    import yaml

    from integration.bench_load import havs_service

    text = edit_seed_config({
        r"(?m)^(\s+advert_interval:)\s*[\d.]+": rf"\g<1> {advert:g}",
        r"(?m)^(\s+control_socket:)\s*\S+": rf"\g<1> {FAST / f'control-{node}.sock'}",
        r"(?m)^(\s+state_dir:)\s*\S+": rf"\g<1> {FAST / f'state-{node}'}",
    })
    cfg = yaml.safe_load(text)
    cfg["settings"]["initial_health"] = "down"
    cfg["virtual_services"].append(havs_service(servers, RS1, VIP, LOAD_PORT))
    return json.dumps(cfg, indent=1)  # JSON is YAML


def keepalived_config(node: str, servers: int, advert: float) -> str:
    from integration.bench_failover import keepalived_config as pair
    from integration.bench_load import keepalived_virtual_server

    return pair(advert, node) + keepalived_virtual_server(servers, RS1, VIP, LOAD_PORT)


# ------------------------------------------------------------------------------------------------ figures
@dataclass
class Figures:
    impl: str
    minutes: float = 0.0
    converged: float | None = None
    transitions: dict[str, list[str]] = field(default_factory=dict)  # node -> what happened after convergence
    startup_transitions: dict[str, int] = field(default_factory=dict)  # node -> state changes until convergence
    backup_adverts: int = 0
    gaps: list[float] = field(default_factory=list)
    worst_at: float = 0.0  # seconds into the soak
    removed: int = 0
    overload_lines: int = 0
    checks_per_s: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # node -> CPU s/s
    rss: dict[str, float] = field(default_factory=dict)
    loads: list[float] = field(default_factory=list)  # the lab CPU's 1-minute load average, every TICK
    note: str = ""

    @property
    def false_takeovers(self) -> int:
        return sum(len(v) for v in self.transitions.values())


def _events(text: str, *names: str) -> list[dict[str, Any]]:
    """The named events of a log slice. Lines are picked by a substring before any is parsed: this runs
    every second on the whole log, on the lab's one CPU, and parsing thousands of health.change lines
    each time took CPU from the real servers under test."""
    from integration.logs import parse_event

    keys = tuple(f'"{n}"' for n in names)
    lines = [line for line in text.splitlines() if any(k in line for k in keys)]
    return [e for e in map(parse_event, lines) if e is not None and e.get("event") in names]


def transitions(impl: str, text: str) -> list[str]:
    """The VRRP state changes in a slice of a daemon's log (a restarted VRRP process counts as one)."""
    if impl == "keepalived":
        return [f"-> {m}" for m in re.findall(r"Entering (\w+) STATE", text)]
    return [f"{e.get('from', '?')} -> {e.get('to', 'restart')} ({e.get('reason', e['event'])})"
            for e in _events(text, "vrrp.state", "vrrp.process_restarted")]


def removals(impl: str, text: str) -> int:
    if impl == "keepalived":
        return len(re.findall(r"Removing service", text))
    return sum(e.get("to") == "down" for e in _events(text, "health.change"))


def report(figs: list[Figures], servers: int, advert: float) -> str:
    mdi = 3 * advert
    rows: list[tuple[str, ...]] = [("", *(f.impl for f in figs), "target")]

    def row(name: str, fmt: Any, target: str = "") -> None:
        rows.append((name, *(fmt(f) for f in figs), target))

    def gap(f: Figures, q: float | None) -> str:
        if not f.gaps:
            return "-"
        v = max(f.gaps) if q is None else (statistics.median(f.gaps) if q == 0.5 else percentile(f.gaps, q))
        return f"{v * 1000:.1f}"

    row("soak after convergence, min", lambda f: f"{f.minutes:.1f}")
    row("converged (elected and stable 10 s, >= 95% of servers in IPVS), s",
        lambda f: f"{f.converged:.1f}" if f.converged else "never")
    row("VRRP transitions until convergence, lvs1 / lvs2 (no flap: 2 / 1)",
        lambda f: " / ".join(str(f.startup_transitions.get(n, "-")) for n in ("lvs1", "lvs2")))
    row("VRRP transitions after convergence, lvs1 / lvs2",
        lambda f: " / ".join(str(len(f.transitions.get(n, []))) for n in ("lvs1", "lvs2")), "0 / 0")
    row("adverts heard from the backup (lvs2)", lambda f: str(f.backup_adverts), "0")
    row("master adverts heard", lambda f: str(len(f.gaps) + 1 if f.gaps else 0))
    row("master advert gap median / p99 / worst, ms",
        lambda f: f"{gap(f, 0.5)} / {gap(f, 0.99)} / {gap(f, None)} (+{f.worst_at:.0f}s)" if f.gaps else "-")
    row(f"gaps over the master-down 3 x {advert * 1000:.0f} ms", lambda f: str(sum(g > mdi for g in f.gaps)), "0")
    row("healthy servers removed after convergence", lambda f: str(f.removed), "0")
    row(f"checks/s answered, of {2 * servers} offered (2 directors)",
        lambda f: f"{f.checks_per_s:.0f} ({f.checks_per_s / (2 * servers):.0%})")
    row("CPU s/s lvs1 / lvs2", lambda f: " / ".join(f"{f.cpu.get(n, 0):.2f}" for n in ("lvs1", "lvs2")))
    row("RSS MB lvs1 / lvs2 (all processes)", lambda f: " / ".join(f"{f.rss.get(n, 0):.0f}" for n in ("lvs1", "lvs2")))
    row("health.overload lines", lambda f: str(f.overload_lines) if f.impl == "havs" else "-")
    row("lab CPU load avg (1 min) min / median / max",
        lambda f: f"{min(f.loads):.2f} / {statistics.median(f.loads):.2f} / {max(f.loads):.2f}" if f.loads else "-")
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    for f in figs:
        for node, seen in f.transitions.items():
            if seen:
                lines.append(f"{f.impl} {node} after convergence: {', '.join(seen[:10])}")
        if f.note:
            lines.append(f"{f.impl}: {f.note}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ a run
def _tree(pid: int) -> list[int]:
    from integration.bench_load import tree

    return tree(pid)


class Soak:
    def __init__(self, lab: Any, servers: int, advert: float, counter: Path) -> None:
        self.lab = lab
        self.servers = servers
        self.advert = advert
        self.counter = counter

    def holds(self, node: str) -> tuple[bool, bool]:
        info = self.lab.ip_json(node, "-4", "addr", "show")
        have = {f"{a['local']}/{a['prefixlen']}" for i in info for a in i.get("addr_info", [])}
        return VIP_CIDR in have, GW_CIDR in have

    def ipvs_servers(self, node: str) -> int:
        # over netlink: /proc/net/ip_vs, read in several chunks, showed lvs1 2 of its 502 destinations in
        # this lab (both namespaces hold the same services in the kernel's one hash table)
        out = self.lab.exec(node, ["ipvsadm", "-Ln"], check=False).stdout
        return sum(1 for line in out.splitlines() if line.lstrip().startswith("->") and "Forward" not in line)

    def state(self, impl: str, log: Path) -> str | None:
        text = log.read_text(errors="replace") if log.exists() else ""
        if impl == "keepalived":
            found = re.findall(r"Entering (\w+) STATE", text)
            return found[-1] if found else None
        states = _events(text, "vrrp.state")
        return str(states[-1].get("to")) if states else None

    def start(self, impl: str, node: str) -> Path:
        log = FAST / f"{impl}-{node}.log"
        log.unlink(missing_ok=True)
        if impl == "havs":
            self.lab.start_havs(node, FAST / f"havs-{node}.yaml", log_path=log)
        else:
            pid, conf = FAST / f"ka-{node}", FAST / f"keepalived-{node}.conf"
            self.lab.start_daemon(node, ["keepalived", "-n", "-l", "-D", "-G", "-f", str(conf), "-p", f"{pid}.pid",
                                         "-r", f"{pid}-vrrp.pid", "-c", f"{pid}-check.pid"], log)
        return log

    def run(self, impl: str, minutes: float) -> Figures:
        from integration.adverts import AdvertCapture
        from integration.bench_load import cpu, read_count, rss_mb

        fig = Figures(impl)
        lab = self.lab
        lab.reset()
        capture = AdvertCapture(lab.socket("rs2", socket.AF_INET, socket.SOCK_RAW, 112), local=RS2)
        logs: dict[str, Path] = {}
        try:
            logs = {n: self.start(impl, n) for n in ("lvs1", "lvs2")}
            t0 = time.monotonic()
            # every real server in IPVS is not required: a lab CPU this busy may time a few out at any moment
            want = int(0.95 * (self.servers + 2))
            held_since: float | None = None
            held_count = -1
            last_print = t0
            while True:
                now = time.monotonic()
                counts = (self.ipvs_servers("lvs1"), self.ipvs_servers("lvs2"))
                changes = sum(len(transitions(impl, _tail(p, 0))) for p in logs.values())
                if now - t0 > CONVERGE:
                    fig.note = f"no convergence in {CONVERGE:.0f} s (lvs1 {self.holds('lvs1')}, lvs2 state " \
                               f"{self.state(impl, logs['lvs2'])}, IPVS {counts[0]}/{counts[1]} of " \
                               f"{self.servers + 2}, {changes} VRRP transitions)"
                    return fig
                for node in logs:
                    proc = lab.havs_proc(node)
                    if proc is None or proc.poll() is not None:
                        fig.note = f"{impl} on {node} exited: {logs[node]}"
                        return fig
                elected = (self.holds("lvs1") == (True, True) and self.holds("lvs2") == (False, False)
                           and self.state(impl, logs["lvs1"]) == "MASTER"
                           and self.state(impl, logs["lvs2"]) == "BACKUP" and min(counts) >= want)
                if not elected or changes != held_count:
                    held_since, held_count = (now, changes) if elected else (None, -1)
                elif now - held_since >= HOLD:  # elected, and no VRRP transition for HOLD seconds
                    break
                if now - last_print >= 20:
                    last_print = now
                    print(f"    converging +{now - t0:.0f}s: IPVS {counts[0]}/{counts[1]}, {changes} VRRP "
                          f"transitions so far, elected {elected}", flush=True)
                time.sleep(1.0)
            fig.startup_transitions = {n: len(transitions(impl, _tail(p, 0))) for n, p in logs.items()}
            fig.converged = time.monotonic() - t0
            time.sleep(2.0)  # past the last start-up line
            offsets = {n: p.stat().st_size for n, p in logs.items()}
            pids = {n: _tree(lab.havs_proc(n).pid) for n in logs}
            start = time.monotonic()
            cpu0 = {n: cpu(p) for n, p in pids.items()}
            k0 = read_count(self.counter)
            print(f"  {impl}: converged in {fig.converged:.1f} s; soaking {minutes:g} min", flush=True)
            end = start + minutes * 60
            while (now := time.monotonic()) < end:
                time.sleep(min(TICK, end - now))
                fig.loads.append(float(Path("/proc/loadavg").read_text().split()[0]))
                dead = [n for n in logs if lab.havs_proc(n) is None or lab.havs_proc(n).poll() is not None]
                seen = {n: transitions(impl, _tail(logs[n], offsets[n])) for n in logs}
                elapsed = time.monotonic() - start
                print(f"    +{elapsed:4.0f}s transitions lvs1 {len(seen['lvs1'])} lvs2 {len(seen['lvs2'])}, "
                      f"load {fig.loads[-1]:.2f}{', DEAD ' + ','.join(dead) if dead else ''}", flush=True)
                if dead:
                    fig.note = f"{','.join(dead)} exited during the soak"
                    break
            stop = time.monotonic()
            fig.minutes = (stop - start) / 60
            fig.checks_per_s = (read_count(self.counter) - k0) / (stop - start)
            for n, p in pids.items():
                fig.cpu[n] = (cpu(p) - cpu0[n]) / (stop - start)
                fig.rss[n] = rss_mb(p)
            for n in logs:
                tail = _tail(logs[n], offsets[n])
                fig.transitions[n] = transitions(impl, tail)
                fig.removed += removals(impl, tail)
                fig.overload_lines += tail.count("health.overload")
            fig.backup_adverts = len(capture.adverts(SOURCE["lvs2"], start, stop))
            heard = capture.adverts(SOURCE["lvs1"], start, stop)
            for (s0, _m0), (s1, m1) in itertools.pairwise(heard):
                fig.gaps.append(s1 - s0)
                if s1 - s0 >= max(fig.gaps):
                    fig.worst_at = m1 - start
            return fig
        finally:
            capture.close()
            for node in ("lvs1", "lvs2"):
                lab.stop_havs(node, signal.SIGTERM, timeout=10)
            for log in logs.values():
                with contextlib.suppress(OSError):
                    shutil.copy(log, OUT / log.name)


def _tail(path: Path, offset: int) -> str:
    with contextlib.suppress(OSError), open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")
    return ""


# ------------------------------------------------------------------------------------------------ inside
def inside(servers: int, advert: float, plan: list[tuple[str, float]]) -> int:
    from integration.topology import SeedLab, TopologyError

    OUT.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(FAST, ignore_errors=True)
    FAST.mkdir(parents=True)
    raise_fd_limit()
    for node in ("lvs1", "lvs2"):
        (FAST / f"state-{node}").mkdir()
        for name, text in ((f"havs-{node}.yaml", havs_config(node, servers, advert)),
                           (f"keepalived-{node}.conf", keepalived_config(node, servers, advert))):
            (FAST / name).write_text(text)
            (FAST / name).chmod(0o644)
            shutil.copy(FAST / name, OUT / name)
    try:
        lab = SeedLab(prefix="", workdir=FAST / "lab").up()
    except (TopologyError, subprocess.SubprocessError, OSError) as e:
        print(f"lab broke: {e}", flush=True)
        return 2
    counter = FAST / "count"
    # started here, not with lab.popen: reset() between the implementations must not stop the load
    web = subprocess.Popen(["ip", "netns", "exec", lab.ns("rs1"), sys.executable, "-m", "integration.bench_load",
                            "--inside", "--serve", str(servers), "--serve-host", RS1, "--counter", str(counter)],
                           stdout=subprocess.PIPE, text=True, start_new_session=True, cwd=REPO)
    figs: list[Figures] = []
    try:
        assert web.stdout is not None
        if web.stdout.readline().strip() != "listening":
            print("the load's web servers did not start", flush=True)
            return 2
        for impl, minutes in plan:
            print(f"{impl}: pair at {advert:g} s adverts, {servers} servers checked by each director ...", flush=True)
            figs.append(Soak(lab, servers, advert, counter).run(impl, minutes))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(web.pid, signal.SIGKILL)
        web.wait()
        lab.down()
    print(f"\n=== soak: VRRP pair at {advert:g} s adverts under {servers} HTTP checks/s per director "
          f"(answer and close), UML lab (one CPU) ===")
    print(report(figs, servers, advert), flush=True)
    print(f"logs and configs: {OUT}")
    return 0


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m integration.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--keepalived-minutes", type=float, help="default: --minutes")
    parser.add_argument("--servers", type=int, default=500)
    parser.add_argument("--advert", type=float, default=0.05)
    parser.add_argument("--impls", default="havs,keepalived")
    parser.add_argument("--inside", action="store_true", help="already inside the lab kernel")
    args = parser.parse_args(argv)
    impls = [i for i in args.impls.split(",") if i]
    if not impls or any(i not in ("havs", "keepalived") for i in impls):
        parser.error("--impls: havs and/or keepalived")
    kam = args.minutes if args.keepalived_minutes is None else args.keepalived_minutes
    plan = [(i, args.minutes if i == "havs" else kam) for i in impls]
    from integration.lab import in_uml, run_in_uml

    if args.inside or in_uml():
        return inside(args.servers, args.advert, plan)
    print(f"booting user-mode Linux for the soak ... (host load {_loadavg()}, {os.cpu_count()} cores)", flush=True)
    samples: list[tuple[float, float, float]] = []
    done = threading.Event()

    def sample() -> None:  # the host's load average while the lab runs: the machine is shared
        while not done.wait(10.0):
            one, five, fifteen = (float(x) for x in _loadavg().split())
            samples.append((one, five, fifteen))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    total = sum(m for _, m in plan)
    try:
        rc = run_in_uml(
            [sys.executable, "-m", "integration.soak", "--inside", "--servers", str(args.servers), "--advert",
             str(args.advert), "--minutes", str(args.minutes), "--keepalived-minutes", str(kam),
             "--impls", ",".join(impls)],
            timeout=total * 60 + len(plan) * (CONVERGE + 60) + 180,
        )
    finally:
        done.set()
        sampler.join(1)
    if samples:
        ones = [s[0] for s in samples]
        print(f"host load average (2 cores, shared) during the run, 1-min: min {min(ones):.2f} median "
              f"{statistics.median(ones):.2f} max {max(ones):.2f}; 15-min at the end {samples[-1][2]:.2f}", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
