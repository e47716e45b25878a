"""``latency``: an observed latency quantile (seconds) against an SLO (seconds).

Proportional control, ``ceil(current * observed / slo)``. Dead band: while the observed quantile
lies within ±10% of the SLO (``0.9 <= observed/slo <= 1.1``) the proposal is ``current``, so
measurement noise around the target does not make the count flap. It only ever competes in the
max, so it cannot pull the count below what the other metrics need. With ``current == 0`` there
is nothing to scale proportionally: it proposes 1 when the observed latency is above the SLO
(someone is being served badly, a replica is needed), else 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from policies.decide_types import Proposal
from policies.declare import Duration, Field
from policies.durations import format_duration
from policies.metrics.base import (
    DEAD_BAND,
    MetricKind,
    fixed_text,
    on_value,
    proportional,
)

LATENCY_DEAD_BAND = DEAD_BAND
"""Relative distance from the SLO within which the latency rule proposes no change."""


@dataclass(frozen=True, slots=True)
class LatencyMetric:
    """An observed latency quantile (seconds) compared with ``slo`` (seconds)."""

    name: str
    query: str
    slo: float
    type: Literal["latency"] = "latency"


def _text(metric: LatencyMetric) -> str:
    return f"s vs SLO {metric.slo:g}s (×"


def latency(metric: LatencyMetric, observed: float, current: int) -> Proposal:
    if observed < 0:
        observed = 0.0
    slo = metric.slo
    ratio = observed / slo
    r = f"{ratio:.2f}"
    head = f"{observed:.3g}{fixed_text(metric, _text)}{r})"
    n, why = proportional(current, ratio, head, wake=observed > slo, objective="SLO")
    return Proposal(metric.name, "latency", observed, n, why)


def _document(m: LatencyMetric) -> dict[str, Any]:
    return {"slo": format_duration(m.slo)}


KIND: MetricKind[LatencyMetric, None] = MetricKind(
    type="latency",
    cls=LatencyMetric,
    description="A latency quantile (seconds) against an SLO.",
    fields=(
        Field(
            "slo",
            Duration(positive=True),
            required=True,
            description="The observed latency quantile's objective.",
        ),
    ),
    to_document=_document,
    propose=on_value(latency),
    target=lambda m: m.slo,
    measures="latency",
    wakes=False,
    rate_sized=False,
)
