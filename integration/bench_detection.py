"""Real-server failure detection: havs against keepalived 2.2.7 in the UML lab. Prints figures, asserts nothing.

    python -m integration.bench_detection [--rounds 5] [--webs seed,keepalive] [--budget 240]

On the host it boots user-mode Linux once and runs itself inside (``--inside``). There, on the seed
topology (integration/topology.py, reset between setups), for each implementation and web server:

* the VIP 192.168.0.108 and the gateway 192.168.72.130 are put on lvs1 by hand for both implementations
  (no VRRP: detection only; lvs2 stays idle);
* havs on lvs1 with etc/havs.yaml as shipped (check http, interval 1 s, timeout 0.5, rise 2, fall 1) minus
  its ``vrrp`` section, with its own control socket and state dir;
* keepalived on lvs1, checker only (``-C -n -l -D -G``: console log to its file, no syslog):
  ``virtual_server 192.168.0.108 80 { delay_loop 1; lb_algo rr; lb_kind NAT; protocol TCP }``, both real
  servers with ``HTTP_GET { url { path / status_code 200 } connect_timeout 1 retry 1 delay_before_retry 1 }``;
* the web server of rs1 is either the lab's own told to close every connection (``seed``:
  ``Connection: close`` on every response, killed with ``lab.kill_web``) or Python's http.server speaking
  HTTP/1.1 with keep-alive (``keepalive``, killed with SIGKILL): only there does havs keep a probe
  connection open between checks, so only there can it see the death the moment rs1's kernel closes it.

Per round: the client requests the VIP every 50 ms (ClientLoop, 0.25 s request timeout); once steady (both
real servers in IPVS, ten good answers in a row) and after a random part of one check interval (so the kill
falls anywhere in the check cycle), rs1's web server is killed. Measured from the kill:

* removal: until 192.168.72.128 is gone from lvs1's IPVS table (``/proc/net/ip_vs`` of lvs1 read every
  10 ms by a thread inside lvs1's namespace: the table ``ipvsadm -Ln`` prints, without a process spawn per
  poll, which costs tens of ms in UML; ``ipvsadm -Ln`` confirms the removal once);
* failed requests from the kill until 2 s after the removal.

Then rs1's web server is restarted and the round ends when rs1 is back in IPVS.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from havs.edge.netns import enter_netns
from integration.benchlib import SEED_CONFIG, LabBroken, cell, edit_seed_config, keepalived_real_servers, poll, ratio

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "integration" / "out" / "bench_detection"
VIP_CIDR = "192.168.0.108/24"
GW_CIDR = "192.168.72.130/24"
RS1 = "192.168.72.128"
REAL = (RS1, "192.168.72.129")
IMPLS = ("havs", "keepalived")
WEBS = ("seed", "keepalive")
PERIOD = 0.05
REQUEST_TIMEOUT = 0.25
STEADY_RUN = 10
AFTER_REMOVAL = 2.0
POLL = 0.01
CHECK_INTERVAL = 1.0  # both implementations: havs interval 1, keepalived delay_loop 1


# ------------------------------------------------------------------------------------------ configs
def havs_config() -> str:
    """etc/havs.yaml as shipped, without VRRP and with its own socket and state dir."""
    text = SEED_CONFIG.read_text()
    text, n = re.subn(r"(?ms)^vrrp:.*?(?=^\S)", "", text, count=1)
    if n != 1:
        raise LabBroken("etc/havs.yaml: no top-level vrrp section to drop")
    subs = {
        r"(?m)^(\s+control_socket:)\s*\S+": rf"\g<1> {OUT / 'run' / 'control.sock'}",  # apart from the config
        r"(?m)^(\s+state_dir:)\s*\S+": rf"\g<1> {OUT / 'state'}",
    }
    return edit_seed_config(subs, text)


def keepalived_config() -> str:
    reals = keepalived_real_servers(REAL, retry=1, delay_before_retry=1)
    return f"""global_defs {{
    router_id lvs1
}}
virtual_server 192.168.0.108 80 {{
    delay_loop 1
    lb_algo rr
    lb_kind NAT
    protocol TCP
{reals}}}
"""


# --------------------------------------------------------------------------------------- IPVS watch
def _hex_server(ip: str, port: int) -> str:
    return "".join(f"{int(part):02X}" for part in ip.split(".")) + f":{port:04X}"


class IpvsWatch:
    """Reads lvs1's /proc/net/ip_vs every 10 ms from a thread inside lvs1's namespace and records when the
    presence of each real server changes (time.monotonic())."""

    def __init__(self, ns: str) -> None:
        self._ns = ns
        self._keys = {ip: _hex_server(ip, 80) for ip in REAL}
        self._lock = threading.Lock()
        self.present: dict[str, bool] = {}
        self.changes: list[tuple[float, str, bool]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ipvs-watch", daemon=True)
        self._thread.start()
        self._ready.wait(5)
        if self.error is not None:
            raise LabBroken(f"IPVS watch: {self.error}")

    def _run(self) -> None:
        try:
            enter_netns(self._ns)
        except BaseException as e:
            self.error = e
            self._ready.set()
            return
        self._ready.set()
        while not self._stop.is_set():
            try:
                # thread-self: this thread's namespace (/proc/net follows the process's main thread)
                with open("/proc/thread-self/net/ip_vs") as f:
                    text = f.read()
            except OSError as e:
                self.error = e
                return
            now = time.monotonic()
            with self._lock:
                for ip, key in self._keys.items():
                    here = key in text
                    if self.present.get(ip) != here:
                        self.present[ip] = here
                        self.changes.append((now, ip, here))
            self._stop.wait(POLL)

    def has(self, ip: str) -> bool:
        with self._lock:
            return self.present.get(ip, False)

    def gone_at(self, ip: str, after: float) -> float | None:
        with self._lock:
            return next((t for t, i, here in self.changes if i == ip and not here and t >= after), None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)


# ------------------------------------------------------------------------------------------ results
@dataclass
class Round:
    impl: str
    web: str
    n: int
    removal: float | None = None
    failures: int | None = None
    requests: int | None = None
    kill_phase: float = 0.0  # the random delay (0..1 check interval) between steady and the kill
    back: float | None = None  # s until rs1 was back in IPVS after its web server restarted
    note: str = ""


@dataclass
class Setup:
    """One implementation with one kind of web server on rs1, for several rounds."""

    lab: object  # SeedLab (imported inside UML only)
    impl: str
    web: str
    web_proc: subprocess.Popen[bytes] | None = None

    # ---- rs1's web server
    def start_web(self) -> None:
        lab = self.lab
        if self.web == "seed":
            lab.start_web("rs1", keep_alive=False)  # type: ignore[attr-defined]
            return
        lab.stop_web("rs1")  # type: ignore[attr-defined]
        root = lab.docroot("rs1")  # type: ignore[attr-defined]
        self.web_proc = lab.popen(  # type: ignore[attr-defined]
            "rs1",
            [sys.executable, "-I", "-S", "-u", "-m", "http.server", "--protocol", "HTTP/1.1", "--bind", RS1,
             "--directory", str(root), "80"],
            OUT / "web-rs1-keepalive.log",
        )
        sock_ok = poll(self._rs1_listens, 30, 0.05)
        if sock_ok is None:
            raise LabBroken("keep-alive web server on rs1 did not listen within 30 s")

    def _rs1_listens(self) -> bool:
        if self.web_proc is not None and self.web_proc.poll() is not None:
            raise LabBroken(f"keep-alive web server on rs1 exited ({self.web_proc.returncode})")
        try:
            s = self.lab.socket("lvs1")  # type: ignore[attr-defined]
        except OSError as e:
            raise LabBroken(f"socket in lvs1: {e}") from e
        with s:
            s.settimeout(0.5)
            try:
                s.connect((RS1, 80))
            except OSError:
                return False
            return True

    def kill_web(self) -> None:
        if self.web == "seed":
            self.lab.kill_web("rs1")  # type: ignore[attr-defined]
            return
        proc = self.web_proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    # ---- the director daemon
    def start_daemon(self) -> Path:
        lab = self.lab
        log = OUT / f"{self.impl}-{self.web}.log"
        if self.impl == "havs":
            lab.start_havs("lvs1", OUT / "havs.yaml", log_path=log)  # type: ignore[attr-defined]
        else:
            pid = OUT / "ka"
            argv = ["keepalived", "-C", "-n", "-l", "-D", "-G", "-f", str(OUT / "keepalived.conf"),
                    "-p", f"{pid}.pid", "-c", f"{pid}-check.pid"]
            lab.start_daemon("lvs1", argv, log)  # type: ignore[attr-defined]
        return log


def run_setup(lab: object, impl: str, web: str, rounds: int, budget_end: float, per_round: list[float]
              ) -> list[Round]:
    from integration.topology import ClientLoop, TopologyError

    out: list[Round] = []
    try:
        lab.reset()  # type: ignore[attr-defined]
        for cidr, dev in ((VIP_CIDR, "eth0"), (GW_CIDR, "eth1")):
            lab.add_address("lvs1", dev, cidr)  # type: ignore[attr-defined]
    except (TopologyError, subprocess.SubprocessError, OSError) as e:
        raise LabBroken(f"reset failed: {e}") from e
    setup = Setup(lab, impl, web)
    setup.start_web()  # reset() left the lab's default server (keep-alive): each setup chooses its own
    watch = IpvsWatch(lab.ns("lvs1"))  # type: ignore[attr-defined]
    client: ClientLoop | None = None
    try:
        log = setup.start_daemon()
        if poll(lambda: all(watch.has(ip) for ip in REAL), 30, 0.1) is None:
            tail = log.read_text(errors="replace")[-600:] if log.exists() else ""
            out.append(Round(impl, web, 0, note=f"IPVS not programmed with both real servers in 30 s; log: {tail}"))
            return out
        listed = lab.exec("lvs1", ["ipvsadm", "-Ln"], check=False).stdout  # type: ignore[attr-defined]
        if not all(f"{ip}:80" in listed for ip in REAL):
            raise LabBroken(f"/proc/net/ip_vs and ipvsadm -Ln disagree: {listed}")
        client = ClientLoop(lab, period=PERIOD, timeout=REQUEST_TIMEOUT).start()  # type: ignore[arg-type]
        cl = client

        def steady() -> bool:
            tail = cl.samples[-STEADY_RUN:]
            return len(tail) == STEADY_RUN and all(x.ok for x in tail) and all(watch.has(ip) for ip in REAL)

        for n in range(1, rounds + 1):
            est = max(per_round[-3:], default=10.0)
            if budget_end - time.monotonic() < est:
                out.append(Round(impl, web, n, note="skipped: budget"))
                continue
            t_round = time.monotonic()
            r = Round(impl, web, n)
            out.append(r)
            if poll(steady, 15, 0.05) is None:
                r.note = "never steady before the kill"
                break
            r.kill_phase = random.uniform(0, CHECK_INTERVAL)
            time.sleep(r.kill_phase)
            t0 = time.monotonic()
            setup.kill_web()
            gone = poll(lambda t=t0: watch.gone_at(RS1, t) is not None, 10, POLL)
            at = watch.gone_at(RS1, t0)
            if gone is None or at is None:
                r.note = "rs1 not removed from IPVS within 10 s"
                end = time.monotonic()
            else:
                r.removal = at - t0
                listed = lab.exec("lvs1", ["ipvsadm", "-Ln"], check=False).stdout  # type: ignore[attr-defined]
                if f"{RS1}:80" in listed:
                    r.note += "ipvsadm -Ln still lists rs1 after /proc showed it gone; "
                end = at + AFTER_REMOVAL
                time.sleep(max(0.0, end - time.monotonic()) + REQUEST_TIMEOUT)  # let the last requests end
            window = [s for s in client.samples if t0 <= s.start <= end]
            r.requests = len(window)
            r.failures = sum(1 for s in window if not s.ok)
            t_restart = time.monotonic()
            setup.start_web()
            back = poll(lambda: watch.has(RS1), 15, POLL)
            r.back = None if back is None else time.monotonic() - t_restart
            per_round.append(time.monotonic() - t_round)
            rem = f"{r.removal:.3f}s" if r.removal is not None else "-"
            print(f"  {impl:<10} {web:<9} round {n}: killed after a random {r.kill_phase:.2f}s, removed {rem}, "
                  f"failed {r.failures} of {r.requests}, back in IPVS {r.back and round(r.back, 2)}s after "
                  f"restart ({per_round[-1]:.1f}s) {r.note}", flush=True)
            if back is None:
                r.note += "rs1 not back in IPVS within 15 s of its restart; "
                break
    finally:
        if client is not None:
            try:
                client.stop()
            except Exception as e:  # a benchmark reports, never dies on its client
                print(f"  client loop error: {e}", flush=True)
        watch.close()
        lab.stop_havs("lvs1", timeout=5)  # type: ignore[attr-defined]
    return out


# ------------------------------------------------------------------------------------------- report
def report(results: list[Round], webs: Sequence[str]) -> str:
    lines = [
        "client: GET http://192.168.0.108/ every 50 ms, request timeout 0.25 s; rr over rs1 and rs2",
        "removal = kill of rs1's web server -> 192.168.72.128 gone from lvs1's IPVS table (10 ms poll)",
        "failed = client requests failed from the kill until 2 s after the removal",
        "cells: median [min-max] over rounds; havs/ka = ratio of medians",
        "havs: interval 1 s, timeout 0.5, fall 1, rise 2 (etc/havs.yaml); keepalived: delay_loop 1, "
        "connect_timeout 1, retry 1, delay_before_retry 1",
        "",
    ]
    head = (f"{'impl':<10} {'rs1 web':<10} {'n':>2}  {'removal s':<22} {'failed':<12} "
            f"{'failed per round':<24} {'back in IPVS s':<18}")
    lines += [head, "-" * len(head)]
    med: dict[tuple[str, str], tuple[float | None, float | None]] = {}
    for web in webs:
        for impl in IMPLS:
            rs = [r for r in results if (r.impl, r.web) == (impl, web) and r.n > 0]
            ok = [r for r in rs if r.removal is not None and r.failures is not None]
            removal = [r.removal for r in ok if r.removal is not None]
            failed = [float(r.failures) for r in ok if r.failures is not None]
            back = [r.back for r in ok if r.back is not None]
            med[(impl, web)] = (statistics.median(removal) if removal else None,
                                statistics.median(failed) if failed else None)
            n = f"{len(ok)}" + (f"/{len(rs)}" if len(ok) != len(rs) else "")
            per = ",".join(str(r.failures) for r in ok)
            lines.append(f"{impl:<10} {web:<10} {n:>2}  {cell(removal, '.3f'):<22} {cell(failed, 'g'):<12} "
                         f"{per:<24} {cell(back, '.2f'):<18}")
        h, k = med[("havs", web)], med[("keepalived", web)]
        lines.append(f"{'havs/ka':<10} {web:<10} {'':>2}  {ratio(h[0], k[0]):<22} {ratio(h[1], k[1]):<12}")
        lines.append("")
    lines.append("targets (havs, interval 1 s):")
    for web in webs:
        h, k = med[("havs", web)], med[("keepalived", web)]
        if h[0] is not None:
            lines.append(f"  {web}: median removal {h[0]:.3f} s <= 0.8 s: {'met' if h[0] <= 0.8 else 'MISSED'}")
        if h[1] is not None and k[1] is not None:
            verdict = "met" if h[1] < k[1] / 2 else "MISSED"
            lines.append(f"  {web}: median failed {h[1]:g} < half of keepalived's {k[1]:g}: {verdict}")
    notes = [r for r in results if r.note]
    if notes:
        lines += ["", "notes:"]
        lines += [f"  {r.impl} {r.web} round {r.n}: {r.note.strip('; ')}" for r in notes]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- inside
def inside(rounds: int, webs: Sequence[str], budget: float) -> int:
    from havs.configfile import load_config
    from havs.core.config import select_node
    from integration.topology import SeedLab, TopologyError

    start = time.monotonic()
    OUT.mkdir(parents=True, exist_ok=True)
    for old in [*OUT.glob("*.log"), *OUT.glob("*.yaml"), *OUT.glob("*.conf"), *OUT.glob("*.pid")]:
        old.unlink()
    (OUT / "state").mkdir(exist_ok=True)
    (OUT / "run").mkdir(exist_ok=True)
    (OUT / "havs.yaml").write_text(havs_config())
    select_node(load_config(str(OUT / "havs.yaml")), "lvs1", "")  # a config error is a broken benchmark
    (OUT / "keepalived.conf").write_text(keepalived_config())
    try:
        lab = SeedLab(prefix="", workdir=OUT / "lab").up()
    except (TopologyError, subprocess.SubprocessError, OSError) as e:
        print(f"lab broke: {e}", flush=True)
        return 2
    results: list[Round] = []
    per_round: list[float] = []
    broke = ""
    try:
        for web in webs:
            for impl in IMPLS:
                results += run_setup(lab, impl, web, rounds, start + budget, per_round)
    except (LabBroken, TopologyError, subprocess.SubprocessError, OSError) as e:
        broke = f"{type(e).__name__}: {e}"
        print(f"lab broke: {broke}", flush=True)
    finally:
        lab.down()
    print(f"\n=== real-server failure detection: havs vs keepalived 2.2.7, UML lab, {rounds} round(s), "
          f"{time.monotonic() - start:.0f}s ===")
    print(report(results, webs), flush=True)
    print(f"\nlogs and configs: {OUT}")
    if broke:
        print(f"INCOMPLETE: the lab broke ({broke})")
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m integration.bench_detection",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--webs", default=",".join(WEBS),
                        help="rs1's web server(s): seed (the lab's, Connection: close), keepalive (HTTP/1.1)")
    parser.add_argument("--budget", type=float, default=240.0,
                        help="seconds for all rounds inside the lab; rounds that would not fit are skipped")
    parser.add_argument("--inside", action="store_true", help="already inside the lab kernel")
    args = parser.parse_args(argv)
    webs = [w for w in args.webs.split(",") if w.strip()]
    bad = [w for w in webs if w not in WEBS]
    if bad:
        parser.error(f"unknown web server kind(s): {bad}")
    from integration.lab import in_uml, run_in_uml

    if args.inside or in_uml():
        return inside(args.rounds, webs, args.budget)
    print("booting user-mode Linux for the detection benchmark ...", flush=True)
    return run_in_uml(
        [sys.executable, "-m", "integration.bench_detection", "--inside", "--rounds", str(args.rounds),
         "--webs", ",".join(webs), "--budget", str(args.budget)],
        timeout=args.budget + 180,
    )


if __name__ == "__main__":
    sys.exit(main())
