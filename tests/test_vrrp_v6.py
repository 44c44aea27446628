"""The VRRPv3-over-IPv6 advert path (RFC 9568): link-local source to ff02::12, the IPv6 pseudo-header
checksum (checked by an independent sum), hop limit 255 on receive, the core taking over and announcing,
and the socket's ancillary-data parsing."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from havs.core import wire
from havs.core.config import parse_config
from havs.core.vrrp import AdvertDropped, AnnounceAddresses, SendAdvertisement, TakeAddresses, VrrpInstance
from havs.core.vrrp_model import VrrpParams
from havs.edge import vrrp_socket
from havs.edge.vrrp_socket import VrrpSocket
from havs.errors import ConfigError

LL_A = ipaddress.IPv6Address("fe80::a")
LL_B = ipaddress.IPv6Address("fe80::b")
VIP6 = ipaddress.IPv6Address("2001:db8::10")
GROUP = ipaddress.IPv6Address("ff02::12")


def independent_checksum(src: bytes, dst: bytes, msg: bytes) -> int:
    data = src + dst + len(msg).to_bytes(4, "big") + b"\x00\x00\x00\x70" + msg  # next header 112
    total = sum((data[i] << 8) + (data[i + 1] if i + 1 < len(data) else 0) for i in range(0, len(data), 2))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return 0xFFFF - total


def test_v6_advert_bytes_and_pseudo_header_checksum() -> None:
    adv = wire.Advertisement(3, 51, 150, (VIP6,), 10)
    msg = wire.encode(adv, src=LL_A, dst=GROUP)
    assert len(msg) == 8 + 16 and msg[0] == 0x31 and msg[1] == 51 and msg[2] == 150 and msg[3] == 1
    assert struct.unpack("!H", msg[4:6])[0] == 10 and msg[8:] == VIP6.packed
    zeroed = msg[:6] + b"\0\0" + msg[8:]
    assert struct.unpack("!H", msg[6:8])[0] == independent_checksum(LL_A.packed, GROUP.packed, zeroed)
    # the "message" checksum mode is an IPv4 matter: IPv6 always has the pseudo-header
    assert wire.encode(adv, src=LL_A, dst=GROUP, checksum="message") == msg
    assert wire.decode(msg, src=LL_A, dst=GROUP, ttl=255) == adv


def test_v6_receive_rules_hop_limit_checksum_family() -> None:
    msg = wire.encode(wire.Advertisement(3, 51, 150, (VIP6,), 10), src=LL_A, dst=GROUP)
    with pytest.raises(wire.PacketError) as e:
        wire.decode(msg, src=LL_A, dst=GROUP, ttl=254)  # routed from elsewhere: RFC 9568 §7.1
    assert e.value.reason == "ttl"
    with pytest.raises(wire.PacketError) as e:
        wire.decode(msg, src=LL_B, dst=GROUP, ttl=255)  # another source: the pseudo-header differs
    assert e.value.reason == "checksum"
    with pytest.raises(ValueError):  # one family per instance
        wire.encode(wire.Advertisement(3, 51, 150, (ipaddress.IPv4Address("192.0.2.1"),), 10), src=LL_A, dst=GROUP)
    with pytest.raises(ValueError):
        wire.encode(wire.Advertisement(2, 51, 150, (VIP6,), 1), src=LL_A, dst=GROUP)  # v2 is IPv4 only


def _params(priority: int, src: ipaddress.IPv6Address) -> VrrpParams:
    return VrrpParams(router_id=51, priority=priority, advert_interval=0.1, primary_address=src, addresses=(VIP6,))


def test_core_over_ipv6_drops_a_bad_hop_limit_and_takes_over_with_an_announce() -> None:
    b = VrrpInstance(_params(100, LL_B), 0.0)
    b.start(0.0)
    peer = wire.encode(wire.Advertisement(3, 51, 150, (VIP6,), 10), src=LL_A, dst=GROUP)
    dropped = b.receive_bytes(peer, src=LL_A, dst=GROUP, ttl=64, now=0.05)
    assert [a.reason for a in dropped if isinstance(a, AdvertDropped)] == ["ttl"]
    assert b.receive_bytes(peer, src=LL_A, dst=GROUP, ttl=255, now=0.05) is not None
    assert b.master_address == LL_A
    actions = b.handle_timer(b.get_timer() or 1.0)  # the master went silent
    assert b.state == "MASTER"
    assert any(isinstance(a, TakeAddresses) for a in actions)
    assert any(isinstance(a, AnnounceAddresses) and a.burst for a in actions)  # NA for IPv6, from the same place
    sent = [a.adv for a in actions if isinstance(a, SendAdvertisement)]
    assert sent and sent[0].addresses == (VIP6,) and sent[0].priority == 100


def test_socket_refuses_mixed_families_before_opening() -> None:
    with pytest.raises(ValueError, match="one family"):
        VrrpSocket("lo", LL_A, peers=[ipaddress.IPv4Address("192.0.2.2")])


def test_parse_ipv6_takes_destination_and_hop_limit_from_ancillary_data() -> None:
    pktinfo = GROUP.packed + struct.pack("@I", 3)
    hops = struct.pack("@i", 255)
    anc = [(socket.IPPROTO_IPV6, vrrp_socket.IPV6_PKTINFO, pktinfo),
           (socket.IPPROTO_IPV6, vrrp_socket.IPV6_HOPLIMIT, hops)]
    got = vrrp_socket._parse_ipv6(b"payload", anc, ("fe80::a%eth1", 0, 0, 3))
    assert got == vrrp_socket.Received(b"payload", LL_A, GROUP, 255)
    assert vrrp_socket._parse_ipv6(b"payload", anc[:1], ("fe80::a", 0, 0, 3)) is None  # no hop limit: not trusted


V6_CONFIG = """\
nodes:
  lvs1:
    priority: 150
    interfaces: {client: eth0, server: eth1}
  lvs2:
    interfaces: {client: eth0, server: eth1}
vrrp:
  router_id: 51
  interface: server
  unicast_peers: ['fd72::131', 'fd72::132']
  addresses:
    - {address: 'fd00::108/64', interface: client}
    - {address: 'fd72::130/64', interface: server}
"""


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "etc/havs.yaml")
    return [str(p) for p in info.value.problems]


def test_an_ipv6_instance_is_a_valid_config() -> None:
    cfg = parse_config(V6_CONFIG, "etc/havs.yaml")
    assert cfg.vrrp and {fa.address.version for fa in cfg.vrrp[0].addresses} == {6}


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("  unicast_peers: ['fd72::131', 'fd72::132']", "  unicast_peers: ['fd72::131', 192.168.72.132]",
     "etc/havs.yaml:10: vrrp.unicast_peers[1]: 192.168.72.132 is IPv4, the floating addresses IPv6"),
    ("  router_id: 51\n", "  router_id: 51\n  version: 2\n",
     "etc/havs.yaml:9: vrrp.version: VRRPv2 is IPv4 only: IPv6 floating addresses need version 3"),
    ("    priority: 150\n", "    priority: 150\n    unicast_src: 192.168.72.131\n",
     "etc/havs.yaml:4: nodes.lvs1.unicast_src: 192.168.72.131 is IPv4, the floating addresses IPv6"),
    ("    - {address: 'fd72::130/64', interface: server}\n",
     "    - {address: 'fd72::130/64', interface: server}\n    - {address: 192.168.72.130/24, interface: server}\n",
     "etc/havs.yaml:14: vrrp.addresses[2]: floating addresses of one VRRP instance must share a family"),
])
def test_mixing_families_is_a_config_error_with_file_line(old: str, new: str, expected: str) -> None:
    assert old in V6_CONFIG
    found = _problems(V6_CONFIG.replace(old, new, 1))
    assert any(p.startswith(expected) for p in found), found
