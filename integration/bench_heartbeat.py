"""Heartbeat under load: does lvs1 keep advertising on time while the daemon is busy? Prints figures, asserts nothing.

    python -m integration.bench_heartbeat [--seconds 20] [--advert 0.1] [--checks 3000]

On the host it boots user-mode Linux once and runs itself inside (``--inside``). There, on the seed topology
(integration/topology.py, no web servers), ``havs run`` on lvs1 alone with a generated config:

* the seed's vrrp section (etc/havs.yaml) at ``--advert`` seconds, ``notify.master: [/bin/sleep, 5]``;
* a large IPVS table: ``--services`` services (192.168.0.108:20000...) x ``--per-service`` real servers on
  the server LAN (fake addresses 192.168.72.10..., ``check: {type: none}``);
* health-check load (scenarios b and d): ``--checks`` more real servers (192.168.72.20..., ten per service,
  ports 30000...) with HTTP checks every 1 s, all sent through ``connect_address`` to one keep-alive HTTP
  server in rs1 (uvloop, ``--ports`` listening ports) that counts the requests it answers.

lvs1's adverts are captured in lvs2's namespace (lvs2 runs no daemon) by a raw protocol-112 socket that
joined 224.0.0.18 on eth1; each advert's time is the kernel's receive timestamp (SO_TIMESTAMPNS), taken
as the packet enters lvs2's stack: the veth/bridge path runs synchronously from lvs1's send, so the
capture process's own scheduling does not blur the gaps. Scenarios, ``--seconds`` each:

  a  idle: the big table, periodic reconcile passes only;
  b  health-check load;
  c  large IPVS apply: ``ipvsadm -C`` at 15 % (the level-triggered reconciler re-adds every service and
     destination on its next pass), then at 55 % a SIGHUP reload to a config where every big-table weight
     changed (one EditDestination per destination);
  d  all together: b's checks, a VRRP flap at 10 % (a fake peer in lvs2 advertises priority 254 for 1 s:
     lvs1 goes BACKUP, then MASTER again and runs the 5 s notify script), c's ``ipvsadm -C`` at 30 % and
     the weights reload at 60 %. The gap across the flap (lvs1 silent on purpose) is left out.

A reference sender runs through every scenario: keepalived 2.2.7 (VRRP only, VRID 52, same interval) in rs2,
captured the same way. It shares the one UML CPU and the host, so its gaps are the lab's own noise floor; a
havs gap well above the reference's in the same window is havs's.

Per scenario: adverts seen, median / p99 / worst gap, worst - interval against the target (interval +
20 ms), checks/s answered by rs1's server, lvs1's CPU (/proc/<pid>/stat) and the whole UML CPU's busy share.
UML has one CPU: havs, the HTTP server, the capture and the kernel all share it.

``--havs-gc no-full|freeze-only`` start the same daemon through a wrapper that switches off the cyclic GC's
automatic full collections (and, freeze-only, makes HealthService's post-reload unfreeze + full collect a plain
gc.freeze()): experiments that show what the GC's GIL-holding collections cost the heartbeat.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from integration.adverts import AdvertCapture, AdvertSender, Gaps, start_reference
from integration.benchlib import SEED_CONFIG, poll, proc_cpu, raise_fd_limit, system_cpu
from integration.logs import HavsLog
from integration.okserver import read_counter

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "integration" / "out" / "bench_heartbeat"
# Inside UML /tmp is a tmpfs shared by every namespace: the daemon's log and the request counter live there,
# so neither pays for hostfs writes (a real daemon logs to journald's pipe, not to a slow filesystem).
FAST = Path("/tmp/bench_heartbeat")
COUNTER = FAST / "requests.json"
VIP = "192.168.0.108"
RS1 = "192.168.72.128"
LVS1_HB = "192.168.72.131"  # lvs1's eth1: the source of its adverts
LVS2_HB = "192.168.72.132"
REF_SRC = "192.168.72.129"  # rs2's eth0: the reference sender's adverts
REF_VRID = 52
PROTO_VRRP = 112
SLACK = 0.020  # the target: worst gap <= interval + 20 ms
HTTP_PORT0 = 8000


# ------------------------------------------------------------------------------------------------ configs
@dataclass(frozen=True)
class Shape:
    advert: float
    services: int
    per_service: int
    checks: int
    ports: int


def build_config(shape: Shape, *, weight: int, checks: bool) -> dict[str, Any]:
    """The seed's nodes, settings and vrrp section, plus the big table and (optionally) the HTTP-checked servers."""
    import yaml

    seed = yaml.safe_load(SEED_CONFIG.read_text())
    settings = dict(seed["settings"], control_socket=str(FAST / "run" / "control.sock"), state_dir=str(FAST / "state"))
    vrrp = dict(seed["vrrp"], advert_interval=shape.advert,
                version=2 if shape.advert == int(shape.advert) else 3,
                notify={"master": ["/bin/sleep", "5"], "timeout": 10})
    services: list[dict[str, Any]] = []
    big_reals = [f"192.168.72.{10 + j}" for j in range(shape.per_service)]
    for i in range(shape.services):
        services.append({
            "address": VIP, "port": 20000 + i, "scheduler": "wrr", "forwarding": "nat", "check": {"type": "none"},
            "real_servers": [{"address": a, "port": 80, "weight": weight} for a in big_reals],
        })
    if checks:
        per = 10
        for k in range((shape.checks + per - 1) // per):
            n = min(per, shape.checks - k * per)
            services.append({
                "address": VIP, "port": 30000 + k, "scheduler": "rr", "forwarding": "nat",
                "check": {"type": "http", "path": "/", "interval": 1.0, "timeout": 0.5, "rise": 2, "fall": 3,
                          "connect_address": RS1, "connect_port": HTTP_PORT0 + k % shape.ports},
                "real_servers": [{"address": f"192.168.72.{20 + j}", "port": 80} for j in range(n)],
            })
    return {"settings": settings, "nodes": seed["nodes"], "vrrp": vrrp, "virtual_services": services}


def write_config(path: Path, cfg: dict[str, Any]) -> None:
    # JSON is YAML; one line per service keeps the file small. Replaced atomically: the daemon may reload it.
    lines = [json.dumps({k: v for k, v in cfg.items() if k != "virtual_services"})[:-1] + ', "virtual_services": [']
    lines += [json.dumps(vs) + ("," if i + 1 < len(cfg["virtual_services"]) else "")
              for i, vs in enumerate(cfg["virtual_services"])]
    lines.append("]}")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.chmod(0o644)  # havs refuses a world-writable config
    tmp.replace(path)


# -------------------------------------------------------------------------------------------------- figures
@dataclass
class Row:
    name: str
    title: str
    seconds: float = 0.0
    havs: Gaps = field(default_factory=Gaps)
    ref: Gaps = field(default_factory=Gaps)
    checks_per_s: float | None = None
    cpu: float = 0.0  # lvs1's share of one CPU
    busy: float = 0.0  # the UML CPU's busy share
    notes: list[str] = field(default_factory=list)


Event = tuple[float, str, Callable[[], "tuple[float, float] | None"]]


class Bench:
    def __init__(self, lab: Any, shape: Shape, config: Path, log: HavsLog, capture: AdvertCapture) -> None:
        self.lab = lab
        self.shape = shape
        self.config = config
        self.log = log
        self.capture = capture
        self.rows: dict[str, Row] = {}
        self.hups = 0
        self.dump: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        proc = self.lab.havs_proc("lvs1")
        if proc is None or proc.poll() is not None:
            raise RuntimeError("havs on lvs1 is not running")
        return int(proc.pid)

    def reload(self, *, weight: int, checks: bool) -> float:
        write_config(self.config, build_config(self.shape, weight=weight, checks=checks))
        wall = time.time()
        os.kill(self.pid, signal.SIGHUP)
        self.hups += 1
        return wall

    def clear_ipvs(self) -> None:
        self.lab.exec("lvs1", ["ipvsadm", "-C"])

    def quiet(self, timeout: float) -> bool:
        """Wait until the main loop has no work we caused: every SIGHUP reloaded, no IPVS op for 1.5 s."""
        def quiet() -> bool:
            events = self.log.refresh()
            reloads = sum(1 for e in events if e.get("event") in ("config.reloaded", "config.reload_failed"))
            applies = [e["_t"] for e in events[-200:] if e.get("event") == "ipvs.apply" and "_t" in e]
            return reloads >= self.hups and (not applies or time.time() - applies[-1] > 1.5)

        return poll(quiet, timeout, 0.2) is not None

    def run(self, name: str, title: str, seconds: float, events: Sequence[Event] = (), settle: bool = False) -> Row:
        """Measure for ``seconds``, firing ``events`` on the way; with ``settle`` the window is stretched (up to
        2 x seconds more) until the work they caused is done, so a slow reload is measured whole."""
        row = Row(name, title)
        pid = self.pid
        excluded: list[tuple[float, float]] = []
        c0, s0, k0 = proc_cpu(pid), system_cpu(), read_counter(COUNTER)
        t0, wall0 = time.monotonic(), time.time()
        for at, label, fn in sorted(events, key=lambda e: e[0]):
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            started = time.monotonic() - t0
            window = fn()
            if window is not None:
                excluded.append(window)
            row.notes.append(f"{label} at +{started:.1f}s")
        time.sleep(max(0.0, t0 + seconds - time.monotonic()))
        if settle and not self.quiet(2 * seconds):
            row.notes.append("main loop still busy at the end of the window")
        t1 = time.monotonic()
        row.seconds = t1 - t0
        c1, s1, k1 = proc_cpu(pid), system_cpu(), read_counter(COUNTER)
        time.sleep(0.3)  # adverts stamped before t1 may still be on their way to the capture thread
        heard = self.capture.adverts(LVS1_HB, t0, t1)
        ref = self.capture.adverts(REF_SRC, t0, t1)
        row.havs = Gaps.of(heard, excluded, t0)
        row.ref = Gaps.of(ref, [], t0)
        row.cpu = (c1 - c0) / (t1 - t0)
        row.busy = (s1[0] - s0[0]) / max(1, s1[1] - s0[1])
        if k0 is not None and k1 is not None and k1[1] > k0[1]:
            row.checks_per_s = (k1[0] - k0[0]) / (k1[1] - k0[1])
        row.notes += self._log_notes(wall0)
        self.rows[name] = row
        self.dump[name] = {"t0": t0, "wall0": wall0, "t1": t1, "excluded": excluded, "lvs1": heard, "ref": ref}
        (OUT / "adverts.json").write_text(json.dumps(self.dump))
        worst = max(row.havs.gaps, default=float("nan"))
        print(f"  {name}: {row.seconds:.1f}s, {row.havs.adverts} adverts, worst gap {worst * 1000:.1f} ms "
              f"(reference {max(row.ref.gaps, default=float('nan')) * 1000:.1f} ms), checks/s "
              f"{row.checks_per_s or 0:.0f}, lvs1 CPU {row.cpu * 100:.0f}%, UML CPU {row.busy * 100:.0f}%", flush=True)
        return row

    def _log_notes(self, wall0: float) -> list[str]:
        notes = []
        ev = self.log.find("ipvs.apply", wall0)
        if ev:
            notes.append(f"{len(ev)} IPVS ops logged +{ev[0]['_t'] - wall0:.1f}..+{ev[-1]['_t'] - wall0:.1f}s")
        for e in self.log.find("ipvs.drift", wall0):
            notes.append(f"drift seen +{e['_t'] - wall0:.1f}s")
        for name in ("ipvs.apply_failed", "ipvs.pass_failed", "config.reload_failed", "vrrp.crashed"):
            bad = self.log.find(name, wall0)
            if bad:
                notes.append(f"{len(bad)} x {name}")
        for e in self.log.find("daemon.signal", wall0, signal="HUP"):
            notes.append(f"SIGHUP handled +{e['_t'] - wall0:.1f}s")
        for e in self.log.find("config.reloaded", wall0):
            notes.append(f"reloaded +{e['_t'] - wall0:.1f}s")
        for e in self.log.find("vrrp.state", wall0):
            notes.append(f"{e.get('to')} +{e['_t'] - wall0:.2f}s")
        for e in self.log.find("vrrp.notify", wall0):
            notes.append(f"notify {e.get('state')} rc={e.get('rc')} done +{e['_t'] - wall0:.1f}s")
        changes = self.log.find("health.change", wall0)
        if changes:
            down = sum(1 for e in changes if e.get("to") == "down")
            notes.append(f"{len(changes)} health changes ({down} to down)")
        return notes


# ------------------------------------------------------------------------------------------------- report
def report(rows: dict[str, Row], shape: Shape, kernel_stamps: bool, ref_note: str) -> str:
    target = shape.advert + SLACK
    head = (f"{'scenario':<40}{'secs':>5}{'adverts':>8}{'median ms':>10}{'p99 ms':>8}{'worst ms':>9}"
            f"{'worst-int':>10}{'target':>8}{'checks/s':>9}{'lvs1 CPU':>9}{'UML CPU':>8}")
    lines = [
        f"advert interval {shape.advert * 1000:.0f} ms; target: worst gap <= interval + {SLACK * 1000:.0f} ms "
        f"= {target * 1000:.0f} ms; gaps from "
        + ("kernel receive timestamps (SO_TIMESTAMPNS) in lvs2" if kernel_stamps else "time.monotonic() at recv"),
        f"big table: {shape.services} services x {shape.per_service} real servers = "
        f"{shape.services * (shape.per_service + 1)} IPVS rules (check none); HTTP checks (b, d): {shape.checks} "
        f"servers every 1 s to {shape.ports} ports in rs1",
        f"ref = reference sender on the same UML CPU in the same windows: {ref_note}",
        "",
        head,
        "-" * len(head),
    ]
    for key in ("a", "b", "c", "d"):
        r = rows.get(key)
        if r is None:
            continue
        cps = f"{r.checks_per_s:.0f}" if r.checks_per_s else "-"
        lines.append(f"{f'{r.name}) {r.title}':<40}{r.seconds:>5.0f}{r.havs.cells(shape.advert, SLACK)}{cps:>9}"
                     f"{r.cpu * 100:>8.0f}%{r.busy * 100:>7.0f}%")
        lines.append(f"{'   ref (keepalived, rs2)':<40}{'':>5}{r.ref.cells(shape.advert, SLACK)}")
    lines.append("")
    for key in ("a", "b", "c", "d"):
        r = rows.get(key)
        if r is not None:
            lines.append(f"{key}: longest gaps ms (+end in window): havs {r.havs.longest()} | ref {r.ref.longest(3)}")
            if r.notes:
                lines.append(f"   {'; '.join(r.notes)}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- inside
def inside(shape: Shape, seconds: float, scenarios: str, havs_gc: str = "default") -> int:
    from integration.lab import in_uml
    from integration.topology import SeedLab, TopologyError

    if not in_uml():
        print("--inside runs in the UML lab only (it needs IPVS)", file=sys.stderr)
        return 2
    start = time.monotonic()
    raise_fd_limit()  # inherited by the daemon and the HTTP server, which we start
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True, exist_ok=True)
    FAST.mkdir(parents=True, exist_ok=True)
    (FAST / "state").mkdir(exist_ok=True)
    (FAST / "run").mkdir(exist_ok=True)  # the control socket, apart from the config
    config = FAST / "havs.yaml"
    log_path = FAST / "havs-lvs1.log"
    write_config(config, build_config(shape, weight=1, checks=False))
    try:
        lab = SeedLab(prefix="", workdir=OUT / "lab").up(web=False)
    except (TopologyError, subprocess.SubprocessError, OSError) as e:
        print(f"lab broke: {e}", flush=True)
        return 2
    capture: AdvertCapture | None = None
    peer: AdvertSender | None = None
    rc = 0
    try:
        ports = [str(HTTP_PORT0 + i) for i in range(shape.ports)]
        server = lab.popen("rs1", [sys.executable, "-m", "integration.okserver", RS1, "--ports", *ports,
                                   "--counter", str(COUNTER)], OUT / "server-rs1.log")
        if poll(lambda: "listening" in (OUT / "server-rs1.log").read_text() or server.poll() is not None,
                60, 0.2) is None:
            raise RuntimeError("HTTP server in rs1 did not start")
        if server.poll() is not None:
            raise RuntimeError(f"HTTP server in rs1 exited: {(OUT / 'server-rs1.log').read_text()[-500:]}")
        capture = AdvertCapture(lab.socket("lvs2", socket.AF_INET, socket.SOCK_RAW, PROTO_VRRP), LVS2_HB)
        _ref, ref_note = start_reference(lab, "rs2", shape.advert, REF_VRID, FAST, OUT / "ref-keepalived.log")
        log = HavsLog(log_path)
        t_start, wall = time.monotonic(), time.time()
        if havs_gc == "default":
            lab.start_havs("lvs1", config, log_path=log_path)
        else:
            # the same `havs run`, with the cyclic GC's automatic full (generation 2) collections switched off:
            # an experiment for the report, not a recommended setting as is
            wrapper = "import gc, sys; gc.set_threshold(700, 10, 10**9)\n"
            if havs_gc == "freeze-only":
                # and HealthService's post-(re)load gc.unfreeze(); gc.collect(); gc.freeze() becomes gc.freeze()
                wrapper += ("import havs.health_service as hs\n"
                            "def _freeze(self):\n    self._freeze_timer = None\n    gc.freeze()\n"
                            "hs.HealthService._freeze = _freeze\n")
            wrapper += "from havs.cli import main\nsys.exit(main(sys.argv[1:]))\n"
            lab.start_daemon("lvs1", [sys.executable, "-c", wrapper, "run", "-c", str(config), "--node", "lvs1",
                                      "--log-format", "json"], log_path)
        if log.wait("daemon.ready", wall, 240) is None:
            raise RuntimeError("havs on lvs1 not ready in 240 s")
        ready = time.monotonic()
        if log.wait("vrrp.notify", wall, 60, state="MASTER") is None:
            raise RuntimeError("lvs1 did not become MASTER (and run its notify script) within 60 s")
        ops = log.find("ipvs.apply", wall)
        print(f"havs up: ready {ready - t_start:.1f}s (first pass {len(ops)} IPVS ops), MASTER and notify done "
              f"+{time.monotonic() - ready:.1f}s; reference: {ref_note}", flush=True)
        bench = Bench(lab, shape, config, log, capture)
        time.sleep(1.0)
        vrrp = build_config(shape, weight=1, checks=False)["vrrp"]
        peer = AdvertSender(lab.ns("lvs2"), "eth1", LVS2_HB, shape.advert, vrrp["version"], vrrp["router_id"],
                            [a["address"].split("/")[0] for a in vrrp["addresses"]], priority=254)
        fake = peer
        weight = 1

        def reweigh(checks: bool) -> None:
            nonlocal weight
            weight = 3 - weight
            bench.reload(weight=weight, checks=checks)

        if "a" in scenarios:
            bench.run("a", "idle (big table)", seconds)
        if "c" in scenarios:
            bench.run("c", "IPVS: ipvsadm -C, weights reload", seconds, [
                (0.10 * seconds, "ipvsadm -C", lambda: bench.clear_ipvs()),
                (0.35 * seconds, "SIGHUP (every weight changed)", lambda: reweigh(False)),
            ], settle=True)
        if "b" in scenarios or "d" in scenarios:
            wall = time.time()
            reweigh(True)
            expect = shape.services + (shape.checks + 9) // 10
            reloaded = log.wait("config.reloaded", wall, 180, services=expect)
            if reloaded is None:
                raise RuntimeError("reload with health checks did not finish within 180 s")
            bench.quiet(60)
            print(f"health checks on: reload took {reloaded['_t'] - wall:.1f}s, quiet after "
                  f"{time.time() - wall:.1f}s; settling 4 s", flush=True)
            time.sleep(4.0)
        if "b" in scenarios:
            bench.run("b", f"health checks ({shape.checks}/s offered)", seconds)
        if "d" in scenarios:
            bench.run("d", "all: checks+flap/notify+-C+reload", seconds, [
                (0.10 * seconds, "VRRP flap (fake peer 1 s)", lambda: fake.advertise(1.0)),
                (0.30 * seconds, "ipvsadm -C", lambda: bench.clear_ipvs()),
                (0.50 * seconds, "SIGHUP (every weight changed)", lambda: reweigh(True)),
            ], settle=True)
        gc_note = {"default": "", "no-full": ", havs with automatic full GC collections OFF (--havs-gc no-full)",
                   "freeze-only": ", havs with automatic full GC collections OFF and HealthService's unfreeze+collect "
                                  "replaced by gc.freeze() (--havs-gc freeze-only)"}[havs_gc]
        print(f"\n=== heartbeat under load: havs on lvs1{gc_note}, UML lab, {time.monotonic() - start:.0f}s ===",
              flush=True)
        print(report(bench.rows, shape, capture.kernel_stamps, ref_note), flush=True)
    except (RuntimeError, TopologyError, subprocess.SubprocessError, OSError) as e:
        print(f"benchmark broke: {type(e).__name__}: {e}", flush=True)
        rc = 2
    finally:
        if peer is not None:
            peer.close()
        if capture is not None:
            capture.close()
        with contextlib.suppress(Exception):
            lab.stop_havs("lvs1", timeout=20)
        lab.down()
        for p in (log_path, config):
            with contextlib.suppress(OSError):
                shutil.copy(p, OUT / p.name)
        print(f"logs, config and advert stamps: {OUT}", flush=True)
    return rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m integration.bench_heartbeat", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each scenario")
    parser.add_argument("--advert", type=float, default=0.1, help="VRRP advert interval (s)")
    parser.add_argument("--checks", type=int, default=1000, help="HTTP-checked real servers, 1 check/s each")
    parser.add_argument("--services", type=int, default=1000, help="big-table services")
    parser.add_argument("--per-service", type=int, default=10, help="real servers per big-table service")
    parser.add_argument("--ports", type=int, default=50, help="listening ports of rs1's HTTP server")
    parser.add_argument("--scenarios", default="abcd", help="which scenarios to run (run order: a c b d)")
    parser.add_argument("--havs-gc", choices=("default", "no-full", "freeze-only"), default="default",
                        help="experiments: no-full runs havs with gc.set_threshold(700, 10, 10**9); freeze-only also "
                             "makes HealthService._freeze a plain gc.freeze() (no unfreeze + full collect)")
    parser.add_argument("--mem", default="1G", help="UML memory")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shape = Shape(args.advert, args.services, args.per_service, args.checks, args.ports)
    if args.inside:
        return inside(shape, args.seconds, args.scenarios, args.havs_gc)
    from integration.lab import LabError, run_in_uml

    argv_in = [sys.executable, "-m", "integration.bench_heartbeat", "--inside", "--seconds", str(args.seconds),
               "--advert", str(args.advert), "--checks", str(args.checks), "--services", str(args.services),
               "--per-service", str(args.per_service), "--ports", str(args.ports), "--scenarios", args.scenarios,
               "--havs-gc", args.havs_gc]
    try:
        return run_in_uml(argv_in, mem=args.mem, timeout=300 + 8 * args.seconds)
    except LabError as e:
        print(f"integration.bench_heartbeat: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
