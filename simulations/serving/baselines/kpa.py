"""Knative's Pod Autoscaler (KPA), as ``pkg/autoscaler/scaling/autoscaler.go`` decides.

Every tick (2 s) the decider reads the average total concurrency over the stable window (60 s)
and the panic window (10 % of it, 6 s), from 1-second buckets (``WindowAverage``: the mean of
the buckets since the first one, at most a window's worth). Then:

- ``dspc = ceil(stable / target)``, ``dppc = ceil(panic / target)``, each clamped to
  ``[floor(ready / maxScaleDownRate), ceil(maxScaleUpRate * ready)]`` (``ready`` at least 1);
- panic starts when ``dppc / ready >= panicThreshold`` (200 % → 2.0), is extended while that
  holds, and ends once the threshold has not been crossed for a stable window;
- in panic the count never goes down: it is the largest of the panic-time proposals.

``target`` is the per-pod concurrency target times the target utilization (default 70 %).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

TICK = 2.0
BUCKET = 1.0


@dataclass(frozen=True, slots=True)
class KpaSpec:
    """The decider spec (``DeciderSpec``) with Knative's defaults."""

    target: float
    """Per-pod concurrency target (``autoscaling.knative.dev/target``)."""
    target_utilization: float = 0.7
    panic_threshold: float = 2.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    stable_window: float = 60.0
    panic_window_percentage: float = 10.0
    reachable: bool = True

    @property
    def target_value(self) -> float:
        return self.target * self.target_utilization

    @property
    def panic_window(self) -> float:
        return self.stable_window * self.panic_window_percentage / 100.0


class KpaDecider:
    """The stateful part of the KPA: panic start time and the most pods asked for in panic."""

    __slots__ = ("max_panic_pods", "panic_time", "spec")

    def __init__(self, spec: KpaSpec, ready_at_start: int = 0, now: float = 0.0) -> None:
        self.spec = spec
        # Upstream starts in panic mode when created over more than one ready pod.
        self.panic_time: float | None = now if ready_at_start > 1 else None
        self.max_panic_pods = ready_at_start

    @property
    def panicking(self) -> bool:
        return self.panic_time is not None

    def scale(self, stable: float, panic: float, ready_pods: int, now: float) -> int:
        """The desired pod count (``Scale``), updating the panic state."""
        spec = self.spec
        ready = max(1.0, float(ready_pods))
        max_up = math.ceil(spec.max_scale_up_rate * ready)
        max_down = math.floor(ready / spec.max_scale_down_rate) if spec.reachable else 0.0
        dspc = math.ceil(stable / spec.target_value)
        dppc = math.ceil(panic / spec.target_value)
        desired_stable = int(min(max(dspc, max_down), max_up))
        desired_panic = int(min(max(dppc, max_down), max_up))
        over = dppc / ready >= spec.panic_threshold
        if over:  # start panicking, or extend the panic while still over the threshold
            self.panic_time = now
        elif self.panic_time is not None and self.panic_time + spec.stable_window < now:
            self.panic_time = None
            self.max_panic_pods = 0
        desired = desired_stable
        if self.panic_time is not None:
            desired = max(desired, desired_panic)
            if desired > self.max_panic_pods:
                self.max_panic_pods = desired
            desired = self.max_panic_pods
        return desired


class ConcurrencyWindows:
    """Per-second buckets of observed total concurrency, averaged over the two windows."""

    __slots__ = ("_buckets", "_capacity")

    def __init__(self, stable_window: float) -> None:
        self._capacity = max(1, round(stable_window / BUCKET))
        self._buckets: deque[float] = deque(maxlen=self._capacity)

    def record(self, value: float) -> None:
        self._buckets.append(value)

    def averages(self, panic_window: float) -> tuple[float, float] | None:
        """``(stable, panic)`` averages, or ``None`` before the first bucket (no data)."""
        b = self._buckets
        if not b:
            return None
        stable = sum(b) / len(b)
        k = min(len(b), max(1, round(panic_window / BUCKET)))
        panic = sum(b[i] for i in range(len(b) - k, len(b))) / k
        return stable, panic
