"""Config loading: the shipped file is valid, and broken files are rejected with file:line: path: message."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from havs.configfile import load_config
from havs.core.config import parse_config, select_node
from havs.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

BASE = """\
nodes:
  lvs1:
    priority: 150
    interfaces: {client: eth0, server: eth1}
  lvs2:
    interfaces: {client: eth0, server: eth1}
vrrp:
  router_id: 51
  interface: server
  addresses:
    - {address: 192.168.0.108/24, interface: client}
    - {address: 192.168.72.130/24, interface: server}
virtual_services:
  - address: 192.168.0.108
    port: 80
    scheduler: rr
    real_servers:
      - address: 192.168.72.128
        weight: 1
      - address: 192.168.72.129
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), "etc/havs.yaml")
    return [str(p) for p in info.value.problems]


def test_shipped_config_is_valid_for_both_nodes() -> None:
    config = load_config(str(REPO / "etc/havs.yaml"))
    lvs1 = select_node(config, "lvs1", "whatever")
    lvs2 = select_node(config, "lvs2", "whatever")
    assert lvs1.node.priority > lvs2.node.priority
    assert config.vrrp
    assert [(str(a.address), a.interface) for a in config.vrrp[0].addresses] == [
        ("192.168.0.108/24", "client"),
        ("192.168.72.130/24", "server"),
    ]
    (vs,) = config.virtual_services
    assert vs.name == "TCP 192.168.0.108:80" and vs.scheduler == "rr" and vs.forwarding == "nat"
    assert [str(rs.address) for rs in vs.real_servers] == ["192.168.72.128", "192.168.72.129"]


def test_base_is_valid_and_defaults_apply() -> None:
    config = parse_config(BASE, "x.yaml")
    vs = config.virtual_services[0]
    assert vs.real_server_port(vs.real_servers[1]) == 80
    assert vs.real_server_forwarding(vs.real_servers[1]) == "nat"
    assert config.nodes["lvs2"].priority == 100


def test_node_selected_by_hostname_or_rejected() -> None:
    config = parse_config(BASE, "x.yaml")
    assert select_node(config, None, "lvs2.example").name == "lvs2"
    with pytest.raises(ConfigError, match=r"this host \(web9\) is none of the nodes \(lvs1, lvs2\)"):
        select_node(config, None, "web9", "x.yaml")
    with pytest.raises(ConfigError, match="no node named 'lvs3'"):
        select_node(config, "lvs3", "h", "x.yaml")


def test_real_server_check_overrides_merge_key_by_key() -> None:
    text = BASE.replace(
        "    scheduler: rr\n",
        "    scheduler: rr\n    check: {type: http, path: /health, interval: 2, timeout: 1}\n",
    ).replace("        weight: 1\n", "        weight: 1\n        check: {path: /alive}\n")
    vs = parse_config(text, "x.yaml").virtual_services[0]
    own = vs.real_server_check(vs.real_servers[0])
    assert (own.type, own.path, own.interval) == ("http", "/alive", 2)
    assert vs.real_server_check(vs.real_servers[1]).path == "/health"


# Each broken config: (what to replace in BASE, with what) → the exact problem line expected.
BROKEN = [
    ("        weight: 1\n", "        weight: -1\n",
     "etc/havs.yaml:19: virtual_services[0].real_servers[0].weight: must be 0..65535, got -1"),
    ("        weight: 1\n", "        wieght: 1\n",
     "etc/havs.yaml:19: virtual_services[0].real_servers[0].wieght: unknown key"),
    ("  router_id: 51\n", "  router_id: 256\n", "etc/havs.yaml:8: vrrp.router_id: must be 1..255, got 256"),
    ("  router_id: 51\n", "  router_id: 0\n", "etc/havs.yaml:8: vrrp.router_id: must be 1..255, got 0"),
    ("    priority: 150\n", "    priority: 255\n", "etc/havs.yaml:3: nodes.lvs1.priority: must be 1..254, got 255"),
    ("    scheduler: rr\n", "    scheduler: roundrobin\n",
     "etc/havs.yaml:16: virtual_services[0].scheduler: unknown scheduler 'roundrobin'; one of rr, wrr, lc, wlc, "
     "lblc, lblcr, dh, sh, sed, nq, mh, fo, ovf"),
    ("      - address: 192.168.72.129\n", "      - address: 192.168.72.300\n",
     "etc/havs.yaml:20: virtual_services[0].real_servers[1].address: not a valid IP address, got '192.168.72.300'"),
    ("      - address: 192.168.72.129\n", "      - address: fd00::9\n",
     "etc/havs.yaml:20: virtual_services[0].real_servers[1].address: NAT needs the service's address family"),
    ("  interface: server\n", "  interface: server\n  state: MASTER\n", "etc/havs.yaml:10: vrrp.state: unknown key"),
    ("    port: 80\n", "    port: 80\n    port: 81\n", "etc/havs.yaml:16: virtual_services[0].port: duplicate key"),
    ("    port: 80\n", "    port: 65536\n", "etc/havs.yaml:15: virtual_services[0].port: must be 0..65535, got 65536"),
    ("    interfaces: {client: eth0, server: eth1}\nvrrp", "    interfaces: {client: eth0}\nvrrp",
     "etc/havs.yaml:6: nodes.lvs2.interfaces: no interface for role(s) server used by vrrp"),
    ("    - {address: 192.168.72.130/24, interface: server}\n",
     "    - {address: 192.168.72.130/24, interface: server}\n    - {address: 'fd00::1/64', interface: server}\n",
     "etc/havs.yaml:13: vrrp.addresses[2]: floating addresses of one VRRP instance must share a family"),
    ("  router_id: 51\n", "  router_id: 51\n  version: 2\n  advert_interval: 0.5\n",
     "etc/havs.yaml:10: vrrp.advert_interval: VRRPv2 adverts are whole seconds, got 0.5"),
    ("  router_id: 51\n", "  router_id: 51\n  auth_pass: secret\n",
     "etc/havs.yaml:9: vrrp.auth_pass: VRRPv2 only (VRRPv3 has no authentication; see auth_hmac)"),
    ("  router_id: 51\n", "  router_id: 51\n  version: 4\n",
     "etc/havs.yaml:9: vrrp.version: Input should be 2 or 3, got 4"),
    ("      - address: 192.168.72.129\n", "      - address: 192.168.72.128\n",
     "etc/havs.yaml:20: virtual_services[0].real_servers[1]: 192.168.72.128:80 is listed twice"),
    ("    scheduler: rr\n", "    scheduler: rr\n    check: {type: http, interval: 1, timeout: 2}\n",
     "etc/havs.yaml:17: virtual_services[0].check.timeout: must not exceed interval (1.0), got 2.0"),
    ("    scheduler: rr\n", "    scheduler: rr\n    check: {type: http, expect_status: [200, 700]}\n",
     "etc/havs.yaml:17: virtual_services[0].check.expect_status: status codes are 100..599 or ranges like "
     "'200-399', got 700"),
    ("    scheduler: rr\n", "    scheduler: rr\n    check: {type: http, expect_body: 'ok('}\n",
     "etc/havs.yaml:17: virtual_services[0].check.expect_body: not a valid regular expression: "
     "missing ), unterminated subpattern at position 2, got 'ok('"),
    ("    scheduler: rr\n", "    scheduler: rr\n    scheduler_flags: [mh-port]\n",
     "etc/havs.yaml:17: virtual_services[0].scheduler_flags[0]: mh-port does not apply to scheduler rr"),
    ("    scheduler: rr\n", "    scheduler: rr\n    persistence: {timeout: 300, netmask: 255.0.255.0}\n",
     "etc/havs.yaml:17: virtual_services[0].persistence.netmask: '255.0.255.0' is not an IPv4 netmask"),
    ("    port: 80\n", "    port: eighty\n",
     "etc/havs.yaml:15: virtual_services[0].port: must be a whole number, got 'eighty'"),
    ("        weight: 1\n", "        weight: 1\n        lower_threshold: 10\n        upper_threshold: 5\n",
     "etc/havs.yaml:20: virtual_services[0].real_servers[0].lower_threshold: must not exceed "
     "upper_threshold (5), got 10"),
]


@pytest.mark.parametrize(("old", "new", "expected"), BROKEN, ids=[b[2].split(": ", 2)[1] for b in BROKEN])
def test_broken_config_rejected_with_file_line_path(old: str, new: str, expected: str) -> None:
    assert old in BASE
    assert expected in problems(BASE.replace(old, new, 1))


def test_every_problem_is_reported_not_just_the_first() -> None:
    text = BASE.replace("  router_id: 51\n", "  router_id: 300\n").replace("        weight: 1\n", "        weight: x\n")
    found = problems(text)
    assert len(found) == 2
    assert found[0].startswith("etc/havs.yaml:8: vrrp.router_id")
    assert found[1].startswith("etc/havs.yaml:19: virtual_services[0].real_servers[0].weight")


def test_duplicate_virtual_service() -> None:
    text = BASE + "  - address: 192.168.0.108\n    port: 80\n"
    assert problems(text) == ["etc/havs.yaml:21: virtual_services[1]: TCP 192.168.0.108:80 is declared twice"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nodes: [\n", "etc/havs.yaml:2: YAML syntax"),
        ("", "etc/havs.yaml:1: the file is empty"),
        ("- 1\n- 2\n", "etc/havs.yaml:1: the top level must be a mapping of keys"),
        ("settings: {}\n", "etc/havs.yaml:1: nodes: required key is missing"),
    ],
)
def test_unusable_files(text: str, expected: str) -> None:
    assert any(p.startswith(expected) for p in problems(text)), problems(text)


def test_unreadable_file_names_itself(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read: No such file or directory"):
        load_config(str(tmp_path / "missing.yaml"))
