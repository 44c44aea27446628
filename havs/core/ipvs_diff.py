"""actual IPVS table + desired IPVS table → the fewest kernel operations, in a safe order.

Every op carries the complete record, because the kernel's "set" resets whatever it is not
given (a dest edit without its forwarding method becomes DR). Everything the kernel can edit in
place is an edit: scheduler, persistence, flags, netmask, persistence engine for a service;
forwarding, weight, thresholds and tunnel settings for a destination. A destination only goes
away and comes back when its key (address, port — and so its family) changed, which is a
different destination anyway.

Order: per desired service, the service add/edit first, then its destination deletes, edits and
adds; then whole-service deletes (the kernel drops a deleted service's destinations with it, so
they get no ops of their own).

`apply_ops` is a model of what the kernel does with those ops; the property test checks
`apply_ops(a, diff(a, b)) == b`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields

from havs.core.ipvs_table import Destination, DestinationKey, IpvsTable, Service, ServiceKey


@dataclass(frozen=True)
class AddService:
    service: Service

    @property
    def target(self) -> str:
        return str(self.service.key)


@dataclass(frozen=True)
class EditService:
    service: Service
    previous: Service | None = None  # for logs only

    @property
    def target(self) -> str:
        return str(self.service.key)


@dataclass(frozen=True)
class DeleteService:
    service: Service

    @property
    def target(self) -> str:
        return str(self.service.key)


@dataclass(frozen=True)
class AddDestination:
    service: ServiceKey
    destination: Destination

    @property
    def target(self) -> str:
        return f"{self.service} -> {self.destination.key}"


@dataclass(frozen=True)
class EditDestination:
    service: ServiceKey
    destination: Destination
    previous: Destination | None = None  # for logs only

    @property
    def target(self) -> str:
        return f"{self.service} -> {self.destination.key}"


@dataclass(frozen=True)
class DeleteDestination:
    service: ServiceKey
    destination: Destination

    @property
    def target(self) -> str:
        return f"{self.service} -> {self.destination.key}"


Op = AddService | EditService | DeleteService | AddDestination | EditDestination | DeleteDestination


def diff(
    actual: IpvsTable,
    desired: IpvsTable,
    *,
    managed: set[ServiceKey] | frozenset[ServiceKey] | None = None,
    purge_unmanaged: bool = False,
) -> list[Op]:
    """The ops that turn `actual` into `desired`.

    A service in `actual` but not in `desired` is deleted only if `purge_unmanaged`, or if it is
    in `managed` (services havs put there itself, e.g. from the previous configuration); other
    services belong to someone else and are left alone.
    """
    ops: list[Op] = []
    for key, want in desired.items():
        have = actual.get(key)
        if have is None:
            ops.append(AddService(want.service))
            ops.extend(AddDestination(key, d) for d in want.destinations.values())
            continue
        if have.service != want.service:
            ops.append(EditService(want.service, previous=have.service))
        for dkey, d in have.destinations.items():
            if dkey not in want.destinations:
                ops.append(DeleteDestination(key, d))
        for dkey, d in want.destinations.items():
            old = have.destinations.get(dkey)
            if old is None:
                ops.append(AddDestination(key, d))
            elif old != d:
                ops.append(EditDestination(key, d, previous=old))
    for key, have in actual.items():
        if key not in desired and (purge_unmanaged or (managed is not None and key in managed)):
            ops.append(DeleteService(have.service))
    return ops


class OpRejected(ValueError):
    """An op the kernel would refuse; `errno_name` is the error the kernel gives."""

    def __init__(self, op: Op, errno_name: str, message: str) -> None:
        self.op = op
        self.errno_name = errno_name
        super().__init__(f"{op.target}: {message} ({errno_name})")


def apply_ops(table: IpvsTable, ops: Iterable[Op]) -> IpvsTable:
    """What the kernel's table becomes after `ops` (raises OpRejected where the kernel errs)."""
    services: dict[ServiceKey, Service] = {k: e.service for k, e in table.items()}
    dests: dict[ServiceKey, dict[DestinationKey, Destination]] = {
        k: dict(e.destinations) for k, e in table.items()
    }
    for op in ops:
        if isinstance(op, AddService):
            if op.service.key in services:
                raise OpRejected(op, "EEXIST", "Service already exists")
            services[op.service.key] = op.service
            dests[op.service.key] = {}
        elif isinstance(op, EditService):
            if op.service.key not in services:
                raise OpRejected(op, "ESRCH", "No such service")
            services[op.service.key] = op.service
        elif isinstance(op, DeleteService):
            if op.service.key not in services:
                raise OpRejected(op, "ESRCH", "No such service")
            del services[op.service.key], dests[op.service.key]
        else:
            if op.service not in services:
                raise OpRejected(op, "ESRCH", "Service not defined")
            current = dests[op.service]
            dkey = op.destination.key
            if isinstance(op, AddDestination):
                if dkey in current:
                    raise OpRejected(op, "EEXIST", "Destination already exists")
                current[dkey] = op.destination
            elif isinstance(op, EditDestination):
                if dkey not in current:
                    raise OpRejected(op, "ENOENT", "No such destination")
                current[dkey] = op.destination
            else:
                if dkey not in current:
                    raise OpRejected(op, "ENOENT", "No such destination")
                del current[dkey]
    return IpvsTable((services[k], dests[k].values()) for k in services)


def _changes(old: object, new: object, skip: tuple[str, ...] = ("key",)) -> list[str]:
    out = []
    for f in fields(new):  # type: ignore[arg-type]
        if f.name in skip:
            continue
        a, b = getattr(old, f.name), getattr(new, f.name)
        if a != b:
            if isinstance(a, frozenset):
                a, b = ",".join(sorted(a)) or "-", ",".join(sorted(b)) or "-"
            out.append(f"{f.name.replace('_', ' ')} {a} != {b}")
    return out


def describe(op: Op) -> str:
    """One op as a drift sentence: what the kernel has compared with what is wanted."""
    if isinstance(op, AddService | AddDestination):
        return f"{op.target} missing"
    if isinstance(op, DeleteService | DeleteDestination):
        return f"{op.target} unexpected"
    if op.previous is None:
        return f"{op.target} differs"
    return f"{op.target}: " + ", ".join(_changes(op.previous, op.service if isinstance(op, EditService)
                                                  else op.destination))


def drift(
    actual: IpvsTable,
    desired: IpvsTable,
    *,
    managed: set[ServiceKey] | frozenset[ServiceKey] | None = None,
    purge_unmanaged: bool = False,
) -> list[str]:
    """Differences in words for the `ipvs.drift` log, e.g.
    `TCP 192.168.0.108:80 -> 192.168.72.129:80 missing`,
    `TCP 192.168.0.108:80 -> 192.168.72.129:80: weight 0 != 1` (kernel's value first)."""
    return [describe(op) for op in diff(actual, desired, managed=managed, purge_unmanaged=purge_unmanaged)]
