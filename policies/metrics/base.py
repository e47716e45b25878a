"""What one metric type is to the rest of gpuscale: the :class:`MetricKind` entry each type
module exports, and the small helpers those modules share.

A metric type is one module of :mod:`policies.metrics` (its dataclass, how it is read from YAML,
its JSON Schema fragment, its extra PromQL inputs, its proposal, its target figure) and one line
in the registry there. Everything that used to ask ``isinstance`` of a metric asks its entry.
"""

from __future__ import annotations

import builtins
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from policies.decide_types import Proposal
from policies.reading import Reader

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


FieldReader = Reader
"""What a metric type reads its own fields with: the configuration reader every document uses
(:mod:`policies.reading`); every problem is recorded as ``path: message``, none stops the
reading."""


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
    required: tuple[str, ...]
    """Fields of this type beyond ``name``, ``type`` and ``query`` that must be given."""
    optional: tuple[str, ...]
    parse: Parse[M]
    """``(reader, mapping, path, name, query)``: the metric, or None with errors recorded."""
    to_document: Callable[[M], dict[str, Any]]
    """The YAML fields of this type, every one spelled out (after name, type and query)."""
    schema: dict[str, Any]
    """JSON Schema of the fields in ``required`` and ``optional``."""
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
    schema_constraints: dict[str, Any] | None = None
    """JSON Schema keywords across this type's fields (exactly one of a query and a mean)."""
    parser_only: tuple[tuple[str, re.Pattern[str]], ...] = ()
    """Rules of this type's parse that JSON Schema cannot state: (rule, error pattern)."""


Parse = Callable[[FieldReader, Mapping[str, Any], str, str | None, str | None], M | None]
Propose = Callable[[M, float, X, int, int, float | None], Proposal]


def one_field(
    field: str,
    read: Callable[[FieldReader], Callable[[Any, str], T | None]],
    make: Callable[[str, str, T], M],
) -> Parse[M]:
    """``parse`` of a type with one field of its own beyond ``name`` and ``query``: ``read``
    gives the reader's check for the field, ``make`` builds the metric."""

    def parse(
        r: FieldReader, obj: Mapping[str, Any], path: str, name: str | None, query: str | None
    ) -> M | None:
        value = r.get(obj, path, field, read(r))
        if name and query and value is not None:
            return make(name, query, value)
        return None

    return parse


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
