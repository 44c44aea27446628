"""Several VRRP instances and sync groups in the config: the one-instance form still reads as before, a
list reads as instances, and every cross-instance mistake is named with its file:line."""

from __future__ import annotations

import pytest

from havs.core.config import parse_config, parse_located
from havs.core.model import Vrrp
from havs.errors import ConfigError

NODES = """\
nodes:
  lvs1:
    priority: 150
    interfaces: {client: eth0, server: eth1}
  lvs2:
    priority: 100
    interfaces: {client: eth0, server: eth1}
"""

ONE = NODES + """\
vrrp:
  router_id: 51
  interface: server
  addresses:
    - {address: 192.168.0.108/24, interface: client}
"""

TWO = NODES + """\
vrrp:
  - name: VI_A
    router_id: 51
    interface: client
    priority: {lvs1: 150, lvs2: 100}
    addresses:
      - {address: 192.168.0.108/24, interface: client}
  - name: VI_B
    router_id: 52
    interface: client
    priority: {lvs1: 100, lvs2: 150}
    addresses:
      - {address: 192.168.0.109/24, interface: client}
"""

DUAL = NODES + """\
vrrp:
  - name: VI_4
    router_id: 51
    interface: server
    addresses:
      - {address: 192.168.0.108/24, interface: client}
  - name: VI_6
    router_id: 51
    interface: server
    addresses:
      - {address: "fd00:0:0:1::108/64", interface: client}
vrrp_sync_groups:
  - name: G_SEED
    instances: [VI_4, VI_6]
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "f.yaml")
    return [str(p) for p in info.value.problems]


def test_the_one_instance_form_is_a_list_of_one_named_vi_1() -> None:
    cfg = parse_config(ONE)
    assert [v.name for v in cfg.vrrp] == ["VI_1"]
    assert cfg.vrrp[0].priority_of("lvs1", cfg.nodes["lvs1"]) == 150
    assert cfg.vrrp[0].priority_of("lvs2", cfg.nodes["lvs2"]) == 100
    assert cfg.floating == {"192.168.0.108": "VI_1"} and cfg.group_of("VI_1") is None


def test_no_vrrp_is_an_empty_list() -> None:
    assert parse_config(NODES).vrrp == []


def test_one_instance_problems_keep_their_old_paths_and_lines() -> None:
    assert problems(ONE.replace("router_id: 51", "router_id: 300")) == [
        "f.yaml:9: vrrp.router_id: must be 1..255, got 300"]
    assert problems(ONE.replace("interface: server\n  addresses", "interface: nosuch\n  addresses")) == [
        "f.yaml:4: nodes.lvs1.interfaces: no interface for role(s) nosuch used by vrrp"]


def test_a_loaded_one_instance_file_names_paths_without_an_index() -> None:
    loaded = parse_located(ONE, "f.yaml")
    assert str(loaded.problem(("vrrp", 0, "interface"), "x")) == "f.yaml:10: vrrp.interface: x"


def test_several_instances_with_per_node_priorities() -> None:
    cfg = parse_config(TWO)
    a, b = cfg.vrrp
    def prio(v: Vrrp) -> tuple[str, int, int]:
        return v.name, v.priority_of("lvs1", cfg.nodes["lvs1"]), v.priority_of("lvs2", cfg.nodes["lvs2"])

    assert prio(a) == ("VI_A", 150, 100) and prio(b) == ("VI_B", 100, 150)
    assert cfg.instance("VI_B") is b and cfg.floating == {"192.168.0.108": "VI_A", "192.168.0.109": "VI_B"}
    with pytest.raises(KeyError):
        cfg.instance("VI_C")


def test_a_dual_stack_sync_group_may_reuse_the_router_id_across_families() -> None:
    cfg = parse_config(DUAL)
    group = cfg.group_of("VI_6")
    assert group is not None and group.name == "G_SEED" and group.instances == ["VI_4", "VI_6"]
    assert [v.family for v in cfg.vrrp] == [4, 6]


@pytest.mark.parametrize(("old", "new", "want"), [
    ("name: VI_B", "name: VI_A", "f.yaml:15: vrrp[1].name: instance VI_A is declared twice (also vrrp[0])"),
    ("router_id: 52", "router_id: 51", "f.yaml:16: vrrp[1].router_id: router id 51 is already used by instance "
                                       "VI_A on eth0 (IPv4) of node lvs1: one router id per interface and family"),
    ("192.168.0.109/24", "192.168.0.108/24", "f.yaml:20: vrrp[1].addresses[0]: 192.168.0.108 is already an address "
                                             "of instance VI_A: an address floats in exactly one instance"),
    ("{lvs1: 100, lvs2: 150}", "{lvs1: 100}", "f.yaml:18: vrrp[1].priority: no priority for node(s) lvs2: a per-node "
                                              "priority map names every node"),
    ("{lvs1: 100, lvs2: 150}", "{lvs1: 100, lvs2: 150, lvs3: 1}",
     "f.yaml:18: vrrp[1].priority.lvs3: lvs3 is not a node"),
    ("{lvs1: 100, lvs2: 150}", "{lvs1: 100, lvs2: 255}", "f.yaml:18: vrrp[1].priority.lvs2: must be 1..254, got 255"),
    ("name: VI_B", "name: 'VI B'", "f.yaml:15: vrrp[1].name: String should match pattern '^[A-Za-z0-9_.-]{1,32}$', "
                                   "got 'VI B'"),
])
def test_cross_instance_mistakes_are_named_with_file_and_line(old: str, new: str, want: str) -> None:
    assert old in TWO
    assert want in problems(TWO.replace(old, new, 1))


def test_the_same_router_id_on_one_interface_and_family_is_refused_on_different_roles_too() -> None:
    # two roles naming one NIC: the router ids collide on the wire although the roles differ
    text = TWO.replace("{client: eth0, server: eth1}\n  lvs2", "{client: eth0, server: eth0}\n  lvs2", 1)
    text = text.replace("router_id: 52\n    interface: client", "router_id: 51\n    interface: server")
    assert any("router id 51 is already used by instance VI_A on eth0 (IPv4) of node lvs1" in p
               for p in problems(text))


@pytest.mark.parametrize(("old", "new", "want"), [
    ("instances: [VI_4, VI_6]", "instances: [VI_4, VI_7]",
     "vrrp_sync_groups[0].instances[1]: no VRRP instance is called VI_7"),
    ("instances: [VI_4, VI_6]", "instances: [VI_4]",
     "vrrp_sync_groups[0].instances: List should have at least 2 items"),
    ("instances: [VI_4, VI_6]", "instances: [VI_4, VI_4]", "vrrp_sync_groups[0].instances[1]: VI_4 is listed twice"),
    ("    instances: [VI_4, VI_6]\n", "    instances: [VI_4, VI_6]\n  - name: G2\n    instances: [VI_6, VI_4]\n",
     "vrrp_sync_groups[1].instances[0]: VI_6 is already in sync group G_SEED: an instance is in at most one group"),
])
def test_sync_group_mistakes_are_named(old: str, new: str, want: str) -> None:
    assert old in DUAL
    found = problems(DUAL.replace(old, new, 1))
    assert any(want in p for p in found), found


def test_connection_sync_on_two_instances_is_refused() -> None:
    sync = "    connection_sync: {interface: server}\n"
    text = TWO
    for vip in ("192.168.0.108", "192.168.0.109"):
        at = f"    addresses:\n      - {{address: {vip}"
        text = text.replace(at, sync + at)
    found = problems(text)
    assert any("vrrp[1].connection_sync: connection_sync on one instance only" in p and "instance VI_A" in p
               for p in found), found


def test_semantic_problems_name_the_instance_index() -> None:
    text = TWO.replace("192.168.0.109/24", "0.0.0.0/24")
    assert any(p.startswith("f.yaml:20: vrrp[1].addresses[0].address: 0.0.0.0 is the unspecified address")
               for p in problems(text)), problems(text)


@pytest.mark.parametrize(("notify", "want"), [
    ("{master: [notify.sh]}", "f.yaml:22: vrrp_sync_groups[0].notify.master[0]: 'notify.sh' must be an absolute path"),
    ("{backup: []}", "f.yaml:22: vrrp_sync_groups[0].notify.backup: is an empty command"),
])
def test_a_sync_groups_notify_hooks_are_checked_as_an_instances(notify: str, want: str) -> None:
    # havs check's host checks skip a relative or empty command as "already an error of the file": it must be
    text = DUAL + f"    notify: {notify}\n"
    found = problems(text)
    assert any(p.startswith(want) for p in found), found
    # and with another mistake in the file (partial validation), still named
    found = problems(text.replace("router_id: 51\n    interface: server\n    addresses:\n      - {address: 192",
                                  "router_id: 500\n    interface: server\n    addresses:\n      - {address: 192", 1))
    assert any(p.startswith(want) for p in found) and any("router_id: must be 1..255" in p for p in found), found


def test_every_cross_instance_mistake_is_named_at_once_beside_the_files_other_mistakes() -> None:
    # havs check names every problem in one run: a duplicate address, a reused router id, an unknown group
    # member and a typo elsewhere, together (the model alone stops at the first)
    text = (TWO.replace("192.168.0.109/24", "192.168.0.108/24").replace("router_id: 52", "router_id: 51")
            + "vrrp_sync_groups: [{name: G, instances: [VI_A, VI_X]}]\nsettings: {reconcile_interval: -1}\n")
    found = problems(text)
    for want in ("f.yaml:16: vrrp[1].router_id: router id 51 is already used by instance VI_A",
                 "f.yaml:20: vrrp[1].addresses[0]: 192.168.0.108 is already an address of instance VI_A",
                 "f.yaml:21: vrrp_sync_groups[0].instances[1]: no VRRP instance is called VI_X",
                 "f.yaml:22: settings.reconcile_interval:"):
        assert sum(p.startswith(want) for p in found) == 1, (want, found)
    # an instance left out for its own mistake is no unknown group member; a node left out is no unknown node
    text = TWO.replace("router_id: 52", "router_id: 500").replace("lvs2:\n    priority: 100", "lvs2:\n    priority: 0")
    found = problems(text + "vrrp_sync_groups: [{name: G, instances: [VI_A, VI_B]}]\n")
    assert [p.split(": ")[0] for p in found] == ["f.yaml:6", "f.yaml:16"], found


GROUPED = TWO + """\
vrrp_sync_groups:
  - name: G_AB
    instances: [VI_A, VI_B]
"""


def test_sync_group_members_that_prefer_different_nodes_are_refused() -> None:
    # VI_A prefers lvs1, VI_B lvs2, both preempting: the group would pull both ways (no failback either way,
    # both directors stepping down together at start)
    assert problems(GROUPED) == [
        "f.yaml:23: vrrp_sync_groups[0].instances: VI_A and VI_B prefer different nodes (VI_A: lvs1 150, lvs2 100; "
        "VI_B: lvs1 100, lvs2 150): a sync group moves all its members together (keepalived's vrrp_sync_group), "
        "so they must prefer the same node: give them the same per-node priority order"]
    # a tie on one member while the other prefers a node is a disagreement too (the tie goes by address)
    found = problems(GROUPED.replace("{lvs1: 100, lvs2: 150}", "{lvs1: 120, lvs2: 120}"))
    assert len(found) == 1 and found[0].startswith("f.yaml:23: vrrp_sync_groups[0].instances: VI_A and VI_B"), found
    # named with the file's other mistakes too (partial validation)
    found = problems(GROUPED.replace("router_id: 52", "router_id: 500"))
    assert any(p.startswith("f.yaml:16: vrrp[1].router_id: must be 1..255") for p in found), found
    assert not any("prefer different nodes" in p for p in found), found  # VI_B left out for its own mistake
    found = problems(GROUPED + "settings: {reconcile_interval: -1}\n")
    assert any(p.startswith("f.yaml:23: vrrp_sync_groups[0].instances: VI_A and VI_B prefer different nodes")
               for p in found), found


@pytest.mark.parametrize(("old", "new"), [
    ("{lvs1: 100, lvs2: 150}", "{lvs1: 150, lvs2: 100}"),  # the same priorities on every node
    ("{lvs1: 100, lvs2: 150}", "{lvs1: 120, lvs2: 20}"),  # other values, the same order
    ("    priority: {lvs1: 100, lvs2: 150}\n", ""),  # the nodes' own priorities: lvs1 150, lvs2 100
])
def test_sync_group_members_that_prefer_the_same_node_are_accepted(old: str, new: str) -> None:
    assert old in GROUPED
    cfg = parse_config(GROUPED.replace(old, new, 1))
    group = cfg.group_of("VI_B")
    assert group is not None and group.instances == ["VI_A", "VI_B"]
