"""Failover benchmark: havs against keepalived 2.2.7, side by side in the UML lab. Prints figures, asserts nothing.

    python -m integration.bench_failover [--rounds 3] [--adverts 1,0.1] [--phase worst|random] [--budget 320]

On the host it boots user-mode Linux once and runs itself inside (``--inside``). There, for each round,
advert interval and implementation, on the seed topology (integration/topology.py, reset between runs):

* havs on lvs1 (priority 150) and lvs2 (100) with etc/havs.yaml, ``vrrp.version`` and
  ``vrrp.advert_interval`` replaced (whole seconds -> VRRPv2 as keepalived's default, else VRRPv3); each
  director gets its own control socket and state dir (both share one filesystem in the lab);
* keepalived, full daemon (VRRP + checker): one ``vrrp_instance`` holding both addresses (VIP on eth0,
  gateway on eth1; heartbeat on eth1, both links tracked) like havs's one instance, and a
  ``virtual_server`` block with the same rr/NAT service, real servers and HTTP GET checks, so keepalived
  programs IPVS itself on both directors as havs does.

A client requests the VIP every 50 ms (ClientLoop, 0.25 s request timeout: a request without an answer
within 0.25 s is a failure). Once steady (lvs1 MASTER with both addresses, lvs2 BACKUP, IPVS on both, ten
good answers in a row), the master is either hard-crashed (kill -9 of the daemon's process group and its
links down: ``lab.crash``) or stopped gracefully (SIGTERM to the daemon). The crash comes right after lvs2
heard an advert from lvs1 (a raw protocol-112 socket in lvs2), so every round waits a full master-down
interval and rounds are comparable (``--phase random``: a random point of the interval instead).
Measured from that moment:

* both addresses on lvs2: from ``ip monitor address`` in lvs2 (timestamped as the lines arrive; an
  ``ip -j addr`` poll every 0.25 s is the fallback: a 10 ms one would load UML's single CPU); for a crash
  also from lvs1's last advert heard (phase-free);
* gap (graceful stop): lvs2 holds both addresses minus lvs1 dropped its first one (> 0: nobody held it);
* neighbours: the client's ARP entry for the VIP and rs1's for the gateway show lvs2's MACs (ip monitor);
* the client's outage (LoopStats.longest_outage) and failed requests, until ten good answers in a row;
* per run (printed as it goes): setup times, failed requests' start and error, and for havs lvs2's own
  log (MASTER, addresses taken, GARP burst) relative to the event. Logs stay in integration/out/bench_failover.

Exit status: 0 with the table; 2 if the lab itself broke (partial table still printed).
"""

from __future__ import annotations

import argparse
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from integration.adverts import AdvertCapture
from integration.benchlib import LabBroken, edit_seed_config, keepalived_real_servers, poll
from integration.failover_report import (
    IMPLS,
    PERIOD,
    REQUEST_TIMEOUT,
    SCENARIOS,
    Result,
    failure_kind,
    report,
    vrrp_version,
)
from integration.ipmonitor import IpMonitor
from integration.logs import read_events

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "integration" / "out" / "bench_failover"
VIP_CIDR = "192.168.0.108/24"
GW_CIDR = "192.168.72.130/24"
PRIORITY = {"lvs1": 150, "lvs2": 100}
REAL = ("192.168.72.128", "192.168.72.129")
LVS1_HEARTBEAT = "192.168.72.131"  # lvs1's eth1: the source of its adverts
STEADY_RUN = 10  # good answers in a row that make the client "steady" (before) and "recovered" (after)


# ------------------------------------------------------------------------------------------ configs
def havs_config(interval: float, node: str) -> str:
    subs = {
        r"(?m)^(\s+version:)\s*\d+": rf"\g<1> {vrrp_version(interval)}",
        r"(?m)^(\s+advert_interval:)\s*[\d.]+": rf"\g<1> {interval:g}",
        r"(?m)^(\s+control_socket:)\s*\S+": rf"\g<1> {OUT / 'run' / f'control-{node}.sock'}",  # apart from the configs
        r"(?m)^(\s+state_dir:)\s*\S+": rf"\g<1> {OUT / f'state-{node}'}",
    }
    return edit_seed_config(subs)


def keepalived_config(interval: float, node: str) -> str:
    reals = keepalived_real_servers(REAL, retry=0)
    return f"""global_defs {{
    router_id {node}
}}
vrrp_instance VI_1 {{
    state BACKUP
    interface eth1
    virtual_router_id 51
    version {vrrp_version(interval)}
    priority {PRIORITY[node]}
    advert_int {interval:g}
    track_interface {{
        eth0
        eth1
    }}
    virtual_ipaddress {{
        {VIP_CIDR} dev eth0
        {GW_CIDR} dev eth1
    }}
}}
virtual_server 192.168.0.108 80 {{
    delay_loop 1
    lb_algo rr
    lb_kind NAT
    protocol TCP
{reals}}}
"""


# ------------------------------------------------------------------------------------------ a run
def havs_timeline(log: Path, wall0: float) -> str:
    """lvs2's MASTER transition, address take and first GARP log lines, relative to the event."""
    marks: list[str] = []
    seen: set[str] = set()
    for ev in read_events(log):
        at = ev.get("_t", -1.0) - wall0
        key = {"vrrp.state": f"state {ev.get('to')}", "vrrp.addresses": f"addresses {ev.get('action')}",
               "vrrp.garp": "garp burst done"}.get(str(ev.get("event")))
        if at < 0 or key is None or key in seen:
            continue
        seen.add(key)
        marks.append(f"{key} +{at:.3f}")
    return ", ".join(marks)


@dataclass
class Bench:
    lab: object  # SeedLab (imported inside UML only)
    budget_end: float
    phase: str = "worst"
    results: list[Result] = field(default_factory=list)

    # ---- lab views
    def addrs(self, node: str) -> set[str]:
        info = self.lab.ip_json(node, "-4", "addr", "show")  # type: ignore[attr-defined]
        return {f"{a['local']}/{a['prefixlen']}" for i in info for a in i.get("addr_info", [])}

    def holds(self, node: str) -> tuple[bool, bool]:
        a = self.addrs(node)
        return VIP_CIDR in a, GW_CIDR in a

    def ipvs_ready(self, node: str) -> bool:
        out = self.lab.exec(node, ["ipvsadm", "-Ln"], check=False).stdout  # type: ignore[attr-defined]
        return all(f"{ip}:80" in out for ip in REAL)

    def state(self, impl: str, log: Path) -> str | None:
        """The daemon's latest VRRP state, from its log."""
        if impl == "keepalived":
            found = re.findall(r"Entering (\w+) STATE", log.read_text(errors="replace") if log.exists() else "")
            return found[-1] if found else None
        states = [str(e.get("to")) for e in read_events(log) if e.get("event") == "vrrp.state"]
        return states[-1] if states else None

    # ---- daemons
    def start(self, impl: str, interval: float, node: str, tag: str) -> Path:
        log = OUT / f"{tag}-{node}.log"
        if impl == "havs":
            cfg = OUT / f"havs-{interval:g}-{node}.yaml"
            self.lab.start_havs(node, cfg, log_path=log)  # type: ignore[attr-defined]
        else:
            cfg = OUT / f"keepalived-{interval:g}-{node}.conf"
            pid = OUT / f"ka-{node}"
            argv = ["keepalived", "-n", "-l", "-D", "-G", "-f", str(cfg), "-p", f"{pid}.pid",
                    "-r", f"{pid}-vrrp.pid", "-c", f"{pid}-check.pid"]
            self.lab.start_daemon(node, argv, log)  # type: ignore[attr-defined]
        return log

    # ---- one run
    def run(self, impl: str, interval: float, scenario: str, rnd: int) -> Result:
        from integration.topology import ClientLoop, TopologyError

        lab = self.lab
        res = Result(impl, interval, scenario, rnd)
        tag = f"{impl}-{interval:g}-{scenario}-r{rnd}"
        try:
            lab.reset()  # type: ignore[attr-defined]
        except (TopologyError, subprocess.SubprocessError, OSError) as e:
            raise LabBroken(f"reset failed: {e}") from e
        mons = {n: IpMonitor(lab.ns(n), "address") for n in ("lvs1", "lvs2")}  # type: ignore[attr-defined]
        neigh = {n: IpMonitor(lab.ns(n), "neigh") for n in ("client", "rs1")}  # type: ignore[attr-defined]
        sniff = AdvertCapture(lab.socket("lvs2", socket.AF_INET, socket.SOCK_RAW, 112))  # type: ignore
        t_start = time.monotonic()
        client = None
        try:
            logs = {n: self.start(impl, interval, n, tag) for n in ("lvs1", "lvs2")}
            mdi = 3 * interval + 1
            settle = 25 + 2 * mdi

            def elected() -> bool:
                return (self.holds("lvs1") == (True, True) and self.holds("lvs2") == (False, False)
                        and self.state(impl, logs["lvs2"]) == "BACKUP"
                        and all(lab.havs_proc(n) is not None and lab.havs_proc(n).poll() is None  # type: ignore
                                for n in ("lvs1", "lvs2")))

            if poll(elected, settle, 0.1) is None:
                res.note = (f"not elected in {settle:.0f}s: lvs1 {self.holds('lvs1')} lvs2 {self.holds('lvs2')} "
                            f"lvs2 state {self.state(impl, logs['lvs2'])}")
                return res
            t_elected = time.monotonic()
            if poll(lambda: self.ipvs_ready("lvs1") and self.ipvs_ready("lvs2"), 15, 0.2) is None:
                res.note = "IPVS not programmed on both directors in 15s"
                return res
            t_ipvs = time.monotonic()
            macs = {"client": lab.mac("lvs2", "eth0"), "rs1": lab.mac("lvs2", "eth1")}  # type: ignore
            client = ClientLoop(lab, period=PERIOD, timeout=REQUEST_TIMEOUT).start()

            def good_run(since: float) -> bool:
                s = [x for x in client.samples if x.start >= since]
                tail = s[-STEADY_RUN:]
                return len(tail) == STEADY_RUN and all(x.ok for x in tail)

            if poll(lambda: good_run(0.0), 10, 0.05) is None:
                res.note = "client never steady before the event"
                return res
            if self.holds("lvs1") != (True, True):
                res.note = "lvs1 lost its addresses before the event"
                return res

            t_steady = time.monotonic()
            res.setup = (f"setup: elected {t_elected - t_start:.1f}s, IPVS +{t_ipvs - t_elected:.1f}s, "
                         f"client steady +{t_steady - t_ipvs:.1f}s")
            if scenario == "crash":
                if sniff.next_advert(LVS1_HEARTBEAT, 2 * interval + 1) is None:
                    res.note += "no advert from lvs1 heard before the crash; "
                elif self.phase == "random":
                    time.sleep(random.uniform(0, interval))
            t0, wall0 = time.monotonic(), time.time()
            proc = lab.havs_proc("lvs1")  # type: ignore[attr-defined]
            if scenario == "crash":
                lab.crash("lvs1")  # type: ignore[attr-defined]
            else:
                proc.send_signal(signal.SIGTERM)
            # Event-driven on the monitor (cheap); an `ip -j addr` poll only every 0.25 s as the fallback: UML
            # has one CPU, and a 10 ms stream of `ip` processes would slow the daemons being measured.
            ticks = [0]

            def taken() -> bool:
                ticks[0] += 1
                if all(mons["lvs2"].address(c, True, t0) is not None for c in (VIP_CIDR, GW_CIDR)):
                    return True
                return ticks[0] % 25 == 0 and self.holds("lvs2") == (True, True)

            polled = poll(taken, mdi + 5, 0.01)
            if scenario == "sigterm":
                try:
                    proc.wait(10)
                    res.exit = f"exit {proc.returncode} after {time.monotonic() - t0:.2f}s"
                except subprocess.TimeoutExpired:
                    res.note += f"lvs1 {impl} still running 10s after SIGTERM; "
                lab.stop_havs("lvs1", timeout=2)  # type: ignore[attr-defined]
            # Monitor lines may trail the poll by a moment.
            adds: list[float | None] = [None, None]
            for _ in range(50):
                adds = [mons["lvs2"].address(c, True, t0) for c in (VIP_CIDR, GW_CIDR)]
                if all(x is not None for x in adds) or polled is None:
                    break
                time.sleep(0.01)
            if adds[0] is not None and adds[1] is not None:
                res.takeover, res.source = max(adds[0], adds[1]) - t0, "monitor"
                res.vip_gw = (adds[0] - t0, adds[1] - t0)
            elif polled is not None:
                res.takeover, res.source = polled, "poll"
            else:
                res.note += f"lvs2 did not get both addresses in {mdi + 5:.1f}s; "
            if scenario == "crash" and res.takeover is not None:
                last = sniff.last_before(LVS1_HEARTBEAT, t0 + res.takeover)
                if last is not None:
                    res.after_advert = t0 + res.takeover - last
            if scenario == "sigterm":
                p0 = sniff.resign(LVS1_HEARTBEAT, t0)
                res.resigned = None if p0 is None else p0 - t0
                dels = [mons["lvs1"].address(c, False, t0) for c in (VIP_CIDR, GW_CIDR)]
                first_del = min((d for d in dels if d is not None), default=None)
                if first_del is not None:
                    res.released = first_del - t0
                    if res.takeover is not None:
                        res.gap = res.takeover - res.released
            after = time.monotonic()
            if poll(lambda: good_run(after), 10, 0.05) is None:
                res.note += "client not recovered in 10s; "
            st = client.stats(since=t0)
            res.outage, res.failures, res.requests = st.longest_outage, st.failures, st.requests
            follow = [neigh["client"].neighbour(VIP_CIDR.split("/")[0], macs["client"], t0),
                      neigh["rs1"].neighbour(GW_CIDR.split("/")[0], macs["rs1"], t0)]
            if follow[0] is not None and follow[1] is not None:
                res.neigh = max(follow[0], follow[1]) - t0
            res.failed_at = [(x.start - t0, failure_kind(x.body)) for x in client.samples
                             if x.start >= t0 and not x.ok]
            if impl == "havs":
                res.timeline = havs_timeline(logs["lvs2"], wall0)
            return res
        finally:
            if client is not None:
                try:
                    client.stop()
                except Exception as e:  # a benchmark reports, never dies on its client
                    res.note += f"client loop error: {e}; "
            for m in [*mons.values(), *neigh.values()]:
                m.close()
            sniff.close()
            # kill -9 what is left: a graceful stop of a lone havs waits a master-down interval for a peer
            # (3.6 s at 1 s adverts), time the benchmark does not need to spend; reset() cleans up after.
            for node in ("lvs1", "lvs2"):
                lab.stop_havs(node, signal.SIGKILL, timeout=5)  # type: ignore[attr-defined]
            self.results.append(res)


# ------------------------------------------------------------------------------------------- inside
def inside(rounds: int, adverts: Sequence[float], budget: float, phase: str) -> int:
    from havs.configfile import load_config
    from havs.core.config import select_node
    from integration.topology import SeedLab, TopologyError

    start = time.monotonic()
    OUT.mkdir(parents=True, exist_ok=True)
    for old in [*OUT.glob("*.log"), *OUT.glob("*.yaml"), *OUT.glob("*.conf"), *OUT.glob("*.pid")]:
        old.unlink()
    for interval in adverts:
        for node in PRIORITY:
            (OUT / f"state-{node}").mkdir(exist_ok=True)
            (OUT / "run").mkdir(exist_ok=True)
            path = OUT / f"havs-{interval:g}-{node}.yaml"
            path.write_text(havs_config(interval, node))
            select_node(load_config(str(path)), node, "")  # a config error is a broken benchmark, say so now
            (OUT / f"keepalived-{interval:g}-{node}.conf").write_text(keepalived_config(interval, node))
    try:
        lab = SeedLab(prefix="", workdir=OUT / "lab").up()
    except (TopologyError, subprocess.SubprocessError, OSError) as e:
        print(f"lab broke: {e}", flush=True)
        return 2
    bench = Bench(lab, start + budget, phase)
    per_run: list[float] = []
    skipped = 0
    broke = ""
    try:
        for rnd in range(1, rounds + 1):
            for interval in adverts:
                for impl in IMPLS:
                    for scenario in SCENARIOS:
                        left = bench.budget_end - time.monotonic()
                        est = max(per_run[-4:], default=15.0)
                        if left < est:
                            skipped += 1
                            continue
                        t = time.monotonic()
                        r = bench.run(impl, interval, scenario, rnd)
                        per_run.append(time.monotonic() - t)
                        took = f"{r.takeover:.3f}s" if r.takeover is not None else "-"
                        out = f"{r.outage:.3f}s" if r.outage is not None else "-"
                        print(f"  round {rnd} {impl:<10} {interval:g}s {scenario:<7}: takeover {took} "
                              f"outage {out} failed {r.failures} of {r.requests} ({per_run[-1]:.1f}s) {r.note}",
                              flush=True)
                        if r.detail():
                            print(f"      {r.detail()}", flush=True)
    except (LabBroken, TopologyError, subprocess.SubprocessError, OSError) as e:
        broke = f"{type(e).__name__}: {e}"
        print(f"lab broke: {broke}", flush=True)
    finally:
        lab.down()
    print(f"\n=== failover: havs vs keepalived 2.2.7, UML lab, {rounds} round(s), crash phase {phase}, "
          f"{time.monotonic() - start:.0f}s ===")
    if skipped:
        print(f"({skipped} run(s) skipped to stay within the {budget:.0f}s budget)")
    print(report(bench.results, adverts), flush=True)
    print(f"\nlogs and configs: {OUT}")
    if broke:
        print(f"INCOMPLETE: the lab broke ({broke})")
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m integration.bench_failover", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--adverts", default="1,0.1", help="advert intervals in seconds (whole seconds: VRRPv2)")
    parser.add_argument("--budget", type=float, default=320.0,
                        help="seconds for all runs inside the lab; runs that would not fit are skipped")
    parser.add_argument("--phase", choices=("worst", "random"), default="worst",
                        help="crash right after an advert (worst: a full master-down interval, comparable "
                        "rounds) or at a random point of the advert interval")
    parser.add_argument("--inside", action="store_true", help="already inside the lab kernel")
    args = parser.parse_args(argv)
    adverts = [float(x) for x in args.adverts.split(",") if x.strip()]
    from integration.lab import in_uml, run_in_uml

    if args.inside or in_uml():
        return inside(args.rounds, adverts, args.budget, args.phase)
    print("booting user-mode Linux for the failover benchmark ...", flush=True)
    return run_in_uml(
        [sys.executable, "-m", "integration.bench_failover", "--inside", "--rounds", str(args.rounds),
         "--adverts", args.adverts, "--budget", str(args.budget), "--phase", args.phase],
        timeout=args.budget + 240,
    )


if __name__ == "__main__":
    sys.exit(main())
