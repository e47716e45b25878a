"""decide(): every rule with time stepped by hand (now = 0, 15, 30, …), plus properties."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from policies.decide import decide
from policies.decide_types import Decision, HoltState, Recommendation, ScaleEvent, Snapshot, State
from policies.schema import (
    ArrivalRateMetric,
    Behavior,
    Forecast,
    LatencyMetric,
    LatencyTarget,
    OnMetricsUnavailable,
    ReplicaBounds,
    ScalingPolicy,
    ScalingRule,
    ScalingRules,
    TargetRef,
)
from policies.schema import QueueDepthMetric as Queue

QUEUE = Queue("queue", "sum(waiting)", 4.0)
LAT = LatencyMetric("latency", "p95", 2.0)
LOAD = ArrivalRateMetric("load", "rate", 3.5, LatencyTarget(0.95, 2.0))


def policy(
    lo: int = 1,
    hi: int = 32,
    *,
    metrics: tuple[Queue | LatencyMetric | ArrivalRateMetric, ...] = (QUEUE, LAT, LOAD),
    **kw: object,
) -> ScalingPolicy:
    return ScalingPolicy(
        "inference",
        "llama",
        TargetRef("apps/v1", "Deployment", "llama"),
        ReplicaBounds(lo, hi),
        metrics,
        **kw,  # type: ignore[arg-type]
    )


def tick(
    p: ScalingPolicy, values: dict[str, float | None], current: int, state: State, now: float
) -> tuple[Decision, State]:
    return decide(p, Snapshot(values, current), state, now)


FREE = Behavior(
    ScalingRules(0.0, "Max", (ScalingRule("Pods", 1000, 15.0),)),
    ScalingRules(0.0, "Max", (ScalingRule("Percent", 100, 15.0),)),
)


def test_largest_proposal_wins_and_decision_says_why() -> None:
    p = policy(behavior=FREE)
    d, _ = tick(p, {"queue": 37.0, "latency": 2.0, "load": 21.0}, 6, State(), 0.0)
    assert [x.replicas for x in d.proposals] == [10, 6, 7]
    assert d.winner == "queue"
    assert d.recommended == 10
    assert d.desired_replicas == 10
    assert d.limited_by is None
    assert d.steps[0] == "queue (queueDepth): 37 waiting / 4 per replica → 10"
    assert d.reason == "scale up 6 → 10: queue proposes 10"
    assert d.metrics_missing == ()


def test_clamped_to_max_and_min() -> None:
    p = policy(2, 8, behavior=FREE)
    d, _ = tick(p, {"queue": 400.0, "latency": 1.0, "load": 1.0}, 4, State(), 0.0)
    assert (d.desired_replicas, d.limited_by, d.recommended) == (8, "replicas.max", 100)
    d, _ = tick(p, {"queue": 0.0, "latency": 0.1, "load": 0.0}, 4, State(), 0.0)
    assert (d.desired_replicas, d.limited_by) == (2, "replicas.min")


def test_scale_up_rate_limit_then_more_next_period() -> None:
    p = policy()  # default behavior: +100% or +4 pods per 15 s, whichever is more
    values: dict[str, float | None] = {"queue": 120.0, "latency": 2.0, "load": 1.0}
    d, s = tick(p, values, 2, State(), 0.0)
    assert d.desired_replicas == 6
    assert d.limited_by == "behavior.scaleUp.policies[1] (Pods 4 per 15s)"
    # Not carried out yet: no event. Seen at the next tick, the move is dated at this one.
    assert s.scale_up_events == ()
    d, s = tick(p, values, 2, s, 1.0)
    assert (d.desired_replicas, s.scale_up_events) == (6, ())
    d, s = tick(p, values, 6, s, 5.0)
    assert s.scale_up_events == (ScaleEvent(1.0, 4),)
    d, s = tick(p, values, 6, s, 16.0)
    assert d.desired_replicas == 12
    assert d.limited_by == "behavior.scaleUp.policies[0] (Percent 100 per 15s)"
    d, s = tick(p, values, 12, s, 31.0)
    assert (d.desired_replicas, d.limited_by) == (
        24,
        "behavior.scaleUp.policies[0] (Percent 100 per 15s)",
    )
    d, s = tick(p, values, 24, s, 46.0)
    assert (d.desired_replicas, d.limited_by) == (30, None)
    assert [e.time for e in s.scale_up_events] == [31.0]  # older ones pruned past 15 s


def test_rate_limit_counts_events_still_in_the_period() -> None:
    # The HPA acted on us at t=0; at t=10 the Pods 4/15s budget is used up (2 → 6 → at most 6+…).
    p = policy(behavior=Behavior(ScalingRules(0.0, "Max", (ScalingRule("Pods", 4, 15.0),))))
    values: dict[str, float | None] = {"queue": 120.0, "latency": 2.0, "load": 1.0}
    d, s = tick(p, values, 2, State(), 0.0)
    assert d.desired_replicas == 6
    d, s = tick(p, values, 6, s, 10.0)
    assert (d.desired_replicas, d.limited_by) == (
        6,
        "behavior.scaleUp.policies[0] (Pods 4 per 15s)",
    )
    d, s = tick(p, values, 6, s, 15.0)
    assert d.desired_replicas == 10


def test_scale_down_waits_for_the_stabilization_window() -> None:
    p = policy()  # default: scale down to the highest recommendation of the last 300 s
    busy: dict[str, float | None] = {"queue": 40.0, "latency": 2.0, "load": 1.0}
    idle: dict[str, float | None] = {"queue": 0.0, "latency": 0.5, "load": 0.0}
    d, s = tick(p, busy, 10, State(), 0.0)
    assert d.desired_replicas == 10
    for now in range(15, 300, 15):
        d, s = tick(p, idle, 10, s, float(now))
        assert d.desired_replicas == 10, now
        assert d.limited_by == "behavior.scaleDown.stabilizationWindow (5m)"
        assert d.recommended == 3
    d, s = tick(p, idle, 10, s, 300.0)
    # The t=0 record (10) is now exactly 300 s old and out; the idle ones say ceil(10*0.25) = 3.
    assert d.desired_replicas == 3
    assert d.limited_by is None
    assert all(r.time > 0.0 for r in s.recommendations)
    # The HPA carries it out; the next tick records the move, dated at the decision.
    _, s = tick(p, idle, 3, s, 315.0)
    assert s.scale_down_events == (ScaleEvent(300.0, 7),)


def test_scale_up_stabilization_goes_to_the_lowest_recent_recommendation() -> None:
    p = policy(behavior=replace(FREE, scale_up=ScalingRules(60.0, "Max", FREE.scale_up.policies)))
    s = State()
    for now, q in [(0.0, 8.0), (15.0, 40.0), (30.0, 24.0)]:
        d, s = tick(p, {"queue": q, "latency": 2.0, "load": 1.0}, 2, s, now)
    assert d.recommended == 6
    assert d.desired_replicas == 2  # the lowest of 2, 10, 6 in the last 60 s, raised to current
    d, s = tick(p, {"queue": 24.0, "latency": 2.0, "load": 1.0}, 2, s, 61.0)
    assert d.desired_replicas == 6
    assert d.limited_by is None


def test_missing_metric_hold_never_scales_down() -> None:
    p = policy(behavior=FREE)
    d, s = tick(p, {"queue": 0.0, "latency": None, "load": 1.0}, 10, State(), 0.0)
    assert d.desired_replicas == 10
    assert d.limited_by == "onMetricsUnavailable: hold"
    assert d.metrics_missing == ("latency",)
    assert d.proposals[1].replicas is None and d.proposals[1].reason == "metric missing"
    assert s.recommendations == ()  # as upstream: a held tick records nothing
    assert s.missing_since == 0.0


def test_missing_metric_still_allows_scale_up() -> None:
    p = policy(behavior=FREE)
    d, _ = tick(p, {"queue": 80.0, "load": float("nan")}, 10, State(), 0.0)
    assert d.desired_replicas == 20
    assert d.metrics_missing == ("latency", "load")


def test_all_metrics_missing_holds() -> None:
    p = policy(behavior=FREE)
    d, s = tick(p, {}, 7, State(), 0.0)
    assert (d.desired_replicas, d.winner, d.recommended) == (7, None, 7)
    assert d.reason == "keep 7 replicas: metrics missing (queue, latency, load)"
    d, s = tick(p, {"queue": 4.0, "latency": 1.0, "load": 1.0}, 7, s, 15.0)
    assert s.missing_since is None


def test_fallback_after_three_intervals() -> None:
    p = policy(behavior=FREE, on_metrics_unavailable=OnMetricsUnavailable(fallback_replicas=4))
    s = State()
    for now in (0.0, 15.0, 30.0):
        d, s = tick(p, {"queue": 0.0, "latency": 1.0}, 12, s, now)
        assert d.desired_replicas == 12, now
        assert s.missing_since == 0.0
    d, s = tick(p, {"queue": 0.0, "latency": 1.0}, 12, s, 45.0)
    assert d.desired_replicas == 6  # max(fallback 4, latency proposes ceil(12 * 0.5) = 6)
    assert any("fallbackReplicas 4" in step for step in d.steps)
    d, s = tick(p, {}, 6, s, 60.0)
    assert (d.desired_replicas, d.winner, d.recommended) == (4, None, 4)
    assert d.reason == "scale down 6 → 4: fallbackReplicas 4"


def test_fallback_still_goes_through_behavior() -> None:
    p = policy(on_metrics_unavailable=OnMetricsUnavailable(fallback_replicas=2))
    s = State()
    for now in range(0, 90, 15):
        d, s = tick(p, {"queue": 40.0, "latency": 2.0}, 10, s, float(now))
    # 10 was recommended in the last 300 s, so the default scale-down window keeps 10.
    assert d.recommended == 10 and d.desired_replicas == 10
    d, s = tick(p, {}, 10, s, 90.0)
    assert d.recommended == 2
    assert d.desired_replicas == 10
    assert d.limited_by == "behavior.scaleDown.stabilizationWindow (5m)"


def test_target_scaled_to_zero_is_left_alone() -> None:
    d, s = tick(policy(), {"queue": 50.0, "latency": 9.0, "load": 30.0}, 0, State(), 0.0)
    assert d.desired_replicas == 0
    assert "scaling is disabled" in d.reason
    assert s.scale_up_events == ()


def test_scale_from_zero_when_min_is_zero() -> None:
    p = policy(0, 10, behavior=FREE)
    d, _ = tick(p, {"queue": 5.0, "latency": 3.0, "load": 2.0}, 0, State(), 0.0)
    assert d.desired_replicas == 2
    d, _ = tick(p, {"queue": 0.0, "latency": 0.0, "load": 0.0}, 0, State(), 0.0)
    assert d.desired_replicas == 0


def test_current_outside_bounds_goes_straight_to_the_bound() -> None:
    p = policy(2, 8)
    d, s = tick(p, {"queue": 0.0, "latency": 0.1, "load": 0.0}, 20, State(), 0.0)
    assert (d.desired_replicas, d.limited_by) == (8, "replicas.max")
    assert s.recommendations == ()
    _, s = tick(p, {"queue": 0.0, "latency": 0.1, "load": 0.0}, 8, s, 1.0)
    assert s.scale_down_events == (ScaleEvent(0.0, 12),)
    d, _ = tick(p, {"queue": 400.0, "latency": 9.0, "load": 90.0}, 1, State(), 0.0)
    assert (d.desired_replicas, d.limited_by) == (2, "replicas.min")


def test_saturation_is_reported() -> None:
    p = policy(1, 8, behavior=FREE)
    d, _ = tick(p, {"queue": 0.0, "latency": 2.0, "load": 100.0}, 8, State(), 0.0)
    load = d.proposals[2]
    assert load.saturated and load.replicas == 8
    assert "saturated" in load.reason
    assert d.saturated
    assert d.desired_replicas == 8
    calm, _ = tick(p, {"queue": 0.0, "latency": 2.0, "load": 1.0}, 8, State(), 0.0)
    assert not calm.saturated


def test_holt_scales_ahead_of_a_ramp_but_not_below_the_observed_rate() -> None:
    p = policy(
        behavior=FREE, metrics=(LOAD,), forecast=Forecast("holt", 0.5, 0.3), cold_start=120.0
    )
    s = State()
    cur = 1
    for now in range(0, 300, 15):
        rate = 2.0 + 0.05 * now  # +0.75 req/s every tick
        d, s = tick(p, {"load": rate}, cur, s, float(now))
        cur = d.desired_replicas
    load = d.proposals[0]
    assert load.forecast is not None and load.value is not None
    assert load.forecast > load.value
    assert "load" in s.holt and s.holt["load"].trend > 0
    assert "forecast by coldStart" in load.reason
    plain, _ = tick(policy(behavior=FREE, metrics=(LOAD,)), {"load": load.value}, cur, State(), 0)
    assert d.desired_replicas > plain.desired_replicas
    # Load now falls: the proposal is sized for the observed rate, never below it.
    falling = State(holt={"load": HoltState(20.0, -0.5, 300.0)})
    d, s2 = tick(p, {"load": 10.0}, 10, falling, 315.0)
    assert d.proposals[0].forecast == 10.0
    assert s2.holt["load"].time == 315.0


def test_holt_state_untouched_when_forecast_is_off_or_metric_missing() -> None:
    held = {"load": HoltState(5.0, 0.1, 0.0)}
    _, s = tick(policy(metrics=(LOAD,)), {"load": 9.0}, 3, State(holt=held), 15.0)
    assert s.holt == held
    p = policy(metrics=(QUEUE, LOAD), forecast=Forecast("holt"))
    _, s = tick(p, {"queue": 1.0}, 3, State(holt=held), 15.0)
    assert s.holt == held


def test_holt_state_keeps_only_the_policys_arrival_metrics_and_restarts_after_a_gap() -> None:
    p = policy(metrics=(QUEUE, LOAD), forecast=Forecast("holt"), interval=15.0)
    old = {"renamed": HoltState(1.0, 0.0, 0.0), "load": HoltState(50.0, 1.0, 0.0)}
    _, s = tick(p, {"queue": 1.0, "load": 9.0}, 3, State(holt=old), 15.0)
    assert set(s.holt) == {"load"}
    assert s.holt["load"].level > 9.0  # blended with the old level and trend
    _, s = tick(p, {"queue": 1.0, "load": 9.0}, 3, State(holt=old), 151.0)
    assert s.holt["load"] == HoltState(9.0, 0.0, 151.0)  # 151 s > 10 intervals: start afresh


def test_state_is_not_mutated() -> None:
    state = State(recommendations=(Recommendation(0.0, 3),), holt={})
    before = (state.recommendations, dict(state.holt))
    tick(
        policy(forecast=Forecast("holt")),
        {"queue": 9.0, "latency": 1.0, "load": 3.0},
        3,
        state,
        15.0,
    )
    assert (state.recommendations, dict(state.holt)) == before


# ---- properties ----------------------------------------------------------------------------

values_st = st.floats(0.0, 500.0, allow_nan=False)
maybe = st.one_of(st.none(), values_st, st.just(float("inf")))


@st.composite
def scenario(draw: st.DrawFn) -> tuple[ScalingPolicy, State, int, float]:
    lo = draw(st.integers(0, 5))
    hi = draw(st.integers(max(lo, 1), 60))
    fallback = draw(st.one_of(st.none(), st.integers(lo, hi)))
    p = policy(
        lo,
        hi,
        on_metrics_unavailable=OnMetricsUnavailable(fallback),
        forecast=Forecast(draw(st.sampled_from(["none", "holt"]))),
    )
    now = 1000.0
    recs = tuple(
        Recommendation(now - age, r)
        for age, r in draw(st.lists(st.tuples(st.integers(1, 400), st.integers(0, 80)), max_size=8))
    )
    ups = tuple(
        ScaleEvent(now - a, c)
        for a, c in draw(st.lists(st.tuples(st.integers(1, 30), st.integers(1, 10)), max_size=3))
    )
    missing_since = draw(st.one_of(st.none(), st.floats(800.0, now)))
    state = State(recs, ups, (), {}, missing_since)
    current = draw(st.integers(lo, hi))
    return p, state, current, now


@settings(max_examples=200, deadline=None)
@given(sc=scenario(), q=maybe, lat=maybe, load=maybe)
def test_decision_always_within_bounds(
    sc: tuple[ScalingPolicy, State, int, float],
    q: float | None,
    lat: float | None,
    load: float | None,
) -> None:
    p, state, current, now = sc
    d, _ = tick(p, {"queue": q, "latency": lat, "load": load}, current, state, now)
    if current == 0 and p.replicas.min >= 1:  # pragma: no cover - excluded by construction
        return
    assert p.replicas.min <= d.desired_replicas <= p.replicas.max


@settings(max_examples=200, deadline=None)
@given(sc=scenario(), a=values_st, b=values_st, which=st.sampled_from(["queue", "latency", "load"]))
def test_more_load_never_fewer_replicas(
    sc: tuple[ScalingPolicy, State, int, float], a: float, b: float, which: str
) -> None:
    p, state, current, now = sc
    lo, hi = sorted((a, b))
    base = {"queue": 3.0, "latency": 1.0, "load": 2.0}
    d_lo, _ = tick(p, {**base, which: lo}, current, state, now)
    d_hi, _ = tick(p, {**base, which: hi}, current, state, now)
    assert d_lo.desired_replicas <= d_hi.desired_replicas


@settings(max_examples=200, deadline=None)
@given(sc=scenario(), q=maybe, lat=maybe, load=maybe)
def test_missing_metric_never_lowers_the_count_under_hold(
    sc: tuple[ScalingPolicy, State, int, float],
    q: float | None,
    lat: float | None,
    load: float | None,
) -> None:
    p, state, current, now = sc
    p = replace(p, on_metrics_unavailable=OnMetricsUnavailable(None))
    d, _ = tick(p, {"queue": q, "latency": lat, "load": load}, current, state, now)
    if d.metrics_missing:
        assert d.desired_replicas >= current


def test_a_lagging_hpa_neither_spends_the_budget_nor_flaps_the_decision() -> None:
    # Found against the real HPA: the count did not move for a few ticks (the HPA had not synced
    # yet) and each tick's decision alternated between the step and "keep", because undone
    # decisions were counted as scale events. Now the decision holds until the count moves.
    p = policy()
    values: dict[str, float | None] = {"queue": 40.0, "latency": 1.0, "load": 1.0}
    s = State()
    for now in range(10):
        d, s = tick(p, values, 8, s, float(now))
        assert d.desired_replicas == 10, now
    assert s.scale_up_events == ()
    d, s = tick(p, values, 10, s, 10.0)
    assert (d.desired_replicas, s.scale_up_events) == (10, (ScaleEvent(9.0, 2),))
