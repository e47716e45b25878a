"""What one metric type is to the rest of gpuscale: the :class:`MetricKind` entry each type
module exports, and the small helpers those modules share.

A metric type is one module of :mod:`policies.metrics` (its dataclass, its declared fields, from
which the reader and the JSON Schema derive, its extra PromQL inputs, its proposal, its target
figure) and one line in the registry there. Everything that used to ask ``isinstance`` of a
metric asks its entry.
"""

from __future__ import annotations

import builtins
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, Generic, Literal, TypeVar

from policies.decide_types import Proposal
from policies.declare import Check, Const, Context, Field, Section, Text
from policies.reading import POLICY

T = TypeVar("T")
M = TypeVar("M")
X = TypeVar("X")

Measure = Literal["queue", "latency", "requestRate", "kvCacheUsage"]
"""What a metric's main query measures, for a simulator that answers queries it cannot parse
from the quantity itself (waiting requests, a latency quantile, requests/s, KV-cache use)."""

DEAD_BAND = 0.1
"""Relative distance from the objective within which a proportional rule proposes no change."""

EPS = 1e-9
"""Ceilings subtract this first, so that float noise (``12.000000000000002``) adds no replica."""
_ceil = math.ceil


def ceil_div(x: float, y: float) -> int:
    """``ceil(x / y)`` forgiving float noise just above an integer."""
    return int(_ceil(x / y - EPS))


def proportional(
    current: int, ratio: float, head: str, *, wake: bool, objective: str
) -> tuple[int, str]:
    """The HPA's proportional rule, shared by the metrics compared with an objective (a
    latency SLO, a KV-cache target): ``ceil(current × ratio)``, no change within
    :data:`DEAD_BAND` of 1, and from zero replicas one when ``wake`` (the metric is above its
    objective). Returns the count and the explanation that follows ``head``."""
    if current <= 0:
        n = 1 if wake else 0
        return n, f"{head}, no replicas running → {n}"
    if 1.0 - DEAD_BAND <= ratio <= 1.0 + DEAD_BAND:
        return current, f"{head}, within ±10% of the {objective} → keep {current}"
    n = max(int(_ceil(current * ratio - EPS)), 0)
    return n, f"{head} → ceil({current} × {ratio:.2f}) = {n}"


def input_key(metric: str, part: str) -> str:
    """Snapshot key of a metric's extra input (``capacity:promptTokens``)."""
    return f"{metric}:{part}"


@dataclass(frozen=True, slots=True)
class QueryField:
    """A PromQL input beyond the main ``query``: snapshot key part, attribute, YAML field."""

    part: str
    attribute: str
    field: str


@dataclass(frozen=True, slots=True)
class MetricKind(Generic[M, X]):
    """One metric type: the registry entry of :mod:`policies.metrics`.

    ``M`` is the type's dataclass, ``X`` what :attr:`prepare` reads from the snapshot beyond the
    main value (``None`` for types with one query).
    """

    type: str
    """The YAML ``type``."""
    cls: builtins.type[M]
    description: str
    """One line for the JSON Schema."""
    fields: tuple[Field, ...]
    """Its fields beyond ``name``, ``type`` and ``query``: the reader and the JSON Schema both
    derive from them (:mod:`policies.declare`); ``cls`` is built from what they read."""
    to_document: Callable[[M], dict[str, Any]]
    """The YAML fields of this type, every one spelled out (after name, type and query)."""
    propose: Propose[M, X]
    """``(metric, value, prepared, current, max replicas, sized for)``: its replica count."""
    target: Callable[[M], float]
    """The figure status and dashboards draw next to the value (``gpuscale_metric_target``)."""
    measures: Measure
    wakes: bool
    """It sees demand while nothing runs, so it can scale a target up from zero."""
    rate_sized: bool
    """It sizes for a request rate: Holt forecasts it and the burst envelope holds its sizes."""
    queries: tuple[QueryField, ...] = ()
    """Optional extra PromQL inputs; an attribute that is None is not queried."""
    prepare: Callable[[M, float, Mapping[str, float | None]], X | None] | None = None
    """Reads the extra inputs from the snapshot values; None marks the metric missing."""
    check: Check | None = None
    """Rules across this type's fields, run after they are read (:class:`Section`)."""
    constraints: Mapping[str, Any] = dataclass_field(default_factory=dict)
    """JSON Schema keywords across this type's fields (exactly one of a query and a mean)."""
    parser_only: tuple[tuple[str, re.Pattern[str]], ...] = ()
    """Rules of this type's check that JSON Schema cannot state: (rule, error pattern)."""

    @property
    def section(self) -> Section[M]:
        """The whole metric as one declared section: the common fields, then the type's
        (built once per entry: every metric of every policy read asks for it)."""
        hit = _SECTIONS.get(id(self))
        if hit is not None and hit[0] is self:
            return hit[1]
        common = (
            Field("name", METRIC_NAME, required=True, description=METRIC_NAME_TEXT),
            Field("type", Const(self.type), required=True),
            Field("query", Text(), required=True, description="PromQL returning one number."),
        )
        section = Section(
            (*common, *self.fields), self.cls, self.description, self.check, self.constraints
        )
        _SECTIONS[id(self)] = (self, section)
        return section

    @property
    def required(self) -> tuple[str, ...]:
        """Fields of this type beyond ``name``, ``type`` and ``query`` that must be given."""
        return tuple(f.name for f in self.fields if f.required)

    @property
    def optional(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if not f.required)

    @property
    def schema(self) -> dict[str, Any]:
        """JSON Schema of the fields in ``required`` and ``optional``."""
        return {f.name: f.schema(Context(POLICY)) for f in self.fields}


METRIC_NAME = Text(
    r"[a-z]([-a-z0-9_]*[a-z0-9])?", "lower-case letters, digits, '-' or '_', starting with a letter"
)
"""A metric's ``name``: it becomes a snapshot key and a Prometheus label value."""
METRIC_NAME_TEXT = "Unique within the policy: lower-case letters, digits, - and _."

Propose = Callable[[M, float, X, int, int, float | None], Proposal]
_SECTIONS: dict[int, tuple[Any, Section[Any]]] = {}
"""Each entry's section by identity (the entry is kept, so its id is not reused)."""


def on_value(rule: Callable[[M, float, int], Proposal]) -> Propose[M, None]:
    """``propose`` of a type whose count depends on its observed value and the current count
    only (no extra inputs, no ceiling, no sizing)."""

    def propose(
        metric: M, value: float, _: None, current: int, max_replicas: int, sized: float | None
    ) -> Proposal:
        return rule(metric, value, current)

    return propose


_TEXT: dict[int, tuple[object, str]] = {}


def fixed_text(metric: M, build: Callable[[M], str]) -> str:
    """The part of a metric's reason that only depends on the policy, formatted once.

    Keyed by identity (the entry holds the metric, so the id cannot be reused while cached).
    """
    hit = _TEXT.get(id(metric))
    if hit is not None and hit[0] is metric:
        return hit[1]
    text = build(metric)
    if len(_TEXT) >= 4096:
        _TEXT.clear()
    _TEXT[id(metric)] = (metric, text)
    return text
