"""One timer per policy, each firing at its own interval with a fixed per-policy offset.

The offset is a hash of the policy key, so 1,000 policies spread evenly over their interval
instead of querying Prometheus together, and a restart keeps each policy's phase. Time comes
from the event loop, so tests step it with looptime instead of sleeping.
"""

from __future__ import annotations

import asyncio
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
class _Timer:
    interval: float
    task: asyncio.Task[None]


class Scheduler:
    """Runs ``tick(key)`` for every scheduled key; one tick per key at a time."""

    def __init__(self, tick: Tick) -> None:
        self._tick = tick
        self._timers: dict[str, _Timer] = {}
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False

    def __len__(self) -> int:
        return len(self._timers)

    def schedule(self, key: str, interval: float) -> None:
        """Start ticking ``key``, or move it to a new interval (its phase is kept)."""
        if self._stopping:
            return
        timer = self._timers.get(key)
        if timer is not None:
            if timer.interval == interval:
                return
            timer.task.cancel()
        task = asyncio.create_task(self._run(key, interval), name=f"tick {key}")
        self._timers[key] = _Timer(interval, task)

    def cancel(self, key: str) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.task.cancel()

    async def _run(self, key: str, interval: float) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = now - (now % interval) + phase(key, interval)
        if due < now:
            due += interval
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            if self._stopping:
                return
            self._in_flight += 1
            self._idle.clear()
            try:
                await self._tick(key)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("tick failed", extra={"policy": key})
            finally:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._idle.set()
            due = next_fire(due, interval, loop.time())

    async def drain(self, grace: float) -> None:
        """Start no new ticks, let running ones finish (up to ``grace`` s), then stop."""
        self._stopping = True
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
        except TimeoutError:
            log.warning(
                "ticks still running at shutdown; cancelling", extra={"ticks": self._in_flight}
            )
        await self.close()

    async def close(self) -> None:
        tasks = [t.task for t in self._timers.values()]
        self._timers.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
