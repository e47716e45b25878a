"""The published JSON Schema and the parser agree: on every example, on generated valid
policies, and on random mutations of them (differences only where :data:`PARSER_ONLY` says
the schema cannot follow).

A metric type added to ``policies.metrics`` fails here until this file's generator
(``METRIC_STRATEGIES``) covers it; its schema fragment comes with its module.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.jsonschema import (
    CONFIGMAP_FILE,
    DOCUMENT_FILE,
    METRIC_FIELDS,
    PARSER_ONLY,
    configmap_schema,
    document_schema,
    parser_only,
)
from policies.parse import PolicyError, parse_policy_document
from policies.schema import MetricType

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "policies" / "schemas"
EXAMPLES = sorted(
    [*(REPO / "policies/examples").glob("*.yaml"), *(REPO / "deploy/examples").glob("*.yaml")]
)
MODELINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)$", re.MULTILINE)

DOCUMENT = jsonschema.Draft202012Validator(document_schema())
CONFIGMAP = jsonschema.Draft202012Validator(configmap_schema())


def parser_errors(document: Any) -> list[tuple[str, str]]:
    try:
        parse_policy_document(document, namespace="ns", name="p")
    except PolicyError as exc:
        return [(e.path, e.message) for e in exc.errors]
    return []


def schema_errors(document: Any) -> list[str]:
    return [f"{e.json_path}: {e.message}" for e in DOCUMENT.iter_errors(document)]


def assert_agree(document: Any) -> None:
    """The parser accepts ⇒ the schema accepts; the schema accepts ⇒ the parser's only
    complaints are rules JSON Schema cannot state."""
    parsed, checked = parser_errors(document), schema_errors(document)
    if not parsed:
        assert not checked, f"schema rejects what the parser accepts: {checked}\n{document}"
    elif not checked:
        beyond = [(p, m) for p, m in parsed if parser_only(p, m) is None]
        assert not beyond, f"parser rejects what the schema accepts: {beyond}\n{document}"


# -- the published files -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "build"), [(DOCUMENT_FILE, document_schema), (CONFIGMAP_FILE, configmap_schema)]
)
def test_published_schema_is_current(name: str, build: Callable[[], dict[str, Any]]) -> None:
    flag = " --configmap" if name == CONFIGMAP_FILE else ""
    published = json.loads((SCHEMAS / name).read_text())
    assert published == build(), (
        f"policies/schemas/{name} is out of date: gpuscale policy schema{flag} > "
        f"policies/schemas/{name}"
    )
    jsonschema.Draft202012Validator.check_schema(published)


def test_every_metric_type_has_a_schema_and_a_generator() -> None:
    types = set(get_args(MetricType))
    assert set(METRIC_FIELDS) == types, "register the new type in policies/metrics"
    assert set(METRIC_STRATEGIES) == types, "add the new metric type to METRIC_STRATEGIES here"
    assert set(_METRIC_INDEX) == types, "add the new metric type to _full() and _METRIC_INDEX here"
    enum = document_schema()["properties"]["metrics"]["items"]["properties"]["type"]["enum"]
    assert set(enum) == types


def test_the_parser_knows_exactly_the_schema_metric_types() -> None:
    """The parser's own list, read from its error for an unknown type."""
    doc = valid_example()
    doc["metrics"][0]["type"] = "nope"
    [(path, message)] = parser_errors(doc)
    assert path == "metrics[0].type"
    listed = re.fullmatch(r"expected one of (.*), got a string \('nope'\)", message)
    assert listed is not None, message
    assert set(listed.group(1).split(", ")) == set(get_args(MetricType))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(REPO)))
def test_examples_pass_schema_and_parser(path: Path) -> None:
    text = path.read_text()
    modeline = MODELINE.search(text)
    assert modeline is not None, f"{path} lacks a '# yaml-language-server: $schema=' line"
    target = (path.parent / modeline.group(1)).resolve()
    assert target == (SCHEMAS / CONFIGMAP_FILE).resolve(), target
    policies = 0
    for doc in yaml.safe_load_all(text):
        if not (isinstance(doc, dict) and doc.get("kind") == "ConfigMap"):
            continue
        labels = doc.get("metadata", {}).get("labels", {})
        if labels.get("gpuscale.io/scaling-policy") != "true":
            continue
        policies += 1
        assert not list(CONFIGMAP.iter_errors(doc))
        document = yaml.safe_load(doc["data"]["policy.yaml"])
        assert schema_errors(document) == [] and parser_errors(document) == []
    assert policies >= 1


# -- generated policies --------------------------------------------------------------------

PROFILES = sorted(p.stem for p in (REPO / "policies" / "profiles").glob("*.yaml"))


@st.composite
def durations(draw: st.DrawFn, low: float = 0.001, high: float = 3600.0) -> str:
    seconds = draw(st.integers(int(low * 1000), int(high * 1000)))
    if seconds % 60_000 == 0 and seconds:
        return f"{seconds // 60_000}m"
    if seconds % 1000 == 0:
        return f"{seconds // 1000}s"
    return f"{seconds}ms"


names = st.from_regex(r"[a-z][a-z0-9_-]{0,10}[a-z0-9]", fullmatch=True)
positive = st.floats(0.001, 1e4, allow_nan=False) | st.integers(1, 10_000)
queries = st.sampled_from(["sum(q)", "histogram_quantile(0.9, x)", 'sum(rate(r{m="a"}[1m]))'])


def _merged(parts: tuple[Any, ...]) -> dict[str, Any]:
    return {k: v for part in parts for k, v in dict(part).items()}


METRIC_STRATEGIES: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "queueDepth": st.fixed_dictionaries({"targetPerReplica": positive}),
    "latency": st.fixed_dictionaries({"slo": durations()}),
    "arrivalRate": st.fixed_dictionaries(
        {
            "serviceRatePerReplica": positive,
            "latencyTarget": st.fixed_dictionaries(
                {"quantile": st.floats(0.01, 0.999), "slo": durations()}
            ),
        }
    ),
    "kvCacheUsage": st.fixed_dictionaries({"target": st.floats(0.01, 1.0)}),
    "modelCapacity": st.tuples(
        st.fixed_dictionaries(
            {
                "profile": st.sampled_from(PROFILES),
                "slo": st.fixed_dictionaries({"ttft": durations(0.01, 10)})
                | st.fixed_dictionaries({"tpot": durations(0.001, 1)})
                | st.fixed_dictionaries({"ttft": durations(0.01, 10), "tpot": durations(0.001, 1)}),
            },
            optional={
                "engine": st.fixed_dictionaries(
                    {},
                    optional={
                        "maxNumSeqs": st.integers(1, 1024),
                        "maxNumBatchedTokens": st.integers(512, 16384),
                        "gpuMemoryUtilization": st.floats(0.5, 1.0),
                    },
                )
            },
        ),
        st.sampled_from([{"promptTokensQuery": "sum(p)"}, {"promptTokens": 512}]),
        st.sampled_from([{"generationTokensQuery": "sum(g)"}, {"generatedTokens": 128.5}]),
    ).map(_merged),
}
"""Per metric type, its own fields (valid values)."""


@st.composite
def metric(draw: st.DrawFn, name: str) -> dict[str, Any]:
    kind = draw(st.sampled_from(sorted(METRIC_STRATEGIES)))
    return {"name": name, "type": kind, "query": draw(queries), **draw(METRIC_STRATEGIES[kind])}


@st.composite
def rules(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if draw(st.booleans()):
        out["stabilizationWindow"] = draw(durations(0, 3600))
    if draw(st.booleans()):
        out["select"] = draw(st.sampled_from(["Max", "Min", "Disabled"]))
    if draw(st.booleans()):
        out["policies"] = draw(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "type": st.sampled_from(["Pods", "Percent"]),
                        "value": st.integers(1, 1000),
                        "period": durations(0.001, 1800),
                    }
                ),
                min_size=1,
                max_size=3,
            )
        )
    return out


@st.composite
def valid_policies(draw: st.DrawFn) -> dict[str, Any]:
    low = draw(st.integers(1, 50))
    high = draw(st.integers(low, 100))
    metric_names = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    doc: dict[str, Any] = {
        "apiVersion": "gpuscale.io/v1alpha1",
        "kind": "ScalingPolicy",
        "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": draw(names)},
        "replicas": {"min": low, "max": high},
        "metrics": [draw(metric(n)) for n in metric_names],
    }
    if draw(st.booleans()):
        doc["interval"] = draw(durations(0.001, 600))
    if draw(st.booleans()):
        doc["coldStart"] = draw(durations(0, 900))
    if draw(st.booleans()):
        doc["behavior"] = draw(
            st.fixed_dictionaries({}, optional={"scaleUp": rules(), "scaleDown": rules()})
        )
    if draw(st.booleans()):
        if draw(st.booleans()):
            doc["forecast"] = {"method": "none"}
        else:
            doc["forecast"] = {"method": "holt"} | draw(
                st.fixed_dictionaries(
                    {}, optional={"alpha": st.floats(0.01, 1.0), "beta": st.floats(0.01, 1.0)}
                )
            )
    if draw(st.booleans()):
        doc["burst"] = {"window": draw(durations(0.001, 3600))} | draw(
            st.fixed_dictionaries({}, optional={"quantile": st.floats(0.01, 1.0)})
        )
    if draw(st.booleans()):
        doc["deletionCost"] = {"query": "sum by (pod) (vllm:num_requests_running)"} | draw(
            st.fixed_dictionaries({}, optional={"maxWritesPerTick": st.integers(1, 100)})
        )
    if draw(st.booleans()):
        doc["onMetricsUnavailable"] = draw(
            st.just("hold") | st.builds(lambda n: {"fallbackReplicas": n}, st.integers(low, high))
        )
    return doc


def valid_example() -> dict[str, Any]:
    return {
        "apiVersion": "gpuscale.io/v1alpha1",
        "kind": "ScalingPolicy",
        "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llama"},
        "replicas": {"min": 1, "max": 4},
        "metrics": [{"name": "q", "type": "queueDepth", "query": "sum(q)", "targetPerReplica": 4}],
    }


@settings(
    max_examples=200, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck)
)
@given(valid_policies())
def test_generated_valid_policies_pass_both(doc: dict[str, Any]) -> None:
    assert parser_errors(doc) == []
    assert schema_errors(doc) == []


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0.0, 1.0, 2.0, 0.5, 1e20, -1.0])
    | st.text(max_size=8)
    | st.sampled_from(
        [
            "",
            " ",
            "0",
            "0s",
            "0.0s",
            "15s",
            "-1s",
            "1.5",
            "15 s",
            "1h1m",
            "2h",
            "31m",
            "1e3s",
            "15s\n",
            "٣s",
            "hold",
            "holt",
            "none",
            "Max",
            "Pods",
            "Percent",
            "queueDepth",
            "latency",
            "arrivalRate",
            "Q",
            "a-",
            "a\n",
            "apps/v1",
        ]
    )
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["name", "type", "min", "x", "slo"]), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated_policies(draw: st.DrawFn) -> Any:
    """A valid policy with a few random edits: replace a value, drop a key, add a key."""
    doc: Any = draw(valid_policies())
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "drop", "add"]))
        if not path:
            if action == "replace":
                doc = draw(values)
            continue
        *parents, last = path
        parent = doc
        for key in parents:
            parent = parent[key]
        if action == "replace":
            parent[last] = draw(values)
        elif action == "drop" and isinstance(parent, dict):
            del parent[last]
        elif action == "drop" and isinstance(parent, list):
            parent.pop(last)
        elif isinstance(parent[last], dict):
            key = draw(st.sampled_from(["targetPerReplcia", "extra", "alpha", "beta", "slo"]))
            parent[last][key] = draw(values)
    return doc


@settings(
    max_examples=600, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck)
)
@given(mutated_policies())
def test_schema_and_parser_agree_on_mutated_policies(doc: Any) -> None:
    assert_agree(doc)


# -- the documented differences are real -----------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "rule"),
    [
        (lambda d: d["replicas"].update(min=5), "replicas.min must not exceed replicas.max"),
        (
            lambda d: d.update(onMetricsUnavailable={"fallbackReplicas": 9}),
            "onMetricsUnavailable.fallbackReplicas must lie within replicas.min..max",
        ),
        (lambda d: d["metrics"].append(dict(d["metrics"][0])), "metric names must be unique"),
        (
            lambda d: d.update(behavior={"scaleDown": {"stabilizationWindow": "61m"}}),
            PARSER_ONLY[3][0],
        ),
        (
            lambda d: d.update(
                behavior={"scaleUp": {"policies": [{"type": "Pods", "value": 1, "period": "31m"}]}}
            ),
            PARSER_ONLY[4][0],
        ),
        (lambda d: d["replicas"].update(max=4.0), PARSER_ONLY[5][0]),
        (lambda d: d["metrics"][0].update(targetPerReplica=float("inf")), PARSER_ONLY[6][0]),
    ],
)
def test_each_parser_only_rule(edit: Callable[[dict[str, Any]], None], rule: str) -> None:
    doc = valid_example()
    edit(doc)
    assert schema_errors(doc) == []
    assert [parser_only(p, m) for p, m in parser_errors(doc)] == [rule]


def test_the_schema_rejects_what_editors_should_flag() -> None:
    cases: list[Callable[[dict[str, Any]], None]] = [
        lambda d: d["metrics"][0].update(targetPerReplcia=4),
        lambda d: d["metrics"][0].update(type="kvCache"),
        lambda d: d.update(interval="0s"),
        lambda d: d.update(interval="15s\n"),
        lambda d: d.update(coldStart="٣s"),
        lambda d: d.update(forecast={"method": "none", "alpha": 0.5}),
        lambda d: d.update(burst={"window": "0s"}),
        lambda d: d.update(burst={"window": "5m", "quantile": 0}),
        lambda d: d.update(burst={"quantile": 0.5}),
        lambda d: d.update(onMetricsUnavailable="drop"),
        lambda d: d.update(deletionCost={"maxWritesPerTick": 5}),
        lambda d: d.update(deletionCost={"query": "x", "maxWritesPerTick": 0}),
        lambda d: d.update(deletionCost=True),
        lambda d: d["metrics"][0].update(name="Queue"),
        lambda d: d["target"].update(name="  "),
    ]
    for edit in cases:
        doc = valid_example()
        edit(doc)
        assert schema_errors(doc) and parser_errors(doc), doc


# -- the parser's fields, read from the parser -------------------------------------------------

_ALLOWED = re.compile(r"^unknown field \(allowed here: (.*)\)$")
_D = document_schema()
_P = _D["properties"]
_RULES = _P["behavior"]["properties"]["scaleUp"]


def _full() -> dict[str, Any]:
    doc = valid_example()
    doc["metrics"] = [
        {"name": "q", "type": "queueDepth", "query": "q", "targetPerReplica": 4},
        {"name": "l", "type": "latency", "query": "l", "slo": "2s"},
        {
            "name": "r",
            "type": "arrivalRate",
            "query": "r",
            "serviceRatePerReplica": 2,
            "latencyTarget": {"quantile": 0.9, "slo": "2s"},
        },
        {"name": "k", "type": "kvCacheUsage", "query": "k", "target": 0.8},
        {
            "name": "c",
            "type": "modelCapacity",
            "query": "c",
            "profile": PROFILES[0],
            "slo": {"ttft": "1s"},
            "promptTokens": 512,
            "generatedTokens": 128,
            "engine": {"maxNumSeqs": 128},
        },
    ]
    doc["behavior"] = {"scaleUp": {"policies": [{"type": "Pods", "value": 1, "period": "15s"}]}}
    doc["forecast"] = {"method": "holt"}
    doc["onMetricsUnavailable"] = {"fallbackReplicas": 2}
    return doc


_METRIC_INDEX = {
    "queueDepth": 0,
    "latency": 1,
    "arrivalRate": 2,
    "kvCacheUsage": 3,
    "modelCapacity": 4,
}
_CAPACITY = _D["$defs"]["modelCapacityMetric"]["properties"]
POLICY_PROBES: list[tuple[str, Callable[[dict[str, Any]], dict[str, Any]], set[str]]] = [
    ("", lambda d: d, set(_P)),
    ("target", lambda d: d["target"], set(_P["target"]["properties"])),
    ("replicas", lambda d: d["replicas"], set(_P["replicas"]["properties"])),
    *[
        (
            f"metrics[{i}]",
            functools.partial(lambda d, i: d["metrics"][i], i=i),
            set(_D["$defs"][f"{kind}Metric"]["properties"]),
        )
        for kind, i in _METRIC_INDEX.items()
    ],
    (
        "metrics[2].latencyTarget",
        lambda d: d["metrics"][2]["latencyTarget"],
        set(_D["$defs"]["arrivalRateMetric"]["properties"]["latencyTarget"]["properties"]),
    ),
    ("metrics[4].slo", lambda d: d["metrics"][4]["slo"], set(_CAPACITY["slo"]["properties"])),
    (
        "metrics[4].engine",
        lambda d: d["metrics"][4]["engine"],
        set(_CAPACITY["engine"]["properties"]),
    ),
    ("behavior", lambda d: d["behavior"], set(_P["behavior"]["properties"])),
    ("behavior.scaleUp", lambda d: d["behavior"]["scaleUp"], set(_RULES["properties"])),
    (
        "behavior.scaleUp.policies[0]",
        lambda d: d["behavior"]["scaleUp"]["policies"][0],
        set(_RULES["properties"]["policies"]["items"]["properties"]),
    ),
    ("forecast", lambda d: d["forecast"], set(_P["forecast"]["properties"])),
    (
        "onMetricsUnavailable",
        lambda d: d["onMetricsUnavailable"],
        set(_P["onMetricsUnavailable"]["oneOf"][1]["properties"]),
    ),
]


@pytest.mark.parametrize(
    ("where", "locate", "schema_fields"),
    POLICY_PROBES,
    ids=[p[0] or "(root)" for p in POLICY_PROBES],
)
def test_schema_has_exactly_the_parser_fields(
    where: str, locate: Callable[[dict[str, Any]], dict[str, Any]], schema_fields: set[str]
) -> None:
    """A field the parser learns (issue work on policies/ adds knobs) fails here until the
    schema has it, and the other way round."""
    doc = _full()
    assert parser_errors(doc) == []
    locate(doc)["zzzUnknown"] = 1
    field = f"{where}.zzzUnknown" if where else "zzzUnknown"
    found = [m for p, m in parser_errors(doc) if p == field]
    assert found, parser_errors(doc)
    listed = _ALLOWED.match(found[0])
    assert listed is not None, found[0]
    parser_fields = set(listed.group(1).split(", "))
    assert parser_fields == schema_fields, (
        f"{where or '(root)'}: only the parser knows {sorted(parser_fields - schema_fields)}, "
        f"only the schema {sorted(schema_fields - parser_fields)}"
    )
