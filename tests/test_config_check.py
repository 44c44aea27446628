"""`havs check` finds everything at once: schema and meaning in one run; host checks on the director itself."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from havs.cli import main
from havs.configfile import load_view
from havs.core.config import parse_config
from havs.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SEED = (REPO / "etc/havs.yaml").read_text()


def seed_with(*pairs: tuple[str, str]) -> str:
    text = SEED
    for old, new in pairs:
        assert old in text
        text = text.replace(old, new, 1)
    return text


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "f.yaml")
    return [str(p) for p in info.value.problems]


def test_schema_and_meaning_errors_come_in_one_run() -> None:
    text = seed_with(("    priority: 150 ", "    priority: true "), ("  unicast_peers: []", "  unicast_peers: [1]"),
                     ("      - address: 192.168.72.129\n", "      - address: 192.168.72.130\n"),
                     ("  state_dir: /var/lib/havs ", "  state_dir: '' "),
                     ("    - address: 192.168.0.108/24 ", "    - address: 0.0.0.0/0 "),
                     ("        weight: 1\n", "        weight: 70000\n"))
    assert problems(text) == [
        "f.yaml:15: settings.state_dir: must not be empty (drained servers are kept there across restarts)",
        "f.yaml:20: nodes.lvs1.priority: must be a whole number, not true or false, got True",
        "f.yaml:38: vrrp.unicast_peers[0]: must be an address written with dots or colons (e.g. '192.168.0.1'); "
        "YAML read 1 as a number",
        # the vrrp section failed on its peers; its addresses are still checked
        "f.yaml:40: vrrp.addresses[0].address: 0.0.0.0/0 covers every address; a floating address is one host "
        "with its LAN's prefix",
        "f.yaml:69: virtual_services[0].real_servers[0].weight: must be 0..65535, got 70000",
        # the service failed on a weight; its other real server is still checked against the gateway
        "f.yaml:70: virtual_services[0].real_servers[1].address: 192.168.72.130 is a floating address "
        "(vrrp.addresses[1]): the VIP or the gateway cannot also be a real server",
    ]


def test_udp_sctp_and_fwmark_services_are_not_probed_unless_told() -> None:
    text = SEED + ("  - {address: 192.168.0.108, port: 53, protocol: udp, real_servers: [{address: 192.168.72.128}]}\n"
                   "  - {address: 192.168.0.108, port: 3868, protocol: sctp,\n"
                   "     real_servers: [{address: 192.168.72.128}]}\n"
                   "  - {fwmark: 7, real_servers: [{address: 192.168.72.128}]}\n"
                   "  - {address: 192.168.0.108, port: 54, protocol: udp, check: {type: tcp, connect_port: 53},\n"
                   "     real_servers: [{address: 192.168.72.128}]}\n")
    services = parse_config(text, "f.yaml").virtual_services
    assert [vs.check.type for vs in services] == ["http", "none", "none", "none", "tcp"]
    assert services[1].real_server_check(services[1].real_servers[0]).type == "none"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "havs.yaml"
    path.write_text(text)
    return path


def test_control_socket_colliding_with_the_config_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, SEED)
    path.write_text(SEED.replace("/run/havs/control.sock", str(path)))
    with pytest.raises(ConfigError, match=r"havs.yaml:14: settings.control_socket: is the config file itself"):
        load_view(str(path), "lvs1")
    path.write_text(SEED.replace("/run/havs/control.sock", str(tmp_path)))
    with pytest.raises(ConfigError, match=r"settings.control_socket: is the config's directory, not a socket path"):
        load_view(str(path), "lvs1")
    path.write_text(SEED.replace("/run/havs/control.sock", str(tmp_path / "control.sock")))
    assert load_view(str(path), "lvs1").config.settings.control_socket == str(tmp_path / "control.sock")


@pytest.mark.parametrize(("mode", "refused"), [(0o775, "group"), (0o777, "world"), (0o1777, None), (0o755, None)])
def test_config_directory_others_can_write_to_is_refused(tmp_path: Path, mode: int, refused: str | None) -> None:
    directory = tmp_path / "etc"
    directory.mkdir()
    path = write(directory, SEED)
    directory.chmod(mode)
    try:
        if refused is None:
            assert load_view(str(path), "lvs1").name == "lvs1"  # a sticky directory (/tmp) is safe
        else:
            with pytest.raises(ConfigError, match=rf"is in {directory}, which is {refused}-writable .*chmod go-w"):
                load_view(str(path), "lvs1")
    finally:
        directory.chmod(0o700)


def this_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> Path:
    """The seed's lvs1 made this host: its client interface is loopback (exists everywhere)."""
    monkeypatch.setattr(socket, "gethostname", lambda: "lvs1")
    return write(tmp_path, text.replace("      client: eth0 ", "      client: lo ", 1))


def test_on_the_director_missing_interfaces_and_notify_commands_are_reported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "notify.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)  # not executable
    text = SEED.replace("      server: eth1 ", "      server: havs-nosuch0 ", 1).replace(
        "    refresh: 10 ", f"    refresh: 10\n  notify: {{master: [{script}], backup: [/nonexistent/backup]}} ")
    path = this_host(tmp_path, monkeypatch, text)
    assert main(["check", "-c", str(path)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{path}:23: nodes.lvs1.interfaces.server: interface havs-nosuch0 does not exist on this host (lvs1)",
        f"{path}:49: vrrp.notify.master[0]: {script} is not an executable file",
        f"{path}:49: vrrp.notify.backup[0]: /nonexistent/backup does not exist on this host",
        "havs: 3 problems in the config",
    ]
    assert main(["check", "-c", str(path), "--node", "lvs1"]) == 1  # --node naming this host: the same checks
    capsys.readouterr()
    assert main(["check", "-c", str(path), "--offline"]) == 0  # a build machine: the file alone
    assert main(["check", "-c", str(path), "--node", "lvs2"]) == 0  # another director's view: not this host's
    script.chmod(0o755)
    path.write_text(path.read_text().replace("havs-nosuch0", "lo").replace(", backup: [/nonexistent/backup]", ""))
    assert main(["check", "-c", str(path)]) == 0



def test_on_the_director_file_keys_it_cannot_use_are_reported_with_their_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    secret = "hex:" + "c0ffee" * 10 + "abcd"
    keys = tmp_path / "keys"
    keys.mkdir()
    good, open_, absent = keys / "good", keys / "open", keys / "absent"
    for f, mode in ((good, 0o600), (open_, 0o644)):
        f.write_text(secret + "\n")
        f.chmod(mode)
    block = (f"  auth_hmac:\n    keys:\n      1: file:{good}\n      2: file:{open_}\n      3: file:{absent}\n"
             f"      4: {secret}\n    active_key: 1\n")
    text = seed_with(("  interface: server ", block + "  interface: server "),
                     ("      server: eth1 ", "      server: lo "))
    path = this_host(tmp_path, monkeypatch, text)
    line = {kid: n for n, t in enumerate(path.read_text().splitlines(), 1) for kid in (2, 3)
            if t.startswith(f"      {kid}: ")}
    assert main(["check", "-c", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"{path}:{line[2]}: vrrp.auth_hmac.keys[2]: {open_} is world-readable (mode 0644): chmod 600 {open_}",
        f"{path}:{line[3]}: vrrp.auth_hmac.keys[3]: {absent}: cannot read: No such file or directory",
        "havs: 2 problems in the config",
    ]
    assert "c0ffee" not in err
    assert main(["check", "-c", str(path), "--offline"]) == 0  # a build machine has not got the keys
    capsys.readouterr()
    open_.chmod(0o600)
    absent.write_text("not a key\n")
    absent.chmod(0o600)
    assert main(["check", "-c", str(path)]) == 1
    assert capsys.readouterr().err.splitlines()[0] == (
        f"{path}:{line[3]}: vrrp.auth_hmac.keys[3]: {absent}: key is 9 bytes, must be 32..64 (openssl rand -hex 32)")
    absent.write_text(secret)
    assert main(["check", "-c", str(path)]) == 0
    assert "c0ffee" not in capsys.readouterr().out

def test_a_loopback_real_server_is_lvs_local_node_and_accepted() -> None:
    # the director serving the service itself (ipvsadm -a ... -r 127.0.0.1:80): loopback is a host address
    # for a real server, not for a floating address or a VRRP peer, which another host must reach
    vs = parse_config(SEED.replace("      - address: 192.168.72.128\n", "      - address: 127.0.0.1\n", 1),
                      "f.yaml").virtual_services[0]
    assert str(vs.real_servers[0].address) == "127.0.0.1"
