"""Hostile config files: every one is a ConfigError naming the file (and line), in bounded time and memory.

A reload runs this path inside the running daemon, and `havs check` runs it before systemd restarts it:
an exception that escapes here stops the daemon on both directors at once (issue 11, item 3).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from havs.cli import main
from havs.configfile import MAX_SIZE, load_config, load_view
from havs.core.config import parse_config
from havs.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SEED = (REPO / "etc/havs.yaml").read_text()

# ten levels of ten aliases each: 10^10 nodes if expanded
BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(9)
)


def seed_with(old: str, new: str) -> str:
    assert old in SEED
    return SEED.replace(old, new, 1)


# (file text, a problem line the error must contain)
HOSTILE = [
    ("recursive sequence", "nodes: &a [*a]\n",
     "f.yaml:1: nodes[0]: recursive alias: the anchor on line 1 is used inside itself"),
    ("recursive mapping", "nodes: &a {lvs1: *a}\n",
     "f.yaml:1: nodes.lvs1: recursive alias: the anchor on line 1 is used inside itself"),
    ("recursive in the seed", seed_with("settings:\n", "settings: &s\n  x: *s\n"),
     "f.yaml:11: settings.x: recursive alias: the anchor on line 10 is used inside itself"),
    ("alias bomb", BOMB, "f.yaml:5: e: YAML aliases expand to too many nodes (an alias bomb?); write the values out"),
    ("!!int abc", seed_with("    port: 80\n    protocol", "    port: !!int abc\n    protocol"),
     "f.yaml:52: virtual_services[0].port: 'abc' is not a valid !!int"),
    ("!!bool maybe", seed_with("  preempt: true ", "  preempt: !!bool maybe "),
     "f.yaml:35: vrrp.preempt: 'maybe' is not a valid !!bool"),
    ("!!timestamp foo", seed_with("  state_dir: /var/lib/havs", "  state_dir: !!timestamp foo"),
     "f.yaml:15: settings.state_dir: 'foo' is not a valid !!timestamp"),
    ("empty !!float", seed_with("  advert_interval: 0.1", "  advert_interval: !!float"),
     "f.yaml:34: vrrp.advert_interval: '' is not a valid !!float"),
    ("empty quoted !!float", seed_with("  advert_interval: 0.1", "  advert_interval: !!float ''"),
     "f.yaml:34: vrrp.advert_interval: '' is not a valid !!float"),
    ("unknown tag", seed_with("  router_id: 51", "  router_id: !foo 51"),
     "f.yaml:32: vrrp.router_id: '51' is not a valid !foo (could not determine a constructor for the tag '!foo')"),
    ("python object", seed_with("  router_id: 51", "  router_id: !!python/object/apply:os.system [id]"),
     "f.yaml:32: vrrp.router_id: must be a whole number"),
    ("python name on a scalar", seed_with("  router_id: 51", "  router_id: !!python/name:os.system ''"),
     "f.yaml:32: vrrp.router_id: '' is not a valid !!python/name:os.system"),
    ("!!map on a scalar", seed_with("  router_id: 51", "  router_id: !!map x"),
     "f.yaml:32: vrrp.router_id: 'x' is not a valid !!map (expected a mapping node, but found scalar)"),
    ("deep nesting", "nodes: " + "[" * 100 + "]" * 100 + "\n", "nested more than 64 levels deep"),
    ("deeper than libyaml", "[" * 5000 + "]" * 5000, "f.yaml:1: YAML syntax: exceeded maximum nesting depth"),
    ("merge key", seed_with("  lvs2:\n", "  lvs2:\n    <<: {priority: 1}\n"),
     "f.yaml:25: nodes.lvs2: YAML merge keys (<<) are not supported"),
    ("complex key", "? [a, b]\n: 1\n", "f.yaml:1: keys must be plain words"),
    ("mid-copy cut in a value", SEED[: SEED.index("router_id: 51") + len("router_id: ")] + "'5",
     "f.yaml:32: YAML syntax"),
    ("tab indentation", seed_with("  lvs2:\n", "\tlvs2:\n"), "YAML syntax"),
    ("a null document", "---\n...\n", "f.yaml:1: the top level must be a mapping of keys"),
    ("two documents", SEED + "---\n" + SEED, "f.yaml:73: YAML syntax: but found another document"),
    ("a bare scalar", "hello\n", "f.yaml:1: the top level must be a mapping of keys"),
]


@pytest.mark.parametrize(("text", "expected"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_text_is_a_config_error_with_its_line(text: str, expected: str) -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        parse_config(text, "f.yaml")
    problems = [str(p) for p in info.value.problems]
    assert any(expected in p for p in problems), problems
    assert time.monotonic() - started < 1.0


def test_a_bad_value_is_said_once_not_again_by_validation() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(seed_with("  advert_interval: 0.1", "  advert_interval: !!float"), "f.yaml")
    assert [str(p) for p in info.value.problems] == ["f.yaml:34: vrrp.advert_interval: '' is not a valid !!float"]


def test_alias_bomb_ends_fast_and_small() -> None:
    """In a fresh interpreter, so the peak memory is the parse's own: the old loader grew ~110 MB/s here."""
    code = (
        "import resource, sys, time\n"
        "from havs.core.config import parse_config\n"
        "from havs.errors import ConfigError\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "t = time.monotonic()\n"
        "try:\n"
        "    parse_config(sys.stdin.read(), 'bomb.yaml')\n"
        "except ConfigError as e:\n"
        "    print(time.monotonic() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base, str(e))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], input=BOMB, capture_output=True, text=True, timeout=30,
                         check=True).stdout
    seconds, grown_kib, message = out.split(" ", 2)
    assert "alias bomb" in message
    assert float(seconds) < 1.0
    assert int(grown_kib) < 64 * 1024, f"the parse grew the process by {int(grown_kib) // 1024} MB"


def test_aliases_for_shared_blocks_still_work() -> None:
    """The budget must not refuse the ordinary use of aliases: one check block shared by many servers."""
    # .1-.120: clear of the directors (.131/.132) and the gateway (.130), which cannot be real servers
    servers = "".join(f"      - {{address: 192.168.72.{i % 120 + 1}, port: {1000 + i}, check: *chk}}\n"
                      for i in range(3000))
    text = seed_with("    check:\n      type: http", "    check: &chk\n      type: http").split("    real_servers:")[0]
    config = parse_config(text + "    real_servers:\n" + servers, "f.yaml")
    assert len(config.virtual_services[0].real_servers) == 3000
    assert config.virtual_services[0].real_servers[2999].check is not None


def _load_in_thread(path: str) -> ConfigError | None:
    """load_config on a thread: a FIFO must be refused at once, not block the caller."""
    caught: list[ConfigError | None] = []

    def run() -> None:
        try:
            load_config(path)
            caught.append(None)
        except ConfigError as e:
            caught.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(2.0)
    assert not thread.is_alive(), f"reading {path} blocked"
    return caught[0]


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "havs.yaml"
    os.mkfifo(path)
    error = _load_in_thread(str(path))
    assert error is not None and str(error) == f"{path}: is a FIFO, not a regular file"


def test_symlink_to_a_fifo_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "havs.yaml").symlink_to(tmp_path / "pipe")
    error = _load_in_thread(str(tmp_path / "havs.yaml"))
    assert error is not None and "is a FIFO, not a regular file" in str(error)


def test_directory_and_devices_are_refused(tmp_path: Path) -> None:
    error = _load_in_thread(str(tmp_path))
    assert error is not None and str(error) == f"{tmp_path}: is a directory, not a regular file"
    for device in ("/dev/zero", "/dev/null"):
        error = _load_in_thread(device)
        assert error is not None and str(error) == f"{device}: is a character device, not a regular file"


def test_size_cap(tmp_path: Path) -> None:
    path = tmp_path / "havs.yaml"
    with open(path, "wb") as f:
        f.truncate(MAX_SIZE + 1)  # sparse: no 16 MB written
    with pytest.raises(ConfigError, match=rf"havs\.yaml: is {MAX_SIZE + 1} bytes; a config may be at most {MAX_SIZE}"):
        load_config(str(path))


def test_not_utf8_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "havs.yaml"
    path.write_bytes(b"nodes: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"havs\.yaml: not UTF-8 text: invalid start byte at byte 7"):
        load_config(str(path))
    with pytest.raises(ConfigError, match=r"gone\.yaml: cannot read: No such file or directory"):
        load_config(str(tmp_path / "gone.yaml"))


def test_world_writable_is_refused_from_the_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "havs.yaml"
    path.write_text(SEED)
    path.chmod(0o666)
    with pytest.raises(ConfigError, match=r"is world-writable \(mode 0666\)"):
        load_view(str(path), "lvs1")


def test_check_command_takes_the_same_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "havs.yaml"
    path.write_text(BOMB)
    assert main(["check", "-c", str(path), "--node", "lvs1"]) == 1
    assert "alias bomb" in capsys.readouterr().err
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    assert main(["check", "-c", str(fifo), "--node", "lvs1"]) == 1
    assert "is a FIFO, not a regular file" in capsys.readouterr().err


def test_fuzzed_seed_never_raises_anything_but_config_error() -> None:
    """Byte and line mutations of the shipped file, seeded: each parses or is a ConfigError, never another
    exception (the old loader let 1.8% of fuzzed files through as exceptions)."""
    rng = random.Random(11)
    tokens = ["!!int", "!!bool", "!!float", "!!timestamp", "!!binary", "!!str", "!!null", "!!map", "!!seq",
              "&a", "*a", "&b", "*b", "<<:", "? ", "[", "]", "{", "}", ",", ":", "-", "'", '"', "\t", "|", ">",
              "!", "%YAML 1.1\n---\n", "\x00", "\u2028", "1e999", "0x", "0o", "~", "null", "yes", "2001-12-14"]
    lines = SEED.splitlines(keepends=True)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(1500):
        mutated = list(lines)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(mutated))
            line = mutated[i]
            pos = rng.randrange(len(line) + 1)
            choice = rng.random()
            if choice < 0.6:
                mutated[i] = line[:pos] + rng.choice(tokens) + " " + line[pos:]
            elif choice < 0.8:
                mutated[i] = line[:pos] + line[pos + rng.randint(1, 8):]
            else:
                mutated.insert(i, mutated[rng.randrange(len(mutated))])
        try:
            parse_config("".join(mutated), "fuzz.yaml")
            outcomes["ok"] += 1
        except ConfigError as e:
            assert all(str(p).startswith("fuzz.yaml") for p in e.problems), e
            outcomes["error"] += 1
    assert outcomes["error"] > 500, json.dumps(outcomes)  # the mutations do reach the error paths


def test_too_many_values_without_any_alias() -> None:
    from havs.core.config import MAX_NODES

    text = "nodes: [" + "1," * MAX_NODES + "1]\n"  # a mapping, its key, a list and MAX_NODES + 1 items
    with pytest.raises(ConfigError) as info:
        parse_config(text, "f.yaml")
    assert str(info.value) == f"f.yaml: has {MAX_NODES + 4} values; a config may have at most {MAX_NODES}"
