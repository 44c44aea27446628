"""`auth_hmac` in the VRRP core: pairs over the fake link of test_vrrp (adverts signed and verified on the
wire), forged and replayed adverts as counted drops, reload migrations and key rotation in place, and the
peer named in state changes."""

from __future__ import annotations

import ipaddress

from test_vrrp import A_ADDR, B_ADDR, GW, VIP, WALL0, elected, pair, params

from havs.core import vrrp_auth, wire
from havs.core.vrrp import BACKUP, MASTER, AdvertDropped, SendAdvertisement, StateChanged, VrrpInstance
from havs.core.vrrp_auth import AuthParams
from havs.core.wire import Advertisement

K1, K2, WRONG = bytes(range(32)), bytes(range(32, 96)), bytes(range(1, 33))


def ap(mode: str = "enforce", keys: dict[int, bytes] | None = None, active: int = 1,
       anti_replay: str = "time") -> AuthParams:
    return AuthParams(keys=keys or {1: K1}, active_key=active, mode=mode, anti_replay=anti_replay,  # type: ignore[arg-type]
                      time_window=5)


def signed(adv: Advertisement, src: ipaddress.IPv4Address, key: bytes, seq_wall: float, key_id: int = 1) -> bytes:
    msg = wire.encode(adv, src=src, dst=wire.MULTICAST_V4)
    return msg + vrrp_auth.trailer(key_id, key, vrrp_auth.clock_seq(seq_wall), msg, version=3, router_id=51, src=src)


def feed(inst: VrrpInstance, pkt: bytes, src: ipaddress.IPv4Address, now: float) -> list:
    return inst.receive_bytes(pkt, src=src, dst=wire.MULTICAST_V4, ttl=255, now=now, wall=WALL0 + now)


def test_authenticated_pair_elects_and_every_advert_carries_a_trailer() -> None:
    link = elected(a_kw={"auth": ap()}, b_kw={"auth": ap()})
    b = link.nodes["b"].inst
    assert b.counters.adverts_received > 5 and not b.counters.dropped
    assert b.snapshot()["auth"] == {"mode": "enforce", "anti_replay": "time", "time_window": 5, "active_key": 1,
                                    "key_ids": [1], "rejected": dict.fromkeys(vrrp_auth.REASONS, 0)}


def test_enforce_refuses_forged_unsigned_replayed_and_wrong_key_adverts() -> None:
    link = elected(a_kw={"auth": ap()}, b_kw={"auth": ap()})
    b = link.nodes["b"].inst
    t = link.now
    takeover = Advertisement(3, 51, 255, (VIP, GW), 100)
    # (a) unauthenticated priority 255 with the master's own source address
    plain = wire.encode(takeover, src=A_ADDR, dst=wire.MULTICAST_V4)
    assert feed(b, plain, A_ADDR, t) == [AdvertDropped("auth_missing", A_ADDR)]
    # ... and at the master itself (counted as unauthenticated, not as its own), and from the backup's address
    a = link.nodes["a"].inst
    assert feed(a, plain, A_ADDR, t) == [AdvertDropped("auth_missing", A_ADDR)]
    as_b = wire.encode(takeover, src=B_ADDR, dst=wire.MULTICAST_V4)
    assert feed(a, as_b, B_ADDR, t) == [AdvertDropped("auth_missing", B_ADDR)]
    # (c) signed with a wrong key under a known id, and under an unknown id
    assert feed(b, signed(takeover, A_ADDR, WRONG, WALL0 + t), A_ADDR, t)[0].reason == "auth_bad_mac"
    assert feed(b, signed(takeover, A_ADDR, K1, WALL0 + t, key_id=9), A_ADDR, t)[0].reason == "auth_unknown_key"
    # (b) a captured advert replayed: within the window a replay, after it stale
    a_sent = [p for _, p in link.actions("a", SendAdvertisement)]
    assert a_sent
    capture = wire.encode(a_sent[-1].adv, src=A_ADDR, dst=wire.MULTICAST_V4)
    capture += vrrp_auth.trailer(1, K1, b.auth.marks[A_ADDR], capture, version=3, router_id=51, src=A_ADDR)  # type: ignore[union-attr]
    assert feed(b, capture, A_ADDR, t)[0].reason == "auth_replay"
    assert feed(b, capture, A_ADDR, t + 10)[0].reason == "auth_stale"
    link.run_until(t + 20)
    assert link.state("a") == MASTER and link.state("b") == BACKUP
    rejected = b.snapshot()["auth"]["rejected"]  # type: ignore[index]
    assert rejected == {"auth_missing": 1, "auth_malformed": 0, "auth_unknown_key": 1, "auth_bad_mac": 1,
                        "auth_stale": 1, "auth_replay": 1}


def test_without_auth_the_same_forged_advert_takes_over() -> None:
    link = elected()
    b = link.nodes["b"].inst
    # priority 255 from the backup's address (any address but the master's own does it)
    plain = wire.encode(Advertisement(3, 51, 255, (VIP, GW), 100), src=B_ADDR, dst=wire.MULTICAST_V4)
    a = link.nodes["a"].inst
    out = a.receive_bytes(plain, src=B_ADDR, dst=wire.MULTICAST_V4, ttl=255, now=link.now)
    assert any(isinstance(x, StateChanged) and x.to == BACKUP for x in out)
    assert b.state == BACKUP


def test_enforcing_receiver_drops_an_unauthenticated_peer_and_a_legacy_one_drops_signed_adverts() -> None:
    link = pair(a_kw={"auth": ap("enforce")})
    link.start("a")
    link.start("b")
    link.run_until(10.0)
    # neither hears the other: both MASTER (the fail-closed behaviour keepalived documents)
    assert link.state("a") == MASTER and link.state("b") == MASTER
    assert link.nodes["a"].inst.counters.dropped["auth_missing"] > 0
    assert link.nodes["b"].inst.counters.dropped["count"] > 0  # a trailer it does not know: too long


def test_migration_receive_only_permissive_enforce_without_a_transition() -> None:
    link = elected()
    changes = len(link.changes())
    t = link.now
    for mode in ("receive_only", "permissive", "enforce"):
        for name, addr, prio in (("a", A_ADDR, 200), ("b", B_ADDR, 100)):
            node = link.nodes[name]
            link.do(name, "reconfigure", params(addr, prio, auth=ap(mode)), prio)
            t += 3.5  # one director reloaded, the other not yet
            link.run_until(t)
            assert node.inst.snapshot()["auth"]["mode"] == mode  # type: ignore[index]
    link.run_until(t + 10)
    assert len(link.changes()) == changes  # no state change in the whole migration
    for name in ("a", "b"):
        assert not link.nodes[name].inst.counters.dropped


def test_key_rotation_on_one_side_then_the_other_without_a_transition_or_a_drop() -> None:
    link = elected(a_kw={"auth": ap()}, b_kw={"auth": ap()})
    changes = len(link.changes())
    t = link.now
    both1 = ap(keys={1: K1, 2: K2}, active=1)
    both2 = ap(keys={1: K1, 2: K2}, active=2)
    only2 = ap(keys={2: K2}, active=2)
    for step in (both1, both2, only2):
        for name, addr, prio in (("a", A_ADDR, 200), ("b", B_ADDR, 100)):
            link.do(name, "reconfigure", params(addr, prio, auth=step), prio)
            t += 2.5
            link.run_until(t)
    assert len(link.changes()) == changes
    assert not link.nodes["a"].inst.counters.dropped and not link.nodes["b"].inst.counters.dropped
    last = [a for _, a in link.actions("a", SendAdvertisement)][-1]
    assert last.adv.priority == 200


def test_reload_keeps_the_send_sequence_and_replay_marks() -> None:
    link = elected(a_kw={"auth": ap()}, b_kw={"auth": ap()})
    a, b = link.nodes["a"].inst, link.nodes["b"].inst
    seq, marks = a.auth.send_seq, dict(b.auth.marks)  # type: ignore[union-attr]
    link.do("a", "reconfigure", params(A_ADDR, 200, auth=ap(keys={1: K1, 2: K2})), 200)
    link.do("b", "reconfigure", params(B_ADDR, 100, auth=ap(keys={1: K1, 2: K2})), 100)
    assert a.auth.send_seq >= seq and b.auth.marks == marks  # type: ignore[union-attr]


def test_state_changes_name_the_peer_and_its_priority() -> None:
    link = elected()
    b_first = next(a for _, a in link.actions("b", StateChanged))
    assert b_first.peer is None  # start
    a_master = next(a for _, a in link.actions("a", StateChanged) if a.to == MASTER)
    assert a_master.reason == "master_down" and a_master.peer is None  # nobody heard yet
    # preempt: b's priority goes above a's
    link.do("b", "set_priority", 250)
    link.run_until(link.now + 5)
    a_down = [a for _, a in link.actions("a", StateChanged) if a.to == BACKUP][-1]
    assert (a_down.reason, a_down.peer, a_down.peer_priority) == ("higher_priority", B_ADDR, 250)
    b_up = [a for _, a in link.actions("b", StateChanged) if a.to == MASTER][-1]
    assert (b_up.reason, b_up.peer, b_up.peer_priority) == ("master_down", A_ADDR, 200)
    # a resigns (priority 0): a names b... b resigns and a names b with priority 0
    link.do("b", "stop")
    link.run_until(link.now + 5)
    a_up = [a for _, a in link.actions("a", StateChanged) if a.to == MASTER][-1]
    assert (a_up.peer, a_up.peer_priority) == (B_ADDR, 0)
