"""Prometheus exposition from the daemon's state: what a scrape shows, that promtool accepts it, and that
the HTTP server stays bounded against slow clients."""

from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from havs import __version__
from havs.core.health import ProbeResult
from havs.core.ipvs_table import Destination, DestinationStats, IpvsTable, Service, ServiceKey, Stats
from havs.core.vrrp_auth import REASONS
from havs.metrics import MAX_CONNECTIONS, Metrics, _QuietHandler

VIP = ServiceKey.tcp("192.168.0.108", 80)
FWM = ServiceKey.mark(42)
LABELS = 'local_address="192.168.0.108",local_mark="",local_port="80",proto="TCP"'
VI_1 = 'group="",instance="VI_1"'  # SNAP's VRRP is one mapping, as a daemon before several instances sent it
SNAP = {
    "vrrp": {"state": "MASTER", "priority": 150, "adverts_sent": 12, "adverts_received": 3,
             "dropped": {"checksum": 2}, "addresses": ["192.168.0.108/24 dev eth0", "192.168.72.130/24 dev eth1"],
             "held": ["192.168.0.108/24 dev eth0"],
             "auth": {"mode": "sign", "rejected": {"bad_mac": 4, "replay": 0}}},
    "services": [{"name": "TCP 192.168.0.108:80", "quorum": True, "real_servers": [
        {"server": "192.168.72.128:80", "health": "up", "effective_weight": 1, "configured_weight": 1},
        {"server": "192.168.72.129:80", "health": "down", "effective_weight": None, "configured_weight": 1}]},
        {"name": "FWM 42", "quorum": False, "real_servers": [
            {"server": "192.168.72.128:0", "health": "up", "effective_weight": 3, "configured_weight": 3,
             "drained": True}]}],
    "reconciler": {"passes": 5, "ops_applied": 3, "failures": 1, "drift_repairs": 1},
    "reloads": {"applied": 2, "failed": 1},
}


def table() -> IpvsTable:
    dest = Destination.at("192.168.72.128", 80, weight=1)
    mark_dest = Destination.at("192.168.72.128", 0, weight=3)
    return IpvsTable([(Service(VIP, scheduler="rr"), [dest]), (Service(FWM, scheduler="wlc"), [mark_dest])],
                     service_stats={VIP: Stats(conns=7, inpkts=70)},
                     destination_stats={(VIP, dest.key): DestinationStats(Stats(conns=7, inbytes=900),
                                                                          active_conns=2, inactive_conns=5)})


def scrape(metrics: Metrics) -> list[str]:
    return generate_latest(metrics.registry).decode().splitlines()


def backend(remote: str, port: str = "80", service: str = LABELS) -> str:
    """The six node_exporter labels in Prometheus's (sorted) order."""
    local_address, local_mark, local_port, proto = (kv.split("=", 1)[1] for kv in service.split(","))
    return (f"local_address={local_address},local_mark={local_mark},local_port={local_port},proto={proto},"
            f'remote_address="{remote}",remote_port="{port}"')


def test_scrape_shows_state_health_reconciler_ipvs_and_latency() -> None:
    metrics = Metrics(lambda: SNAP, table)
    metrics.observe_probe(("TCP 192.168.0.108:80", "192.168.72.128:80"), ProbeResult(True, "ok", 0.004))
    metrics.vrrp_transitions.labels("VI_1", "", "MASTER").inc()
    text = scrape(metrics)
    fwm = 'local_address="",local_mark="42",local_port="0",proto="FWM"'
    expected = [
        f'havs_vrrp_state{{{VI_1},state="MASTER"}} 1.0',
        f'havs_vrrp_state{{{VI_1},state="BACKUP"}} 0.0',
        f"havs_vrrp_priority{{{VI_1}}} 150.0",
        f"havs_vrrp_adverts_sent_total{{{VI_1}}} 12.0",
        f"havs_vrrp_adverts_received_total{{{VI_1}}} 3.0",
        f'havs_vrrp_adverts_dropped_total{{{VI_1},reason="checksum"}} 2.0',
        f"havs_real_server_up{{{backend('192.168.72.129')}}} 0.0",
        f"havs_real_server_weight{{{backend('192.168.72.128')}}} 1.0",
        f"havs_real_server_configured_weight{{{backend('192.168.72.129')}}} 1.0",
        f"havs_real_server_drained{{{backend('192.168.72.128', '0', fwm)}}} 1.0",
        f"havs_service_quorum{{{fwm}}} 0.0",
        "havs_reconcile_drift_repairs_total 1.0",
        f"havs_ipvs_service_incoming_packets_total{{{LABELS}}} 70.0",
        f"havs_ipvs_backend_incoming_bytes_total{{{backend('192.168.72.128')}}} 900.0",
        f"node_ipvs_backend_connections_active{{{backend('192.168.72.128')}}} 2.0",
        f"node_ipvs_backend_connections_inactive{{{backend('192.168.72.128')}}} 5.0",
        f"node_ipvs_backend_weight{{{backend('192.168.72.128')}}} 1.0",
        f"node_ipvs_backend_weight{{{backend('192.168.72.128', '0', fwm)}}} 3.0",
        'havs_check_latency_seconds_bucket{le="0.005",result="ok",service="TCP 192.168.0.108:80"} 1.0',
        f'havs_vrrp_transitions_total{{{VI_1},to="MASTER"}} 1.0',
        f"havs_vrrp_addresses_held{{{VI_1}}} 1.0",
        f'havs_vrrp_address_held{{address="192.168.0.108/24",{VI_1},interface="eth0"}} 1.0',
        f'havs_vrrp_address_held{{address="192.168.72.130/24",{VI_1},interface="eth1"}} 0.0',
        'havs_reloads_total{outcome="applied"} 2.0',
        'havs_reloads_total{outcome="failed"} 1.0',
        'havs_reloads_total{outcome="refused"} 0.0',
        f'havs_vrrp_auth_rejected_total{{{VI_1},reason="bad_mac"}} 4.0',
        f'havs_vrrp_auth_rejected_total{{{VI_1},reason="replay"}} 0.0',
    ]
    missing = [line for line in expected if line not in text]
    assert missing == []
    assert any(line.startswith('havs_build_info{python="') and f'version="{__version__}"' in line
               and line.endswith(" 1.0") for line in text)
    assert any(line.startswith("process_resident_memory_bytes ") for line in text)
    assert any(line.startswith("process_open_fds ") for line in text)


# as havs.core.vrrp pushes it (every reason, zeros too) and as havs.failback.Failback.status() says it
AUTH = {"mode": "enforce", "anti_replay": "time", "time_window": 5, "active_key": 2, "key_ids": [1, 2],
        "rejected": {**dict.fromkeys(REASONS, 0), "auth_missing": 3, "auth_replay": 1}}
HOLDING = {"table_size": 1200, "replays": 0,
           "catchup": {"done": False, "reason": None, "waited": None, "expected": 5000, "missing": 3800}}
CAUGHT_UP = {"table_size": 5000, "replays": 2,
             "catchup": {"done": True, "reason": "caught_up", "waited": 1.25, "expected": 5000, "missing": 0}}


def samples(text: list[str], prefix: str) -> list[str]:
    return [line for line in text if line.startswith(prefix) and not line.startswith("#")]


def test_auth_hmac_info_and_rejects_by_reason() -> None:
    snap = {**SNAP, "vrrp": {**SNAP["vrrp"], "auth": AUTH}}
    text = scrape(Metrics(lambda: snap, table))
    assert samples(text, "havs_vrrp_auth_info") == [
        f'havs_vrrp_auth_info{{active_key="2",anti_replay="time",{VI_1},mode="enforce"}} 1.0']
    assert samples(text, "havs_vrrp_auth_rejected_total") == [  # every reason, zeros included
        f'havs_vrrp_auth_rejected_total{{{VI_1},reason="{r}"}} {dict(auth_missing=3.0, auth_replay=1.0).get(r, 0.0)}'
        for r in REASONS]
    without = scrape(Metrics(lambda: {**SNAP, "vrrp": {**SNAP["vrrp"], "auth": None}}, table))
    assert samples(without, "havs_vrrp_auth_") == []


def test_a_resigning_master_is_in_the_state_gauge() -> None:
    text = scrape(Metrics(lambda: {**SNAP, "vrrp": {**SNAP["vrrp"], "state": "RESIGNING"}}, table))
    assert samples(text, "havs_vrrp_state{") == [
        f'havs_vrrp_state{{{VI_1},state="{s}"}} {1.0 if s == "RESIGNING" else 0.0}'
        for s in ("INIT", "BACKUP", "MASTER", "FAULT", "RESIGNING")]


def test_failback_catch_up_while_holding_then_caught_up() -> None:
    status: dict[str, object] = dict(HOLDING)
    metrics = Metrics(lambda: SNAP, table, lambda: status)
    text = scrape(metrics)
    assert samples(text, "havs_failback_") == [
        "havs_failback_connection_table_entries 1200.0",
        "havs_failback_replays_total 0.0",
        "havs_failback_catchup_holding 1.0",
        "havs_failback_catchup_expected_entries 5000.0",
        "havs_failback_catchup_missing_entries 3800.0",
        'havs_failback_catchups_total{reason="caught_up"} 0.0',
        'havs_failback_catchups_total{reason="deadline"} 0.0',
        'havs_failback_catchups_total{reason="became_master"} 0.0',
        'havs_failback_catchups_total{reason="stopped"} 0.0',
    ]  # no duration sample while it runs
    status.update(CAUGHT_UP)
    text = scrape(metrics)
    assert "havs_failback_catchup_holding 0.0" in text and "havs_failback_catchup_duration_seconds 1.25" in text
    assert "havs_failback_catchup_missing_entries 0.0" in text and "havs_failback_replays_total 2.0" in text
    assert samples(text, "havs_failback_catchups_total") == [
        f'havs_failback_catchups_total{{reason="{r}"}} {1.0 if r == "caught_up" else 0.0}'
        for r in ("caught_up", "deadline", "became_master", "stopped")]


def test_failback_of_a_director_that_never_caught_up_or_read_its_table() -> None:
    # a master, or a director without connection_sync: nothing held, no table read yet
    text = scrape(Metrics(lambda: SNAP, table, lambda: {"table_size": None, "replays": 0, "catchup": None}))
    assert samples(text, "havs_failback_") == [
        "havs_failback_replays_total 0.0", "havs_failback_catchup_holding 0.0",
        *(f'havs_failback_catchups_total{{reason="{r}"}} 0.0'
          for r in ("caught_up", "deadline", "became_master", "stopped"))]
    assert samples(scrape(Metrics(lambda: SNAP, table)), "havs_failback_") == []  # not wired: not shown


def test_a_server_out_of_ipvs_has_no_weight_sample_and_nothing_is_negative() -> None:
    text = scrape(Metrics(lambda: SNAP, table))
    assert not [line for line in text if line.startswith("havs_real_server_weight{") and "192.168.72.129" in line]
    assert not [line for line in text if not line.startswith("#") and line.split()[-1].startswith("-")]


def test_no_table_yet_still_scrapes() -> None:
    text = scrape(Metrics(lambda: {}, lambda: None))
    assert "havs_reconcile_passes_total 0.0" in text
    assert "# TYPE havs_vrrp_addresses_held gauge" in text and samples(text, "havs_vrrp_") == []  # no VRRP: no sample
    assert not [line for line in text if line.startswith("node_ipvs_")]


# CI installs promtool (Debian's prometheus package, scripts/setup): there a missing one is a failure.
@pytest.mark.skipif(shutil.which("promtool") is None and not os.environ.get("CI"),
                    reason="promtool not installed (apt-get install prometheus)")
def test_promtool_check_metrics_is_clean() -> None:
    metrics = Metrics(lambda: {**SNAP, "vrrp": {**SNAP["vrrp"], "auth": AUTH}}, table, lambda: CAUGHT_UP)
    metrics.health_counters = lambda: (3, 1)
    metrics.observe_probe(("TCP 192.168.0.108:80", "192.168.72.128:80"), ProbeResult(False, "refused", 0.2))
    metrics.vrrp_transitions.labels("VI_1", "", "BACKUP").inc()
    out = subprocess.run(["promtool", "check", "metrics"], input=generate_latest(metrics.registry),
                         capture_output=True, timeout=30)
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), out
    two = Metrics(lambda: TWO_SNAP, table, lambda: CAUGHT_UP)
    two.vrrp_transitions.labels("VI_A", "G_A", "MASTER").inc()
    out = subprocess.run(["promtool", "check", "metrics"], input=generate_latest(two.registry),
                         capture_output=True, timeout=30)
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), out


def test_checks_set_aside_are_counted_once_the_daemon_has_health_checks() -> None:
    metrics = Metrics(lambda: SNAP, table)
    assert not any(line.startswith("havs_health_") for line in scrape(metrics))  # no checks yet: no sample
    metrics.health_counters = lambda: (7, 2)
    lines = scrape(metrics)
    assert "havs_health_overload_checks_total 7.0" in lines
    assert "havs_health_inconclusive_checks_total 2.0" in lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        body: bytes = r.read()
        return body.decode()


def test_two_thousand_half_open_connections_do_not_grow_threads_past_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4500:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4500), hard))
    monkeypatch.setattr(_QuietHandler, "timeout", 3.0)
    metrics = Metrics(lambda: SNAP, table)
    port = free_port()
    server = metrics.serve(f"127.0.0.1:{port}")
    clients: list[socket.socket] = []
    try:
        assert f"havs_vrrp_priority{{{VI_1}}} 150.0" in get(port)
        base = threading.active_count()
        peak = base
        t0 = time.monotonic()
        for _ in range(2000):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finished
            clients.append(s)
            peak = max(peak, threading.active_count())
        opened = time.monotonic() - t0
        deadline = time.monotonic() + 5
        while server.refused < 2000 - MAX_CONNECTIONS and time.monotonic() < deadline:
            peak = max(peak, threading.active_count())
            time.sleep(0.01)
        assert peak <= base + MAX_CONNECTIONS, (base, peak)
        if opened < 2.5:  # all opened within the read timeout: only the first MAX_CONNECTIONS were served
            assert server.refused == 2000 - MAX_CONNECTIONS, (server.refused, opened)
        else:  # a slow machine: slots freed by the timeout were taken by later connections
            assert server.refused > 0
        # the read timeout frees the slots the slow clients hold: a scrape gets through again
        deadline = time.monotonic() + 5
        while True:
            try:
                assert f"havs_vrrp_priority{{{VI_1}}} 150.0" in get(port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert threading.active_count() <= base + 1
    finally:
        for s in clients:
            s.close()
        metrics.close()


def test_metrics_module_names_where_it_differs_from_node_exporter() -> None:
    doc = (Path(__file__).parent.parent / "havs" / "metrics.py").read_text()
    assert "node_exporter" in doc and "local_mark" in doc


async def test_serve_metrics_scrapes_the_loops_snapshot_and_says_when_it_cannot_bind() -> None:
    import asyncio

    from fakes import ListLog

    from havs.core.status import StatusSnapshot
    from havs.metrics import serve_metrics

    snap = StatusSnapshot.from_dict(SNAP)
    log = ListLog()
    port = free_port()
    loop = asyncio.get_running_loop()
    on_loop: list[bool] = []

    def failback() -> dict[str, object]:
        on_loop.append(asyncio.get_running_loop() is loop)  # raises off the loop: no running loop there
        return CAUGHT_UP

    metrics = serve_metrics(f"127.0.0.1:{port}", loop, lambda: snap, table, log, failback=failback)
    assert metrics is not None
    try:
        text = await asyncio.to_thread(get, port)
        assert f"havs_vrrp_addresses_held{{{VI_1}}} 1.0" in text.splitlines()
        assert "havs_failback_catchup_duration_seconds 1.25" in text.splitlines() and on_loop == [True]
        assert serve_metrics(f"127.0.0.1:{port}", asyncio.get_running_loop(), lambda: snap, table, log) is None
        assert log.named("metrics.unavailable")[0]["listen"] == f"127.0.0.1:{port}"
    finally:
        metrics.close()


def test_close_ends_the_connections_in_progress() -> None:
    metrics = Metrics(lambda: SNAP, table)
    port = free_port()
    metrics.serve(f"127.0.0.1:{port}")
    base = threading.active_count()
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_CONNECTIONS)]
    try:
        for s in clients:
            s.sendall(b"GET /metrics HTTP/1.1\r\n")
        deadline = time.monotonic() + 5
        while threading.active_count() < base + MAX_CONNECTIONS and time.monotonic() < deadline:
            time.sleep(0.01)
        metrics.close()
        deadline = time.monotonic() + 2  # well inside the 5 s read timeout
        while threading.active_count() >= base and time.monotonic() < deadline:
            time.sleep(0.01)
        assert threading.active_count() < base  # the server's own thread is gone too
    finally:
        for s in clients:
            s.close()


# as the daemon sends it with several instances: one entry per instance, and the sync groups' states
TWO_SNAP = {**SNAP, "vrrp": [
    {**SNAP["vrrp"], "instance": "VI_A", "group": "G_A", "auth": AUTH},
    {"instance": "VI_B", "state": "BACKUP", "priority": 100, "adverts_received": 9, "dropped": {"ttl": 1},
     "addresses": ["192.168.0.109/24 dev eth0"], "held": []},
    {"instance": "GW", "group": "G_A", "state": "MASTER", "priority": 150, "adverts_sent": 12,
     "addresses": ["192.168.72.130/24 dev eth1"], "held": ["192.168.72.130/24 dev eth1"]}],
    "vrrp_groups": {"G_A": "MASTER"}}


def test_every_vrrp_family_is_per_instance_and_group() -> None:
    metrics = Metrics(lambda: TWO_SNAP, table)
    metrics.vrrp_transitions.labels("VI_B", "", "BACKUP").inc()
    metrics.vrrp_transitions.labels("GW", "G_A", "MASTER").inc()
    text = scrape(metrics)
    a, b, gw = 'group="G_A",instance="VI_A"', 'group="",instance="VI_B"', 'group="G_A",instance="GW"'
    assert [line for line in samples(text, "havs_vrrp_state{") if line.endswith(" 1.0")] == [
        f'havs_vrrp_state{{{a},state="MASTER"}} 1.0', f'havs_vrrp_state{{{b},state="BACKUP"}} 1.0',
        f'havs_vrrp_state{{{gw},state="MASTER"}} 1.0']
    assert samples(text, "havs_vrrp_priority") == [
        f"havs_vrrp_priority{{{a}}} 150.0", f"havs_vrrp_priority{{{b}}} 100.0", f"havs_vrrp_priority{{{gw}}} 150.0"]
    assert samples(text, "havs_vrrp_addresses_held") == [
        f"havs_vrrp_addresses_held{{{a}}} 1.0", f"havs_vrrp_addresses_held{{{b}}} 0.0",
        f"havs_vrrp_addresses_held{{{gw}}} 1.0"]
    assert f'havs_vrrp_address_held{{address="192.168.0.109/24",{b},interface="eth0"}} 0.0' in text
    assert f'havs_vrrp_address_held{{address="192.168.72.130/24",{gw},interface="eth1"}} 1.0' in text
    assert f'havs_vrrp_adverts_dropped_total{{{b},reason="ttl"}} 1.0' in text
    assert f"havs_vrrp_adverts_received_total{{{b}}} 9.0" in text
    # auth_hmac on VI_A only: its samples name it, the others have none
    assert {line.split("{")[1].split("}")[0] for line in samples(text, "havs_vrrp_auth_")} == {
        *(f'{a},reason="{r}"' for r in REASONS), f'active_key="2",anti_replay="time",{a},mode="enforce"'}
    assert f'havs_vrrp_transitions_total{{{b},to="BACKUP"}} 1.0' in text
    assert f'havs_vrrp_transitions_total{{{gw},to="MASTER"}} 1.0' in text
    assert samples(text, "havs_vrrp_sync_group_state") == [
        f'havs_vrrp_sync_group_state{{group="G_A",state="{s}"}} {1.0 if s == "MASTER" else 0.0}'
        for s in ("INIT", "BACKUP", "MASTER", "FAULT", "RESIGNING")]
