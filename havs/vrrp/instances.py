"""Every VRRP instance of this node on the child's one loop, and their sync groups.

One `VrrpShell` per instance (`vrrp:` in config order), each with its own core, timer, effects queue and
rtnetlink socket, notify hooks and logs (`instance=`, `group=`); what they can share they share: one raw
socket per interface, source and peer list (`heartbeat.Demux`, by router id) and one link-event socket.
Nothing an instance does between adverts (address changes, GARP/NA bursts, notify hooks) runs on another's
heartbeat path: those are asyncio tasks of its own, so another instance's advert timer fires on time.

Sync groups (`vrrp_sync_groups`) are `havs.core.vrrp_group.VrrpGroup`s: a member tells its group of its own
link faults and its wish to become MASTER, and every state change; the group forces the members. The
quorum decrement of a grouped instance is the largest of its group's (the members share a state, so a lost
quorum on the VIP's services must be able to move the gateway's instance with it).

A reload (`update`) goes by instance name: an unchanged instance is left alone (state, addresses, timers),
a changed one is reconfigured in place, or — a new router id, interface or addresses — stopped gracefully
(addresses released, handed over) and started anew; a removed one is stopped gracefully, an added one
started. All or nothing: every check (heartbeat interfaces, keys) and every new shell and socket comes first,
and a failure leaves every running instance as it was. A missing tracked or address interface is no
failure, at start as on reload: that instance runs in FAULT until the interface appears.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from functools import partial
from typing import Any

from havs.core.model import NodeView, SyncGroup
from havs.core.vrrp_group import REASON, Force, GroupAction, GroupChanged, VrrpGroup
from havs.core.vrrp_model import FAULT
from havs.edge.links import LinkEvent, LinkWatcher, interface_exists
from havs.edge.vrrp_socket import VrrpSocket
from havs.vrrp.announcer import AddressCache
from havs.vrrp.auth_keys import auth_params
from havs.vrrp.heartbeat import Demux
from havs.vrrp.notify import NotifyRunner
from havs.vrrp.shell import SocketKey, VrrpShell, identity

OnState = Callable[[str, str, str, str, str], None]  # instance, from, to, reason, group ("" when none)


class BoundLog:
    """A logger whose every event carries `fields` (instance=, group=); they change with a reload."""

    def __init__(self, log: Any, **fields: Any) -> None:
        self._log = log
        self.fields = fields

    def __getattr__(self, level: str) -> Callable[..., None]:
        emit = getattr(self._log, level)
        return lambda event, **kw: emit(event, **{**self.fields, **kw})


class _Hooks:
    """One group's side of its members (`shell.GroupHooks`)."""

    def __init__(self, owner: Instances, group: str) -> None:
        self.owner, self.name = owner, group

    def fault(self, name: str, faulty: bool, reason: str) -> None:
        group = self.owner.groups.get(self.name)
        if group is not None:
            self.owner.apply(group, group.fault(name, faulty, _now(), reason))

    def want(self, name: str, want: bool) -> None:
        group = self.owner.groups.get(self.name)
        if group is not None:
            self.owner.apply(group, group.want_master(name, want, _now()))

    def any_faulty(self, name: str) -> bool:
        group = self.owner.groups.get(self.name)
        return group is not None and group.any_faulty


def _now() -> float:
    return asyncio.get_running_loop().time()


class OpenFailed(RuntimeError):
    """An instance could not be opened (`instance`: which); the message says why."""

    def __init__(self, message: str, instance: str) -> None:
        super().__init__(message)
        self.instance = instance


def _why(view: NodeView, name: str, e: Exception) -> str:
    """A start failure, naming the instance when there are several."""
    text = str(e).removeprefix("VRRP did not start: ")
    return f"VRRP did not start: {text}" if len(view.config.vrrp) == 1 else \
        f"VRRP did not start: instance {name}: {text}"


def rt_priority(view: NodeView) -> int:
    """The child's SCHED_RR priority: the highest any instance asks for."""
    return max((v.rt_priority for v in view.config.vrrp), default=0)


class Instances:
    def __init__(self, view: NodeView, *, log: Any, on_state: OnState | None = None,
                 on_change: Callable[[], None] | None = None) -> None:
        if not view.config.vrrp:
            raise ValueError(f"node {view.name}: the config has no vrrp section")
        self.view = view
        self._log = log
        self._on_state = on_state
        self._on_change = on_change or (lambda: None)
        self.shells: dict[str, VrrpShell] = {}
        self._logs: dict[str, BoundLog] = {}
        self.groups: dict[str, VrrpGroup] = {}
        self._group_notify: dict[str, NotifyRunner] = {}
        self._hooks: dict[str, _Hooks] = {}
        self._demux: dict[SocketKey, Demux] = {}
        self._links = LinkWatcher(self._on_link)
        self._links_open = False
        self.decrements: dict[str, int] = {}
        self.preempt_hold = ""
        self._background: set[asyncio.Task[None]] = set()  # stops of removed instances, restarts of replaced
        # graceful stops in progress by (socket, router id): the demultiplexer has one slot per router id, so a
        # new instance with that id on that socket (a rename, a replacement, ids swapped) begins after them
        self._leaving: dict[tuple[SocketKey, int], asyncio.Task[None]] = {}
        self._closing = False  # stop() has begun: nothing begins any more
        # every MASTER checks its addresses once an interval: one read of an interface serves them all
        self.addresses = AddressCache(ttl=0.9 * min(v.advert_interval for v in view.config.vrrp))

    # ----------------------------------------------------------------------------------- building

    def _shell(self, view: NodeView, name: str) -> VrrpShell:
        """A new shell with a log of its own (`_logs` takes it when it runs: a replaced instance's old shell
        keeps logging as it was until it has handed over)."""
        group = view.config.group_of(name)
        log = BoundLog(self._log, instance=name, **({"group": group.name} if group else {}))
        return VrrpShell(view, log=log, name=name, on_state=partial(self._state, name), on_change=self._on_change,
                         group=self._hooks_of(group), links=False,
                         notify_env={"HAVS_INSTANCE": name, "HAVS_GROUP": group.name if group else ""},
                         address_cache=self.addresses)

    def _hooks_of(self, group: SyncGroup | None) -> _Hooks | None:
        # the hooks look their group up by name when called: made before the group exists, they wait for it
        if group is None:
            return None
        return self._hooks.setdefault(group.name, _Hooks(self, group.name))

    def _sync_groups(self, view: NodeView) -> list[VrrpGroup]:
        """Groups of `view`: one whose members are unchanged keeps its state; a new or changed one starts
        from its members' states as they are (and their faults). Returns the new or changed ones."""
        now = _now()
        old = self.groups
        self.groups = {}
        made: list[VrrpGroup] = []
        for g in view.config.vrrp_sync_groups:
            kept = old.get(g.name)
            if kept is not None and kept.members == tuple(g.instances):
                self.groups[g.name] = kept
            else:
                states = {m: str(s.inst.state) for m in g.instances if (s := self.shells.get(m)) and s.inst}
                faulty = [m for m in g.instances if (s := self.shells.get(m)) is not None and s.faulty]
                self.groups[g.name] = VrrpGroup(g.name, g.instances, now, states, faulty)
                made.append(self.groups[g.name])
            runner = self._group_notify.get(g.name)
            if runner is None:
                runner = NotifyRunner(g.notify, BoundLog(self._log, group=g.name), view.name, {"HAVS_GROUP": g.name})
                self._group_notify[g.name] = runner
                runner.start()
            runner.notify = g.notify
        for name in set(self._group_notify) - set(self.groups):
            self._spawn(self._group_notify.pop(name).stop(wait=True))
            self._hooks.pop(name, None)
        return made

    def _demux_for(self, shell: VrrpShell) -> Demux:
        key = shell.socket_key
        demux = self._demux.get(key)
        if demux is None or demux.sock.fileno() < 0:  # none yet, or closed with its last instance
            demux = self._demux[key] = Demux(VrrpSocket(shell._hb_if, shell.src, peers=shell._peers()))  # type: ignore[arg-type]
        return demux

    async def _open(self, shells: list[VrrpShell], view: NodeView | None = None) -> None:
        """Open every shell and its socket, or none (OpenFailed naming the instance of `view`, default ours)."""
        opened: list[VrrpShell] = []
        try:
            for shell in shells:
                try:
                    await shell.open()
                    opened.append(shell)
                    self._demux_for(shell)
                except (OSError, ValueError, RuntimeError) as e:
                    raise OpenFailed(_why(view or self.view, shell.name, e), shell.name) from e
        except RuntimeError:
            for shell in opened:
                await shell.close()
            for key, demux in list(self._demux.items()):
                if not demux.heartbeats:
                    demux.close()
                    del self._demux[key]
            raise

    def _begin(self, shell: VrrpShell) -> None:
        shell.links_open = self._links_open
        shell.preempt_hold = self.preempt_hold
        shell.decrement = self._decrement_of(shell.name)
        shell.begin(self._demux_for(shell))

    # ----------------------------------------------------------------------------------- start, stop

    async def start(self) -> None:
        """Every instance, or none: RuntimeError with the reason (the daemon keeps its previous config)."""
        shells = [self._shell(self.view, v.name) for v in self.view.config.vrrp]
        await self._open(shells)
        self.shells = {s.name: s for s in shells}
        self._logs = {s.name: s._log for s in shells}
        self._sync_groups(self.view)
        try:
            self._links.open()
            self._links_open = True
        except OSError as e:
            self._log.warning("vrrp.link_events_unavailable", error=str(e), fallback="poll every advert")
        for shell in shells:
            self._begin(shell)

    async def stop(self, graceful: bool) -> None:
        """Every instance at once (a MASTER's handover waits for its successor, in parallel)."""
        self._closing = True
        await asyncio.gather(*(s.stop(graceful) for s in self.shells.values()))
        for task in list(self._background):
            if not graceful:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await asyncio.gather(*(r.stop(wait=graceful) for r in self._group_notify.values()))
        self._links.close()
        for demux in self._demux.values():
            with contextlib.suppress(OSError):
                demux.close()
        self._demux.clear()

    def _spawn(self, work: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _retire(self, shell: VrrpShell) -> asyncio.Task[None]:
        """Stop `shell` gracefully in the background; its router id on its socket stays taken until then."""
        task = self._spawn(shell.stop(graceful=True))
        if shell.inst is not None and shell.demux is not None:
            key = (shell.socket_key, shell.inst.params.router_id)
            self._leaving[key] = task
            task.add_done_callback(lambda t: self._leaving.pop(key) if self._leaving.get(key) is t else None)
        return task

    def _begin_or_wait(self, shell: VrrpShell) -> None:
        if (shell.socket_key, shell.cfg.router_id) in self._leaving:
            self._spawn(self._begin_when_free(shell))
        else:
            self._begin(shell)

    async def _begin_when_free(self, new: VrrpShell, after: asyncio.Task[None] | None = None) -> None:
        """Begin `new` (opened here unless `update` did) once `after` (the stop of the instance it replaces: its
        addresses released first) is over and no stopping instance holds its router id on its socket, if it is
        still the instance of its name by then."""
        try:
            if after is not None:
                await asyncio.wait([after])
            if new.src is None:
                await self._open([new])
            while (task := self._leaving.get((new.socket_key, new.cfg.router_id))) is not None:
                await asyncio.wait([task])
            if self.shells.get(new.name) is new and not self._closing:
                self._begin(new)  # a socket the old one closed as its last user is opened again here
            else:
                await new.close()  # removed or replaced again while the old one handed over
        except (RuntimeError, OSError) as e:
            self._log.error("vrrp.reload_failed", instance=new.name, error=str(e))
            await new.close()

    # ----------------------------------------------------------------------------------- the groups

    def _state(self, name: str, from_: str, to: str, reason: str) -> None:
        group = self.view.config.group_of(name)
        if self._on_state is not None:
            self._on_state(name, from_, to, reason, group.name if group else "")
        core = self.groups.get(group.name) if group else None
        if core is not None:
            self.apply(core, core.state_changed(name, from_, to, _now(), reason))

    def apply(self, group: VrrpGroup, actions: list[GroupAction]) -> None:
        for action in actions:
            if isinstance(action, Force):
                shell = self.shells.get(action.instance)
                if shell is not None:
                    shell.force(action.to, action.reason)
            elif isinstance(action, GroupChanged):
                self._log.info("vrrp.group", group=action.group, from_=action.from_, to=action.to,
                               reason=action.reason, instances=list(group.members))
                runner = self._group_notify.get(action.group)
                if runner is not None:
                    runner.submit(action.to, action.reason)
                self._on_change()

    def _on_link(self, event: LinkEvent | None) -> None:
        for shell in list(self.shells.values()):
            shell.on_link(event)

    # ----------------------------------------------------------------------------------- the daemon's

    def _decrement_of(self, name: str) -> int:
        group = self.view.config.group_of(name)
        names = group.instances if group else [name]
        return max((self.decrements.get(n, 0) for n in names), default=0)

    def set_priority_decrement(self, n: dict[str, int]) -> None:
        self.decrements = {k: max(0, int(v)) for k, v in n.items()}
        for name, shell in list(self.shells.items()):
            shell.set_priority_decrement(self._decrement_of(name))

    def set_preempt_hold(self, reason: str) -> None:
        self.preempt_hold = reason
        for shell in list(self.shells.values()):
            shell.set_preempt_hold(reason)

    def snapshot(self) -> dict[str, Any]:
        instances = []
        for v in self.view.config.vrrp:
            shell = self.shells.get(v.name)
            if shell is None:
                continue
            group = self.view.config.group_of(v.name)
            instances.append({**shell.snapshot(), "instance": v.name, "group": group.name if group else None})
        return {"instances": instances, "groups": {name: g.state for name, g in self.groups.items()}}

    # ----------------------------------------------------------------------------------- reload

    def _unchanged(self, old: NodeView, new: NodeView, name: str) -> bool:
        a, b = old.config.instance(name), new.config.instance(name)
        roles = {a.interface, *(fa.interface for fa in a.addresses), *a.track_interfaces}
        return (a == b and old.config.group_of(name) == new.config.group_of(name)
                and a.priority_of(old.name, old.node) == b.priority_of(new.name, new.node)
                and identity(old, name) == identity(new, name)
                and all(old.ifname(r) == new.ifname(r) for r in roles))

    def _check(self, view: NodeView, name: str, new: bool = True) -> str | None:
        """Why instance `name` of `view` could not run (checked before anything is touched), or None: its
        keys, and when it is `new` (added, or a new identity) its heartbeat interface (no socket, no advert
        source without it). A missing tracked or address interface is no reason: the instance runs in FAULT
        until the interface appears, as at start (and as keepalived does)."""
        cfg = view.config.instance(name)
        if new and not interface_exists(view.ifname(cfg.interface)):
            return f"no interface {view.ifname(cfg.interface)} (role {cfg.interface})"
        try:
            auth_params(cfg.auth_hmac, cfg.advert_interval)
        except ValueError as e:
            return str(e)
        return None

    async def update(self, view: NodeView) -> bool:
        """Apply a reload by instance name, or nothing: False (logged) when an added, replaced or changed
        instance could not run (its heartbeat interface, its keys, its sockets), with every running instance
        left exactly as it was (state, addresses, settings, groups); the daemon keeps the running config."""
        if not view.config.vrrp:
            return False
        old = self.view
        names = [v.name for v in view.config.vrrp]
        removed = [n for n in self.shells if n not in names]
        replaced = [n for n in names if n in self.shells and identity(old, n) != identity(view, n)]
        changed = [n for n in names if n in self.shells and n not in replaced and not self._unchanged(old, view, n)]
        # everything that can fail, before anything is touched: the checks, then the new shells and sockets
        for name in [n for n in names if n not in self.shells or n in replaced or n in changed]:
            if (why := self._check(view, name, new=name not in changed)) is not None:
                self._log.error("vrrp.reload_failed", instance=name, error=why)
                return False
        hooks = set(self._hooks)
        fresh = {n: self._shell(view, n) for n in names if n not in self.shells or n in replaced}
        try:
            await self._open(list(fresh.values()), view)
        except OpenFailed as e:
            for name in set(self._hooks) - hooks:  # hooks of a group that was to be new
                del self._hooks[name]
            self._log.error("vrrp.reload_failed", instance=e.instance, error=str(e))
            return False
        # nothing can fail from here on
        self.view = view
        self.addresses.ttl = 0.9 * min(v.advert_interval for v in view.config.vrrp)
        made = self._sync_groups(view)
        for name in removed:
            self._log.info("vrrp.instance_removed", instance=name)
            self._logs.pop(name, None)
            self._retire(self.shells.pop(name))
        for name in names:
            shell = self.shells.get(name)
            if shell is None or name in replaced:
                continue
            group = view.config.group_of(name)
            self._logs[name].fields = {"instance": name, **({"group": group.name} if group else {})}
            shell.notify.env["HAVS_GROUP"] = group.name if group else ""
            if name not in changed:
                shell.view, shell.group = view, self._hooks_of(group)
            elif not shell.update(view, self._hooks_of(group)):  # not expected: the identity is the same
                replaced.append(name)
                fresh[name] = self._shell(view, name)
        now = _now()
        for shell in self.shells.values():
            inst = shell.inst
            if shell.group is None and inst is not None and inst.state == FAULT and not shell.faulty:
                shell.dispatch(inst.recover(now, REASON))  # a group's fault held it, and it is in none any more
        for group in made:
            self.apply(group, group.settle())
        for name in replaced:  # a new identity: the old instance hands over and releases, then the new starts
            self._log.info("vrrp.instance_replaced", instance=name)
            old = self._retire(self.shells[name])
            self.shells[name], self._logs[name] = fresh[name], fresh[name]._log
            self._spawn(self._begin_when_free(fresh[name], old))
        for name, shell in fresh.items():
            if name not in replaced:  # added
                self.shells[name] = shell
                self._logs[name] = shell._log
                self._begin_or_wait(shell)
        self.shells = {n: self.shells[n] for n in names if n in self.shells}  # config order
        self.set_priority_decrement(self.decrements)
        return True
