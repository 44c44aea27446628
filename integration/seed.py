"""The seed's LVS-NAT topology as data: addresses, nodes, links. `integration.topology` builds it::

    client 192.168.0.105 ──┐ lan0 (client LAN)     lan1 (server LAN) ┌── rs1 192.168.72.128 "lvs-web1"
    lvs1 eth0 .0.111 ──────┤                                          ├── rs2 192.168.72.129 "lvs-web2"
    lvs2 eth0 .0.112 ──────┘   lvs1 eth1 .72.131, lvs2 eth1 .72.132 ──┘

VIP 192.168.0.108 and gateway 192.168.72.130 are not assigned by the lab: the daemon (or a test) owns them.

Dual-stack (``SeedLab(ipv6=True)`` or ``lab.enable_ipv6()``): the same hosts with the same last numbers in
fd00::/64 (client LAN) and fd72::/64 (server LAN): client fd00::105, directors fd00::111/112 and
fd72::131/132, real servers fd72::128/129 (default route via fd72::130), VIP fd00::108, gateway fd72::130.
"""

from __future__ import annotations

from dataclasses import dataclass

VIP = "192.168.0.108"
GATEWAY = "192.168.72.130"
CLIENT_IP = "192.168.0.105"
VIP_URL = f"http://{VIP}/"
DIRECTORS = ("lvs1", "lvs2")
REAL_SERVERS = {"rs1": "192.168.72.128", "rs2": "192.168.72.129"}
BODIES = {"rs1": "lvs-web1", "rs2": "lvs-web2"}
SWITCH = "sw"
NODES = ("client", "lvs1", "lvs2", "rs1", "rs2")
LANS = ("lan0", "lan1")  # client LAN, server LAN

VIP6 = "fd00::108"
GATEWAY6 = "fd72::130"
CLIENT_IP6 = "fd00::105"
VIP6_URL = f"http://[{VIP6}]/"
REAL_SERVERS6 = {"rs1": "fd72::128", "rs2": "fd72::129"}


@dataclass(frozen=True)
class Link:
    node: str
    ifname: str
    lan: str
    address: str  # CIDR
    address6: str = ""  # CIDR, used by a dual-stack lab only


LINKS = (
    Link("client", "eth0", "lan0", f"{CLIENT_IP}/24", f"{CLIENT_IP6}/64"),
    Link("lvs1", "eth0", "lan0", "192.168.0.111/24", "fd00::111/64"),
    Link("lvs1", "eth1", "lan1", "192.168.72.131/24", "fd72::131/64"),
    Link("lvs2", "eth0", "lan0", "192.168.0.112/24", "fd00::112/64"),
    Link("lvs2", "eth1", "lan1", "192.168.72.132/24", "fd72::132/64"),
    Link("rs1", "eth0", "lan1", f"{REAL_SERVERS['rs1']}/24", f"{REAL_SERVERS6['rs1']}/64"),
    Link("rs2", "eth0", "lan1", f"{REAL_SERVERS['rs2']}/24", f"{REAL_SERVERS6['rs2']}/64"),
)
