"""The operator commands against real IPVS, with ipvsadm as the independent oracle."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from integration.topology import SeedLab

pytestmark = pytest.mark.uml

REPO = Path(__file__).resolve().parent.parent
HAVS = str(Path(sys.executable).parent / "havs")
CONFIG = """\
nodes:
  lvs1: {interfaces: {client: eth0, server: eth1}}
virtual_services:
  - address: 192.168.0.108
    port: 80
    scheduler: wrr
    persistence: {timeout: 120, netmask: 255.255.255.0}
    real_servers:
      - {address: 192.168.72.128, weight: 3}
      - {address: 192.168.72.129, weight: 1, forwarding: dr}
  - address: 192.168.0.108
    port: 53
    protocol: udp
    scheduler: sh
    scheduler_flags: [sh-fallback, sh-port]
    real_servers:
      - {address: 192.168.72.128}
  - fwmark: 7
    scheduler: mh
    real_servers:
      - {address: 192.168.72.129, forwarding: tun, tunnel: {type: gue, port: 6080}}
"""


def havs(lab: SeedLab, *args: str, check: bool = True) -> str:
    return lab.exec("lvs1", [HAVS, *args], check=check).stdout


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "havs.yaml"
    path.write_text(CONFIG)
    return path


def test_apply_programs_the_table_and_a_second_run_changes_nothing(lab: SeedLab, config: Path) -> None:
    assert "would add service" in havs(lab, "apply", "-c", str(config), "--node", "lvs1", "--dry-run")
    assert lab.exec("lvs1", ["ipvsadm", "-Sn"]).stdout == ""  # dry run changed nothing
    first = havs(lab, "apply", "-c", str(config), "--node", "lvs1")
    assert first.count("add service") == 3 and first.count("add destination") == 4
    assert havs(lab, "apply", "-c", str(config), "--node", "lvs1") == ""
    saved = lab.exec("lvs1", ["ipvsadm", "-Sn"]).stdout
    assert "-A -t 192.168.0.108:80 -s wrr -p 120 -M 255.255.255.0" in saved
    assert "-a -t 192.168.0.108:80 -r 192.168.72.129:80 -g -w 1" in saved
    assert "-A -u 192.168.0.108:53 -s sh -b sh-fallback,sh-port" in saved
    assert "-a -f 7 -r 192.168.72.129:0 -i -w 1 --tun-type gue --tun-port 6080" in saved


def test_list_and_save_match_ipvsadm_byte_for_byte(lab: SeedLab, config: Path) -> None:
    havs(lab, "apply", "-c", str(config), "--node", "lvs1")
    assert havs(lab, "ipvs", "list") == lab.exec("lvs1", ["ipvsadm", "-Ln"]).stdout
    assert havs(lab, "ipvs", "save") == lab.exec("lvs1", ["ipvsadm", "-Sn"]).stdout
    stats_header = havs(lab, "ipvs", "list", "--stats").splitlines()[1:3]
    assert stats_header == lab.exec("lvs1", ["ipvsadm", "-Ln", "--stats"]).stdout.splitlines()[1:3]
    table = json.loads(havs(lab, "ipvs", "list", "--json"))
    assert len(table["services"]) == 3


def test_apply_repairs_drift_and_edits_in_place(lab: SeedLab, config: Path) -> None:
    havs(lab, "apply", "-c", str(config), "--node", "lvs1")
    lab.exec("lvs1", ["ipvsadm", "-e", "-t", "192.168.0.108:80", "-r", "192.168.72.128:80", "-m", "-w", "9"])
    lab.exec("lvs1", ["ipvsadm", "-D", "-u", "192.168.0.108:53"])
    out = havs(lab, "apply", "-c", str(config), "--node", "lvs1").splitlines()
    assert out == [
        "edit destination TCP 192.168.0.108:80 -> 192.168.72.128:80: weight 9 != 3",
        "add service UDP 192.168.0.108:53 missing",
        "add destination UDP 192.168.0.108:53 -> 192.168.72.128:53 missing",
    ]


def test_services_not_in_the_config_are_left_alone(lab: SeedLab, config: Path) -> None:
    lab.exec("lvs1", ["ipvsadm", "-A", "-t", "192.168.0.111:8080", "-s", "rr"])
    havs(lab, "apply", "-c", str(config), "--node", "lvs1")
    assert "192.168.0.111:8080" in lab.exec("lvs1", ["ipvsadm", "-Ln"]).stdout


def test_bad_config_is_refused_with_its_line(lab: SeedLab, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.replace("weight: 3", "weight: 70000"))
    done = lab.exec("lvs1", [HAVS, "apply", "-c", str(bad), "--node", "lvs1"], check=False)
    assert done.returncode == 1
    assert f"{bad}:9: virtual_services[0].real_servers[0].weight: must be 0..65535, got 70000" in done.stderr
