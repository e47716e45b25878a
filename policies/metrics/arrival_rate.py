"""``arrivalRate``: requests/s, turned into replicas by an M/M/c model of one replica's service
rate.

Proposes the smallest ``c`` whose M/M/c response-time quantile meets the target
(:func:`policies.queueing.replicas_for_latency`); 0 req/s proposes 0; when even ``max``
replicas cannot meet it, ``max`` with ``saturated=True``; when service time alone misses it, the
target just above the service time's own quantile (``unreachable``, :mod:`policies.reachable`).
With ``forecast: holt`` it sizes for the rate expected ``coldStart`` ahead, and ``burst`` holds
its sizes (see :mod:`policies.decide`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from policies import jsonschema_parts as js
from policies.decide_types import Proposal
from policies.durations import format_duration
from policies.metrics.base import FieldReader, MetricKind, fixed_text
from policies.queueing import replicas_for_latency


@dataclass(frozen=True, slots=True)
class LatencyTarget:
    """``quantile`` of request latency (0 < q < 1) must stay within ``slo`` seconds."""

    quantile: float
    slo: float


@dataclass(frozen=True, slots=True)
class ArrivalRateMetric:
    """Requests/s, turned into replicas by an M/M/c model of ``service_rate_per_replica``."""

    name: str
    query: str
    service_rate_per_replica: float
    latency_target: LatencyTarget
    type: Literal["arrivalRate"] = "arrivalRate"


def _text(metric: ArrivalRateMetric) -> str:
    t, mu = metric.latency_target, metric.service_rate_per_replica
    return f"p{t.quantile * 100:g} ≤ {t.slo:g}s at {mu:g}/s per replica"


def arrival_rate(
    metric: ArrivalRateMetric, observed: float, max_replicas: int, sized_for: float | None = None
) -> Proposal:
    """Size for ``sized_for`` (a forecast, already >= ``observed``) or else for ``observed``."""
    if observed < 0:
        observed = 0.0
    lam = observed if sized_for is None else max(sized_for, observed)
    target = metric.latency_target
    mu = metric.service_rate_per_replica
    goal = fixed_text(metric, _text)
    if sized_for is None:
        rate = f"{observed:g} req/s"
    elif lam > observed:
        rate = f"{observed:g} req/s, {lam:.4g} forecast by coldStart"
    else:
        rate = f"{observed:g} req/s (forecast no higher)"
    if lam <= 0:
        return Proposal(
            metric.name, "arrivalRate", observed, 0, f"{rate}: no load → 0", False, sized_for
        )
    s = replicas_for_latency(lam, mu, target.quantile, target.slo, max_replicas)
    if s.unreachable is not None:
        goal = f"{goal}; unreachable: {s.unreachable}"
    if s.saturated:
        why = f"{rate}, {goal}: saturated, {s.why} → max {s.replicas}"
    else:
        why = f"{rate}, {goal} → M/M/c needs {s.replicas}"
    return Proposal(
        metric.name,
        "arrivalRate",
        observed,
        s.replicas,
        why,
        s.saturated,
        sized_for,
        unreachable=s.unreachable,
    )


def _propose(
    metric: ArrivalRateMetric,
    value: float,
    _: None,
    current: int,
    max_replicas: int,
    sized_for: float | None,
) -> Proposal:
    return arrival_rate(metric, value, max_replicas, sized_for)


def read_latency_target(r: FieldReader, value: Any, path: str) -> LatencyTarget | None:
    obj = r.mapping(value, path, required=("quantile", "slo"))
    if obj is None:
        return None
    quantile = r.get(obj, path, "quantile", lambda v, p: r.fraction(v, p, closed_top=False))
    slo = r.get(obj, path, "slo", lambda v, p: r.duration(v, p, positive=True))
    if quantile is None or slo is None:
        return None
    return LatencyTarget(quantile, slo)


def _parse(
    r: FieldReader, obj: Mapping[str, Any], path: str, name: str | None, query: str | None
) -> ArrivalRateMetric | None:
    rate = r.get(obj, path, "serviceRatePerReplica", r.positive)
    target = r.get(obj, path, "latencyTarget", lambda v, p: read_latency_target(r, v, p))
    if name and query and rate and target:
        return ArrivalRateMetric(name, query, rate, target)
    return None


def _document(m: ArrivalRateMetric) -> dict[str, Any]:
    return {
        "serviceRatePerReplica": m.service_rate_per_replica,
        "latencyTarget": {
            "quantile": m.latency_target.quantile,
            "slo": format_duration(m.latency_target.slo),
        },
    }


_LATENCY_TARGET = js.closed_object(
    {
        "quantile": {
            "type": "number",
            "exclusiveMinimum": 0,
            "exclusiveMaximum": 1,
            "description": "Quantile of request latency, in (0, 1).",
        },
        "slo": js.duration("The quantile must stay within this.", positive=True),
    },
    ("quantile", "slo"),
)

KIND: MetricKind[ArrivalRateMetric, None] = MetricKind(
    type="arrivalRate",
    cls=ArrivalRateMetric,
    description="Requests/s, turned into replicas by a queueing model (Erlang C).",
    required=("serviceRatePerReplica", "latencyTarget"),
    optional=(),
    parse=_parse,
    to_document=_document,
    schema={
        "serviceRatePerReplica": js.positive("Requests/s one replica completes at full load."),
        "latencyTarget": _LATENCY_TARGET,
    },
    propose=_propose,
    target=lambda m: m.service_rate_per_replica,
    measures="requestRate",
    wakes=True,
    rate_sized=True,
)
