"""`vrrp.auth_hmac` in havs.yaml: errors name the key and never quote it; keys are masked in every dump but
the daemon's hand-over to its VRRP child; `file:` keys are read safely (havs.vrrp.auth_keys)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from havs.core.config import parse_located
from havs.errors import ConfigError
from havs.vrrp.auth_keys import auth_params, read_key
from havs.vrrp.process import SECRETS

REPO = Path(__file__).resolve().parents[1]
KEY_HEX = "hex:" + "5a" * 32
SEED = (REPO / "etc" / "havs.yaml").read_text()
ANCHOR = "  unicast_peers: []            # empty: multicast 224.0.0.18; else the peers' addresses\n"


def with_block(block: str) -> str:
    assert ANCHOR in SEED
    return SEED.replace(ANCHOR, ANCHOR + block)


def problems(block: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_located(with_block(block), "havs.yaml")
    return [str(p) for p in e.value.problems]


def test_a_valid_block_loads_with_defaults_and_is_masked() -> None:
    cfg = parse_located(with_block(f'  auth_hmac:\n    keys: {{1: "{KEY_HEX}"}}\n    active_key: 1\n')).config
    a = cfg.vrrp[0].auth_hmac  # type: ignore[union-attr]
    assert a is not None and (a.anti_replay, a.time_window, a.mode) == ("time", None, "enforce")
    dumped = cfg.model_dump_json()
    assert "5a5a" not in dumped and "**********" in dumped and "5a5a" not in repr(cfg)
    assert "5a5a" in str(cfg.model_dump(mode="json", context=SECRETS))  # only for the VRRP child
    p = auth_params(a, 0.1)
    assert p is not None and p.keys == {1: bytes([0x5A] * 32)} and p.time_window == 5


@pytest.mark.parametrize("block,where,message", [
    ('    keys: {1: "hex:5a5a"}\n    active_key: 1\n', "vrrp.auth_hmac.keys[1]", "key is 2 bytes, must be 32..64"),
    ('    keys: {1: "short text"}\n    active_key: 1\n', "vrrp.auth_hmac.keys[1]", "must be 32..64"),
    (f'    keys: {{1: "{KEY_HEX}"}}\n    active_key: 2\n', "vrrp.auth_hmac.active_key", "key 2 is not defined"),
    ('    keys: {1: "file:keys/k1"}\n    active_key: 1\n', "vrrp.auth_hmac.keys[1]", "absolute path"),
    (f'    keys: {{1: "{KEY_HEX}"}}\n    active_key: 1\n    mode: strict\n', "vrrp.auth_hmac.mode", "enforce"),
    (f'    keys: {{1: "{KEY_HEX}"}}\n    active_key: 1\n    time_window: 301\n', "vrrp.auth_hmac.time_window",
     "1..300"),
    (f'    keys: {{1: "{KEY_HEX}"}}\n    active_key: 1\n    anti_replay: clock\n', "vrrp.auth_hmac.anti_replay",
     "monotonic"),
])
def test_errors_name_the_key_path_and_never_the_key(block: str, where: str, message: str) -> None:
    found = problems("  auth_hmac:\n" + block)
    assert len(found) == 1 and where in found[0] and message in found[0], found
    assert "5a5a" not in found[0] and "short text" not in found[0]


def test_auth_pass_and_auth_hmac_are_exclusive() -> None:
    text = with_block(f'  auth_hmac:\n    keys: {{1: "{KEY_HEX}"}}\n    active_key: 1\n')
    text = text.replace("  version: 3 ", "  version: 2 ").replace("advert_interval: 0.1", "advert_interval: 1")
    text = text.replace(ANCHOR, ANCHOR + "  auth_pass: secret\n")
    with pytest.raises(ConfigError) as e:
        parse_located(text)
    assert "mutually exclusive" in str(e.value)


def test_file_keys(tmp_path: Path) -> None:
    good = tmp_path / "k1"
    good.write_text(KEY_HEX + "\n")
    good.chmod(0o600)
    assert read_key(f"file:{good}") == bytes([0x5A] * 32)
    text = tmp_path / "k2"
    text.write_text("x" * 40)
    text.chmod(0o640)  # group-readable is the operator's choice; world-readable is refused
    assert read_key(f"file:{text}") == b"x" * 40
    text.chmod(0o644)
    with pytest.raises(ValueError, match=r"world-readable \(mode 0644\): chmod 600"):
        read_key(f"file:{text}")
    with pytest.raises(ValueError, match="cannot read"):
        read_key(f"file:{tmp_path / 'missing'}")
    with pytest.raises(ValueError, match="not a regular file"):
        read_key(f"file:{tmp_path}")
    short = tmp_path / "k3"
    short.write_text("hex:abcd")
    short.chmod(0o600)
    with pytest.raises(ValueError, match="2 bytes") as e:
        read_key(f"file:{short}")
    assert "abcd" not in str(e.value)
    os.mkfifo(tmp_path / "fifo", 0o600)
    with pytest.raises(ValueError, match="not a regular file"):
        read_key(f"file:{tmp_path / 'fifo'}")  # never blocks on a FIFO


def test_auth_params_names_the_key_id(tmp_path: Path) -> None:
    cfg = parse_located(with_block(f'  auth_hmac:\n    keys: {{1: "{KEY_HEX}", 7: "file:{tmp_path}/none"}}\n'
                                   "    active_key: 1\n")).config
    with pytest.raises(ValueError, match=r"vrrp\.auth_hmac\.keys\.7: .*cannot read"):
        auth_params(cfg.vrrp[0].auth_hmac, 1.0)  # type: ignore[union-attr]


def test_a_bad_key_is_reported_on_its_own_line() -> None:
    # keys are written as numbers (`1:`): YAML keeps the text "1", the error path the int 1; both must meet
    block = f'  auth_hmac:\n    keys:\n      1: "{KEY_HEX}"\n      2: "hex:5a5a"\n    active_key: 1\n'
    text = with_block(block)
    line = text.splitlines().index('      2: "hex:5a5a"') + 1
    [found] = problems(block)
    assert found.startswith(f"havs.yaml:{line}: vrrp.auth_hmac.keys[2]: "), found
