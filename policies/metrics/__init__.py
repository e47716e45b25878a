"""The metric types, one module each, registered in :data:`KINDS`.

A new metric type is one new module here (its dataclass, parse, JSON Schema fragment, extra
queries, proposal and target figure, gathered in a :class:`~policies.metrics.base.MetricKind`)
and one line in each of :data:`MetricType`, :data:`Metric` and :data:`KINDS` below. Everything
else (the parser, the JSON Schema, ``decide``, namespace enforcement, the controller's status,
the simulator) reads the entry; ``tests/policies/test_metric_registry.py`` holds the three lines
to each other.
"""

from __future__ import annotations

from typing import Any, Literal

from policies.metrics import arrival_rate, kv_cache_usage, latency, model_capacity, queue_depth
from policies.metrics.arrival_rate import ArrivalRateMetric
from policies.metrics.base import MetricKind, input_key
from policies.metrics.kv_cache_usage import KvCacheMetric
from policies.metrics.latency import LatencyMetric
from policies.metrics.model_capacity import ModelCapacityMetric
from policies.metrics.queue_depth import QueueDepthMetric

MetricType = Literal["queueDepth", "latency", "arrivalRate", "kvCacheUsage", "modelCapacity"]

Metric = QueueDepthMetric | LatencyMetric | ArrivalRateMetric | KvCacheMetric | ModelCapacityMetric

KINDS: dict[str, MetricKind[Any, Any]] = {
    k.type: k
    for k in (
        queue_depth.KIND,
        latency.KIND,
        arrival_rate.KIND,
        kv_cache_usage.KIND,
        model_capacity.KIND,
    )
}
"""Every metric type by its YAML ``type``, in the order errors and the schema list them."""

WAKE_TYPES = frozenset(t for t, k in KINDS.items() if k.wakes)
"""Metric types that measure demand itself, so they can wake a target scaled to zero."""


def kind_of(metric: Metric) -> MetricKind[Any, Any]:
    """The registry entry of ``metric``'s type."""
    return KINDS[metric.type]


def metric_inputs(metric: Metric) -> tuple[tuple[str, str], ...]:
    """``(snapshot key, PromQL)`` of every query a metric needs; the first key is its name."""
    queries = KINDS[metric.type].queries
    if not queries:
        return ((metric.name, metric.query),)
    out = [(metric.name, metric.query)]
    for q in queries:
        promql = getattr(metric, q.attribute)
        if promql is not None:
            out.append((input_key(metric.name, q.part), promql))
    return tuple(out)


def metric_target(metric: Metric) -> float:
    """The per-metric figure dashboards draw next to the value."""
    return KINDS[metric.type].target(metric)
