"""A small discrete-event engine: a heap of ``(time, priority, sequence, callback, argument)``.

The sequence number breaks ties between events at the same time and priority in the order they
were scheduled, so a run is a pure function of its inputs and seed. Callbacks are plain
functions of one argument (no generator processes): they run fast and type-check cleanly.
Events are never cancelled; a callback whose subject went away (a deleted pod, say) checks its
own state and returns.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import Any, Final, TypeVar

T = TypeVar("T")

URGENT: Final = 0
"""Priority of events that must run before ordinary ones at the same instant."""
NORMAL: Final = 1
LATE: Final = 2
"""Priority of observers (scrapes, controllers) that should see the instant's other events."""


class EmptySchedule(Exception):
    """``step()`` was called with no event left."""


class Engine:
    """Simulated time and the events still to happen.

    Besides the heap, the engine can be given one pre-sorted *feed* (a request stream known in
    advance): ``fn(k)`` runs at ``times[k]``, merged with the heap without pushing every item
    through it, which halves the heap traffic of an open queueing model. A feed item runs after
    ``URGENT`` heap events of the same instant and before all others.
    """

    __slots__ = ("_counter", "_feed_fn", "_feed_next", "_feed_times", "_heap", "now", "push")

    def __init__(self, start: float = 0.0) -> None:
        self.now: float = start
        self._heap: list[tuple[float, int, int, Callable[[Any], None], Any]] = []
        self._counter = itertools.count()
        self._feed_times: list[float] = []
        self._feed_fn: Callable[[int], None] | None = None
        self._feed_next = 0
        heap = self._heap
        counter = self._counter
        heappush = heapq.heappush

        def push(at: float, fn: Callable[[Any], None], arg: Any) -> None:
            heappush(heap, (at, NORMAL, next(counter), fn, arg))

        self.push: Callable[[float, Callable[[Any], None], Any], None] = push
        """Hot-path ``schedule_at`` at NORMAL priority without checks: ``at`` must be >= now."""

    def feed(self, times: list[float], fn: Callable[[int], None]) -> None:
        """Call ``fn(k)`` at ``times[k]`` for every ``k``; ``times`` sorted, none in the past."""
        if self._feed_fn is not None and self._feed_next < len(self._feed_times):
            raise ValueError("the engine already has a feed that has not run out")
        if times and not times[0] >= self.now:
            raise ValueError(f"feed starts at {times[0]!r}, before the current time {self.now!r}")
        self._feed_times = times
        self._feed_fn = fn
        self._feed_next = 0

    def schedule(
        self, delay: float, fn: Callable[[T], None], arg: T, priority: int = NORMAL
    ) -> None:
        """Call ``fn(arg)`` ``delay`` seconds from now."""
        if not delay >= 0.0:
            raise ValueError(f"delay must be a non-negative number, got {delay!r}")
        heapq.heappush(self._heap, (self.now + delay, priority, next(self._counter), fn, arg))

    def schedule_at(
        self, at: float, fn: Callable[[T], None], arg: T, priority: int = NORMAL
    ) -> None:
        """Call ``fn(arg)`` at simulated time ``at`` (not before now)."""
        if not at >= self.now:
            raise ValueError(f"cannot schedule at {at!r}, before the current time {self.now!r}")
        heapq.heappush(self._heap, (at, priority, next(self._counter), fn, arg))

    def peek(self) -> float:
        """Time of the next event, or infinity when none is left."""
        t = self._heap[0][0] if self._heap else math.inf
        if self._feed_next < len(self._feed_times):
            t = min(t, self._feed_times[self._feed_next])
        return t

    def __len__(self) -> int:
        return len(self._heap) + len(self._feed_times) - self._feed_next

    def _feed_first(self) -> bool:
        k = self._feed_next
        if k >= len(self._feed_times):
            return False
        if not self._heap:
            return True
        t, prio = self._heap[0][0], self._heap[0][1]
        at = self._feed_times[k]
        return at < t or (at == t and prio > URGENT)

    def step(self) -> None:
        """Run the next event."""
        if self._feed_first():
            k = self._feed_next
            self._feed_next = k + 1
            self.now = self._feed_times[k]
            assert self._feed_fn is not None
            self._feed_fn(k)
            return
        if not self._heap:
            raise EmptySchedule("no events left to run")
        at, _, _, fn, arg = heapq.heappop(self._heap)
        self.now = at
        fn(arg)

    def run(self, until: float | None = None) -> None:
        """Run events until none is left, or every event before ``until``; then now = ``until``.

        Events at exactly ``until`` stay scheduled for a later ``run``.
        """
        if until is None:
            until = math.inf
        elif not until > self.now:
            raise ValueError(
                f"until must be greater than the current time (until={until!r}, now={self.now!r})"
            )
        heap = self._heap
        pop = heapq.heappop
        times = self._feed_times
        feed_fn = self._feed_fn
        k = self._feed_next
        n = len(times)
        next_feed = times[k] if k < n else math.inf
        try:
            while True:
                if heap:
                    top = heap[0]
                    at = top[0]
                    if next_feed < at or (next_feed == at and top[1] > URGENT):
                        if next_feed >= until:
                            break
                        self.now = next_feed
                        k += 1
                        self._feed_next = k
                        feed_fn(k - 1)  # type: ignore[misc]
                        next_feed = times[k] if k < n else math.inf
                        continue
                    if at >= until:
                        break
                    pop(heap)
                    self.now = at
                    top[3](top[4])  # (time, priority, seq, fn, arg)
                elif next_feed < until:
                    self.now = next_feed
                    k += 1
                    self._feed_next = k
                    feed_fn(k - 1)  # type: ignore[misc]
                    next_feed = times[k] if k < n else math.inf
                else:
                    break
        finally:
            self._feed_next = k
        if until != math.inf:
            self.now = until
