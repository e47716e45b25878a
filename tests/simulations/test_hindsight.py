"""The hindsight bound's arithmetic against brute force on small instances."""

from __future__ import annotations

import itertools
import math

from hypothesis import given
from hypothesis import strategies as st

from simulations.experiments.hindsight import (
    allocate,
    allocate_priced,
    monotone,
    schedule,
    schedule_cost,
)


@st.composite
def curves(draw: st.DrawFn) -> list[list[int]]:
    """Per interval, misses for n = 0 … (non-increasing, arbitrary shape)."""
    out = []
    for _ in range(draw(st.integers(1, 4))):
        start = draw(st.integers(0, 30))
        drops = draw(st.lists(st.integers(0, 12), min_size=0, max_size=5))
        curve = [start]
        for d in drops:
            curve.append(max(0, curve[-1] - d))
        out.append(curve)
    return out


def padded(curve: list[int], n: int) -> int:
    return curve[n] if n < len(curve) else curve[-1]


def brute_force(misses: list[list[int]], budget: int, floor: int) -> int | None:
    ranges = [range(floor, max(floor, len(c) - 1) + 1) for c in misses]
    best = None
    for combo in itertools.product(*ranges):
        if sum(padded(c, n) for c, n in zip(misses, combo, strict=True)) <= budget:
            cost = sum(combo)
            best = cost if best is None else min(best, cost)
    return best


def test_monotone_is_a_running_minimum() -> None:
    assert monotone([5, 3, 4, 0, 1]) == [5, 3, 3, 0, 0]


def test_budget_goes_where_it_saves_most() -> None:
    # interval 0: dropping from 3 to 2 replicas costs 1 miss; interval 1: 10 misses
    alloc = allocate([[20, 8, 1, 0], [30, 10, 0]], budget=1)
    assert alloc.replicas == (2, 2) and alloc.misses == 1 and alloc.feasible
    # interval 0 from 2 to 1 costs 7 misses per replica, interval 1 from 2 to 1 costs 10
    assert allocate([[20, 8, 1, 0], [30, 10, 0]], budget=9).replicas == (1, 2)
    assert allocate([[20, 8, 1, 0], [30, 10, 0]], budget=18).replicas == (1, 1)


def test_infeasible_when_even_the_most_replicas_miss_too_much() -> None:
    alloc = allocate([[9, 5, 4]], budget=3)
    assert not alloc.feasible and alloc.replicas == (2,) and alloc.misses == 4


@given(curves(), st.integers(0, 40), st.integers(0, 2))
def test_allocation_is_feasible_and_near_optimal(
    misses: list[list[int]], budget: int, floor: int
) -> None:
    alloc = allocate(misses, budget, floor)
    opt = brute_force(misses, budget, floor)
    assert all(n >= floor for n in alloc.replicas)
    got = sum(padded(c, n) for c, n in zip(misses, alloc.replicas, strict=True))
    assert got == alloc.misses
    if opt is None:
        assert not alloc.feasible
        return
    assert alloc.feasible and alloc.misses <= budget
    assert sum(alloc.replicas) >= opt
    # the greedy on the convex hulls is within one hull segment of the optimum
    longest = max(max(len(c) - 1, floor) - floor for c in misses)
    assert sum(alloc.replicas) <= opt + longest


def dp_cost(needs: list[int], lengths: list[float], startup: float, warm: int) -> float:
    """Cheapest ``Σ m·len + startup·Σ max(0, Δm)`` with ``m_k >= needs_k``, by dynamic
    programming over every count up to the largest need."""
    top = max([*needs, 0])
    best = dict.fromkeys([warm], 0.0)
    for need, length in zip(needs, lengths, strict=True):
        nxt: dict[int, float] = {}
        for m in range(need, top + 1):
            nxt[m] = min(c + m * length + startup * max(0, m - p) for p, c in best.items())
        best = nxt
    return min(best.values())


@given(
    st.lists(st.integers(0, 4), min_size=1, max_size=8),
    st.floats(0.0, 200.0),
    st.integers(0, 5),
    st.sampled_from([15.0, 30.0]),
)
def test_schedule_is_optimal(needs: list[int], startup: float, warm: int, interval: float) -> None:
    lengths = [interval] * len(needs)
    plan = schedule(needs, lengths, startup, warm)
    assert all(m >= n for m, n in zip(plan.replicas, needs, strict=True))
    starts, seconds = schedule_cost(plan.replicas, lengths, startup, warm)
    assert (starts, seconds) == (plan.starts, plan.replica_seconds)
    assert math.isclose(plan.replica_seconds, dp_cost(needs, lengths, startup, warm), abs_tol=1e-6)


def test_short_gaps_are_bridged_long_ones_are_not() -> None:
    plan = schedule([2, 0, 2, 0, 0, 0, 2], [30.0] * 7, startup=45.0, warm=0)
    assert plan.replicas == (2, 2, 2, 0, 0, 0, 2) and plan.starts == 4
    warm = schedule([0, 0, 0, 1], [30.0] * 4, startup=45.0, warm=1)
    assert warm.replicas == (0, 0, 0, 1) and warm.starts == 1
    kept = schedule([0, 1], [30.0] * 2, startup=45.0, warm=1)
    assert kept.replicas == (1, 1) and kept.starts == 0


@st.composite
def priced(draw: st.DrawFn) -> list[list[tuple[float, int]]]:
    """Per interval, a few ``(cost, misses)`` options of any shape."""
    return [
        draw(
            st.lists(
                st.tuples(st.integers(0, 20).map(float), st.integers(0, 15)),
                min_size=1,
                max_size=5,
            )
        )
        for _ in range(draw(st.integers(1, 4)))
    ]


@given(priced(), st.integers(0, 40))
def test_priced_allocation_keeps_the_budget_and_is_near_the_brute_force_optimum(
    options: list[list[tuple[float, int]]], budget: int
) -> None:
    got = allocate_priced(options, budget)
    assert len(got.choice) == len(options)
    assert got.misses == sum(o[c][1] for o, c in zip(options, got.choice, strict=True))
    assert got.cost == sum(o[c][0] for o, c in zip(options, got.choice, strict=True))
    fewest = sum(min(m for _, m in o) for o in options)
    assert got.feasible == (fewest <= budget)
    if not got.feasible:
        return
    assert got.misses <= budget
    best = min(
        sum(o[c][0] for o, c in zip(options, pick, strict=True))
        for pick in itertools.product(*(range(len(o)) for o in options))
        if sum(o[c][1] for o, c in zip(options, pick, strict=True)) <= budget
    )
    assert got.cost >= best
    # never dearer than each interval's cheapest option of fewest misses
    floor = sum(min(c for c, m in o if m == min(mm for _, mm in o)) for o in options)
    assert got.cost <= floor
    if budget == 0 or (len(options) == 1 and budget >= max(m for _, m in options[0])):
        assert got.cost == best  # nothing to trade, or everything affordable: exact


def test_priced_allocation_spends_the_budget_where_it_saves_the_most() -> None:
    # interval 0 saves 10 for 1 miss, interval 1 only 1 for 1 miss: budget 1 goes to interval 0
    got = allocate_priced([[(20.0, 0), (10.0, 1)], [(5.0, 0), (4.0, 1)]], 1)
    assert got.choice == (1, 0) and got.cost == 15.0 and got.misses == 1
