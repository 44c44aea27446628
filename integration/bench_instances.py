"""Eight VRRP instances in one VRRP child: does each keep advertising on time? Prints figures, asserts nothing.

    .venv/bin/python -m integration.bench_instances [--instances 8] [--advert 0.1] [--seconds 10] [--checks 2000]

Host kernel, network namespaces (root). On the seed topology (integration/topology.py, no web servers) lvs1
runs its VRRP child alone (`integration.vrrp_parent`: the daemon's `VrrpProcess`, no IPVS) with
``--instances`` instances (router ids 51..., one VIP each on the client LAN, heartbeat on eth1, all on one
raw socket), every one MASTER at its own priority (200, 201, ...), so each instance's adverts are told
apart by their priority. They are captured in lvs2's namespace (no daemon there) with the kernel's receive
timestamps (integration.adverts). Scenarios, ``--seconds`` each:

  idle   nothing else runs;
  checks a health-check load on the same machine: havs's own HealthService (integration.bench_health's
         client, uvloop) checking ``--checks`` servers every second against a local keep-alive HTTP server;
  churn  instance 1 is knocked back and forth (a fake peer advertises priority 254 for it for 0.5 s every
         1.5 s: instance 1 releases its address, takes it back, sends its GARP burst and runs its notify
         hook, a 0.3 s sleep); its own adverts are left out, the others' are what this measures — and the
         health-check load runs too.

Per scenario and instance: adverts, median / p99 / worst gap (ms), worst - interval, and whether the worst is
within interval + 20 ms (bench_heartbeat's target). The machine is shared: the figures include its noise.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from integration.adverts import AdvertCapture, AdvertSender, Gaps
from integration.benchlib import poll, proc_cpu, raise_fd_limit
from integration.topology import SeedLab

REPO = Path(__file__).resolve().parent.parent
LVS1_HB, LVS2_HB = "192.168.72.131", "192.168.72.132"
PROTO_VRRP = 112
SLACK = 0.020
PRIORITY0 = 200


def config(n: int, advert: float, notify: Path) -> str:
    instances = "\n".join(f"""\
  - name: VI_{i + 1}
    router_id: {51 + i}
    priority: {{lvs1: {PRIORITY0 + i}, lvs2: 100}}
    advert_interval: {advert}
    interface: server
    addresses: [{{address: 192.168.0.{120 + i}/24, interface: client}}]
    garp: {{burst: 5, burst_interval: 0.02, refresh: 10}}
    notify: {{master: [/bin/sh, -c, 'sleep 0.3; echo $HAVS_INSTANCE >> {notify}'], timeout: 5}}""" for i in range(n))
    return f"""\
nodes:
  lvs1: {{priority: 150, interfaces: {{client: eth0, server: eth1}}}}
  lvs2: {{priority: 100, interfaces: {{client: eth0, server: eth1}}}}
vrrp:
{instances}
"""


class Load:
    """integration.bench_health's havs client: ``checks`` servers checked every second, on this machine."""

    def __init__(self, checks: int, seconds: float) -> None:
        self.server = subprocess.Popen([sys.executable, "-m", "integration.okserver", "127.0.0.1", "--until-stdin-eof",
                                        "--ports", *["0"] * 50], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True, cwd=REPO)
        assert self.server.stdout is not None
        ports = self.server.stdout.readline().removeprefix("listening").strip()
        self.client = subprocess.Popen([sys.executable, "-m", "integration.bench_health", "--client", "havs:uvloop",
                                        "--servers", str(checks), "--seconds", str(seconds), "--ports", ports],
                                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)

    def result(self) -> str:
        out, _ = self.client.communicate(timeout=120)
        if self.server.stdin:
            self.server.stdin.close()
        self.server.wait(10)
        try:
            r = json.loads(out.strip().splitlines()[-1])
            return f"{r['checks_per_s']:.0f} checks/s, {r['cpu_share'] * 100:.0f}% of a core"
        except (ValueError, IndexError, KeyError):
            return "health-check load: no figures"


def churn(lab: SeedLab, advert: float, stop: threading.Event) -> list[tuple[float, float]]:
    """A fake peer wins instance 1 for 0.5 s every 1.5 s; returns instance 1's silent windows (monotonic)."""
    sender = AdvertSender(lab.ns("lvs2"), "eth1", LVS2_HB, advert, 3, 51, ["192.168.0.120"], priority=254)
    windows: list[tuple[float, float]] = []
    try:
        while not stop.is_set():
            a, b = sender.advertise(0.5)
            windows.append((a, b + 4 * advert + 0.5))  # instance 1 is silent until it takes over again
            stop.wait(1.0)
    finally:
        sender.close()
    return windows


def vrrp_child(parent: int) -> int | None:
    """The VRRP child's pid: the one child of the `vrrp_parent` process."""
    try:
        with open(f"/proc/{parent}/task/{parent}/children") as f:
            kids = [int(k) for k in f.read().split()]
    except OSError:
        return None
    return kids[0] if kids else None


def measure(capture: AdvertCapture, n: int, t0: float, t1: float, excluded: dict[int, list[tuple[float, float]]],
            ) -> dict[int, Gaps]:
    time.sleep(0.3)  # adverts stamped before t1 may still be on their way to the capture thread
    out = {}
    for i in range(n):
        heard = [(h.stamp, h.mono) for h in list(capture.heard)
                 if h.source == LVS1_HB and h.priority == PRIORITY0 + i and t0 <= h.mono <= t1]
        out[i] = Gaps.of(heard, excluded.get(i, []), t0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, default=8)
    ap.add_argument("--advert", type=float, default=0.1)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--checks", type=int, default=2000)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    raise_fd_limit()
    n, advert = args.instances, args.advert
    rows: list[tuple[str, dict[int, Gaps], str]] = []
    with SeedLab() as lab:
        cfg = lab.workdir / "instances.yaml"
        notify = lab.workdir / "notify"
        cfg.write_text(config(n, advert, notify))
        log = lab.workdir / "vrrp-lvs1.log"
        parent = lab.popen("lvs1", [sys.executable, "-m", "integration.vrrp_parent", str(cfg), "lvs1"], log,
                           cwd=str(REPO))
        capture = AdvertCapture(lab.socket("lvs2", socket.AF_INET, socket.SOCK_RAW, PROTO_VRRP), LVS2_HB)
        try:
            def all_master() -> bool:
                recent = {h.priority for h in list(capture.heard)[-4 * n:] if h.source == LVS1_HB}
                return recent >= {PRIORITY0 + i for i in range(n)}

            if poll(all_master, 15, 0.05) is None:
                print(f"lvs1 never advertised every instance; log:\n{log.read_text()[-3000:]}", file=sys.stderr)
                return 1
            time.sleep(1.0)
            child = vrrp_child(parent.pid) or parent.pid

            def cpu_since(c0: float, t0: float) -> str:
                return f"VRRP child CPU {(proc_cpu(child) - c0) / (time.monotonic() - t0) * 100:.1f}%"

            t0, c0 = time.monotonic(), proc_cpu(child)
            time.sleep(args.seconds)
            idle_cpu = cpu_since(c0, t0)
            rows.append(("idle", measure(capture, n, t0, time.monotonic(), {}), idle_cpu))

            load = Load(args.checks, args.seconds)
            time.sleep(2.5)  # bench_health's warm-up
            t0, c0 = time.monotonic(), proc_cpu(child)
            time.sleep(args.seconds)
            t1, used = time.monotonic(), cpu_since(c0, t0)
            rows.append(("checks", measure(capture, n, t0, t1, {}), f"{used}; {load.result()}"))

            load = Load(args.checks, args.seconds)
            time.sleep(2.5)
            hooks0 = len(notify.read_text().splitlines()) if notify.exists() else 0
            stop, windows = threading.Event(), []
            flapper = threading.Thread(target=lambda: windows.extend(churn(lab, advert, stop)), daemon=True)
            t0, c0 = time.monotonic(), proc_cpu(child)
            flapper.start()
            time.sleep(args.seconds)
            stop.set()
            flapper.join(5)
            t1, used = time.monotonic(), cpu_since(c0, t0)
            time.sleep(0.5)  # the last hook (0.3 s) finishes
            hooks = (len(notify.read_text().splitlines()) if notify.exists() else 0) - hooks0
            rows.append(("churn", measure(capture, n, t0, t1, {0: [(t0, t1)]}),
                         f"{used}; {load.result()}; instance 1 knocked back {len(windows)} times, "
                         f"{hooks} master hooks run"))
        finally:
            capture.close()
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait(5)
    print(f"\n{n} instances in one VRRP child, adverts every {advert * 1000:.0f} ms, {args.seconds:.0f} s per "
          f"scenario; target: worst gap <= {(advert + SLACK) * 1000:.0f} ms; cores: {os.cpu_count()}")
    print(f"{'scenario':<8}{'instance':>9}{'adverts':>8}{'median':>10}{'p99':>8}{'worst':>9}{'worst-int':>10}"
          f"{'target':>8}")
    for name, gaps, note in rows:
        for i, g in gaps.items():
            if name == "churn" and i == 0:
                print(f"{name:<8}{'VI_1':>9}  knocked back on purpose: not measured")
                continue
            print(f"{name:<8}{f'VI_{i + 1}':>9}{g.cells(advert, SLACK)}")
        worst = max((max(g.gaps) for g in gaps.values() if g.gaps), default=0.0)
        print(f"{name:<8}{'all':>9}  worst {worst * 1000:.1f} ms{'; ' + note if note else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
