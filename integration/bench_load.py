"""Health checks under load: havs against keepalived 2.2.7 in the UML lab, back to back in one run.
Prints figures, asserts nothing.

    python -m integration.bench_load [--servers 500] [--seconds 30] [--small 2]

On the host it boots user-mode Linux once (one slow virtual CPU: every syscall is expensive, as on a
director whose CPU the kernel's forwarding also wants) and runs itself inside (``--inside``). There:

* one web server process (this module, ``--serve``) listens on ``--servers`` ports of 127.0.0.1 and answers
  every request ``200 ok`` with ``Connection: close`` and closes, as keepalived's checks expect; it counts
  the requests it answered (checks/s is what the servers saw, for both implementations alike);
* for each implementation in turn (keepalived first, then havs; the IPVS table is cleared between): one
  virtual service 10.99.0.1:80 (rr, NAT) with the servers 127.0.0.1:PORT, HTTP check of /, interval 1 s,
  timeout 1 s: havs ``check: {interval: 1, timeout: 1, rise: 2, fall: 2}`` with ``initial_health: down``
  (every server must earn its place, as keepalived's default ``alpha``-less start does not: keepalived
  starts servers up), keepalived ``delay_loop 1`` with ``HTTP_GET { connect_timeout 1 retry 1
  delay_before_retry 1 }``;
* convergence: every server in IPVS (read from /proc/net/ip_vs), at most 60 s; then ``--seconds`` of
  measurement: servers removed (havs ``health.change`` to down, keepalived ``Removing service``) at
  start-up and in the window, checks/s, CPU seconds per second of all the implementation's processes,
  RSS of all of them; then 5 s under ``strace -c -f`` for syscalls per check (strace slows the process:
  that window is not part of the others);
* the same again with ``--small`` servers for the RSS at 2 servers.

The machine's load average is printed next to every figure: other work on the host makes CPU figures noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from integration.benchlib import proc_cpu, raise_fd_limit

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "integration" / "out" / "bench_load"
BASE_PORT = 20000
IMPLS = ("keepalived", "havs")
CONVERGE = 60.0
STRACE_SECONDS = 5.0
# keepalived's side: delay_loop 1, connect_timeout 1, retry 1 (keepalived_virtual_server)
CHECK = {"type": "http", "path": "/", "interval": 1, "timeout": 1, "rise": 2, "fall": 2}
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


# ------------------------------------------------------------------------------------------- servers
def serve(n: int, counter: Path, host: str = "127.0.0.1") -> int:
    """The real servers: n listeners on host:BASE_PORT.., answer and close, count. Runs in its own process
    (--serve; integration/soak.py runs it in a real server's namespace with --serve-host)."""
    import asyncio

    from integration.okserver import has_uvloop, use_loop

    class Closer(asyncio.Protocol):
        count = 0

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t: asyncio.Transport = transport  # type: ignore[assignment]

        def data_received(self, data: bytes) -> None:
            if b"\r\n\r\n" in data:
                Closer.count += 1
                self.t.write(RESPONSE)
                self.t.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for i in range(n):
            await loop.create_server(Closer, host, BASE_PORT + i, backlog=1024, reuse_address=True)
        print("listening", flush=True)
        while True:
            counter.with_suffix(".tmp").write_text(f"{Closer.count} {time.monotonic()}")
            counter.with_suffix(".tmp").replace(counter)
            await asyncio.sleep(0.25)

    raise_fd_limit()
    use_loop("uvloop" if has_uvloop() else "asyncio")
    asyncio.run(main())
    return 0


def read_count(counter: Path) -> int:
    with contextlib.suppress(OSError, ValueError):
        return int(counter.read_text().split()[0])
    return 0


# ------------------------------------------------------------------------------------------- configs
def havs_config(n: int) -> str:
    servers = "".join(f"      - {{address: 127.0.0.1, port: {BASE_PORT + i}}}\n" for i in range(n))
    return f"""settings:
  control_socket: {OUT / 'run' / 'control.sock'}
  state_dir: {OUT / 'state'}
  initial_health: down
  reconcile_interval: 5
nodes:
  lab:
    interfaces: {{client: lo}}
virtual_services:
  - address: 10.99.0.1
    port: 80
    scheduler: rr
    forwarding: nat
    check: {json.dumps(CHECK)}
    real_servers:
{servers}"""


def havs_service(n: int, host: str, vip: str, port: int) -> dict[str, object]:
    """The same service as havs_config's, as a config mapping: n real servers host:BASE_PORT.. (soak.py)."""
    return {"address": vip, "port": port, "scheduler": "rr", "forwarding": "nat", "check": dict(CHECK),
            "real_servers": [{"address": host, "port": BASE_PORT + i} for i in range(n)]}


def keepalived_config(n: int) -> str:
    return f"""global_defs {{
    router_id lab
}}
{keepalived_virtual_server(n)}"""


def keepalived_virtual_server(n: int, host: str = "127.0.0.1", vip: str = "10.99.0.1", port: int = 80) -> str:
    """keepalived's virtual_server with n real servers host:BASE_PORT.. checked as havs checks them."""
    reals = "".join(f"""    real_server {host} {BASE_PORT + i} {{
        weight 1
        HTTP_GET {{
            url {{
                path /
                status_code 200
            }}
            connect_timeout 1
            retry 1
            delay_before_retry 1
        }}
    }}
""" for i in range(n))
    return f"""virtual_server {vip} {port} {{
    delay_loop 1
    lb_algo rr
    lb_kind NAT
    protocol TCP
{reals}}}
"""


# ------------------------------------------------------------------------------------------- measures
def ipvs_count() -> int:
    with contextlib.suppress(OSError), open("/proc/net/ip_vs") as f:
        return sum(1 for line in f if line.lstrip().startswith("->") and "Forward" not in line)
    return -1


def tree(pid: int) -> list[int]:
    """pid and its descendants."""
    out = [pid]
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            out += tree(int(child))
    return out


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return total * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu(pids: list[int]) -> float:
    return sum(c for c in (proc_cpu(p) for p in pids) if c == c)


def removals(impl: str, log: Path) -> int:
    text = log.read_text(errors="replace") if log.exists() else ""
    if impl == "keepalived":
        return len(re.findall(r"Removing service", text))
    n = 0
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            d = json.loads(line)
            n += d.get("event") == "health.change" and d.get("to") == "down"
    return n


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass
class Figures:
    impl: str
    servers: int
    converged: float | None = None
    removed_start: int = 0
    removed_after: int = 0
    checks_per_s: float = 0.0
    cpu_per_s: float = 0.0
    rss: float = 0.0
    syscalls_per_check: float | None = None
    syscalls: list[tuple[str, int]] = field(default_factory=list)  # strace's table: name, calls
    checks_traced: int = 0
    overload: str = ""
    load: list[str] = field(default_factory=list)


def strace_calls(pids: list[int], seconds: float) -> tuple[int, list[tuple[str, int]]]:
    """Total syscalls of `pids` over `seconds` (strace -c), and each syscall's count, most first."""
    argv = ["strace", "-c", "-f", "-S", "calls"]
    for p in pids:
        argv += ["-p", str(p)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(seconds)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return 0, [("strace hung", 0)]
    total, top = 0, []
    for line in err.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1] == "total":
            total = int(parts[3])
        elif len(parts) >= 5 and parts[0][0].isdigit():
            top.append((parts[-1], int(parts[3])))
    return total, top


def run_impl(impl: str, n: int, seconds: float, counter: Path, measure: bool) -> Figures:
    fig = Figures(impl, n)
    subprocess.run(["ipvsadm", "-C"], check=False)
    log = OUT / f"{impl}-{n}.log"
    if impl == "havs":
        cfg = OUT / f"havs-{n}.yaml"
        cfg.write_text(havs_config(n))
        argv = [str(REPO / ".venv" / "bin" / "havs"), "run", "-c", str(cfg), "--node", "lab", "--log-format", "json"]
    else:
        cfg = OUT / f"keepalived-{n}.conf"
        cfg.write_text(keepalived_config(n))
        argv = ["keepalived", "-C", "-n", "-l", "-D", "-G", "-f", str(cfg), "-p", str(OUT / "ka.pid"),
                "-c", str(OUT / "ka-check.pid")]
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < CONVERGE:
            if proc.poll() is not None:
                raise RuntimeError(f"{impl} exited {proc.returncode}: {log}")
            if ipvs_count() >= n:
                fig.converged = time.monotonic() - t0
                break
            time.sleep(0.1)
        time.sleep(2.0)  # past the first full round
        pids = tree(proc.pid)
        fig.rss = rss_mb(pids)
        fig.removed_start = removals(impl, log)
        fig.load.append(loadavg())
        if not measure:
            return fig
        c0, k0, w0 = cpu(pids), read_count(counter), time.monotonic()
        time.sleep(seconds)
        pids = tree(proc.pid)
        c1, k1, w1 = cpu(pids), read_count(counter), time.monotonic()
        fig.load.append(loadavg())
        fig.checks_per_s = (k1 - k0) / (w1 - w0)
        fig.cpu_per_s = (c1 - c0) / (w1 - w0)
        fig.rss = max(fig.rss, rss_mb(pids))
        fig.removed_after = removals(impl, log) - fig.removed_start
        text = log.read_text(errors="replace")
        fig.overload = f"{len(re.findall(r'health.overload', text))} overload lines" if impl == "havs" else ""
        k2 = read_count(counter)
        calls, fig.syscalls = strace_calls(pids, STRACE_SECONDS)
        k3 = read_count(counter)
        fig.checks_traced = k3 - k2
        fig.syscalls_per_check = calls / (k3 - k2) if k3 > k2 else None
        return fig
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        subprocess.run(["ipvsadm", "-C"], check=False)


def report(big: list[Figures], small: list[Figures]) -> str:
    by = {f.impl: f for f in big}
    sm = {f.impl: f for f in small}
    rows = [("", *IMPLS, "target")]

    def row(name: str, fmt: object, target: str) -> None:
        rows.append((name, *(fmt(by[i]) if i in by else "-" for i in IMPLS), target))  # type: ignore[operator]

    n = big[0].servers if big else 0
    row("converged (all servers in IPVS), s", lambda f: f"{f.converged:.1f}" if f.converged else "never", "")
    row("healthy servers removed at start-up", lambda f: str(f.removed_start), "0")
    row("healthy servers removed after", lambda f: str(f.removed_after), "0")
    row(f"checks/s of {n} offered", lambda f: f"{f.checks_per_s:.0f} ({f.checks_per_s / n:.0%})", ">= 95%")
    row("CPU seconds per second", lambda f: f"{f.cpu_per_s:.3f}", "<= keepalived")
    row("CPU ms per check", lambda f: f"{1000 * f.cpu_per_s / f.checks_per_s:.2f}" if f.checks_per_s else "-", "")
    row("syscalls per check (strace -c)",
        lambda f: f"{f.syscalls_per_check:.1f}" if f.syscalls_per_check else "-", "")
    row(f"RSS all processes, {n} servers, MB", lambda f: f"{f.rss:.0f}", "")
    rows.append((f"RSS all processes, {small[0].servers if small else '?'} servers, MB",
                 *(f"{sm[i].rss:.0f}" if i in sm else "-" for i in IMPLS), "<= 50"))
    row("load average (1 5 15) around the window", lambda f: " / ".join(f.load), "")
    widths = [max(len(str(r[c])) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    for f in big:
        per = ", ".join(f"{name} {calls / f.checks_traced:.2f}" for name, calls in f.syscalls if f.checks_traced)
        lines.append(f"{f.impl} syscalls per check: {per}")
        if f.overload:
            lines.append(f"havs: {f.overload}")
    return "\n".join(lines)


def inside(n: int, seconds: float, small_n: int) -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "run").mkdir(exist_ok=True)
    (OUT / "state").mkdir(exist_ok=True)
    raise_fd_limit()
    counter = OUT / "count"
    counter.unlink(missing_ok=True)
    web = subprocess.Popen([sys.executable, "-m", "integration.bench_load", "--serve", str(n), "--inside"],
                           stdout=subprocess.PIPE, text=True, start_new_session=True)
    big: list[Figures] = []
    small: list[Figures] = []
    try:
        assert web.stdout is not None
        if web.stdout.readline().strip() != "listening":
            print("web servers did not start", flush=True)
            return 2
        for impl in IMPLS:
            print(f"{impl}: {n} servers ... (load {loadavg()})", flush=True)
            big.append(run_impl(impl, n, seconds, counter, measure=True))
        for impl in IMPLS:
            print(f"{impl}: {small_n} servers ... (load {loadavg()})", flush=True)
            small.append(run_impl(impl, small_n, seconds, counter, measure=False))
    except RuntimeError as e:
        print(f"INCOMPLETE: {e}", flush=True)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(web.pid, signal.SIGKILL)
        web.wait()
    print(f"\n=== health checks under load, UML lab (one CPU), {n} servers, interval 1 s, {seconds:.0f} s after "
          f"convergence; keepalived then havs in the same run ===")
    print(report(big, small), flush=True)
    print(f"logs and configs: {OUT}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m integration.bench_load", description=__doc__.split("\n")[0])
    parser.add_argument("--servers", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--small", type=int, default=2)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-host", default="127.0.0.1", help=argparse.SUPPRESS)
    parser.add_argument("--counter", type=Path, default=OUT / "count", help=argparse.SUPPRESS)
    parser.add_argument("--inside", action="store_true", help="already inside the lab kernel")
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.serve, args.counter, args.serve_host)
    from integration.lab import in_uml, run_in_uml

    if args.inside or in_uml():
        return inside(args.servers, args.seconds, args.small)
    # inside, the load average is the UML kernel's (its one CPU); the host's says what else competed
    print(f"booting user-mode Linux for the load benchmark ... (host load {loadavg()}, "
          f"{os.cpu_count()} cores)", flush=True)
    rc = run_in_uml(
        [sys.executable, "-m", "integration.bench_load", "--inside", "--servers", str(args.servers),
         "--seconds", str(args.seconds), "--small", str(args.small)],
        timeout=4 * (CONVERGE + args.seconds + 40) + 120,
    )
    print(f"host load after the run: {loadavg()}", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
