"""Prometheus metrics, off unless `settings.metrics_listen` is set (then on that address only).

Most figures are read from the daemon's own state at scrape time (a custom collector), so nothing is
counted twice; only per-probe latencies and VRRP transitions are observed as they happen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from havs.core.health import ProbeResult
from havs.core.ipvs_table import IpvsTable
from havs.core.status import StatusSnapshot, VrrpStatus

VRRP_STATES = ("INIT", "BACKUP", "MASTER", "FAULT")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
Snapshot = Callable[[], StatusSnapshot | Mapping[str, Any]]


class _StateCollector(Collector):
    def __init__(self, snapshot: Snapshot, table: Callable[[], IpvsTable | None]) -> None:
        self._snapshot = snapshot
        self._table = table

    def collect(self) -> Iterator[Any]:
        raw = self._snapshot()
        snap = raw if isinstance(raw, StatusSnapshot) else StatusSnapshot.from_dict(raw)
        vrrp = snap.vrrp or VrrpStatus(state="")
        state = GaugeMetricFamily("havs_vrrp_state", "1 for the VRRP state this director is in", labels=["state"])
        for name in VRRP_STATES:
            state.add_metric([name], 1.0 if vrrp.state == name else 0.0)
        yield state
        yield GaugeMetricFamily("havs_vrrp_priority", "effective VRRP priority", value=vrrp.priority or 0)
        yield CounterMetricFamily("havs_vrrp_adverts_sent", "VRRP adverts sent", value=vrrp.adverts_sent)
        yield CounterMetricFamily("havs_vrrp_adverts_received", "VRRP adverts received", value=vrrp.adverts_received)
        dropped = CounterMetricFamily("havs_vrrp_adverts_dropped", "VRRP adverts dropped", labels=["reason"])
        for reason, n in vrrp.dropped.items():
            dropped.add_metric([reason], n)
        yield dropped
        up = GaugeMetricFamily("havs_real_server_up", "1 when the health checks say up", labels=["service", "server"])
        weight = GaugeMetricFamily("havs_real_server_weight", "effective IPVS weight (-1: not in IPVS)",
                                   labels=["service", "server"])
        for svc in snap.services:
            for rs in svc.real_servers:
                labels = [svc.name, rs.server]
                up.add_metric(labels, 1.0 if rs.health == "up" else 0.0)
                weight.add_metric(labels, -1 if rs.effective_weight is None else rs.effective_weight)
        yield up
        yield weight
        rec = snap.reconciler
        for key, text in (("passes", "reconcile passes"), ("ops_applied", "IPVS operations applied"),
                          ("failures", "IPVS operations that failed"), ("drift_repairs", "drift repairs"),
                          ("pass_failures", "reconcile passes that failed and were retried")):
            yield CounterMetricFamily(f"havs_reconcile_{key}", text, value=getattr(rec, key) if rec else 0)
        yield from self._ipvs_counters()

    def _ipvs_counters(self) -> Iterator[Any]:
        table = self._table()
        if table is None:
            return
        names = ("conns", "inpkts", "outpkts", "inbytes", "outbytes")
        svc = {n: CounterMetricFamily(f"havs_ipvs_service_{n}", f"IPVS service {n}", labels=["service"])
               for n in names}
        dst = {n: CounterMetricFamily(f"havs_ipvs_destination_{n}", f"IPVS destination {n}",
                                      labels=["service", "server"]) for n in names}
        active = GaugeMetricFamily("havs_ipvs_destination_active_conns", "active connections",
                                   labels=["service", "server"])
        inactive = GaugeMetricFamily("havs_ipvs_destination_inactive_conns", "inactive connections",
                                     labels=["service", "server"])
        for key, entry in table.items():
            stats = table.service_stats(key)
            if stats is not None:
                for n in names:
                    svc[n].add_metric([str(key)], getattr(stats, n))
            for dkey in entry.destinations:
                ds = table.destination_stats(key, dkey)
                if ds is None:
                    continue
                labels = [str(key), str(dkey)]
                for n in names:
                    dst[n].add_metric(labels, getattr(ds.stats, n))
                active.add_metric(labels, ds.active_conns)
                inactive.add_metric(labels, ds.inactive_conns)
        yield from svc.values()
        yield from dst.values()
        yield active
        yield inactive


class Metrics:
    def __init__(self, snapshot: Snapshot, table: Callable[[], IpvsTable | None]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StateCollector(snapshot, table))
        self.check_latency = Histogram("havs_check_latency_seconds", "health check latency", ["service", "result"],
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.vrrp_transitions = Counter("havs_vrrp_transitions", "VRRP state changes", ["to"], registry=self.registry)

    def observe_probe(self, key: tuple[str, str], result: ProbeResult) -> None:
        self.check_latency.labels(key[0], "ok" if result.ok else "fail").observe(result.latency)

    def serve(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=self.registry)


def serve_metrics(listen: str | None, loop: asyncio.AbstractEventLoop, snapshot: Callable[[], StatusSnapshot],
                  table: Callable[[], IpvsTable | None], log: Any) -> Metrics | None:
    """Metrics on `listen` (host:port), or None when off or the address cannot be bound (logged).
    `snapshot` runs on `loop` (the daemon's state is the loop's); a scrape that finds the loop busy for
    over a second gets the previous snapshot rather than waiting."""
    if not listen:
        return None
    last: list[StatusSnapshot] = []

    def scrape() -> StatusSnapshot:
        async def take() -> StatusSnapshot:
            return snapshot()

        try:
            last[:] = [asyncio.run_coroutine_threadsafe(take(), loop).result(timeout=1)]
        except Exception:  # a busy or stopping loop: the last one, or nothing
            if not last:
                raise
        return last[0]

    metrics = Metrics(scrape, table)
    try:
        metrics.serve(listen)
    except OSError as e:
        log.error("metrics.unavailable", listen=listen, error=str(e))
        return None
    log.info("metrics.listening", listen=listen)
    return metrics
