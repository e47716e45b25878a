"""Each metric type's proposal rule."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from policies.decide_types import Proposal
from policies.metrics.arrival_rate import arrival_rate
from policies.metrics.base import ceil_div
from policies.metrics.latency import LATENCY_DEAD_BAND, latency
from policies.metrics.queue_depth import queue_depth
from policies.schema import ArrivalRateMetric, LatencyMetric, LatencyTarget, QueueDepthMetric

QUEUE = QueueDepthMetric("queue", "q", 4.0)
LAT = LatencyMetric("latency", "l", 2.0)
LOAD = ArrivalRateMetric("load", "r", 3.5, LatencyTarget(0.95, 2.0))


def n(p: Proposal) -> int:
    assert p.replicas is not None
    return p.replicas


def test_queue_depth_is_ceil_of_waiting_over_target() -> None:
    assert queue_depth(QUEUE, 0.0).replicas == 0
    assert queue_depth(QUEUE, 8.0).replicas == 2
    assert queue_depth(QUEUE, 8.5).replicas == 3
    assert queue_depth(QUEUE, 0.1).replicas == 1
    assert queue_depth(QUEUE, 37.0).reason == "37 waiting / 4 per replica → 10"


def test_queue_depth_forgives_float_noise_and_negative_glitches() -> None:
    assert queue_depth(QueueDepthMetric("q", "q", 0.1), 0.30000000000000004).replicas == 3
    assert ceil_div(12.000000000000002, 1.0) == 12
    assert queue_depth(QUEUE, -0.5).replicas == 0


def test_latency_dead_band_keeps_current() -> None:
    assert LATENCY_DEAD_BAND == 0.1
    for observed in (1.8, 2.0, 2.2):
        p = latency(LAT, observed, 7)
        assert p.replicas == 7
        assert "within ±10%" in p.reason


def test_latency_outside_the_band_is_proportional() -> None:
    assert latency(LAT, 2.6, 6).replicas == 8  # ceil(6 * 1.3) = ceil(7.8)
    assert latency(LAT, 3.0, 4).replicas == 6  # exactly 6: no extra replica from float noise
    assert latency(LAT, 1.0, 10).replicas == 5
    assert latency(LAT, 0.0, 10).replicas == 0


def test_latency_with_no_replicas() -> None:
    assert latency(LAT, 5.0, 0).replicas == 1
    assert latency(LAT, 1.0, 0).replicas == 0


def test_arrival_rate_zero_load_is_zero() -> None:
    p = arrival_rate(LOAD, 0.0, 32)
    assert p.replicas == 0 and not p.saturated


def test_arrival_rate_sizes_with_erlang_c() -> None:
    p = arrival_rate(LOAD, 21.0, 32)
    assert p.replicas == 7
    assert "M/M/c needs 7" in p.reason
    assert p.forecast is None


def test_arrival_rate_saturated_proposes_max_and_says_so() -> None:
    p = arrival_rate(LOAD, 500.0, 32)
    assert p.replicas == 32 and p.saturated
    assert "saturated" in p.reason and "capacity" in p.reason


def test_arrival_rate_sized_for_a_forecast_but_never_below_observed() -> None:
    ahead = arrival_rate(LOAD, 21.0, 32, sized_for=40.0)
    assert n(ahead) > n(arrival_rate(LOAD, 21.0, 32))
    assert ahead.forecast == 40.0 and ahead.value == 21.0
    low = arrival_rate(LOAD, 21.0, 32, sized_for=3.0)
    assert low.replicas == 7


values = st.floats(0.0, 1e4, allow_nan=False)


@given(a=values, b=values)
def test_more_waiting_never_fewer_replicas(a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    assert n(queue_depth(QUEUE, lo)) <= n(queue_depth(QUEUE, hi))


@given(a=st.floats(0.0, 100.0), b=st.floats(0.0, 100.0), current=st.integers(0, 500))
def test_more_latency_never_fewer_replicas(a: float, b: float, current: int) -> None:
    lo, hi = sorted((a, b))
    assert n(latency(LAT, lo, current)) <= n(latency(LAT, hi, current))


@given(a=st.floats(0.0, 300.0), b=st.floats(0.0, 300.0), max_r=st.integers(1, 120))
def test_more_arrivals_never_fewer_replicas(a: float, b: float, max_r: int) -> None:
    lo, hi = sorted((a, b))
    p_lo, p_hi = arrival_rate(LOAD, lo, max_r), arrival_rate(LOAD, hi, max_r)
    assert p_lo.replicas is not None and p_hi.replicas is not None
    assert p_lo.replicas <= p_hi.replicas <= max_r
