"""The seed's LVS-NAT topology as data: addresses, nodes, links. `integration.topology` builds it::

    client 192.168.0.105 ──┐ lan0 (client LAN)     lan1 (server LAN) ┌── rs1 192.168.72.128 "lvs-web1"
    lvs1 eth0 .0.111 ──────┤                                          ├── rs2 192.168.72.129 "lvs-web2"
    lvs2 eth0 .0.112 ──────┘   lvs1 eth1 .72.131, lvs2 eth1 .72.132 ──┘

VIP 192.168.0.108 and gateway 192.168.72.130 are not assigned by the lab: the daemon (or a test) owns them.
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


@dataclass(frozen=True)
class Link:
    node: str
    ifname: str
    lan: str
    address: str  # CIDR


LINKS = (
    Link("client", "eth0", "lan0", f"{CLIENT_IP}/24"),
    Link("lvs1", "eth0", "lan0", "192.168.0.111/24"),
    Link("lvs1", "eth1", "lan1", "192.168.72.131/24"),
    Link("lvs2", "eth0", "lan0", "192.168.0.112/24"),
    Link("lvs2", "eth1", "lan1", "192.168.72.132/24"),
    Link("rs1", "eth0", "lan1", f"{REAL_SERVERS['rs1']}/24"),
    Link("rs2", "eth0", "lan1", f"{REAL_SERVERS['rs2']}/24"),
)
