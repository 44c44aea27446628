"""The asyncio shell around one VRRP instance, on an event loop of its own in a dedicated thread.

The daemon runs it in a process of its own (`havs.vrrp_process`), where nothing else competes for the
GIL. Everything VRRP — socket, timer, address changes, GARP — happens on this thread's loop; notify hooks
run on a separate worker thread so a slow script never delays an advert.

Thread-safety: `start`, `stop`, `set_priority_decrement` and `snapshot` may be called from any thread.
`on_state(from_, to, reason)` is called on the VRRP thread: hand it over (loop.call_soon_threadsafe).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import os
import queue
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from havs.core import wire
from havs.core.model import NodeView, Notify
from havs.core.vrrp import (
    INIT,
    MASTER,
    Action,
    AdvertDropped,
    AnnounceAddresses,
    ReleaseAddresses,
    SendAdvertisement,
    StateChanged,
    TakeAddresses,
    VrrpInstance,
    VrrpParams,
)
from havs.edge import garp
from havs.edge.addresses import Addresses
from havs.edge.vrrp_socket import VrrpSocket
from havs.errors import PacketError

OnState = Callable[[str, str, str], None]
DROP_LOG_EVERY = 5.0  # seconds between two vrrp.advert_dropped lines for one reason
START_TIMEOUT = 10.0


class VrrpService:
    def __init__(self, view: NodeView, *, log: Any, on_state: OnState | None = None) -> None:
        cfg = view.config.vrrp
        if cfg is None:
            raise ValueError(f"node {view.name}: the config has no vrrp section")
        if any(fa.address.version != 4 for fa in cfg.addresses):
            raise ValueError("VRRP over IPv6 is not implemented in the service yet (core/wire support it)")
        self._view = view
        self._cfg = cfg
        self._log = log
        self._on_state = on_state
        self._hb_if = view.ifname(cfg.interface)
        self._floating = tuple((view.ifname(fa.interface), fa.address) for fa in cfg.addresses)
        # the heartbeat link, the links the addresses live on, and any extra: a director that cannot
        # reach the clients or the real servers must not stay MASTER
        self._track = tuple(
            dict.fromkeys([self._hb_if, *(i for i, _ in self._floating), *map(view.ifname, cfg.track_interfaces)])
        )
        self._base_priority = view.node.priority
        self._decrement = 0
        self._lock = threading.Lock()  # guards the instance between the VRRP thread and snapshot()
        self._inst: VrrpInstance | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._notify = _NotifyWorker(cfg.notify, log, view.name)
        self._src: ipaddress.IPv4Address | None = None
        # loop-side state, created on the VRRP thread
        self._sock: VrrpSocket | None = None
        self._addrs: Addresses | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._effects: asyncio.Queue[Callable[[], Awaitable[None]] | None] | None = None
        self._stop_req: asyncio.Event | None = None
        self._graceful = True
        self._garp_tasks: set[asyncio.Task[None]] = set()
        self._reassert_pending = False
        self._faulty: frozenset[str] = frozenset()
        self._drop_log: dict[str, tuple[float, int]] = {}
        self._last_tick = time.monotonic()
        self._handover: asyncio.Event | None = None  # set while a graceful stop waits for the new master

    # ---------------------------------------------------------------------------- public, any thread

    @property
    def effective_priority(self) -> int:
        return max(1, self._base_priority - self._decrement)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("VrrpService already started")
        self._notify.start()
        self._thread = threading.Thread(target=self._thread_main, name="havs-vrrp", daemon=True)
        self._thread.start()
        if not self._started.wait(START_TIMEOUT) or self._error is not None:
            error = self._error
            self.stop(graceful=False)
            raise RuntimeError(f"VRRP did not start: {error}") from error

    def stop(self, graceful: bool = True) -> None:
        """graceful: resign with a priority-0 advert and release the addresses (the peer takes over after
        skew time). Not graceful: just stop, leaving addresses as they are (as a crash would)."""
        thread, loop = self._thread, self._loop
        if thread is None:
            return
        if loop is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(self._request_stop, graceful)
        thread.join(START_TIMEOUT)
        self._notify.stop(wait=graceful)
        self._thread = None

    def update(self, view: NodeView) -> bool:
        """Apply a reloaded config in place when only tunables changed (priority, interval, preemption,
        tracking, notify, GARP): the state stays and adverts keep their rhythm. False: the identity changed
        (router id, version, interfaces, addresses, peers) and the caller must restart the service."""
        loop = self._loop
        if view.config.vrrp is None or loop is None or self._identity(view) != self._identity(self._view):
            return False
        done: concurrent.futures.Future[bool] = concurrent.futures.Future()
        loop.call_soon_threadsafe(self._reconfigure, view, done)
        return done.result(timeout=START_TIMEOUT)

    def alive(self) -> bool:
        """The heartbeat loop has run within the last few advert intervals (for the systemd watchdog)."""
        thread = self._thread
        window = max(3 * self._cfg.advert_interval, 2.0)
        return thread is not None and thread.is_alive() and time.monotonic() - self._last_tick < window

    def set_priority_decrement(self, n: int) -> None:
        """Lower the advertised priority by n (quorum tracking); 0 restores the configured priority."""
        self._decrement = max(0, int(n))
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._apply_priority)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            inst = self._inst
            snap: dict[str, Any] = (
                inst.snapshot() if inst is not None else {"state": INIT, "since": None}
            )
        snap.setdefault("priority", self.effective_priority)
        since = snap.get("since")
        snap["since_wall"] = time.time() - (time.monotonic() - since) if isinstance(since, float) else None
        snap.update(
            router_id=self._cfg.router_id,
            version=self._cfg.version,
            interface=self._hb_if,
            source=str(self._src) if self._src else None,
            mode="unicast" if self._cfg.unicast_peers else "multicast",
            priority_decrement=self._decrement,
            addresses=[f"{a} dev {i}" for i, a in self._floating],
            faulty_interfaces=sorted(self._faulty),
        )
        return snap

    # ------------------------------------------------------------------------------- the VRRP thread

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main())
        except BaseException as e:  # reported to start() or logged; the thread must not die silently
            self._error = e
            self._log.error("vrrp.crashed", error=f"{type(e).__name__}: {e}")
        finally:
            self._started.set()
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self._cfg
        self._stop_req = asyncio.Event()
        self._effects = asyncio.Queue()
        self._addrs = await Addresses().open()
        try:
            floating_ips = {a.ip for _, a in self._floating}
            src = self._view.node.unicast_src or await self._addrs.primary_ipv4(self._hb_if, exclude=floating_ips)
            if src is None or src.version != 4:
                raise RuntimeError(f"{self._hb_if} has no IPv4 address to send adverts from (set unicast_src)")
            self._src = ipaddress.IPv4Address(src)
            # one config serves both directors, so the peer list may name us too
            peers = [ipaddress.IPv4Address(p) for p in cfg.unicast_peers if p != self._src]
            self._sock = VrrpSocket(self._hb_if, self._src, peers=peers)
            params = self._params(self.effective_priority)
            now = loop.time()
            with self._lock:
                self._inst = VrrpInstance(params, now)
            worker = asyncio.create_task(self._effects_worker())
            loop.add_reader(self._sock.fileno(), self._on_readable)
            self._log.info(
                "vrrp.started", interface=self._hb_if, source=str(self._src), router_id=cfg.router_id,
                version=cfg.version, priority=params.priority, interval=cfg.advert_interval,
                mode="unicast" if peers else "multicast", track=list(self._track),
            )
            down = await self._down_links()
            self._faulty = frozenset(down)
            with self._lock:
                actions = self._inst.fault(now) if down else self._inst.start(now)
            self._dispatch(actions)
            tracker = asyncio.create_task(self._track_loop())
            self._started.set()

            await self._stop_req.wait()

            tracker.cancel()
            if self._graceful:
                was_master = self._inst.state == MASTER
                with self._lock:
                    actions = self._inst.shutdown(loop.time())
                if was_master:
                    # Resign (priority-0 advert) but keep serving the addresses until the peer has taken
                    # over: released first, a client request in between would find nobody at the VIP.
                    self._handover = asyncio.Event()
                    self._dispatch([a for a in actions if not isinstance(a, ReleaseAddresses)])
                    await self._await_handover()
                    self._dispatch([a for a in actions if isinstance(a, ReleaseAddresses)])
                else:
                    self._dispatch(actions)
            loop.remove_reader(self._sock.fileno())
            if self._timer is not None:
                self._timer.cancel()
            await self._effects.put(None)
            # a graceful stop waits for the addresses to go; an abrupt one does not
            if self._graceful:
                await asyncio.wait_for(worker, timeout=5.0)
            else:
                worker.cancel()
            for task in list(self._garp_tasks):
                task.cancel()
        finally:
            if self._sock is not None:
                self._sock.close()
            await self._addrs.close()

    def _request_stop(self, graceful: bool) -> None:
        self._graceful = graceful
        if self._stop_req is not None:
            self._stop_req.set()

    # ------------------------------------------------------------------------------- events in

    def _params(self, priority: int) -> VrrpParams:
        assert self._src is not None
        cfg = self._cfg
        return VrrpParams(
            router_id=cfg.router_id,
            priority=priority,
            advert_interval=cfg.advert_interval,
            primary_address=self._src,
            addresses=tuple(a.ip for _, a in self._floating),
            version=cfg.version,
            preempt=cfg.preempt,
            preempt_delay=cfg.preempt_delay,
            auth_pass=cfg.auth_pass,
            garp_refresh=cfg.garp.refresh,
        )

    def _identity(self, view: NodeView) -> tuple[object, ...]:
        """What a reload cannot change without a new instance."""
        cfg = view.config.vrrp
        assert cfg is not None
        return (cfg.router_id, cfg.version, view.ifname(cfg.interface), tuple(cfg.unicast_peers), cfg.v3_checksum,
                tuple((view.ifname(fa.interface), fa.address) for fa in cfg.addresses), view.node.unicast_src)

    def _reconfigure(self, view: NodeView, done: concurrent.futures.Future[bool]) -> None:
        """On the VRRP thread: take the reloaded settings without a state change or an advert gap."""
        assert self._inst is not None and self._loop is not None and view.config.vrrp is not None
        old = (self._cfg, self._view, self._base_priority)
        self._cfg, self._view, self._base_priority = view.config.vrrp, view, view.node.priority
        try:
            with self._lock:
                actions = self._inst.reconfigure(
                    self._params(self._base_priority), self.effective_priority, self._loop.time())
        except ValueError as e:
            self._cfg, self._view, self._base_priority = old
            self._log.info("vrrp.reload", applied=False, reason=str(e))
            done.set_result(False)
            return
        cfg = self._cfg
        self._track = tuple(dict.fromkeys([self._hb_if, *(i for i, _ in self._floating),
                                           *map(view.ifname, cfg.track_interfaces)]))
        self._notify.notify = cfg.notify
        self._dispatch(actions)
        self._log.info("vrrp.reload", applied=True, priority=self.effective_priority, interval=cfg.advert_interval)
        done.set_result(True)

    async def _await_handover(self) -> None:
        """Wait until a peer advertises as the new master (plus a moment for its gratuitous ARPs to land),
        or until a peer would have taken over by its master-down timer anyway."""
        assert self._handover is not None
        interval = self._cfg.advert_interval
        try:
            await asyncio.wait_for(self._handover.wait(), timeout=3 * interval + 0.5)
            await asyncio.sleep(min(interval, 0.1) + self._cfg.garp.burst_interval)
            self._log.info("vrrp.handover", outcome="peer took over")
        except TimeoutError:
            self._log.info("vrrp.handover", outcome="no peer heard", waited=3 * interval + 0.5)

    def _heard_new_master(self, payload: bytes, src: ipaddress.IPv4Address, dst: ipaddress.IPv4Address) -> None:
        assert self._handover is not None
        try:
            adv = wire.decode(payload, src=src, dst=dst, ttl=None)
        except PacketError:
            return
        if adv.router_id == self._cfg.router_id and adv.priority > 0 and src != self._src:
            self._handover.set()

    def _on_readable(self) -> None:
        assert self._sock is not None and self._inst is not None and self._loop is not None
        unicast = self._sock.unicast
        for r in self._sock.receive():
            if self._handover is not None:
                self._heard_new_master(r.payload, r.src, r.dst)
                continue
            with self._lock:
                # keepalived skips the TTL rule for unicast peers (they may be routed)
                actions = self._inst.receive_bytes(
                    r.payload, src=r.src, dst=r.dst, ttl=None if unicast else r.ttl, now=self._loop.time()
                )
            self._dispatch(actions)

    def _on_timer(self, at: float) -> None:
        assert self._inst is not None and self._loop is not None
        self._timer = None
        self._timer_at = None
        # the loop may wake a hair early (clock resolution); the deadline has come by definition
        now = max(self._loop.time(), at)
        with self._lock:
            actions = self._inst.handle_timer(now)
        self._dispatch(actions)

    def _apply_priority(self) -> None:
        inst, loop = self._inst, self._loop
        if inst is None or loop is None:
            return
        prio = self.effective_priority
        if prio == inst.priority:
            return
        self._log.info("vrrp.priority", from_=inst.priority, to=prio, decrement=self._decrement)
        with self._lock:
            actions = inst.set_priority(prio, loop.time())
        self._dispatch(actions)

    async def _track_loop(self) -> None:
        assert self._inst is not None and self._loop is not None
        while True:
            await asyncio.sleep(self._cfg.advert_interval)
            self._last_tick = time.monotonic()
            try:
                down = await self._down_links()
            except OSError as e:
                self._log.warning("vrrp.track_failed", error=str(e))
                continue
            if down == self._faulty:
                continue
            for ifname in sorted(down ^ self._faulty):
                self._log.info("vrrp.track", interface=ifname, up=ifname not in down)
            self._faulty = frozenset(down)
            now = self._loop.time()
            with self._lock:
                actions = self._inst.fault(now) if down else self._inst.recover(now)
            self._dispatch(actions)

    async def _down_links(self) -> set[str]:
        assert self._addrs is not None
        return {ifname for ifname in self._track if not await self._addrs.link_up(ifname)}

    # ------------------------------------------------------------------------------- actions out

    def _dispatch(self, actions: Sequence[Action]) -> None:
        assert self._inst is not None
        for action in actions:
            if isinstance(action, SendAdvertisement):
                self._send(action.adv)
                if self._inst.state == MASTER:
                    self._queue_reassert()
            elif isinstance(action, StateChanged):
                self._state_changed(action)
            elif isinstance(action, TakeAddresses):
                self._queue(self._take)
            elif isinstance(action, ReleaseAddresses):
                for task in list(self._garp_tasks):
                    task.cancel()
                self._queue(self._release)
            elif isinstance(action, AnnounceAddresses):
                burst = action.burst
                self._queue(lambda burst=burst: self._announce(burst))
            elif isinstance(action, AdvertDropped):
                self._dropped(action)
        self._rearm()

    def _rearm(self) -> None:
        assert self._inst is not None and self._loop is not None
        at = self._inst.get_timer()
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(at, self._on_timer, at) if at is not None else None
        self._timer_at = at

    def _send(self, adv: wire.Advertisement) -> None:
        assert self._sock is not None and self._src is not None
        for dst in self._sock.destinations:
            payload = wire.encode(adv, src=self._src, dst=dst, checksum=self._cfg.v3_checksum)
            try:
                self._sock.send(payload, dst)
            except OSError as e:
                self._rate_limited("send", "vrrp.send_failed", dst=str(dst), error=e.strerror or str(e))

    def _state_changed(self, change: StateChanged) -> None:
        self._log.info("vrrp.state", from_=change.from_, to=change.to, reason=change.reason)
        hook = {"MASTER": "master", "BACKUP": "backup", "FAULT": "fault", "INIT": "stop"}[change.to]
        self._notify.submit(hook, change.to, change.from_, change.reason)
        if self._on_state is not None:
            try:
                self._on_state(change.from_, change.to, change.reason)
            except Exception as e:  # a bad callback must not stop VRRP
                self._log.error("vrrp.on_state_failed", error=f"{type(e).__name__}: {e}")

    def _dropped(self, drop: AdvertDropped) -> None:
        self._rate_limited(drop.reason, "vrrp.advert_dropped", reason=drop.reason, src=str(drop.src))

    def _rate_limited(self, key: str, event: str, **fields: Any) -> None:
        now = time.monotonic()
        last, suppressed = self._drop_log.get(key, (-DROP_LOG_EVERY, 0))
        if now - last < DROP_LOG_EVERY:
            self._drop_log[key] = (last, suppressed + 1)
            return
        self._drop_log[key] = (now, 0)
        self._log.warning(event, suppressed=suppressed, **fields)

    # effects run one at a time, in order, on the VRRP loop (netlink is quick; GARP bursts run apart)

    def _queue(self, effect: Callable[[], Awaitable[None]]) -> None:
        assert self._effects is not None
        self._effects.put_nowait(effect)

    def _queue_reassert(self) -> None:
        if not self._reassert_pending:
            self._reassert_pending = True
            self._queue(self._reassert)

    async def _effects_worker(self) -> None:
        assert self._effects is not None
        while (effect := await self._effects.get()) is not None:
            try:
                await effect()
            except Exception as e:  # netlink refusing one change must not stop VRRP
                self._log.error("vrrp.effect_failed", error=f"{type(e).__name__}: {e}")

    async def _take(self) -> None:
        """All addresses, then at once one gratuitous ARP on every side, back to back: the clients (VIP) and
        the real servers (gateway) must switch together, or a request in flight between the two
        announcements leaves through one director and returns through the other. The burst follows."""
        assert self._addrs is not None
        for ifname, a in self._floating:
            await self._addrs.ensure(ifname, a)
        for ifname, ips in self._by_interface().items():
            try:
                garp.announce(ifname, ips)
            except OSError as e:
                self._rate_limited(f"garp:{ifname}", "vrrp.garp_failed", interface=ifname, error=str(e))
        self._log.info("vrrp.addresses", action="take", addresses=[f"{a} dev {i}" for i, a in self._floating])

    def _by_interface(self) -> dict[str, list[ipaddress.IPv4Address]]:
        by_if: dict[str, list[ipaddress.IPv4Address]] = {}
        for ifname, a in self._floating:
            by_if.setdefault(ifname, []).append(ipaddress.IPv4Address(a.ip))
        return by_if

    async def _reassert(self) -> None:
        assert self._addrs is not None and self._inst is not None
        self._reassert_pending = False
        if self._inst.state != MASTER:
            return
        readded = [f"{a} dev {i}" for i, a in self._floating if await self._addrs.add(i, a)]
        if readded:
            # someone removed an address we own: put it back and tell the neighbours again
            self._log.warning("vrrp.addresses", action="readd", addresses=readded)
            self._start_garp(rounds=1)

    async def _release(self) -> None:
        assert self._addrs is not None
        removed = [f"{a} dev {i}" for i, a in self._floating if await self._addrs.remove(i, a)]
        self._log.info("vrrp.addresses", action="release", addresses=removed or "already absent")

    async def _announce(self, burst: bool) -> None:
        assert self._inst is not None
        if self._inst.state == MASTER:
            self._start_garp(rounds=self._cfg.garp.burst if burst else 1)

    def _start_garp(self, rounds: int) -> None:
        task = asyncio.create_task(self._garp(rounds))
        self._garp_tasks.add(task)
        task.add_done_callback(self._garp_tasks.discard)

    async def _garp(self, rounds: int) -> None:
        by_if = self._by_interface()
        sent = dict.fromkeys(by_if, 0)
        try:
            for n in range(rounds):
                if n:
                    await asyncio.sleep(self._cfg.garp.burst_interval)
                for ifname, ips in by_if.items():
                    try:
                        sent[ifname] += garp.announce(ifname, ips)
                    except OSError as e:
                        self._rate_limited(f"garp:{ifname}", "vrrp.garp_failed", interface=ifname, error=str(e))
        finally:
            for ifname, ips in by_if.items():
                if sent[ifname]:
                    self._log.info(
                        "vrrp.garp", interface=ifname, address=[str(i) for i in ips],
                        count=sent[ifname] // max(1, len(ips)),
                    )


class _NotifyWorker:
    """Runs notify hooks one at a time, in order, on a thread of its own, each bounded by a timeout."""

    def __init__(self, notify: Notify, log: Any, node: str) -> None:
        self.notify = notify  # replaced on reload; read per hook
        self.node = node
        self._log = log
        self._queue: queue.Queue[tuple[str, list[str], dict[str, str]] | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="havs-vrrp-notify", daemon=True)
        self._thread.start()

    def submit(self, hook: str, state: str, previous: str, reason: str) -> None:
        argv: list[str] | None = getattr(self.notify, hook)
        if not argv:
            return
        env = {**os.environ, "HAVS_STATE": state, "HAVS_PREVIOUS": previous, "HAVS_REASON": reason,
               "HAVS_NODE": self.node}
        self._queue.put((state, list(argv), env))

    def stop(self, wait: bool) -> None:
        if self._thread is None:
            return
        self._queue.put(None)
        if wait:
            self._thread.join(self.notify.timeout + 1)
        self._thread = None

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            state, argv, env = item
            try:
                p = subprocess.run(
                    argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=self.notify.timeout
                )
                fields: dict[str, Any] = {"rc": p.returncode}
                if p.returncode:
                    fields["stderr"] = p.stderr.decode("utf-8", "replace")[-500:]
            except subprocess.TimeoutExpired:
                fields = {"rc": None, "error": f"timed out after {self.notify.timeout}s"}
            except OSError as e:
                fields = {"rc": None, "error": str(e)}
            self._log.info("vrrp.notify", state=state, argv=argv, **fields)
