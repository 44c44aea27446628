"""Failback benchmark: havs (catch-up before preemption) against keepalived 2.2.7 with `lvs_sync_daemon`, in
the drill of integration/test_failback_uml.py. Prints figures, asserts nothing.

lvs1 (MASTER, priority 150) loses power; lvs2 takes over; 10 s later lvs1's namespace is built again (empty
IPVS and connection tables) and its daemon starts and preempts. Three HTTP/1.1 keep-alive connections
through the VIP: a request every 0.1 s, every 12 s and every 60 s. Printed per implementation: the busy
connection's longest stall around the failback, lvs1's start → takeover, and whether each connection
survived (its first error otherwise). Both run connection sync on eth1 with sync id 51; advert 0.1 s.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from integration.benchlib import keepalived_real_servers

PRIORITY = {"lvs1": 150, "lvs2": 100}
REAL = ("192.168.72.128", "192.168.72.129")
PERIODS = (0.1, 12.0, 60.0)


def keepalived_config(node: str) -> str:
    return f"""global_defs {{
    router_id {node}
    lvs_sync_daemon eth1 VI_1 id 51
}}
vrrp_instance VI_1 {{
    state BACKUP
    interface eth1
    virtual_router_id 51
    version 3
    priority {PRIORITY[node]}
    advert_int 0.1
    track_interface {{
        eth0
        eth1
    }}
    virtual_ipaddress {{
        192.168.0.108/24 dev eth0
        192.168.72.130/24 dev eth1
    }}
}}
virtual_server 192.168.0.108 80 {{
    delay_loop 1
    lb_algo rr
    lb_kind NAT
    protocol TCP
{keepalived_real_servers(REAL, retry=0)}}}
"""


def keepalived_starter(lab: object, out: Path) -> Callable[[str], Path]:
    runs = iter(range(1000))

    def start(node: str) -> Path:
        cfg = out / f"keepalived-{node}.conf"
        cfg.write_text(keepalived_config(node))
        n = next(runs)
        log, pid = out / f"keepalived-{node}-{n}.log", out / f"ka-{node}-{n}"
        argv = ["keepalived", "-n", "-l", "-D", "-G", "-f", str(cfg), "-p", f"{pid}.pid",
                "-r", f"{pid}-vrrp.pid", "-c", f"{pid}-check.pid"]
        lab.start_daemon(node, argv, log)  # type: ignore[attr-defined]
        return log

    return start


def inside(impls: list[str]) -> int:
    from integration.logs import log_events
    from integration.test_failback_uml import havs_starter, run_failback
    from integration.topology import SeedLab

    lab = SeedLab(prefix="", workdir=Path(tempfile.mkdtemp(prefix="bench-failback-"))).up()
    rows = []
    try:
        for impl in impls:
            out = Path(tempfile.mkdtemp(prefix=f"failback-{impl}-"))
            lab.reset()
            start = (havs_starter(lab, out, "{interface: server, sync_id: 51}") if impl == "havs"
                     else keepalived_starter(lab, out))

            def synced() -> bool:
                return lab.exec("lvs2", ["ipvsadm", "-Lnc"]).stdout.count("ESTABLISHED") >= len(PERIODS)

            r = run_failback(lab, out, start, periods=PERIODS, synced=synced)
            catchup = ""
            if impl == "havs":
                done = log_events(r.lvs1_log, "sync.catchup_done")
                catchup = f" (catch-up {done[0]['reason']} in {float(done[0]['waited']):.2f}s," \
                          f" {done[0]['entries']} entries)" if done else " (no catch-up event)"
            fates = []
            for c in r.conns:
                fates.append(f"{c.name}: " + ("kept" if not c.errors else f"BROKEN ({c.errors[0][1]})"))
            rows.append((impl, r.busy_stall, r.start_to_takeover, fates, catchup))
            print(f"{impl}: stall {r.busy_stall:.2f}s, start→takeover {r.start_to_takeover:.2f}s{catchup}; "
                  + "; ".join(fates), flush=True)
            shutil.rmtree(out, ignore_errors=True)
    finally:
        lab.down()
    print("\n=== failback: lvs1 back after 10 s with empty tables, UML lab, advert 0.1 s ===")
    print(f"{'impl':<11} {'busy stall':>10} {'start→takeover':>15}  connections")
    for impl, stall, took, fates, catchup in rows:
        print(f"{impl:<11} {stall:>9.2f}s {took:>14.2f}s  {', '.join(fates)}{catchup}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m integration.bench_failback", description=__doc__.split("\n")[0])
    parser.add_argument("--impls", default="havs,keepalived")
    parser.add_argument("--inside", action="store_true", help="already inside the lab kernel")
    args = parser.parse_args(argv)
    impls = [x for x in args.impls.split(",") if x]
    from integration.lab import in_uml, run_in_uml

    if args.inside or in_uml():
        return inside(impls)
    print("booting user-mode Linux for the failback benchmark ...", flush=True)
    return run_in_uml([sys.executable, "-m", "integration.bench_failback", "--inside", "--impls", args.impls],
                      timeout=600)


if __name__ == "__main__":
    sys.exit(main())
