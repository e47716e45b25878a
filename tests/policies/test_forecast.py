"""Holt's linear trend with per-second trend over irregular sample times."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.decide_types import HoltState
from policies.forecast import ahead, forecast, update


def run(samples: list[tuple[float, float]], alpha: float = 0.5, beta: float = 0.3) -> HoltState:
    state: HoltState | None = None
    for t, x in samples:
        state = update(state, x, t, alpha, beta)
    assert state is not None
    return state


def test_first_sample_sets_the_level_and_no_trend() -> None:
    assert update(None, 12.0, 30.0, 0.5, 0.3) == HoltState(12.0, 0.0, 30.0)


def test_constant_series_has_no_trend() -> None:
    s = run([(t, 7.0) for t in range(0, 300, 15)])
    assert s.level == pytest.approx(7.0)
    assert s.trend == pytest.approx(0.0)
    assert forecast(s, 120.0) == pytest.approx(7.0)


def test_linear_ramp_learns_the_slope_per_second() -> None:
    # 0.1 req/s more every second, sampled every 15 s.
    s = run([(float(t), 5.0 + 0.1 * t) for t in range(0, 1500, 15)])
    assert s.trend == pytest.approx(0.1, rel=1e-3)
    assert forecast(s, 120.0) == pytest.approx(5.0 + 0.1 * (1485 + 120), rel=1e-3)


def test_irregular_intervals_learn_the_same_slope() -> None:
    times = [0.0]
    gaps = [15, 15, 45, 10, 15, 60, 15, 5, 30] * 12
    for g in gaps:
        times.append(times[-1] + g)
    s = run([(t, 2.0 + 0.05 * t) for t in times])
    assert s.trend == pytest.approx(0.05, rel=1e-3)
    assert s.time == times[-1]


def test_same_time_again_keeps_trend_and_time() -> None:
    s = run([(0.0, 10.0), (15.0, 13.0)])
    again = update(s, 20.0, 15.0, 0.5, 0.3)
    assert again.trend == s.trend
    assert again.time == s.time
    assert again.level == pytest.approx(0.5 * 20.0 + 0.5 * s.level)


def test_ahead_never_below_the_observed_rate() -> None:
    falling = run([(float(t), 100.0 - 0.5 * t) for t in range(0, 150, 15)])
    assert falling.trend < 0
    assert ahead(falling, 30.0, 120.0) == 30.0
    rising = run([(float(t), 10.0 + 0.5 * t) for t in range(0, 150, 15)])
    assert ahead(rising, 70.0, 120.0) > 70.0


@given(
    xs=st.lists(st.floats(0.0, 1e4, allow_nan=False), min_size=1, max_size=40),
    observed=st.floats(0.0, 1e4, allow_nan=False),
    horizon=st.floats(0.0, 3600.0),
)
def test_ahead_is_at_least_observed(xs: list[float], observed: float, horizon: float) -> None:
    s = run([(15.0 * i, x) for i, x in enumerate(xs)])
    assert ahead(s, observed, horizon) >= observed


def test_a_long_gap_starts_afresh() -> None:
    s = run([(float(t), 10.0 + 0.5 * t) for t in range(0, 150, 15)])
    assert update(s, 3.0, s.time + 151.0, 0.5, 0.3, max_gap=150.0) == HoltState(
        3.0, 0.0, s.time + 151.0
    )
    assert update(s, 3.0, s.time + 150.0, 0.5, 0.3, max_gap=150.0).trend != 0.0
