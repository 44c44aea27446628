"""The lab's and the benchmarks' pure helpers (integration/): waits, the log reader, advert gaps, prefixes
of parallel labs, the failover table. No namespaces, no lab: these run with the unit tests."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from integration.adverts import Gaps
from integration.failover_report import Result, report, vrrp_version
from integration.logs import HavsLog, log_events, parse_event, read_events
from integration.namespaces import claim_prefix, release_prefix
from integration.waits import poll, wait_until


def test_poll_and_wait_until_are_bounded() -> None:
    calls = iter([False, False, True])
    took = poll(lambda: next(calls), 5, 0.001)
    assert took is not None and took < 1
    t0 = time.monotonic()
    assert poll(lambda: False, 0.05, 0.01) is None
    assert 0.05 <= time.monotonic() - t0 < 1
    with pytest.raises(TimeoutError, match=r"^the sky falls: not within 0.05s$"):
        wait_until("the sky falls", lambda: False, 0.05, 0.01)


def test_log_reader_keeps_events_skips_noise_and_stamps_times(tmp_path: Path) -> None:
    log = tmp_path / "havs.log"
    assert read_events(log) == []  # not written yet
    log.write_text('Traceback (most recent call last):\n[1, 2]\n{"no": "event"}\n'
                   '{"event": "vrrp.state", "to": "MASTER", "timestamp": "2026-11-29T21:00:00.250Z"}\n'
                   '{"event": "vrrp.state", "to": "BACKUP"}\n'
                   '{"event": "health.change", "timestamp": "not a time"}\n')
    assert [e["event"] for e in read_events(log)] == ["vrrp.state", "vrrp.state", "health.change"]
    first, second = log_events(log, "vrrp.state")
    assert first["_t"] == datetime(2026, 11, 29, 21, 0, 0, 250000, tzinfo=UTC).timestamp() and "_t" not in second
    assert parse_event("{}") is None and parse_event("") is None


def test_growing_log_is_read_in_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "havs.log"
    log = HavsLog(path)
    assert log.refresh() == []
    with path.open("w") as f:
        f.write('{"event": "a", "timestamp": "2026-11-29T21:00:01Z", "n": 1}\n{"event": "a", "timesta')
        f.flush()
        assert [e["n"] for e in log.find("a", 0)] == [1]  # the half-written line waits
        f.write('mp": "2026-11-29T21:00:02Z", "n": 2}\n')
    assert [e["n"] for e in log.find("a", 0)] == [1, 2]
    assert [e["n"] for e in log.find("a", log.events[1]["_t"])] == [2]
    assert log.find("a", 0, n=2)[0]["n"] == 2
    assert log.wait("b", 0, 0.05) is None


def test_gaps_leave_out_the_silenced_window() -> None:
    # (kernel stamp, monotonic): adverts every 0.1 s, one late (0.25 s), and a window made silent on purpose
    heard = [(100.0, 10.0), (100.1, 10.1), (100.35, 10.35), (100.45, 10.45), (102.0, 12.0), (102.1, 12.1)]
    g = Gaps.of(heard, excluded=[(10.5, 11.9)], t0=10.0)
    assert g.adverts == 6
    assert g.gaps == pytest.approx([0.1, 0.25, 0.1, 0.1])  # 10.45 → 12.0 spans the silence: not a gap
    assert g.ends[1] == pytest.approx((0.25, 0.35))
    assert "MISSED" in g.cells(0.1, 0.02) and "met" in g.cells(0.1, 0.2)
    assert g.longest(1) == "250 (+0.3s)"
    assert "no gaps measured" in Gaps.of([(1.0, 1.0)], [], 0.0).cells(0.1, 0.02)


def test_parallel_labs_get_distinct_prefixes() -> None:
    a, b = claim_prefix("havsT-"), claim_prefix("havsT-")
    assert (a, b) == ("havsT-", "havsT-2-")
    release_prefix(a)
    assert claim_prefix("havsT-") == "havsT-"  # freed, so reused
    for p in ("havsT-", "havsT-2-"):
        release_prefix(p)


def test_failover_table_sets_havs_against_keepalived() -> None:
    assert (vrrp_version(1.0), vrrp_version(0.1)) == (2, 3)
    results = [Result(impl, 0.1, "crash", r, takeover=t, outage=o, failures=f, requests=40)
               for impl, t, o, f in (("havs", 0.40, 0.30, 1), ("keepalived", 0.40, 0.30, 1)) for r in (1, 2)]
    results.append(Result("havs", 0.1, "sigterm", 1, exit="lab broke"))  # a run that measured nothing
    text = report(results, [0.1])
    lines = text.splitlines()
    havs = next(line for line in lines if line.startswith("havs       0.1s v3   crash"))
    assert " 2  0.300 [0.300-0.300]" in havs
    assert any(line.startswith("havs/ka") and "1.00" in line for line in lines)
