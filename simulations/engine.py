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
    """Simulated time and the events still to happen."""

    __slots__ = ("_counter", "_heap", "now")

    def __init__(self, start: float = 0.0) -> None:
        self.now: float = start
        self._heap: list[tuple[float, int, int, Callable[[Any], None], Any]] = []
        self._counter = itertools.count()

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
        return self._heap[0][0] if self._heap else math.inf

    def __len__(self) -> int:
        return len(self._heap)

    def step(self) -> None:
        """Run the next event."""
        if not self._heap:
            raise EmptySchedule("no events left to run")
        at, _, _, fn, arg = heapq.heappop(self._heap)
        self.now = at
        fn(arg)

    def run(self, until: float | None = None) -> None:
        """Run events until none is left, or every event before ``until``; then now = ``until``.

        Events at exactly ``until`` stay scheduled for a later ``run``.
        """
        heap = self._heap
        pop = heapq.heappop
        if until is None:
            while heap:
                at, _, _, fn, arg = pop(heap)
                self.now = at
                fn(arg)
            return
        if not until > self.now:
            raise ValueError(
                f"until must be greater than the current time (until={until!r}, now={self.now!r})"
            )
        while heap and heap[0][0] < until:
            at, _, _, fn, arg = pop(heap)
            self.now = at
            fn(arg)
        self.now = until
