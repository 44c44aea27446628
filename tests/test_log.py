from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import textwrap

from havs.log import failures, setup_logging


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


def run_child(code: str, **popen: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=30, **popen)  # type: ignore[call-overload]


def test_closed_stdout_log_calls_return() -> None:
    result = run_child("""
        import sys
        from havs import log as havs_log
        log = havs_log.setup_logging("json", node="lvs1")
        sys.stdout.close()
        log.info("daemon.signal", signal="TERM")
        log.error("vrrp.garp_failed", error="x")
        print("returned", havs_log.failures(), file=sys.stderr)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "returned 2"


def test_broken_pipe_then_clean_exit() -> None:
    """`havs run | tee` with tee gone: every later log call returns, and the process still exits 0 (a
    failing final flush of stdout would make it 120)."""
    code = """
        import sys, time
        from havs import log as havs_log
        log = havs_log.setup_logging("json", node="lvs1")
        time.sleep(0.3)  # the parent closes the pipe's read end meanwhile
        for i in range(3):
            log.info("daemon.signal", signal="TERM", n=i)
        print("returned", havs_log.failures(), file=sys.stderr)
    """
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()
    err = child.stderr.read()
    assert child.wait(30) == 0, err
    assert err.strip() == "returned 1"  # the first write hits EPIPE; the rest go to /dev/null


def test_unrenderable_values_and_bad_format_never_raise() -> None:
    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

        __str__ = __repr__

    out = io.StringIO()
    log = setup_logging("json", node="lvs1", stream=out)
    before = failures()
    assert log.info("health.change", server=Hostile()) is None
    event = json.loads(out.getvalue())
    assert event["event"] == "health.change" and event["node"] == "lvs1"
    assert event["log_error"] == "this event could not be rendered: RuntimeError"
    cycle: list[object] = []
    cycle.append(cycle)
    log.info("ipvs.apply", ops=cycle)  # JSON cannot encode a cycle
    log.info("format %s %s", 1)  # too few arguments for the format
    assert failures() == before + 3
    console = io.StringIO()
    setup_logging("console", stream=console).info("x", value=Hostile())
    assert '"event": "x"' in console.getvalue()


def test_a_closed_stream_given_at_setup() -> None:
    out = io.StringIO()
    out.close()
    log = setup_logging("auto", node="lvs1", stream=out)  # isatty() on a closed stream raises
    assert log.info("config.loaded") is None
