"""The daemon ↔ VRRP child messages: one codec, a version, errors as a type."""

from __future__ import annotations

import json

import pytest

from havs.vrrp import protocol
from havs.vrrp.protocol import (
    VERSION,
    ProtocolError,
    Ready,
    SetDecrement,
    Snapshot,
    Start,
    StartFailed,
    StateChange,
    Stop,
    Update,
    Updated,
)


@pytest.mark.parametrize("message", [
    Start({"name": "lvs1"}), Stop(False), SetDecrement(3), Update(7, {"a": 1}), Ready(),
    StartFailed("VRRP did not start: eth9"), StateChange("BACKUP", "MASTER", "master_down"),
    Snapshot({"state": "MASTER", "held": ["192.168.0.108/24 dev eth0"]}), Updated(7, True),
])
def test_round_trip(message: protocol.Message) -> None:
    line = protocol.encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line)["v"] == VERSION
    assert protocol.decode(line) == message


@pytest.mark.parametrize(("line", "why"), [
    (b"not json\n", "not JSON"),
    (b"[1]\n", "not an object"),
    (b'{"v": 99, "type": "Ready"}\n', "protocol version"),
    (b'{"type": "Ready"}\n', "protocol version"),
    (b'{"v": 1, "type": "Bogus"}\n', "unknown message type"),
    (b'{"v": 1, "type": "Stop", "graceful": true, "extra": 1}\n', "unknown fields"),
    (b'{"v": 1, "type": "SetDecrement", "n": "3"}\n', "expected int"),
    (b'{"v": 1, "type": "Stop", "graceful": 1}\n', "expected bool"),
    (b'{"v": 1, "type": "Updated", "id": 1}\n', "Updated"),
])
def test_bad_lines_are_protocol_errors(line: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        protocol.decode(line)
