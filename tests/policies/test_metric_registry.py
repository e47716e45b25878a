"""The metric-type registry: its three declarations agree, every user reads the entry, and a
new type is one module plus one registry line (a toy type proves it end to end)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from policies.decide import decide
from policies.decide_types import Proposal, Snapshot, State
from policies.declare import Field, Positive, Text
from policies.jsonschema import document_schema
from policies.metrics import KINDS, WAKE_TYPES, Metric, MetricType, metric_inputs, metric_target
from policies.metrics.base import MetricKind, QueryField, ceil_div
from policies.parse import PolicyError, parse_policy_document, policy_to_document
from policies.tenancy import query_fields, scope_policy
from tests.policies.test_jsonschema import valid_policies


def test_the_three_declarations_list_the_same_types_in_the_same_order() -> None:
    assert list(get_args(MetricType)) == list(KINDS)
    assert [k.cls for k in KINDS.values()] == list(get_args(Metric))


@pytest.mark.parametrize("kind", KINDS.values(), ids=lambda k: k.type)
def test_each_entry_describes_its_own_dataclass(kind: MetricKind[Any, Any]) -> None:
    default = {f.name: f.default for f in fields(kind.cls)}
    assert default["type"] == kind.type
    assert set(kind.schema) == {*kind.required, *kind.optional}
    assert not set(kind.required) & set(kind.optional)
    attributes = {f.name for f in fields(kind.cls)}
    for q in kind.queries:
        assert q.attribute in attributes and q.field in kind.optional


def test_the_types_that_wake_a_target_at_zero_are_the_demand_types() -> None:
    assert {"queueDepth", "arrivalRate", "modelCapacity"} == WAKE_TYPES
    assert {t for t, k in KINDS.items() if k.rate_sized} == {"arrivalRate", "modelCapacity"}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_policies())
def test_every_type_writes_back_what_it_reads(document: dict[str, Any]) -> None:
    policy = parse_policy_document(document, namespace="ns", name="p")
    written = yaml.safe_load(yaml.safe_dump(policy_to_document(policy)))
    assert parse_policy_document(written, namespace="ns", name="p") == policy


# -- a new metric type: one module, one line -------------------------------------------------


@dataclass(frozen=True, slots=True)
class InFlightMetric:
    name: str
    query: str
    per_replica: float
    limit_query: str | None = None
    type: Literal["inFlight"] = "inFlight"


def _prepare(m: InFlightMetric, value: float, values: Mapping[str, float | None]) -> float | None:
    return values.get(f"{m.name}:limit") if m.limit_query else 0.0


def _propose(
    m: InFlightMetric, value: float, extra: float, current: int, hi: int, sized: float | None
) -> Proposal:
    n = ceil_div(value + extra, m.per_replica)
    return Proposal(m.name, m.type, value, n, f"{value:g} in flight → {n}")


IN_FLIGHT: MetricKind[InFlightMetric, float] = MetricKind(
    type="inFlight",
    cls=InFlightMetric,
    description="Requests in flight.",
    fields=(
        Field("perReplica", Positive(), required=True),
        Field("limitQuery", Text()),
    ),
    to_document=lambda m: (
        {"perReplica": m.per_replica} | ({"limitQuery": m.limit_query} if m.limit_query else {})
    ),
    propose=_propose,
    target=lambda m: m.per_replica,
    measures="queue",
    wakes=False,
    rate_sized=False,
    queries=(QueryField("limit", "limit_query", "limitQuery"),),
    prepare=_prepare,
)

DOC: dict[str, Any] = {
    "apiVersion": "gpuscale.io/v1alpha1",
    "kind": "ScalingPolicy",
    "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llm"},
    "replicas": {"min": 1, "max": 20},
    "behavior": {"scaleUp": {"policies": [{"type": "Pods", "value": 100, "period": "15s"}]}},
    "metrics": [
        {
            "name": "flight",
            "type": "inFlight",
            "query": "sum(in_flight)",
            "perReplica": 4,
            "limitQuery": "sum(limit)",
        }
    ],
}


def test_a_new_type_registered_in_one_line_is_read_decided_scoped_and_published(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(PolicyError, match="expected one of queueDepth, latency"):
        parse_policy_document(DOC, namespace="ns", name="p")
    monkeypatch.setitem(KINDS, "inFlight", IN_FLIGHT)

    policy = parse_policy_document(DOC, namespace="ns", name="p")
    (m,) = policy.metrics
    assert isinstance(m, InFlightMetric) and m.per_replica == 4
    assert policy_to_document(policy)["metrics"][0]["limitQuery"] == "sum(limit)"
    assert metric_inputs(m) == (("flight", "sum(in_flight)"), ("flight:limit", "sum(limit)"))
    assert metric_target(m) == 4
    assert [f for f, _, _ in query_fields(m)] == ["query", "limit_query"]
    scoped = scope_policy(policy)
    assert [q for _, q in metric_inputs(scoped.metrics[0])] == [
        'sum(in_flight{namespace="ns"})',
        'sum(limit{namespace="ns"})',
    ]

    d, _ = decide(policy, Snapshot({"flight": 30.0, "flight:limit": 2.0}, 2), State(), 0.0)
    assert d.proposals[0].replicas == 8 and d.desired_replicas == 8
    d, _ = decide(policy, Snapshot({"flight": 30.0}, 2), State(), 0.0)
    assert d.metrics_missing == ("flight",) and d.desired_replicas == 2

    validator = jsonschema.Draft202012Validator(document_schema())
    assert not list(validator.iter_errors(DOC))
    bad = {**DOC, "metrics": [{**DOC["metrics"][0], "perReplica": "four"}]}
    assert list(validator.iter_errors(bad))


def test_an_unknown_field_of_a_registered_type_names_the_type_s_fields(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(KINDS, "inFlight", IN_FLIGHT)
    typo = {k: v for k, v in DOC["metrics"][0].items() if k != "perReplica"} | {"perReplca": 4}
    doc = {**DOC, "metrics": [typo]}
    with pytest.raises(PolicyError) as err:
        parse_policy_document(doc, namespace="ns", name="p")
    messages = [f"{e.path}: {e.message}" for e in err.value.errors]
    assert "metrics[0].perReplca: unknown field (allowed here: limitQuery, name," in messages[0]
    assert "metrics[0].perReplica: required field is missing" in messages
