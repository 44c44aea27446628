"""Prometheus exposition from the daemon's state: what a scrape shows."""

from __future__ import annotations

from prometheus_client import generate_latest

from havs.core.health import ProbeResult
from havs.core.ipvs_table import Destination, DestinationStats, IpvsTable, Service, ServiceKey, Stats
from havs.metrics import Metrics

VIP = ServiceKey.tcp("192.168.0.108", 80)
SNAP = {
    "vrrp": {"state": "MASTER", "priority": 150, "adverts_sent": 12, "adverts_received": 3,
             "dropped": {"checksum": 2}},
    "services": [{"name": "TCP 192.168.0.108:80", "real_servers": [
        {"server": "192.168.72.128:80", "health": "up", "effective_weight": 1},
        {"server": "192.168.72.129:80", "health": "down", "effective_weight": None}]}],
    "reconciler": {"passes": 5, "ops_applied": 3, "failures": 1, "drift_repairs": 1},
}


def table() -> IpvsTable:
    dest = Destination.at("192.168.72.128", 80)
    return IpvsTable([(Service(VIP, scheduler="rr"), [dest])],
                     service_stats={VIP: Stats(conns=7, inpkts=70)},
                     destination_stats={(VIP, dest.key): DestinationStats(Stats(conns=7), active_conns=2)})


def test_scrape_shows_state_health_reconciler_ipvs_and_latency() -> None:
    metrics = Metrics(lambda: SNAP, table)
    metrics.observe_probe(("TCP 192.168.0.108:80", "192.168.72.128:80"), ProbeResult(True, "ok", 0.004))
    metrics.vrrp_transitions.labels("MASTER").inc()
    text = generate_latest(metrics.registry).decode()
    expected = [
        'havs_vrrp_state{state="MASTER"} 1.0',
        'havs_vrrp_state{state="BACKUP"} 0.0',
        "havs_vrrp_priority 150.0",
        'havs_vrrp_adverts_dropped_total{reason="checksum"} 2.0',
        'havs_real_server_up{server="192.168.72.129:80",service="TCP 192.168.0.108:80"} 0.0',
        'havs_real_server_weight{server="192.168.72.129:80",service="TCP 192.168.0.108:80"} -1.0',
        "havs_reconcile_drift_repairs_total 1.0",
        'havs_ipvs_service_inpkts_total{service="TCP 192.168.0.108:80"} 70.0',
        'havs_ipvs_destination_active_conns{server="192.168.72.128:80",service="TCP 192.168.0.108:80"} 2.0',
        'havs_check_latency_seconds_bucket{le="0.005",result="ok",service="TCP 192.168.0.108:80"} 1.0',
        'havs_vrrp_transitions_total{to="MASTER"} 1.0',
    ]
    missing = [line for line in expected if line not in text.splitlines()]
    assert missing == []
