"""A scenario's ``variants:``: one model served by several Deployments on different GPU types,
and the contenders that scale them together.

Each variant is the scenario's ``service`` with its own step-time profile, engine limits, node
selector, tolerations, replica bounds and price per replica-hour; the SLO, start-up and
termination stay the service's. Contenders (``contenders:``) are

- ``kind: gpuscale``: :func:`policies.variants.decide_mix` every ``interval`` on the scraped
  rates, each variant's count served to its own HPA (as one External metric per variant);
- ``kind: hpa``: one upstream HPA per variant on a per-pod metric, as a team would deploy it
  (a variant whose ``max`` is 0 is left at 0: "everything on the preferred type");
- ``kind: fixed``: each variant held at its ``min`` (a static mix, the bound a sweep of them
  gives for autoscaling at all).

The fields are declared once (:mod:`policies.declare`): :func:`variants_section` reads what the
document says, with ``None`` where a field is left to the service, and :func:`resolve_variants`
(run by the scenario's check, since a variant's defaults are the service's) fills those in and
applies the rules across fields. Errors name the field
(``scenario.yaml: variants.deployments[1].price: ...``), as the rest of the scenario's do;
``simulations/README.md`` documents the fields.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, cast

from policies.declare import (
    Choice,
    Custom,
    Duration,
    Field,
    Fraction,
    Integer,
    Kind,
    ListOf,
    Number,
    Positive,
    Section,
    Text,
)
from policies.metrics.model_capacity import ServingSlo
from policies.profiles import ProfileError, load_profile
from policies.reading import Reader, join, show
from policies.stepmodel import StepProfile

if TYPE_CHECKING:
    from extender.objects import Toleration
    from simulations.config.scenario import (
        BaselineMetric,
        ScenarioReader,
        ServiceSpec,
    )

RoutingPolicy = Literal["least-outstanding", "capacity-weighted"]


@dataclass(frozen=True, slots=True)
class VariantSpec:
    """One Deployment of the model: the scenario's service with this variant's overrides."""

    name: str
    service: ServiceSpec
    price: float
    """Price of one replica per hour (GPUs per replica × price per GPU-hour)."""
    weight: float | None = None
    """The router's capacity weight of one replica (``capacity-weighted``); None: computed from
    the profile at the service's SLO when the run starts."""


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
    routing: RoutingPolicy = "least-outstanding"
    """How the gateway spreads requests over the replicas of every variant
    (:class:`simulations.serving.replicas.Router`)."""

    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.deployments)


# --------------------------------------------------------------------------- as written


@dataclass(frozen=True, slots=True)
class DeploymentDecl:
    """A ``deployments[]`` entry as written; ``None``: the service's value."""

    name: str
    profile: StepProfile
    price: float
    node_selector: Mapping[str, str] | None = None
    tolerations: tuple[Toleration, ...] | None = None
    gpu_memory: int | str | None = None
    """MiB, ``"whole"``, or None (the service's)."""
    replicas: tuple[int | None, int | None] = (None, None)
    initial_replicas: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    gpu_memory_utilization: float | None = None
    kv_cache_tokens: int | None = None
    routing_weight: float | None = None


@dataclass(frozen=True, slots=True)
class ContenderDecl:
    """A ``contenders[]`` entry as written; its bounds and SLO are resolved against the
    deployments and the service."""

    name: str
    kind: Literal["gpuscale", "hpa", "fixed"]
    replicas: Mapping[str, tuple[int | None, int | None]]
    interval: float
    window: float
    slo: tuple[float | None, float | None] | None
    prefer_within: float
    burst_window: float
    metric: str
    target: float


@dataclass(frozen=True, slots=True)
class VariantsDecl:
    deployments: tuple[DeploymentDecl, ...]
    prefer: tuple[str, ...]
    contenders: tuple[ContenderDecl, ...]
    routing: RoutingPolicy = "least-outstanding"


@dataclass(frozen=True, slots=True)
class SharedKinds:
    """The scenario's own field kinds a variant repeats (scenario.py imports this module, so
    they are handed in rather than imported)."""

    labels: Kind
    tolerations: Kind
    gpu_memory: Kind


_BOUNDS: Section[tuple[int | None, int | None]] = Section(
    (Field("min", Integer(0)), Field("max", Integer(0))),
    lambda min, max: (min, max),
    nullable=False,
)


def _profile(r: Reader, value: Any, path: str) -> StepProfile | None:
    ref = r.string(value, path)
    if ref is None:
        return None
    try:
        return load_profile(ref, cast("ScenarioReader", r).base_dir)
    except ProfileError as exc:
        for m in exc.messages:
            r.error(path, m)
        return None


def _per_variant(r: Reader, value: Any, path: str) -> dict[str, tuple[int | None, int | None]]:
    """``{VARIANT: {min, max}}``; the names are checked against the deployments later."""
    obj = r.mapping(value, path, optional=tuple(value) if isinstance(value, Mapping) else ())
    out: dict[str, tuple[int | None, int | None]] = {}
    for name, bounds in (obj or {}).items():
        got = _BOUNDS.read(r, bounds, join(path, str(name)))
        if got is not None:
            out[str(name)] = got
    return out


_GPUSCALE_ONLY = ("interval", "window", "slo", "preferWithin", "burstWindow")
_HPA_ONLY = ("metric", "target")


def _kind_fields(
    r: Reader, obj: Mapping[str, Any], values: dict[str, Any], path: str
) -> dict[str, Any] | None:
    """A knob of another kind is an error (``metric`` on a gpuscale contender)."""
    kind = values["kind"]
    own = {"hpa": _GPUSCALE_ONLY, "gpuscale": _HPA_ONLY}.get(kind or "", _GPUSCALE_ONLY + _HPA_ONLY)
    bad = [key for key in own if key in obj]
    for key in bad:
        r.error(join(path, key), f"does not apply to kind: {kind}")
    return None if bad else values


CONTENDER: Section[ContenderDecl] = Section(
    (
        Field("name", Text(), required=True),
        Field("kind", Choice(("gpuscale", "hpa", "fixed")), required=True),
        Field(
            "replicas",
            Custom(
                _per_variant,
                lambda ctx: {"type": "object", "additionalProperties": _BOUNDS.schema(ctx)},
            ),
            default={},
            description="per-variant bounds (default: the deployment's); max 0 leaves it unused",
        ),
        Field(
            "interval",
            Duration(positive=True),
            default=15.0,
            description="gpuscale: time between decisions.",
        ),
        Field(
            "window", Duration(positive=True), default=60.0, description="gpuscale: rate window."
        ),
        Field(
            "slo",
            Section(
                (Field("ttft", Duration(positive=True)), Field("tpot", Duration(positive=True))),
                lambda ttft, tpot: (ttft, tpot),
                nullable=False,
            ),
            description="gpuscale: the bounds the mix is sized for (default: the service's)",
        ),
        Field("preferWithin", Number(minimum=0.0), default=0.0),
        Field(
            "burstWindow",
            Duration(),
            default=0.0,
            description="gpuscale: size for the largest rate over this window (0: the latest).",
        ),
        Field("metric", Choice(("queue", "concurrency", "latency", "rate")), default="concurrency"),
        Field("target", Positive(), default=2.0),
    ),
    ContenderDecl,
    check=_kind_fields,
    nullable=False,
)
"""A ``variants.contenders[]`` entry (the variants sweep reads its points through this)."""


def variants_section(kinds: SharedKinds) -> Section[VariantsDecl]:
    """The declaration of ``variants:`` (fields whose default is the service's read as None)."""
    deployment: Section[DeploymentDecl] = Section(
        (
            Field("name", Text(), required=True),
            Field(
                "profile",
                Custom(_profile, lambda ctx: {"type": "string", "minLength": 1}),
                required=True,
                description="step-time profile",
            ),
            Field("price", Positive(), required=True, description="price of one replica per hour"),
            Field("nodeSelector", kinds.labels),
            Field("tolerations", kinds.tolerations),
            Field("gpuMemory", kinds.gpu_memory, attr="gpu_memory"),
            Field("replicas", _BOUNDS, default=(None, None)),
            Field("initialReplicas", Integer(0)),
            Field("maxNumSeqs", Integer(1)),
            Field("maxNumBatchedTokens", Integer(1)),
            Field("gpuMemoryUtilization", Fraction(closed_top=True)),
            Field("kvCacheTokens", Integer(1)),
            Field(
                "routingWeight",
                Positive(),
                description="capacity-weighted routing: one replica's weight (default: its"
                " modelled capacity at the service's SLO)",
            ),
        ),
        DeploymentDecl,
        nullable=False,
    )
    return Section(
        (
            Field(
                "deployments",
                ListOf(deployment, "a non-empty list", unique=("name", "variant")),
                required=True,
            ),
            Field(
                "prefer", ListOf(Text(), "a list of variant names", allow_empty=True), default=()
            ),
            Field("contenders", ListOf(CONTENDER, "a list", allow_empty=True), default=()),
            Field(
                "routing",
                Choice(("least-outstanding", "capacity-weighted")),
                default="least-outstanding",
                description="how the gateway spreads requests over every variant's replicas",
            ),
        ),
        VariantsDecl,
        description="One model on several Deployments (GPU types), scaled together.",
        nullable=False,
    )


# --------------------------------------------------------------------------- resolved


def resolve_variants(
    r: ScenarioReader, decl: VariantsDecl, service: ServiceSpec, path: str = "variants"
) -> VariantsSpec | None:
    """``decl`` with the service's values where the document leaves them; problems to ``r``."""
    if service.engine != "vllm" or service.vllm is None:
        r.error(path, "needs service.engine: vllm (each variant runs its own profile)")
        return None
    deployments = [
        _deployment(r, d, f"{path}.deployments[{i}]", service)
        for i, d in enumerate(decl.deployments)
    ]
    resolved = tuple(d for d in deployments if d is not None)
    names = tuple(d.name for d in decl.deployments)
    for n in decl.prefer:
        if n not in names:
            r.error(f"{path}.prefer", f"unknown variant {n!r} (variants: {list(names)})")
    if len(set(decl.prefer)) != len(decl.prefer):
        r.error(f"{path}.prefer", f"lists a variant twice: {list(decl.prefer)}")
    contenders = [
        resolve_contender(r, c, f"{path}.contenders[{i}]", resolved, service)
        for i, c in enumerate(decl.contenders)
    ]
    if len(resolved) < len(deployments) or None in contenders:
        return None
    return VariantsSpec(
        resolved, decl.prefer, tuple(c for c in contenders if c is not None), decl.routing
    )


def _deployment(
    r: ScenarioReader, d: DeploymentDecl, p: str, service: ServiceSpec
) -> VariantSpec | None:
    assert service.vllm is not None
    lo = service.min_replicas if d.replicas[0] is None else d.replicas[0]
    hi = service.max_replicas if d.replicas[1] is None else d.replicas[1]
    if hi < lo:
        r.error(f"{p}.replicas.max", f"must be at least min ({lo}), got {hi}")
        return None
    engine = service.vllm

    def given(value: Any, default: Any) -> Any:
        return default if value is None else value

    engine = replace(
        engine,
        profile=d.profile,
        max_num_seqs=given(d.max_num_seqs, engine.max_num_seqs),
        max_num_batched_tokens=given(d.max_num_batched_tokens, engine.max_num_batched_tokens),
        gpu_memory_utilization=given(d.gpu_memory_utilization, engine.gpu_memory_utilization),
        kv_cache_tokens=given(d.kv_cache_tokens, engine.kv_cache_tokens),
    )
    memory = service.gpu_memory_mib
    if d.gpu_memory is not None:
        memory = None if d.gpu_memory == "whole" else cast("int", d.gpu_memory)
    spec = replace(
        service,
        name=f"{service.name}-{d.name}",
        gpu_memory_mib=memory,
        tolerations=given(d.tolerations, service.tolerations),
        node_selector=given(d.node_selector, service.node_selector),
        min_replicas=lo,
        max_replicas=hi,
        initial_replicas=given(d.initial_replicas, min(lo, hi)),
        vllm=engine,
    )
    try:
        spec.engine_limits()
    except ValueError as exc:
        r.error(f"{p}.gpuMemory", f"{exc} (profile {d.profile.name})")
        return None
    return VariantSpec(d.name, spec, d.price, d.routing_weight)


def resolve_contender(
    r: Reader,
    c: ContenderDecl,
    p: str,
    deployments: tuple[VariantSpec, ...],
    service: ServiceSpec,
) -> VariantContender | None:
    """One contender's bounds (the deployment's with its overrides) and SLO (the service's
    where it gives none)."""
    bounds = {d.name: (d.service.min_replicas, d.service.max_replicas) for d in deployments}
    ok = True
    for n, (lo, hi) in c.replicas.items():
        q = f"{p}.replicas.{n}"
        if n not in bounds:
            r.error(q, f"unknown field (variants: {', '.join(bounds)})")
            ok = False
            continue
        lo = bounds[n][0] if lo is None else lo
        hi = bounds[n][1] if hi is None else hi
        if hi < lo:
            r.error(f"{q}.max", f"must be at least min ({lo}), got {hi}")
            ok = False
        bounds[n] = (lo, hi)
    if sum(hi for _, hi in bounds.values()) < 1:
        r.error(f"{p}.replicas", "every variant has max 0: nothing could serve")
        ok = False
    if c.kind == "fixed" and sum(lo for lo, _ in bounds.values()) < 1:
        r.error(f"{p}.replicas", "a fixed mix holds each variant at its min: every min is 0")
        ok = False
    ttft, tpot = (service.slo.ttft, service.slo.tpot) if c.slo is None else c.slo
    if ttft is None and tpot is None:
        r.error(f"{p}.slo", "expected ttft and/or tpot bounds (the service's SLO has neither)")
        ok = False
    if not ok or not math.isfinite(c.prefer_within):
        return None
    return VariantContender(
        c.name,
        c.kind,
        bounds,
        interval=c.interval,
        window=c.window,
        slo=ServingSlo(ttft, tpot),
        prefer_within=c.prefer_within,
        burst_window=c.burst_window,
        metric=cast("BaselineMetric", c.metric),
        target=c.target,
    )


def read_variant_contender(
    r: Reader,
    item: Any,
    p: str,
    deployments: tuple[VariantSpec, ...],
    service: ServiceSpec,
) -> VariantContender | None:
    """One contender document read and resolved (a variants sweep's points)."""
    decl = CONTENDER.read(r, item, p)
    return None if decl is None else resolve_contender(r, decl, p, deployments, service)


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
