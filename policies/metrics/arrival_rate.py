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

from dataclasses import dataclass
from typing import Any, Literal

from policies.decide_types import Proposal
from policies.declare import Duration, Field, Fraction, Positive, Section
from policies.durations import format_duration
from policies.metrics.base import MetricKind, fixed_text
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


def _document(m: ArrivalRateMetric) -> dict[str, Any]:
    return {
        "serviceRatePerReplica": m.service_rate_per_replica,
        "latencyTarget": {
            "quantile": m.latency_target.quantile,
            "slo": format_duration(m.latency_target.slo),
        },
    }


LATENCY_TARGET = Section(
    (
        Field(
            "quantile",
            Fraction(closed_top=False),
            required=True,
            description="Quantile of request latency, in (0, 1).",
        ),
        Field(
            "slo",
            Duration(positive=True),
            required=True,
            description="The quantile must stay within this.",
        ),
    ),
    LatencyTarget,
)

KIND: MetricKind[ArrivalRateMetric, None] = MetricKind(
    type="arrivalRate",
    cls=ArrivalRateMetric,
    description="Requests/s, turned into replicas by a queueing model (Erlang C).",
    fields=(
        Field(
            "serviceRatePerReplica",
            Positive(),
            required=True,
            description="Requests/s one replica completes at full load.",
        ),
        Field("latencyTarget", LATENCY_TARGET, required=True),
    ),
    to_document=_document,
    propose=_propose,
    target=lambda m: m.service_rate_per_replica,
    measures="requestRate",
    wakes=True,
    rate_sized=True,
)
