"""JSON Schema (draft 2020-12) for scenario files, published as simulations/schemas/scenario.json.

Editors check a scenario while it is typed (``# yaml-language-server: $schema=…``);
:func:`simulations.config.scenario.parse_scenario` stays the authority. The schema derives from
the declaration the parser reads with (:data:`~simulations.config.scenario.SCENARIO_DOCUMENT`,
:mod:`policies.declare`); ``tests/simulations/test_scenario_schema.py`` still reads the parser's
allowed fields back from its own errors and checks that both agree on every scenario file and on
random values. What JSON Schema cannot check (files exist, ``min <= max``, strictly increasing
buckets, a quantity's value) the parser still does.
"""

from __future__ import annotations

from typing import Any

from policies.declare import Context
from policies.jsonschema import DRAFT
from policies.reading import SCENARIO
from simulations.config import scenario as declared

SCENARIO_FILE = "scenario.json"
_CTX = Context(SCENARIO)

WORKLOAD_FIELDS: dict[str, dict[str, Any]] = {
    kind: {f.name: f.schema(_CTX) for f in fields}
    for kind, fields in declared.WORKLOAD_FIELDS.items()
}
"""Each workload type's own fields and their schemas (a view of the declaration)."""
VLLM_FIELDS: dict[str, Any] = {f.name: f.schema(_CTX) for f in declared.ENGINE_FIELDS}
"""The service's fields for ``engine: vllm`` (step-time profile and vLLM's limits)."""
BASELINE_FIELDS: dict[str, dict[str, Any]] = {
    kind: {f.name: f.schema(_CTX) for f in fields}
    for kind, fields in declared.BASELINE_FIELDS.items()
}
"""Each baseline's knobs and their schemas."""


def scenario_schema() -> dict[str, Any]:
    return {
        "$schema": DRAFT,
        "$id": SCENARIO_FILE,
        "title": "gpuscale simulate scenario",
        "description": (
            "A scenario for `gpuscale simulate` (simulations/README.md documents every field). "
            "The parser also checks that files exist, replicas.min <= max, latencyBuckets "
            "increase and quantities are positive."
        ),
        **declared.SCENARIO_DOCUMENT.schema(Context(SCENARIO)),
    }
