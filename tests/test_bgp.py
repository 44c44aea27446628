"""BGP active-active: the config section, BIRD's rendered config, the announce decision, the control
socket's framing and the `show protocols` parsers."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from havs.core.bgp import (
    Framer,
    announced_vips,
    converged,
    describe,
    exported_routes,
    parse_protocols,
    render_bird,
    servable,
    vip_protocol,
)
from havs.core.config import parse_config, select_node
from havs.core.desired import Desired, service_key
from havs.core.ipvs_table import Destination, IpvsTable, Service
from havs.errors import ConfigError

BASE = """\
nodes:
  d1: {interfaces: {up: eth0}, router_id: 10.1.0.11}
  d2: {interfaces: {up: eth0}, router_id: 10.1.0.12}
bgp:
  asn: 65001
  neighbors:
    - {address: 10.1.0.1, asn: 65000}
virtual_services:
  - address: 203.0.113.10
    port: 80
    scheduler: mh
    forwarding: dr
    on_down: inhibit
    announce: bgp
    real_servers:
      - address: 10.2.0.21
      - address: 10.2.0.22
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "f.yaml")
    return [str(p) for p in e.value.problems]


def test_valid_config_announces_its_vip() -> None:
    config = parse_config(BASE)
    assert announced_vips(config) == [ipaddress.ip_address("203.0.113.10")]
    assert config.bgp is not None and config.bgp.bfd.enabled and config.bgp.bfd.interval == 0.1
    view = select_node(config, "d1", "x")
    lines = describe(view)
    assert "BFD 100 ms x 3" in lines[0] and "10.1.0.1 AS 65000" in lines[0]
    assert "203.0.113.10/32" in lines[1]


@pytest.mark.parametrize(("change", "where"), [
    (("scheduler: mh", "scheduler: wlc"), "f.yaml:11: virtual_services[0].scheduler: announce: bgp needs mh"),
    (("on_down: inhibit", "on_down: remove"), "f.yaml:13: virtual_services[0].on_down: announce: bgp needs on_down"),
    (("forwarding: dr", "forwarding: nat"), "f.yaml:12: virtual_services[0].forwarding: announce: bgp needs dr or tun"),
    (("  d2: {interfaces: {up: eth0}, router_id: 10.1.0.12}", "  d2: {interfaces: {up: eth0}}"),
     "f.yaml:3: nodes.d2: bgp needs a router_id"),
    (("asn: 65001", "asn: 0"), "f.yaml:5: bgp.asn: must be 1"),
    (("{address: 10.1.0.1, asn: 65000}", "{address: 10.1.0.1, asn: 65000, password: 'a\"b'}"),
     "f.yaml:7: bgp.neighbors[0].password: must be printable"),
])
def test_bad_bgp_configs_name_file_line_and_key(change: tuple[str, str], where: str) -> None:
    text = BASE.replace(*change)
    assert text != BASE
    found = problems(text)
    assert any(p.startswith(where) for p in found), found


def test_bgp_service_needs_the_section_and_timers_are_checked() -> None:
    no_section = "\n".join(line for line in BASE.splitlines() if not line.startswith(("bgp:", "  asn", "  neighbors",
                                                                                     "    - {address: 10.1")))
    assert any("announce: bgp needs a top-level bgp: section" in p for p in problems(no_section))
    assert any("bgp.keepalive_time: must be at most hold_time/3" in p
               for p in problems(BASE.replace("asn: 65001", "asn: 65001\n  hold_time: 6\n  keepalive_time: 3")))
    assert any("bgp.communities: a community is 'ASN:value'" in p
               for p in problems(BASE.replace("asn: 65001", "asn: 65001\n  communities: ['65000:70000']")))


def test_vrrp_services_are_unchanged_by_the_bgp_rules() -> None:
    text = BASE.replace("    announce: bgp\n", "").replace("scheduler: mh", "scheduler: wlc")
    assert announced_vips(parse_config(text)) == []


def test_rendered_bird_config() -> None:
    text = BASE.replace("asn: 65001", "asn: 65001\n  communities: ['65000:100']\n  med: 10").replace(
        "{address: 10.1.0.1, asn: 65000}", "{address: 10.1.0.1, asn: 65000, password: s3cret}")
    conf = render_bird(select_node(parse_config(text), "d2", "x"), "/run/havs/bird/bird.log")
    assert "router id 10.1.0.12;" in conf
    assert "protocol static havs_vip_203_0_113_10 { disabled; ipv4; route 203.0.113.10/32 blackhole; }" in conf
    assert 'min rx interval 100 ms; min tx interval 100 ms; multiplier 3;' in conf
    assert "local as 65001; neighbor 10.1.0.1 as 65000; hold time 9; keepalive time 3;" in conf
    assert 'password "s3cret";' in conf and "bfd on;" in conf
    assert "bgp_community.add((65000,100)); bgp_med = 10; accept;" in conf
    no_bfd = render_bird(select_node(parse_config(BASE.replace("asn: 65001", "asn: 65001\n  bfd: {enabled: false}")),
                                     "d1", "x"), "/l")
    assert "bfd" not in no_bfd


@pytest.mark.skipif(shutil.which("bird") is None and not os.environ.get("CI"), reason="bird2 not installed")
def test_bird_accepts_the_rendered_config(tmp_path: Path) -> None:
    head = BASE.replace("asn: 65001", "asn: 65001\n  communities: ['65000:100']\n  med: 10")
    text = head + textwrap.indent(textwrap.dedent("""\
      - address: 2001:db8::10
        port: 443
        scheduler: sh
        forwarding: tun
        on_down: inhibit
        announce: bgp
        real_servers: [{address: 2001:db8:1::21}]
    """), "  ")
    conf = tmp_path / "bird.conf"
    conf.write_text(render_bird(select_node(parse_config(text), "d1", "x"), str(tmp_path / "log")))
    p = subprocess.run([shutil.which("bird") or "bird", "-p", "-c", str(conf)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr + conf.read_text()
    assert "havs_vip_2001_0db8_0000_0000_0000_0000_0000_0010" in conf.read_text()


# ------------------------------------------------------------------------------------ the decision


def _tables(weights: list[int], *, in_kernel: bool = True,
            quorum_lost: tuple[str, ...] = ()) -> tuple[Desired, IpvsTable]:
    config = parse_config(BASE)
    vs = config.virtual_services[0]
    key = service_key(vs)
    dests = [Destination.at(f"10.2.0.{21 + i}", 80, weight=w) for i, w in enumerate(weights)]
    table = IpvsTable([(Service(key, scheduler="mh"), dests)])
    return Desired(table=table, managed=frozenset({key}), quorum_lost=quorum_lost), \
        table if in_kernel else IpvsTable([])


def test_announce_only_while_servable() -> None:
    config = parse_config(BASE)
    desired, actual = _tables([1, 1])
    assert [v.announce for v in servable(config, desired, actual)] == [True]
    assert servable(config, None, None)[0].reason == "no reconcile pass yet"
    desired, actual = _tables([1, 1], in_kernel=False)
    assert "not in the kernel's IPVS table" in servable(config, desired, actual)[0].reason
    desired, actual = _tables([0, 0])
    assert "no healthy real server" in servable(config, desired, actual)[0].reason
    desired, actual = _tables([1, 0], quorum_lost=("TCP 203.0.113.10:80",))
    assert "below its quorum" in servable(config, desired, actual)[0].reason


def test_a_vip_is_announced_only_if_every_service_on_it_is_servable() -> None:
    text = BASE + textwrap.indent(textwrap.dedent("""\
      - address: 203.0.113.10
        port: 443
        scheduler: mh
        forwarding: dr
        on_down: inhibit
        announce: bgp
        real_servers: [{address: 10.2.0.21}]
    """), "  ")
    config = parse_config(text)
    desired, actual = _tables([1, 1])  # port 80 only: 443 is missing from the kernel
    verdict = servable(config, desired, actual)
    assert len(verdict) == 1 and not verdict[0].announce and "TCP 203.0.113.10:443" in verdict[0].reason


# ---------------------------------------------------------------------------- the control socket


def test_framer_splits_replies_across_reads() -> None:
    f = Framer()
    first = f.feed(b"0001 BIRD 2.0.12 ready.\n0011-havs_vip_1: ena")
    assert [r.code for r in first] == [1] and first[0].text == "BIRD 2.0.12 ready."
    rest = f.feed(b"bled\n0000 \n9001 syntax error\n")
    assert [r.code for r in rest] == [0, 9001]
    assert rest[0].ok and rest[0].lines[0] == (11, "havs_vip_1: enabled")
    assert not rest[1].ok


SHOW_ALL = (b"2002-Name       Proto      Table      State  Since         Info\n"
            b"1002-havs_vip_203_0_113_10 Static     master4    up     21:50:19.469  \n"
            b"1002-havs_peer0 BGP        ---        up     21:50:18.174  Established   \n"
            b"1006-  BGP state:          Established\n"
            b"   Channel ipv4\n     State:          UP\n"
            b"     Routes:         0 imported, 1 exported, 0 preferred\n"
            b"1002-havs_peer1 BGP        ---        start  21:50:18.174  Active        Socket: Connection refused\n"
            b"1006-  BGP state:          Active\n \n0000 \n")


def test_show_protocols_parsers_and_convergence() -> None:
    reply = Framer().feed(SHOW_ALL)[0]
    protocols = parse_protocols(reply)
    assert protocols["havs_peer0"].established and not protocols["havs_peer1"].established
    assert protocols["havs_peer1"].info.startswith("Active")
    assert protocols[vip_protocol(ipaddress.ip_address("203.0.113.10"))].state == "up"
    exported = exported_routes(reply)
    assert exported == {"havs_peer0": 1, "havs_peer1": 0}
    assert not converged(protocols, exported, ["havs_peer0", "havs_peer1"])
    assert converged(protocols, {"havs_peer0": 0}, ["havs_peer0", "havs_peer1"])
