"""Fakes for the daemon's edges: an IPVS that applies ops to a table, a VRRP process, health checks, a log."""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Iterable
from typing import Any, ClassVar

from havs.core.ipvs_diff import Op, apply_ops
from havs.core.ipvs_table import IpvsTable, SyncDaemon


class ListLog:
    """A structlog-like logger that keeps (level, event, fields)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def bind(self, **_kw: Any) -> ListLog:
        return self

    def _log(self, level: str, event: str, **kw: Any) -> None:
        self.events.append((level, event, kw))

    def debug(self, event: str, **kw: Any) -> None:
        self._log("debug", event, **kw)

    def info(self, event: str, **kw: Any) -> None:
        self._log("info", event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._log("warning", event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        self._log("error", event, **kw)

    def exception(self, event: str, **kw: Any) -> None:
        self._log("error", event, **kw)

    def named(self, event: str) -> list[dict[str, Any]]:
        return [kw for _, e, kw in self.events if e == event]


class FakeIpvs:
    """The kernel's IPVS table as a value: `apply` applies the ops the way the kernel would. `fail_dump` /
    `fail_apply` are exceptions raised by the next calls, in order."""

    instances: ClassVar[list[FakeIpvs]] = []

    def __init__(self, table: IpvsTable | None = None) -> None:
        self.table = table if table is not None else IpvsTable([])
        self.fail_dump: list[BaseException] = []
        self.fail_apply: list[BaseException] = []
        self.sync: dict[str, SyncDaemon] = {}
        self.netlink_delay = 0.0  # seconds each sync-daemon call takes (a netlink round trip)
        self.opened = False
        FakeIpvs.instances.append(self)

    async def open(self) -> FakeIpvs:
        self.opened = True
        return self

    async def dump(self) -> IpvsTable:
        if self.fail_dump:
            raise self.fail_dump.pop(0)
        return self.table

    async def apply(self, ops: Iterable[Op]) -> list[tuple[Op, Any]]:
        if self.fail_apply:
            raise self.fail_apply.pop(0)
        ops = list(ops)
        self.table = apply_ops(self.table, ops)
        return [(op, None) for op in ops]

    async def daemons(self) -> list[SyncDaemon]:
        running = list(self.sync.values())
        await asyncio.sleep(self.netlink_delay)
        return running

    async def start_daemon(self, state: str, ifname: str, syncid: int = 0) -> None:
        await asyncio.sleep(self.netlink_delay)
        if state in self.sync:
            raise OSError(errno.EEXIST, "File exists")  # as the kernel says
        self.sync[state] = SyncDaemon(state, ifname, syncid)  # type: ignore[arg-type]

    async def stop_daemon(self, state: str) -> None:
        await asyncio.sleep(self.netlink_delay)
        if state not in self.sync:
            raise OSError(errno.ESRCH, "No such process")
        del self.sync[state]


class FakeVrrp:
    """`havs.vrrp.VrrpProcess` as the daemon uses it. `start_error`: what start() raises (class-wide).
    Like the real child, it refuses to start when anything but Start was its first message."""

    made: ClassVar[list[FakeVrrp]] = []
    start_error: ClassVar[BaseException | None] = None
    refuses: ClassVar[bool] = False  # it answers an update "not applied" (an instance it could not start)
    answers: ClassVar[bool] = True  # False: it neither answers an update nor pushes snapshots (alive() False)

    def __init__(self, view: Any, *, log: Any, log_format: str = "json", on_state: Any = None) -> None:
        self.view = view
        self.on_state = on_state
        self.calls: list[str] = []
        self.decrement: dict[str, int] = {}  # instance → decrement, as the daemon last sent it
        self.decrement_delay = 0.0  # seconds set_priority_decrement blocks (a send waiting for the link's lock)
        FakeVrrp.made.append(self)

    def spawn(self) -> None:
        self.calls.append("spawn")

    def start(self) -> None:
        self.calls.append("start")
        if FakeVrrp.start_error is not None:
            raise FakeVrrp.start_error
        if next(c for c in self.calls if c != "spawn") != "start":
            raise RuntimeError("VRRP did not start: bad start message: expected Start, got SetDecrement")

    def stop(self, graceful: bool = True) -> None:
        self.calls.append(f"stop graceful={graceful}")

    def set_priority_decrement(self, n: dict[str, int]) -> None:
        time.sleep(self.decrement_delay)
        if n != self.decrement:  # as the real one: only a change is sent
            self.decrement = dict(n)
            self.calls.append(f"decrement {' '.join(f'{k}={v}' for k, v in n.items())}")

    def update(self, view: Any) -> bool:
        """As the real one (protocol 2): every change in place by instance name, identities too (an instance
        with a new router id or interface is handed over and restarted inside the process); it refuses a
        view without VRRP, and an instance whose heartbeat interface does not exist (`interface_exists`, as the daemon's
        tests patch it) or that it is told it cannot start (`refuses`)."""
        import havs.vrrp_supervisor as supervisor

        interfaces = {view.ifname(v.interface) for v in view.config.vrrp}  # the rest: that instance in FAULT
        if not FakeVrrp.answers or not self.view.config.vrrp or not view.config.vrrp or FakeVrrp.refuses or \
                not all(supervisor.interface_exists(name) for name in interfaces):
            return False
        self.view = view
        self.calls.append("update")
        return True

    def snapshot(self) -> dict[str, Any]:
        group = self.view.config.group_of
        return {"instances": [
            {"instance": v.name, "group": g.name if (g := group(v.name)) else None, "state": "BACKUP", "since": 0.0,
             "priority": 150, "router_id": v.router_id, "version": 3, "mode": "multicast", "interface": "eth1",
             "adverts_received": 4, "addresses": ["192.168.0.108/24 dev eth0"], "faulty_interfaces": []}
            for v in self.view.config.vrrp], "groups": {}}

    def alive(self) -> bool:
        return FakeVrrp.answers


class _Health:
    def __init__(self, up: bool) -> None:
        self.is_up = up
        self.agent_weight: float | None = None


class FakeHealth:
    """HealthService without probes (no traffic leaves the test): every server has the verdict in `up`."""

    def __init__(self, services: Iterable[Any], *, initial: str = "up", **_kw: Any) -> None:
        self.initial = initial
        self.up: dict[tuple[str, str], bool] = {}
        self.update(services)

    def update(self, services: Iterable[Any]) -> None:
        from havs.core.desired import RealServerKey

        keys = {tuple(RealServerKey.of(vs, rs)) for vs in services for rs in vs.real_servers}
        self.up = {k: self.up.get(k, self.initial == "up") for k in keys}  # type: ignore[misc]

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def states(self) -> dict[tuple[str, str], _Health]:
        return {k: _Health(v) for k, v in self.up.items()}

    def snapshot(self) -> dict[str, dict[str, dict[str, Any]]]:
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for (service, server), up in sorted(self.up.items()):
            out.setdefault(service, {})[server] = {"state": "up" if up else "down", "reason": "ok" if up else
                                                   "refused", "latency_ms": 1.5 if up else None}
        return out
