"""judge(): the reasons a valid new config must not replace the running one unforced."""

from __future__ import annotations

from pathlib import Path

import pytest

from havs.core.config import parse_config
from havs.core.model import Config
from havs.core.reload_guard import judge
from havs.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SEED_TEXT = (REPO / "etc/havs.yaml").read_text()
SEED = parse_config(SEED_TEXT, "etc/havs.yaml")
RS2 = "      - address: 192.168.72.129\n        port: 80\n        weight: 1\n"
RS3 = "      - address: 192.168.72.127\n        port: 80\n        weight: 1\n"
RS4 = "      - address: 192.168.72.126\n        port: 80\n        weight: 1\n"


def seed(old: str = "", new: str = "", extra: str = "") -> Config:
    assert old in SEED_TEXT
    return parse_config(SEED_TEXT.replace(old, new, 1) + extra, "x.yaml")


def test_same_config_and_harmless_changes_are_safe() -> None:
    assert judge(SEED, SEED, max_removed=0.5) == []
    assert judge(SEED, seed("  reconcile_interval: 5", "  reconcile_interval: 2"), max_removed=0.5) == []
    assert judge(SEED, seed("advert_interval: 0.1", "advert_interval: 0.2"), max_removed=0.5) == []
    # adding servers and services, or raising a weight, takes nothing away
    assert judge(SEED, seed(extra=RS3), max_removed=0.5) == []
    assert judge(SEED, seed(extra="  - {address: 192.168.0.108, port: 443, real_servers: [{address: 192.168.72.1}]}\n"),
                 max_removed=0.5) == []
    # a server back from weight 0 is not a removal either way round
    drained = seed(RS2, RS2.replace("weight: 1", "weight: 0"))
    assert judge(drained, SEED, max_removed=0.5) == []


def test_vrrp_removed() -> None:
    no_vrrp = parse_config(SEED_TEXT.split("# One VRRP instance")[0] + SEED_TEXT.split("garp:")[1].split("\n\n", 1)[1],
                           "x.yaml")
    assert no_vrrp.vrrp == [] and no_vrrp.virtual_services == SEED.virtual_services
    assert judge(SEED, no_vrrp, max_removed=0.5) == [
        "removes the vrrp section: VRRP would stop and the floating addresses be released"]
    assert judge(no_vrrp, SEED, max_removed=0.5) == []  # adding VRRP releases nothing


def test_floating_addresses_dropped_or_changed() -> None:
    gateway = "    - address: 192.168.72.130/24     # the real servers' default gateway\n      interface: server\n"
    dropped = seed(gateway)
    assert judge(SEED, dropped, max_removed=0.5) == ["drops floating address 192.168.72.130/24 on server"]
    moved = seed(gateway,
                 "    - address: 192.168.72.130/25\n      interface: server\n")
    assert judge(SEED, moved, max_removed=0.5) == [
        "changes floating address 192.168.72.130/24 on server to 192.168.72.130/25 on server"]
    vip = seed("192.168.0.108/24", "192.168.0.109/24")
    assert judge(SEED, vip, max_removed=0.5) == ["drops floating address 192.168.0.108/24 on client"]


def test_every_server_of_a_kept_service() -> None:
    empty = seed(SEED_TEXT[SEED_TEXT.index("    real_servers:"):], "    real_servers: []\n")
    assert judge(SEED, empty, max_removed=1.0) == [
        "takes every real server out of TCP 192.168.0.108:80 (2 in service now, none after)",
        "takes 2 of 2 real servers out (100%; the limit is settings.reload_max_removed = 100%)",
    ]
    all_drained = seed(SEED_TEXT[SEED_TEXT.index("    real_servers:"):],
                       SEED_TEXT[SEED_TEXT.index("    real_servers:"):].replace("weight: 1", "weight: 0"))
    assert judge(SEED, all_drained, max_removed=1.0)[0].startswith("takes every real server out of TCP")


def test_share_removed_counts_removals_services_and_drains() -> None:
    four = seed(extra=RS3 + RS4)
    assert judge(four, seed(extra=RS3), max_removed=0.5) == []  # 1 of 4
    assert judge(four, seed(), max_removed=0.5) == [
        "takes 2 of 4 real servers out (50%; the limit is settings.reload_max_removed = 50%)"]
    drains = seed(extra=RS3.replace("weight: 1", "weight: 0") + RS4.replace("weight: 1", "weight: 0"))
    assert judge(four, drains, max_removed=0.5) == [
        "takes 2 of 4 real servers out (50%; the limit is settings.reload_max_removed = 50%)"]
    assert judge(four, seed(extra=RS3), max_removed=0.25) != []  # 1 of 4 at a stricter limit
    assert judge(four, seed(extra=RS3), max_removed=0.0) != []  # 0: any removal needs --force
    assert judge(four, four, max_removed=0.0) == []
    # a service removed counts its servers
    two_services = seed(extra="  - {address: 192.168.0.108, port: 443, real_servers: [{address: 192.168.72.1}]}\n")
    assert judge(two_services, SEED, max_removed=0.5) == []  # 1 of 3
    assert judge(two_services, SEED, max_removed=0.3) == [
        "takes 1 of 3 real servers out (33%; the limit is settings.reload_max_removed = 30%)"]


def test_judge_is_pure() -> None:
    before = SEED.model_dump()
    judge(SEED, seed(RS2), max_removed=0.5)
    assert SEED.model_dump() == before


def effective(config: Config) -> object:
    """What a config makes a director do, with defaults filled in (port: 80 written or not)."""
    services = {vs.name: sorted((str(rs.address), vs.real_server_port(rs), rs.weight, vs.real_server_forwarding(rs),
                                 vs.real_server_check(rs)) for rs in vs.real_servers)
                for vs in config.virtual_services}
    return config.settings, config.nodes, list(enumerate(config.vrrp)), services


def test_every_parsing_prefix_of_the_shipped_file_is_dangerous() -> None:
    """A file caught mid-copy: each line-prefix of etc/havs.yaml that still validates is judged dangerous,
    except those that validate to the very same config (the cut only lost comments or defaults)."""
    lines = SEED_TEXT.splitlines(keepends=True)
    parsed = dangerous = same = 0
    for n in range(1, len(lines)):
        try:
            prefix = parse_config("".join(lines[:n]), "x.yaml")
        except ConfigError:
            continue
        parsed += 1
        if effective(prefix) == effective(SEED):
            same += 1
            continue
        reasons = judge(SEED, prefix, max_removed=SEED.settings.reload_max_removed)
        assert reasons, f"the first {n} lines of etc/havs.yaml are judged safe"
        dangerous += 1
    assert parsed >= 10 and dangerous >= 10, (parsed, dangerous, same)
    assert same <= 2  # only the cut inside the last server's defaulted keys (port, weight) can be the same


@pytest.mark.parametrize("limit", [0.0, 0.5, 1.0])
def test_removing_everything_is_always_dangerous(limit: float) -> None:
    nothing = parse_config(SEED_TEXT.split("virtual_services:")[0], "x.yaml")
    assert any("takes 2 of 2 real servers out" in r for r in judge(SEED, nothing, max_removed=limit))
