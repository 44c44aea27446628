"""Dual-stack crash failover: IPv6 beside IPv4 in the same run, havs against keepalived 2.2.7, in the UML lab.
Prints figures, asserts nothing.

    python -m integration.bench_failover6 [--rounds 3] [--adverts 0.1] [--budget 300] [--impls havs,keepalived]

On the host it boots user-mode Linux once and runs itself inside (``--inside``). There, on the seed topology
made dual-stack (integration/seed.py: VIP 192.168.0.108 and fd00::108, gateway 192.168.72.130 and
fd72::130, real servers .128/.129 and fd72::128/129), for each round, advert interval and implementation:

* havs on lvs1 (priority 150) and lvs2 (100): two VRRPv3 instances in one sync group (RFC 9568: one instance
  per family), VI_4 with the IPv4 VIP and gateway, VI_6 with the IPv6 ones, heartbeat on eth1 for both
  (IPv6 from the link-local address to ff02::12), both links tracked, and the rr NAT service on port 80 of
  each VIP with the seed's HTTP check (integration/dualstack.py);
* keepalived, full daemon, at the same settings: a ``vrrp_sync_group`` of the same two ``vrrp_instance``s and
  a ``virtual_server`` per family with the same real servers and HTTP_GET checks.

Two clients request http://192.168.0.108/ and http://[fd00::108]/ every 50 ms each (0.25 s request timeout:
a request without an answer within it failed). Once steady (lvs1 holds the four addresses, lvs2 none, IPVS
on both, ten good answers in a row on each family), lvs1 is hard-crashed (kill -9 of its daemon and its
links down) right after lvs2 heard an IPv4 advert from lvs1. Per family, from that moment: the takeover
(both of the family's addresses on lvs2, from ``ip monitor address`` in lvs2), the neighbours (the client's
entry for the VIP and rs1's for the gateway show lvs2's MACs, from ``ip monitor neigh``), the client's
longest outage and failed requests. Logs stay in integration/out/bench_failover6.

An IPv6 address added ``nodad`` is usable at once, but the kernel announces it (RTM_NEWADDR, what ``ip
monitor`` prints) only from its DAD work item, which a busy UML CPU may run tens of ms later: the IPv6
takeover may trail the address's use, and the neighbours column (NA heard) can be the earlier one.

Exit status: 0 with the table; 2 if the lab itself broke (partial table still printed).
"""

from __future__ import annotations

import argparse
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from integration.adverts import AdvertCapture
from integration.bench_failover import havs_timeline
from integration.benchlib import LabBroken, cell, keepalived_real_servers, poll, ratio
from integration.client import ClientLoop
from integration.dualstack import FAMILY4, FAMILY6, SERVICE4, SERVICE6, write_configs
from integration.failover_report import PERIOD, REQUEST_TIMEOUT
from integration.ipmonitor import IpMonitor
from integration.seed import GATEWAY, GATEWAY6, REAL_SERVERS, REAL_SERVERS6, VIP, VIP6, VIP6_URL, VIP_URL

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "integration" / "out" / "bench_failover6"
IMPLS = ("havs", "keepalived")
FAMILIES = {  # family → (url, VIP CIDR, gateway CIDR)
    "IPv4": (VIP_URL, f"{VIP}/24", f"{GATEWAY}/24"),
    "IPv6": (VIP6_URL, f"{VIP6}/64", f"{GATEWAY6}/64"),
}
PRIORITY = {"lvs1": 150, "lvs2": 100}
LVS1_HEARTBEAT = "192.168.72.131"  # lvs1's eth1: the source of its IPv4 adverts
STEADY_RUN = 10  # good answers in a row before the crash, and after it to call the client recovered


class DualMonitor(IpMonitor):
    """`IpMonitor` for both families (``ip -o monitor`` without -4): address lines of IPv6 too."""

    _ADDR = re.compile(r"^(Deleted\s+)?\d+:\s+(\S+)\s+inet6?\s+(\S+)")

    def __init__(self, ns: str, obj: str) -> None:  # IpMonitor's, minus its -4
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(["ip", "-n", ns, "-o", "monitor", obj], stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, bufsize=0)
        self._thread = threading.Thread(target=self._read, name=f"ipmon-{ns}-{obj}", daemon=True)
        self._thread.start()

    def address(self, cidr: str, added: bool, after: float) -> float | None:
        for t, line in self._after(after):
            m = self._ADDR.match(line)
            if m and m.group(3) == cidr and (m.group(1) is None) == added:
                return t
        return None


# ------------------------------------------------------------------------------------------ configs
def keepalived_config(interval: float, node: str) -> str:
    def instance(name: str, family: str) -> str:
        _, vip, gw = FAMILIES[family]
        return f"""vrrp_instance {name} {{
    state BACKUP
    interface eth1
    virtual_router_id 51
    version 3
    priority {PRIORITY[node]}
    advert_int {interval:g}
    track_interface {{
        eth0
        eth1
    }}
    virtual_ipaddress {{
        {vip} dev eth0
        {gw} dev eth1
    }}
}}
"""

    def server(vip: str, reals: Sequence[str]) -> str:
        return f"""virtual_server {vip} 80 {{
    delay_loop 1
    lb_algo rr
    lb_kind NAT
    protocol TCP
{keepalived_real_servers(reals, retry=0)}}}
"""

    return (f"global_defs {{\n    router_id {node}\n}}\nvrrp_sync_group SG_1 {{\n    group {{\n        VI_4\n"
            f"        VI_6\n    }}\n}}\n" + instance("VI_4", "IPv4") + instance("VI_6", "IPv6")
            + server(VIP, list(REAL_SERVERS.values())) + server(VIP6, list(REAL_SERVERS6.values())))


# ------------------------------------------------------------------------------------------ a run
@dataclass
class Result:
    impl: str
    interval: float
    round: int
    takeover: dict[str, float] = field(default_factory=dict)  # family → s until both addresses on lvs2
    neigh: dict[str, float] = field(default_factory=dict)  # family → s until client and rs1 show lvs2's MACs
    outage: dict[str, float] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)
    after_advert: float | None = None  # both families on lvs2, minus lvs1's last IPv4 advert heard
    setup: str = ""
    timeline: str = ""  # havs: lvs2's first MASTER, address take and GARP burst logged, after the crash
    note: str = ""

    @property
    def ok(self) -> bool:
        return len(self.outage) == len(FAMILIES)

    @property
    def both(self) -> float | None:
        return max(self.takeover.values()) if len(self.takeover) == len(FAMILIES) else None


@dataclass
class Bench:
    lab: object  # SeedLab (imported inside UML only)
    budget_end: float
    results: list[Result] = field(default_factory=list)

    def addrs(self, node: str) -> set[str]:
        info = self.lab.ip_json(node, "addr", "show")  # type: ignore[attr-defined]
        return {f"{a['local']}/{a['prefixlen']}" for i in info for a in i.get("addr_info", [])}

    def holds(self, node: str) -> dict[str, bool]:
        have = self.addrs(node)
        return {f: vip in have and gw in have for f, (_, vip, gw) in FAMILIES.items()}

    def holds_any(self, node: str) -> bool:
        have = self.addrs(node)
        return any(vip in have or gw in have for _, vip, gw in FAMILIES.values())

    def ipvs_ready(self, node: str) -> bool:
        out = self.lab.exec(node, ["ipvsadm", "-Ln"], check=False).stdout  # type: ignore[attr-defined]
        return all(f"{ip}:80" in out for ip in REAL_SERVERS.values()) and all(
            f"[{ip}]:80" in out for ip in REAL_SERVERS6.values())

    def start(self, impl: str, interval: float, node: str, tag: str) -> Path:
        log = OUT / f"{tag}-{node}.log"
        if impl == "havs":
            self.lab.start_havs(node, OUT / f"havs-{interval:g}" / f"havs-{node}.yaml",  # type: ignore
                                log_path=log)
        else:
            pid = OUT / f"ka-{node}"
            argv = ["keepalived", "-n", "-l", "-D", "-G", "-f", str(OUT / f"keepalived-{interval:g}-{node}.conf"),
                    "-p", f"{pid}.pid", "-r", f"{pid}-vrrp.pid", "-c", f"{pid}-check.pid"]
            self.lab.start_daemon(node, argv, log)  # type: ignore[attr-defined]
        return log

    def run(self, impl: str, interval: float, rnd: int) -> Result:
        from integration.topology import TopologyError

        lab = self.lab
        res = Result(impl, interval, rnd)
        try:
            lab.reset()  # type: ignore[attr-defined]
        except (TopologyError, subprocess.SubprocessError, OSError) as e:
            raise LabBroken(f"reset failed: {e}") from e
        mon = DualMonitor(lab.ns("lvs2"), "address")  # type: ignore[attr-defined]
        neigh = {n: DualMonitor(lab.ns(n), "neigh") for n in ("client", "rs1")}  # type: ignore[attr-defined]
        sniff = AdvertCapture(lab.socket("lvs2", socket.AF_INET, socket.SOCK_RAW, 112))  # type: ignore
        clients: dict[str, ClientLoop] = {}
        t_start = time.monotonic()
        try:
            logs = {node: self.start(impl, interval, node, f"{impl}-{interval:g}-r{rnd}") for node in PRIORITY}
            mdi = 3 * interval + 1

            def elected() -> bool:
                return (all(self.holds("lvs1").values()) and not self.holds_any("lvs2")
                        and all(lab.havs_proc(n) is not None and lab.havs_proc(n).poll() is None  # type: ignore
                                for n in PRIORITY))

            # Elected, and still so a master-down interval later (a later start may win first, then yield).
            if poll(lambda: elected() and poll(lambda: not elected(), mdi, 0.1) is None, 30 + 2 * mdi, 0.1) is None:
                res.note = f"not elected: lvs1 {self.holds('lvs1')} lvs2 {self.holds('lvs2')}"
                return res
            t_elected = time.monotonic()
            if poll(lambda: self.ipvs_ready("lvs1") and self.ipvs_ready("lvs2"), 15, 0.2) is None:
                res.note = "IPVS not programmed on both directors in 15s"
                return res
            t_ipvs = time.monotonic()
            macs = {"client": lab.mac("lvs2", "eth0"), "rs1": lab.mac("lvs2", "eth1")}  # type: ignore
            clients = {f: ClientLoop(lab, url, period=PERIOD, timeout=REQUEST_TIMEOUT).start()  # type: ignore
                       for f, (url, _, _) in FAMILIES.items()}

            def good_run(since: float) -> bool:
                for c in clients.values():
                    tail = [x for x in c.samples if x.start >= since][-STEADY_RUN:]
                    if len(tail) < STEADY_RUN or not all(x.ok for x in tail):
                        return False
                return True

            if poll(lambda: good_run(0.0), 15, 0.05) is None:
                res.note = "clients never steady before the crash"
                return res
            res.setup = (f"setup: elected {t_elected - t_start:.1f}s, IPVS +{t_ipvs - t_elected:.1f}s, "
                         f"clients steady +{time.monotonic() - t_ipvs:.1f}s")
            if sniff.next_advert(LVS1_HEARTBEAT, 2 * interval + 1) is None:
                res.note += "no advert from lvs1 heard before the crash; "
            t0, wall0 = time.monotonic(), time.time()
            lab.crash("lvs1")  # type: ignore[attr-defined]
            # Event-driven on the monitor; `ip addr` only every 0.25 s as the fallback (UML has one CPU).
            ticks = [0]

            def taken() -> bool:
                ticks[0] += 1
                if all(mon.address(c, True, t0) is not None for _, vip, gw in FAMILIES.values() for c in (vip, gw)):
                    return True
                return ticks[0] % 25 == 0 and all(self.holds("lvs2").values())

            polled = poll(taken, mdi + 5, 0.01)
            for family, (_, vip, gw) in FAMILIES.items():
                adds = [mon.address(c, True, t0) for c in (vip, gw)]
                if adds[0] is not None and adds[1] is not None:
                    res.takeover[family] = max(adds[0], adds[1]) - t0
                elif polled is not None:
                    res.takeover[family] = polled
                    res.note += f"{family} takeover from the poll; "
            if polled is None:
                res.note += f"lvs2 did not get the four addresses in {mdi + 5:.1f}s; "
            elif res.both is not None:
                last = sniff.last_before(LVS1_HEARTBEAT, t0 + res.both)
                res.after_advert = None if last is None else t0 + res.both - last
            after = time.monotonic()
            if poll(lambda: good_run(after), 10, 0.05) is None:
                res.note += "clients not recovered in 10s; "
            for family, (_, vip, gw) in FAMILIES.items():
                st = clients[family].stats(since=t0)
                res.outage[family], res.failures[family], res.requests[family] = (
                    st.longest_outage, st.failures, st.requests)
                seen = [neigh["client"].neighbour(vip.split("/")[0], macs["client"], t0),
                        neigh["rs1"].neighbour(gw.split("/")[0], macs["rs1"], t0)]
                if seen[0] is not None and seen[1] is not None:
                    res.neigh[family] = max(seen[0], seen[1]) - t0
            if impl == "havs":
                res.timeline = havs_timeline(logs["lvs2"], wall0)
            return res
        finally:
            for c in clients.values():
                try:
                    c.stop()
                except Exception as e:  # a benchmark reports, never dies on its client
                    res.note += f"client loop error: {e}; "
            for m in (mon, *neigh.values()):
                m.close()
            sniff.close()
            for node in PRIORITY:
                lab.stop_havs(node, signal.SIGKILL, timeout=5)  # type: ignore[attr-defined]
            self.results.append(res)


# ------------------------------------------------------------------------------------------- table
def report(results: Sequence[Result], adverts: Sequence[float], impls: Sequence[str] = IMPLS) -> str:
    lines = [
        f"clients: GET {VIP_URL} and {VIP6_URL} every {PERIOD * 1000:.0f} ms each, request timeout "
        f"{REQUEST_TIMEOUT} s (no answer within it = failed)",
        "crash = kill -9 of lvs1's daemon + its links down, right after lvs2 heard an IPv4 advert from lvs1",
        "takeover = until the family's VIP and gateway are both on lvs2 (ip monitor address); "
        "both = the later family; advert->both = that minus lvs1's last IPv4 advert heard",
        "neighbours = until the client's entry for the VIP and rs1's for the gateway show lvs2's MACs "
        "(ARP for IPv4, unsolicited NA for IPv6); IPv6 takeover comes from the kernel's deferred RTM_NEWADDR "
        "(DAD work, even nodad) and may trail the address's first use",
        "cells: median [min-max] over rounds",
        "",
    ]
    head = (f"{'impl':<10} {'advert':<7} {'family':<6} {'n':>3}  {'takeover s':<22} {'neighbours s':<22} "
            f"{'outage s':<22} {'failed':<10}")
    lines += [head, "-" * len(head)]
    for interval in adverts:
        med: dict[tuple[str, str], float | None] = {}
        for impl in impls:
            rs = [r for r in results if (r.impl, r.interval) == (impl, interval)]
            ok = [r for r in rs if r.ok]
            n = f"{len(ok)}" + (f"/{len(rs)}" if len(ok) != len(rs) else "")
            for family in FAMILIES:
                take = [r.takeover[family] for r in ok if family in r.takeover]
                nb = [r.neigh[family] for r in ok if family in r.neigh]
                out = [r.outage[family] for r in ok]
                failed = [float(r.failures[family]) for r in ok]
                med[(impl, family)] = sorted(take)[len(take) // 2] if take else None
                lines.append(f"{impl:<10} {interval:<7g} {family:<6} {n:>3}  {cell(take, '.3f'):<22} "
                             f"{cell(nb, '.3f'):<22} {cell(out, '.3f'):<22} {cell(failed, 'g'):<10}")
            both = [b for r in ok if (b := r.both) is not None]
            adv = [r.after_advert for r in ok if r.after_advert is not None]
            lines.append(f"{impl:<10} {interval:<7g} {'both':<6} {n:>3}  {cell(both, '.3f'):<22} "
                         f"advert->both {cell(adv, '.3f')}")
        for family in FAMILIES if len(impls) == 2 else ():
            lines.append(f"{'havs/ka':<10} {interval:<7g} {family:<6} {'':>3}  "
                         f"{ratio(med[('havs', family)], med[('keepalived', family)]):<22}")
        lines.append("")
    for r in results:
        if r.setup or r.note:
            lines.append(f"  {r.impl} {r.interval:g}s round {r.round}: {r.setup} {r.note.strip('; ')}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- inside
def inside(rounds: int, adverts: Sequence[float], budget: float, impls: Sequence[str] = IMPLS) -> int:
    from havs.configfile import load_config
    from havs.core.config import select_node
    from integration.topology import SeedLab, TopologyError

    start = time.monotonic()
    OUT.mkdir(parents=True, exist_ok=True)
    for old in [*OUT.glob("*.log"), *OUT.glob("*.conf"), *OUT.glob("*.pid")]:
        old.unlink()
    for interval in adverts:
        cfg_dir = OUT / f"havs-{interval:g}"
        cfg_dir.mkdir(exist_ok=True)
        configs = write_configs(cfg_dir, [FAMILY4, FAMILY6], [SERVICE4, SERVICE6], {"SG_1": ["VI_4", "VI_6"]},
                                interval)
        for node, path in configs.items():
            if "havs" in impls:  # a config error is a broken benchmark: say so now
                select_node(load_config(str(path)), node, "")
            (OUT / f"keepalived-{interval:g}-{node}.conf").write_text(keepalived_config(interval, node))
    try:
        lab = SeedLab(prefix="", workdir=OUT / "lab", ipv6=True).up()
    except (TopologyError, subprocess.SubprocessError, OSError) as e:
        print(f"lab broke: {e}", flush=True)
        return 2
    bench = Bench(lab, start + budget)
    per_run: list[float] = []
    skipped = 0
    broke = ""
    try:
        for rnd in range(1, rounds + 1):
            for interval in adverts:
                for impl in impls:
                    if bench.budget_end - time.monotonic() < max(per_run[-4:], default=20.0):
                        skipped += 1
                        continue
                    t = time.monotonic()
                    r = bench.run(impl, interval, rnd)
                    per_run.append(time.monotonic() - t)
                    figures = "; ".join(
                        f"{f} takeover {r.takeover.get(f, float('nan')):.3f}s failed {r.failures.get(f, '-')}"
                        for f in FAMILIES)
                    print(f"  round {rnd} {impl:<10} {interval:g}s: {figures} ({per_run[-1]:.1f}s) {r.note}"
                          + (f"\n      lvs2 log: {r.timeline}" if r.timeline else ""), flush=True)
    except (LabBroken, TopologyError, subprocess.SubprocessError, OSError) as e:
        broke = f"{type(e).__name__}: {e}"
        print(f"lab broke: {broke}", flush=True)
    finally:
        lab.down()
    print(f"\n=== dual-stack crash failover: havs vs keepalived 2.2.7, UML lab, {rounds} round(s), "
          f"{time.monotonic() - start:.0f}s ===")
    if skipped:
        print(f"({skipped} run(s) skipped to stay within the {budget:.0f}s budget)")
    print(report(bench.results, adverts, impls), flush=True)
    print(f"\nlogs and configs: {OUT}")
    if broke:
        print(f"INCOMPLETE: the lab broke ({broke})")
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m integration.bench_failover6",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--adverts", default="0.1", help="advert intervals in seconds (VRRPv3: IPv6 needs it)")
    parser.add_argument("--budget", type=float, default=300.0,
                        help="seconds for all runs inside the lab; runs that would not fit are skipped")
    parser.add_argument("--impls", default=",".join(IMPLS), help="havs, keepalived or both (default)")
    parser.add_argument("--inside", action="store_true", help="already inside the lab kernel")
    args = parser.parse_args(argv)
    adverts = [float(x) for x in args.adverts.split(",") if x.strip()]
    impls = [x for x in IMPLS if x in args.impls.split(",")]
    if not impls:
        parser.error(f"--impls: one or more of {', '.join(IMPLS)}")
    from integration.lab import in_uml, run_in_uml

    if args.inside or in_uml():
        return inside(args.rounds, adverts, args.budget, impls)
    print("booting user-mode Linux for the dual-stack failover benchmark ...", flush=True)
    return run_in_uml(
        [sys.executable, "-m", "integration.bench_failover6", "--inside", "--rounds", str(args.rounds),
         "--adverts", args.adverts, "--budget", str(args.budget), "--impls", ",".join(impls)],
        timeout=args.budget + 240,
    )


if __name__ == "__main__":
    sys.exit(main())
