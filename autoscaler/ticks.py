"""Each policy ticks at its own interval with a fixed per-policy offset.

The offset is a hash of the policy key, so 1,000 policies spread evenly over their interval
instead of querying Prometheus together, and a restart keeps each policy's phase. Time comes
from the event loop, so tests step it with looptime instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

Tick = Callable[[str], Awaitable[None]]


def phase(key: str, interval: float) -> float:
    """The policy's fixed offset within its interval, in ``[0, interval)``."""
    return (zlib.crc32(key.encode()) / 2**32) * interval


def next_fire(last: float, interval: float, now: float) -> float:
    """The next due time after ``last``; ticks missed while a slow one ran are skipped."""
    due = last + interval
    if due <= now:
        missed = int((now - due) // interval) + 1
        due += missed * interval
    return due


@dataclass(slots=True)
class _Entry:
    interval: float
    generation: int
    running: bool = False


class Ticker:
    """Runs ``tick(key)`` for every scheduled key at its interval; one tick per key at a time.

    One task keeps a heap of due times and, each time it wakes, starts every tick due within
    ``granularity`` seconds together. Ticks stay spread by their phases, but the ones that
    share a slot send their queries in one burst, which costs far less CPU per query than
    waking the loop for each policy alone (a tick may start up to ``granularity`` early).
    """

    def __init__(
        self,
        tick: Tick,
        *,
        granularity: float = 0.25,
        on_start: Callable[[float], None] | None = None,
        on_skip: Callable[[], None] | None = None,
    ) -> None:
        self._tick = tick
        self._granularity = granularity
        self._on_start = on_start
        """Called with each started tick's lateness (seconds after its due time, at least 0)."""
        self._on_skip = on_skip
        """Called for each due tick skipped because the policy's previous one still runs."""
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, int, str, int]] = []
        self._seq = 0
        self._generation = 0
        self._changed = asyncio.Event()
        self._batches: set[asyncio.Task[None]] = set()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._runner: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def schedule(self, key: str, interval: float) -> None:
        """Start ticking ``key``, or move it to a new interval (its phase is kept)."""
        if self._stopping:
            return
        entry = self._entries.get(key)
        if entry is not None and entry.interval == interval:
            return
        self._generation += 1
        running = entry.running if entry is not None else False
        self._entries[key] = _Entry(interval, self._generation, running)
        now = asyncio.get_running_loop().time()
        due = now - (now % interval) + phase(key, interval)
        if due < now:
            due += interval
        self._push(due, key, self._generation)
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name="scheduler")

    def cancel(self, key: str) -> None:
        self._entries.pop(key, None)

    def _push(self, due: float, key: str, generation: int) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, key, generation))
        self._changed.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            if not self._heap:
                self._changed.clear()
                await self._changed.wait()
                continue
            wait = self._heap[0][0] - loop.time()
            if wait > 0:
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._changed.wait()
                continue
            horizon = loop.time() + self._granularity
            due_now: list[tuple[float, str, int]] = []
            while self._heap and self._heap[0][0] <= horizon:
                due, _, key, generation = heapq.heappop(self._heap)
                due_now.append((due, key, generation))
            batch: list[str] = []
            now = loop.time()
            for due, key, generation in due_now:
                entry = self._entries.get(key)
                if entry is None or entry.generation != generation:
                    continue  # cancelled or moved to another interval
                self._push(next_fire(due, entry.interval, horizon), key, generation)
                if not entry.running:
                    entry.running = True
                    batch.append(key)
                    if self._on_start is not None:
                        self._on_start(max(0.0, now - due))
                elif self._on_skip is not None:  # a tick still running skips this turn
                    self._on_skip()
            if batch:
                task = asyncio.create_task(self._run_batch(batch))
                self._batches.add(task)
                task.add_done_callback(self._batches.discard)

    async def _run_batch(self, keys: list[str]) -> None:
        self._in_flight += len(keys)
        self._idle.clear()
        try:
            await asyncio.gather(*(self._one(key) for key in keys))
        finally:
            self._in_flight -= len(keys)
            if self._in_flight == 0:
                self._idle.set()

    async def _one(self, key: str) -> None:
        try:
            await self._tick(key)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("tick failed", extra={"policy": key})
        finally:
            entry = self._entries.get(key)
            if entry is not None:
                entry.running = False

    async def drain(self, grace: float) -> None:
        """Start no new ticks, let running ones finish (up to ``grace`` s), then stop."""
        self._stopping = True
        self._changed.set()
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
        except TimeoutError:
            log.warning(
                "ticks still running at shutdown; cancelling", extra={"ticks": self._in_flight}
            )
        await self.close()

    async def close(self) -> None:
        self._stopping = True
        self._entries.clear()
        tasks = [*self._batches, *([self._runner] if self._runner else [])]
        self._runner = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
