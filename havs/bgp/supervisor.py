"""The daemon's BGP side: BIRD started with havs's rendered config, each VIP announced only while this
director can serve it, withdrawn first on a graceful stop.

The daemon makes one call after every reconcile pass, `feed(view, desired, ipvs)` (never blocks): a view it
has not seen starts, reconfigures or stops BIRD in the background (`apply`), and the pass's verdicts go to
one worker task that enables or disables each VIP's protocol through BIRD's control socket. At the end it
calls `stop()`, the graceful drain: every VIP withdrawn, then wait until BIRD has withdrawn them from every
established session (observed in `show protocols all`, not a sleep), then BIRD stops. A BIRD that exits on
its own is restarted and told the current announcements again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from havs.bgp.bird import BirdProcess
from havs.bgp.control import BirdControl
from havs.core.bgp import (
    BirdError,
    Verdict,
    announced_vips,
    converged,
    exported_routes,
    neighbor_protocol,
    parse_protocols,
    render_bird,
    servable,
    vip_protocol,
)
from havs.core.desired import Desired
from havs.core.ipvs_table import IpvsTable
from havs.core.model import NodeView
from havs.edge.addresses import Addresses

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# a director must accept a mid-flow packet of a connection another director started: ECMP moved the flow
SLOPPY = ("/proc/sys/net/ipv4/vs/sloppy_tcp", "/proc/sys/net/ipv4/vs/sloppy_sctp")
RESTART_DELAY = 1.0


class IpvsView(Protocol):
    """What the shell reads of the daemon's IPVS side (`havs.reconcile.IpvsSide`)."""

    last_actual: IpvsTable | None
    reconciler: Any


class BgpSupervisor:
    def __init__(self, log: Any, *, dump: Callable[[], Awaitable[IpvsTable]] | None = None) -> None:
        self.log = log
        self.dump = dump  # a fresh kernel table, when the pass's snapshot predates a service it just added
        self.view: NodeView | None = None
        self.bird: BirdProcess | None = None
        self.control: BirdControl | None = None
        self._addresses: Addresses | None = None
        self.wanted: dict[IPAddress, Verdict] = {}
        self.announced: set[IPAddress] = set()
        self.on_lo: set[IPAddress] = set()
        self._last_desired: Desired | None = None
        self._fed_view: NodeView | None = None
        self._applying: asyncio.Future[None] | None = None
        self._changed = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def addresses(self) -> Addresses:
        """The VIPs' loopback addresses over rtnetlink, made on first use (only with `bgp:`), on the daemon's
        loop (uvloop or asyncio's)."""
        if self._addresses is None:
            self._addresses = Addresses()
        return self._addresses

    @property
    def active(self) -> bool:
        return self.bird is not None

    # ------------------------------------------------------------------ lifecycle
    async def start(self, view: NodeView) -> bool:
        """Render the config, start BIRD (every VIP withdrawn) and the worker. False: BIRD did not start
        (logged); the daemon carries on without announcing anything."""
        bgp = view.config.bgp
        if bgp is None:
            return True
        self.view, self._stopping = view, False
        self.bird = BirdProcess(bgp.bird, bgp.run_dir)
        self.control = BirdControl(self.bird.socket)
        try:
            self.bird.write_config(render_bird(view, self.bird.log_file))
            problem = await self.bird.check()
        except OSError as e:  # no BIRD binary, an unwritable run_dir
            problem = f"{e.strerror or e}: {e.filename or bgp.bird}"
        if problem is not None:  # a config BIRD refuses: no retry can help
            self.log.error("bgp.config_rejected", error=problem, config=str(self.bird.conf))
            self.bird = None
            return False
        self._sloppy()
        await self.addresses.open()
        await self._vips_on_loopback(view)
        up = await self._spawn_bird()
        # the watcher restarts a BIRD that failed to start or exits later; the worker announces meanwhile
        self._tasks = [asyncio.ensure_future(self._worker()), asyncio.ensure_future(self._watch())]
        return up

    async def _spawn_bird(self) -> bool:
        assert self.bird is not None and self.control is not None and self.view is not None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.bird.socket)  # a stale socket would look like a BIRD that is ready
        try:
            self.bird.write_config(render_bird(self.view, self.bird.log_file))
            if (why := await self.bird.start()) is not None:
                self.log.warning("bgp.bird_priority", error=why, nice=0)
            if not await self.bird.wait_socket(10.0):
                raise OSError(f"BIRD did not open {self.bird.socket}: {self._bird_output()}")
            greeting = await self.control.connect()
        except (OSError, TimeoutError) as e:
            self.log.error("bgp.bird_failed", error=str(e), config=str(self.bird.conf))
            await self.bird.stop()
            return False
        self.announced = set()  # a fresh BIRD announces nothing (every VIP protocol starts disabled)
        self._changed.set()
        self.log.info("bgp.bird_started", pid=self.bird.proc.pid if self.bird.proc else None, version=greeting,
                      config=str(self.bird.conf), neighbors=len(self.view.config.bgp.neighbors)  # type: ignore[union-attr]
                      )
        return True

    def _bird_output(self) -> str:
        assert self.bird is not None
        try:
            with open(self.bird.run_dir / "bird.out", "rb") as f:
                return f.read()[-500:].decode("utf-8", "replace").strip()
        except OSError:
            return ""

    async def stop(self, timeout: float = 10.0) -> None:
        """The daemon's stop: a start or reload still in progress is finished first, then `halt`."""
        self._fed_view = None
        if self._applying is not None and not self._applying.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._applying), timeout)
        await self.halt(timeout)

    async def halt(self, timeout: float = 10.0) -> None:
        """The graceful drain, then BIRD stops and the VIPs leave the loopback."""
        if self.bird is None:
            return
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self.drain(timeout)
        code = await self.bird.stop()
        if self.control is not None:
            self.control.close()
        if self.view is not None:
            for vip in list(self.on_lo):
                with contextlib.suppress(Exception):
                    await self.addresses.remove(self.view.config.bgp.loopback, _host(vip))  # type: ignore[union-attr]
            self.on_lo.clear()
        await self.addresses.close()
        self.log.info("bgp.bird_stopped", returncode=code)
        self.bird = None

    async def drain(self, timeout: float = 10.0) -> bool:
        """Withdraw every VIP and wait until no established session exports one (True) or the timeout."""
        if self.control is None or self.view is None or self.bird is None or not self.bird.running:
            return False
        loop = asyncio.get_running_loop()
        start = loop.time()
        for vip in announced_vips(self.view.config):
            await self._set(vip, False, "drain")
        peers = [neighbor_protocol(i) for i in range(len(self.view.config.bgp.neighbors))]  # type: ignore[union-attr]
        while loop.time() - start < timeout:
            reply = await self.control.command("show protocols all")
            if converged(parse_protocols(reply), exported_routes(reply), peers):
                self.log.info("bgp.drained", seconds=round(loop.time() - start, 3))
                return True
            await asyncio.sleep(0.01)
        self.log.error("bgp.drain_timeout", seconds=timeout)
        return False

    async def apply(self, view: NodeView) -> None:
        """The daemon's one call on a reload: start, reconfigure or stop, as the new config asks."""
        if view.config.bgp is None:
            await self.halt()  # graceful: withdrawn before BIRD stops
        elif self.bird is None:
            await self.start(view)
        else:
            await self.reload(view)

    async def reload(self, view: NodeView) -> None:
        """A new config: re-render, let BIRD check it, `configure`; the worker re-applies every announcement.
        A config BIRD refuses leaves the running one (and its file) in place."""
        if self.bird is None or self.control is None or view.config.bgp is None or self.view is None:
            return
        old_bgp = self.view.config.bgp
        if old_bgp is not None and (old_bgp.bird, old_bgp.run_dir) != (view.config.bgp.bird, view.config.bgp.run_dir):
            self.log.warning("config.restart_needed", settings=["bgp.bird", "bgp.run_dir"], applied="at the next start")
        old_text = self.bird.conf.read_text() if self.bird.conf.exists() else ""
        try:
            self.bird.write_config(render_bird(view, self.bird.log_file))
            if (problem := await self.bird.check()) is not None:
                self.bird.write_config(old_text)
                raise BirdError(problem)
            await self._vips_on_loopback(view)
            await self.control.command(f'configure "{self.bird.conf}"')
        except (OSError, TimeoutError, BirdError) as e:
            self.log.error("bgp.reload_failed", error=str(e))
            return
        self.view = view
        for vip in self.on_lo - set(announced_vips(view.config)):
            with contextlib.suppress(Exception):
                await self.addresses.remove(view.config.bgp.loopback, _host(vip))
            self.on_lo.discard(vip)
        self.announced = set()  # reconfigured protocols may have been restarted disabled: say it again
        self._changed.set()

    # ------------------------------------------------------------------ announcements
    def feed(self, view: NodeView, desired: Desired | None, ipvs: IpvsTable | IpvsView | None) -> None:
        """After every reconcile pass (the daemon's one call; never blocks): what this director can serve
        now. A view not seen before starts, reconfigures or stops BIRD (in order, in the background)."""
        actual = ipvs if ipvs is None or isinstance(ipvs, IpvsTable) else ipvs.last_actual
        if not isinstance(ipvs, IpvsTable) and ipvs is not None and ipvs.reconciler is not None:
            self.dump = ipvs.reconciler.ipvs.dump  # a fresh look when the snapshot predates a new service
        if view is not self._fed_view:
            self._fed_view = view
            if view.config.bgp is not None or self.bird is not None:
                self._applying = asyncio.ensure_future(self._apply_after(self._applying, view))
        if view.config.bgp is None:
            return
        self.wanted = {v.vip: v for v in servable(view.config, desired, actual)}
        self._last_desired = desired
        self._changed.set()

    async def _apply_after(self, previous: asyncio.Future[None] | None, view: NodeView) -> None:
        if previous is not None:
            with contextlib.suppress(Exception):
                await previous
        try:
            await self.apply(view)
        except Exception as e:  # never an unhandled task error: said, and the next view tries again
            self.log.error("bgp.apply_failed", error=str(e), error_type=type(e).__name__)

    async def _worker(self) -> None:
        while not self._stopping:
            await self._changed.wait()
            self._changed.clear()
            try:
                await self._confirm_new_services()
                for vip, verdict in list(self.wanted.items()):
                    if verdict.announce != (vip in self.announced):
                        await self._set(vip, verdict.announce, verdict.reason)
                if self.view is not None:
                    for vip in self.announced - set(self.wanted):  # removed by a reload
                        await self._set(vip, False, "no longer in the config")
            except (OSError, TimeoutError, BirdError) as e:
                self.log.error("bgp.control_failed", error=str(e))
                await asyncio.sleep(RESTART_DELAY)
                if self.control is not None and not self.control.connected and self.bird and self.bird.running:
                    with contextlib.suppress(OSError, TimeoutError):
                        await self.control.connect()
                self._changed.set()

    async def _confirm_new_services(self) -> None:
        """A pass's kernel snapshot is taken before it adds a service: look again rather than wait a pass."""
        missing = [v for v in self.wanted.values() if "not in the kernel's IPVS table" in v.reason]
        if missing and self.dump is not None and self.view is not None:
            wanted = {v.vip: v for v in servable(self.view.config, self._last_desired, await self.dump())}
            self.wanted.update({vip: wanted[vip] for vip in (v.vip for v in missing) if vip in wanted})

    async def _set(self, vip: IPAddress, announce: bool, reason: str) -> None:
        assert self.control is not None
        await self.control.command(f"{'enable' if announce else 'disable'} {vip_protocol(vip)}")
        if announce:
            self.announced.add(vip)
            self.log.info("bgp.announce", vip=str(vip))
        elif vip in self.announced:
            self.announced.discard(vip)
            self.log.info("bgp.withdraw", vip=str(vip), reason=reason)

    async def _watch(self) -> None:
        """BIRD exiting on its own: said, and restarted (its announcements are lost with it)."""
        delay = RESTART_DELAY
        while not self._stopping and self.bird is not None and self.bird.proc is not None:
            code = await self.bird.proc.wait()
            if self._stopping:
                return
            self.log.error("bgp.bird_exited", returncode=code, output=self._bird_output(), restart_in=delay)
            self.announced = set()
            await asyncio.sleep(delay)
            delay = RESTART_DELAY if await self._spawn_bird() else min(delay * 2, 30.0)

    # ------------------------------------------------------------------ the host
    async def _vips_on_loopback(self, view: NodeView) -> None:
        """IPVS takes a packet only if its destination is local: each VIP as a /32 on the loopback. Routers
        reach it through the BGP next hop (the director's own address), so nobody needs to ARP for it."""
        assert view.config.bgp is not None
        for vip in announced_vips(view.config):
            if vip not in self.on_lo:
                await self.addresses.add(view.config.bgp.loopback, _host(vip))
                self.on_lo.add(vip)

    def _sloppy(self) -> None:
        for path in SLOPPY:
            try:
                with open(path, "w") as f:
                    f.write("1\n")
            except OSError as e:  # IPVS not loaded yet, or no SCTP: said, not fatal
                self.log.warning("bgp.sysctl_failed", path=path, error=e.strerror)


def _host(vip: IPAddress) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    return ipaddress.ip_interface(f"{vip}/{vip.max_prefixlen}")
