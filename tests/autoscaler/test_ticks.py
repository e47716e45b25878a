"""Per-policy timers: phases spread over the interval, no drift, drain on shutdown (looptime)."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoscaler.ticks import Ticker, next_fire, phase


@given(st.text(max_size=40), st.floats(min_value=0.1, max_value=3600))
def test_phase_is_within_the_interval_and_stable(key: str, interval: float) -> None:
    p = phase(key, interval)
    assert 0 <= p < interval
    assert phase(key, interval) == p


def test_a_thousand_policies_spread_over_the_interval() -> None:
    buckets = Counter(int(phase(f"ns/policy-{i}", 15.0) // 1.5) for i in range(1000))
    assert set(buckets) == set(range(10))
    assert max(buckets.values()) < 140 and min(buckets.values()) > 60


@given(
    st.floats(min_value=0, max_value=1e6),
    st.floats(min_value=0.5, max_value=100),
    st.floats(min_value=0, max_value=1000),
)
def test_next_fire_skips_missed_ticks_without_drift(
    last: float, interval: float, late: float
) -> None:
    now = last + late
    due = next_fire(last, interval, now)
    assert due > now - 1e-6
    assert due - now <= interval + 1e-6
    ticks = (due - last) / interval
    assert abs(ticks - round(ticks)) < 1e-6


@pytest.mark.looptime
async def test_each_policy_ticks_at_its_interval() -> None:
    loop = asyncio.get_running_loop()
    fired: list[tuple[str, float]] = []

    async def tick(key: str) -> None:
        fired.append((key, loop.time()))

    scheduler = Ticker(tick)
    start = loop.time()
    scheduler.schedule("a/fast", 1.0)
    scheduler.schedule("a/slow", 5.0)
    await asyncio.sleep(20.0)
    await scheduler.close()

    fast = [t for k, t in fired if k == "a/fast"]
    slow = [t for k, t in fired if k == "a/slow"]
    assert len(fast) in (19, 20) and len(slow) == 4
    assert all(abs((b - a) - 1.0) < 1e-6 for a, b in itertools.pairwise(fast))
    assert all(abs((t % 5.0) - phase("a/slow", 5.0)) < 1e-6 for t in slow)
    assert fast[0] - start < 1.0


@pytest.mark.looptime
async def test_a_slow_tick_skips_instead_of_piling_up() -> None:
    loop = asyncio.get_running_loop()
    fired: list[float] = []

    async def tick(key: str) -> None:
        fired.append(loop.time())
        await asyncio.sleep(2.5)

    late: list[float] = []
    skipped: list[None] = []
    scheduler = Ticker(tick, on_start=late.append, on_skip=lambda: skipped.append(None))
    scheduler.schedule("a/b", 1.0)
    await asyncio.sleep(10.0)
    await scheduler.close()
    assert all(abs((b - a) - 3.0) < 1e-6 for a, b in itertools.pairwise(fired))
    # Each 2.5 s tick makes the next two due times pass while it runs: counted, not late.
    assert len(late) == len(fired) and all(x < 1e-6 for x in late)
    assert len(skipped) in (2 * len(fired) - 2, 2 * len(fired) - 1, 2 * len(fired))
    assert len(fired) >= 3


@pytest.mark.looptime
async def test_interval_change_and_cancel() -> None:
    fired: list[str] = []

    async def tick(key: str) -> None:
        fired.append(key)

    scheduler = Ticker(tick)
    scheduler.schedule("a/b", 1.0)
    await asyncio.sleep(5.0)
    scheduler.schedule("a/b", 10.0)
    before = len(fired)
    await asyncio.sleep(9.0)
    assert len(fired) - before <= 1
    scheduler.cancel("a/b")
    before = len(fired)
    await asyncio.sleep(30.0)
    assert len(fired) == before
    assert len(scheduler) == 0


@pytest.mark.looptime
async def test_drain_lets_running_ticks_finish_and_starts_none() -> None:
    loop = asyncio.get_running_loop()
    finished: list[float] = []
    started = asyncio.Event()

    async def tick(key: str) -> None:
        started.set()
        await asyncio.sleep(3.0)
        finished.append(loop.time())

    scheduler = Ticker(tick)
    scheduler.schedule("a/b", 1.0)
    await started.wait()
    t0 = loop.time()
    await scheduler.drain(grace=5.0)
    assert len(finished) == 1 and finished[0] - t0 <= 3.0 + 1e-6
    scheduler.schedule("a/c", 1.0)
    assert len(scheduler) == 0


@pytest.mark.looptime
async def test_drain_cancels_ticks_that_outlive_the_grace() -> None:
    loop = asyncio.get_running_loop()
    started = asyncio.Event()
    finished: list[str] = []

    async def tick(key: str) -> None:
        started.set()
        await asyncio.sleep(60.0)
        finished.append(key)

    scheduler = Ticker(tick)
    scheduler.schedule("a/b", 1.0)
    await started.wait()
    t0 = loop.time()
    await scheduler.drain(grace=2.0)
    assert loop.time() - t0 == pytest.approx(2.0)
    assert finished == []


@pytest.mark.looptime
async def test_a_failing_tick_does_not_stop_the_timer() -> None:
    calls = 0

    async def tick(key: str) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("boom")

    scheduler = Ticker(tick)
    scheduler.schedule("a/b", 1.0)
    await asyncio.sleep(5.0)
    await scheduler.close()
    assert calls >= 4


@pytest.mark.looptime
async def test_ticks_due_together_start_in_one_slot() -> None:
    loop = asyncio.get_running_loop()
    starts: dict[str, list[float]] = {}

    async def tick(key: str) -> None:
        starts.setdefault(key, []).append(loop.time())

    scheduler = Ticker(tick, granularity=0.05)
    for i in range(200):
        scheduler.schedule(f"ns/p{i}", 1.0)
    await asyncio.sleep(10.0)
    await scheduler.close()

    assert len(starts) == 200
    assert all(len(times) in (9, 10, 11) for times in starts.values())
    first_second = {round(t, 6) for times in starts.values() for t in times if t < 1.0}
    assert len(first_second) <= 21  # slots of 50 ms, not one wake-up per policy
    for key, times in starts.items():
        target = phase(key, 1.0)
        for t in times:
            off = (t - target) % 1.0
            assert min(off, 1.0 - off) <= 0.05 + 1e-6, key  # each keeps its phase
