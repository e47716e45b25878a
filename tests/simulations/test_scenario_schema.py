"""The published scenario JSON Schema and the scenario parser agree.

The parser's allowed fields at every level are read back from its own errors ("unknown field
(expected one of: …)"), so a field added to ``simulations/config/scenario.py`` fails here until
``simulations/config/scenario_schema.py`` has it. Then every scenario file passes both, and random
replacements of the default scenario's values get the same verdict from both, except for the
checks JSON Schema cannot make (listed in PARSER_ONLY).
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulations.config.scenario import DEFAULT_SCENARIO, ScenarioError, parse_scenario
from simulations.config.scenario_schema import (
    BASELINE_FIELDS,
    SCENARIO_FILE,
    VLLM_FIELDS,
    WORKLOAD_FIELDS,
    scenario_schema,
)

REPO = Path(__file__).resolve().parents[2]
SCHEMA = scenario_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
SCENARIOS = sorted((REPO / "simulations" / "scenarios").glob("*.yaml"))
BASE = DEFAULT_SCENARIO.parent
DEFAULT: dict[str, Any] = yaml.safe_load(DEFAULT_SCENARIO.read_text())
UNKNOWN = re.compile(r"unknown field \(expected one of: (.*)\)$")

PARSER_ONLY = (
    re.compile(r"no such file: "),
    re.compile(r"must be at least min \("),
    re.compile(r"must be strictly increasing"),
    re.compile(r"must be at least low"),
    re.compile(r"expected a memory quantity"),  # a quantity below 1 MiB
    re.compile(r"duplicate policy name"),
    # the step-time profile: it exists, and its memory figures fit the GPU and the KV cache
    re.compile(r"^service\.profile: "),
    re.compile(r"\(profile [^)]*\)$"),
    re.compile(r"must hold at least one block"),
    re.compile(r"no kvBytesPerToken"),
    # JSON Schema counts 2.0 as an integer
    re.compile(r"expected an integer, got (-?[0-9]+\.0|-?[0-9.]+e\+[0-9]+)$"),
    re.compile(r"^must be (greater than 0|at least 0), got \S+$"),  # 1e400 and other infinities
)


def parser_errors(doc: Any) -> list[str]:
    try:
        parse_scenario(doc, "s.yaml", BASE)
    except ScenarioError as exc:
        return [m.removeprefix("s.yaml: ") for m in exc.messages]
    return []


def schema_errors(doc: Any) -> list[str]:
    return [f"{e.json_path}: {e.message}" for e in VALIDATOR.iter_errors(doc)]


def test_published_schema_is_current() -> None:
    published = json.loads((REPO / "simulations" / "schemas" / SCENARIO_FILE).read_text())
    assert published == SCHEMA, (
        "simulations/schemas/scenario.json is out of date: "
        "gpuscale simulate schema > simulations/schemas/scenario.json"
    )
    jsonschema.Draft202012Validator.check_schema(published)


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_scenario_files_pass_both(path: Path) -> None:
    text = path.read_text()
    assert "# yaml-language-server: $schema=../schemas/scenario.json" in text
    doc = yaml.safe_load(text)
    assert schema_errors(doc) == []
    assert parser_errors(doc) == []


# -- the parser's fields, read from the parser ------------------------------------------------


def _props(schema: dict[str, Any]) -> set[str]:
    return set(schema["properties"])


def _branch(schema: dict[str, Any], key: str, value: str) -> dict[str, Any]:
    for b in schema.get("allOf", []):
        if b["if"]["properties"][key]["const"] == value:
            then: dict[str, Any] = b["then"]
            return then
    for b in schema.get("oneOf", []):
        if b["properties"].get(key, {}).get("const") == value:
            found: dict[str, Any] = b
            return found
    raise KeyError(value)


def _dist_object(dist: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = next(b for b in dist["anyOf"] if "properties" in b)
    return found


def _per_request(doc: dict[str, Any]) -> dict[str, Any]:
    """The default service on the per-request engine (which has serviceTime)."""
    service: dict[str, Any] = doc["service"]
    for key in VLLM_FIELDS:
        service.pop(key, None)
    service.update(engine="per-request", serviceTime={"model": "fixed", "seconds": 1})
    return service


def _slo_object(doc: dict[str, Any]) -> dict[str, Any]:
    doc["service"]["slo"] = {"e2e": "2s"}
    return doc["service"]["slo"]  # type: ignore[no-any-return]


def _workload_of(doc: dict[str, Any], kind: str) -> dict[str, Any]:
    doc["workload"] = {"type": kind}
    return doc["workload"]  # type: ignore[no-any-return]


def _policy_of(doc: dict[str, Any], kind: str | None) -> dict[str, Any]:
    item = {"file": "examples:llm-chat-vllm.yaml"} if kind is None else {"baseline": kind}
    doc["policies"] = [item]
    return doc["policies"][0]  # type: ignore[no-any-return]


S = SCHEMA["properties"]
SERVICE = S["service"]["properties"]
PROBES: list[tuple[str, Callable[[dict[str, Any]], dict[str, Any]], set[str]]] = [
    ("(top)", lambda d: d, _props(SCHEMA)),
    ("cluster", lambda d: d["cluster"], _props(S["cluster"])),
    (
        "cluster.pools[0]",
        lambda d: d["cluster"]["pools"][0],
        _props(S["cluster"]["properties"]["pools"]["items"]),
    ),
    (
        "cluster.pools[1].taints[0]",
        lambda d: d["cluster"]["pools"][1]["taints"][0],
        _props(S["cluster"]["properties"]["pools"]["items"]["properties"]["taints"]["items"]),
    ),
    (
        "cluster.openb",
        lambda d: d["cluster"].setdefault("openb", {}),
        _props(S["cluster"]["properties"]["openb"]),
    ),
    (
        "cluster.openb.gpuMemory",
        lambda d: d["cluster"].setdefault("openb", {}).setdefault("gpuMemory", {}),
        _props(S["cluster"]["properties"]["openb"]["properties"]["gpuMemory"]),
    ),
    ("background", lambda d: d["background"], _props(S["background"])),
    ("service", lambda d: d["service"], _props(S["service"])),
    (
        "service.serviceTime",
        lambda d: _per_request(d)["serviceTime"],
        _props(SERVICE["serviceTime"]),
    ),
    (
        "service.slo",
        _slo_object,
        _props(SERVICE["slo"]["anyOf"][1]),
    ),
    ("service.startup", lambda d: d["service"]["startup"], _props(SERVICE["startup"])),
    (
        "service.startup.imagePull",
        lambda d: d["service"]["startup"]["imagePull"],
        _props(_dist_object(SERVICE["startup"]["properties"]["imagePull"])),
    ),
    ("service.replicas", lambda d: d["service"]["replicas"], _props(SERVICE["replicas"])),
    (
        "service.tolerations[0]",
        lambda d: d["service"].setdefault("tolerations", [{"key": "k"}])[0],
        _props(SERVICE["tolerations"]["items"]),
    ),
    ("metrics", lambda d: d.setdefault("metrics", {}), _props(S["metrics"])),
    ("hpa", lambda d: d.setdefault("hpa", {}), _props(S["hpa"])),
    *[
        (
            "workload",
            functools.partial(_workload_of, kind=kind),
            _props(_branch(S["workload"], "type", kind)),
        )
        for kind in WORKLOAD_FIELDS
    ],
    (
        "workload.promptTokens",
        lambda d: _workload_of(d, "poisson").setdefault("promptTokens", {}),
        _props(
            _dist_object(_branch(S["workload"], "type", "poisson")["properties"]["promptTokens"])
        ),
    ),
    *[
        (
            "policies[0]",
            functools.partial(_policy_of, kind=kind),
            _props(_branch(S["policies"]["items"], "baseline", kind)),
        )
        for kind in BASELINE_FIELDS
    ],
    (
        "policies[0]",
        functools.partial(_policy_of, kind=None),
        _props(S["policies"]["items"]["oneOf"][0]),
    ),
]


@pytest.mark.parametrize(
    ("where", "locate", "schema_fields"), PROBES, ids=[f"{p[0]}-{i}" for i, p in enumerate(PROBES)]
)
def test_schema_has_exactly_the_parser_fields(
    where: str, locate: Callable[[dict[str, Any]], dict[str, Any]], schema_fields: set[str]
) -> None:
    doc = copy.deepcopy(DEFAULT)
    locate(doc)["zzzUnknown"] = 1
    prefix = "" if where == "(top)" else f"{where}."
    listed = [
        UNKNOWN.search(m) for m in parser_errors(doc) if m.startswith(f"{prefix}zzzUnknown: ")
    ]
    assert listed and listed[0] is not None, parser_errors(doc)
    parser_fields = set(listed[0].group(1).split(", "))
    assert parser_fields == schema_fields, (
        f"{where}: only the parser knows {sorted(parser_fields - schema_fields)}, "
        f"only the schema {sorted(schema_fields - parser_fields)}"
    )


# -- random values in the default scenario ----------------------------------------------------


def _leaves(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _leaves(v, (*prefix, k))] + [prefix]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _leaves(v, (*prefix, i))] + [prefix]
    return [prefix]


LEAVES = [p for p in _leaves(DEFAULT) if p]
values = (
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0.0, 0.5, 2.0, 1e20, "", "0", "0s", "5s", "-1s", "2", "40Gi", "0.1Mi", "x"])
    | st.sampled_from(["fixed", "uniform", "whole", "binpack", "Equal", "NoSchedule", "trace"])
    | st.lists(st.integers(0, 3), max_size=2)
    | st.dictionaries(st.sampled_from(["dist", "mean", "key", "x"]), st.integers(0, 3), max_size=2)
)


@settings(
    max_examples=400, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck)
)
@given(st.sampled_from(LEAVES), values)
def test_schema_and_parser_agree_on_replaced_values(path: tuple[Any, ...], value: Any) -> None:
    doc = copy.deepcopy(DEFAULT)
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    parsed, checked = parser_errors(doc), schema_errors(doc)
    if not parsed:
        assert not checked, f"schema rejects what the parser accepts: {path}={value!r}: {checked}"
    elif not checked:
        beyond = [m for m in parsed if not any(p.search(m) for p in PARSER_ONLY)]
        assert not beyond, f"parser rejects what the schema accepts: {path}={value!r}: {beyond}"
