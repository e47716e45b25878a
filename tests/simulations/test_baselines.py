"""Baselines against their upstream tests.

HPA: the external-metric cases of kubernetes ``pkg/controller/podautoscaler/
replica_calculator_test.go`` (quantities in milli-units, as there), its Pods-metric cases, and
the default behavior through :mod:`policies.behavior`. KPA: the cases of knative/serving
``pkg/autoscaler/scaling/autoscaler_test.go`` (target 10 or 1, max rates 10, panic at 200 %).
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulations.serving.baselines.hpa import (
    HpaController,
    NoMetrics,
    PodSample,
    Tolerance,
    external_per_pod_replicas,
    external_value_replicas,
    permissive_behavior,
    pods_metric_replicas,
)
from simulations.serving.baselines.kpa import ConcurrencyWindows, KpaDecider, KpaSpec

TOL = Tolerance()


# ----------------------------------------------------------------------------------- HPA


@pytest.mark.parametrize(
    ("case", "status", "usage", "target", "expected"),
    [
        ("TestReplicaCalcScaleUpPerPodCMExternal", 3, 8600, 2150, 4),
        ("TestReplicaCalcScaleDownPerPodCMExternal", 5, 8600, 2867, 3),
        ("TestReplicaCalcTolerancePerPodCMExternal", 3, 8600, 2900, 3),
    ],
)
def test_external_average_value_cases(
    case: str, status: int, usage: float, target: float, expected: int
) -> None:
    assert external_per_pod_replicas(status, usage, target, TOL) == expected, case


@pytest.mark.parametrize(
    ("case", "current", "ready", "usage", "target", "expected"),
    [
        ("TestReplicaCalcScaleUpCMExternal", 1, 1, 8600, 4400, 2),
        ("TestReplicaCalcScaleUpCMExternalIgnoresUnreadyPods", 3, 1, 8600, 4400, 2),
        ("TestReplicaCalcScaleDownCMExternal", 5, 5, 8600, 14334, 3),
        ("TestReplicaCalcToleranceCMExternal", 3, 3, 8600, 8888, 3),
    ],
)
def test_external_value_cases(
    case: str, current: int, ready: int, usage: float, target: float, expected: int
) -> None:
    assert external_value_replicas(current, ready, usage, target, TOL) == expected, case


def _running(*values: float | None) -> list[PodSample]:
    return [PodSample("Running", v) for v in values]


def test_pods_metric_cases() -> None:
    # TestReplicaCalcScaleUpCM: 3 pods at 20, 10, 30 (target 15) -> 4
    assert pods_metric_replicas(3, _running(20000, 10000, 30000), 15000, TOL) == 4
    # TestReplicaCalcScaleDownCM: 5 pods at 12 (target 20) -> 3
    assert pods_metric_replicas(5, _running(*[12000] * 5), 20000, TOL) == 3
    # TestReplicaCalcToleranceCM: 20, 21, 21 against 20 -> stays 3
    assert pods_metric_replicas(3, _running(20000, 21000, 21000), 20000, TOL) == 3


def test_pods_metric_missing_and_pending_pods() -> None:
    # A scale-up that the missing pod (counted at 0 on a scale-up) brings within tolerance
    # keeps the count.
    assert pods_metric_replicas(2, _running(1900, None), 1000, TOL) == 2
    # On a scale-down missing pods count at the target: 3 at 100, 1 missing, target 1000.
    assert pods_metric_replicas(4, _running(100, 100, 100, None), 1000, TOL) == 2
    # Scale-up with a missing pod at 0: 4 pods, 3 at 2000, target 1000 -> ceil(6000/4000 * 4)
    assert pods_metric_replicas(4, _running(2000, 2000, 2000, None), 1000, TOL) == 6
    # Pending and deleted pods are ignored.
    pods = [*_running(3000), PodSample("Pending", None), PodSample("Running", 0.0, deleting=True)]
    assert pods_metric_replicas(3, pods, 1000, TOL) == 3
    with pytest.raises(NoMetrics):
        pods_metric_replicas(2, [PodSample("Pending", None)], 1000, TOL)


@given(
    st.integers(1, 200),
    st.floats(0, 1e6, allow_nan=False),
    st.floats(0.001, 1e4, allow_nan=False),
)
def test_external_average_value_is_ceil_outside_tolerance(
    status: int, usage: float, target: float
) -> None:
    got = external_per_pod_replicas(status, usage, target, TOL)
    ratio = usage / (target * status)
    if 0.9 <= ratio <= 1.1:
        assert got == status
    else:
        assert got == math.ceil(usage / target)  # Go: math.Ceil(usage / target)


def test_hpa_default_behavior_holds_scale_down_for_five_minutes() -> None:
    hpa = HpaController(1, 10)
    assert hpa.reconcile(4, 8, 0.0) == 8
    assert hpa.reconcile(8, 2, 15.0) == 8  # recommendation 8 is inside the 300 s window
    assert hpa.reconcile(8, 2, 299.0) == 8
    assert hpa.reconcile(8, 2, 301.0) == 2  # 8 fell out of the window (strictly after cutoff)


def test_hpa_default_behavior_limits_scale_up_rate() -> None:
    hpa = HpaController(1, 100)
    # Max of (100 % → 2×current) and (4 pods) per 15 s.
    assert hpa.reconcile(3, 50, 0.0) == 7
    assert hpa.reconcile(7, 50, 5.0) == 7  # both budgets of the last 15 s are used up
    assert hpa.reconcile(7, 50, 16.0) == 14


def test_hpa_without_metrics_and_bounds() -> None:
    hpa = HpaController(2, 6)
    assert hpa.reconcile(4, None, 0.0) == 4
    assert hpa.reconcile(9, 5, 0.0) == 6  # current above max goes straight to max
    assert hpa.reconcile(1, 1, 0.0) == 2
    assert hpa.reconcile(0, 5, 0.0) == 0  # scaled to zero by hand: scaling disabled


def test_permissive_behavior_follows_the_proposal() -> None:
    hpa = HpaController(1, 100, permissive_behavior())
    assert hpa.reconcile(2, 40, 0.0) == 40  # up to 1000 pods or 1000 % per 15 s
    assert hpa.reconcile(22, 3, 1.0) == 3


# ----------------------------------------------------------------------------------- KPA


def kpa(target: float, *, ready: int = 0) -> KpaDecider:
    spec = KpaSpec(
        target=target,
        target_utilization=1.0,
        max_scale_up_rate=10.0,
        max_scale_down_rate=10.0,
    )
    return KpaDecider(spec, ready_at_start=ready)


def test_kpa_stable_mode() -> None:
    a = kpa(10)
    assert a.scale(50, 10, 1, 0.0) == 5  # TestAutoscalerStableModeIncreaseWithConcurrencyDefault
    assert a.scale(100, 10, 1, 0.0) == 10
    b = kpa(10)
    assert b.scale(100, 100, 8, 0.0) == 10  # TestAutoscalerStableModeDecrease
    assert b.scale(50, 50, 8, 0.0) == 5


def test_kpa_rate_limits() -> None:
    a = kpa(10)
    assert a.scale(1000, 1001, 1, 0.0) == 10  # TestAutoscalerRateLimitScaleUp
    assert a.scale(1000, 1001, 10, 0.0) == 100
    b = kpa(10)
    assert b.scale(1, 1, 100, 0.0) == 10  # TestAutoscalerRateLimitScaleDown
    assert b.scale(1, 1, 10, 0.0) == 1
    c = kpa(10)
    assert c.scale(1000, 888, 0, 0.0) == 10  # no ready pods counts as one


def test_kpa_panic_then_unpanic_scale_down() -> None:
    """TestAutoscalerPanicThenUnPanicScaleDown."""
    a = kpa(10)
    assert a.scale(100, 100, 1, 0.0) == 10
    t0 = 100.0
    assert a.scale(100, 1000, 10, t0) == 100
    assert a.panicking and a.panic_time == t0
    assert a.scale(1, 1, 10, t0 + 30) == 100  # traffic gone, still panicking: no scale-down
    assert a.panicking
    assert a.scale(1, 1, 10, t0 + 61) == 1  # a stable window without panic: leave panic
    assert not a.panicking


def test_kpa_unpanic_after_slow_increase_and_extend_window() -> None:
    """TestAutoscalerUnpanicAfterSlowIncrease and TestAutoscalerExtendPanicWindow."""
    a = kpa(1)
    assert a.scale(11, 25, 10, 0.0) == 25
    assert a.panic_time == 0.0
    assert a.scale(30, 41, 40, 30.0) == 41  # 41/40 < 2: panic time does not move
    assert a.panic_time == 0.0
    assert a.scale(50, 56, 55, 62.0) == 50  # no longer in panic
    assert not a.panicking
    b = kpa(1)
    assert b.scale(11, 25, 10, 0.0) == 25
    assert b.scale(30, 80, 40, 30.0) == 80  # still surging: the panic window is extended
    assert b.panic_time == 30.0


def test_kpa_panic_uses_larger_of_stable_and_panic_and_never_decreases() -> None:
    a = kpa(1)
    a.panic_time, a.max_panic_pods = 95.0, 5
    assert a.scale(50, 30, 5, 100.0) == 50  # AutoscalerPanicStableLargerThanPanic
    b = kpa(1)
    b.panic_time, b.max_panic_pods = 95.0, 5
    assert b.scale(20, 30, 5, 100.0) == 30  # AutoscalerPanicStableLessThanPanic
    assert b.scale(20, 10, 30, 101.0) == 30  # in panic the count never goes down


def test_kpa_starts_in_panic_over_one_pod() -> None:
    assert not kpa(10, ready=1).panicking
    a = kpa(10, ready=2)
    assert a.panicking and a.max_panic_pods == 2


def test_concurrency_windows_average_available_buckets() -> None:
    w = ConcurrencyWindows(60.0)
    assert w.averages(6.0) is None
    for v in [10.0] * 54 + [40.0] * 6:
        w.record(v)
    assert w.averages(6.0) == pytest.approx((13.0, 40.0))
    for _ in range(60):
        w.record(0.0)
    assert w.averages(6.0) == (0.0, 0.0)
