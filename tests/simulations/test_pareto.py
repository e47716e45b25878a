"""Pareto frontier and the GPU-hours at a target attainment: properties and small cases."""

from __future__ import annotations

import itertools
import math

from hypothesis import given
from hypothesis import strategies as st

from simulations.experiments.pareto import Point, frontier, gpu_hours_at

coords = st.tuples(
    st.floats(0.0, 1.0, allow_nan=False), st.floats(0.0, 100.0, allow_nan=False)
).map(lambda t: Point(*t))
clouds = st.lists(coords, max_size=30)


def dominated(p: Point, q: Point) -> bool:
    """``q`` is at least as good as ``p`` on both axes and better on one."""
    return (
        q.gpu_hours <= p.gpu_hours
        and q.attainment >= p.attainment
        and (q.gpu_hours < p.gpu_hours or q.attainment > p.attainment)
    )


def test_small_case() -> None:
    pts = [Point(0.9, 10), Point(0.95, 12), Point(0.93, 13), Point(0.99, 20), Point(0.8, 10)]
    assert frontier(pts) == [0, 1, 3]
    assert gpu_hours_at([pts[i] for i in frontier(pts)], 0.97) == 12 + 0.5 * 8
    assert gpu_hours_at([pts[i] for i in frontier(pts)], 0.995) is None
    assert gpu_hours_at([pts[i] for i in frontier(pts)], 0.5) == 10


def test_non_finite_points_are_left_out() -> None:
    assert frontier([Point(math.nan, 1.0), Point(0.5, math.inf), Point(0.4, 2.0)]) == [2]


@given(clouds)
def test_frontier_is_exactly_the_non_dominated_points(points: list[Point]) -> None:
    front = frontier(points)
    chosen = [points[i] for i in front]
    for p in chosen:
        assert not any(dominated(p, q) for q in points)
    for i, p in enumerate(points):
        if i not in front:
            # left out: dominated, or equal to a point that is kept
            assert any(dominated(p, q) or q == p for q in chosen)
    assert all(
        a.gpu_hours < b.gpu_hours and a.attainment < b.attainment
        for a, b in itertools.pairwise(chosen)
    )


@given(clouds, st.floats(0.0, 1.0))
def test_interpolation_lies_between_its_neighbours(points: list[Point], target: float) -> None:
    curve = [points[i] for i in frontier(points)]
    g = gpu_hours_at(curve, target)
    meeting = [p for p in points if p.attainment >= target]
    if not meeting:
        assert g is None
        return
    assert g is not None
    # never more than the cheapest configuration that meets the target
    assert g <= min(p.gpu_hours for p in meeting) + 1e-9
    # never less than the most expensive frontier point that misses it
    below = [p.gpu_hours for p in curve if p.attainment < target]
    if below:
        assert g >= max(below) - 1e-9


@given(clouds, st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_interpolation_rises_with_the_target(points: list[Point], a: float, b: float) -> None:
    curve = [points[i] for i in frontier(points)]
    lo, hi = sorted((a, b))
    g_lo, g_hi = gpu_hours_at(curve, lo), gpu_hours_at(curve, hi)
    if g_hi is not None:
        assert g_lo is not None and g_lo <= g_hi + 1e-9


@given(clouds)
def test_interpolation_is_exact_at_frontier_points(points: list[Point]) -> None:
    curve = [points[i] for i in frontier(points)]
    for p in curve:
        g = gpu_hours_at(curve, p.attainment)
        assert g is not None and math.isclose(g, p.gpu_hours, rel_tol=1e-9, abs_tol=1e-9)
