"""What an operator runs against a live director (root, network namespaces): `havs status` says which
floating addresses are held, `havs reload` of a bad file exits 1 with its file:line problems, and the
metrics endpoint shows both (and passes promtool)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from integration.test_vrrp_netns import GW_CIDR, VIP_CIDR, Pair, fresh, lab, wait_until  # noqa: F401
from integration.topology import SeedLab

pytestmark = pytest.mark.netns

if os.geteuid() != 0:
    pytest.skip("needs root for network namespaces", allow_module_level=True)

REPO = Path(__file__).resolve().parent.parent
HAVS = str(REPO / ".venv" / "bin" / "havs")
SCRAPE = ("import urllib.request; "
          "print(urllib.request.urlopen('http://127.0.0.1:9101/metrics', timeout=5).read().decode())")


def test_status_reload_and_metrics_of_a_live_master(fresh: SeedLab) -> None:  # noqa: F811
    pair = Pair(fresh, 0.1)
    pair.config.write_text(pair.config.read_text().replace(
        "settings: {control_socket:", "settings: {metrics_listen: 127.0.0.1:9101, control_socket:"))
    config = pair.config.with_name(f"{pair.config.stem}-lvs1.yaml")
    sock = str(fresh.workdir / "run" / f"{config.stem}.sock")
    pair.start("lvs1")
    try:
        wait_until("lvs1 holds VIP and gateway", lambda: pair.holds("lvs1") == (True, True), 5)
        wait_until("control socket", lambda: os.path.exists(sock), 5)
        status = json.loads(subprocess.run([HAVS, "status", "--json", "--socket", sock], capture_output=True,
                                           text=True, check=True).stdout)
        [vrrp] = status["vrrp"]  # the pair's one instance, unnamed in its config
        assert vrrp["instance"] == "VI_1" and vrrp["group"] is None
        assert sorted(vrrp["held"]) == sorted([f"{VIP_CIDR} dev eth0", f"{GW_CIDR} dev eth1"])
        text = subprocess.run([HAVS, "status", "--socket", sock], capture_output=True, text=True, check=True).stdout
        assert f"{VIP_CIDR} dev eth0 (held)" in text

        good = config.read_text()
        config.write_text(good.replace("priority: 150", "priority: 300"))
        bad = subprocess.run([HAVS, "reload", "--socket", sock], capture_output=True, text=True)
        assert bad.returncode == 1
        assert bad.stderr.splitlines()[0].startswith(f"{config}:") and "300" in bad.stderr, bad.stderr
        config.write_text(good)
        ok = subprocess.run([HAVS, "reload", "--socket", sock], capture_output=True, text=True)
        assert ok.returncode == 0 and ok.stdout == "reloaded (applied)\n", ok

        metrics = subprocess.run(["ip", "netns", "exec", fresh.ns("lvs1"), str(REPO / ".venv" / "bin" / "python"),
                                  "-c", SCRAPE], capture_output=True, text=True, check=True).stdout
        lines = metrics.splitlines()
        assert 'havs_vrrp_addresses_held{group="",instance="VI_1"} 2.0' in lines
        assert 'havs_reloads_total{outcome="failed"} 1.0' in lines
        assert 'havs_reloads_total{outcome="applied"} 1.0' in lines
        assert 'havs_vrrp_state{group="",instance="VI_1",state="MASTER"} 1.0' in lines
        if shutil.which("promtool"):
            check = subprocess.run(["promtool", "check", "metrics"], input=metrics, capture_output=True, text=True)
            assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), check
    finally:
        pair.stop_all()


INSTANCES = """
settings: {control_socket: CONTROL, state_dir: STATE, metrics_listen: 127.0.0.1:9101}
nodes:
  lvs1: {priority: 150, interfaces: {client: eth0, server: eth1}}
  lvs2: {priority: 100, interfaces: {client: eth0, server: eth1}}
vrrp:
  - {name: VI_A, router_id: 51, advert_interval: 0.1, interface: server,
     addresses: [{address: VIP_CIDR, interface: client}]}
  - {name: GW, router_id: 53, advert_interval: 0.1, interface: server,
     addresses: [{address: GW_CIDR, interface: server}]}
  - {name: VI_B, router_id: 52, priority: {lvs1: 100, lvs2: 150}, advert_interval: 0.1, interface: server,
     addresses: [{address: 192.168.0.109/24, interface: client}]}
vrrp_sync_groups:
  - {name: G_A, instances: [VI_A, GW]}
"""


def test_status_and_metrics_name_every_instance_and_group(fresh: SeedLab) -> None:  # noqa: F811
    pair = Pair(fresh, 0.1)
    pair.config.write_text(INSTANCES.replace("VIP_CIDR", VIP_CIDR).replace("GW_CIDR", GW_CIDR).replace(
        "STATE", str(pair.notify_dir / "state")))
    config = pair.config.with_name(f"{pair.config.stem}-lvs1.yaml")
    sock = str(fresh.workdir / "run" / f"{config.stem}.sock")
    pair.start("lvs1")  # alone: MASTER of every instance, VI_B's too (its preferred director is away)
    try:
        wait_until("lvs1 holds both VIPs and the gateway", lambda: pair.holds("lvs1") == (True, True)
                   and "192.168.0.109/24" in fresh.addresses("lvs1", "eth0"), 5)
        wait_until("control socket", lambda: os.path.exists(sock), 5)

        def status() -> dict[str, object]:
            return json.loads(subprocess.run([HAVS, "status", "--json", "--socket", sock], capture_output=True,
                                             text=True, check=True).stdout)

        wait_until("every instance pushed as MASTER", lambda: [v["state"] for v in status()["vrrp"]] == ["MASTER"] * 3,
                   5)
        snap = status()
        assert [(v["instance"], v["group"], v["router_id"]) for v in snap["vrrp"]] == [  # type: ignore[union-attr]
            ("VI_A", "G_A", 51), ("GW", "G_A", 53), ("VI_B", None, 52)]
        assert snap["vrrp_groups"] == {"G_A": "MASTER"}
        assert snap["vrrp"][2]["held"] == ["192.168.0.109/24 dev eth0"]  # type: ignore[index]
        text = subprocess.run([HAVS, "status", "--socket", sock], capture_output=True, text=True, check=True).stdout
        lines = text.splitlines()
        assert [line.split(", router")[0].split(" — ")[1] for line in lines if line.startswith("VRRP MASTER")] == [
            "VI_A in sync group G_A", "GW in sync group G_A", "VI_B"]
        assert "sync group G_A: MASTER (VI_A, GW)" in lines and "  floating: 192.168.0.109/24 dev eth0 (held)" in lines

        metrics = subprocess.run(["ip", "netns", "exec", fresh.ns("lvs1"), str(REPO / ".venv" / "bin" / "python"),
                                  "-c", SCRAPE], capture_output=True, text=True, check=True).stdout
        lines = metrics.splitlines()
        for labels in ('group="G_A",instance="VI_A"', 'group="G_A",instance="GW"', 'group="",instance="VI_B"'):
            assert f'havs_vrrp_state{{{labels},state="MASTER"}} 1.0' in lines
            assert f"havs_vrrp_addresses_held{{{labels}}} 1.0" in lines
            assert f'havs_vrrp_transitions_total{{{labels},to="MASTER"}} 1.0' in lines
        assert 'havs_vrrp_sync_group_state{group="G_A",state="MASTER"} 1.0' in lines
        if shutil.which("promtool"):
            check = subprocess.run(["promtool", "check", "metrics"], input=metrics, capture_output=True, text=True)
            assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), check
    finally:
        pair.stop_all()
