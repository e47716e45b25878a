"""HPA behavior rules, checked against the cases of upstream ``horizontal_test.go``.

Each ported case names the upstream test function and case it comes from (Kubernetes,
``pkg/controller/podautoscaler/horizontal_test.go``). Upstream builds times from
``time.Now()``; here ``NOW`` is a fixed number and ages are subtracted from it. Upstream's
conditions map onto ``limited_by``: ``DesiredWithinRange`` → ``None``, ``TooManyReplicas`` →
``replicas.max``, ``TooFewReplicas`` → ``replicas.min``, ``ScaleUpLimit``/``ScaleDownLimit`` →
the rule label ``behavior.scaleUp.policies[i] (…)``/``behavior.scaleDown.policies[i] (…)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from policies.behavior import (
    changed_within,
    limit_rate,
    record_scale_event,
    scale_down_limit,
    scale_up_limit,
    stabilize,
)
from policies.decide_types import Recommendation, ScaleEvent
from policies.schema import (
    Behavior,
    ScalingRule,
    ScalingRules,
    Select,
    default_scale_down,
    default_scale_up,
)

NOW = 100_000.0


def rules(
    pods: int = 0,
    pods_period: float = 0,
    percent: int = 0,
    percent_period: float = 0,
    window: float = 0,
    select: Select = "Max",
) -> ScalingRules:
    """Upstream's ``generateScalingRules``: a Pods and/or a Percent policy, in that order."""
    policies: list[ScalingRule] = []
    if pods:
        policies.append(ScalingRule("Pods", pods, pods_period))
    if percent:
        policies.append(ScalingRule("Percent", percent, percent_period))
    return ScalingRules(window, select, tuple(policies))


def uniform_events(changes: list[int], period: int) -> tuple[ScaleEvent, ...]:
    """Upstream's ``generateEventsUniformDistribution``: events centred in equal segments of
    the last ``period`` seconds, oldest first (ages truncated to whole seconds, as there)."""
    seg = period / len(changes)
    return tuple(
        ScaleEvent(NOW - int(period - seg * (i + 1) + seg / 2), c) for i, c in enumerate(changes)
    )


@dataclass(frozen=True)
class RateCase:
    name: str
    current: int
    desired: int
    min: int
    max: int
    expected: int
    condition: str
    up: ScalingRules | None = None
    down: ScalingRules | None = None
    up_events: tuple[ScaleEvent, ...] = ()
    down_events: tuple[ScaleEvent, ...] = ()


E159 = uniform_events([1, 5, 9], 120)
E8129 = uniform_events([8, 12, 9, 11], 120)

# TestScalingWithRules (convertDesiredReplicasWithBehaviorRate), every case in upstream order.
SCALING_WITH_RULES = [
    RateCase("prenormalized desired replicas within range", 5, 7, 3, 8, 7, "DesiredWithinRange"),
    RateCase("prenormalized desired replicas < minReplicas", 3, 1, 2, 8, 2, "TooFewReplicas"),
    RateCase("prenormalized desired replicas within range when minReplicas is 0",
             1, 0, 0, 10, 0, "DesiredWithinRange"),
    RateCase("maxReplicas is the limit because maxReplicas < scaleUpLimit",
             20, 1000, 1, 10, 10, "TooManyReplicas"),
    RateCase("desired replica count is more than the maximum replica count",
             100, 1000, 100, 150, 150, "TooManyReplicas"),
    RateCase("scaleUpLimit is the limit because scaleUpLimit < maxReplicas with user policies",
             3, 1000, 1, 2000, 4, "ScaleUpLimit", up=rules(0, 0, 1, 60, 0)),
    RateCase("scaleDownLimit is the limit because scaleDownLimit > minReplicas with user "
             "defined policies", 1000, 3, 3, 2000, 980, "ScaleDownLimit",
             down=rules(20, 60, 0, 0, 0)),
    RateCase("scaleUp with default behavior", 10, 50, 1, 1000, 20, "ScaleUpLimit"),
    RateCase("scaleUp with pods policy larger than percent policy", 10, 500, 1, 1000, 110,
             "ScaleUpLimit", up=rules(100, 60, 100, 60, 0)),
    RateCase("scaleUp with percent policy larger than pods policy", 10, 500, 1, 1000, 20,
             "ScaleUpLimit", up=rules(2, 60, 100, 60, 0)),
    RateCase("scaleUp with spec MaxReplicas limitation with large pod policy", 10, 50, 1, 1000,
             50, "DesiredWithinRange", up=rules(100, 60, 0, 0, 0)),
    RateCase("scaleUp with spec MaxReplicas limitation with large percent policy", 10, 50, 1,
             1000, 50, "DesiredWithinRange", up=rules(10000, 60, 0, 0, 0)),
    RateCase("scaleUp with pod policy limitation", 10, 50, 1, 1000, 40, "ScaleUpLimit",
             up=rules(30, 60, 0, 0, 0)),
    RateCase("scaleUp with percent policy limitation", 10, 50, 1, 1000, 30, "ScaleUpLimit",
             up=rules(0, 0, 200, 60, 0)),
    RateCase("scaleDown with percent policy larger than pod policy", 100, 2, 1, 1000, 80,
             "ScaleDownLimit", down=rules(20, 60, 1, 60, 300)),
    RateCase("scaleDown with pod policy larger than percent policy", 100, 2, 1, 1000, 98,
             "ScaleDownLimit", down=rules(2, 60, 1, 60, 300)),
    RateCase("scaleDown with spec MinReplicas=nil limitation with large pod policy", 10, 0, 1,
             1000, 1, "TooFewReplicas", down=rules(100, 60, 0, 0, 300)),
    RateCase("scaleDown with spec MinReplicas limitation with large percent policy", 10, 2, 5,
             1000, 5, "TooFewReplicas", down=rules(0, 0, 100, 60, 300)),
    RateCase("scaleDown with pod policy limitation", 10, 2, 1, 1000, 5, "ScaleDownLimit",
             down=rules(5, 60, 0, 0, 300)),
    RateCase("scaleDown with percent policy limitation", 10, 5, 1, 1000, 5, "DesiredWithinRange",
             down=rules(0, 0, 50, 60, 300)),
    RateCase("scaleUp with spec MaxReplicas limitation with large pod policy and events", 100,
             500, 1, 200, 200, "TooManyReplicas", up=rules(300, 60, 0, 0, 0), up_events=E159),
    RateCase("scaleUp with spec MaxReplicas limitation with large percent policy and events",
             100, 500, 1, 200, 200, "TooManyReplicas", up=rules(0, 0, 10000, 60, 0),
             up_events=E159),
    RateCase("scaleUp with currentReplicas limitation with rate.PeriodSeconds with a lot of "
             "recent scale up events", 100, 500, 1, 1000, 100, "ScaleUpLimit",
             up=rules(5, 120, 0, 0, 0), up_events=E159),
    RateCase("scaleUp with pod policy and previous scale up events", 100, 500, 1, 1000, 235,
             "ScaleUpLimit", up=rules(150, 120, 0, 0, 0), up_events=E159),
    RateCase("scaleUp with percent policy and previous scale up events", 100, 500, 1, 1000, 255,
             "ScaleUpLimit", up=rules(0, 0, 200, 120, 0), up_events=E159),
    RateCase("scaleDown with default policy and previous events", 10, 5, 1, 1000, 5,
             "DesiredWithinRange", down_events=E159),
    RateCase("scaleDown with spec MinReplicas=nil limitation with large pod policy and previous "
             "events", 100, 0, 1, 1000, 1, "TooFewReplicas", down=rules(115, 120, 0, 0, 300),
             down_events=E159),
    RateCase("scaleDown with spec MinReplicas limitation with large pod policy and previous "
             "events", 100, 0, 5, 1000, 5, "TooFewReplicas", down=rules(130, 120, 0, 0, 300),
             down_events=E159),
    RateCase("scaleDown with spec MinReplicas limitation with large percent policy and previous "
             "events", 100, 2, 5, 1000, 5, "TooFewReplicas", down=rules(0, 0, 100, 120, 300),
             down_events=E159),
    RateCase("scaleDown with pod policy limitation and previous events", 100, 2, 1, 1000, 100,
             "ScaleDownLimit", down=rules(5, 120, 0, 0, 300), down_events=E159),
    RateCase("scaleDown with percent policy limitation and previous events", 100, 0, 1, 1000, 56,
             "ScaleDownLimit", down=rules(0, 0, 50, 120, 300),
             down_events=uniform_events([2, 4, 6], 120)),
    RateCase("scaleDown with previous events preventing further scale down", 100, 0, 1, 1000,
             100, "ScaleDownLimit", down=rules(0, 0, 10, 120, 300),
             down_events=uniform_events([10, 10, 10], 120)),
    RateCase("scaleDown with with previous events still allowing more scale down", 10, 5, 1,
             1000, 5, "DesiredWithinRange", down=rules(0, 0, 1000, 120, 300),
             down_events=uniform_events([10, 10, 10], 120)),
    RateCase("check 'outdated' flag for events for one behavior for up", 100, 200, 1, 1000, 200,
             "DesiredWithinRange", up=rules(1000, 60, 0, 0, 0), up_events=E8129),
    RateCase("check that events were not marked 'outdated' for two different policies in the "
             "behavior for up", 100, 200, 1, 1000, 200, "DesiredWithinRange",
             up=rules(1000, 120, 100, 60, 0), up_events=E8129),
    RateCase("check that events were marked 'outdated' for two different policies in the "
             "behavior for up", 100, 200, 1, 1000, 200, "DesiredWithinRange",
             up=rules(1000, 30, 100, 60, 0), up_events=E8129),
    RateCase("check 'outdated' flag for events for one behavior for down", 100, 5, 1, 1000, 5,
             "DesiredWithinRange", down=rules(1000, 60, 0, 0, 300), down_events=E8129),
    RateCase("check that events were not marked 'outdated' for two different policies in the "
             "behavior for down", 100, 5, 1, 1000, 5, "DesiredWithinRange",
             down=rules(1000, 120, 100, 60, 300), down_events=E8129),
    RateCase("check that events were marked 'outdated' for two different policies in the "
             "behavior for down", 100, 5, 1, 1000, 5, "DesiredWithinRange",
             down=rules(1000, 30, 100, 60, 300), down_events=E8129),
]  # fmt: skip


@pytest.mark.parametrize("case", SCALING_WITH_RULES, ids=lambda c: c.name)
def test_scaling_with_rules(case: RateCase) -> None:
    behavior = Behavior(case.up or default_scale_up(), case.down or default_scale_down())
    got, why = limit_rate(
        case.desired, case.current, case.min, case.max, case.up_events, case.down_events,
        behavior, NOW,
    )  # fmt: skip
    assert got == case.expected
    if case.condition == "DesiredWithinRange":
        assert why is None
    elif case.condition == "TooManyReplicas":
        assert why == "replicas.max"
    elif case.condition == "TooFewReplicas":
        assert why == "replicas.min"
    elif case.condition == "ScaleUpLimit":
        assert why is not None and why.startswith("behavior.scaleUp.policies[")
    else:
        assert why is not None and why.startswith("behavior.scaleDown.policies[")


def test_rule_label_names_the_policy_that_limited() -> None:
    # TestScalingWithRules "scaleUp with default behavior": 10 → 20 is the Percent rule, index 0.
    behavior = Behavior()
    got, why = limit_rate(50, 10, 1, 1000, (), (), behavior, NOW)
    assert (got, why) == (20, "behavior.scaleUp.policies[0] (Percent 100 per 15s)")
    got, why = limit_rate(50, 2, 1, 1000, (), (), behavior, NOW)
    assert (got, why) == (6, "behavior.scaleUp.policies[1] (Pods 4 per 15s)")


def test_calculate_scale_up_limit_with_scaling_rules() -> None:
    # TestCalculateScaleUpLimitWithScalingRules: select Min of Pods 2/60s (3) and 50%/60s (2).
    limit, index = scale_up_limit(1, (), (), rules(2, 60, 50, 60, 300, select="Min"), NOW)
    assert (limit, index) == (2, 1)


def test_calculate_scale_down_limit_with_behaviors() -> None:
    # TestCalculateScaleDownLimitWithBehaviors: select Min of Pods 2/60s (3) and 50%/60s (2).
    limit, index = scale_down_limit(5, (), (), rules(2, 60, 50, 60, 300, select="Min"), NOW)
    assert (limit, index) == (3, 0)


def test_disabled_select_forbids_the_direction() -> None:
    behavior = Behavior(rules(4, 15, select="Disabled"), rules(4, 15, select="Disabled"))
    assert limit_rate(9, 5, 1, 10, (), (), behavior, NOW) == (
        5,
        "behavior.scaleUp.select: Disabled",
    )
    assert limit_rate(1, 5, 1, 10, (), (), behavior, NOW) == (
        5,
        "behavior.scaleDown.select: Disabled",
    )


def test_period_start_counts_both_directions() -> None:
    # Current upstream: periodStartReplicas = current - added + removed in the period.
    up = (ScaleEvent(NOW - 10, 6),)
    down = (ScaleEvent(NOW - 5, 2),)
    # start = 10 - 6 + 2 = 6; Pods 4 → 10, Percent 100% → 12; Max → 12.
    assert scale_up_limit(10, up, down, default_scale_up(), NOW) == (12, 0)
    # start = 6 for the down rule too: 100% down → 0.
    assert scale_down_limit(10, up, down, default_scale_down(), NOW) == (0, 0)


def test_percent_rounding_is_the_same_ieee_arithmetic_as_go() -> None:
    # float64(50) * (1 + 10/100) is 55.00000000000001 in Go and Python alike, so ceil gives 56.
    assert scale_up_limit(50, (), (), rules(0, 0, 10, 60), NOW) == (56, 0)
    assert scale_up_limit(10, (), (), rules(0, 0, 10, 60), NOW) == (11, 0)
    # Scale-down truncates toward zero: int32(7 * 0.7) = int32(4.8999…) = 4.
    assert scale_down_limit(7, (), (), rules(0, 0, 30, 60), NOW) == (4, 0)


def recs(*pairs: tuple[int, float]) -> tuple[Recommendation, ...]:
    """``(replicas, age in seconds)`` pairs as recorded recommendations."""
    return tuple(Recommendation(NOW - age, r) for r, age in pairs)


@dataclass(frozen=True)
class StabilizeCase:
    name: str
    history: tuple[Recommendation, ...]
    current: int
    desired: int
    expected: int
    kept: list[int]
    up_window: float = 0
    down_window: float = 0


# TestNormalizeDesiredReplicasWithBehavior (stabilizeRecommendationWithBehaviors). ``kept`` is the
# record after the call; upstream reuses one obsolete slot where we drop all obsolete records.
NORMALIZE_WITH_BEHAVIOR = [
    StabilizeCase("empty recommendations for scaling down", (), 100, 5, 5, [5]),
    StabilizeCase("simple scale down stabilization", recs((4, 120), (5, 60)), 100, 3, 5,
                  [4, 5, 3], down_window=180),
    StabilizeCase("simple scale up stabilization", recs((4, 120), (5, 60)), 1, 7, 4, [4, 5, 7],
                  up_window=300),
    StabilizeCase("no scale down stabilization", recs((1, 120), (2, 60)), 100, 3, 3, [1, 2, 3],
                  up_window=300),
    StabilizeCase("no scale up stabilization", recs((4, 120), (5, 60)), 1, 3, 3, [4, 5, 3],
                  down_window=300),
    StabilizeCase("no scale down stabilization, reuse recommendation element",
                  recs((10, 600), (9, 540)), 100, 3, 3, [3]),
    StabilizeCase("no scale up stabilization, reuse recommendation element",
                  recs((10, 600), (9, 540)), 1, 100, 100, [100]),
    StabilizeCase("scale down stabilization, reuse one of obsolete recommendation element",
                  recs((10, 600), (4, 60), (5, 120), (9, 540)), 100, 3, 5, [4, 5, 3],
                  down_window=180),
    StabilizeCase("scale up stabilization, reuse one of obsolete recommendation element",
                  recs((10, 6000), (6, 60), (5, 120), (9, 180)), 1, 100, 5, [6, 5, 9, 100],
                  up_window=300),
]  # fmt: skip

# TestNormalizeDesiredReplicas (the 5-minute scale-down window without behavior): the same rule
# with a 300 s scale-down window, no scale-up window, and a current count above every record.
NORMALIZE_LEGACY = [
    StabilizeCase("empty log", (), 1000, 5, 5, [5], down_window=300),
    StabilizeCase("stabilize", recs((4, 120), (5, 60)), 1000, 3, 5, [4, 5, 3], down_window=300),
    StabilizeCase("no stabilize", recs((1, 120), (2, 60)), 1000, 3, 3, [1, 2, 3],
                  down_window=300),
    StabilizeCase("no stabilize - old recommendations", recs((10, 600), (9, 540)), 1000, 3, 3,
                  [3], down_window=300),
    StabilizeCase("stabilize - old recommendations",
                  recs((10, 600), (4, 60), (5, 120), (9, 540)), 1000, 3, 5, [4, 5, 3],
                  down_window=300),
]  # fmt: skip


@pytest.mark.parametrize("case", NORMALIZE_WITH_BEHAVIOR + NORMALIZE_LEGACY, ids=lambda c: c.name)
def test_normalize_desired_replicas_with_behavior(case: StabilizeCase) -> None:
    behavior = Behavior(rules(4, 15, window=case.up_window), rules(4, 15, window=case.down_window))
    got, kept, window = stabilize(case.history, case.desired, case.current, behavior, NOW)
    assert got == case.expected
    assert [r.replicas for r in kept] == case.kept
    assert kept[-1] == Recommendation(NOW, case.desired)
    if got < case.desired:
        assert window is not None and window.startswith("behavior.scaleUp.stabilizationWindow")
    elif got > case.desired:
        assert window is not None and window.startswith("behavior.scaleDown.stabilizationWindow")
    else:
        assert window is None


def ev(*pairs: tuple[int, float]) -> tuple[ScaleEvent, ...]:
    """``(change, age in seconds)`` pairs as scale events."""
    return tuple(ScaleEvent(NOW - age, c) for c, age in pairs)


# TestStoreScaleEvents (getReplicasChangePerPeriod over 60 s, then storeScaleEvent of a change
# of 5). ``after`` lists the live events afterwards: upstream keeps outdated ones flagged.
STORE_SCALE_EVENTS = [
    ("empty entries with two-policy-behavior", (), rules(10, 60, 100, 60), 0, [5]),
    ("one outdated entry to be replaced with behavior", ev((7, 61)), rules(10, 60, 100, 60), 0,
     [5]),
    ("one actual entry to be not touched with behavior", ev((7, 58)), rules(10, 60, 100, 60), 7,
     [7, 5]),
    ("two entries, one of them to be replaced", ev((7, 61), (6, 59)), rules(10, 60), 6, [6, 5]),
    ("replace one entry, use policies with different periods",
     ev((8, 29), (6, 59), (7, 61), (9, 61)), rules(10, 60, 100, 30), 14, [8, 6, 5]),
    ("two entries, both actual", ev((7, 58), (6, 59)), rules(10, 120, 100, 30), 13, [7, 6, 5]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("prev", "scaling", "change", "after"),
    [c[1:] for c in STORE_SCALE_EVENTS],
    ids=[c[0] for c in STORE_SCALE_EVENTS],
)
def test_store_scale_events(
    prev: tuple[ScaleEvent, ...], scaling: ScalingRules, change: int, after: list[int]
) -> None:
    assert changed_within(60, prev, NOW) == change
    ups, downs = record_scale_event(prev, (), 10, 15, Behavior(scaling, scaling), NOW)
    assert [e.change for e in ups] == after and downs == ()
    assert ups[-1] == ScaleEvent(NOW, 5)
    ups, downs = record_scale_event((), prev, 10, 5, Behavior(scaling, scaling), NOW)
    assert [e.change for e in downs] == after and ups == ()


def test_no_event_when_the_count_holds() -> None:
    old = ev((3, 10))
    assert record_scale_event(old, old, 7, 7, Behavior(), NOW) == (old, old)


def test_events_exactly_one_period_old_no_longer_count() -> None:
    # ``After(cutoff)`` is strict upstream: an event exactly ``period`` old is out.
    assert changed_within(15, ev((4, 15)), NOW) == 0
    assert changed_within(15, ev((4, 14.999)), NOW) == 4
