"""Drill: a reload adds a real server under a 50 ms client loop (issue 11, item 4: new servers earn traffic).

A server added by a reload is down until `rise` checks pass, its first check sent at once. One whose web
server is not running never enters IPVS and no client request fails; a live one enters right after its
`rise`-th passing check. The order is read from each director's own log (health.change before
ipvs.apply), not from wall-clock timing.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from integration.test_drills_uml import LOGS, configs, events, ipvsadm, start_pair  # noqa: F401  (configs: a fixture)
from integration.topology import ClientLoop, SeedLab, wait_until

pytestmark = pytest.mark.uml

NEW = "192.168.72.129:8080"
NEW_ENTRY = "      - address: 192.168.72.129\n        port: 8080\n        weight: 1\n"  # appended to the seed's list
RISE = 2  # the seed's check.rise


def reload_adding_the_new_server(lab: SeedLab, paths: dict[str, Path]) -> None:
    for node, path in paths.items():
        path.write_text(path.read_text() + NEW_ENTRY)
        proc = lab.havs_proc(node)
        assert proc is not None
        proc.send_signal(signal.SIGHUP)


def timeline(lab: SeedLab, node: str) -> list[dict[str, Any]]:
    """The director's health.change and ipvs.apply events about the new server, in the order it logged them."""
    path = LOGS[node]
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a line being written
        if (event.get("event") == "health.change" and event.get("server") == NEW) or (
            event.get("event") == "ipvs.apply" and str(event.get("target", "")).endswith(NEW)
        ):
            out.append(event)
    return out


def test_reload_adding_a_dead_server_never_puts_it_in_ipvs(lab: SeedLab, configs: dict[str, Path]) -> None:  # noqa: F811
    start_pair(lab, configs)  # nothing listens on rs2:8080
    with ClientLoop(lab, period=0.05, timeout=0.5) as client:
        client.wait_for(lambda s: len(s.per_backend) == 2 and s.successes >= 10, 20)
        since = client.now()
        reload_adding_the_new_server(lab, configs)
        for node in configs:
            wait_until(f"{node} finds {NEW} down",
                       lambda n=node: any(e["to"] == "down" for e in timeline(lab, n)), 10, 0.02)
        # a few reconcile passes (1 s apart in these configs) and 2 s of requests later
        client.wait_for(lambda s: s.requests >= 40, 20, since=client.now())
        stats = client.stats(since=since)
    for node in configs:
        assert events(lab, node, "config.reloaded"), node
        assert NEW not in ipvsadm(lab, node, "-Ln"), node
        seen = timeline(lab, node)
        assert [e["event"] for e in seen] == ["health.change"], (node, seen)  # and never an ipvs.apply
        assert (seen[0]["from"], seen[0]["to"], seen[0]["reason"]) == ("unknown", "down", "refused")
    print(f"\nreload adding a dead server: {stats.failures} failed of {stats.requests} requests")
    assert stats.failures == 0, stats


def test_reload_adding_a_live_server_puts_it_in_ipvs_after_rise(
    lab: SeedLab, configs: dict[str, Path], tmp_path: Path  # noqa: F811
) -> None:
    docroot = tmp_path / "www8080"
    docroot.mkdir()
    (docroot / "index.html").write_text("lvs-web2-8080\n")
    lab.popen("rs2", ["python3", "-m", "http.server", "8080", "--bind", "192.168.72.129", "--directory",
                      str(docroot)], tmp_path / "web8080.log")
    listening = ["python3", "-c", "import socket; socket.create_connection(('192.168.72.129', 8080), 1).close()"]
    wait_until("rs2:8080 listens", lambda: lab.exec("rs2", listening, check=False).returncode == 0, 20)
    start_pair(lab, configs)
    with ClientLoop(lab, period=0.05, timeout=0.5) as client:
        client.wait_for(lambda s: len(s.per_backend) == 2 and s.successes >= 10, 20)
        since = client.now()
        reload_adding_the_new_server(lab, configs)
        for node in configs:
            wait_until(f"{NEW} in IPVS on {node}", lambda n=node: NEW in ipvsadm(lab, n, "-Ln"), 10, 0.02)
        client.wait_for(lambda s: s.per_backend.get("lvs-web2-8080", 0) >= 2, 20, since=client.now())
        stats = client.stats(since=since)
    for node in configs:
        seen = timeline(lab, node)
        # first the verdict after exactly `rise` passing checks, then (and only then) the destination is added
        assert [e["event"] for e in seen[:2]] == ["health.change", "ipvs.apply"], (node, seen)
        change, apply = seen[0], seen[1]
        assert (change["from"], change["to"], change["after"]) == ("unknown", "up", RISE), (node, change)
        assert apply["op"] == "AddDestination", (node, apply)
    print(f"\nreload adding a live server: {stats.failures} failed of {stats.requests} requests")
    assert stats.failures == 0, stats
