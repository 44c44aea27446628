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
    Start({"name": "lvs1"}), Stop(False), SetDecrement({"VI_1": 3, "VI_2": 0}), SetDecrement({}), Update(7, {"a": 1}),
    Ready(), StartFailed("VRRP did not start: eth9"), StateChange("VI_1", "BACKUP", "MASTER", "master_down"),
    StateChange("VIP6", "MASTER", "FAULT", "sync_group", "G"),
    Snapshot({"instances": [{"instance": "VI_1", "group": None, "state": "MASTER",
                             "held": ["192.168.0.108/24 dev eth0"]}], "groups": {}}), Updated(7, True),
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
    (b'{"v": 1, "type": "Ready"}\n', "protocol version 1, expected 2"),  # a child of the previous release
    (b'{"v": 2, "type": "Bogus"}\n', "unknown message type"),
    (b'{"v": 2, "type": "Stop", "graceful": true, "extra": 1}\n', "unknown fields"),
    (b'{"v": 2, "type": "SetDecrement", "n": 3}\n', "expected dict"),
    (b'{"v": 2, "type": "SetDecrement", "n": {"VI_1": "3"}}\n', "expected integer values"),
    (b'{"v": 2, "type": "SetDecrement", "n": {"VI_1": true}}\n', "expected integer values"),
    (b'{"v": 2, "type": "Stop", "graceful": 1}\n', "expected bool"),
    (b'{"v": 2, "type": "Updated", "id": 1}\n', "Updated"),
    (b'{"v": 2, "type": "StateChange", "from_": "BACKUP", "to": "MASTER", "reason": "x"}\n', "StateChange"),
])
def test_bad_lines_are_protocol_errors(line: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        protocol.decode(line)


def test_the_child_is_told_the_view_without_the_virtual_services() -> None:
    # 1,000 services × 10 servers made a 1.9 MB Start line, over the child's read limit: VRRP never started
    from pathlib import Path

    from havs.configfile import load_view
    from havs.core.model import NodeView
    from havs.vrrp.child import LINE_LIMIT
    from havs.vrrp.process import child_view

    seed = Path(__file__).resolve().parents[1] / "etc" / "havs.yaml"
    view = load_view(str(seed), "lvs1")
    vs = view.config.virtual_services[0]
    many = [vs.model_copy(update={"port": 20000 + i}) for i in range(1000)]
    big = view.model_copy(update={"config": view.config.model_copy(update={"virtual_services": many})})
    line = protocol.encode(Start(child_view(big)))
    assert len(line) < 64 * 1024 < LINE_LIMIT
    told = NodeView.model_validate(child_view(big))
    assert told.config.virtual_services == [] and told.config.vrrp == big.config.vrrp and told.node == big.node
    assert big.config.virtual_services == many  # the daemon's own view is untouched
