"""``queueDepth``: requests waiting, summed over replicas; each replica should hold
``targetPerReplica``.

Proposes ``ceil(waiting / targetPerReplica)``; nothing waiting proposes 0 (the ``replicas.min``
clamp decides the floor). It sees demand while nothing runs, so it can wake a target at zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from policies.decide_types import Proposal
from policies.declare import Field, Positive
from policies.metrics.base import EPS, MetricKind, fixed_text, on_value

_ceil = math.ceil


@dataclass(frozen=True, slots=True)
class QueueDepthMetric:
    """Requests waiting, summed over replicas; each replica should hold ``target_per_replica``."""

    name: str
    query: str
    target_per_replica: float
    type: Literal["queueDepth"] = "queueDepth"


def _text(metric: QueueDepthMetric) -> str:
    return f" waiting / {metric.target_per_replica:g} per replica → "


def queue_depth(metric: QueueDepthMetric, waiting: float) -> Proposal:
    if waiting < 0:
        waiting = 0.0
    n = int(_ceil(waiting / metric.target_per_replica - EPS))
    if n < 0:
        n = 0
    text = fixed_text(metric, _text)
    return Proposal(metric.name, "queueDepth", waiting, n, f"{waiting:g}{text}{n}")


def _document(m: QueueDepthMetric) -> dict[str, Any]:
    return {"targetPerReplica": m.target_per_replica}


KIND: MetricKind[QueueDepthMetric, None] = MetricKind(
    type="queueDepth",
    cls=QueueDepthMetric,
    description="Requests waiting, summed over replicas.",
    fields=(
        Field(
            "targetPerReplica",
            Positive(),
            required=True,
            description="Requests waiting that one replica should hold.",
        ),
    ),
    to_document=_document,
    propose=on_value(lambda m, v, _: queue_depth(m, v)),
    target=lambda m: m.target_per_replica,
    measures="queue",
    wakes=True,
    rate_sized=False,
)
