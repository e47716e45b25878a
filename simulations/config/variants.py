"""A scenario's ``variants:``: one model served by several Deployments on different GPU types,
and the contenders that scale them together.

Each variant is the scenario's ``service`` with its own step-time profile, engine limits, node
selector, tolerations, replica bounds and price per replica-hour; the SLO, start-up, routing and
termination stay the service's. Contenders (``contenders:``) are

- ``kind: gpuscale``: :func:`policies.variants.decide_mix` every ``interval`` on the scraped
  rates, each variant's count served to its own HPA (as one External metric per variant);
- ``kind: hpa``: one upstream HPA per variant on a per-pod metric, as a team would deploy it
  (a variant whose ``max`` is 0 is left at 0: "everything on the preferred type");
- ``kind: fixed``: each variant held at its ``min`` (a static mix, the bound a sweep of them
  gives for autoscaling at all).

Errors name the field (``scenario.yaml: variants.deployments[1].price: ...``), as the rest of
the scenario's do; ``simulations/README.md`` documents the fields.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, cast

from policies.jsonschema import DURATION, POSITIVE_DURATION
from policies.metrics.model_capacity import ServingSlo
from policies.profiles import ProfileError, load_profile
from policies.reading import show

if TYPE_CHECKING:
    from simulations.config.scenario import BaselineMetric, ScenarioReader, ServiceSpec

_DEPLOYMENT_KEYS = (
    "name",
    "profile",
    "price",
    "nodeSelector",
    "tolerations",
    "gpuMemory",
    "replicas",
    "initialReplicas",
    "maxNumSeqs",
    "maxNumBatchedTokens",
    "gpuMemoryUtilization",
    "kvCacheTokens",
)
_CONTENDER_KEYS = (
    "name",
    "kind",
    "replicas",
    "interval",
    "window",
    "slo",
    "preferWithin",
    "burstWindow",
    "metric",
    "target",
)


@dataclass(frozen=True, slots=True)
class VariantSpec:
    """One Deployment of the model: the scenario's service with this variant's overrides."""

    name: str
    service: ServiceSpec
    price: float
    """Price of one replica per hour (GPUs per replica × price per GPU-hour)."""


@dataclass(frozen=True, slots=True)
class VariantContender:
    label: str
    kind: Literal["gpuscale", "hpa", "fixed"]
    bounds: Mapping[str, tuple[int, int]]
    """Per variant ``(min, max)``: the deployment's bounds with the contender's overrides."""
    interval: float = 15.0
    """gpuscale: seconds between decisions."""
    window: float = 60.0
    """gpuscale: the ``[window]`` of the rate queries."""
    slo: ServingSlo = field(default_factory=ServingSlo)
    """gpuscale: the bounds the mix is sized for (default: the service's TTFT and TPOT)."""
    prefer_within: float = 0.0
    burst_window: float = 0.0
    """gpuscale: size for the largest rate seen over this many seconds (0: the latest), as a
    policy's ``burst.window`` does for bursts shorter than a replica's start-up."""
    metric: BaselineMetric = "concurrency"
    """hpa: the per-pod metric (``AverageValue: target``)."""
    target: float = 2.0


@dataclass(frozen=True, slots=True)
class VariantsSpec:
    deployments: tuple[VariantSpec, ...]
    prefer: tuple[str, ...] = ()
    """Most preferred first (the gpuscale contenders' preference order)."""
    contenders: tuple[VariantContender, ...] = ()

    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.deployments)


def read_variants(r: ScenarioReader, value: Any, service: ServiceSpec) -> VariantsSpec | None:
    """``variants:`` at the top of a scenario; problems go to ``r``."""
    obj = r.mapping(value, "variants", required=("deployments",), optional=("prefer", "contenders"))
    if obj is None:
        return None
    if service.engine != "vllm" or service.vllm is None:
        r.error("variants", "needs service.engine: vllm (each variant runs its own profile)")
        return None
    deployments: list[VariantSpec] = []
    raw = obj.get("deployments", [])
    if not isinstance(raw, list) or not raw:
        r.error("variants.deployments", f"expected a non-empty list, got {show(raw)}")
        raw = []
    for i, item in enumerate(raw):
        d = _deployment(r, item, f"variants.deployments[{i}]", service)
        if d is not None:
            if d.name in {x.name for x in deployments}:
                r.error(f"variants.deployments[{i}].name", f"duplicate variant {d.name!r}")
            deployments.append(d)
    names = tuple(d.name for d in deployments)
    prefer: tuple[str, ...] = ()
    if "prefer" in obj:
        listed = obj["prefer"]
        if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
            r.error("variants.prefer", f"expected a list of variant names, got {show(listed)}")
        else:
            for n in listed:
                if n not in names:
                    r.error("variants.prefer", f"unknown variant {n!r} (variants: {list(names)})")
            if len(set(listed)) != len(listed):
                r.error("variants.prefer", f"lists a variant twice: {listed}")
            prefer = tuple(listed)
    contenders: list[VariantContender] = []
    raw = obj.get("contenders", [])
    if not isinstance(raw, list):
        r.error("variants.contenders", f"expected a list, got {show(raw)}")
        raw = []
    for i, item in enumerate(raw):
        c = read_variant_contender(r, item, f"variants.contenders[{i}]", deployments, service)
        if c is not None:
            contenders.append(c)
    return VariantsSpec(tuple(deployments), prefer, tuple(contenders))


def _deployment(r: ScenarioReader, item: Any, p: str, service: ServiceSpec) -> VariantSpec | None:
    o = r.mapping(item, p, required=("name", "profile", "price"), optional=_DEPLOYMENT_KEYS)
    if o is None or not {"name", "profile", "price"} <= set(o):
        return None
    assert service.vllm is not None
    name = r.get(o, p, "name", r.string)
    price = r.get(o, p, "price", r.positive)
    ref = r.get(o, p, "profile", r.string)
    profile = None
    if ref is not None:
        try:
            profile = load_profile(ref, r.base_dir)
        except ProfileError as exc:
            for m in exc.messages:
                r.error(f"{p}.profile", m)
    lo, hi = service.min_replicas, service.max_replicas
    if "replicas" in o:
        b = r.mapping(o["replicas"], f"{p}.replicas", optional=("min", "max"))
        if b is not None:
            lo = r.field(b, f"{p}.replicas", "min", r.integer, lo)
            hi = r.field(b, f"{p}.replicas", "max", r.integer, hi)
            if hi < lo:
                r.error(f"{p}.replicas.max", f"must be at least min ({lo}), got {hi}")
    memory = service.gpu_memory_mib
    if "gpuMemory" in o:
        memory = None if o["gpuMemory"] == "whole" else r.memory(o["gpuMemory"], f"{p}.gpuMemory")
    util = r.field(
        o, p, "gpuMemoryUtilization", lambda v, q: r.fraction(v, q, closed_top=True), None
    )
    kv = r.field(o, p, "kvCacheTokens", lambda v, q: r.integer(v, q, minimum=1), None)
    engine = service.vllm
    if profile is not None:
        engine = replace(
            engine,
            profile=profile,
            max_num_seqs=r.field(
                o, p, "maxNumSeqs", lambda v, q: r.integer(v, q, minimum=1), engine.max_num_seqs
            ),
            max_num_batched_tokens=r.field(
                o,
                p,
                "maxNumBatchedTokens",
                lambda v, q: r.integer(v, q, minimum=1),
                engine.max_num_batched_tokens,
            ),
            gpu_memory_utilization=util if util is not None else engine.gpu_memory_utilization,
            kv_cache_tokens=kv if kv is not None else engine.kv_cache_tokens,
        )
    if name is None or price is None or profile is None:
        return None
    tolerations = service.tolerations
    if "tolerations" in o:
        from simulations.config.scenario import TOLERATIONS  # scenario imports this module

        tolerations = TOLERATIONS.read(r, o["tolerations"], f"{p}.tolerations") or ()
    spec = replace(
        service,
        name=f"{service.name}-{name}",
        gpu_memory_mib=memory,
        tolerations=tolerations,
        node_selector=r.field(o, p, "nodeSelector", r.labels, service.node_selector),
        min_replicas=lo,
        max_replicas=hi,
        initial_replicas=r.field(o, p, "initialReplicas", r.integer, min(lo, hi)),
        vllm=engine,
    )
    try:
        spec.engine_limits()
    except ValueError as exc:
        r.error(f"{p}.gpuMemory", f"{exc} (profile {profile.name})")
        return None
    return VariantSpec(name, spec, price)


def read_variant_contender(
    r: ScenarioReader,
    item: Any,
    p: str,
    deployments: list[VariantSpec] | tuple[VariantSpec, ...],
    service: ServiceSpec,
) -> VariantContender | None:
    """One ``variants.contenders`` entry (the variants sweep reads its points through this)."""
    o = r.mapping(item, p, required=("name", "kind"), optional=_CONTENDER_KEYS)
    if o is None:
        return None
    label = r.get(o, p, "name", r.string)
    kind = r.get(o, p, "kind", lambda v, q: r.choice(v, q, ("gpuscale", "hpa", "fixed")))
    names = [d.name for d in deployments]
    bounds = {d.name: (d.service.min_replicas, d.service.max_replicas) for d in deployments}
    if "replicas" in o:
        per = r.mapping(o["replicas"], f"{p}.replicas", optional=tuple(names))
        for n, v in (per or {}).items():
            q = f"{p}.replicas.{n}"
            b = r.mapping(v, q, optional=("min", "max"))
            if b is None or n not in bounds:  # unknown, or a variant that failed to read
                continue
            lo = r.field(b, q, "min", r.integer, bounds[n][0])
            hi = r.field(b, q, "max", r.integer, bounds[n][1])
            if hi < lo:
                r.error(f"{q}.max", f"must be at least min ({lo}), got {hi}")
            bounds[n] = (lo, hi)
    if sum(hi for _, hi in bounds.values()) < 1:
        r.error(f"{p}.replicas", "every variant has max 0: nothing could serve")
    if kind == "fixed" and sum(lo for lo, _ in bounds.values()) < 1:
        r.error(f"{p}.replicas", "a fixed mix holds each variant at its min: every min is 0")
    gpuscale_only = ("interval", "window", "slo", "preferWithin", "burstWindow")
    own = {"hpa": gpuscale_only, "gpuscale": ("metric", "target")}.get(
        kind or "", (*gpuscale_only, "metric", "target")
    )
    for key in own:
        if key in o:
            r.error(f"{p}.{key}", f"does not apply to kind: {kind}")
    slo = ServingSlo(service.slo.ttft, service.slo.tpot)
    if "slo" in o:
        s = r.mapping(o["slo"], f"{p}.slo", optional=("ttft", "tpot"))
        if s is not None:
            slo = ServingSlo(
                r.field(s, f"{p}.slo", "ttft", lambda v, q: r.duration(v, q, positive=True), None),
                r.field(s, f"{p}.slo", "tpot", lambda v, q: r.duration(v, q, positive=True), None),
            )
    if slo.ttft is None and slo.tpot is None:
        r.error(f"{p}.slo", "expected ttft and/or tpot bounds (the service's SLO has neither)")
    within = r.field(o, p, "preferWithin", lambda v, q: r.number(v, q, minimum=0.0), 0.0)
    metric = r.field(
        o,
        p,
        "metric",
        lambda v, q: r.choice(v, q, ("queue", "concurrency", "latency", "rate")),
        "concurrency",
    )
    if label is None or kind is None or not math.isfinite(within):
        return None
    return VariantContender(
        label,
        kind,
        bounds,
        interval=r.field(o, p, "interval", lambda v, q: r.duration(v, q, positive=True), 15.0),
        window=r.field(o, p, "window", lambda v, q: r.duration(v, q, positive=True), 60.0),
        slo=slo,
        prefer_within=within,
        burst_window=r.field(o, p, "burstWindow", r.duration, 0.0),
        metric=cast("BaselineMetric", metric),
        target=r.field(o, p, "target", r.positive, 2.0),
    )


def variants_schema() -> dict[str, Any]:
    """The JSON Schema of ``variants:`` (the scenario schema includes it)."""
    bounds = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "min": {"type": "integer", "minimum": 0},
            "max": {"type": "integer", "minimum": 0},
        },
    }
    duration: dict[str, Any] = {
        "anyOf": [
            {"type": "string", "pattern": POSITIVE_DURATION},
            {"type": "number", "exclusiveMinimum": 0},
        ]
    }
    deployment = {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "profile", "price"],
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "profile": {"type": "string", "minLength": 1, "description": "step-time profile"},
            "price": {
                "type": "number",
                "exclusiveMinimum": 0,
                "description": "price of one replica per hour",
            },
            "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"}},
            "tolerations": {"type": "array"},
            "gpuMemory": {"type": ["string", "number"]},
            "replicas": bounds,
            "initialReplicas": {"type": "integer", "minimum": 0},
            "maxNumSeqs": {"type": "integer", "minimum": 1},
            "maxNumBatchedTokens": {"type": "integer", "minimum": 1},
            "gpuMemoryUtilization": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "kvCacheTokens": {"type": "integer", "minimum": 1},
        },
    }
    contender = {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "kind"],
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "kind": {"enum": ["gpuscale", "hpa", "fixed"]},
            "replicas": {"type": "object", "additionalProperties": bounds},
            "interval": duration,
            "window": duration,
            "slo": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"ttft": duration, "tpot": duration},
            },
            "preferWithin": {"type": "number", "minimum": 0},
            "burstWindow": {
                "anyOf": [
                    {"type": "string", "pattern": DURATION},
                    {"type": "number", "minimum": 0},
                ]
            },
            "metric": {"enum": ["queue", "concurrency", "latency", "rate"]},
            "target": {"type": "number", "exclusiveMinimum": 0},
        },
    }
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["deployments"],
        "description": "One model on several Deployments (GPU types), scaled together.",
        "properties": {
            "deployments": {"type": "array", "minItems": 1, "items": deployment},
            "prefer": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            "contenders": {"type": "array", "items": contender},
        },
    }


# --------------------------------------------------------------------------- sweeps


@dataclass(frozen=True, slots=True)
class VariantPoint:
    family: str
    knobs: tuple[tuple[str, Any], ...]
    contender: VariantContender


@dataclass(frozen=True, slots=True)
class VariantSweepSpec:
    """A sweep of variant contenders: per family a base contender and a grid of knobs (dotted
    paths into the contender document, ``replicas.h100.min``, ``slo.tpot``, ``target``)."""

    file: str
    scenario_file: str
    seeds: tuple[int, ...]
    target: float
    families: tuple[tuple[str, tuple[VariantPoint, ...]], ...]


def set_path(document: dict[str, Any], path: str, value: Any) -> None:
    """``document[a][b][c] = value`` for ``path`` ``a.b.c``, making the mappings on the way."""
    *heads, last = path.split(".")
    node = document
    for h in heads:
        nxt = node.setdefault(h, {})
        if not isinstance(nxt, dict):
            nxt = node[h] = {}
        node = nxt
    node[last] = value


def read_variant_sweep(
    r: ScenarioReader, document: Any, deployments: tuple[VariantSpec, ...], service: Any
) -> tuple[tuple[str, tuple[VariantPoint, ...]], ...]:
    """The families of a variants sweep document (its ``families:``), problems to ``r``."""
    families: list[tuple[str, tuple[VariantPoint, ...]]] = []
    raw = document.get("families") if isinstance(document, Mapping) else None
    if not isinstance(raw, Mapping) or not raw:
        r.error("families", f"expected a mapping of family names to families, got {show(raw)}")
        return ()
    for name, fam in raw.items():
        p = f"families.{name}"
        o = r.mapping(fam, p, required=("base",), optional=("grid",))
        if o is None or not isinstance(o.get("base"), Mapping):
            if o is not None:
                r.error(f"{p}.base", "expected a contender mapping (kind: gpuscale or hpa, …)")
            continue
        grid = o.get("grid", {})
        if not isinstance(grid, Mapping) or not all(
            isinstance(v, list) and v for v in grid.values()
        ):
            r.error(f"{p}.grid", f"expected knob paths to non-empty lists, got {show(grid)}")
            continue
        keys = sorted(grid)
        points: list[VariantPoint] = []
        for values in itertools.product(*(grid[k] for k in keys)):
            knobs = tuple(zip(keys, values, strict=True))
            doc = copy.deepcopy(dict(o["base"]))
            for k, v in knobs:
                set_path(doc, k, v)
            label = " ".join([str(name), *(f"{k}={v}" for k, v in knobs)])
            doc["name"] = label
            c = read_variant_contender(r, doc, f"{p}[{label}]", deployments, service)
            if c is not None:
                points.append(VariantPoint(str(name), knobs, c))
        families.append((str(name), tuple(points)))
    return tuple(families)
