"""`auth_hmac` interop with keepalived 2.4.3 (built from vendor/ by scripts/setup) in network namespaces on
the host kernel (root; no IPVS needed).

havs on lvs1 (150) and keepalived 2.4.3 on lvs2 (100), heartbeat on eth1 (multicast): each as master and
as backup, `time` and `monotonic`; a key rotation done on both sides one after the other; and the
migration of an unauthenticated pair through receive_only → permissive → enforce. "No transition" is
checked on both sides: havs's vrrp.state events and keepalived's "Entering … STATE" lines.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import signal
import sys
import time
from collections.abc import Iterator

import pytest

from integration import keepalived24
from integration.keepalived24 import Keepalived
from integration.test_vrrp_netns import GW_CIDR, VIP_CIDR, Pair, wait_until
from integration.topology import SeedLab

pytestmark = pytest.mark.netns

if os.geteuid() != 0:
    pytest.skip("needs root for network namespaces", allow_module_level=True)

K1 = "hex:" + bytes(range(32)).hex()
K2 = "hex:" + bytes(range(100, 148)).hex()  # 48 bytes
INTERVAL = 0.1
MDI = 3 * INTERVAL + 1
HAVS_ADDR = ipaddress.IPv4Address("192.168.72.131")
KA_ADDR = ipaddress.IPv4Address("192.168.72.132")


def havs_auth(keys: dict[int, str], active: int, mode: str = "enforce", anti_replay: str = "time") -> str:
    ks = ", ".join(f'{k}: "{v}"' for k, v in sorted(keys.items()))
    return (f"  auth_hmac:\n    keys: {{{ks}}}\n    active_key: {active}\n    anti_replay: {anti_replay}\n"
            f"    time_window: 5\n    mode: {mode}\n")


def with_auth(template: str, block: str) -> str:
    """The havs config with `block` after its unicast_peers line (multicast or unicast)."""
    line = next(x for x in template.splitlines(keepends=True) if x.startswith("  unicast_peers:"))
    return template.replace(line, line + block)


class Mixed:
    """havs (Pair) on lvs1 and keepalived 2.4.3 on lvs2, with reloads of either side."""

    def __init__(self, lab: SeedLab, block: str = "", preempt: bool = True) -> None:
        self.pair = Pair(lab, INTERVAL, preempt=preempt)
        self.template = self.pair.config.read_text()
        self.pair.config.write_text(with_auth(self.template, block) if block else self.template)
        self.ka: Keepalived | None = None
        self.lab = lab

    def start_havs(self) -> None:
        self.pair.start("lvs1")

    def start_ka(self, auth: str = "", *, preempt: bool = True) -> Keepalived:
        self.ka = Keepalived(self.lab, "lvs2", keepalived24.conf(
            interval=INTERVAL, priority=100, vip=VIP_CIDR, gateway=GW_CIDR, auth=auth, preempt=preempt))
        self.pair.procs["keepalived-lvs2"] = self.ka.proc
        self.pair.logs["keepalived-lvs2"] = self.ka.log
        return self.ka

    def reload_havs(self, block: str) -> None:
        node_cfg = self.pair.config.with_name(f"{self.pair.config.stem}-lvs1.yaml")
        text = with_auth(self.template, block) if block else self.template
        run = self.lab.workdir / "run"
        node_cfg.write_text(text.replace("CONTROL", str(run / f"{node_cfg.stem}.sock")))
        before = len(self.pair.events("lvs1", "vrrp.reload"))
        self.pair.signal("lvs1", signal.SIGHUP)
        wait_until("havs reloaded VRRP", lambda: len(self.pair.events("lvs1", "vrrp.reload")) > before, 10)
        assert self.pair.events("lvs1", "vrrp.reload")[-1]["applied"] is True

    def reload_ka(self, auth: str) -> None:
        assert self.ka is not None
        self.ka.reload(keepalived24.conf(interval=INTERVAL, priority=100, vip=VIP_CIDR, gateway=GW_CIDR,
                                         auth=auth))

    def havs_states(self) -> list[str]:
        return [str(e["to"]) for e in self.pair.events("lvs1", "vrrp.state")]

    def ka_states(self) -> list[str]:
        assert self.ka is not None
        return [line.split("Entering ")[1].split()[0] for line in self.ka.text().splitlines() if "Entering " in line]

    def rejects(self) -> list[dict[str, object]]:
        return self.pair.events("lvs1", "vrrp.auth_reject")

    def ka_auth_errors(self) -> list[str]:
        assert self.ka is not None
        words = ("authentication", "HMAC", "stale", "replayed", "trailer", "too long")
        return [line for line in self.ka.text().splitlines() if any(w in line for w in words)]

    def stop(self) -> None:
        if self.ka is not None:
            self.ka.stop()
        self.pair.stop_all()


@pytest.fixture(scope="module")
def lab() -> Iterator[SeedLab]:
    keepalived24.require()
    with SeedLab() as lab:
        yield lab


@pytest.fixture
def fresh(lab: SeedLab) -> Iterator[SeedLab]:
    for node in ("lvs1", "lvs2"):
        lab.recover(node)
    yield lab


CAPTURE = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
s.settimeout(5)
while True:
    data, addr = s.recvfrom(2048)
    if addr[0] == sys.argv[1]:
        print(data.hex()); break
"""


def capture_advert(lab: SeedLab, node: str, src: ipaddress.IPv4Address) -> bytes:
    """One VRRP packet from `src` as `node` receives it (IP header included)."""
    out = lab.exec(node, [sys.executable, "-c", CAPTURE, str(src)], timeout=10).stdout.strip()
    return bytes.fromhex(out)


@pytest.mark.parametrize("anti_replay", ["time", "monotonic"])
def test_havs_and_keepalived_24_in_both_roles(fresh: SeedLab, anti_replay: str) -> None:
    from havs.core import vrrp_auth

    ka_auth = keepalived24.auth_block({1: K1}, 1, anti_replay=anti_replay)
    m = Mixed(fresh, havs_auth({1: K1}, 1, anti_replay=anti_replay))
    try:
        # 1. havs MASTER, keepalived BACKUP: keepalived accepts our signed adverts and never takes over
        m.start_havs()
        wait_until("havs MASTER", lambda: m.pair.holds("lvs1") == (True, True), MDI + 5)
        ka = m.start_ka(ka_auth)
        time.sleep(MDI + 1.5)
        assert ka.proc.poll() is None, "keepalived exited:\n" + ka.text()[-3000:]
        assert m.pair.holds("lvs2") == (False, False), "keepalived did not accept havs's signed adverts"
        assert m.ka_states() == ["BACKUP"] and m.ka_auth_errors() == []
        # havs resigns (priority 0, signed): keepalived takes over at once
        m.pair.signal("lvs1", signal.SIGTERM)
        took = wait_until("keepalived takes over", lambda: m.pair.holds("lvs2") == (True, True), MDI + 2)
        print(f"{anti_replay}: keepalived took over {took * 1000:.0f} ms after havs SIGTERM")
        assert m.pair.procs["lvs1"].wait(5) == 0

        # 2. keepalived MASTER, havs (higher priority, no preemption) BACKUP: havs accepts its adverts
        m2 = Mixed(fresh, havs_auth({1: K1}, 1, anti_replay=anti_replay), preempt=False)
        m2.ka = m.ka
        m2.pair.procs.update(m.pair.procs)
        m2.pair.logs.update(m.pair.logs)
        m = m2
        m.start_havs()
        wait_until("havs started", lambda: bool(m.pair.events("lvs1", "vrrp.state")), 5)
        time.sleep(MDI + 1)
        assert m.pair.holds("lvs1") == (False, False), "havs did not accept keepalived's signed adverts"
        assert m.havs_states() == ["BACKUP"] and m.rejects() == []
        assert m.pair.events("lvs1", "vrrp.started")[0]["auth"]["anti_replay"] == anti_replay  # type: ignore[index]
        # keepalived's own adverts verify byte for byte with havs's code (its trailer, its key)
        pkt = capture_advert(fresh, "lvs1", KA_ADDR)
        payload = pkt[(pkt[0] & 0x0F) * 4:]
        msg, tail = vrrp_auth.split(payload, 4)
        assert tail is not None, f"keepalived sent no trailer: {payload.hex()}"
        checker = vrrp_auth.Authenticator(vrrp_auth.AuthParams(keys={1: vrrp_auth.parse_key(K1)}, active_key=1,
                                                               anti_replay=anti_replay))  # type: ignore[arg-type]
        assert checker.check(msg, tail, version=3, router_id=51, src=KA_ADDR, wall=time.time()) is None
        print(f"\nkeepalived 2.4.3 advert ({anti_replay}) from {KA_ADDR}: {payload.hex()}")
        # keepalived resigns: havs takes over on its priority 0, naming it
        ka.stop()
        took = wait_until("havs takes over", lambda: m.pair.holds("lvs1") == (True, True), MDI + 2)
        print(f"{anti_replay}: havs took over {took * 1000:.0f} ms after keepalived SIGTERM")
        last = m.pair.events("lvs1", "vrrp.state")[-1]
        assert (last["to"], last["peer"]) == ("MASTER", str(KA_ADDR))
        assert m.rejects() == []
    finally:
        m.stop()


def test_key_rotation_one_side_then_the_other_without_a_transition(fresh: SeedLab) -> None:
    m = Mixed(fresh, havs_auth({1: K1}, 1))
    try:
        m.start_havs()
        wait_until("havs MASTER", lambda: m.pair.holds("lvs1") == (True, True), MDI + 5)
        m.start_ka(keepalived24.auth_block({1: K1}, 1))
        time.sleep(MDI + 1)
        assert m.ka_states() == ["BACKUP"]
        steps = [({1: K1, 2: K2}, 1), ({1: K1, 2: K2}, 2), ({2: K2}, 2)]
        for keys, active in steps:
            for side in ("havs", "keepalived"):
                if side == "havs":
                    m.reload_havs(havs_auth(keys, active))
                else:
                    m.reload_ka(keepalived24.auth_block(keys, active))
                time.sleep(MDI + 0.5)  # longer than the down interval: a refused advert would show
                assert m.pair.holds("lvs1") == (True, True) and m.pair.holds("lvs2") == (False, False), side
        assert m.havs_states() == ["BACKUP", "MASTER"]  # its start, nothing since
        assert "MASTER" not in m.ka_states(), m.ka.text()[-3000:]  # type: ignore[union-attr]
        assert m.ka_auth_errors() == [] and m.rejects() == []
        assert m.pair.events("lvs1", "vrrp.reload")[-1]["auth"]["key_ids"] == [2]  # type: ignore[index]
    finally:
        m.stop()


def test_migration_receive_only_permissive_enforce_without_a_transition(fresh: SeedLab) -> None:
    m = Mixed(fresh)  # an unauthenticated pair
    try:
        m.start_havs()
        wait_until("havs MASTER", lambda: m.pair.holds("lvs1") == (True, True), MDI + 5)
        m.start_ka()
        time.sleep(MDI + 1)
        assert m.ka_states() == ["BACKUP"]
        for mode in ("receive_only", "permissive", "enforce"):
            for side in ("keepalived", "havs"):
                if side == "havs":
                    m.reload_havs(havs_auth({1: K1}, 1, mode=mode))
                else:
                    m.reload_ka(keepalived24.auth_block({1: K1}, 1, mode=mode))
                time.sleep(MDI + 0.5)
                assert m.pair.holds("lvs1") == (True, True) and m.pair.holds("lvs2") == (False, False), (mode, side)
        assert m.havs_states() == ["BACKUP", "MASTER"]
        assert "MASTER" not in m.ka_states(), m.ka.text()[-3000:]  # type: ignore[union-attr]
        assert m.rejects() == []
        assert m.pair.events("lvs1", "vrrp.reload")[-1]["auth"]["mode"] == "enforce"  # type: ignore[index]
    finally:
        m.stop()


# ------------------------------------------------------------------------------------ adversarial drill

DRILL_RATE = 1000  # packets per second, all three kinds together
DRILL_SECONDS = 10.0
WRONG = "hex:" + bytes(range(7, 39)).hex()


def elect_auth(lab: SeedLab, block: str, unicast: bool = False) -> Pair:
    """An elected havs pair (lvs1 MASTER), both with `block` (or no auth_hmac)."""
    pair = Pair(lab, INTERVAL, unicast=unicast)
    if block:
        pair.config.write_text(with_auth(pair.config.read_text(), block))
    pair.start("lvs1")
    wait_until("lvs1 MASTER", lambda: pair.holds("lvs1") == (True, True), MDI + 5)
    pair.start("lvs2")
    wait_until("lvs2 started", lambda: bool(pair.events("lvs2", "vrrp.state")), 5)
    time.sleep(MDI + 0.5)
    assert pair.holds("lvs2") == (False, False)
    return pair


def dropped(lab: SeedLab, pair: Pair, node: str) -> dict[str, int]:
    """The node's VRRP drop counters, from `havs status --json`."""
    import json
    import subprocess

    sock = lab.workdir / "run" / f"{pair.config.stem}-{node}.sock"
    out = subprocess.run([str(keepalived24.REPO / ".venv" / "bin" / "havs"), "status", "--json", "--socket", str(sock)],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    return dict(json.loads(out)["vrrp"][0]["dropped"])


def _ip(src: str, payload: bytes) -> bytes:
    import socket
    import struct

    return struct.pack("!BBHHHBBH4s4s", 0x45, 0xC0, 20 + len(payload), 0, 0, 255, 112, 0, socket.inet_aton(src),
                       socket.inet_aton("224.0.0.18")) + payload


def attack(lab: SeedLab) -> dict[str, int]:
    """From rs1 on the heartbeat segment, DRILL_RATE packets/s for DRILL_SECONDS, in turn: (a) unsigned
    priority 255 from the master's own address and from the backup's, (b) the master's latest signed
    advert replayed as captured, (c) priority 255 from the master's and the backup's addresses signed with
    a wrong key. Returns the packets sent by kind and forged source ("a:192.168.72.131", "b", "c:…")."""
    import contextlib
    import socket

    from havs.core import vrrp_auth, wire
    from integration.bench_flood import LVS1_HB, LVS2_HB, RS1, _group_socket, _InNetns, _packet

    sent: dict[str, int] = {}
    wrong = vrrp_auth.parse_key(WRONG)
    adv255 = wire.Advertisement(3, 51, 255, (ipaddress.IPv4Address("192.168.0.108"),
                                             ipaddress.IPv4Address("192.168.72.130")), round(INTERVAL * 100))
    srcs = (LVS1_HB, LVS2_HB)

    def body(stop: object) -> None:
        with contextlib.suppress(OSError):  # another machine would have its own CPU (see bench_flood)
            os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(2))
        out = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        out.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
        out.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        out.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)  # our forgeries are not captures
        listen = _group_socket("eth0", RS1)
        listen.setblocking(False)
        unsigned = [_packet(LVS1_HB, 255), _packet(LVS2_HB, 255)]
        captured: bytes | None = None
        with out, listen:
            while captured is None:  # one of the master's adverts to replay
                with contextlib.suppress(BlockingIOError):
                    data, (src, _) = listen.recvfrom(2048)
                    if src == LVS1_HB and data[20 + 2] == PRIORITY_LVS1:
                        captured = data
            total = int(DRILL_RATE * DRILL_SECONDS)
            start = time.monotonic()
            forged: list[bytes] = []
            for i in range(total):
                if i % 10 == 0:
                    with contextlib.suppress(BlockingIOError):
                        while True:  # keep the latest capture (a fresh replay, inside the window)
                            data, (src, _) = listen.recvfrom(2048)
                            if src == LVS1_HB and data[20 + 2] == PRIORITY_LVS1:  # not our own forgeries
                                captured = data
                    forged = []
                    for src in srcs:
                        a = ipaddress.IPv4Address(src)
                        msg = wire.encode(adv255, src=a, dst=wire.MULTICAST_V4)
                        forged.append(_ip(src, msg + vrrp_auth.trailer(1, wrong, vrrp_auth.clock_seq(time.time()),
                                                                       msg, version=3, router_id=51, src=a)))
                kind, which = "abc"[i % 3], (i // 3) & 1
                pkt = unsigned[which] if kind == "a" else captured if kind == "b" else forged[which]
                out.sendto(pkt, ("224.0.0.18", 0))
                key = kind if kind == "b" else f"{kind}:{srcs[which]}"
                sent[key] = sent.get(key, 0) + 1
                if i % 10 == 9:
                    time.sleep(max(0.0, start + (i + 1) / DRILL_RATE - time.monotonic()))

    thread = _InNetns(lab.ns("rs1"), body)  # type: ignore[arg-type]
    thread.start()
    thread.join(DRILL_SECONDS + 30)
    thread.stop()
    return sent


class AdvertCapture:
    """lvs1's real adverts as rs2 hears them: the first arrival of each distinct packet at lvs1's priority
    (a forged one has another priority; a replay is a later copy of one already heard)."""

    def __init__(self, lab: SeedLab) -> None:
        from integration.bench_flood import _InNetns

        self.first: dict[bytes, float] = {}
        self._thread = _InNetns(lab.ns("rs2"), self._run)
        self._thread.start()

    def _run(self, stop: object) -> None:
        from integration.bench_flood import LVS1_HB, _group_socket

        s = _group_socket("eth0", "192.168.72.129")
        with s:
            while not stop.is_set():  # type: ignore[attr-defined]
                try:
                    data, (src, _) = s.recvfrom(2048)
                except TimeoutError:
                    continue
                if src == LVS1_HB and data[22] == PRIORITY_LVS1:
                    self.first.setdefault(data[20:], time.time())

    def worst_gap(self, t0: float, t1: float) -> tuple[float, int]:
        every = sorted(self.first.values())
        times = [t for t in every if t < t0][-1:] + [t for t in every if t0 <= t <= t1]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        return (max(gaps) if gaps else float("inf")), len(times)

    def close(self) -> None:
        self._thread.stop()


PRIORITY_LVS1 = 150


def run_drill(lab: SeedLab, pair: Pair) -> dict[str, object]:
    capture = AdvertCapture(lab)
    try:
        time.sleep(1.0)
        states = {n: len(pair.events(n, "vrrp.state")) for n in ("lvs1", "lvs2")}
        drops = {n: dropped(lab, pair, n) for n in ("lvs1", "lvs2")}
        t0 = time.time()
        sent = attack(lab)
        t1 = time.time()
        holders_at_end = [n for n in ("lvs1", "lvs2") if pair.holds(n) != (False, False)]
        master_changes = [e for e in pair.events("lvs1", "vrrp.state")[states["lvs1"]:]]
        time.sleep(0.5)
        after = {n: dropped(lab, pair, n) for n in ("lvs1", "lvs2")}
    finally:
        capture.close()
    worst, adverts = capture.worst_gap(t0, t1)
    return {
        "sent": sent, "seconds": round(t1 - t0, 2), "worst_gap": worst, "adverts": adverts,
        "transitions": {n: len(pair.events(n, "vrrp.state")) - states[n] for n in states},
        "counted": {n: {r: after[n].get(r, 0) - drops[n].get(r, 0) for r in set(after[n]) | set(drops[n])
                        if after[n].get(r, 0) != drops[n].get(r, 0)} for n in after},
        "holders": [n for n in ("lvs1", "lvs2") if pair.holds(n) == (True, True)],
        "holders_at_end_of_attack": holders_at_end,
        "lvs1_changes_during_attack": [(e["to"], e["reason"], e.get("peer"), e.get("peer_priority"))
                                       for e in master_changes],
    }


def test_adversarial_drill_enforce_holds_and_counts_every_packet(fresh: SeedLab) -> None:
    pair = elect_auth(fresh, havs_auth({1: K1}, 1))
    try:
        f = run_drill(fresh, pair)
        print(f"\nauth drill (enforce): {f}")
        sent = f["sent"]
        assert isinstance(sent, dict) and sum(sent.values()) == int(DRILL_RATE * DRILL_SECONDS)
        hb1, hb2 = "192.168.72.131", "192.168.72.132"
        assert f["seconds"] < DRILL_SECONDS + 1.5  # type: ignore[operator]
        assert f["transitions"] == {"lvs1": 0, "lvs2": 0}, "a state change under attack"
        assert f["holders"] == ["lvs1"] and pair.holds("lvs2") == (False, False)
        assert f["adverts"] >= DRILL_SECONDS / INTERVAL * 0.9  # type: ignore[operator]
        assert f["worst_gap"] <= INTERVAL + 0.020, f"worst advert gap {f['worst_gap'] * 1000:.0f} ms"  # type: ignore[operator]
        counted = f["counted"]
        assert isinstance(counted, dict)
        # every packet that reaches havs is counted under its reason. The kernel itself drops packets whose
        # source is one of the receiver's own addresses (accept_local=0): lvs1 never sees (a)/(c) forged
        # from its own address nor the replays of its adverts; lvs2 never sees those forged from its own.
        c1, c2 = counted["lvs1"], counted["lvs2"]
        assert c1 == {"auth_missing": sent[f"a:{hb2}"], "auth_bad_mac": sent[f"c:{hb2}"]}, c1
        assert c2.get("auth_missing") == sent[f"a:{hb1}"] and c2.get("auth_bad_mac") == sent[f"c:{hb1}"], c2
        assert c2.get("auth_replay", 0) + c2.get("auth_stale", 0) == sent["b"], c2
        assert set(c2) <= {"auth_missing", "auth_bad_mac", "auth_replay", "auth_stale"}, c2
        # the rate-limited event names the forged source and the reason
        for node, src, reasons in (("lvs1", hb2, {"auth_missing", "auth_bad_mac"}),
                                   ("lvs2", hb1, {"auth_missing", "auth_bad_mac", "auth_replay"})):
            rejects = pair.events(node, "vrrp.auth_reject")
            assert {e["src"] for e in rejects} == {src} and {e["reason"] for e in rejects} == reasons, rejects
            assert len(rejects) < 100  # rate-limited, not one line per packet
    finally:
        pair.stop_all()


def test_adversarial_drill_without_auth_shows_the_takeover(fresh: SeedLab) -> None:
    pair = elect_auth(fresh, "")  # the same pair and the same attack, without auth_hmac
    try:
        f = run_drill(fresh, pair)
        print(f"\nauth drill (no auth_hmac): {f}")
        # the master obeyed the forged priority 255 (from the backup's address) and stepped down; while the
        # attack ran no director held the VIP: the attacker owns the virtual router
        assert ("BACKUP", "higher_priority", "192.168.72.132", 255) in f["lvs1_changes_during_attack"]  # type: ignore[operator]
        assert f["holders_at_end_of_attack"] == [], "the forged priority 255 did not take the addresses"
    finally:
        pair.stop_all()


def test_unicast_havs_pair_signed_elects_and_hands_over(fresh: SeedLab) -> None:
    pair = elect_auth(fresh, havs_auth({1: K1, 2: K2}, 2, anti_replay="monotonic"), unicast=True)
    try:
        assert pair.events("lvs2", "vrrp.started")[0]["mode"] == "unicast"
        pair.signal("lvs1", signal.SIGTERM)  # signed priority 0 to the peer: it takes over after its skew
        took = wait_until("lvs2 takes over", lambda: pair.holds("lvs2") == (True, True), MDI + 2)
        print(f"\nunicast signed handover: {took * 1000:.0f} ms")
        last = pair.events("lvs2", "vrrp.state")[-1]
        assert (last["to"], last["peer"], last["peer_priority"]) == ("MASTER", "192.168.72.131", 0)
        assert not pair.events("lvs1", "vrrp.auth_reject") and not pair.events("lvs2", "vrrp.auth_reject")
    finally:
        pair.stop_all()
