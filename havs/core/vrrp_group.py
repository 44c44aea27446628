"""keepalived's `vrrp_sync_group`, pure: instances of one director that always share a state.

Events in (a member's state change, its own link verdict, its wish to become MASTER) with `now`; actions
out (`Force` a member to FAULT, BACKUP or MASTER; `GroupChanged` for the group's notify hook and status).
The VRRP core carries the forces out as inputs of its table (`VrrpInstance.force`).

The rules (keepalived 2.x, vrrp_sync.c):
- a member with a faulty link of its own puts every member in FAULT; when no member is faulty any more,
  every member goes back to BACKUP (and holds its election from there);
- a member that goes MASTER takes the others with it; a MASTER that steps down to BACKUP (a higher
  priority heard) takes the others down with it, so the VIP and the gateway (or the IPv4 and the IPv6
  instance of one service) never end up on different directors;
- a BACKUP member whose Master_Down runs out only *wants* MASTER (`WantMaster` from the core); the group
  goes MASTER when every member wants it, i.e. every member's master has gone silent, or when a member
  is MASTER already (keepalived's vrrp_sync_can_goto_master: prefer BACKUP to thrashing). On a director
  crash every member's timer runs out within about one advert interval of the first.

The group's state is derived from its members': FAULT if any is, MASTER if all are (RESIGNING counts as
MASTER: it still holds the addresses, and no hook runs for it), INIT if all are (stopped), BACKUP if all
are; a mixture (a move half done, a start or stop in progress) leaves it where it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from havs.core.vrrp_model import BACKUP, FAULT, INIT, MASTER, RESIGNING, State

REASON = "sync_group"


@dataclass(frozen=True)
class Force:
    """Move `instance` to `to` (FAULT, BACKUP or MASTER): `VrrpInstance.force(to, now, reason)`."""

    instance: str
    to: State
    reason: str = REASON


@dataclass(frozen=True)
class GroupChanged:
    group: str
    from_: str
    to: str
    reason: str


GroupAction = Force | GroupChanged


def derive(states: Iterable[str]) -> str | None:
    """The group's state from its members' (None: a mixture, the group stays where it was)."""
    values = {MASTER if s == RESIGNING else s for s in states}
    if FAULT in values:
        return str(FAULT)
    if len(values) == 1:
        return str(values.pop())
    return None


class VrrpGroup:
    def __init__(self, name: str, members: Iterable[str], now: float,
                 states: Mapping[str, str] | None = None, faulty: Iterable[str] = ()) -> None:
        """`states`/`faulty`: the members' as they are (a group rebuilt by a reload); default INIT, none."""
        self.name = name
        self.members = tuple(members)
        self.states: dict[str, str] = {m: str((states or {}).get(m, INIT)) for m in self.members}
        self.faulty: set[str] = set(faulty) & set(self.members)  # members whose own links are down
        self.wants: set[str] = set()  # BACKUP members whose Master_Down ran out
        self.state = derive(self.states.values()) or str(INIT)
        self.since = now
        self._cause = ""  # what set the current moves going: the group's change names it, not "sync_group"

    # ------------------------------------------------------------------------------------- inputs

    def fault(self, member: str, faulty: bool, now: float, reason: str) -> list[GroupAction]:
        """`member`'s own tracked links are down (`faulty`) or all up again; `reason` is the member's own
        (interface_down, interface_up): the others are forced with REASON."""
        if member not in self.states:  # a removed member's shell, still handing over: not ours
            return []
        was = bool(self.faulty)
        self._cause = reason
        (self.faulty.add if faulty else self.faulty.discard)(member)
        if faulty:
            # every member that runs goes FAULT (an INIT one not yet started is started in FAULT by its
            # shell, which asks `any_faulty`)
            return [Force(m, FAULT, reason if m == member else REASON) for m in self.members
                    if self.states[m] not in (FAULT, INIT, RESIGNING)]
        if was and not self.faulty:
            return [Force(m, BACKUP, reason if m == member else REASON) for m in self.members
                    if self.states[m] == FAULT]
        return []

    def settle(self) -> list[GroupAction]:
        """A group made from running members (a reload): a faulty member's FAULT takes the others now, not at
        its next link event (meanwhile the group is FAULT and a member MASTER: the peer's group can be left
        with one member that follows us and one that wants MASTER, and take neither)."""
        if not self.faulty:
            return []
        return [Force(m, FAULT) for m in self.members if self.states[m] not in (FAULT, INIT, RESIGNING)]

    @property
    def any_faulty(self) -> bool:
        return bool(self.faulty)

    def want_master(self, member: str, want: bool, now: float) -> list[GroupAction]:
        if member not in self.states:
            return []
        (self.wants.add if want else self.wants.discard)(member)
        if not want or self.faulty:
            return []
        if self.wants >= set(self.members) or MASTER in self.states.values():
            self._cause = "master_down"
            return [Force(m, MASTER) for m in self.members if self.states[m] == BACKUP]
        return []

    def state_changed(self, member: str, from_: str, to: str, now: float, reason: str) -> list[GroupAction]:
        self.states[member] = to
        if reason != REASON:
            self._cause = reason
        if to != BACKUP:
            self.wants.discard(member)
        actions: list[GroupAction] = []
        if to == MASTER:
            actions += [Force(m, MASTER) for m in self.members if m != member and self.states[m] == BACKUP]
        elif from_ == MASTER and to == BACKUP:
            actions += [Force(m, BACKUP) for m in self.members if m != member and self.states[m] == MASTER]
        new = derive(self.states.values())
        if new is not None and new != self.state:
            actions.append(GroupChanged(self.name, self.state, new, self._cause or reason))
            self.state, self.since = new, now
        return actions

    def snapshot(self) -> dict[str, object]:
        return {"state": self.state, "since": self.since, "members": list(self.members),
                "faulty": sorted(self.faulty), "want_master": sorted(self.wants)}
