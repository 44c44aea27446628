"""An active/active pair for the daemon-side tests of several VRRP instances: VI_A (preferred by lvs1) floats
the first VIP with the servers' gateway instance GW in sync group G_A; VI_B (preferred by lvs2) floats the
second VIP. VI_A runs the connection sync. Services: one per VIP, and a fwmark one (floats in no instance)."""

from __future__ import annotations

TWO = """\
settings: {state_dir: /var/lib/havs, control_socket: /run/havs/control.sock}
nodes:
  lvs1: {priority: 150, interfaces: {client: eth0, server: eth1}}
  lvs2: {priority: 100, interfaces: {client: eth0, server: eth1}}
vrrp:
  - name: VI_A
    router_id: 51
    priority: {lvs1: 150, lvs2: 100}
    advert_interval: 0.1
    interface: server
    addresses: [{address: 192.168.0.108/24, interface: client}]
    connection_sync: {interface: server, sync_id: 7, mode: follow}
  - name: VI_B
    router_id: 52
    priority: {lvs1: 100, lvs2: 150}
    advert_interval: 0.1
    interface: server
    addresses: [{address: 192.168.0.109/24, interface: client}]
  - name: GW
    router_id: 53
    advert_interval: 0.1
    interface: server
    addresses: [{address: 192.168.72.130/24, interface: server}]
vrrp_sync_groups:
  - {name: G_A, instances: [VI_A, GW]}
virtual_services:
  - address: 192.168.0.108
    port: 80
    scheduler: rr
    quorum: {min_weight: 1, priority_decrement: 50}
    real_servers: [{address: 192.168.72.128, port: 80}]
  - address: 192.168.0.109
    port: 80
    scheduler: rr
    quorum: {min_weight: 1, priority_decrement: 30}
    real_servers: [{address: 192.168.72.129, port: 80}]
  - fwmark: 42
    scheduler: rr
    quorum: {min_weight: 1, priority_decrement: 20}
    real_servers: [{address: 192.168.72.127, port: 80}]
"""
SVC_A, SVC_B, SVC_FWM = "TCP 192.168.0.108:80", "TCP 192.168.0.109:80", "FWM 42"
RS_A, RS_B, RS_FWM = (SVC_A, "192.168.72.128:80"), (SVC_B, "192.168.72.129:80"), (SVC_FWM, "192.168.72.127:80")
