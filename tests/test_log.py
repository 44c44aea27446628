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


# journald's stream protocol (systemd's journald-stream.c, syslog_parse_priority): with SyslogLevelPrefix=yes
# (the default) a line that starts with `<N>`, N one digit 0-7, is stored with PRIORITY=N and without the prefix;
# any other line gets the stream's default priority (6, info).
def journald_reads(line: str) -> tuple[int, str]:
    m = re.fullmatch(r"<([0-7])>(.*)", line)
    return (int(m.group(1)), m.group(2)) if m else (6, line)


LOG_EVERY_LEVEL = """
    import sys
    from havs import log as havs_log
    log = havs_log.setup_logging("auto", node="lvs1", level="debug")
    log.debug("vrrp.advert_in", priority=100)
    log.info("vrrp.state", from_="BACKUP", to="MASTER", reason="master_down")
    log.warning("vrrp.fault", reason="link down\\nsecond line")
    log.error("vrrp.notify_failed", rc=1)
    log.exception("ipvs.apply_failed")
    log.critical("daemon.crashed")
"""
LEVELS = [(7, "vrrp.advert_in"), (6, "vrrp.state"), (4, "vrrp.fault"), (3, "vrrp.notify_failed"),
          (3, "ipvs.apply_failed"), (2, "daemon.crashed")]


def test_on_the_journal_stream_each_line_carries_its_syslog_priority() -> None:
    import os
    import socket

    ours, journald = socket.socketpair()  # journald hands a service a connected stream socket as stdout
    with ours, journald:
        st = os.fstat(ours.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        result = subprocess.run([sys.executable, "-c", textwrap.dedent(LOG_EVERY_LEVEL)], stdout=ours.fileno(),
                                stderr=subprocess.PIPE, text=True, env=env, timeout=30)
        assert result.returncode == 0, result.stderr
        ours.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := journald.recv(65536):
            data += chunk
    entries = [journald_reads(line) for line in data.decode().splitlines()]
    assert [(priority, json.loads(message)["event"]) for priority, message in entries] == LEVELS
    assert json.loads(entries[2][1])["reason"] == "link down\nsecond line"  # one event, one entry


def test_a_pipe_gets_plain_json_even_under_systemd() -> None:
    import os

    # JOURNAL_STREAM is inherited by children whose stdout is not the journal (`havs status | jq` in a unit)
    env = {**os.environ, "JOURNAL_STREAM": "1:1", "INVOCATION_ID": "x"}
    result = run_child(LOG_EVERY_LEVEL, env=env)  # stdout is a pipe
    lines = result.stdout.splitlines()
    assert [json.loads(line)["event"] for line in lines] == [event for _, event in LEVELS]
    env["JOURNAL_STREAM"] = "garbage"
    assert all(line.startswith("{") for line in run_child(LOG_EVERY_LEVEL, env=env).stdout.splitlines())
