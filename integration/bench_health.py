"""Health-check throughput on one core: havs's probe vs a plain aiohttp ClientSession, asyncio vs uvloop.

    .venv/bin/python -m integration.bench_health [--servers 10000] [--seconds 10] [--listeners 100]

One server process (uvloop when installed, a minimal keep-alive HTTP/1.1 responder) listens on
`--listeners` ports of 127.0.0.1. Each variant runs in a fresh client process with N real servers
(127.1.x.y in the config, checked through `connect_address: 127.0.0.1` / `connect_port` spread over
the listeners), interval 1 s, so the offered load is N checks/s. Per variant it prints the checks/s
achieved, process CPU µs per check, CPU utilisation of the client core, and RSS. Prints figures,
asserts nothing. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

from integration.benchlib import raise_fd_limit
from integration.okserver import has_uvloop, use_loop


def _cpu() -> tuple[float, float]:
    """(user, system) CPU seconds of this process: system time is the kernel's TCP work on loopback."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime


def _maybe_freeze() -> None:
    # long-lived objects (connections, parsers, tasks) out of the cyclic GC's way: full collections
    # otherwise rescan every one of them and cost ~30 µs per check at 10,000 servers
    if os.environ.get("BENCH_GC_FREEZE") == "1":
        gc.collect()
        gc.freeze()


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# ------------------------------------------------------------------------------------------------ clients


def _services(n: int, ports: list[int]) -> list[Any]:
    from havs.core.model import VirtualService

    real_servers = [
        {
            "address": f"127.1.{i // 250}.{i % 250 + 1}",
            "port": 80,
            "check": {"type": "http", "interval": 1.0, "timeout": 0.9, "jitter": 0.1, "rise": 2, "fall": 2,
                      "connect_address": "127.0.0.1", "connect_port": ports[i % len(ports)]},
        }
        for i in range(n)
    ]
    return [VirtualService.model_validate({"address": "127.0.0.100", "port": 80, "real_servers": real_servers})]


async def _run_havs(n: int, ports: list[int], seconds: float, warmup: float) -> tuple[int, float, float]:
    from havs.health_service import HealthService

    class Quiet:
        def info(self, *a: Any, **k: Any) -> None: ...
        error = debug = info

    hs = HealthService(_services(n, ports), log=Quiet(), on_change=lambda change: None,
                       gc_freeze=os.environ.get("BENCH_GC_FREEZE") != "0")  # on by default, as in the daemon
    hs.start()
    await asyncio.sleep(warmup)
    r0, t0, k0 = _cpu(), time.monotonic(), hs.checks_run
    await asyncio.sleep(seconds)
    r1, t1, k1 = _cpu(), time.monotonic(), hs.checks_run
    reasons: dict[str, int] = {}
    for servers in hs.snapshot().values():
        for s in servers.values():
            reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
    print(json.dumps({"last_reasons": reasons}), file=sys.stderr, flush=True)
    await hs.stop()
    return k1 - k0, (r1[0] - r0[0]) / (t1 - t0), (r1[1] - r0[1]) / (t1 - t0)


async def _run_aiohttp(n: int, ports: list[int], seconds: float, warmup: float) -> tuple[int, float, float]:
    import random

    import aiohttp

    count = 0
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, force_close=False, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=0.9)
    session = aiohttp.ClientSession(connector=connector, timeout=timeout)

    async def one(i: int) -> None:
        nonlocal count
        # a distinct Host per server so each keeps its own connection, as havs does
        url = f"http://127.0.0.1:{ports[i % len(ports)]}/"
        headers = {"Host": f"rs{i}"}
        loop = asyncio.get_running_loop()
        await asyncio.sleep(random.random())
        while True:
            start = loop.time()
            try:
                async with session.get(url, headers=headers) as resp:
                    await resp.read()
                    _ok = 200 <= resp.status < 400
            except (aiohttp.ClientError, TimeoutError):
                pass
            count += 1
            await asyncio.sleep(max(0.0, start + 1.0 * (0.9 + 0.2 * random.random()) - loop.time()))

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    await asyncio.sleep(warmup)
    _maybe_freeze()
    r0, t0, k0 = _cpu(), time.monotonic(), count
    await asyncio.sleep(seconds)
    r1, t1, k1 = _cpu(), time.monotonic(), count
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await session.close()
    return k1 - k0, (r1[0] - r0[0]) / (t1 - t0), (r1[1] - r0[1]) / (t1 - t0)


def _client(variant: str, loop_name: str, n: int, ports: list[int], seconds: float) -> None:
    raise_fd_limit()
    use_loop(loop_name)
    run = _run_havs if variant == "havs" else _run_aiohttp
    checks, user, system = asyncio.run(run(n, ports, seconds, warmup=2.5))
    per_check = seconds / max(checks, 1) * 1e6
    print(json.dumps({
        "variant": variant, "loop": loop_name, "servers": n, "checks_per_s": checks / seconds,
        "cpu_us_per_check": (user + system) * per_check, "user_us_per_check": user * per_check,
        "sys_us_per_check": system * per_check, "cpu_share": user + system, "rss_mb": _rss_mb(),
    }), flush=True)


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", type=int, nargs="+", default=[2000, 10000])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--listeners", type=int, default=100)
    ap.add_argument("--variants", nargs="+", default=["havs:uvloop", "havs:asyncio", "aiohttp:uvloop",
                                                       "aiohttp:asyncio"])
    ap.add_argument("--gc-freeze", action="store_true",
                    help="gc.freeze() in the aiohttp clients too (havs freezes by default)")
    ap.add_argument("--client", help=argparse.SUPPRESS)
    ap.add_argument("--ports", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.client:
        variant, loop_name = args.client.split(":")
        _client(variant, loop_name, args.servers[0], json.loads(args.ports), args.seconds)
        return

    me = [sys.executable, "-m", "integration.bench_health"]
    if args.gc_freeze:
        os.environ["BENCH_GC_FREEZE"] = "1"
    server = subprocess.Popen([sys.executable, "-m", "integration.okserver", "127.0.0.1", "--until-stdin-eof",
                               "--ports", *["0"] * args.listeners], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert server.stdout is not None
        ports = server.stdout.readline().removeprefix("listening").strip()
        print(f"server pid {server.pid}: {args.listeners} listeners on 127.0.0.1, "
              f"{'uvloop' if has_uvloop() else 'asyncio'}; cores: {os.cpu_count()}")
        print(f"{'variant':<16}{'servers':>8}{'checks/s':>10}{'CPU µs/check':>14}{'(user+sys)':>14}"
              f"{'client CPU':>12}{'RSS MB':>8}  last results (havs)")
        for n in args.servers:
            for spec in args.variants:
                if spec.endswith(":uvloop") and not has_uvloop():
                    continue
                out = subprocess.run([*me, "--client", spec, "--servers", str(n), "--seconds", str(args.seconds),
                                      "--ports", ports], capture_output=True, text=True, check=False)
                if out.returncode != 0:
                    print(f"{spec:<16}{n:>8}  failed: {out.stderr.strip().splitlines()[-1:]}")
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                split = f"{r['user_us_per_check']:.0f}+{r['sys_us_per_check']:.0f}"
                last = [json.loads(line) for line in out.stderr.splitlines() if line.startswith('{"last_reasons"')]
                reasons = last[0]["last_reasons"] if last else {}
                print(f"{spec:<16}{n:>8}{r['checks_per_s']:>10.0f}{r['cpu_us_per_check']:>14.1f}{split:>14}"
                      f"{r['cpu_share'] * 100:>11.0f}%{r['rss_mb']:>8.0f}  {reasons or ''}", flush=True)
    finally:
        if server.stdin:
            server.stdin.close()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()
