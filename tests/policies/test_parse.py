from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.parse import (
    NotAPolicy,
    PolicyError,
    PolicyFileError,
    load_policy_file,
    parse_configmap,
    parse_policy_document,
    policy_to_configmap,
    read_policy_file,
)
from policies.schema import (
    ArrivalRateMetric,
    Behavior,
    Burst,
    DeletionCost,
    Forecast,
    LatencyMetric,
    LatencyTarget,
    Metric,
    OnMetricsUnavailable,
    QueueDepthMetric,
    ReplicaBounds,
    ScalingPolicy,
    ScalingRule,
    ScalingRules,
    TargetRef,
    default_scale_down,
    default_scale_up,
)

EXAMPLES = Path(__file__).parents[2] / "policies" / "examples"

MINIMAL: dict[str, Any] = {
    "apiVersion": "gpuscale.io/v1alpha1",
    "kind": "ScalingPolicy",
    "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llama-chat"},
    "replicas": {"min": 1, "max": 8},
    "metrics": [{"name": "queue", "type": "queueDepth", "query": "sum(q)", "targetPerReplica": 4}],
}


def configmap(document: Any, *, labelled: bool = True) -> dict[str, Any]:
    labels = {"gpuscale.io/scaling-policy": "true"} if labelled else {}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "llama-chat", "namespace": "inference", "labels": labels},
        "data": {"policy.yaml": yaml.safe_dump(document)},
    }


def errors_of(document: Any) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_configmap(configmap(document))
    return str(info.value).splitlines()


def test_minimal_policy_gets_the_documented_defaults() -> None:
    policy = parse_configmap(configmap(MINIMAL))
    assert policy.key == "inference/llama-chat"
    assert policy.interval == 15.0
    assert policy.cold_start == 120.0
    assert policy.behavior == Behavior(default_scale_up(), default_scale_down())
    assert policy.behavior.scale_up.policies == (
        ScalingRule("Percent", 100, 15.0),
        ScalingRule("Pods", 4, 15.0),
    )
    assert policy.behavior.scale_down.stabilization_window == 300.0
    assert policy.forecast == Forecast("none")
    assert policy.burst is None
    assert policy.on_metrics_unavailable.hold
    assert policy.metrics == (QueueDepthMetric("queue", "sum(q)", 4.0),)


def test_error_names_configmap_field_and_expectation() -> None:
    doc = copy.deepcopy(MINIMAL)
    doc["metrics"].append({"name": "lat", "type": "latency", "query": "q", "slo": "fast"})
    assert errors_of(doc) == [
        'inference/llama-chat: metrics[1].slo: expected a duration like "2s", got "fast"'
    ]


def test_all_errors_are_collected_not_just_the_first() -> None:
    doc = copy.deepcopy(MINIMAL)
    doc["replicas"] = {"min": 5, "max": 0}
    doc["interval"] = "soon"
    doc["metrics"][0]["targetPerReplica"] = -1
    doc["coldStrat"] = "2m"
    errors = errors_of(doc)
    assert len(errors) == 4, errors
    assert any("replicas.max: must be at least 1, got 0" in e for e in errors)
    assert any('interval: expected a duration like "2s", got "soon"' in e for e in errors)
    assert any("metrics[0].targetPerReplica: expected a positive number" in e for e in errors)
    assert any("coldStrat: unknown field" in e for e in errors)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.update(replicas={"min": 9, "max": 3}), "replicas.min: must not exceed"),
        (lambda d: d.update(metrics=[]), "metrics: expected at least one metric"),
        (lambda d: d["metrics"].append(dict(d["metrics"][0])), "duplicate metric name 'queue'"),
        (lambda d: d["metrics"][0].update(targetPerReplcia=3), "targetPerReplcia: unknown field"),
        (lambda d: d["metrics"][0].update(type="cpu"), "metrics[0].type: expected one of"),
        (lambda d: d["metrics"][0].update(slo="2s"), "metrics[0].slo: unknown field"),
        (lambda d: d["metrics"][0].pop("query"), "metrics[0].query: required field is missing"),
        (lambda d: d.update(apiVersion="v2"), "apiVersion: expected gpuscale.io/v1alpha1"),
        (lambda d: d.update(kind="HPA"), "kind: expected ScalingPolicy"),
        (lambda d: d.pop("target"), "target: required field is missing"),
        (lambda d: d.update(interval="0s"), "interval: expected a positive duration"),
        (lambda d: d.update(interval=15), 'interval: expected a duration like "2s", got a number'),
        (lambda d: d.update(replicas={"min": True, "max": 3}), "replicas.min: expected an integer"),
        (
            lambda d: d.update(behavior={"scaleDown": {"stabilizationWindow": "2h"}}),
            "behavior.scaleDown.stabilizationWindow: must be at most 1h",
        ),
        (
            lambda d: d.update(behavior={"scaleUp": {"select": "Maximum"}}),
            "behavior.scaleUp.select: expected one of Max, Min, Disabled",
        ),
        (
            lambda d: d.update(behavior={"scaleUp": {"policies": [{"type": "Pods", "value": 0}]}}),
            "behavior.scaleUp.policies[0].period: required field is missing",
        ),
        (
            lambda d: d.update(onMetricsUnavailable={"fallbackReplicas": 20}),
            "onMetricsUnavailable.fallbackReplicas: must lie within replicas.min..max (1..8)",
        ),
        (lambda d: d.update(onMetricsUnavailable="panic"), 'expected "hold" or {fallbackReplicas'),
        (lambda d: d.update(forecast={"method": "arima"}), "forecast.method: expected one of"),
        (
            lambda d: d.update(forecast={"method": "holt", "alpha": 1.5}),
            "forecast.alpha: expected a number in (0, 1]",
        ),
        (lambda d: d.update(burst={"quantile": 1}), "burst.window: required field is missing"),
        (lambda d: d.update(burst={"window": "0s"}), "burst.window: expected a positive duration"),
        (lambda d: d.update(burst={"window": "2h"}), "burst.window: must be at most 1h"),
        (lambda d: d.update(burst={"window": 600}), 'burst.window: expected a duration like "2s"'),
        (
            lambda d: d.update(burst={"window": "5m", "quantile": 1.5}),
            "burst.quantile: expected a number in (0, 1]",
        ),
        (lambda d: d.update(burst={"window": "5m", "q": 1}), "burst.q: unknown field"),
        (lambda d: d.update(burst="10m"), "burst: expected a mapping, got a string"),
        (
            lambda d: d.update(deletionCost={"maxWritesPerTick": 5}),
            "deletionCost.query: required field is missing",
        ),
        (
            lambda d: d.update(deletionCost={"query": "x", "maxWritesPerTick": 0}),
            "deletionCost.maxWritesPerTick: must be at least 1, got 0",
        ),
    ],
)
def test_each_rule_reports_its_field(mutate: Any, expected: str) -> None:
    doc = copy.deepcopy(MINIMAL)
    mutate(doc)
    errors = errors_of(doc)
    assert any(expected in e for e in errors), errors
    assert all(e.startswith("inference/llama-chat: ") for e in errors)


def test_arrival_rate_needs_a_proper_latency_target() -> None:
    doc = copy.deepcopy(MINIMAL)
    doc["metrics"] = [
        {
            "name": "load",
            "type": "arrivalRate",
            "query": "q",
            "serviceRatePerReplica": 3.5,
            "latencyTarget": {"quantile": 1.0, "slo": "2s"},
        }
    ]
    assert errors_of(doc) == [
        "inference/llama-chat: metrics[0].latencyTarget.quantile: "
        "expected a number in (0, 1), got 1.0"
    ]


def test_configmap_without_label_is_not_a_policy() -> None:
    with pytest.raises(
        NotAPolicy, match=re.escape('missing label gpuscale.io/scaling-policy: "true"')
    ):
        parse_configmap(configmap(MINIMAL, labelled=False))


def test_broken_yaml_inside_the_configmap_is_a_field_error() -> None:
    cm = configmap(MINIMAL)
    cm["data"]["policy.yaml"] = "metrics: [unclosed"
    with pytest.raises(PolicyError) as info:
        parse_configmap(cm)
    assert str(info.value).startswith("inference/llama-chat: data.policy.yaml: ")
    assert "line" in str(info.value)


def test_examples_are_valid() -> None:
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert len(files) >= 3
    policies = [p for f in files for p in load_policy_file(f)]
    assert {p.key for p in policies} >= {"inference/llama-chat", "vision/resnet-triton"}
    assert any(p.forecast.method == "holt" and p.cold_start >= 300 for p in policies)


def test_file_level_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [b\n")
    with pytest.raises(PolicyFileError, match=r"bad\.yaml:\d+:\d+: YAML syntax error"):
        load_policy_file(bad)
    with pytest.raises(PolicyFileError, match="cannot read"):
        load_policy_file(tmp_path / "missing.yaml")


def test_multi_document_file_reports_each_document(tmp_path: Path) -> None:
    doc = copy.deepcopy(MINIMAL)
    doc["replicas"]["max"] = 0
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}}
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump_all([configmap(MINIMAL), configmap(doc), deployment]))
    entries = read_policy_file(path)
    assert [e.policy is not None for e in entries] == [True, False, False]
    assert entries[2].not_a_policy is not None and "kind is 'Deployment'" in entries[2].not_a_policy
    with pytest.raises(PolicyFileError) as info:
        load_policy_file(path)
    assert info.value.messages[0].startswith(f"{path}: inference/llama-chat: replicas.max: ")


# -- round trip -------------------------------------------------------------------------

durations = st.integers(min_value=1, max_value=3600).map(float)
names = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)
rules = st.builds(
    ScalingRule,
    type=st.sampled_from(["Pods", "Percent"]),
    value=st.integers(1, 1000),
    period=st.integers(1, 1800).map(float),
)
scaling_rules = st.builds(
    ScalingRules,
    stabilization_window=st.integers(0, 3600).map(float),
    select=st.sampled_from(["Max", "Min", "Disabled"]),
    policies=st.lists(rules, min_size=1, max_size=3).map(tuple),
)
positive = st.floats(min_value=0.001, max_value=1e6, allow_nan=False)


@st.composite
def policies(draw: st.DrawFn) -> ScalingPolicy:
    low = draw(st.integers(1, 50))
    high = draw(st.integers(low, 100))
    metric_names = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    metrics: list[Metric] = []
    for name in metric_names:
        kind = draw(st.sampled_from(["queueDepth", "latency", "arrivalRate"]))
        if kind == "queueDepth":
            metrics.append(QueueDepthMetric(name, "sum(q)", draw(positive)))
        elif kind == "latency":
            metrics.append(LatencyMetric(name, "histogram_quantile(0.9, x)", draw(durations)))
        else:
            target = LatencyTarget(draw(st.floats(0.01, 0.99)), draw(durations))
            metrics.append(ArrivalRateMetric(name, "sum(rate(x[1m]))", draw(positive), target))
    holt = draw(st.booleans())
    return ScalingPolicy(
        namespace=draw(names),
        name=draw(names),
        target=TargetRef("apps/v1", "Deployment", draw(names)),
        replicas=ReplicaBounds(low, high),
        metrics=tuple(metrics),
        interval=draw(durations),
        behavior=Behavior(draw(scaling_rules), draw(scaling_rules)),
        cold_start=draw(st.integers(0, 3600).map(float)),
        forecast=Forecast("holt", draw(st.floats(0.01, 1)), draw(st.floats(0.01, 1)))
        if holt
        else Forecast(),
        burst=draw(
            st.none() | st.builds(Burst, durations, st.floats(0.01, 1.0, allow_subnormal=False))
        ),
        on_metrics_unavailable=OnMetricsUnavailable(
            draw(st.one_of(st.none(), st.integers(low, high)))
        ),
        deletion_cost=draw(
            st.none() | st.builds(DeletionCost, st.just("sum by (pod) (x)"), st.integers(1, 50))
        ),
    )


@settings(max_examples=200)
@given(policies())
def test_parse_of_format_round_trips(policy: ScalingPolicy) -> None:
    assert parse_configmap(policy_to_configmap(policy)) == policy


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    )
)
def test_arbitrary_documents_never_crash(document: Any) -> None:
    try:
        parse_configmap(configmap(document))
    except PolicyError as exc:
        assert exc.errors


@pytest.mark.parametrize("kind", [[], {}, ["latency"], {"a": 1}])
def test_unhashable_metric_type_is_a_field_error(kind: object) -> None:
    """Regression (found by the schema agreement test): `type: []` raised TypeError
    (unhashable type) instead of naming the field."""
    doc = yaml.safe_load(
        "apiVersion: gpuscale.io/v1alpha1\nkind: ScalingPolicy\n"
        "target: {apiVersion: apps/v1, kind: Deployment, name: x}\n"
        "replicas: {min: 1, max: 2}\n"
        "metrics: [{name: q, query: q, targetPerReplica: 1}]\n"
    )
    doc["metrics"][0]["type"] = kind
    with pytest.raises(PolicyError) as info:
        parse_policy_document(doc, namespace="ns", name="p")
    [error] = info.value.errors
    assert error.path == "metrics[0].type" and error.message.startswith("expected one of")
