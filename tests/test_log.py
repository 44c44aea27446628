from __future__ import annotations

import io
import json
import re

from havs.log import setup_logging


def test_json_lines_carry_timestamp_event_node_and_fields() -> None:
    out = io.StringIO()
    log = setup_logging("json", node="lvs1", stream=out)
    log.info("vrrp.state", from_="BACKUP", to="MASTER", reason="master_down")
    log.debug("hidden")  # below the default level
    (line,) = out.getvalue().splitlines()
    event = json.loads(line)
    assert event["event"] == "vrrp.state"
    assert event["node"] == "lvs1"
    assert event["from"] == "BACKUP" and event["to"] == "MASTER" and event["reason"] == "master_down"
    assert event["level"] == "info"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event["timestamp"])


def test_auto_is_json_when_not_a_tty_and_console_when_asked() -> None:
    out = io.StringIO()
    setup_logging("auto", stream=out).info("config.loaded", services=1)
    assert json.loads(out.getvalue())["services"] == 1
    out = io.StringIO()
    setup_logging("console", stream=out).info("config.loaded", services=1)
    assert "config.loaded" in out.getvalue() and not out.getvalue().startswith("{")
