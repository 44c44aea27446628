"""When each real server's next check starts, and when a running one has timed out: the health shell's
timetable as a pure core (no clock: every call takes `now`).

One timer serves every check (not a timer and a task per server): the shell sleeps until `next_wake()`,
then asks `expired(now)` for the running checks past their deadline and `due(now)` for the checks to start.
Why one: where a syscall is dear (one slow CPU, no vDSO, as in the UML lab) a timer per check costs two
clock reads and a wake-up each; bench_load counts them.

- `due(now)` also starts checks planned up to `early` seconds ahead, so the checks of one wake-up go out
  together (at 500 checks/s and 10 ms, about five per wake-up): a health check a few ms early is no change
  an operator can see, a wake-up per check is a measurable share of the CPU.
- At most `max_in_flight` checks run at once; the rest wait in due order without their deadline running
  (a check's deadline is set by `begin` when it really starts): overload queues, it does not time out.
- A check with no deadline (`begin(key, None)`) times itself (the shell's coroutine probes).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class CheckSchedule(Generic[K]):
    __slots__ = ("_after", "_deadline_heap", "_deadlines", "_plan_heap", "_plans", "_running", "_seq", "early",
                 "max_in_flight")

    def __init__(self, max_in_flight: int = 64, early: float = 0.01) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.max_in_flight = max_in_flight
        self.early = early
        self._seq = itertools.count()
        self._plans: dict[K, tuple[float, int]] = {}  # key → (when, seq) of its one planned check
        self._plan_heap: list[tuple[float, int, K]] = []  # lazily pruned: entries whose seq is stale are skipped
        self._running: set[K] = set()
        self._after: dict[K, float] = {}  # plans made while the key's check runs: they start when it ends
        self._deadlines: dict[K, tuple[float, int]] = {}
        self._deadline_heap: list[tuple[float, int, K]] = []

    def __len__(self) -> int:
        return len(self._plans.keys() | self._running)

    @property
    def running(self) -> int:
        return len(self._running)

    def is_running(self, key: K) -> bool:
        return key in self._running

    def planned(self, key: K) -> float | None:
        plan = self._plans.get(key)
        return plan[0] if plan is not None else None

    def plan(self, key: K, when: float) -> None:
        """The next check of `key` starts at `when` (replacing any earlier plan). A running check keeps
        running; the plan applies when it has finished."""
        if key in self._running:
            self._after[key] = when
            return
        seq = next(self._seq)
        self._plans[key] = (when, seq)
        heapq.heappush(self._plan_heap, (when, seq, key))

    def drop(self, key: K) -> None:
        """Forget `key`: its plan, and its slot and deadline if it is running (the shell stops the check)."""
        self._plans.pop(key, None)
        self._running.discard(key)
        self._deadlines.pop(key, None)
        self._after.pop(key, None)

    def due(self, now: float) -> list[K]:
        """The checks to start now, in due order, as many as free slots allow. They count as running from
        here; `begin` gives each its deadline."""
        out: list[K] = []
        free = self.max_in_flight - len(self._running)
        horizon = now + self.early
        while free > 0:
            when = self._first_plan()
            if when is None or when > horizon:
                break
            key = heapq.heappop(self._plan_heap)[2]
            del self._plans[key]
            self._running.add(key)
            out.append(key)
            free -= 1
        return out

    def begin(self, key: K, deadline: float | None) -> None:
        """`key`'s check started; it times out at `deadline` (None: it times itself)."""
        self._running.add(key)
        if deadline is not None:
            seq = next(self._seq)
            self._deadlines[key] = (deadline, seq)
            heapq.heappush(self._deadline_heap, (deadline, seq, key))

    def finished(self, key: K) -> None:
        """`key`'s check ended (answered, failed or timed out): its slot is free."""
        self._running.discard(key)
        self._deadlines.pop(key, None)
        after = self._after.pop(key, None)
        if after is not None:
            self.plan(key, after)

    def expired(self, now: float) -> list[K]:
        """Running checks whose deadline has passed (each returned once; `finished` still to be called)."""
        out: list[K] = []
        heap, deadlines = self._deadline_heap, self._deadlines
        while heap and heap[0][0] <= now:
            _when, seq, key = heapq.heappop(heap)
            if deadlines.get(key, (None, -1))[1] == seq:
                del deadlines[key]
                out.append(key)
        return out

    def next_wake(self) -> float | None:
        """When the shell must next call `expired`/`due`: the earliest deadline, or the earliest plan if a
        slot is free for it (a plan due in the past means at once). None: nothing to do."""
        best = self._first(self._deadline_heap, self._deadlines)
        if len(self._running) < self.max_in_flight:
            when = self._first_plan()
            if when is not None and (best is None or when < best):
                best = when
        return best

    def _first_plan(self) -> float | None:
        return self._first(self._plan_heap, self._plans)

    @staticmethod
    def _first(heap: list[tuple[float, int, K]], live: dict[K, tuple[float, int]]) -> float | None:
        """The earliest time in `heap` still current in `live`, dropping the stale entries (replaced,
        dropped or finished) on the way."""
        while heap:
            when, seq, key = heap[0]
            if live.get(key, (None, -1))[1] == seq:
                return when
            heapq.heappop(heap)
        return None
