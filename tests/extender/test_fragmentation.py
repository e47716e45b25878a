"""The fragmentation-aware strategy: workload estimate, stranded capacity, choices."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.filtering import ClusterSnapshot, choose_devices, prioritize
from extender.fit import DeviceState, NodeGpus, fits
from extender.fragmentation import (
    NEXT_POD_WEIGHT,
    NO_GPU,
    Fragmentation,
    HostGpus,
    HostNeed,
    Shape,
    Workload,
    host_context,
    learn,
    per_gpu_need,
    place,
    place_many,
    score_of,
    unusable,
    with_host,
)
from extender.objects import GfdInfo, GpuNeed, NodeInfo, PodRequest
from extender.scoring import (
    MAX_EXTENDER_PRIORITY,
    MAX_NODE_SCORE,
    combine,
    get_strategy,
    register,
)

GIB = 1024


def gpus(*free: int, total: int = 16 * GIB) -> NodeGpus:
    return NodeGpus(
        devices=tuple(DeviceState(i, total, f, f == total) for i, f in enumerate(free)),
        source="accounting",
    )


def only(share: int, count: int = 1) -> Workload:
    return Workload(shapes=(Shape(weight=1.0, count=count, share_milli=share),))


def test_registered_by_name_and_relearned_from_pods() -> None:
    assert isinstance(get_strategy("fragmentation"), Fragmentation)
    try:
        learned = learn([PodRequest("ns", "a", milli_cpu=100, gpu=GpuNeed(2, 4096))])
        assert get_strategy("fragmentation") is learned
        assert learned.workload.shapes == (Shape(1.0, 2, None, 4096, 100, 0),)
    finally:
        register(Fragmentation())


def test_relearning_a_similar_mix_keeps_the_warm_strategy() -> None:
    pod = PodRequest("ns", "a", milli_cpu=100, gpu=GpuNeed(1, 8192))
    other = PodRequest("ns", "b", milli_cpu=100, gpu=GpuNeed(1, 4096))
    try:
        first = learn([pod] * 50 + [other] * 50)
        assert learn([pod] * 52 + [other] * 48) is first  # weights moved by 0.02
        moved = learn([pod] * 60 + [other] * 40)
        assert moved is not first and get_strategy("fragmentation") is moved
        assert learn([pod] * 60) is not moved  # a shape disappeared
    finally:
        register(Fragmentation())


def test_workload_estimate_keeps_frequent_gpu_shapes_and_normalises() -> None:
    observed = [(1, 500, None, 1000, 0)] * 6 + [(2, None, None, 0, 0)] * 3 + [(0, None, None, 9, 9)]
    observed += [(1, 250, None, 0, 0)]
    wl = Workload.estimate(observed, coverage=0.9)
    assert [(s.count, s.share_milli) for s in wl.shapes] == [(1, 500), (2, None)]
    assert abs(sum(s.weight for s in wl.shapes) - 1) < 1e-12
    assert wl.parts == ((1, 500, None), (2, None, None))


def test_workload_from_pods_uses_mib_and_host_requests() -> None:
    pods = [
        PodRequest("ns", "a", milli_cpu=500, memory=7, gpu=GpuNeed(1, 8000)),
        PodRequest("ns", "b", milli_cpu=500, memory=7, gpu=GpuNeed(1, 8000)),
        PodRequest("ns", "c"),
    ]
    wl = Workload.from_pods(pods)
    assert wl.shapes == (Shape(1.0, 1, None, 8000, 500, 7),)


def test_share_needs_round_down_and_whole_gpus_are_none() -> None:
    assert per_gpu_need(16384, share_milli=470, mib_per_gpu=None) == 7700
    assert per_gpu_need(16384, share_milli=530, mib_per_gpu=None) == 8683
    assert per_gpu_need(16384, share_milli=1000, mib_per_gpu=None) is None
    assert per_gpu_need(16384, share_milli=None, mib_per_gpu=123) == 123


def test_a_half_gpu_hole_is_waste_for_whole_gpu_pods_but_not_for_half_gpu_pods() -> None:
    devs = ((16 * GIB, 8 * GIB, False), (16 * GIB, 16 * GIB, True))
    whole = Workload(shapes=(Shape(1.0, 1),))
    assert unusable(devs, None, whole) == 0.5
    assert unusable(devs, None, only(500)) == 0.0


def test_cpu_running_out_strands_the_free_gpus() -> None:
    devs = ((16 * GIB, 16 * GIB, True),) * 4
    wl = Workload(shapes=(Shape(1.0, 1, milli_cpu=8000),))
    assert unusable(devs, (32000, 1 << 40), wl) == 0.0
    # Two more pods fit: the next one does, the two after it would leave two GPUs idle.
    assert unusable(devs, (16000, 1 << 40), wl) == pytest.approx((1 - NEXT_POD_WEIGHT) * 2)
    assert unusable(devs, (4000, 1 << 40), wl) == 4.0


def test_prefers_the_exact_hole_over_a_fresh_gpu() -> None:
    strategy = Fragmentation(workload=only(250))
    node = gpus(16 * GIB, 4 * GIB, 16 * GIB)
    assert strategy.choose(node, GpuNeed(1, 4 * GIB)) == (1,)


def test_prefers_the_node_where_a_pod_fills_a_hole() -> None:
    strategy = Fragmentation(workload=only(500))
    need = GpuNeed(1, 8 * GIB)
    holed, fresh = gpus(8 * GIB, 0), gpus(16 * GIB, 0)
    holed_score = strategy.score(holed, need, strategy.choose(holed, need) or ())
    fresh_score = strategy.score(fresh, need, strategy.choose(fresh, need) or ())
    assert holed_score >= fresh_score


def test_whole_gpu_pods_take_idle_devices_only() -> None:
    strategy = Fragmentation(workload=only(1000, count=2))
    node = gpus(16 * GIB, 8 * GIB, 16 * GIB, 16 * GIB)
    chosen = strategy.choose(node, GpuNeed(2))
    assert chosen is not None
    assert len(chosen) == 2
    assert 1 not in chosen
    assert strategy.choose(gpus(16 * GIB, 8 * GIB), GpuNeed(2)) is None


def test_a_pod_without_gpus_is_steered_away_from_free_gpus_it_would_strand() -> None:
    wl = Workload(shapes=(Shape(1.0, 1, milli_cpu=8000),))
    strategy = Fragmentation(workload=wl)
    busy, need = with_host(
        gpus(0, 0), NO_GPU, milli_cpu_free=16000, memory_free=None, milli_cpu=8000, memory=0
    )
    idle, _ = with_host(
        gpus(16 * GIB, 16 * GIB),
        NO_GPU,
        milli_cpu_free=16000,
        memory_free=None,
        milli_cpu=8000,
        memory=0,
    )
    assert strategy.choose(busy, need) == ()
    assert strategy.score(busy, need, ()) > strategy.score(idle, need, ())


def test_host_context_through_filtering_matches_the_strategy() -> None:
    """prioritize/choose_devices hand host-aware strategies the node's free CPU and memory."""
    node = NodeInfo(
        "n1",
        allocatable_milli_cpu=16000,
        allocatable_memory=1 << 36,
        gfd=GfdInfo(count=2, memory_mib=16 * GIB),
    )
    other = NodeInfo(
        "n2",
        allocatable_milli_cpu=16000,
        allocatable_memory=1 << 36,
        gfd=GfdInfo(count=2, memory_mib=16 * GIB),
    )
    running = PodRequest(
        "ns", "r", milli_cpu=12000, gpu=GpuNeed(1, 8 * GIB), node_name="n1", gpu_indices=(0,)
    )
    view = ClusterSnapshot([node, other], [running])
    pod = PodRequest("ns", "p", milli_cpu=4000, gpu=GpuNeed(1, 8 * GIB), scoring="fragmentation")
    assert choose_devices(pod, "n1", view, 0.0, strategy="binpack") == (0,)
    scores = dict(prioritize(pod, ["n1", "n2"], view, 0.0))
    assert scores["n1"] == MAX_EXTENDER_PRIORITY > scores["n2"]
    cpu_only = PodRequest("ns", "c", milli_cpu=4000, scoring="fragmentation")
    assert choose_devices(cpu_only, "n1", view, 0.0) == ()
    assert len(prioritize(cpu_only, ["n1", "n2"], view, 0.0)) == 2


frees = st.lists(st.integers(min_value=0, max_value=16 * GIB), min_size=1, max_size=8)
shares = st.sampled_from([50, 125, 250, 320, 470, 500, 650, 810, 1000])


@settings(max_examples=150, deadline=None)
@given(free=frees, share=shares, cpu=st.integers(0, 64000), pod_cpu=st.integers(0, 16000))
def test_scores_are_within_the_protocol_range(
    free: list[int], share: int, cpu: int, pod_cpu: int
) -> None:
    strategy = Fragmentation(workload=only(share))
    base = gpus(*free)
    need = GpuNeed(1, None if share == 1000 else share * 16 * GIB // 1000)
    host, host_need = with_host(
        base, need, milli_cpu_free=cpu, memory_free=None, milli_cpu=pod_cpu, memory=0
    )
    for g, n in ((base, need), (host, host_need)):
        chosen = strategy.choose(g, n)
        assert (chosen is not None) == fits(g, n)
        if chosen is not None:
            score = strategy.score(g, n, chosen)
            assert 0 <= score <= MAX_NODE_SCORE
            assert len(chosen) == n.count
            assert all(g.devices[i].free_mib >= (n.mib_per_gpu or 0) for i in chosen)
            final = combine([score, 0.0], [0, 0], [0, 0])
            assert all(0 <= s <= MAX_EXTENDER_PRIORITY for s in final)


@settings(max_examples=150, deadline=None)
@given(
    share=shares.filter(lambda s: s < 1000),
    used=st.lists(st.integers(0, 20), min_size=1, max_size=7),
)
def test_an_exact_fit_hole_never_scores_worse_than_splitting_a_fresh_gpu(
    share: int, used: list[int]
) -> None:
    """With a workload of one share only, filling a hole of exactly that share never loses to
    opening a fresh GPU, whatever the other devices hold."""
    total = 16 * GIB
    need_mib = share * total // 1000
    strategy = Fragmentation(workload=only(share))
    others = [max(0, total - u * need_mib) for u in used]
    node = gpus(need_mib, total, *others, total=total)
    need = GpuNeed(1, need_mib)
    chosen = strategy.choose(node, need)
    assert chosen is not None
    assert strategy.score(node, need, (0,)) >= strategy.score(node, need, (1,))
    assert node.devices[chosen[0]].free_mib == need_mib or strategy.score(
        node, need, chosen
    ) == strategy.score(node, need, (0,))


@settings(max_examples=100, deadline=None)
@given(free=frees, share=shares, cpu=st.none() | st.integers(0, 10**5))
def test_unusable_is_between_zero_and_the_free_capacity(
    free: list[int], share: int, cpu: int | None
) -> None:
    total = 16 * GIB
    devs = tuple((total, f, f == total) for f in free)
    wl = Workload(shapes=(Shape(0.5, 1, share_milli=share, milli_cpu=3000), Shape(0.5, 2)))
    host = None if cpu is None else (cpu, 1 << 40)
    value = unusable(devs, host, wl)
    assert -1e-9 <= value <= sum(f / total for f in free) + 1e-9


def test_score_falls_as_more_is_stranded() -> None:
    assert score_of(-0.5) > score_of(0.0) > score_of(0.5) > score_of(3.0) >= 0
    assert score_of(0.0) == MAX_NODE_SCORE / 2


def test_host_types_are_still_node_gpus_and_gpu_needs() -> None:
    g, n = with_host(gpus(1), GpuNeed(1, 1), milli_cpu_free=1, memory_free=2, milli_cpu=3, memory=4)
    assert isinstance(g, HostGpus) and isinstance(g, NodeGpus)
    assert isinstance(n, HostNeed) and isinstance(n, GpuNeed)
    assert (g.milli_cpu_free, g.memory_free, n.milli_cpu, n.memory) == (1, 2, 3, 4)


@settings(max_examples=150, deadline=None)
@given(
    devices=st.lists(
        st.tuples(st.sampled_from((8 * GIB, 16 * GIB)), st.integers(0, 4)), min_size=0, max_size=6
    ),
    count=st.integers(0, 3),
    whole=st.booleans(),
    share=shares,
    cpu=st.none() | st.integers(0, 32000),
    pod_cpu=st.sampled_from((0, 2000, 9000)),
)
def test_score_states_equals_score_of_the_chosen_devices(
    devices: list[tuple[int, int]],
    count: int,
    whole: bool,
    share: int,
    cpu: int | None,
    pod_cpu: int,
) -> None:
    """The index's fast path: one score per node state, exactly what ``choose`` then ``score``
    give through :func:`host_context` (equal free fractions on different totals included)."""
    node = NodeGpus(
        devices=tuple(
            DeviceState(i, total, total * quarters // 4, quarters == 4)
            for i, (total, quarters) in enumerate(devices)
        ),
        source="annotation",
    )
    wl = Workload(shapes=(Shape(0.6, 1, share_milli=share, milli_cpu=3000), Shape(0.4, 2)))
    need = GpuNeed(count, None if whole else 2 * GIB) if count else None
    pod = PodRequest("ns", "p", milli_cpu=pod_cpu, gpu=need)
    info = NodeInfo("n", allocatable_milli_cpu=cpu)
    devs = tuple((d.total_mib, d.free_mib, d.idle) for d in node.devices)
    host = None if cpu is None else (cpu, 1 << 62)
    for host_aware in (True, False):
        strategy = Fragmentation(workload=wl, host_aware=host_aware)
        state_need = strategy.state_need(need, pod)
        if not host_aware:
            assert state_need == need
        if state_need is None:
            continue
        g: NodeGpus = node
        n: GpuNeed = state_need
        if host_aware:
            g, n = host_context(node, need, info, (0, 0), pod)
            assert n == state_need
        chosen = strategy.choose(g, n)
        expected = 0.0 if chosen is None else strategy.score(g, n, chosen)
        assert strategy.score_states([(devs, host)], state_need) == [expected]


dev_states = st.lists(
    st.tuples(st.sampled_from((8 * GIB, 16 * GIB, 24 * GIB)), st.integers(0, 8)),
    min_size=1,
    max_size=5,
)


@settings(max_examples=120, deadline=None)
@given(
    nodes=st.lists(
        st.tuples(
            dev_states,
            st.none() | st.tuples(st.integers(-2000, 40000), st.integers(0, 1 << 20)),
        ),
        min_size=1,
        max_size=12,
    ),
    count=st.integers(0, 3),
    mib=st.none() | st.sampled_from((1 * GIB, 3 * GIB, 5000)),
    host_need=st.booleans(),
    share=shares,
)
def test_place_many_is_place_bit_for_bit(
    nodes: list[tuple[list[tuple[int, int]], tuple[int, int] | None]],
    count: int,
    mib: int | None,
    host_need: bool,
    share: int,
) -> None:
    """The array form gives exactly the devices and the increase :func:`place` gives, for a
    batch of states of mixed sizes, hosts known or not, shares and whole GPUs, multi-GPU parts."""
    wl = Workload(
        shapes=(
            Shape(0.5, 1, share_milli=share, milli_cpu=3000, memory=4096),
            Shape(0.2, 1, share_milli=share, milli_cpu=9000),
            Shape(0.2, 2, milli_cpu=1000),
            Shape(0.1, 2, mib_per_gpu=2 * GIB),
        )
    )
    need: GpuNeed = (
        HostNeed(count=count, mib_per_gpu=mib, milli_cpu=2000, memory=1024)
        if host_need
        else GpuNeed(count=count, mib_per_gpu=mib)
    )
    states = [
        (
            tuple((total, total * eighths // 8, eighths == 8) for total, eighths in devs),
            host,
        )
        for devs, host in nodes
    ]
    assert place_many(states, need, wl) == [place(d, h, need, wl) for d, h in states]


@settings(max_examples=120, deadline=None)
@given(
    devs=dev_states,
    host=st.none() | st.tuples(st.integers(-2000, 40000), st.integers(0, 1 << 20)),
    count=st.integers(0, 3),
    mib=st.none() | st.sampled_from((1 * GIB, 3 * GIB, 5000)),
    share=shares,
    data=st.data(),
)
def test_a_permutation_of_the_devices_scores_the_same_and_places_on_the_same_devices(
    devs: list[tuple[int, int]],
    host: tuple[int, int] | None,
    count: int,
    mib: int | None,
    share: int,
    data: st.DataObject,
) -> None:
    """The measure sees the devices as a set: any order gives the same waste and increase, and
    the devices chosen are the same ones, found at their positions in that order."""
    from extender.state_arrays import canonical

    wl = Workload(shapes=(Shape(0.6, 1, share_milli=share, milli_cpu=3000), Shape(0.4, 2)))
    need = HostNeed(count=count, mib_per_gpu=mib, milli_cpu=2000, memory=1024)
    state = tuple((t, t * eighths // 8, eighths == 8) for t, eighths in devs)
    order = data.draw(st.permutations(range(len(state))))
    shuffled = tuple(state[k] for k in order)
    assert canonical(shuffled)[0] == canonical(state)[0]
    assert unusable(shuffled, host, wl) == unusable(state, host, wl)
    a, b = place(state, host, need, wl), place(shuffled, host, need, wl)
    assert (a is None) == (b is None)
    if a is None or b is None:
        return
    assert a[1] == b[1]
    assert sorted(state[p] for p in a[0]) == sorted(shuffled[p] for p in b[0])
    assert len(set(b[0])) == len(b[0]) == max(count, 0)
    for p in b[0]:
        _, free, idle = shuffled[p]
        assert idle if mib is None else free >= mib
    assert place_many([(shuffled, host)] * 2, need, wl) == [b, b]


def test_many_states_take_the_array_form_with_the_same_scores() -> None:
    """From ``ARRAY_BATCH`` states on, ``score_states`` goes through the array form; the
    scores are those of one ``place`` per state."""
    import random

    from extender.fragmentation import ARRAY_BATCH

    rng = random.Random(5)
    states = [
        (
            tuple(
                (16 * GIB, f, f == 16 * GIB)
                for f in (rng.choice((0, 4 * GIB, 9 * GIB, 16 * GIB)) for _ in range(4))
            ),
            (rng.randrange(0, 64000), 1 << 40),
        )
        for _ in range(ARRAY_BATCH + 6)
    ]
    wl = Workload(shapes=(Shape(0.7, 1, mib_per_gpu=4 * GIB, milli_cpu=4000), Shape(0.3, 2)))
    strategy = Fragmentation(workload=wl)
    need = HostNeed(count=1, mib_per_gpu=3 * GIB, milli_cpu=2000)
    expected = []
    for devs, host in states:
        found = place(devs, host, need, wl)
        expected.append(0.0 if found is None else score_of(found[1]))
    assert strategy.score_states(states, need) == expected
    assert strategy.score_states(states[:3], need) == expected[:3]


@settings(max_examples=60, deadline=None)
@given(
    batches=st.lists(
        st.lists(
            st.tuples(
                dev_states,
                st.none() | st.tuples(st.integers(-2000, 40000), st.integers(0, 1 << 20)),
            ),
            min_size=1,
            max_size=40,
        ),
        min_size=1,
        max_size=3,
    ),
    needs=st.lists(
        st.tuples(st.integers(0, 3), st.none() | st.sampled_from((1 * GIB, 3 * GIB, 5000))),
        min_size=1,
        max_size=3,
    ),
    picks=st.lists(st.integers(0, 10**6), min_size=1, max_size=80),
    share=shares,
    host_aware=st.booleans(),
    score_of_float=st.floats(allow_nan=True, allow_infinity=True),
)
def test_array_scores_from_a_kept_basis_are_place_bit_for_bit(
    batches: list[list[tuple[list[tuple[int, int]], tuple[int, int] | None]]],
    needs: list[tuple[int, int | None]],
    picks: list[int],
    share: int,
    host_aware: bool,
    score_of_float: float,
) -> None:
    """The memo's path: states interned in batches (the arrays widened when a wider state
    comes), any subset of them scored for several needs in turn, so that the per-state basis
    kept on the arrays is computed for some states, extended to later ones and sliced; every
    score is that of one :func:`place` per state."""
    import numpy as np

    from extender.fragmentation import scores_arrays
    from extender.fragmentation.stranding import scores_of_increases
    from extender.state_arrays import StateArrays

    wl = Workload(
        shapes=(
            Shape(0.5, 1, share_milli=share, milli_cpu=3000, memory=4096),
            Shape(0.3, 2, milli_cpu=1000),
            Shape(0.2, 1, mib_per_gpu=2 * GIB),
        )
    )
    strategy = Fragmentation(workload=wl, host_aware=host_aware)
    arrays = StateArrays()
    for batch in batches:
        states = [
            (tuple((t, t * eighths // 8, eighths == 8) for t, eighths in devs), host)
            for devs, host in batch
        ]
        arrays = arrays.extended(states)
        rows = np.array(sorted({p % len(arrays) for p in picks}), dtype=np.int64)
        for count, mib in needs:
            need = HostNeed(count=count, mib_per_gpu=mib, milli_cpu=2000, memory=1024)
            expected = []
            for k in rows.tolist():
                devs, host = arrays.states[k]
                found = place(devs, host if host_aware else None, need, wl)
                expected.append(0.0 if found is None else score_of(found[1]))
            taken = arrays.take(rows)
            if not host_aware:
                taken = taken.without_hosts()
            assert scores_arrays(taken, need, wl) == expected
            assert strategy.score_arrays(arrays.take(rows), need) == expected
    one = np.array([score_of_float])  # NaN and inf too
    assert scores_of_increases(one, np.array([True])) == [score_of(score_of_float)]
    assert scores_of_increases(one, np.array([False])) == [0.0]
