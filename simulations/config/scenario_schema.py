"""JSON Schema (draft 2020-12) for scenario files, published as simulations/schemas/scenario.json.

Editors check a scenario while it is typed (``# yaml-language-server: $schema=…``);
:func:`simulations.config.scenario.parse_scenario` stays the authority. Field names and choices
follow the parser; ``tests/simulations/test_scenario_schema.py`` reads the parser's allowed fields
back from its own "unknown field (expected one of: …)" errors and fails while the two differ, so a
field added to the parser fails loudly until it is here. What JSON Schema cannot check (files exist,
``min <= max``, strictly increasing buckets, a quantity's value) the parser still does.
"""

from __future__ import annotations

from typing import Any

from policies.jsonschema import DRAFT, DURATION, POSITIVE_DURATION
from simulations.config.variants import variants_schema

SCENARIO_FILE = "scenario.json"

_NUMBER = {"type": "number"}
_POSITIVE = {"type": "number", "exclusiveMinimum": 0}
_NON_NEGATIVE = {"type": "number", "minimum": 0}
_STRING = {"type": "string", "minLength": 1}
_ANY_STRING = {"type": "string"}
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}


def _int(minimum: int = 0) -> dict[str, Any]:
    return {"type": "integer", "minimum": minimum}


def _duration(*, positive: bool = False) -> dict[str, Any]:
    """A Go-style duration string or a number of seconds."""
    number = _POSITIVE if positive else _NON_NEGATIVE
    return {
        "anyOf": [
            {"type": "string", "pattern": POSITIVE_DURATION if positive else DURATION},
            number,
        ]
    }


_MEMORY = {
    "description": 'A memory quantity ("40Gi", "24576Mi") or MiB as a number.',
    "anyOf": [
        {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?([KMGTPE]i?|[kmun])?(?!\n)$"},
        _POSITIVE,
    ],
}


def _object(
    properties: dict[str, Any], required: tuple[str, ...] = (), *, nullable: bool = True
) -> dict[str, Any]:
    """A mapping with exactly these fields; the parser reads ``null`` as an empty mapping."""
    schema: dict[str, Any] = {
        "type": ["object", "null"] if nullable else "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = list(required)
    return schema


DIST_REQUIRED = {
    "fixed": ("value",),
    "uniform": ("low", "high"),
    "exponential": ("mean",),
    "lognormal": ("mean", "sigma"),
}
_DIST_OBJECT = _object(
    {
        "dist": {"enum": list(DIST_REQUIRED)},
        "value": _duration(),
        "low": _duration(),
        "high": _duration(),
        "mean": _duration(positive=True),
        "sigma": _POSITIVE,
    },
    ("dist",),
    nullable=False,
)
_DIST_OBJECT["allOf"] = [
    {"if": {"properties": {"dist": {"const": k}}}, "then": {"required": list(v)}}
    for k, v in DIST_REQUIRED.items()
]
_DIST = {
    "description": "A duration, or {dist: fixed|uniform|exponential|lognormal, …}.",
    "anyOf": [_duration(), _DIST_OBJECT],
}
_TOKENS = {
    "anyOf": [
        _POSITIVE,
        _object(
            {
                "dist": {"enum": ["fixed", "exponential", "lognormal"]},
                "mean": _POSITIVE,
                "sigma": _POSITIVE,
            }
        ),
    ]
}
_TAINTS = {
    "type": "array",
    "items": _object(
        {
            "key": _STRING,
            "value": _ANY_STRING,
            "effect": {"enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]},
        },
        ("key",),
        nullable=False,
    ),
}
_TOLERATIONS = {
    "type": "array",
    "items": _object(
        {
            "key": _ANY_STRING,
            "operator": {"enum": ["Equal", "Exists"]},
            "value": _ANY_STRING,
            "effect": {"enum": ["", "NoSchedule", "PreferNoSchedule", "NoExecute"]},
        },
        nullable=False,
    ),
}

WORKLOAD_FIELDS: dict[str, dict[str, Any]] = {
    "trace": {
        "path": _STRING,
        "speedup": _POSITIVE,
        "scale": _POSITIVE,
        "jitter": _duration(),
    },
    "poisson": {"rate": _POSITIVE},
    "diurnal": {
        "mean": _POSITIVE,
        "amplitude": _NON_NEGATIVE,
        "period": _duration(positive=True),
        "phase": _NUMBER,
        "noise": _NON_NEGATIVE,
    },
    "bursts": {
        "base": _NON_NEGATIVE,
        "burst": _NON_NEGATIVE,
        "on": _duration(positive=True),
        "off": _duration(positive=True),
        "start": _duration(),
    },
    "prometheus": {
        "url": _STRING,
        "query": _STRING,
        "start": _NUMBER,
        "end": _NUMBER,
        "step": _duration(positive=True),
        "speedup": _POSITIVE,
        "scale": _POSITIVE,
    },
}
WORKLOAD_REQUIRED: dict[str, tuple[str, ...]] = {
    "poisson": ("rate",),
    "diurnal": ("mean",),
    "bursts": ("base", "burst"),
    "prometheus": ("url", "query", "start", "end"),
}

OPENB_MODELS = ("V100M16", "V100M32", "T4", "P100", "A10", "G2", "G3", "default")
"""GPU models of the openb node list whose memory a scenario may set, and ``default``."""

VLLM_FIELDS: dict[str, Any] = {
    "profile": _STRING,
    "maxNumSeqs": _int(1),
    "maxNumBatchedTokens": _int(1),
    "gpuMemoryUtilization": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "kvCacheTokens": _int(1),
    "blockSize": _int(1),
}
"""The service's fields for ``engine: vllm`` (step-time profile and vLLM's limits)."""

_BOUNDS = {"minReplicas": _int(0), "maxReplicas": _int(1)}
BASELINE_FIELDS: dict[str, dict[str, Any]] = {
    "hpa": {
        "metric": {"enum": ["queue", "concurrency", "latency", "rate"]},
        "target": _POSITIVE,
        "quantile": _POSITIVE,
        "window": _duration(positive=True),
        **_BOUNDS,
    },
    "keda": {
        "metric": {"enum": ["queue", "concurrency", "latency", "rate"]},
        "threshold": _POSITIVE,
        "activationThreshold": _NUMBER,
        "quantile": _POSITIVE,
        "window": _duration(positive=True),
        "pollingInterval": _duration(positive=True),
        "cooldownPeriod": _duration(),
        **_BOUNDS,
    },
    "kpa": {
        "target": _POSITIVE,
        "targetUtilization": _POSITIVE,
        "stableWindow": _duration(positive=True),
        "panicWindowPercentage": _POSITIVE,
        "panicThreshold": _POSITIVE,
        "maxScaleUpRate": {"type": "number", "exclusiveMinimum": 1},
        "maxScaleDownRate": {"type": "number", "exclusiveMinimum": 1},
        **_BOUNDS,
    },
    "fixed": {"replicas": _int(1)},
}


def _workload() -> dict[str, Any]:
    branches = []
    for kind, fields in WORKLOAD_FIELDS.items():
        tokens = {} if kind == "trace" else {"promptTokens": _TOKENS, "generatedTokens": _TOKENS}
        branches.append(
            {
                "if": {"properties": {"type": {"const": kind}}, "required": ["type"]},
                "then": _object(
                    {"type": {"const": kind}, **fields, **tokens},
                    WORKLOAD_REQUIRED.get(kind, ()),
                    nullable=False,
                ),
            }
        )
    return {
        "type": "object",
        "required": ["type"],
        "properties": {"type": {"enum": list(WORKLOAD_FIELDS)}},
        "allOf": branches,
    }


def _contender() -> dict[str, Any]:
    branches: list[dict[str, Any]] = [
        _object({"file": _STRING, "name": _ANY_STRING}, ("file",), nullable=False)
    ]
    for kind, fields in BASELINE_FIELDS.items():
        required = ("baseline", "replicas") if kind == "fixed" else ("baseline",)
        branches.append(
            _object({"baseline": {"const": kind}, "name": {}, **fields}, required, nullable=False)
        )
    return {"oneOf": branches}


def scenario_schema() -> dict[str, Any]:
    cluster = _object(
        {
            "pools": {
                "type": "array",
                "items": _object(
                    {
                        "name": _STRING,
                        "count": _int(1),
                        "gpus": _int(1),
                        "gpuMemory": _MEMORY,
                        "model": _STRING,
                        "labels": _LABELS,
                        "taints": _TAINTS,
                    },
                    ("count", "gpus", "gpuMemory"),
                    nullable=False,
                ),
            },
            "openb": _object(
                {
                    "nodes": _STRING,
                    "count": _int(1),
                    "gpuMemory": _object(dict.fromkeys(OPENB_MODELS, _MEMORY)),
                }
            ),
            "scoring": {"enum": ["binpack", "spread", "fragmentation"]},
        },
        nullable=False,
    )
    cluster["anyOf"] = [
        {"required": ["pools"], "properties": {"pools": {"minItems": 1}}},
        {"required": ["openb"]},
    ]
    service = _object(
        {
            "name": _STRING,
            "gpus": _int(1),
            "gpuMemory": {"anyOf": [{"const": "whole"}, _MEMORY]},
            "tolerations": _TOLERATIONS,
            "nodeSelector": _LABELS,
            "maxBatch": _int(1),
            "serviceTime": _object(
                {
                    "model": {"enum": ["fixed", "exponential", "lognormal", "tokens"]},
                    "seconds": _duration(positive=True),
                    "mean": _duration(positive=True),
                    "sigma": _POSITIVE,
                    "prefillRate": _POSITIVE,
                    "decodeRate": _POSITIVE,
                    "overhead": _duration(),
                }
            ),
            "routing": {"enum": ["least-outstanding", "round-robin"]},
            "slo": {
                "anyOf": [
                    _duration(positive=True),
                    _object(
                        {
                            "ttft": _duration(positive=True),
                            "tpot": _duration(positive=True),
                            "e2e": _duration(positive=True),
                            "attainment": {
                                "type": "number",
                                "exclusiveMinimum": 0,
                                "maximum": 1,
                            },
                        },
                        nullable=False,
                    )
                    | {
                        "anyOf": [
                            {"required": ["ttft"]},
                            {"required": ["tpot"]},
                            {"required": ["e2e"]},
                        ]
                    },
                ]
            },
            "replicas": _object({"min": _int(0), "max": _int(1)}),
            "initialReplicas": _int(0),
            "startup": _object(
                {
                    "scheduling": _DIST,
                    "imagePull": _DIST,
                    "imagePullCached": _DIST,
                    "modelLoad": _DIST,
                    "retry": _duration(positive=True),
                }
            ),
            "terminationGracePeriod": _duration(),
            "drainOnTermination": {"type": "boolean"},
            "deletionCost": {"type": "boolean"},
            "latencyBuckets": {
                "type": "array",
                "minItems": 1,
                "items": _duration(positive=True),
            },
            "engine": {"enum": ["vllm", "per-request"]},
            **VLLM_FIELDS,
        }
    )
    # Fields of the other engine are errors: vllm (the default) has no maxBatch/serviceTime.
    service["if"] = {"properties": {"engine": {"const": "per-request"}}, "required": ["engine"]}
    service["then"] = {"properties": dict.fromkeys(VLLM_FIELDS, False)}
    service["else"] = {"properties": {"maxBatch": False, "serviceTime": False}}
    top = _object(
        {
            "name": _STRING,
            "seed": _int(0),
            "duration": _duration(positive=True),
            "timelineInterval": _duration(positive=True),
            "cluster": cluster,
            "background": _object({"pods": _int(0), "podList": _STRING, "gpuMemory": _MEMORY}),
            "service": service,
            "workload": _workload(),
            "metrics": _object({"scrapeInterval": _duration(positive=True)}),
            "hpa": _object(
                {
                    "syncPeriod": _duration(positive=True),
                    "tolerance": _NON_NEGATIVE,
                    "gpuscaleTolerance": _NON_NEGATIVE,
                    "staleAfter": _duration(positive=True),
                }
            ),
            "policies": {"type": "array", "items": _contender()},
            "variants": variants_schema(),
        },
        ("cluster", "service", "workload"),
        nullable=False,
    )
    top["minProperties"] = 1
    return {
        "$schema": DRAFT,
        "$id": SCENARIO_FILE,
        "title": "gpuscale simulate scenario",
        "description": (
            "A scenario for `gpuscale simulate` (simulations/README.md documents every field). "
            "The parser also checks that files exist, replicas.min <= max, latencyBuckets "
            "increase and quantities are positive."
        ),
        **top,
    }
