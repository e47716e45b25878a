"""The event engine: order, ties, run(until) and its errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulations.serving.clock import LATE, URGENT, EmptySchedule, Engine


def test_events_run_in_time_then_priority_then_schedule_order() -> None:
    engine = Engine()
    seen: list[str] = []
    engine.schedule(2.0, seen.append, "t2")
    engine.schedule(1.0, seen.append, "t1-late", LATE)
    engine.schedule(1.0, seen.append, "t1-a")
    engine.schedule(1.0, seen.append, "t1-urgent", URGENT)
    engine.schedule(1.0, seen.append, "t1-b")
    engine.run()
    assert seen == ["t1-urgent", "t1-a", "t1-b", "t1-late", "t2"]
    assert engine.now == 2.0


def test_run_until_stops_before_until_and_sets_now() -> None:
    engine = Engine()
    seen: list[float] = []

    def tick(_: None) -> None:
        seen.append(engine.now)
        engine.schedule(1.0, tick, None)

    engine.schedule(0.0, tick, None)
    engine.run(until=3.0)
    assert seen == [0.0, 1.0, 2.0]
    assert engine.now == 3.0
    engine.run(until=4.5)
    assert seen == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert len(engine) == 1 and engine.peek() == 5.0


def test_run_until_must_be_in_the_future() -> None:
    engine = Engine(start=10.0)
    with pytest.raises(ValueError, match="until must be greater than the current time"):
        engine.run(until=10.0)
    with pytest.raises(ValueError, match="until must be greater than the current time"):
        engine.run(until=3.0)


def test_bad_delays_and_past_times_are_refused() -> None:
    engine = Engine(start=5.0)
    with pytest.raises(ValueError, match="non-negative"):
        engine.schedule(-1.0, print, None)
    with pytest.raises(ValueError, match="non-negative"):
        engine.schedule(float("nan"), print, None)
    with pytest.raises(ValueError, match="before the current time"):
        engine.schedule_at(4.0, print, None)


def test_step_runs_one_event_and_complains_when_empty() -> None:
    engine = Engine()
    seen: list[int] = []
    engine.schedule(1.5, seen.append, 7)
    engine.step()
    assert seen == [7] and engine.now == 1.5
    with pytest.raises(EmptySchedule):
        engine.step()


@given(st.lists(st.tuples(st.floats(0, 100, allow_nan=False), st.integers(0, 2)), max_size=60))
def test_any_schedule_runs_sorted_and_stable(items: list[tuple[float, int]]) -> None:
    engine = Engine()
    seen: list[int] = []
    for k, (t, prio) in enumerate(items):
        engine.schedule_at(t, seen.append, k, prio)
    engine.run()
    expected = sorted(range(len(items)), key=lambda k: (items[k][0], items[k][1], k))
    assert seen == expected


def test_feed_merges_with_the_heap() -> None:
    engine = Engine()
    seen: list[str] = []
    engine.schedule_at(1.0, seen.append, "heap-normal")
    engine.schedule_at(1.0, seen.append, "heap-urgent", URGENT)
    engine.schedule_at(0.5, seen.append, "heap-early")
    engine.feed([1.0, 2.0, 3.0], lambda k: seen.append(f"feed{k}"))
    assert engine.peek() == 0.5 and len(engine) == 6
    engine.run(until=2.5)
    assert seen == ["heap-early", "heap-urgent", "feed0", "heap-normal", "feed1"]
    engine.step()
    assert seen[-1] == "feed2" and engine.now == 3.0
    with pytest.raises(EmptySchedule):
        engine.step()


def test_feed_cannot_start_in_the_past_or_overlap() -> None:
    engine = Engine(start=5.0)
    with pytest.raises(ValueError, match="before the current time"):
        engine.feed([1.0], print)
    engine.feed([6.0], print)
    with pytest.raises(ValueError, match="already has a feed"):
        engine.feed([7.0], print)


@given(
    st.lists(st.floats(0, 50, allow_nan=False), max_size=30),
    st.lists(st.floats(0, 50, allow_nan=False), max_size=30),
)
def test_feed_and_heap_interleave_in_time_order(heap_times: list[float], feed: list[float]) -> None:
    engine = Engine()
    seen: list[float] = []
    for t in heap_times:
        engine.schedule_at(t, lambda _: seen.append(engine.now), None)
    engine.feed(sorted(feed), lambda _: seen.append(engine.now))
    engine.run()
    assert seen == sorted(heap_times + feed)
