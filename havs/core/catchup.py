"""When a returning director may take the addresses back: after its connection table has caught up with
the master's, or at a deadline. Pure: the caller passes `now`, the master's answer and its own table.

The returning director (higher priority, BACKUP, connection sync configured) holds preemption from its
start. It asks the master to replay its connection table as kernel sync messages (the kernel's own sync
has no bulk resync) and to say which (protocol, client, virtual, real server) tuples it replayed. It is
caught up when every one of them is in its own kernel table. Requests repeat, further apart each time,
until then (a replay datagram may be lost); at `deadline` seconds it preempts anyway, and says so.
It also stops waiting when it becomes MASTER on its own (the master died meanwhile: a failover is never
held up) — and the hold only ever defers a preemption: a first start or a failover does not wait for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from havs.core.ipvs_sync_wire import Key

RETRY = 1.0  # first re-request; doubles up to MAX_BACKOFF × RETRY
MAX_BACKOFF = 8
REPLAY_GAP = 0.5  # a master replays at most once per this many seconds, whoever asks


@dataclass(frozen=True)
class SendRequest:
    nonce: int


@dataclass(frozen=True)
class Progress:
    have: int
    total: int


@dataclass(frozen=True)
class Released:
    """reason: caught_up, deadline, became_master, stopped."""

    reason: str
    waited: float
    total: int | None  # tuples the master replayed (None: no answer came)
    missing: int | None


Action = SendRequest | Progress | Released


class CatchUp:
    def __init__(self, now: float, *, deadline: float, first_nonce: int, retry: float = RETRY) -> None:
        if deadline < 0 or retry <= 0:
            raise ValueError("deadline ≥ 0 and retry > 0")
        self.started, self.deadline, self.retry = now, deadline, retry
        self.first_nonce = first_nonce
        self.nonce = first_nonce - 1  # the last one sent
        self.requested_at: float | None = None
        self.requests = 0
        self.expected: frozenset[Key] | None = None
        self.missing: int | None = None
        self.released: Released | None = None

    @property
    def done(self) -> bool:
        return self.released is not None

    def _release(self, reason: str, now: float) -> list[Action]:
        if self.released is not None:
            return []
        total = len(self.expected) if self.expected is not None else None
        self.released = Released(reason, now - self.started, total, self.missing)
        return [self.released]

    def _gap(self) -> float:
        return self.retry * min(MAX_BACKOFF, 2 ** max(0, self.requests - 1))

    def next_wake(self) -> float | None:
        """When `tick` has something to do next (None: released)."""
        if self.released is not None:
            return None
        end = self.started + self.deadline
        return end if self.requested_at is None else min(end, self.requested_at + self._gap())

    def tick(self, now: float) -> list[Action]:
        if self.released is not None:
            return []
        if now >= self.started + self.deadline:
            return self._release("deadline", now)
        if self.requested_at is None or now >= self.requested_at + self._gap():
            self.nonce += 1
            self.requests += 1
            self.requested_at = now
            return [SendRequest(self.nonce)]
        return []

    def answer(self, nonce: int, keys: frozenset[Key], now: float) -> list[Action]:
        """The master's list of what it replayed for one of our requests (a late answer still counts)."""
        if self.released is not None or not self.first_nonce <= nonce <= self.nonce:
            return []
        self.expected = keys
        self.missing = len(keys)
        return self._release("caught_up", now) if not keys else []

    def table(self, own: Iterable[Key], now: float) -> list[Action]:
        """Our kernel's entries now; caught up when every replayed tuple is among them."""
        if self.released is not None or self.expected is None:
            return []
        missing = len(self.expected - set(own))
        changed = missing != self.missing
        self.missing = missing
        if missing == 0:
            return self._release("caught_up", now)
        return [Progress(len(self.expected) - missing, len(self.expected))] if changed else []

    def became_master(self, now: float) -> list[Action]:
        return self._release("became_master", now)

    def stop(self, now: float) -> list[Action]:
        return self._release("stopped", now)


class ReplayLimiter:
    """The master's side: forged or repeated requests must not turn into a flood on the sync link."""

    def __init__(self, gap: float = REPLAY_GAP) -> None:
        self.gap = gap
        self.last: float | None = None

    def allow(self, now: float) -> bool:
        if self.last is not None and now - self.last < self.gap:
            return False
        self.last = now
        return True
