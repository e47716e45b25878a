"""The departures replay: pods leave at their trace times, waiting pods are retried."""

from __future__ import annotations

from simulations.placement.departures import DeparturesConfig, quantile, replay_departures
from simulations.placement.openb import OpenbNode, OpenbPod
from simulations.placement.replay import ReplayConfig, make_strategy

MEM = {"T4": 16384}


def timed(name: str, start: int, end: int, milli: int = 1000, n: int = 1) -> OpenbPod:
    return OpenbPod(name, 1000, 1024, n, milli, creation_time=start, deletion_time=end)


def run(pods: list[OpenbPod], scoring: str = "binpack", copies: int = 1, compress: float = 1.0):  # type: ignore[no-untyped-def]
    record: list[tuple[str, str, float, float]] = []
    result = replay_departures(
        [OpenbNode("a", 32000, 65536, 1, "T4")],
        pods,
        make_strategy(scoring, pods),
        config=DeparturesConfig(
            compress=compress, copies=copies, replay=ReplayConfig(gpu_memory_mib=MEM)
        ),
        record=record,
    )
    return result, record


def test_a_pod_that_does_not_fit_waits_for_a_departure() -> None:
    for scoring in ("binpack", "spread", "fragmentation"):
        result, record = run([timed("first", 0, 100), timed("second", 10, 20)], scoring)
        assert record == [("first", "a", 0.0, 0.0), ("second", "a", 10.0, 100.0)]
        assert (result.gpu_pods, result.waited, result.never_placed) == (2, 1, 0)
        assert result.wait_p50 == result.wait_p99 == 90.0


def test_shares_come_back_and_the_gpu_is_whole_again() -> None:
    pods = [timed("s1", 0, 50, 500), timed("s2", 0, 60, 500), timed("whole", 1, 10)]
    result, record = run(pods)
    assert [r[0] for r in record] == ["s1", "s2", "whole"]
    assert record[2][3] == 60.0  # waits until both shares have left
    assert result.waited == 1


def test_arrivals_are_compressed_run_times_are_not() -> None:
    result, record = run([timed("a", 0, 100), timed("b", 1000, 1050)], compress=10.0)
    assert record == [("a", "a", 0.0, 0.0), ("b", "a", 100.0, 100.0)]  # a leaves at 0 + 100
    assert result.waited == 0


def test_copies_arrive_together_and_queue_in_order() -> None:
    result, record = run([timed("a", 0, 10)], copies=3)
    assert [r[3] for r in record] == [0.0, 10.0, 20.0]
    assert result.waited == 2
    assert result.wait_p99 == 20.0


def test_a_pod_that_can_never_fit_is_reported() -> None:
    result, record = run([timed("big", 0, 10, n=2), timed("ok", 0, 10)])
    assert [r[0] for r in record] == ["ok"]
    assert result.never_placed == 1


def test_allocation_curve_never_passes_what_is_asked_for() -> None:
    pods = [timed(f"p{i}", 10 * i, 10 * i + 35, 250) for i in range(20)]
    result, _ = run(pods)
    assert all(a <= o + 1e-12 for a, o in zip(result.allocated, result.offered, strict=True))
    assert max(result.allocated) == 1.0


def test_quantile_is_nearest_rank() -> None:
    assert quantile([], 0.5) is None
    assert quantile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert quantile([float(i) for i in range(1, 101)], 0.99) == 99.0
