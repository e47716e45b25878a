"""JSON Schema (draft 2020-12) for ``policy.yaml`` and for the ConfigMap that carries it.

Editors validate with it while an SRE types (yaml-language-server reads the
``# yaml-language-server: $schema=…`` line of the examples); :mod:`policies.parse` stays the
authority. The schema is built here from the parser's own constants (API version, kind, bounds,
the duration and metric-name grammars) and published as ``policies/schemas/*.json`` by
``gpuscale policy schema``; a test checks that the files are current and that schema and parser
agree on every example and on a generated corpus.

JSON Schema cannot express a few of the parser's rules; they are listed in :data:`PARSER_ONLY`
(and in the schema's description), and the agreement test allows exactly those differences.
"""

from __future__ import annotations

import re
from typing import Any, get_args

from policies.jsonschema_parts import DURATION as DURATION
from policies.jsonschema_parts import METRIC_NAME
from policies.jsonschema_parts import POSITIVE_DURATION as POSITIVE_DURATION
from policies.jsonschema_parts import closed_object as _object
from policies.jsonschema_parts import duration as _duration
from policies.jsonschema_parts import string as _string
from policies.metrics import KINDS, WAKE_TYPES
from policies.parse import MAX_RULE_PERIOD, MAX_STABILIZATION_WINDOW
from policies.schema import (
    API_VERSION,
    KIND,
    POLICY_DATA_KEY,
    POLICY_LABEL,
    ForecastMethod,
    RuleType,
    Select,
)

DRAFT = "https://json-schema.org/draft/2020-12/schema"
DOCUMENT_FILE = "scalingpolicy.json"
CONFIGMAP_FILE = "scalingpolicy-configmap.json"

PARSER_ONLY: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "replicas.min must not exceed replicas.max",
        re.compile(r": must not exceed replicas\.max"),
    ),
    (
        "onMetricsUnavailable.fallbackReplicas must lie within replicas.min..max",
        re.compile(r": must lie within replicas\.min\.\.max"),
    ),
    ("metric names must be unique", re.compile(r": duplicate metric name")),
    (
        f"behavior.*.stabilizationWindow and burst.window at most {MAX_STABILIZATION_WINDOW:.0f}s "
        "(a duration's value, not its spelling)",
        re.compile(r": must be at most 1h"),
    ),
    (
        f"behavior.*.policies[].period at most {MAX_RULE_PERIOD:.0f}s",
        re.compile(r": must be at most 30m"),
    ),
    (
        "integers are written without a fraction (JSON Schema counts 2.0 as an integer)",
        re.compile(r": expected an integer, got a number \((-?[0-9]+\.0|-?[0-9.]+e\+[0-9]+)\)$"),
    ),
    (
        "numbers are finite (YAML's .inf)",
        re.compile(r": expected a positive number, got -?inf$"),
    ),
    *(rule for k in KINDS.values() for rule in k.parser_only),
)
"""(rule, pattern of the parser's ``path: message``) for each rule the schema cannot state."""


def _metric_common(kind: str) -> dict[str, Any]:
    return {
        "name": {
            "type": "string",
            "pattern": METRIC_NAME,
            "description": "Unique within the policy: lower-case letters, digits, - and _.",
        },
        "type": {"const": kind},
        "query": _string("PromQL returning one number."),
    }


METRIC_FIELDS: dict[str, tuple[dict[str, Any], tuple[str, ...], str]] = {
    t: (k.schema, k.required, k.description) for t, k in KINDS.items()
}
"""Per metric type: its own properties, which of them are required, and a description (a view
of its entry in :data:`policies.metrics.KINDS`, which :func:`document_schema` reads)."""


def _rules(direction: str) -> dict[str, Any]:
    return _object(
        {
            "stabilizationWindow": _duration(
                f"Window over which {direction} recommendations are combined (at most 1h)."
            ),
            "select": {"enum": list(get_args(Select))},
            "policies": {
                "type": "array",
                "minItems": 1,
                "items": _object(
                    {
                        "type": {"enum": list(get_args(RuleType))},
                        "value": {"type": "integer", "minimum": 1},
                        "period": _duration("At most 30m.", positive=True),
                    },
                    ("type", "value", "period"),
                ),
            },
        },
        description=f"As the HPA's behavior.{direction}.",
    )


def document_schema() -> dict[str, Any]:
    """The schema of the ``policy.yaml`` document."""
    types = list(KINDS)
    defs: dict[str, Any] = {}
    branches = []
    for kind, entry in KINDS.items():
        defs[f"{kind}Metric"] = _object(
            {**_metric_common(kind), **entry.schema},
            ("name", "type", "query", *entry.required),
            entry.description,
        ) | (entry.schema_constraints or {})
        branches.append(
            {
                "if": {"properties": {"type": {"const": kind}}, "required": ["type"]},
                "then": {"$ref": f"#/$defs/{kind}Metric"},
            }
        )
    metric = {
        "type": "object",
        "required": ["type"],
        "properties": {"type": {"enum": types}},
        "allOf": branches,
    }
    forecast = _object(
        {
            "method": {"enum": list(get_args(ForecastMethod))},
            "alpha": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "beta": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        },
        ("method",),
        "holt: Holt's linear trend (alpha: level, beta: trend smoothing, in (0, 1]).",
    )
    forecast["if"] = {"properties": {"method": {"const": "none"}}}
    forecast["then"] = {"properties": {"alpha": False, "beta": False}}
    rules_only = "; ".join(rule for rule, _ in PARSER_ONLY)
    schema = _object(
        {
            "apiVersion": {"const": API_VERSION},
            "kind": {"const": KIND},
            "target": _object(
                {
                    "apiVersion": _string("e.g. apps/v1"),
                    "kind": _string("e.g. Deployment"),
                    "name": _string("In the ConfigMap's namespace."),
                },
                ("apiVersion", "kind", "name"),
                "The workload to scale.",
            ),
            "replicas": _object(
                {
                    "min": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "0 scales to zero (Kubernetes 1.37+, or HPAScaleToZero"
                        " on): needs a queueDepth, arrivalRate or modelCapacity metric.",
                    },
                    "max": {"type": "integer", "minimum": 1},
                },
                ("min", "max"),
            ),
            "interval": _duration("Decision period (default 15s).", positive=True),
            "metrics": {
                "type": "array",
                "minItems": 1,
                "items": metric,
                "description": "Each metric proposes a replica count; the largest wins.",
            },
            "behavior": _object({"scaleUp": _rules("scaleUp"), "scaleDown": _rules("scaleDown")}),
            "coldStart": _duration("Time a new replica needs to become Ready (default 120s)."),
            "forecast": forecast,
            "burst": _object(
                {
                    "window": _duration(
                        "Look-back window of the burst envelope (at most 1h; at least coldStart"
                        " is advised).",
                        positive=True,
                    ),
                    "quantile": {
                        "type": "number",
                        "exclusiveMinimum": 0,
                        "maximum": 1,
                        "description": "Of the demand metrics' sizes over the window (default"
                        " 1: the maximum).",
                    },
                },
                ("window",),
                "Size arrivalRate and modelCapacity metrics for the quantile of their sizes over"
                " the last window (default: off).",
            ),
            "deletionCost": _object(
                {
                    "query": _string(
                        "Requests in flight per pod, one series per pod label, e.g. sum by"
                        " (pod) (vllm:num_requests_running + vllm:num_requests_waiting)."
                    ),
                    "maxWritesPerTick": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "Pod patches per tick at most (default 10).",
                    },
                },
                ("query",),
                "Keep controller.kubernetes.io/pod-deletion-cost on the target's pods so that"
                " idle replicas are removed first (default: off; needs RBAC to patch pods).",
            ),
            "onMetricsUnavailable": {
                "oneOf": [
                    {"const": "hold"},
                    _object(
                        {"fallbackReplicas": {"type": "integer", "minimum": 1}},
                        ("fallbackReplicas",),
                    ),
                ],
                "description": "hold (never scale down on missing data) or {fallbackReplicas: N}.",
            },
        },
        ("apiVersion", "kind", "target", "replicas", "metrics"),
        f"A gpuscale ScalingPolicy ({API_VERSION}), the {POLICY_DATA_KEY} key of a ConfigMap. "
        f"`gpuscale policy check` also enforces: {rules_only}.",
    )
    # Scaled to zero, only a demand metric can see that requests wait (metrics.WAKE_TYPES).
    schema["if"] = {
        "properties": {"replicas": {"properties": {"min": {"const": 0}}, "required": ["min"]}},
        "required": ["replicas"],
    }
    schema["then"] = {
        "properties": {
            "metrics": {"contains": {"properties": {"type": {"enum": sorted(WAKE_TYPES)}}}}
        }
    }
    return {"$schema": DRAFT, "$id": DOCUMENT_FILE, "title": KIND, **schema, "$defs": defs}


def configmap_schema() -> dict[str, Any]:
    """The schema of a policy ConfigMap. The policy itself is a YAML string, which JSON Schema
    does not parse: ``contentSchema`` names its schema for tools that do; run
    ``gpuscale policy check`` for the full check."""
    return {
        "$schema": DRAFT,
        "$id": CONFIGMAP_FILE,
        "title": f"ConfigMap holding a {KIND}",
        "type": "object",
        "required": ["kind", "metadata", "data"],
        "properties": {
            "apiVersion": {"const": "v1"},
            "kind": {"const": "ConfigMap"},
            "metadata": {
                "type": "object",
                "required": ["name", "labels"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "namespace": {"type": "string"},
                    "labels": {
                        "type": "object",
                        "required": [POLICY_LABEL],
                        "properties": {POLICY_LABEL: {"const": "true"}},
                    },
                },
            },
            "data": {
                "type": "object",
                "required": [POLICY_DATA_KEY],
                "properties": {
                    POLICY_DATA_KEY: {
                        "type": "string",
                        "contentMediaType": "application/yaml",
                        "contentSchema": {"$ref": DOCUMENT_FILE},
                    }
                },
            },
        },
    }


def parser_only(path: str, message: str) -> str | None:
    """The :data:`PARSER_ONLY` rule a parser error (``path``, ``message``) comes from, or None."""
    for rule, pattern in PARSER_ONLY:
        if pattern.search(f"{path}: {message}"):
            return rule
    return None
