"""JSON Schema building blocks shared by the document schema (:mod:`policies.jsonschema`) and
the metric types' fragments (:mod:`policies.metrics`), so both spell a duration, a positive
number or a closed object the same way."""

from __future__ import annotations

from typing import Any

from policies.durations import _UNITS

# Patterns end in (?!\n)$: ECMA-262's $ (the dialect JSON Schema names) never matches before a
# final newline, Python's does; the lookahead makes both engines read the pattern the same way.
_UNIT = "|".join(sorted(_UNITS, key=len, reverse=True))
DURATION = rf"^(0|([0-9]+(\.[0-9]+)?({_UNIT}))+)(?!\n)$"
"""The grammar of :func:`policies.durations.parse_duration` (its units, longest first)."""
POSITIVE_DURATION = rf"^(?=[^1-9]*[1-9])([0-9]+(\.[0-9]+)?({_UNIT}))+(?!\n)$"
"""A duration with a non-zero digit: exactly the durations above zero."""
METRIC_NAME = r"^[a-z]([-a-z0-9_]*[a-z0-9])?(?!\n)$"
NON_EMPTY = r"\S"


def duration(description: str, *, positive: bool = False) -> dict[str, Any]:
    return {
        "type": "string",
        "pattern": POSITIVE_DURATION if positive else DURATION,
        "description": description + ' Go-style duration: "500ms", "15s", "2m", "1h30m".',
    }


def string(description: str) -> dict[str, Any]:
    return {"type": "string", "pattern": NON_EMPTY, "description": description}


def positive(description: str) -> dict[str, Any]:
    return {"type": "number", "exclusiveMinimum": 0, "description": description}


def closed_object(
    properties: dict[str, Any], required: tuple[str, ...] = (), description: str = ""
) -> dict[str, Any]:
    """An object with exactly ``properties`` (unknown fields are errors, as in the parser)."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = list(required)
    if description:
        schema["description"] = description
    return schema
