"""`auth_hmac` interop with keepalived 2.4.3 (built from vendor/ by scripts/setup) in network namespaces on
the host kernel (root; no IPVS needed).

havs on lvs1 (150) and keepalived 2.4.3 on lvs2 (100), heartbeat on eth1 (multicast): each as master and
as backup, `time` and `monotonic`; a key rotation done on both sides one after the other; and the
migration of an unauthenticated pair through receive_only → permissive → enforce. "No transition" is
checked on both sides: havs's vrrp.state events and keepalived's "Entering … STATE" lines.
"""

from __future__ import annotations

import ipaddress
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
    line = "  unicast_peers: []\n"
    assert line in template
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
