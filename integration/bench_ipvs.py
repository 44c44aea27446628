"""Benchmark: havs's IPVS reconciler against ipvsadm, inside the UML lab. Prints figures, asserts nothing.

    python -m integration.lab run -- python -m integration.bench_ipvs [--services 1000] [--dests 10] [--rounds 5]

1. From empty: `ipvsadm -R` of the rules vs one havs pass (dump + diff + apply), flushed in between.
2. A no-change pass (dump + diff) vs `ipvsadm -Sn` (and -Ln).
3. One weight change: the pass sends exactly one netlink op; its time.
Ratios are havs / ipvsadm within the same round (UML timings drift between runs).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import time
from dataclasses import replace

from havs.core.ipvs_diff import diff
from havs.core.ipvs_format import format_save
from havs.core.ipvs_table import Destination, IpvsTable, Service, ServiceKey
from havs.edge.ipvs import IpvsSocket


def build(services: int, dests: int) -> IpvsTable:
    entries = []
    for i in range(services):
        key = ServiceKey.tcp(f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}", 80)
        ds = [Destination.at(f"192.168.{j}.{i % 250 + 1}", 8000 + i // 250, weight=1) for j in range(dests)]
        entries.append((Service(key, "wlc"), ds))
    return IpvsTable(entries)


def timed_cmd(argv: list[str], stdin: str | None = None) -> float:
    t = time.perf_counter()
    subprocess.run(argv, input=stdin, text=True, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


async def main(services: int, dests: int, rounds: int) -> None:
    t = time.perf_counter()
    desired = build(services, dests)
    t_build = time.perf_counter() - t
    rules = format_save(desired)
    n_ops = services * (dests + 1)
    ipvs = IpvsSocket()
    await ipvs.open()
    rows: dict[str, list[float]] = {}

    def rec(name: str, value: float) -> None:
        rows.setdefault(name, []).append(value)

    for _ in range(rounds):
        await ipvs.flush()
        rec("ipvsadm -R (from empty)", timed_cmd(["ipvsadm", "-R"], rules))
        rec("ipvsadm -Sn", timed_cmd(["ipvsadm", "-Sn"]))
        rec("ipvsadm -Ln", timed_cmd(["ipvsadm", "-Ln"]))

        await ipvs.flush()
        t0 = time.perf_counter()
        actual = await ipvs.dump()
        ops = diff(actual, desired)
        t1 = time.perf_counter()
        results = await ipvs.apply(ops)
        t2 = time.perf_counter()
        assert len(ops) == n_ops and not any(e for _o, e in results)
        rec("havs pass from empty (dump+diff+apply)", t2 - t0)
        rec("  of which apply", t2 - t1)

        t0 = time.perf_counter()
        actual = await ipvs.dump()
        t1 = time.perf_counter()
        ops = diff(actual, desired)
        t2 = time.perf_counter()
        assert ops == [] and actual == desired
        rec("havs no-change pass (dump+diff)", t2 - t0)
        rec("  of which dump", t1 - t0)
        rec("  of which diff", t2 - t1)

        key = next(iter(desired))
        entry = desired[key]
        first = next(iter(entry.destinations.values()))
        changed = IpvsTable(
            (e.service, [replace(d, weight=5) if (k == key and d == first) else d for d in e.destinations.values()])
            for k, e in desired.items())
        before = ipvs.ops_sent
        t0 = time.perf_counter()
        actual = await ipvs.dump()
        ops = diff(actual, changed)
        t1 = time.perf_counter()
        await ipvs.apply(ops)
        t2 = time.perf_counter()
        rec("one weight change: netlink ops", ipvs.ops_sent - before)
        rec("one weight change: apply", t2 - t1)
        rec("one weight change: whole pass", t2 - t0)
        await ipvs.apply(diff(await ipvs.dump(), desired))

    await ipvs.flush()
    ipvs.close()

    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"\nIPVS benchmark: {services} services x {dests} destinations = {n_ops} ops, {rounds} rounds "
          f"(median; building the desired table took {t_build:.3f} s)\n")
    print(f"{'what':<42} {'median':>10} {'runs':>30}")
    for k, v in rows.items():
        if k.endswith("ops"):
            print(f"{k:<42} {med[k]:>10.0f} {' '.join(f'{x:.0f}' for x in v):>30}")
        else:
            print(f"{k:<42} {med[k]:>9.3f}s {' '.join(f'{x:.3f}' for x in v):>30}")
    r1 = [a / b for a, b in zip(rows["havs pass from empty (dump+diff+apply)"], rows["ipvsadm -R (from empty)"],
                                strict=True)]
    r2 = [a / b for a, b in zip(rows["havs no-change pass (dump+diff)"], rows["ipvsadm -Sn"], strict=True)]
    print("\nratios (per round, havs / ipvsadm):")
    print(f"  from empty vs ipvsadm -R : {' '.join(f'{x:.2f}' for x in r1)}  (target <= 1.0)")
    print(f"  no-change vs ipvsadm -Sn : {' '.join(f'{x:.2f}' for x in r2)}  (target <= 1.5)")
    print(f"  one weight change        : {med['one weight change: netlink ops']:.0f} op(s) "
          f"(target 1), apply {med['one weight change: apply'] * 1000:.2f} ms")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--dests", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    asyncio.run(main(a.services, a.dests, a.rounds))
