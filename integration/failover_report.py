"""The failover benchmark's results (one `Result` per run) and its table. Pure: the runs are in
integration/bench_failover.py."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from integration.benchlib import ratio

IMPLS = ("havs", "keepalived")
SCENARIOS = ("crash", "sigterm")
PERIOD = 0.05  # the client's request period (s)
REQUEST_TIMEOUT = 0.25  # a request without an answer within this is a failure


def vrrp_version(interval: float) -> int:
    """Whole seconds: VRRPv2 (keepalived's default); anything finer needs v3's centiseconds."""
    return 2 if interval == int(interval) else 3


@dataclass
class Result:
    impl: str
    interval: float
    scenario: str
    round: int
    takeover: float | None = None  # s until lvs2 holds both addresses
    gap: float | None = None  # graceful: lvs2 holds both minus lvs1 dropped its first
    outage: float | None = None
    failures: int | None = None
    requests: int | None = None
    source: str = ""  # where takeover came from: monitor | poll
    vip_gw: tuple[float, float] | None = None  # s until each address appeared on lvs2 (monitor)
    released: float | None = None  # graceful: s until lvs1 dropped its first address
    after_advert: float | None = None  # crash: takeover minus the last advert lvs2 heard from lvs1
    resigned: float | None = None  # graceful: s until lvs2 heard lvs1's priority-0 advert
    setup: str = ""
    neigh: float | None = None  # s until the client's ARP for the VIP and rs1's for the gateway show lvs2
    failed_at: list[tuple[float, str]] = field(default_factory=list)  # failed requests: start - t0, error
    timeline: str = ""  # havs: lvs2's own log events, relative to t0
    exit: str = ""
    note: str = ""

    def detail(self) -> str:
        parts = [self.setup] if self.setup else []
        if self.after_advert is not None:
            parts.append(f"takeover {self.after_advert:.3f}s after lvs1's last advert")
        if self.resigned is not None:
            parts.append(f"priority-0 advert heard +{self.resigned:.3f}")
        if self.vip_gw:
            parts.append(f"vip +{self.vip_gw[0]:.3f} gw +{self.vip_gw[1]:.3f}")
        elif self.source == "poll":
            parts.append("takeover from the 0.25 s poll (no monitor lines)")
        if self.released is not None:
            parts.append(f"lvs1 released +{self.released:.3f}")
        if self.neigh is not None:
            parts.append(f"neighbours on lvs2 +{self.neigh:.3f}")
        if self.failed_at:
            parts.append("failed " + ", ".join(f"+{t:.2f} {e}" for t, e in self.failed_at))
        if self.exit:
            parts.append(self.exit)
        if self.timeline:
            parts.append(f"lvs2 log: {self.timeline}")
        return "; ".join(parts)

    @property
    def ok(self) -> bool:
        return self.outage is not None


def failure_kind(error: str) -> str:
    """A failed request in a word: where it timed out, or the error's class."""
    if "read timed out" in error:
        return "read-timeout"  # connected, no (complete) answer
    if error.startswith("TimeoutError"):
        return "connect-timeout"  # no SYN-ACK in time
    return error.split(":")[0]


def _fmt(values: Sequence[float], unit: str) -> str:
    if not values:
        return "-"
    if unit == "n":
        return f"{statistics.median(values):g} [{min(values):g}-{max(values):g}]"
    return f"{statistics.median(values):.3f} [{min(values):.3f}-{max(values):.3f}]"


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


# Columns of the table: header, unit ("s" or "n"), value of a result.
COLUMNS: tuple[tuple[str, str, Callable[[Result], float | None]], ...] = (
    ("outage s", "s", lambda r: r.outage),
    ("failed", "n", lambda r: None if r.failures is None else float(r.failures)),
    ("takeover s", "s", lambda r: r.takeover),
    ("advert->take s | gap s", "s", lambda r: r.after_advert if r.scenario == "crash" else r.gap),
    ("neighbours s", "s", lambda r: r.neigh),
)


def report(results: list[Result], adverts: Sequence[float]) -> str:
    one_failure = PERIOD + REQUEST_TIMEOUT
    lines = [
        f"client: GET http://192.168.0.108/ every {PERIOD * 1000:.0f} ms, request timeout {REQUEST_TIMEOUT} s "
        "(no answer within it = failed)",
        f"  outage = LoopStats.longest_outage; one failed request alone makes it ~{one_failure:.2f} s "
        "(period + timeout): the figure is quantized",
        "crash = kill -9 of the master's daemon + its links down, right after lvs2 heard an advert from lvs1 "
        "(--phase worst: a full master-down interval) or later by a random part of the interval (--phase random); "
        "sigterm = SIGTERM to the master's daemon",
        "takeover = until both 192.168.0.108 and 192.168.72.130 are on lvs2 (ip monitor address)",
        "advert->take (crash) = takeover minus the last advert lvs2 heard from lvs1 (phase-free; "
        "VRRP's master-down interval is 3 x advert + skew)",
        "gap (sigterm) = takeover minus lvs1's first address release (> 0: nobody held an address; < 0: overlap)",
        "neighbours = until the client's ARP entry for the VIP and rs1's for the gateway show lvs2's MACs",
        "cells: median [min-max] over rounds; havs/ka = ratio of medians",
        "",
    ]
    head = f"{'impl':<10} {'advert':<9} {'scenario':<8} {'n':>3}  {COLUMNS[0][0]:<21} {COLUMNS[1][0]:<10} " + \
        " ".join(f"{c[0]:<22}" for c in COLUMNS[2:])
    lines += [head, "-" * len(head)]
    med: dict[tuple[str, float, str], list[float | None]] = {}
    for interval in adverts:
        for scenario in SCENARIOS:
            for impl in IMPLS:
                rs = [r for r in results if (r.impl, r.interval, r.scenario) == (impl, interval, scenario)]
                ok = [r for r in rs if r.ok]
                cols = [[v for r in ok if (v := get(r)) is not None] for _, _, get in COLUMNS]
                med[(impl, interval, scenario)] = [_median(c) for c in cols]
                cells = [_fmt(c, unit) for c, (_, unit, _) in zip(cols, COLUMNS, strict=True)]
                adv = f"{interval:g}s v{vrrp_version(interval)}"
                n = f"{len(ok)}" + (f"/{len(rs)}" if len(ok) != len(rs) else "")
                lines.append(f"{impl:<10} {adv:<9} {scenario:<8} {n:>3}  {cells[0]:<21} {cells[1]:<10} "
                             + " ".join(f"{c:<22}" for c in cells[2:]))
            h, k = med[("havs", interval, scenario)], med[("keepalived", interval, scenario)]
            ratios = [ratio(x, y) for x, y in zip(h, k, strict=True)]
            lines.append(f"{'havs/ka':<10} {'':<9} {scenario:<8} {'':>3}  {ratios[0]:<21} {ratios[1]:<10} "
                         + " ".join(f"{c:<22}" for c in ratios[2:]))
        lines.append("")

    lines.append("targets (havs):")
    for interval in adverts:
        h, k = med.get(("havs", interval, "crash")), med.get(("keepalived", interval, "crash"))
        if h and k:
            for i, what in ((0, "client outage"), (2, "takeover"), (3, "advert->take")):
                if h[i] is not None and k[i] is not None:
                    verdict = "met" if h[i] <= k[i] else "MISSED"  # type: ignore[operator]
                    lines.append(f"  crash {interval:g}s: {what} median {h[i]:.3f} <= keepalived's {k[i]:.3f}: "
                                 f"{verdict}")
        hs = [r.outage for r in results if r.ok and r.impl == "havs" and r.interval == interval
              and r.scenario == "crash" and r.outage is not None]
        if hs and interval <= 0.1:
            worst = max(hs)
            verdict = "met" if worst <= 0.30 else "MISSED"
            extra = ""
            if worst > 0.30:
                extra = f" (by {worst - 0.30:.3f}s; one failed request alone is ~{one_failure:.2f}s)"
            lines.append(f"  crash {interval:g}s: client outage <= 0.30 s in every round: {verdict}, "
                         f"per round {[round(x, 3) for x in hs]}{extra}")
        gs = [r.failures for r in results if r.ok and r.impl == "havs" and r.interval == interval
              and r.scenario == "sigterm" and r.failures is not None]
        if gs:
            verdict = "met" if max(gs) == 0 else "MISSED"
            lines.append(f"  sigterm {interval:g}s: 0 failed requests in every round: {verdict}, per round {gs}")
    notes = [r for r in results if r.note]
    if notes:
        lines += ["", "notes:"]
        lines += [f"  {r.impl} {r.interval:g}s {r.scenario} round {r.round}: {r.note.strip('; ')}" for r in notes]
    return "\n".join(lines)
