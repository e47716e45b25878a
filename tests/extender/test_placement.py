"""GPU fit, device choice, scoring and normalisation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extender.fit import (
    DeviceState,
    NodeGpus,
    choose_best_fit,
    choose_worst_fit,
    fits,
    gpu_fit_reason,
    resource_fit_reasons,
)
from extender.objects import GpuNeed
from extender.scoring import (
    Binpack,
    ScoreWeights,
    Spread,
    combine,
    get_strategy,
    normalize_scores,
    register,
    strategy_names,
)


def node(*free: int, total: int = 81920, idle: tuple[int, ...] = ()) -> NodeGpus:
    return NodeGpus(
        tuple(DeviceState(i, total, f, i in idle) for i, f in enumerate(free)), "annotation"
    )


def test_reason_matches_the_issue_wording() -> None:
    reason = gpu_fit_reason(node(30000, 20000), GpuNeed(2, 40960))
    assert reason == "insufficient GPU memory: need 2×40960 MiB, best device has 30000 MiB free"


def test_reason_when_one_device_fits() -> None:
    reason = gpu_fit_reason(node(50000, 30000), GpuNeed(2, 40960))
    assert reason is not None and "1 device(s) have enough, next best has 30000 MiB free" in reason


def test_reason_too_few_devices_and_whole_gpus() -> None:
    assert gpu_fit_reason(node(1, 2), GpuNeed(4, 1)) == "insufficient GPUs: need 4, node has 2"
    assert gpu_fit_reason(node(80000, 80000, idle=(0,)), GpuNeed(2)) == (
        "insufficient GPUs: need 2 whole GPU(s), node has 1 idle"
    )
    assert gpu_fit_reason(node(80000, 80000, idle=(0, 1)), GpuNeed(2)) is None


def test_best_and_worst_fit() -> None:
    gpus = node(50000, 21000, 80000, 20000)
    assert choose_best_fit(gpus.devices, GpuNeed(1, 20000)) == (3,)
    assert choose_best_fit(gpus.devices, GpuNeed(2, 20000)) == (1, 3)
    assert choose_worst_fit(gpus.devices, GpuNeed(2, 20000)) == (0, 2)
    assert choose_best_fit(gpus.devices, GpuNeed(2, 60000)) is None
    assert choose_best_fit(node(0, 0, 0, idle=(1, 2)).devices, GpuNeed(1)) == (1,)


def test_resource_fit() -> None:
    assert resource_fit_reasons(
        2000, 0, allocatable_milli_cpu=4000, allocatable_memory=None, requested_milli_cpu=3000
    ) == ("Insufficient cpu",)
    assert resource_fit_reasons(1, 2**40, allocatable_milli_cpu=None, allocatable_memory=2**30) == (
        "Insufficient memory",
    )
    assert resource_fit_reasons(0, 0, allocatable_milli_cpu=0, allocatable_memory=0) == ()


frees = st.lists(st.integers(0, 81920), min_size=1, max_size=8)
needs = st.builds(GpuNeed, st.integers(1, 8), st.integers(1, 81920))


@given(frees, needs)
def test_fits_agrees_with_choice(free: list[int], need: GpuNeed) -> None:
    gpus = node(*free)
    for choose in (choose_best_fit, choose_worst_fit):
        chosen = choose(gpus.devices, need)
        assert (chosen is not None) is fits(gpus, need)
        assert (gpu_fit_reason(gpus, need) is None) is fits(gpus, need)
        if chosen is not None:
            assert len(set(chosen)) == need.count
            assert all(free[i] >= (need.mib_per_gpu or 0) for i in chosen)


@given(frees, needs)
def test_best_fit_leaves_least_and_worst_fit_most(free: list[int], need: GpuNeed) -> None:
    gpus = node(*free)
    best, worst = choose_best_fit(gpus.devices, need), choose_worst_fit(gpus.devices, need)
    if best is not None and worst is not None:
        assert sum(free[i] for i in best) <= sum(free[i] for i in worst)
        assert Binpack().score(gpus, need, best) >= Binpack().score(gpus, need, worst)
        assert 0 <= Spread().score(gpus, need, worst) <= 100


def test_binpack_prefers_the_tighter_node() -> None:
    need = GpuNeed(1, 20000)
    tight, loose = node(21000), node(80000)
    b = get_strategy("binpack")
    s_tight = b.score(tight, need, b.choose(tight, need) or ())
    s_loose = b.score(loose, need, b.choose(loose, need) or ())
    assert s_tight > s_loose
    sp = get_strategy("spread")
    assert sp.score(tight, need, (0,)) < sp.score(loose, need, (0,))


def test_whole_gpu_binpack_prefers_busier_nodes() -> None:
    need = GpuNeed(1)
    busy = node(0, 0, 0, 81920, idle=(3,))
    empty = node(81920, 81920, 81920, 81920, idle=(0, 1, 2, 3))
    b = Binpack()
    assert b.score(busy, need, (3,)) == 100
    assert b.score(empty, need, (0,)) == 25


@pytest.mark.parametrize(
    ("scores", "reverse", "want"),
    [
        ([0, 0], False, [0, 0]),
        ([0, 0], True, [10, 10]),
        ([1, 2, 4], False, [2, 5, 10]),
        ([1, 2, 4], True, [8, 5, 0]),
        ([], False, []),
    ],
)
def test_default_normalize_score(scores: list[int], reverse: bool, want: list[int]) -> None:
    assert normalize_scores(scores, 10, reverse=reverse) == want


@given(st.lists(st.floats(0, 1000), max_size=20))
def test_normalised_scores_are_in_range(scores: list[float]) -> None:
    out = normalize_scores(scores, 10)
    assert all(0 <= s <= 10 for s in out)
    if any(int(s) > 0 for s in scores):
        assert max(out) == 10


def test_combine_ignores_constant_components_and_adds_preferences() -> None:
    assert combine([50, 100], [0, 0], [0, 0]) == [5, 10]
    # affinity prefers node 0, the GPU score node 1: equal weights tie them near the top
    assert combine([0, 100], [10, 0], [0, 0]) == [10, 10]
    assert combine([0, 100], [10, 0], [0, 0], ScoreWeights(gpu=2)) == [5, 10]
    assert combine([100, 100], [0, 0], [0, 2]) == [10, 5]


def test_registry() -> None:
    assert {"binpack", "spread", "fragmentation"} <= set(strategy_names())
    with pytest.raises(ValueError, match="unknown scoring strategy 'nope'"):
        get_strategy("nope")

    class Constant:
        name = "test-constant"

        def choose(self, gpus: NodeGpus, need: GpuNeed) -> tuple[int, ...] | None:
            return (0,)

        def score(self, gpus: NodeGpus, need: GpuNeed, chosen: tuple[int, ...]) -> float:
            return 42.0

    register(Constant())
    assert get_strategy("test-constant").score(node(1), GpuNeed(1, 1), (0,)) == 42.0
