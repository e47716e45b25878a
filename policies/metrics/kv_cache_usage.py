"""``kvCacheUsage``: KV-cache saturation (``vllm:kv_cache_usage_perc``, 0..1, averaged over
replicas) against a target, scaled in proportion as the llm-d Workload Variant Autoscaler scales
on saturation.

Proportional control on saturation, ``ceil(current * usage / target)``, with the latency rule's
±10% dead band; with no replicas, 1 when the cache is in use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from policies.decide_types import Proposal
from policies.declare import Field, Fraction
from policies.metrics.base import MetricKind, on_value, proportional


@dataclass(frozen=True, slots=True)
class KvCacheMetric:
    """KV-cache saturation: ``kv_cache_usage_perc`` (0..1, averaged over replicas) against
    ``target``, scaled in proportion as the llm-d Workload Variant Autoscaler scales on
    saturation."""

    name: str
    query: str
    target: float
    type: Literal["kvCacheUsage"] = "kvCacheUsage"


def kv_cache_usage(metric: KvCacheMetric, usage: float, current: int) -> Proposal:
    """Scale in proportion to KV-cache saturation (``usage`` in 0..1)."""
    usage = min(max(usage, 0.0), 1.0)
    ratio = usage / metric.target
    head = f"KV cache {usage * 100:.1f}% vs target {metric.target * 100:g}% (×{ratio:.2f})"
    n, why = proportional(current, ratio, head, wake=usage > 0, objective="target")
    return Proposal(metric.name, "kvCacheUsage", usage, n, why)


def _document(m: KvCacheMetric) -> dict[str, Any]:
    return {"target": m.target}


KIND: MetricKind[KvCacheMetric, None] = MetricKind(
    type="kvCacheUsage",
    cls=KvCacheMetric,
    description="KV-cache saturation (vllm:kv_cache_usage_perc), scaled in proportion.",
    fields=(
        Field(
            "target",
            Fraction(),
            required=True,
            description="KV-cache usage (0..1, averaged over replicas) to hold.",
        ),
    ),
    to_document=_document,
    propose=on_value(kv_cache_usage),
    target=lambda m: m.target,
    measures="kvCacheUsage",
    wakes=False,
    rate_sized=False,
)
