"""replicas.min: 0 — the target may rest at zero, and a demand metric wakes it (0 → 1+)."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from policies.decide_types import State
from policies.jsonschema import document_schema
from policies.parse import PolicyError, parse_policy_document
from tests.policies.test_decide import FREE, LAT, LOAD, QUEUE, policy, tick


def _doc(metrics: str, low: int = 0) -> dict[str, object]:
    loaded = yaml.safe_load(
        "apiVersion: gpuscale.io/v1alpha1\nkind: ScalingPolicy\n"
        "target: {apiVersion: apps/v1, kind: Deployment, name: x}\n"
        f"replicas: {{min: {low}, max: 4}}\nmetrics: {metrics}\n"
    )
    assert isinstance(loaded, dict)
    return loaded


QUEUE_ONLY = "[{name: q, type: queueDepth, query: q, targetPerReplica: 2}]"
LATENCY_ONLY = "[{name: l, type: latency, query: l, slo: 1s}]"


def test_min_zero_with_a_demand_metric_parses() -> None:
    policy_ = parse_policy_document(_doc(QUEUE_ONLY), namespace="ns", name="p")
    assert policy_.replicas.min == 0


def test_min_zero_without_a_metric_that_can_wake_the_target_is_refused() -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy_document(_doc(LATENCY_ONLY), namespace="ns", name="p")
    [error] = info.value.errors
    assert error.path == "replicas.min" and "queueDepth" in error.message


@pytest.mark.parametrize(("metrics", "valid"), [(QUEUE_ONLY, True), (LATENCY_ONLY, False)])
def test_the_json_schema_agrees(metrics: str, valid: bool) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(document_schema())
    assert validator.is_valid(_doc(metrics)) is valid
    assert validator.is_valid(_doc(metrics, low=1))


def test_rests_at_zero_and_wakes_when_requests_wait() -> None:
    p = policy(0, 8, metrics=(QUEUE,), behavior=FREE)
    d, state = tick(p, {"queue": 0.0}, 1, State(), 0.0)
    assert d.desired_replicas == 0
    d, state = tick(p, {"queue": 0.0}, 0, state, 15.0)
    assert d.desired_replicas == 0 and d.limited_by is None
    d, state = tick(p, {"queue": 3.0}, 0, state, 30.0)
    assert d.desired_replicas == 1 and d.winner == "queue"


def test_missing_latency_at_zero_holds_until_demand_wins() -> None:
    """With no replicas a latency quantile has no samples (NaN → missing): that alone holds at
    zero, and the queue still wakes the target."""
    p = policy(0, 8, metrics=(QUEUE, LAT), behavior=FREE)
    d, state = tick(p, {"queue": 0.0, "latency": None}, 0, State(), 0.0)
    assert d.desired_replicas == 0
    d, _ = tick(p, {"queue": 5.0, "latency": None}, 0, state, 15.0)
    assert d.desired_replicas == 2


@given(
    st.floats(0, 500),
    st.floats(0, 50),
    st.integers(0, 8),
)
def test_demand_at_zero_always_wakes_and_none_keeps_it_asleep(
    waiting: float, rate: float, current: int
) -> None:
    p = policy(0, 8, metrics=(QUEUE, LOAD), behavior=FREE)
    d, _ = tick(p, {"queue": waiting, "load": rate}, 0, State(), 0.0)
    wanted = max(x.replicas or 0 for x in d.proposals)
    assert d.desired_replicas == min(wanted, 8)
    if waiting >= 1e-6 or rate >= 1e-6:  # below that, float noise (proposals round it away)
        assert d.desired_replicas >= 1
    if waiting == 0 and rate == 0:
        assert d.desired_replicas == 0
    d, _ = tick(p, {"queue": waiting, "load": rate}, current, State(), 0.0)
    assert 0 <= d.desired_replicas <= 8
