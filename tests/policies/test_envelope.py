"""The burst envelope: the window, the nearest-rank quantile, and decide() sizing for it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from policies import envelope
from policies.decide import decide
from policies.decide_types import BurstSample, Snapshot, State
from policies.schema import (
    ArrivalRateMetric,
    Behavior,
    Burst,
    LatencyMetric,
    LatencyTarget,
    ModelCapacityMetric,
    ScalingPolicy,
    ScalingRule,
    ScalingRules,
    ServingSlo,
)
from policies.stepmodel import EngineLimits, StepProfile
from tests.policies.test_decide import policy as base_policy

LOAD = ArrivalRateMetric("load", "rate", 3.5, LatencyTarget(0.95, 2.0))
LAT = LatencyMetric("latency", "p95", 2.0)
PROFILE = StepProfile("test", 0.016, 4.8e-5, 1.8e-5)
CAPACITY = ModelCapacityMetric(
    "capacity",
    "rate",
    PROFILE,
    "inline",
    EngineLimits(256, 2048, 500_000),
    ServingSlo(0.5, 0.03),
    prompt_tokens=2000.0,
    generated_tokens=200.0,
)
FREE = Behavior(
    ScalingRules(0.0, "Max", (ScalingRule("Pods", 1000, 15.0),)),
    ScalingRules(0.0, "Max", (ScalingRule("Percent", 100, 15.0),)),
)


def policy(
    burst: Burst | None, metrics: tuple[object, ...] = (LOAD,), lo: int = 1, hi: int = 64
) -> ScalingPolicy:
    return base_policy(lo, hi, metrics=metrics, behavior=FREE, burst=burst)  # type: ignore[arg-type]


def run(p: ScalingPolicy, rates: Sequence[float | None], metric: str = "load") -> list[int]:
    """Desired counts tick by tick (15 s apart), the target following each decision."""
    state, current, out = State(), 1, []
    for i, rate in enumerate(rates):
        d, state = decide(p, Snapshot({metric: rate}, current), state, 15.0 * i)
        current = d.desired_replicas
        out.append(current)
    return out


# ---- the pure helpers ----------------------------------------------------------------------


def test_update_keeps_the_window_and_replaces_a_sample_from_the_same_instant() -> None:
    s = envelope.update(None, 0.0, 5, 60.0)
    s = envelope.update(s, 30.0, 9, 60.0)
    s = envelope.update(s, 60.0, 2, 60.0)
    assert [x.replicas for x in s] == [5, 9, 2]  # 0 s is exactly 60 s old: still in
    s = envelope.update(s, 61.0, 3, 60.0)
    assert [x.time for x in s] == [30.0, 60.0, 61.0]
    s = envelope.update(s, 61.0, 4, 60.0)
    assert s[-1] == BurstSample(61.0, 4) and len(s) == 3


def test_level_is_the_nearest_rank_quantile() -> None:
    s = tuple(BurstSample(float(t), n) for t, n in enumerate([0, 0, 7, 1, 0, 3, 0, 0, 0, 2]))
    assert envelope.level(s, 1.0) == 7
    assert envelope.level(s, 0.9) == 3  # the 9th smallest of 10
    assert envelope.level(s, 0.5) == 0
    assert envelope.level(s, 0.01) == 0
    assert envelope.level((), 1.0) == 0


@given(
    st.lists(st.integers(0, 100), min_size=1, max_size=50),
    st.floats(0.01, 1.0),
    st.floats(0.01, 1.0),
)
def test_level_lies_within_the_samples_and_rises_with_the_quantile(
    counts: list[int], q1: float, q2: float
) -> None:
    s = tuple(BurstSample(float(i), n) for i, n in enumerate(counts))
    lo, hi = sorted((q1, q2))
    assert min(counts) <= envelope.level(s, lo) <= envelope.level(s, hi) <= max(counts)
    assert envelope.level(s, 1.0) == max(counts)
    # At least a share q of the samples are at or below the level (nearest rank).
    assert sum(n <= envelope.level(s, hi) for n in counts) >= math.ceil(hi * len(counts) - 1e-9)


# ---- decide() with a burst envelope --------------------------------------------------------


def test_a_burst_is_held_for_the_window_then_released() -> None:
    rates: Sequence[float | None] = [2.0, 60.0] + [2.0] * 12
    plain = run(policy(None), rates)
    held = run(policy(Burst(120.0)), rates)
    peak = plain[1]
    assert peak > plain[2]  # without the envelope the count follows the rate down at once
    # With a 120 s window the peak is held while its sample (t = 15 s) is within 120 s: to 135 s.
    assert held[1:10] == [peak] * 9
    assert held[10] == plain[10] < peak


def test_the_proposal_says_why_and_carries_the_envelope() -> None:
    p = policy(Burst(600.0))
    state = State()
    d, state = decide(p, Snapshot({"load": 60.0}, 1), state, 0.0)
    d, state = decide(p, Snapshot({"load": 2.0}, d.desired_replicas), state, 15.0)
    load = d.proposals[0]
    assert load.burst is not None and load.replicas == load.burst > 1
    assert "burst envelope (max of 2 sizes over 10m)" in load.reason
    assert [s.replicas for s in state.burst["load"]] == [load.burst, 1]


def test_a_missing_metric_keeps_its_samples_and_other_metrics_get_no_envelope() -> None:
    p = policy(Burst(600.0), metrics=(LOAD, LAT))
    state = State(burst={"load": (BurstSample(0.0, 12),), "gone": (BurstSample(0.0, 3),)})
    d, s = decide(p, Snapshot({"latency": 1.0}, 4), state, 15.0)
    assert s.burst == {"load": (BurstSample(0.0, 12),)}  # a removed metric's samples go
    d, s = decide(p, Snapshot({"load": 0.0, "latency": 0.5}, 4), state, 30.0)
    assert d.proposals[0].replicas == 12 and d.proposals[1].burst is None
    assert set(s.burst) == {"load"}


def test_quantile_below_one_ignores_the_rarest_spike() -> None:
    rates: Sequence[float | None] = [2.0] * 9 + [60.0] + [2.0] * 5
    top = run(policy(Burst(600.0)), rates)
    p90 = run(policy(Burst(600.0, 0.9)), rates)
    assert top[-1] == max(top) > p90[-1]


def test_model_capacity_is_enveloped_with_each_ticks_own_token_mix() -> None:
    p = policy(Burst(300.0), metrics=(CAPACITY,))
    counts = run(p, [30.0, 0.0, 0.0], metric="capacity")
    assert counts[0] > 1 and counts[1:] == [counts[0]] * 2


def test_no_envelope_without_burst_leaves_the_state_untouched() -> None:
    held = {"load": (BurstSample(0.0, 30),)}
    _, s = decide(policy(None), Snapshot({"load": 1.0}, 3), State(burst=held), 15.0)
    assert s.burst == held


# ---- properties ----------------------------------------------------------------------------

rate_lists = st.lists(st.floats(0.0, 200.0, allow_nan=False), min_size=1, max_size=30)


@settings(max_examples=150, deadline=None)
@given(
    rates=rate_lists,
    extra=st.lists(st.floats(0.0, 100.0, allow_nan=False), min_size=30, max_size=30),
    window=st.sampled_from([15.0, 60.0, 120.0, 600.0]),
    q=st.floats(0.05, 1.0),
    lo=st.integers(1, 5),
    span=st.integers(0, 40),
)
def test_more_burst_demand_never_gives_fewer_replicas_and_stays_within_bounds(
    rates: list[float], extra: list[float], window: float, q: float, lo: int, span: int
) -> None:
    p = policy(Burst(window, q), lo=lo, hi=lo + span)
    more = [r + e for r, e in zip(rates, extra, strict=False)]
    # Open loop: the same current count each tick, so only the demand differs.
    s1, s2 = State(), State()
    for i, (a, b) in enumerate(zip(rates, more, strict=True)):
        d1, s1 = decide(p, Snapshot({"load": a}, lo), s1, 15.0 * i)
        d2, s2 = decide(p, Snapshot({"load": b}, lo), s2, 15.0 * i)
        assert lo <= d1.desired_replicas <= d2.desired_replicas <= lo + span
        assert d1.proposals[0].replicas is not None and d2.proposals[0].replicas is not None
        assert d1.proposals[0].replicas <= d2.proposals[0].replicas


@settings(max_examples=100, deadline=None)
@given(rates=rate_lists, window=st.sampled_from([15.0, 120.0, 600.0]), q=st.floats(0.05, 1.0))
def test_the_envelope_never_proposes_less_than_the_load_now_nor_more_than_its_peak(
    rates: list[float], window: float, q: float
) -> None:
    with_burst, without = policy(Burst(window, q)), policy(None)
    s1, s2 = State(), State()
    sizes: list[tuple[float, int]] = []
    for i, r in enumerate(rates):
        now = 15.0 * i
        d1, s1 = decide(with_burst, Snapshot({"load": r}, 1), s1, now)
        d2, s2 = decide(without, Snapshot({"load": r}, 1), s2, now)
        own = d2.proposals[0].replicas
        assert own is not None
        sizes.append((now, own))
        recent = [n for t, n in sizes if t >= now - window]
        got = d1.proposals[0].replicas
        assert got is not None and own <= got <= max(recent)


def test_state_is_not_mutated() -> None:
    held = {"load": (BurstSample(0.0, 30),)}
    state = State(burst=held)
    decide(policy(Burst(60.0)), Snapshot({"load": 1.0}, 3), state, 15.0)
    assert state.burst == held and replace(state) == State(burst=held)
