"""The openb placement replay: protocol, accounting, and agreement with the extender's code."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.filtering import ClusterSnapshot, choose_devices
from extender.fragmentation import Fragmentation
from extender.objects import GfdInfo, GpuNeed, NodeInfo, PodRequest
from extender.scoring import register
from simulations.placement.openb import MILLI, OpenbNode, OpenbPod, read_nodes, read_pods
from simulations.placement.replay import (
    PlacementError,
    ReplayConfig,
    make_strategy,
    need_on,
    replay,
    run_trace,
    sample_pods,
    trace_order,
    workload_of,
)

DATA = Path(__file__).resolve().parents[2] / "simulations" / "data"
MEM = {"T4": 16384, "V100M32": 32768}


def node(
    name: str, gpus: int = 2, model: str = "T4", cpu: int = 32000, mem: int = 65536
) -> OpenbNode:
    return OpenbNode(name=name, cpu_milli=cpu, memory_mib=mem, gpus=gpus, model=model)


def pod(name: str, milli: int = 1000, n: int = 1, cpu: int = 1000, mem: int = 1024) -> OpenbPod:
    return OpenbPod(
        name=name, cpu_milli=cpu, memory_mib=mem, num_gpu=n, gpu_milli=milli if n else 0
    )


def config(**kw: object) -> ReplayConfig:
    base: dict[str, object] = {"gpu_memory_mib": MEM, "repeats": 1, "curve_step": 0.05}
    base.update(kw)
    return ReplayConfig(**base)  # type: ignore[arg-type]


def run(nodes: list[OpenbNode], pods: list[OpenbPod], scoring: str = "binpack", **kw: object):  # type: ignore[no-untyped-def]
    strategy = make_strategy(scoring, pods)
    return replay(nodes, pods, strategy, rng=random.Random(1), config=config(**kw))


def test_trace_order_stops_at_the_target_load() -> None:
    pods = [pod(f"p{i}") for i in range(10)]
    assert len(trace_order(pods, capacity_gpus=4, target_load=1.3)) == 5
    assert len(trace_order(pods, capacity_gpus=4, target_load=1.0)) == 4


@settings(max_examples=60, deadline=None)
@given(
    millis=st.lists(st.sampled_from([0, 100, 470, 1000]), min_size=1, max_size=30),
    capacity=st.integers(1, 16),
    target=st.sampled_from([0.5, 1.0, 1.3]),
    seed=st.integers(0, 1000),
)
def test_sampling_reaches_but_never_passes_the_target(
    millis: list[int], capacity: int, target: float, seed: int
) -> None:
    pods = [pod(f"p{i}", m, 1 if m else 0) for i, m in enumerate(millis)]
    out = sample_pods(pods, capacity, target, random.Random(seed))
    total = sum(p.gpu_total_milli for p in out)
    assert total <= target * capacity * MILLI
    assert {p.name for p in out} <= {p.name for p in pods}
    if sum(p.gpu_total_milli for p in pods) < target * capacity * MILLI:
        assert len(out) >= len(pods)
    assert sample_pods(pods, capacity, target, random.Random(seed)) == out


def test_shares_scale_with_each_card_and_fill_it_exactly() -> None:
    assert need_on(16384, pod("a", 500)) == GpuNeed(1, 8192)
    assert need_on(32768, pod("a", 500)) == GpuNeed(1, 16384)
    assert need_on(16384, pod("a", 1000)) == GpuNeed(1, None)
    assert need_on(16384, pod("a", 1000, n=4)) == GpuNeed(4, None)
    assert need_on(16384, pod("a", 470)) == GpuNeed(1, 7700)
    assert need_on(16384, pod("b", 530)) == GpuNeed(1, 8683)
    assert 7700 + 8683 <= 16384


def test_accounting_counts_gpu_thousandths_and_skips_what_fits_nowhere() -> None:
    nodes = [node("a", gpus=4)]
    pods = [
        pod("half1", 500),
        pod("half2", 500),
        pod("pair", 1000, n=2),
        pod("too-many", 1000, n=4),
        pod("cpu-hog", 100, cpu=64000),
        pod("cpu-only", 0, n=0),
        pod("quarter", 250),
    ]
    result = run(nodes, pods, "binpack", target_load=10.0)
    assert result.capacity_gpus == 4
    assert result.pods_arrived == 7
    assert result.pods_skipped == 2
    assert result.gpu_pods_skipped == 2
    assert result.allocated_gpus == pytest.approx(0.5 + 0.5 + 2 + 0.25)
    assert result.unallocated_gpus == pytest.approx(0.75)
    assert result.idle_gpus == 0
    assert result.memory_share == pytest.approx(3.25 / 4)
    assert result.at(10.0) == pytest.approx(3.25 / 4)


def test_unallocated_capacity_is_split_by_why_it_stayed_free() -> None:
    """A hole smaller than every refused share is 'too small'; one a refused share fits, but
    where the node's CPU ran out, is 'host blocked'; idle GPUs are counted apart."""
    nodes = [node("a", gpus=1), node("b", gpus=1, cpu=2000), node("c", gpus=1, cpu=500)]
    pods = [
        pod("big-a", 810),  # binpack: a's GPU (first of equals), leaves 0.19
        pod("half-b", 500, cpu=2000),  # a cannot take it; b, and b's CPU is gone
        pod("refused", 300),  # fits b's GPU, not b's CPU; c has too little CPU for it
    ]
    result = run(nodes, pods, "binpack", target_load=10.0)
    assert result.pods_placed == 2 and result.gpu_pods_skipped == 1
    assert result.idle_gpus == 1
    assert result.holes_too_small == pytest.approx(0.19, abs=1e-3)
    assert result.holes_host_blocked == pytest.approx(0.5, abs=1e-3)
    total = result.idle_gpus + result.holes_too_small + result.holes_host_blocked
    assert total == pytest.approx(result.unallocated_gpus, abs=1e-3)


def test_with_nothing_refused_every_hole_is_too_small() -> None:
    result = run([node("a", gpus=2)], [pod("p", 470), pod("q", 320)], "binpack", target_load=9)
    assert result.gpu_pods_skipped == 0
    assert result.holes_host_blocked == 0.0
    assert result.holes_too_small + result.idle_gpus == pytest.approx(
        result.unallocated_gpus, abs=1e-3
    )


def test_the_curve_never_passes_arrivals_and_never_falls() -> None:
    nodes = [node(f"n{i}", gpus=4) for i in range(3)]
    pods = [pod(f"p{i}", m) for i, m in enumerate([470, 810, 1000, 320, 650] * 6)]
    result = run(nodes, pods, "fragmentation", target_load=1.3)
    assert result.arrived[0] == 0.0 and result.arrived[-1] == pytest.approx(1.3)
    pairs = list(zip(result.arrived, result.allocated, strict=True))
    assert all(y <= x + 1e-9 for x, y in pairs)
    assert all(b >= a for (_, a), (_, b) in itertools.pairwise(pairs))
    assert result.allocated[-1] == pytest.approx(result.allocated_gpus / result.capacity_gpus)


def test_cpu_and_memory_fit_like_kube_scheduler() -> None:
    nodes = [node("a", gpus=2, cpu=4000, mem=4096)]
    pods = [
        pod("fits", 250, cpu=4000, mem=4096),
        pod("no-cpu", 250, cpu=1, mem=0),
        pod("zero-requests", 250, cpu=0, mem=0),
    ]
    result = run(nodes, pods, "spread", target_load=10.0)
    assert result.pods_placed == 2
    assert result.allocated_gpus == pytest.approx(0.5)


def test_whole_gpu_pods_need_idle_gpus() -> None:
    nodes = [node("a", gpus=2)]
    pods = [pod("sliver", 100), pod("pair", 1000, n=2), pod("one", 1000)]
    result = run(nodes, pods, "binpack", target_load=10.0)
    assert result.gpu_pods_skipped == 1
    assert result.allocated_gpus == pytest.approx(1.1)


def test_unknown_gpu_model_is_a_clear_error() -> None:
    with pytest.raises(PlacementError, match="G9"):
        run([node("a", model="G9")], [pod("p")])


@pytest.mark.parametrize("scoring", ["binpack", "spread", "fragmentation"])
def test_replay_decisions_match_the_extenders_own_bind_choice(scoring: str) -> None:
    """Pod by pod, the devices the replay takes are what the extender's ``choose_devices``
    picks on a ClusterSnapshot of the same node (GFD totals plus bound pods)."""
    nodes = [node("a", gpus=4, cpu=64000)]
    pods = [pod("h1", 500, cpu=8000), pod("h2", 250), pod("h3", 1000), pod("h4", 0, n=0)]
    pods += [pod("h5", 470), pod("h6", 1000, n=2)]
    strategy = make_strategy(scoring, pods)
    record: list[tuple[str, str, tuple[int, ...]]] = []
    replay(
        nodes,
        pods,
        strategy,
        rng=random.Random(0),
        config=config(target_load=10.0),
        record=record,
    )
    assert [r[0] for r in record] == ["h1", "h2", "h3", "h4", "h5"]
    info = NodeInfo(
        "a", allocatable_milli_cpu=64000, allocatable_memory=65536, gfd=GfdInfo(4, 16384)
    )
    bound: list[PodRequest] = []
    by_name = {p.name: p for p in pods}
    register(strategy)
    try:
        for name, _, devices in record:
            p = by_name[name]
            gpu = need_on(16384, p) if p.num_gpu else None
            req = PodRequest("ns", name, milli_cpu=p.cpu_milli, memory=p.memory_mib, gpu=gpu)
            view = ClusterSnapshot([info], bound)
            assert choose_devices(req, "a", view, 0.0, strategy=scoring) == devices
            bound.append(replace(req, node_name="a", gpu_indices=devices))
    finally:
        register(Fragmentation())


def test_fragmentation_learns_the_traces_workload() -> None:
    pods = [pod("a", 500)] * 3 + [pod("b", 1000, n=2)] + [pod("c", 0, n=0)]
    wl = workload_of(pods)
    assert [(s.count, s.share_milli) for s in wl.shapes] == [(1, 500), (2, None)]
    assert [s.weight for s in wl.shapes] == [0.75, 0.25]


@pytest.mark.slow
def test_a_shortened_run_on_the_real_trace_is_seeded_and_sane() -> None:
    nodes = read_nodes(DATA / "openb_node_list_gpu_node.csv")[::8]
    pods = read_pods(DATA / "openb_pod_list_default.csv")[:1500]
    cfg = ReplayConfig(repeats=2, target_load=1.3, curve_step=0.1)
    first = run_trace(nodes, pods, ["binpack", "fragmentation"], config=cfg, trace="default")
    again = run_trace(nodes, pods, ["binpack", "fragmentation"], config=cfg, trace="default")
    for a, b in zip(first, again, strict=True):
        assert [r.allocated for r in a.runs] == [r.allocated for r in b.runs]
    by_name = {s.scoring: s for s in first}
    for s in first:
        mean, std = s.at(1.3)
        assert 0.5 < mean <= 1.0 and std >= 0
        assert [r.pods_arrived for r in s.runs] == [r.pods_arrived for r in by_name["binpack"].runs]
    assert by_name["fragmentation"].at(1.3)[0] >= by_name["binpack"].at(1.3)[0] - 0.02
