"""VRRP between two directors in network namespaces on the host kernel (root).

Each director runs `havs run` (VRRP only: no virtual services, so no IPVS needed) in its namespace of the
seed topology (SeedLab): lvs1 (priority 150) and lvs2 (100) float the VIP 192.168.0.108/24 on eth0 and the
gateway 192.168.72.130/24 on eth1 together, heartbeat on eth1. Takeover times are printed (run with -s),
never asserted tightly.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from integration import topology
from integration.topology import GATEWAY, VIP, SeedLab

pytestmark = pytest.mark.netns

if os.geteuid() != 0:
    pytest.skip("needs root for network namespaces", allow_module_level=True)

REPO = Path(__file__).resolve().parent.parent
PRIORITY = {"lvs1": 150, "lvs2": 100}
VIP_CIDR = f"{VIP}/24"
GW_CIDR = f"{GATEWAY}/24"


def config_text(
    interval: float,
    notify_dir: Path,
    version: int = 3,
    auth_pass: str | None = None,
    preempt: bool = True,
    unicast: bool = False,
) -> str:
    peers = "[192.168.72.131, 192.168.72.132]" if unicast else "[]"
    hook = f'echo "$HAVS_STATE $HAVS_PREVIOUS $HAVS_REASON" >> {notify_dir}/$HAVS_NODE'
    hooks = "\n".join(f"    {s}: [/bin/sh, -c, '{hook}']" for s in ("master", "backup", "fault", "stop"))
    return f"""
settings: {{control_socket: CONTROL, state_dir: {notify_dir}/state}}
nodes:
  lvs1:
    priority: {PRIORITY["lvs1"]}
    interfaces: {{client: eth0, server: eth1}}
  lvs2:
    priority: {PRIORITY["lvs2"]}
    interfaces: {{client: eth0, server: eth1}}
vrrp:
  router_id: 51
  version: {version}
  advert_interval: {interval}
  preempt: {str(preempt).lower()}{f"{chr(10)}  auth_pass: {auth_pass}" if auth_pass else ""}
  interface: server
  unicast_peers: {peers}
  addresses:
    - {{address: {VIP_CIDR}, interface: client}}
    - {{address: {GW_CIDR}, interface: server}}
  track_interfaces: [client, server]
  garp: {{burst: 3, burst_interval: 0.01, refresh: 10}}
  notify:
    timeout: 5
{hooks}
"""


class Pair:
    """Both directors' VRRP services over one SeedLab."""

    def __init__(self, lab: SeedLab, interval: float, **cfg: Any) -> None:
        self.lab = lab
        self.interval = interval
        self.notify_dir = lab.workdir / f"notify-{time.time_ns()}"
        self.notify_dir.mkdir()
        self.config = lab.workdir / f"vrrp-{time.time_ns()}.yaml"
        self.config.write_text(config_text(interval, self.notify_dir, **cfg))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def start(self, node: str) -> subprocess.Popen[bytes]:
        self.logs[node] = self.lab.workdir / f"vrrp-{node}-{time.time_ns()}.log"
        config = self.config.with_name(f"{self.config.stem}-{node}.yaml")  # a control socket each
        run = self.lab.workdir / "run"  # sockets apart from the configs, as the daemon requires
        run.mkdir(exist_ok=True)
        config.write_text(self.config.read_text().replace("CONTROL", str(run / f"{config.stem}.sock")))
        argv = [str(REPO / ".venv" / "bin" / "havs"), "run", "-c", str(config), "--node", node, "--log-format", "json"]
        proc = self.lab.popen(node, argv, self.logs[node], cwd=str(REPO))
        self.procs[node] = proc
        return proc

    def signal(self, node: str, sig: int) -> float:
        t = time.monotonic()
        os.kill(self.procs[node].pid, sig)
        return t

    def events(self, node: str, name: str) -> list[dict[str, object]]:
        return topology.log_events(self.logs[node], name)

    def holds(self, node: str) -> tuple[bool, bool]:
        return (VIP_CIDR in self.lab.addresses(node, "eth0"), GW_CIDR in self.lab.addresses(node, "eth1"))

    def mac(self, node: str, ifname: str) -> str:
        return self.lab.mac(node, ifname)

    def hooks(self, node: str) -> list[str]:
        path = self.notify_dir / node
        return path.read_text().splitlines() if path.exists() else []

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        for node, path in self.logs.items():  # pytest shows this only when the test failed
            print(f"--- {node} log ---\n{path.read_text()[-6000:]}")


# takeovers are timed here: poll finely
wait_until = functools.partial(topology.wait_until, step=0.005)


def learn(lab: SeedLab) -> None:
    """Give the client an ARP entry for the VIP and a real server one for the gateway."""
    lab.exec("client", ["ping", "-c1", "-W1", VIP])
    lab.exec("rs1", ["ping", "-c1", "-W1", GATEWAY])


def block_vrrp(lab: SeedLab) -> None:
    """Split the heartbeat: isolate both directors' ports on the server-LAN bridge from each other (they
    still reach the real servers). No netfilter or tc actions needed, which minimal kernels lack."""
    for node in ("lvs1", "lvs2"):
        subprocess.run(
            ["ip", "netns", "exec", lab.ns("sw"), "bridge", "link", "set", "dev", f"{node}-eth1", "isolated", "on"],
            check=True,
            capture_output=True,
        )


def unblock_vrrp(lab: SeedLab) -> None:
    for node in ("lvs1", "lvs2"):
        subprocess.run(
            ["ip", "netns", "exec", lab.ns("sw"), "bridge", "link", "set", "dev", f"{node}-eth1", "isolated", "off"],
            check=True,
            capture_output=True,
        )


@pytest.fixture(scope="module")
def lab() -> Iterator[SeedLab]:
    with SeedLab() as lab:
        yield lab


@pytest.fixture
def fresh(lab: SeedLab) -> Iterator[SeedLab]:
    unblock_vrrp(lab)
    for node in ("lvs1", "lvs2"):
        lab.recover(node)  # baseline addresses, links up
    for node in ("client", "rs1"):
        subprocess.run(["ip", "-n", lab.ns(node), "neigh", "flush", "all"], capture_output=True)
    yield lab


def elect(lab: SeedLab, interval: float, **cfg: Any) -> Pair:
    """lvs1 MASTER, then lvs2 joins as BACKUP. (Started together, lvs2 may win the first election by
    process start-up jitter — its down interval is only (150-100)/256 × interval longer — and be
    preempted a moment later; that is VRRP, but it makes the starting point of a test vary.)"""
    pair = Pair(lab, interval, **cfg)
    pair.start("lvs1")
    wait_until("lvs1 holds VIP and gateway", lambda: pair.holds("lvs1") == (True, True), 3 * interval + 5)
    pair.start("lvs2")
    wait_until("lvs2 started", lambda: bool(pair.events("lvs2", "vrrp.state")), 5)
    time.sleep(3 * interval + 0.1)  # past its down interval: it heard lvs1 and stayed BACKUP
    assert pair.holds("lvs2") == (False, False)
    assert [e["to"] for e in pair.events("lvs2", "vrrp.state")] == ["BACKUP"]
    return pair


def test_higher_priority_becomes_master_and_holds_both_addresses(fresh: SeedLab) -> None:
    pair = Pair(fresh, 0.1)
    pair.start("lvs2")
    pair.start("lvs1")  # started together (lvs2 first): whatever happens first, lvs1 ends up MASTER
    try:
        wait_until(
            "lvs1 holds both addresses, lvs2 none",
            lambda: pair.holds("lvs1") == (True, True) and pair.holds("lvs2") == (False, False),
            5,
        )
        time.sleep(0.5)  # stable: 5 adverts later nothing has moved
        assert pair.holds("lvs1") == (True, True) and pair.holds("lvs2") == (False, False)
        learn(fresh)
        assert fresh.neigh("client", VIP) == pair.mac("lvs1", "eth0")
        assert fresh.neigh("rs1", GATEWAY) == pair.mac("lvs1", "eth1")
        assert [e["to"] for e in pair.events("lvs1", "vrrp.state")] == ["BACKUP", "MASTER"]
        assert [e["to"] for e in pair.events("lvs2", "vrrp.state")][-1] == "BACKUP"
        assert not pair.events("lvs2", "vrrp.advert_dropped")
        wait_until(
            "notify hooks ran in order with HAVS_* env",
            lambda: pair.hooks("lvs1") == ["BACKUP INIT start", "MASTER BACKUP master_down"],
            5,
        )
    finally:
        pair.stop_all()


@pytest.mark.parametrize(("interval", "unicast"), [(0.1, False), (1.0, False), (0.1, True)])
def test_kill_9_master_backup_takes_over_and_neighbours_follow(fresh: SeedLab, interval: float, unicast: bool) -> None:
    pair = elect(fresh, interval, unicast=unicast)
    try:
        learn(fresh)
        assert fresh.neigh("client", VIP) == pair.mac("lvs1", "eth0")
        # power loss: every process of the director at once (the daemon and its VRRP child share a process
        # group), then its links. Killing the daemon alone leaves its child a few ms to see the links go
        # down and resign with priority 0 — a live director's correct answer, not a crash.
        os.killpg(pair.procs["lvs1"].pid, signal.SIGKILL)
        fresh.links_down("lvs1")  # the director is gone, not just the daemon (it would keep the VIP)
        took = wait_until("lvs2 takes over", lambda: pair.holds("lvs2") == (True, True), 3 * interval + 1 + 2)
        garp = wait_until(
            "client and real server follow the new MAC",
            lambda: (
                fresh.neigh("client", VIP) == pair.mac("lvs2", "eth0")
                and fresh.neigh("rs1", GATEWAY) == pair.mac("lvs2", "eth1")
            ),
            2.0,
        )
        expected = 3 * interval + (256 - PRIORITY["lvs2"]) * interval / 256
        mode = "unicast" if unicast else "multicast"
        print(
            f"\nkill -9 at advert {interval}s {mode}: addresses on lvs2 after {took * 1000:.0f} ms "
            f"(3×interval+skew = {expected * 1000:.0f} ms), neighbours +{garp * 1000:.0f} ms"
        )
        assert pair.events("lvs2", "vrrp.state")[-1]["to"] == "MASTER"
        assert took >= expected - interval  # did not take over before the master could have been heard
    finally:
        pair.stop_all()


def test_sigterm_hands_over_after_skew_not_master_down(fresh: SeedLab) -> None:
    interval = 1.0  # wide gap between skew (0.61 s) and master_down (3.61 s) so the check is not timing-fragile
    pair = elect(fresh, interval)
    try:
        pair.signal("lvs1", signal.SIGTERM)
        took = wait_until("lvs2 takes over after priority 0", lambda: pair.holds("lvs2") == (True, True), 5)
        skew = (256 - PRIORITY["lvs2"]) * interval / 256
        print(
            f"\nSIGTERM at advert {interval}s: lvs2 holds the addresses after {took * 1000:.0f} ms "
            f"(skew {skew * 1000:.0f} ms, master_down {(3 * interval + skew) * 1000:.0f} ms)"
        )
        assert took < 3 * interval  # the priority-0 advert worked: no master_down wait
        assert pair.procs["lvs1"].wait(5) == 0
        assert pair.holds("lvs1") == (False, False)  # released on the way out
        assert pair.hooks("lvs1")[-1] == "INIT MASTER shutdown"
    finally:
        pair.stop_all()


def test_split_brain_heals_to_one_master_and_neighbours_follow_it(fresh: SeedLab) -> None:
    interval = 0.1
    pair = elect(fresh, interval)
    try:
        learn(fresh)
        block_vrrp(fresh)
        wait_until("split brain: lvs2 becomes MASTER too", lambda: pair.holds("lvs2") == (True, True), 3)
        assert pair.holds("lvs1") == (True, True)
        # lvs2's takeover GARP moved the client to lvs2's MAC: the heal must move it back
        wait_until("client follows lvs2", lambda: fresh.neigh("client", VIP) == pair.mac("lvs2", "eth0"), 2)
        time.sleep(0.3)
        unblock_vrrp(fresh)
        healed = wait_until("lvs2 steps down", lambda: pair.holds("lvs2") == (False, False), 2)
        neigh = wait_until(
            "client and real server point at the survivor again",
            lambda: (
                fresh.neigh("client", VIP) == pair.mac("lvs1", "eth0")
                and fresh.neigh("rs1", GATEWAY) == pair.mac("lvs1", "eth1")
            ),
            2,
        )
        print(
            f"\nsplit brain heal at advert {interval}s: lvs2 released after {healed * 1000:.0f} ms, "
            f"neighbours on lvs1 +{neigh * 1000:.0f} ms"
        )
        assert pair.holds("lvs1") == (True, True)
        assert pair.events("lvs2", "vrrp.state")[-1]["to"] == "BACKUP"
        time.sleep(0.3)
        assert pair.holds("lvs2") == (False, False) and pair.holds("lvs1") == (True, True)
    finally:
        pair.stop_all()


def test_deleted_address_is_put_back_and_link_down_is_fault(fresh: SeedLab) -> None:
    pair = elect(fresh, 0.1)
    try:
        fresh.del_address("lvs1", "eth0", VIP_CIDR)
        wait_until("the master re-adds a deleted VIP", lambda: pair.holds("lvs1") == (True, True), 2)
        assert any(e["action"] == "readd" for e in pair.events("lvs1", "vrrp.addresses"))
        # the server-side link of the master goes down: FAULT, release, the peer takes over
        subprocess.run(["ip", "-n", fresh.ns("sw"), "link", "set", "lvs1-eth0", "down"], check=True)
        wait_until("peer takes over from the faulty master", lambda: pair.holds("lvs2") == (True, True), 3)
        wait_until("faulty master released its addresses", lambda: pair.holds("lvs1") == (False, False), 2)
        assert pair.events("lvs1", "vrrp.state")[-1]["to"] == "FAULT"
        subprocess.run(["ip", "-n", fresh.ns("sw"), "link", "set", "lvs1-eth0", "up"], check=True)
        # recovered: back to BACKUP, then preempts (higher priority)
        wait_until("recovered master preempts again", lambda: pair.holds("lvs1") == (True, True), 3)
        wait_until("peer steps down", lambda: pair.holds("lvs2") == (False, False), 2)
        assert [e["to"] for e in pair.events("lvs1", "vrrp.state")][-2:] == ["BACKUP", "MASTER"]
    finally:
        pair.stop_all()


def test_backup_removes_floating_addresses_someone_left_and_a_stopped_backup_too(fresh: SeedLab) -> None:
    """Addresses follow the state: a BACKUP that finds the VIP or the gateway on its interfaces (put there
    by hand, or left by an earlier life) removes them within a few advert intervals, and a graceful stop
    of a BACKUP removes them too."""
    interval = 0.1
    pair = elect(fresh, interval)
    try:
        fresh.add_address("lvs2", "eth0", VIP_CIDR)
        fresh.add_address("lvs2", "eth1", GW_CIDR)
        took = wait_until("lvs2 removes them", lambda: pair.holds("lvs2") == (False, False), 5 * interval + 1)
        stale = [e for e in pair.events("lvs2", "vrrp.addresses") if e.get("reason") == "stale"]
        assert stale and stale[-1]["action"] == "release" and stale[-1]["level"] == "warning"
        assert pair.holds("lvs1") == (True, True) and [e["to"] for e in pair.events("lvs2", "vrrp.state")] == ["BACKUP"]
        print(f"\nstale addresses on the BACKUP removed after {took * 1000:.0f} ms")
        fresh.add_address("lvs2", "eth0", VIP_CIDR)
        pair.signal("lvs2", signal.SIGTERM)
        assert pair.procs["lvs2"].wait(10) == 0
        assert pair.holds("lvs2") == (False, False)
        assert pair.hooks("lvs2")[-1] == "INIT BACKUP shutdown"
    finally:
        pair.stop_all()


# ------------------------------------------------------------------------ keepalived on the other side

KEEPALIVED = shutil.which("keepalived")


def keepalived_conf(version: int, interval: float, priority: int) -> str:
    auth = "    authentication {\n        auth_type PASS\n        auth_pass secret\n    }\n" if version == 2 else ""
    return f"""global_defs {{
    router_id havs_interop
}}
vrrp_instance VI_1 {{
    state BACKUP
    interface eth1
    virtual_router_id 51
    version {version}
    priority {priority}
    advert_int {interval:g}
{auth}    virtual_ipaddress {{
        {VIP_CIDR} dev eth0
        {GW_CIDR} dev eth1
    }}
}}
"""


def start_keepalived(
    lab: SeedLab, node: str, version: int, interval: float, priority: int, pair: Pair
) -> subprocess.Popen[bytes]:
    tag = f"{node}-{time.time_ns()}"
    conf = lab.workdir / f"keepalived-{tag}.conf"
    conf.write_text(keepalived_conf(version, interval, priority))
    argv = [
        str(KEEPALIVED),
        "-n",
        "-l",
        "-D",
        "-G",
        "-P",
        "-f",
        str(conf),
        "-p",
        str(lab.workdir / f"ka-{tag}.pid"),
        "-r",
        str(lab.workdir / f"ka-vrrp-{tag}.pid"),
    ]
    log = lab.workdir / f"keepalived-{tag}.log"
    proc = lab.popen(node, argv, log)
    pair.procs[f"keepalived-{node}"] = proc
    pair.logs[f"keepalived-{node}"] = log
    return proc


@pytest.mark.skipif(KEEPALIVED is None, reason="keepalived not installed")
@pytest.mark.parametrize(("version", "interval"), [(3, 0.1), (2, 1.0)])
def test_interop_with_keepalived(fresh: SeedLab, version: int, interval: float) -> None:
    """Both directions on the wire: keepalived obeys our adverts, we obey keepalived's (v3 with the
    IPv4 pseudo-header checksum; v2 with PASS authentication)."""
    extra = {"version": version, "auth_pass": "secret" if version == 2 else None}
    mdi = 3 * interval + 1

    # 1. havs MASTER (150) → a keepalived BACKUP (100) that accepts our adverts never takes the VIP
    pair = Pair(fresh, interval, **extra)
    try:
        pair.start("lvs1")
        wait_until("havs lvs1 MASTER", lambda: pair.holds("lvs1") == (True, True), mdi + 5)
        ka = start_keepalived(fresh, "lvs2", version, interval, 100, pair)
        time.sleep(mdi + 1)
        assert ka.poll() is None, "keepalived exited"
        assert pair.holds("lvs2") == (False, False), "keepalived did not accept havs adverts"
        # and it follows a priority-0 resignation at once
        pair.signal("lvs1", signal.SIGTERM)
        took = wait_until("keepalived takes over", lambda: pair.holds("lvs2") == (True, True), mdi + 2)
        print(f"\nv{version}: keepalived took over {took * 1000:.0f} ms after havs SIGTERM")
        assert pair.procs["lvs1"].wait(5) == 0 and pair.holds("lvs1") == (False, False)

        # 2. keepalived MASTER (100) → havs (150, no preemption) accepts its adverts and stays BACKUP
        pair2 = Pair(fresh, interval, preempt=False, **extra)
        pair2.procs.update(pair.procs)
        pair2.logs.update(pair.logs)
        pair = pair2
        pair.start("lvs1")
        wait_until("havs started", lambda: bool(pair.events("lvs1", "vrrp.state")), 5)
        time.sleep(mdi + 1)
        assert pair.holds("lvs1") == (False, False), "havs did not accept keepalived adverts"
        assert [e["to"] for e in pair.events("lvs1", "vrrp.state")] == ["BACKUP"]
        assert not pair.events("lvs1", "vrrp.advert_dropped")
        # keepalived resigns with priority 0: havs takes over after its skew time
        os.kill(ka.pid, signal.SIGTERM)
        took = wait_until("havs takes over", lambda: pair.holds("lvs1") == (True, True), mdi + 2)
        print(f"v{version}: havs took over {took * 1000:.0f} ms after keepalived SIGTERM")
        if interval >= 1:  # at 1 s the gap between skew and master_down is wide enough to assert on
            assert took < 3 * interval, "havs waited for master_down: keepalived's priority 0 was not seen"
        assert "checksum" not in pair.logs["keepalived-lvs2"].read_text().lower()
    finally:
        pair.stop_all()


# -------------------------------------------------------------------- a busy caller never delays adverts


class _Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    warning = error = info


def test_busy_main_thread_does_not_delay_adverts(fresh: SeedLab) -> None:
    """The daemon's handle (VrrpProcess) in this test process, its child spawned inside lvs1's namespace;
    then this thread blocks its own asyncio loop with CPU work for 2 s — 20 advert intervals. The peer
    must never see a gap, and the snapshot is read without waiting."""
    from havs.core.config import parse_config, select_node
    from havs.edge.netns import enter_netns
    from havs.vrrp import VrrpProcess

    pair = Pair(fresh, 0.1)
    text = pair.config.read_text().replace("CONTROL", str(fresh.workdir / "run" / "unused.sock"))
    view = select_node(parse_config(text), "lvs1", "")
    log = _Log()
    states: list[str] = []
    vrrp = VrrpProcess(view, log=log, on_state=lambda i, f, t, r: states.append(f"{i} {t}"))
    # The child is forked from a thread inside the namespace that lives as long as the test: the child's
    # PR_SET_PDEATHSIG fires when the thread that forked it ends.
    started, done = threading.Event(), threading.Event()

    def holder() -> None:
        enter_netns(fresh.ns("lvs1"))
        vrrp.start()
        started.set()
        done.wait()

    threading.Thread(target=holder, daemon=True).start()
    assert started.wait(60)
    try:
        wait_until("in-process lvs1 MASTER", lambda: pair.holds("lvs1") == (True, True), 5)
        pair.start("lvs2")
        wait_until("lvs2 started", lambda: bool(pair.events("lvs2", "vrrp.state")), 5)
        time.sleep(0.5)

        async def hog() -> None:
            end = time.monotonic() + 2.0
            while time.monotonic() < end:  # a loop that never yields: health checks gone wrong
                sum(range(10_000))

        asyncio.run(hog())
        time.sleep(0.6)  # one push period
        assert [e["to"] for e in pair.events("lvs2", "vrrp.state")] == ["BACKUP"]
        assert pair.holds("lvs2") == (False, False)
        t0 = time.monotonic()
        (snap,) = vrrp.snapshot()["instances"]
        assert time.monotonic() - t0 < 0.01
        assert snap["instance"] == "VI_1" and snap["group"] is None
        assert snap["state"] == "MASTER" and snap["adverts_sent"] >= 25
        assert snap["held"] == ["192.168.0.108/24 dev eth0", "192.168.72.130/24 dev eth1"]
        assert states == ["VI_1 BACKUP", "VI_1 MASTER"]
        assert vrrp.alive()
    finally:
        vrrp.stop(graceful=True)
        done.set()
        pair.stop_all()
    assert pair.holds("lvs1") == (False, False) and vrrp.restarts == 0
    assert states[-2:] == ["VI_1 RESIGNING", "VI_1 INIT"]
