"""Prometheus metrics, off unless `settings.metrics_listen` is set (then on that address only).

Most figures are read from the daemon's own state at scrape time (a custom collector), so nothing is
counted twice; only per-probe latencies and VRRP transitions are observed as they happen.

Names follow node_exporter's IPVS collector where they overlap, so one dashboard reads both:
`node_ipvs_backend_weight`, `node_ipvs_backend_connections_active` and `..._inactive`, with its labels
`local_address, local_port, remote_address, remote_port, proto, local_mark`. Differences, on purpose:
- the values are the kernel table as havs last dumped it (each reconcile pass), not /proc read per scrape;
- a fwmark service has `local_address=""` (node_exporter writes Go's `<nil>`) and `local_mark` is the mark
  in decimal, as the config and `ipvsadm -Ln` write it (node_exporter copies /proc's 8-digit hex);
- node_exporter's global counters (`node_ipvs_connections_total`, ...) are per service and per backend
  here, named alike under `havs_ipvs_service_*` and `havs_ipvs_backend_*` (IPVS keeps them per entry).
havs's own per-server metrics (`havs_real_server_*`) carry the same six labels, so they join.
A server that is not in IPVS (down, `on_down: remove`) has no weight sample rather than a sentinel.

The HTTP server is bounded: at most `MAX_CONNECTIONS` connections are served at once (more are closed at
accept) and each read waits at most `READ_TIMEOUT` seconds, so a slow or half-open client pins nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import platform
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from socketserver import ThreadingMixIn
from typing import Any, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from havs import __version__
from havs.core.health import ProbeResult
from havs.core.ipvs_table import DestinationKey, IpvsTable, ServiceKey
from havs.core.status import StatusSnapshot, VrrpStatus

VRRP_STATES = ("INIT", "BACKUP", "MASTER", "FAULT", "RESIGNING")
VRRP_LABELS = ("instance", "group")  # on every havs_vrrp_* family: which instance, in which sync group ("": none)
# how a failback catch-up ends (havs.core.catchup.Released): always shown, 0 or 1
CATCHUP_REASONS = ("caught_up", "deadline", "became_master", "stopped")
RELOAD_OUTCOMES = ("applied", "forced", "failed", "refused", "error")  # always shown, 0 or not
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LABELS = ["local_address", "local_port", "remote_address", "remote_port", "proto", "local_mark"]
SERVICE_LABELS = LABELS[:2] + LABELS[4:]
MAX_CONNECTIONS = 8
READ_TIMEOUT = 5.0
Snapshot = Callable[[], StatusSnapshot | Mapping[str, Any]]
FailbackStatus = Callable[[], Mapping[str, Any] | None]  # havs.failback.Failback.status
T = TypeVar("T")


def _split(hostport: str) -> tuple[str, str]:
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), port or "0"


def service_labels(name: str) -> list[str]:
    """"TCP 192.168.0.108:80" → [192.168.0.108, 80, TCP, ""]; "FWM 42" → ["", 0, FWM, 42]."""
    proto, _, where = name.partition(" ")
    if proto == "FWM":
        return ["", "0", proto, where]
    return [*_split(where), proto, ""]


def key_labels(key: ServiceKey) -> list[str]:
    if key.protocol == "fwmark":
        return ["", "0", "FWM", str(key.fwmark)]
    return [str(key.address), str(key.port), key.protocol.upper(), ""]


def backend_labels(service: list[str], server: str | DestinationKey) -> list[str]:
    remote = (server.address, str(server.port)) if isinstance(server, DestinationKey) else _split(server)
    return [*service[:2], *remote, *service[2:]]


# (overload, inconclusive): health checks set aside, read from the daemon's HealthService (two int reads)
HealthCounters = Callable[[], tuple[int, int] | None]


class _StateCollector(Collector):
    def __init__(self, snapshot: Snapshot, table: Callable[[], IpvsTable | None],
                 failback: FailbackStatus | None = None, health: HealthCounters | None = None) -> None:
        self._snapshot = snapshot
        self._table = table
        self._failback = failback
        self._health = health

    def collect(self) -> Iterator[Any]:
        raw = self._snapshot()
        snap = raw if isinstance(raw, StatusSnapshot) else StatusSnapshot.from_dict(raw)
        info = GaugeMetricFamily("havs_build_info", "havs version and the Python running it (always 1)",
                                 labels=["version", "python"])
        info.add_metric([__version__, platform.python_version()], 1)
        yield info
        yield from self._vrrp(snap.vrrp, snap.vrrp_groups)
        reloads = CounterMetricFamily("havs_reloads", "config reloads by outcome", labels=["outcome"])
        for outcome in dict.fromkeys([*RELOAD_OUTCOMES, *snap.reloads]):
            reloads.add_metric([outcome], snap.reloads.get(outcome, 0))
        yield reloads
        up = GaugeMetricFamily("havs_real_server_up", "1 when the health checks say up", labels=LABELS)
        weight = GaugeMetricFamily("havs_real_server_weight",
                                   "effective IPVS weight havs wants (no sample: not in IPVS)", labels=LABELS)
        configured = GaugeMetricFamily("havs_real_server_configured_weight", "weight in the config", labels=LABELS)
        drained = GaugeMetricFamily("havs_real_server_drained", "1 when drained (havs drain)", labels=LABELS)
        for svc in snap.services:
            slabels = service_labels(svc.name)
            for rs in svc.real_servers:
                labels = backend_labels(slabels, rs.server)
                up.add_metric(labels, 1.0 if rs.health == "up" else 0.0)
                drained.add_metric(labels, 1.0 if rs.drained else 0.0)
                if rs.effective_weight is not None:
                    weight.add_metric(labels, rs.effective_weight)
                if rs.configured_weight is not None:
                    configured.add_metric(labels, rs.configured_weight)
        yield from (up, weight, configured, drained)
        quorum = GaugeMetricFamily("havs_service_quorum", "1 while the service's quorum is met", labels=SERVICE_LABELS)
        for svc in snap.services:
            quorum.add_metric(service_labels(svc.name), 1.0 if svc.quorum else 0.0)
        yield quorum
        rec = snap.reconciler
        for key, text in (("passes", "reconcile passes"), ("ops_applied", "IPVS operations applied"),
                          ("failures", "IPVS operations that failed"), ("drift_repairs", "drift repairs"),
                          ("pass_failures", "reconcile passes that failed and were retried")):
            yield CounterMetricFamily(f"havs_reconcile_{key}", text, value=getattr(rec, key) if rec else 0)
        if self._failback is not None:
            yield from self._failback_metrics(self._failback())
        set_aside = self._health() if self._health is not None else None
        if set_aside is not None:
            yield CounterMetricFamily("havs_health_overload_checks", "check timeouts set aside because this "
                                      "director's event loop lagged (not evidence against the server)",
                                      value=set_aside[0])
            yield CounterMetricFamily("havs_health_inconclusive_checks", "checks this director could not run "
                                      "(out of sockets, memory or buffers)", value=set_aside[1])
        yield from self._ipvs()

    @staticmethod
    def _vrrp(instances: list[VrrpStatus], groups: Mapping[str, str]) -> Iterator[Any]:
        """Every VRRP family per instance (labels `instance`, `group`: "" when in none); no sample without
        VRRP."""
        base = list(VRRP_LABELS)
        state = GaugeMetricFamily("havs_vrrp_state", "1 for the VRRP state each instance is in",
                                  labels=[*base, "state"])
        priority = GaugeMetricFamily("havs_vrrp_priority", "effective VRRP priority", labels=base)
        sent = CounterMetricFamily("havs_vrrp_adverts_sent", "VRRP adverts sent", labels=base)
        received = CounterMetricFamily("havs_vrrp_adverts_received", "VRRP adverts received", labels=base)
        dropped = CounterMetricFamily("havs_vrrp_adverts_dropped", "VRRP adverts dropped", labels=[*base, "reason"])
        rejected = CounterMetricFamily("havs_vrrp_auth_rejected", "adverts rejected by auth_hmac",
                                       labels=[*base, "reason"])
        auth_info = GaugeMetricFamily("havs_vrrp_auth_info", "auth_hmac in use: its mode, anti-replay and signing "
                                      "key id (always 1; no sample without auth_hmac)",
                                      labels=[*base, "mode", "anti_replay", "active_key"])
        held_n = GaugeMetricFamily("havs_vrrp_addresses_held", "floating addresses this director holds now",
                                   labels=base)
        each = GaugeMetricFamily("havs_vrrp_address_held", "1 when this director holds the floating address",
                                 labels=[*base, "address", "interface"])
        with_auth = False
        for vrrp in instances:
            labels = [vrrp.instance, vrrp.group or ""]
            for name in VRRP_STATES:
                state.add_metric([*labels, name], 1.0 if vrrp.state == name else 0.0)
            priority.add_metric(labels, vrrp.priority or 0)
            sent.add_metric(labels, vrrp.adverts_sent)
            received.add_metric(labels, vrrp.adverts_received)
            for reason, n in vrrp.dropped.items():
                dropped.add_metric([*labels, reason], n)
            auth = vrrp.extra.get("auth")
            if isinstance(auth, Mapping):
                with_auth = True
                # auth_hmac's rejects by reason, zeros included (so an alert can rate() them from the start)
                rejects = auth.get("rejected")
                for reason, n in (rejects.items() if isinstance(rejects, Mapping) else ()):
                    rejected.add_metric([*labels, str(reason)], n)
                auth_info.add_metric([*labels, str(auth.get("mode") or ""), str(auth.get("anti_replay") or ""),
                                      str(auth.get("active_key") or "")], 1)
            held = set(vrrp.held)
            held_n.add_metric(labels, len(held))
            for entry in vrrp.addresses:
                address, _, ifname = entry.partition(" dev ")
                each.add_metric([*labels, address, ifname], 1.0 if entry in held else 0.0)
        yield from (state, priority, sent, received, dropped)
        if with_auth:  # no auth families at all on a director without auth_hmac
            yield from (rejected, auth_info)
        yield from (held_n, each)
        group_state = GaugeMetricFamily("havs_vrrp_sync_group_state", "1 for the state each sync group is in",
                                        labels=["group", "state"])
        for group, now in groups.items():
            for name in VRRP_STATES:
                group_state.add_metric([group, name], 1.0 if now == name else 0.0)
        yield group_state

    @staticmethod
    def _failback_metrics(status: Mapping[str, Any] | None) -> Iterator[Any]:
        """The failback catch-up (havs.failback): our connection table, the catch-up that held preemption at
        start (at most one per daemon), and the replays this director answered as master."""
        status = status or {}
        table = GaugeMetricFamily("havs_failback_connection_table_entries",
                                  "entries in this director's IPVS connection table at its last read by the "
                                  "failback catch-up or a replay (no sample before one)")
        if isinstance(status.get("table_size"), int):
            table.add_metric([], status["table_size"])
        yield table
        yield CounterMetricFamily("havs_failback_replays", "connection table replays sent to a returning director",
                                  value=int(status.get("replays") or 0))
        cu = status.get("catchup")
        cu = cu if isinstance(cu, Mapping) else {}
        yield GaugeMetricFamily("havs_failback_catchup_holding",
                                "1 while the catch-up holds preemption (the connection table is catching up)",
                                value=1.0 if cu and not cu.get("done") else 0.0)
        duration = GaugeMetricFamily("havs_failback_catchup_duration_seconds",
                                     "how long the catch-up held preemption (no sample until it ends)")
        if isinstance(cu.get("waited"), int | float):
            duration.add_metric([], cu["waited"])
        yield duration
        expected = GaugeMetricFamily("havs_failback_catchup_expected_entries",
                                     "connections the master replayed (no sample before its answer)")
        missing = GaugeMetricFamily("havs_failback_catchup_missing_entries",
                                    "replayed connections not yet in this director's table (no sample before "
                                    "the answer)")
        if isinstance(cu.get("expected"), int):
            expected.add_metric([], cu["expected"])
        if isinstance(cu.get("missing"), int):
            missing.add_metric([], cu["missing"])
        yield from (expected, missing)
        outcomes = CounterMetricFamily("havs_failback_catchups", "catch-ups ended, by reason", labels=["reason"])
        reason = cu.get("reason")
        for name in dict.fromkeys([*CATCHUP_REASONS, *([str(reason)] if reason else [])]):
            outcomes.add_metric([name], 1 if name == reason else 0)
        yield outcomes

    def _ipvs(self) -> Iterator[Any]:
        table = self._table()
        if table is None:
            return
        names = (("conns", "connections"), ("inpkts", "incoming_packets"), ("outpkts", "outgoing_packets"),
                 ("inbytes", "incoming_bytes"), ("outbytes", "outgoing_bytes"))
        svc = {n: CounterMetricFamily(f"havs_ipvs_service_{m}", f"IPVS service {m.replace('_', ' ')}",
                                      labels=SERVICE_LABELS) for n, m in names}
        dst = {n: CounterMetricFamily(f"havs_ipvs_backend_{m}", f"IPVS backend {m.replace('_', ' ')}",
                                      labels=LABELS) for n, m in names}
        weight = GaugeMetricFamily("node_ipvs_backend_weight", "the kernel's weight of the backend", labels=LABELS)
        active = GaugeMetricFamily("node_ipvs_backend_connections_active", "active connections by backend",
                                   labels=LABELS)
        inactive = GaugeMetricFamily("node_ipvs_backend_connections_inactive", "inactive connections by backend",
                                     labels=LABELS)
        for key, entry in table.items():
            slabels = key_labels(key)
            stats = table.service_stats(key)
            if stats is not None:
                for n, _ in names:
                    svc[n].add_metric(slabels, getattr(stats, n))
            for dkey, dest in entry.destinations.items():
                labels = backend_labels(slabels, dkey)
                weight.add_metric(labels, dest.weight)
                ds = table.destination_stats(key, dkey)
                if ds is None:
                    continue
                for n, _ in names:
                    dst[n].add_metric(labels, getattr(ds.stats, n))
                active.add_metric(labels, ds.active_conns)
                inactive.add_metric(labels, ds.inactive_conns)
        yield from svc.values()
        yield from dst.values()
        yield from (weight, active, inactive)


class _QuietHandler(WSGIRequestHandler):
    timeout = READ_TIMEOUT  # StreamRequestHandler: each read on the connection waits at most this long

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not events."""


class BoundedServer(ThreadingMixIn, WSGIServer):
    """A thread per connection, at most `max_connections` of them: beyond, a connection is closed at once."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], max_connections: int = MAX_CONNECTIONS) -> None:
        family = socket.getaddrinfo(address[0], address[1], type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        self.address_family = family
        self._slots = threading.BoundedSemaphore(max_connections)
        self._open: set[socket.socket] = set()  # connections being served (close() ends them)
        self._lock = threading.Lock()
        self.refused = 0
        super().__init__(address, _QuietHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that timed out or went away: nothing to say (the base class prints a traceback)."""

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._lock:
            self._open.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._open.discard(request)
            self._slots.release()

    def close(self) -> None:
        """Stop serving and end the connections in progress (their threads return at once)."""
        self.shutdown()
        self.server_close()
        with self._lock:
            for request in self._open:
                with contextlib.suppress(OSError):
                    request.shutdown(socket.SHUT_RDWR)


class Metrics:
    def __init__(self, snapshot: Snapshot, table: Callable[[], IpvsTable | None],
                 failback: FailbackStatus | None = None) -> None:
        self.registry = CollectorRegistry()
        self.health_counters: HealthCounters | None = None  # set once the daemon has health checks
        self.registry.register(_StateCollector(snapshot, table, failback,
                                               lambda: self.health_counters() if self.health_counters else None))
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, _resident_memory_bytes, _open_fds…
        self.check_latency = Histogram("havs_check_latency_seconds", "health check latency", ["service", "result"],
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.vrrp_transitions = Counter("havs_vrrp_transitions", "VRRP state changes", [*VRRP_LABELS, "to"],
                                        registry=self.registry)
        self.server: BoundedServer | None = None

    def observe_probe(self, key: tuple[str, str], result: ProbeResult) -> None:
        self.check_latency.labels(key[0], "ok" if result.ok else "fail").observe(result.latency)

    def serve(self, listen: str, max_connections: int = MAX_CONNECTIONS) -> BoundedServer:
        host, _, port = listen.rpartition(":")
        server = BoundedServer((host.strip("[]") or "127.0.0.1", int(port)), max_connections)
        server.set_app(make_wsgi_app(self.registry))
        threading.Thread(target=server.serve_forever, name="havs-metrics", daemon=True).start()
        self.server = server
        return server

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


def _on_loop(fn: Callable[[], T], loop: asyncio.AbstractEventLoop) -> Callable[[], T]:
    """`fn` run on `loop` (the daemon's state is the loop's) from a scrape's thread; a loop busy for over a
    second gives the previous value rather than a wait."""
    last: list[T] = []

    def call() -> T:
        async def take() -> T:
            return fn()

        try:
            last[:] = [asyncio.run_coroutine_threadsafe(take(), loop).result(timeout=1)]
        except Exception:  # a busy or stopping loop: the last one, or nothing
            if not last:
                raise
        return last[0]

    return call


def serve_metrics(listen: str | None, loop: asyncio.AbstractEventLoop, snapshot: Callable[[], StatusSnapshot],
                  table: Callable[[], IpvsTable | None], log: Any,
                  failback: FailbackStatus | None = None) -> Metrics | None:
    """Metrics on `listen` (host:port), or None when off or the address cannot be bound (logged).
    `snapshot` and `failback` (the VRRP supervisor's `failback.status`) run on `loop`."""
    if not listen:
        return None
    metrics = Metrics(_on_loop(snapshot, loop), table, _on_loop(failback, loop) if failback is not None else None)
    try:
        metrics.serve(listen)
    except OSError as e:
        log.error("metrics.unavailable", listen=listen, error=str(e))
        return None
    log.info("metrics.listening", listen=listen, max_connections=MAX_CONNECTIONS, read_timeout=READ_TIMEOUT)
    return metrics
