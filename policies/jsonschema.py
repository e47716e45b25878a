"""JSON Schema (draft 2020-12) for ``policy.yaml`` and for the ConfigMap that carries it.

Editors validate with it while an SRE types (yaml-language-server reads the
``# yaml-language-server: $schema=…`` line of the examples); :mod:`policies.parse` stays the
authority. The schema derives from the declaration the parser reads with
(:data:`policies.parse.POLICY_DOCUMENT`, :mod:`policies.declare`) and is published as
``policies/schemas/*.json`` by ``gpuscale policy schema``; a test checks that the files are
current and that schema and parser agree on every example and on a generated corpus.

JSON Schema cannot express a few of the parser's rules; they are listed in :data:`PARSER_ONLY`
(and in the schema's description), and the agreement test allows exactly those differences.
"""

from __future__ import annotations

import re
from typing import Any

from policies.declare import DURATION as DURATION
from policies.declare import POSITIVE_DURATION as POSITIVE_DURATION
from policies.declare import Context
from policies.metrics import KINDS, WAKE_TYPES
from policies.parse import MAX_RULE_PERIOD, MAX_STABILIZATION_WINDOW, POLICY_DOCUMENT
from policies.reading import POLICY
from policies.schema import API_VERSION, KIND, POLICY_DATA_KEY, POLICY_LABEL

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


METRIC_FIELDS: dict[str, tuple[dict[str, Any], tuple[str, ...], str]] = {
    t: (k.schema, k.required, k.description) for t, k in KINDS.items()
}
"""Per metric type: its own properties, which of them are required, and a description (a view
of its entry in :data:`policies.metrics.KINDS`)."""


def document_schema() -> dict[str, Any]:
    """The schema of the ``policy.yaml`` document, derived from :data:`POLICY_DOCUMENT`."""
    ctx = Context(POLICY)
    schema = POLICY_DOCUMENT.schema(ctx)
    rules_only = "; ".join(rule for rule, _ in PARSER_ONLY)
    schema["description"] = (
        f"A gpuscale ScalingPolicy ({API_VERSION}), the {POLICY_DATA_KEY} key of a ConfigMap. "
        f"`gpuscale policy check` also enforces: {rules_only}."
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
    return {"$schema": DRAFT, "$id": DOCUMENT_FILE, "title": KIND, **schema, "$defs": ctx.defs}


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
