"""The main job: the seed's LVS-NAT topology with havs on both directors, a client requesting the VIP
every 50 ms, a real server's web process killed and restarted, then the master director crashed —
and the story told from the directors' structured logs.

    python -m integration.demo            # on the host: boots user-mode Linux (real IPVS) and runs inside

Everything happens inside network namespaces in the UML kernel; nothing leaves it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from integration.benchlib import edit_seed_config
from integration.logs import read_events
from integration.seed import GATEWAY, VIP

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "etc" / "havs.yaml"
OUT = REPO / "integration" / "out" / "demo"

# The events that tell the story, and how to say each in one line.
STORY_EVENTS = {
    "config.loaded", "daemon.ready", "vrrp.state", "vrrp.addresses", "vrrp.garp", "health.change",
    "ipvs.apply", "ipvs.apply_failed", "ipvs.drift", "daemon.stopping", "drill",
}
SKIP_FIELDS = {"event", "timestamp", "level", "node"}


@dataclass(frozen=True)
class Line:
    at: float  # unix time
    who: str
    event: str
    text: str


def read_log(path: Path, who: str) -> list[Line]:
    lines = []
    for event in read_events(path):  # stderr noise, a traceback: not events, skipped
        at = event.pop("_t", None)
        if at is None:
            continue
        name = str(event.get("event"))
        if name not in STORY_EVENTS:
            continue
        fields = " ".join(f"{k}={_short(v)}" for k, v in event.items() if k not in SKIP_FIELDS)
        lines.append(Line(at, who, name, fields))
    return lines


def _short(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def render_story(lines: Iterable[Line], zero: float) -> str:
    out = []
    for line in sorted(lines, key=lambda x: x.at):
        out.append(f"{line.at - zero:+9.3f}s  {line.who:<6} {line.event:<18} {line.text}")
    return "\n".join(out)


def node_config(node: str) -> Path:
    """etc/havs.yaml as shipped, with the node's own control socket and state dir: the lab's directors share
    one filesystem, and a second daemon on the same control socket refuses to start (as it should). The
    sockets live apart from the configs, as the daemon requires."""
    shutil.rmtree(OUT / f"state-{node}", ignore_errors=True)  # a fresh start, no drains left from a last run
    (OUT / f"state-{node}").mkdir()
    (OUT / "run").mkdir(exist_ok=True)
    path = OUT / f"havs-{node}.yaml"
    path.write_text(edit_seed_config({
        r"(?m)^(\s+control_socket:)\s*\S+": rf"\g<1> {OUT / 'run' / f'control-{node}.sock'}",
        r"(?m)^(\s+state_dir:)\s*\S+": rf"\g<1> {OUT / f'state-{node}'}",
    }, CONFIG.read_text()))
    return path


def inside(args: argparse.Namespace) -> int:
    from integration.topology import ClientLoop, SeedLab, wait_until

    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.log"):
        old.unlink()
    marks: list[Line] = []

    def mark(text: str) -> float:
        marks.append(Line(time.time(), "lab", "drill", text))
        print(f"  [lab] {text}", flush=True)
        return time.time()

    with SeedLab(prefix="", workdir=OUT) as lab:
        mark("seed topology up: client, lvs1, lvs2, rs1 (lvs-web1), rs2 (lvs-web2)")

        def holds(node: str) -> bool:
            return VIP in " ".join(lab.addresses(node, "eth0")) and GATEWAY in " ".join(lab.addresses(node, "eth1"))

        def ipvs_dests(node: str) -> str:
            return lab.exec(node, ["ipvsadm", "-Ln"]).stdout

        # One after the other, as directors usually come up: the first one up is MASTER at once.
        lab.start_havs("lvs1", node_config("lvs1"), log_path=OUT / "lvs1.log")
        mark("havs started on lvs1 (priority 150)")
        wait_until("lvs1 holds the VIP and the gateway", lambda: holds("lvs1"), 60)
        lab.start_havs("lvs2", node_config("lvs2"), log_path=OUT / "lvs2.log")
        mark("havs started on lvs2 (priority 100)")
        wait_until("lvs2 ready", lambda: '"daemon.ready"' in (OUT / "lvs2.log").read_text(), 60)
        wait_until("both directors program IPVS", lambda: all(
            "192.168.72.129:80" in ipvs_dests(n) for n in ("lvs1", "lvs2")), 60)
        mark("lvs1 is MASTER with both addresses; IPVS programmed on both directors")
        print("\n  ipvsadm -Ln on lvs1:\n" + "\n".join("    " + x for x in ipvs_dests("lvs1").splitlines()), flush=True)

        # A request that gets no answer in 0.25 s counts as failed (and the loop moves on), as a user would.
        with ClientLoop(lab, period=0.05, timeout=0.25) as client:
            client.wait_for(lambda s: len(s.per_backend) == 2 and s.successes >= 10, 30)
            mark("client loop: every 50 ms through 192.168.0.108, both lvs-web1 and lvs-web2 answer")

            # A real server dies.
            before_rs = client.now()
            kill_at = mark("rs1's web server killed (kill -9)")
            lab.kill_web("rs1")
            wait_until("rs1 leaves IPVS on lvs1", lambda: "192.168.72.128" not in ipvs_dests("lvs1"), 30, 0.01)
            removed_after = time.time() - kill_at
            mark(f"rs1 removed from IPVS on lvs1 {removed_after:.2f}s after its death")
            time.sleep(1.0)
            rs_stats = client.stats(since=before_rs)
            lab.start_web("rs1")
            mark("rs1's web server restarted")
            wait_until("rs1 returns", lambda: "192.168.72.128" in ipvs_dests("lvs1"), 30)
            mark("rs1 back in IPVS after its rise count of good checks")
            client.wait_for(lambda s: s.per_backend.get("lvs-web1", 0) > 0, 10, since=client.now())

            # The master director crashes.
            time.sleep(1.0)
            before_crash = client.now()
            crash_at = mark("lvs1 CRASHED: havs killed with SIGKILL and its links taken down")
            lab.crash("lvs1")
            wait_until("lvs2 holds the VIP and the gateway", lambda: holds("lvs2"), 30, 0.01)
            moved_after = time.time() - crash_at
            mark(f"lvs2 holds 192.168.0.108 and 192.168.72.130 {moved_after:.2f}s after the crash")
            client.wait_for(lambda s: s.successes >= 20, 20, since=client.now())
            crash_stats = client.stats(since=before_crash)
            mark(f"client: {crash_stats.successes} answers after the crash, from {sorted(crash_stats.per_backend)}")
            total = client.stop()
        lab.stop_havs("lvs2")

    story = read_log(OUT / "lvs1.log", "lvs1") + read_log(OUT / "lvs2.log", "lvs2") + marks
    print("\n=== The failover story (structured logs of both directors; t=0 is the crash) ===")
    print(render_story(story, crash_at))
    print("\n=== Summary ===")
    print(f"real-server death: rs1 out of IPVS after {removed_after:.2f}s; client saw {rs_stats.failures} failed "
          f"request(s) of {rs_stats.requests}")
    print(f"director crash: VIP and gateway on lvs2 after {moved_after:.2f}s; client outage "
          f"{crash_stats.longest_outage:.2f}s, {crash_stats.failures} failed request(s) of {crash_stats.requests}")
    print(f"whole run: {total.requests} requests, {total.failures} failed; per backend {total.per_backend}")
    print("client: a request every 50 ms, counted failed when not answered within 0.25 s; keepalived 2.2.7 at the "
          "same settings, side by side: python -m integration.bench_failover")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m integration.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--inside", action="store_true", help="already inside the lab kernel")
    args = parser.parse_args(argv)
    from integration.lab import in_uml, run_in_uml

    if args.inside or in_uml():
        return inside(args)
    print("booting user-mode Linux (real IPVS) for the seed topology ...", flush=True)
    return run_in_uml([sys.executable, "-m", "integration.demo", "--inside"], timeout=600)


if __name__ == "__main__":
    sys.exit(main())


