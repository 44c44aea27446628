"""The one reconcile pass: dump the kernel's table → desired (+ removals in progress) → diff → apply.

Used by the daemon (every pass, level-triggered: a stray `ipvsadm -C` is repaired on the next one) and by
`havs apply` (once, every real server taken as healthy). A pass never raises: whatever the IPVS socket
throws (ENOBUFS on a dump, a netlink error, a bug) is counted, logged once per kind with the stage it
concerns, and the next pass tries again from a fresh dump.

`IpvsSide` is the daemon's IPVS shell around it: the socket opened when the first config needing IPVS
arrives, passes as `havs.core.controller.Controller` plans them, and the kernel's connection-sync threads
as the controller says for the latest VRRP state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from havs.core.controller import Controller, HealthView, SyncAction
from havs.core.desired import Desired, Removals
from havs.core.ipvs_diff import AddDestination, EditDestination, EditService, Op, describe, diff, drift
from havs.core.ipvs_table import IpvsTable, SyncDaemon
from havs.core.status import ReconcilerStatus


class Ipvs(Protocol):
    """What a pass needs of `havs.edge.ipvs.IpvsSocket` (tests give a fake that applies ops to a table)."""

    async def dump(self) -> IpvsTable: ...

    async def apply(self, ops: list[Op]) -> list[tuple[Op, Any]]: ...

    async def daemons(self) -> list[SyncDaemon]: ...

    async def start_daemon(self, state: Any, ifname: str, syncid: int = 0) -> None: ...

    async def stop_daemon(self, state: Any) -> None: ...


class _Quiet:
    """For `havs apply`, which prints instead of logging."""

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **kw: None


@dataclass
class PassResult:
    ops: list[Op] = field(default_factory=list)
    results: list[tuple[Op, Any]] = field(default_factory=list)  # (op, error or None), in order
    error: BaseException | None = None  # the pass itself failed (nothing after `stage` happened)
    stage: str = ""

    @property
    def failed_ops(self) -> int:
        return sum(1 for _, e in self.results if e is not None)


class Reconciler:
    """Keeps the kernel's IPVS table equal to the desired one, one pass at a time."""

    def __init__(self, ipvs: Ipvs, log: Any = None) -> None:
        self.ipvs = ipvs
        self.log = log if log is not None else _Quiet()
        self.passes = 0
        self.ops_applied = 0
        self.failures = 0
        self.drift_repairs = 0
        self.pass_failures = 0
        self.last_actual: IpvsTable | None = None
        self.expected: IpvsTable | None = None  # what the last pass left in the kernel
        self._failing: tuple[str, str, int | None] | None = None  # the kind last logged
        # one sync-daemon run at a time: two VRRP state changes in quick succession must not interleave
        # their stop/start calls (the slower one would leave the threads of the state it planned for)
        self._sync_lock = asyncio.Lock()

    def counters(self) -> ReconcilerStatus:
        return ReconcilerStatus(passes=self.passes, ops_applied=self.ops_applied, failures=self.failures,
                                drift_repairs=self.drift_repairs, pass_failures=self.pass_failures)

    async def run_pass(self, desired: Desired, *, now: float = 0.0, removals: Removals | None = None,
                       drain_timeout: float = 0.0, purge_unmanaged: bool = False,
                       dry_run: bool = False) -> PassResult:
        """One dump → diff → apply. `removals`: servers and services the config dropped are drained first
        (the daemon); None deletes them at once (`havs apply`)."""
        result = PassResult()
        stage = "dump"
        try:
            actual = await self.ipvs.dump()
            self.last_actual = actual
            stage = "diff"
            target = removals.apply(desired, actual, now, drain_timeout) if removals is not None else desired
            result.ops = ops = diff(actual, target.table, managed=set(target.managed),
                                    purge_unmanaged=purge_unmanaged)
            self.passes += 1
            if ops and self.expected is not None and not dry_run:
                # The kernel differs from what the last pass left there: someone else changed it.
                drifted = drift(actual, self.expected, managed=target.managed)
                if drifted:
                    self.drift_repairs += 1
                    self.log.warning("ipvs.drift", differences=drifted[:20], count=len(drifted))
            if dry_run or not ops:
                self._recovered()
                if not dry_run:
                    self.expected = target.table
                return result
            stage = "apply"
            result.results = await self.ipvs.apply(ops)
        except Exception as e:  # a pass must never end the daemon; the next one retries
            self._failed(stage, e)
            result.error, result.stage = e, stage
            return result
        for op, error in result.results:
            if error is None:
                self.ops_applied += 1
                self.log.info("ipvs.apply", **op_fields(op))
            else:
                self.failures += 1
                self.log.error("ipvs.apply_failed", **op_fields(op), error=str(error),
                               errno=getattr(error, "errno", None))
        self.expected = target.table
        self._recovered()
        return result

    def _failed(self, stage: str, e: BaseException) -> None:
        self.pass_failures += 1
        kind = (stage, type(e).__name__, getattr(e, "errno", None))
        self.expected = None  # the kernel may hold anything now: the next pass is not drift
        if kind != self._failing:  # once per kind: a flapping socket must not flood the journal
            self._failing = kind
            self.log.error("ipvs.pass_failed", stage=stage, error=str(e) or type(e).__name__,
                           error_type=type(e).__name__, errno=kind[2], failed_passes=self.pass_failures,
                           retry="next pass")

    def _recovered(self) -> None:
        if self._failing is not None:
            self.log.info("ipvs.pass_recovered", after=self._failing[0], failed_passes=self.pass_failures)
            self._failing = None

    async def sync_daemons(self, plan: Any) -> None:
        """Run the kernel's connection-sync threads as `plan(running) -> [SyncAction]` says; serialised."""
        async with self._sync_lock:
            await self._sync_daemons(plan)

    async def _sync_daemons(self, plan: Any) -> None:
        try:
            actions: list[SyncAction] = plan(await self.ipvs.daemons())
            for a in actions:
                if a.action == "stop":
                    await self.ipvs.stop_daemon(a.state)
                else:
                    await self.ipvs.start_daemon(a.state, a.ifname, a.sync_id)
                self.log.info("ipvs.sync_daemon", action=a.action, state=a.state, interface=a.ifname,
                              sync_id=a.sync_id)
        except Exception as e:  # retried on the next VRRP state change or reload
            self.log.error("ipvs.sync_daemon_failed", error=str(e) or type(e).__name__,
                           error_type=type(e).__name__)


class IpvsSide:
    """The daemon's hold on IPVS. `open_ipvs()` makes an unopened `havs.edge.ipvs.IpvsSocket` (or a fake)."""

    def __init__(self, controller: Controller, log: Any, open_ipvs: Callable[[], Any]) -> None:
        self.controller, self.log, self._open_ipvs = controller, log, open_ipvs
        self.reconciler: Reconciler | None = None

    async def open(self) -> bool:
        """The socket and the reconciler, once; False (logged) when IPVS cannot be reached."""
        if self.reconciler is not None:
            return True
        ipvs = self._open_ipvs()
        try:
            await ipvs.open()
        except Exception as e:  # no IPVS module, no capability, anything: said, never a traceback
            self.log.error("ipvs.unavailable", error=str(e) or type(e).__name__)
            return False
        self.reconciler = Reconciler(ipvs, self.log)
        return True

    async def run_pass(self, health: Mapping[tuple[str, str], HealthView]) -> Desired | None:
        """One pass as the controller plans it now; the desired table (None: IPVS not open)."""
        if self.reconciler is None:
            return None
        settings, now = self.controller.config.settings, time.monotonic()
        desired = self.controller.plan(health, now)
        await self.reconciler.run_pass(desired, now=now, removals=self.controller.removals,
                                       drain_timeout=settings.drain_timeout, purge_unmanaged=settings.purge_unmanaged)
        return desired

    async def sync_connections(self) -> None:
        """The kernel's sync threads for the controller's latest VRRP state (never raises)."""
        if self.reconciler is not None and self.controller.syncs_connections:
            await self.reconciler.sync_daemons(self.controller.sync_actions)

    def counters(self) -> ReconcilerStatus | None:
        return self.reconciler.counters() if self.reconciler is not None else None

    @property
    def last_actual(self) -> IpvsTable | None:
        return self.reconciler.last_actual if self.reconciler is not None else None


def op_fields(op: Op) -> dict[str, object]:
    fields: dict[str, object] = {"op": type(op).__name__, "target": op.target}
    if isinstance(op, EditService | EditDestination):
        fields["change"] = describe(op).split(": ", 1)[-1]
    dest = getattr(op, "destination", None)
    if isinstance(op, AddDestination) and dest is not None:
        fields["weight"] = dest.weight
        fields["forwarding"] = dest.forwarding.value
    return fields
