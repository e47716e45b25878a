"""The upstream HorizontalPodAutoscaler, as ``pkg/controller/podautoscaler`` computes it.

Replica calculation (``replica_calculator.go``) is reproduced here, because only the baselines
need it: the usage ratio against the target, the tolerance band (``--horizontal-pod-autoscaler-
tolerance``, default 0.1, or per-direction tolerances), and ``ceil``:

- ``External`` metric with target ``Value``: ``ceil(usage / target * readyPods)``
  (``GetExternalMetricReplicas`` → ``getUsageRatioReplicaCount``);
- ``External`` with target ``AverageValue``: ``ceil(usage / target)``, judged against
  ``status.replicas`` (``GetExternalPerPodMetricReplicas``) — what KEDA and gpuscale use;
- ``Pods`` metric with ``AverageValue``: the per-pod average with Pending and deleted pods
  ignored, and pods without a sample ("missing") counted at the target on a scale-down and at 0
  on a scale-up, a result that would flip direction being discarded (``calcPlainMetricReplicas``).

What happens after the metric proposal (the ``behavior`` stabilization windows and rate limits) is
not copied: :class:`HpaController` calls :mod:`policies.behavior`, the same code gpuscale runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from policies.behavior import limit_rate, record_scale_event, stabilize
from policies.decide_types import Recommendation, ScaleEvent
from policies.schema import Behavior, ScalingRule, ScalingRules

DEFAULT_SYNC_PERIOD = 15.0
"""``--horizontal-pod-autoscaler-sync-period``."""
DEFAULT_TOLERANCE = 0.1


class NoMetrics(Exception):
    """No usable metric sample: upstream returns an error and the HPA keeps its count."""


@dataclass(frozen=True, slots=True)
class Tolerance:
    """Ratios in ``[1 - scale_down, 1 + scale_up]`` leave the count unchanged."""

    scale_down: float = DEFAULT_TOLERANCE
    scale_up: float = DEFAULT_TOLERANCE

    def within(self, ratio: float) -> bool:
        return 1.0 - self.scale_down <= ratio <= 1.0 + self.scale_up


def external_value_replicas(
    current_replicas: int, ready_pods: int, usage: float, target: float, tolerance: Tolerance
) -> int:
    """External metric, target type ``Value``: scales the *ready* pod count by the ratio."""
    ratio = usage / target
    if current_replicas == 0:
        return math.ceil(ratio)
    if tolerance.within(ratio):
        return current_replicas
    return math.ceil(ratio * ready_pods)


def external_per_pod_replicas(
    status_replicas: int, usage: float, target_per_pod: float, tolerance: Tolerance
) -> int:
    """External metric, target type ``AverageValue``: ``ceil(usage / target)`` unless tolerated."""
    if status_replicas > 0:
        ratio = usage / (target_per_pod * status_replicas)
        if tolerance.within(ratio):
            return status_replicas
    return math.ceil(usage / target_per_pod)


PodPhase = Literal["Pending", "Running", "Failed"]


@dataclass(frozen=True, slots=True)
class PodSample:
    """One pod as the HPA sees it: phase, deletion, and its metric (``None``: no sample)."""

    phase: PodPhase
    value: float | None
    deleting: bool = False


def pods_metric_replicas(
    current_replicas: int, pods: Sequence[PodSample], target: float, tolerance: Tolerance
) -> int:
    """``Pods`` metric with target ``AverageValue`` (not CPU, so unready pods are not special).

    Raises :class:`NoMetrics` when no counted pod has a sample.
    """
    metrics: list[float] = []
    missing = 0
    ready = 0
    for p in pods:
        if p.deleting or p.phase in ("Failed", "Pending"):
            continue
        if p.value is None:
            missing += 1
            continue
        metrics.append(p.value)
        ready += 1
    if not metrics:
        raise NoMetrics("did not receive metrics for targeted pods (pods might be unready)")
    ratio = sum(metrics) / len(metrics) / target
    if missing == 0:
        if tolerance.within(ratio):
            return current_replicas
        return math.ceil(ratio * ready)
    fill = target if ratio < 1.0 else 0.0
    filled = sum(metrics) + fill * missing
    count = len(metrics) + missing
    new_ratio = filled / count / target
    if (
        tolerance.within(new_ratio)
        or (ratio < 1.0 and new_ratio > 1.0)
        or (ratio > 1.0 and new_ratio < 1.0)
    ):
        return current_replicas
    new_replicas = math.ceil(new_ratio * count)
    if (new_ratio < 1.0 and new_replicas > current_replicas) or (
        new_ratio > 1.0 and new_replicas < current_replicas
    ):
        return current_replicas
    return new_replicas


@dataclass(slots=True)
class HpaController:
    """One HPA object's reconcile step (``reconcileAutoscaler``) after the metric proposal.

    ``behavior`` defaults to upstream's defaults; a permissive behavior (gpuscale's own HPA)
    is :func:`permissive_behavior`.
    """

    min_replicas: int
    max_replicas: int
    behavior: Behavior = field(default_factory=Behavior)
    recommendations: tuple[Recommendation, ...] = ()
    up_events: tuple[ScaleEvent, ...] = ()
    down_events: tuple[ScaleEvent, ...] = ()

    def reconcile(self, current: int, proposal: int | None, now: float) -> int:
        """The scale to write given ``spec.replicas`` and the metrics' proposal.

        ``proposal is None`` (metrics failed) keeps ``current``, as upstream does on error.
        """
        lo, hi = self.min_replicas, self.max_replicas
        if current == 0 and lo != 0:
            return 0
        if current > hi:
            desired = hi
        elif current < lo:
            desired = lo
        elif proposal is None:
            return current
        else:
            stabilized, self.recommendations, _ = stabilize(
                self.recommendations, max(proposal, 0), current, self.behavior, now
            )
            desired, _ = limit_rate(
                stabilized, current, lo, hi, self.up_events, self.down_events, self.behavior, now
            )
        if desired != current:
            self.up_events, self.down_events = record_scale_event(
                self.up_events, self.down_events, current, desired, self.behavior, now
            )
        return desired


def permissive_behavior() -> Behavior:
    """The behavior gpuscale's controller writes on its own HPA (no window, 1000 %/1000 pods
    per 15 s both ways), so the rules already applied by :mod:`policies` are not applied twice."""
    rules = ScalingRules(
        stabilization_window=0.0,
        select="Max",
        policies=(ScalingRule("Percent", 1000, 15.0), ScalingRule("Pods", 1000, 15.0)),
    )
    return Behavior(scale_up=rules, scale_down=rules)
