"""Scale-out benchmark: three active directors behind a BIRD router with ECMP, announced over BGP + BFD by
havs, real servers in DR mode, in the UML lab (real IPVS). Prints figures, asserts nothing; ends with

    RESULT scaleout directors=3 spread=... crash_detect_s=... crash_failed=... survivors_broken=...
           add_broken=... drain_failed=... kill_withdraw_s=...

Phases, one lab: (1) spread: 4 client threads open a new connection every 20 ms for 5 s, each director's
IPVS counts the connections it scheduled; (2) 30 long-lived keep-alive connections ask every 100 ms from
here on; (3) add: a 4th director joins (ECMP re-hashes, flows move mid-connection); (4) crash: d1 frozen
whole with its links down, BFD must drop it; (5) drain: SIGTERM to d2's havs (withdraw, converge, stop);
(6) kill: kill -9 of d3's havs, its BIRD dies with it. Times come from `ip monitor route` on the router.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import signal
import sys
import time
from collections.abc import Iterator

from integration.ipmonitor import IpMonitor
from integration.scaleout import DIRECTORS, VIP, ScaleoutLab
from integration.scaleout_traffic import LongLivedPool, short_loops
from integration.waits import poll

FIRST = ("d1", "d2", "d3")


def scheduled(lab: ScaleoutLab, director: str) -> int:
    """Connections this director's IPVS has scheduled for the VIP (ipvsadm -Ln --stats: Conns)."""
    out = lab.exec(director, ["ipvsadm", "-Ln", "--stats"], check=False).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[0] == "TCP" and parts[1] == f"{VIP}:80":
            return int(parts[2])
    return 0


def route_change(mon: IpMonitor, after: float, timeout: float = 3.0) -> float | None:
    """Seconds from `after` to the router's first change of the VIP's route (the monitor's reader thread
    may lag behind the kernel in UML: wait for its line rather than read too early)."""

    def first() -> float | None:
        return next((t - after for t, line in mon.lines[:] if t >= after and line.startswith((VIP, f"Deleted {VIP}"))),
                    None)

    poll(lambda: first() is not None, timeout, 0.02)
    return first()


def failed_since(loops: list, since: float) -> int:  # type: ignore[type-arg]
    return sum(loop.stats(since).failures for loop in loops)


@contextlib.contextmanager
def lab_with_directors() -> Iterator[ScaleoutLab]:
    with ScaleoutLab() as lab:
        lab.start_web()
        lab.start_router(tuple(DIRECTORS))
        configs = lab.write_config(tuple(DIRECTORS))
        lab.configs = configs  # type: ignore[attr-defined]
        for d in FIRST:
            lab.start_havs(d, configs[d])
        took = lab.wait_nexthops(FIRST, 90, step=0.2)
        if took is None:
            hops = lab.nexthops()
            missing = [d for d in FIRST if f"10.20.0.{DIRECTORS[d]}" not in hops]
            raise RuntimeError(f"ECMP never formed: {hops}; router: {lab.router_cli('show protocols')}; "
                               + "; ".join(f"{d}: {lab.log(d)[-3000:]}" for d in missing))
        print(f"lab up; ECMP over {', '.join(FIRST)} {took:.1f} s after the daemons started", flush=True)
        yield lab


def report(lab: ScaleoutLab, mon: IpMonitor, loops: list, pool: LongLivedPool | None) -> None:  # type: ignore[type-arg]
    """What happened, in time order: the router's route changes, failed requests, broken connections and the
    directors' BGP and health events."""
    print("router route changes (s since the first client request):")
    first = min(s.start for loop in loops for s in loop.samples)
    for t, line in mon.lines:
        if VIP in line:
            print(f"  {t - first:8.3f} {' '.join(line.split())[:220]}")
    print("failed requests:")
    for loop in loops:
        for s in loop.samples:
            if not s.ok:
                print(f"  {s.start - first:8.3f} {s.body[:120]}")
    for c in (pool.broken() if pool is not None else []):
        print(f"  long-lived :{c.local_port} broke at {(c.when or first) - first:.3f}: {c.broken}")
    router_log = lab.workdir / "router" / "bird.log"
    if router_log.exists():
        print("router BIRD's log (state changes):")
        for line in router_log.read_text(errors="replace").splitlines():
            if any(w in line for w in ("BFD", "state changed", "Received", "Error", "down", "Down")):
                print("  " + line[11:])
    print("directors' events:")
    wall0 = time.time() - (time.monotonic() - first)
    for d in DIRECTORS:
        for e in lab.events(d):
            if e.get("event", "").startswith(("bgp.", "health.change", "daemon.error")):
                when = datetime.datetime.fromisoformat(e.get("timestamp", "").replace("Z", "+00:00")).timestamp()
                print(f"  {when - wall0:8.3f} {d} {e['event']} "
                      + " ".join(f"{k}={v}" for k, v in e.items() if k not in ("event", "timestamp", "node",
                                                                                "level")))


def show_lab(lab: ScaleoutLab) -> None:
    """The demo's opening: what the router and a director hold before anything happens."""
    print("\n$ birdc show protocols            # on the router: a BGP session (with BFD) per director")
    print(lab.router_cli("show protocols").split("\n", 1)[1].rstrip())
    print(f"\n$ ip route show {VIP}             # on the router: one ECMP route, a next hop per director")
    print(lab.exec("r", ["ip", "route", "show", f"{VIP}/32"]).stdout.rstrip())
    print("\n$ ipvsadm -Ln                      # on d1 (d2 and d3 hold the same table)")
    print(lab.exec("d1", ["ipvsadm", "-Ln"]).stdout.rstrip() + "\n", flush=True)


def inside(demo: bool = False) -> int:
    figures: dict[str, str] = {}
    with lab_with_directors() as lab:
        if demo:
            show_lab(lab)
        mon = IpMonitor(lab.ns("r"), "route")
        loops = short_loops(lab, VIP, n=2, period=0.05)
        # 1. spread
        before = {d: scheduled(lab, d) for d in FIRST}
        time.sleep(5)
        counts = {d: scheduled(lab, d) - before[d] for d in FIRST}
        total = sum(counts.values()) or 1
        shares = [counts[d] / total for d in FIRST]
        figures["spread"] = "/".join(f"{s:.2f}" for s in shares)
        print(f"spread: {counts} connections ({figures['spread']}); failed {failed_since(loops, 0)}", flush=True)
        pool = None
        try:
            # 2. long-lived connections
            pool = LongLivedPool(lab.ns("cl"), VIP, 16, period=0.25).start()
            time.sleep(1)
            # 3. a 4th director joins
            t = time.monotonic()
            lab.start_havs("d4", lab.configs["d4"])  # type: ignore[attr-defined]
            joined = lab.wait_nexthops((*FIRST, "d4"), 90, step=0.2)
            time.sleep(2)
            add_broken = len(pool.broken())
            figures["add_broken"] = str(add_broken)
            print(f"add: d4 in the ECMP route {joined:.1f} s after start; {add_broken} long-lived broken; "
                  f"failed {failed_since(loops, t)}" if joined is not None else "add: d4 never joined", flush=True)
            # 4. crash d1
            carriers = lab.carrier([c.local_port for c in pool.conns])
            on_d1 = {p for p, d in carriers.items() if d == "d1"}
            t = time.monotonic()
            lab.crash("d1")
            lab.wait_nexthops(("d2", "d3", "d4"), 30, step=0.05)
            detect = route_change(mon, t)
            time.sleep(3)
            crash_failed = failed_since(loops, t)
            survivors = [c for c in pool.broken() if c.local_port not in on_d1 and c.when and c.when >= t]
            figures.update(crash_detect_s=f"{detect:.3f}" if detect is not None else "none",
                           crash_failed=str(crash_failed), survivors_broken=str(len(survivors)))
            print(f"crash: d1 held {len(on_d1)} long-lived connections; router dropped it after "
                  f"{figures['crash_detect_s']} s; {crash_failed} requests failed; {len(survivors)} long-lived on "
                  "other directors broke; "
                  f"{len([c for c in pool.broken() if c.local_port in on_d1])} of d1's broke", flush=True)
            # 5. graceful drain of d2
            t = time.monotonic()
            lab.procs["d2"].send_signal(signal.SIGTERM)
            code = lab.procs["d2"].wait(30)
            gone = lab.wait_nexthops(("d3", "d4"), 10, step=0.05)
            time.sleep(2)
            drained = failed_since(loops, t)
            figures["drain_failed"] = str(drained)
            print(f"drain: d2's havs exited {code} after {time.monotonic() - t - 2:.2f} s; route moved after "
                  f"{route_change(mon, t)} s ({'ok' if gone is not None else 'NOT'}); {drained} requests failed; "
                  f"long-lived broken so far {len(pool.broken())}", flush=True)
            # 6. kill -9 of d3's havs
            t = time.monotonic()
            os.kill(lab.procs["d3"].pid, signal.SIGKILL)
            lab.wait_nexthops(("d4",), 10, step=0.05)
            withdraw = route_change(mon, t)
            time.sleep(1)
            figures["kill_withdraw_s"] = f"{withdraw:.3f}" if withdraw is not None else "none"
            print(f"kill -9: d3's routes withdrawn after {figures['kill_withdraw_s']} s; {failed_since(loops, t)} "
                  f"requests failed", flush=True)
        finally:
            if pool is not None:
                pool.stop()
            for loop in loops:
                loop.stop()
            mon.close()
            report(lab, mon, loops, pool)
    print("RESULT scaleout directors=3 " + " ".join(f"{k}={figures.get(k, 'none')}" for k in (
        "spread", "crash_detect_s", "crash_failed", "survivors_broken", "add_broken", "drain_failed",
        "kill_withdraw_s")), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m integration.bench_scaleout", description=__doc__.split("\n")[0])
    parser.add_argument("--inside", action="store_true", help="already inside the lab kernel")
    parser.add_argument("--demo", action="store_true", help="show the router's and a director's tables first")
    args = parser.parse_args(argv)
    from integration.lab import in_uml, run_in_uml

    if args.inside or in_uml():
        return inside(args.demo)
    print("booting user-mode Linux for the scale-out lab ...", flush=True)
    return run_in_uml([sys.executable, "-m", "integration.bench_scaleout", "--inside",
                       *(["--demo"] if args.demo else [])], timeout=600)


if __name__ == "__main__":
    sys.exit(main())
