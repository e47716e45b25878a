"""The columnar index answers exactly as the per-node reference functions do."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from extender.cluster_state import ClusterState
from extender.filtering import filter_nodes, prioritize, strategy_for
from extender.fragmentation import Fragmentation, Shape, Workload, clear_caches, host_context
from extender.inventory import InventoryConfig
from extender.objects import (
    GpuDevice,
    GpuNeed,
    GpuReport,
    NodeInfo,
    NodeSelector,
    NodeSelectorRequirement,
    NodeSelectorTerm,
    PodRequest,
    PreferredTerm,
    Taint,
    Toleration,
)
from extender.scoring import register
from extender.state_arrays import StateArrays

NOW = 1_000_000.0
POOLS = ("a", "b", "c")
TAINTS = (
    (),
    (Taint("gpu", "x", "NoSchedule"),),
    (Taint("soft", "y", "PreferNoSchedule"),),
    (Taint("soft", "y", "PreferNoSchedule"), Taint("soft2", "", "PreferNoSchedule")),
)


@st.composite
def nodes(draw: st.DrawFn, i: int) -> NodeInfo:
    name = f"n{i}"
    count = draw(st.integers(0, 4))
    mixed = draw(st.booleans())
    devices = tuple(
        GpuDevice(d, "", "", total, draw(st.integers(0, total)))
        for d in range(count)
        for total in [draw(st.sampled_from((16000, 24000))) if mixed else 16000]
    )
    age = draw(st.sampled_from((0.0, 0.0, 0.0, 500.0)))
    report = GpuReport(devices, NOW - age, "annotation") if count or draw(st.booleans()) else None
    return NodeInfo(
        name=name,
        labels={
            "kubernetes.io/hostname": name,
            "pool": draw(st.sampled_from(POOLS)),
            "rank": str(draw(st.integers(0, 3))),
        },
        taints=draw(st.sampled_from(TAINTS)),
        allocatable_milli_cpu=draw(st.sampled_from((None, 4000, 16000))),
        allocatable_memory=None,
        gpu_report=report,
    )


def req(key: str, op: str, *values: str) -> NodeSelectorRequirement:
    return NodeSelectorRequirement(key, op, values)


REQUIRED = (
    None,
    NodeSelector((NodeSelectorTerm((req("pool", "In", "a", "b"),)),)),
    NodeSelector(
        (NodeSelectorTerm((req("rank", "Gt", "1"),)), NodeSelectorTerm((req("pool", "In", "c"),)))
    ),
    NodeSelector((NodeSelectorTerm((), (req("metadata.name", "In", "n1"),)),)),
    NodeSelector((NodeSelectorTerm((req("kubernetes.io/hostname", "NotIn", "n0", "n2"),)),)),
    NodeSelector(()),
)
PREFERRED = (
    (),
    (PreferredTerm(10, NodeSelectorTerm((req("pool", "In", "a"),))),),
    (
        PreferredTerm(5, NodeSelectorTerm((req("rank", "Lt", "2"),))),
        PreferredTerm(7, NodeSelectorTerm((), (req("metadata.name", "In", "n3"),))),
    ),
)
TOLERATIONS = (
    (),
    (Toleration("gpu", "Exists"),),
    (Toleration("", "Exists"),),
    (Toleration("soft", "Equal", "y"),),
)


@st.composite
def pods(draw: st.DrawFn) -> PodRequest:
    gpu = draw(
        st.one_of(
            st.none(),
            st.builds(GpuNeed, st.integers(1, 3), st.one_of(st.none(), st.integers(1, 16000))),
        )
    )
    return PodRequest(
        "ns",
        draw(st.sampled_from(("p", "q"))),
        tolerations=draw(st.sampled_from(TOLERATIONS)),
        node_selector=draw(st.sampled_from(({}, {"pool": "b"}, {"kubernetes.io/hostname": "n2"}))),
        required=draw(st.sampled_from(REQUIRED)),
        preferred=draw(st.sampled_from(PREFERRED)),
        milli_cpu=draw(st.sampled_from((0, 1000, 8000))),
        gpu=gpu,
        scoring=draw(st.sampled_from((None, "spread"))),
    )


@st.composite
def clusters(draw: st.DrawFn) -> tuple[list[NodeInfo], list[PodRequest], list[str]]:
    n = draw(st.integers(0, 8))
    ns = [draw(nodes(i)) for i in range(n)]
    bound = [
        PodRequest(
            "run",
            f"r{k}",
            milli_cpu=1000,
            gpu=GpuNeed(1, draw(st.integers(1, 8000))),
            node_name=f"n{draw(st.integers(0, max(0, n - 1)))}",
        )
        for k in range(draw(st.integers(0, 4)))
    ]
    names = draw(st.lists(st.sampled_from([f"n{i}" for i in range(n + 2)]), max_size=10))
    return ns, bound, names


def check(state: ClusterState, pod: PodRequest, names: list[str]) -> None:
    index = state.index(NOW)
    assert index.filter(pod, names, NOW) == filter_nodes(pod, names, state, NOW)
    got = index.prioritize(pod, names, NOW, strategy_for(pod, "binpack"))
    assert got is not None
    assert got == prioritize(pod, names, state, NOW)


@settings(max_examples=300, deadline=None)
@given(clusters(), st.lists(pods(), min_size=1, max_size=3))
def test_index_matches_reference(
    cluster: tuple[list[NodeInfo], list[PodRequest], list[str]], ps: list[PodRequest]
) -> None:
    ns, bound, names = cluster
    state = ClusterState(InventoryConfig(stale_after=100))
    state.replace_nodes(ns)
    state.replace_pods(bound)
    for pod in ps:
        check(state, pod, names)


@settings(max_examples=100, deadline=None)
@given(clusters(), pods(), st.data())
def test_index_follows_changes(
    cluster: tuple[list[NodeInfo], list[PodRequest], list[str]],
    pod: PodRequest,
    data: st.DataObject,
) -> None:
    ns, bound, names = cluster
    state = ClusterState(InventoryConfig(stale_after=100))
    state.replace_nodes(ns)
    check(state, pod, names)
    for p in bound:  # pods arrive one by one, a reservation is made, a node changes labels
        state.upsert_pod(p)
        check(state, pod, names)
    if ns and pod.gpu is not None:
        target = ns[data.draw(st.integers(0, len(ns) - 1))]
        g = state.gpus(target.name, NOW)
        if not isinstance(g, str) and g.devices:
            state.reserve(pod, target.name, (g.devices[0].index,), NOW, 60)
            check(state, pod, names)
    if ns:
        first = ns[0]
        state.upsert_node(
            NodeInfo(first.name, {**first.labels, "pool": "c"}, (), None, None, first.gpu_report)
        )
        check(state, pod, names)
        state.delete_node(ns[-1].name)
        check(state, pod, names)


@settings(max_examples=150, deadline=None)
@given(clusters(), st.data())
def test_a_rebuilt_index_carries_rows_that_equal_a_fresh_build(
    cluster: tuple[list[NodeInfo], list[PodRequest], list[str]], data: st.DataObject
) -> None:
    """A node added or deleted rebuilds the index from the previous one, copying the device
    rows of unchanged nodes; every row equals what an index built from nothing holds."""
    import numpy as np

    from extender.index import NodeIndex

    ns, bound, _ = cluster
    state = ClusterState(InventoryConfig(stale_after=100))
    state.replace_nodes(ns)
    for p in bound:
        state.upsert_pod(p)
    state.index(NOW)
    added = data.draw(nodes(len(ns) + 1))
    state.upsert_node(added)
    if len(ns) > 0 and data.draw(st.booleans()):
        state.delete_node(ns[data.draw(st.integers(0, len(ns) - 1))].name)
    if len(bound) > 0 and data.draw(st.booleans()):  # a host row changes with the rebuild
        state.delete_pod(bound[0].key)
    rebuilt = state.index(NOW)
    fresh = NodeIndex(
        [state.nodes[n] for n in sorted(state.nodes)],
        gpus_of=state.gpus,
        requested=state.requested,
        valid_until=state._valid_until_of,
        now=NOW,
    )
    assert rebuilt.names == fresh.names
    for column in ("count", "idle", "uniform", "gpu_problem", "cpu_free", "mem_free"):
        assert np.array_equal(getattr(rebuilt, column), getattr(fresh, column)), column
    assert rebuilt.gpu_reason == fresh.gpu_reason
    assert np.array_equal(rebuilt.valid_until, fresh.valid_until)
    w = fresh.width
    assert np.array_equal(rebuilt.free_desc[:, :w], fresh.free_desc)
    assert np.array_equal(rebuilt.total_desc[:, :w], fresh.total_desc)
    assert (rebuilt.free_desc[:, w:] == -1).all() and (rebuilt.total_desc[:, w:] == 0).all()
    names = [n.name for n in ns] + [added.name, "missing"]
    check(state, data.draw(pods()), names)


@st.composite
def relabellings(draw: st.DrawFn, n: int) -> list[tuple[int, dict[str, str], tuple[Taint, ...]]]:
    """Label and taint edits on nodes of a cluster of ``n``: pool moves, a new label key, a
    label dropped, and hostnames that collide (which makes the per-node key a shared one)."""
    edits = []
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, n - 1))
        labels = {
            "kubernetes.io/hostname": draw(st.sampled_from((f"n{i}", f"n{i}", "n0"))),
            "pool": draw(st.sampled_from(POOLS)),
        }
        if draw(st.booleans()):
            labels["rank"] = str(draw(st.integers(0, 3)))
        if draw(st.booleans()):
            labels["zone"] = draw(st.sampled_from(("z1", "z2")))
        edits.append((i, labels, draw(st.sampled_from(TAINTS))))
    return edits


@settings(max_examples=150, deadline=None)
@given(clusters(), st.lists(pods(), min_size=1, max_size=3), st.data())
def test_relabelled_nodes_are_reclassified_in_place(
    cluster: tuple[list[NodeInfo], list[PodRequest], list[str]],
    ps: list[PodRequest],
    data: st.DataObject,
) -> None:
    ns, bound, names = cluster
    assume(ns)
    state = ClusterState(InventoryConfig(stale_after=100))
    state.replace_nodes(ns)
    state.replace_pods(bound)
    index = state.index(NOW)
    for i, labels, taints in data.draw(relabellings(len(ns))):
        old = state.nodes[f"n{i}"]
        state.upsert_node(
            NodeInfo(
                old.name,
                labels,
                taints,
                old.allocatable_milli_cpu,
                old.allocatable_memory,
                old.gpu_report,
            )
        )
        for pod in ps:
            check(state, pod, names)
        assert state.index(NOW) is index  # moved between classes, not rebuilt
        fresh = ClusterState(InventoryConfig(stale_after=100))
        fresh.replace_nodes(state.nodes.values())
        fresh.replace_pods(bound)
        assert index.ignored_keys == fresh.index(NOW).ignored_keys


def test_a_relabelled_node_joining_an_existing_class_keeps_the_cached_answers() -> None:
    ns = [
        NodeInfo(f"n{i}", {"kubernetes.io/hostname": f"n{i}", "pool": p}, (), None, None, None)
        for i, p in enumerate("aab")
    ]
    state = ClusterState()
    state.replace_nodes(ns)
    index = state.index(NOW)
    version = index.static_version
    state.upsert_node(
        NodeInfo("n2", {"kubernetes.io/hostname": "n2", "pool": "a"}, (), None, None, None)
    )
    assert state.index(NOW).static_version == version
    state.upsert_node(
        NodeInfo("n2", {"kubernetes.io/hostname": "n2", "pool": "c"}, (), None, None, None)
    )
    assert state.index(NOW).static_version == version + 1  # a class no node had before
    state.upsert_node(
        NodeInfo("n2", {"kubernetes.io/hostname": "n0", "pool": "c"}, (), None, None, None)
    )
    assert state.index(NOW).ignored_keys == ()  # hostname values collide: no longer per-node


def test_rows_turn_stale_with_time_alone() -> None:
    report = GpuReport((GpuDevice(0, "", "", 16000, 0),), NOW, "annotation")
    state = ClusterState(InventoryConfig(stale_after=60))
    state.upsert_node(NodeInfo("n0", {"pool": "a"}, gpu_report=report))
    pod = PodRequest("ns", "p", gpu=GpuNeed(1, 1000))
    assert state.index(NOW).filter(pod, ["n0"], NOW + 59).passed == ("n0",)
    later = state.index(NOW + 61).filter(pod, ["n0"], NOW + 61)
    assert later.unresolvable == {"n0": "GPU inventory stale"}
    assert later == filter_nodes(pod, ["n0"], state, NOW + 61)
    fresh = GpuReport(report.devices, NOW + 100, "annotation")
    state.upsert_node(NodeInfo("n0", {"pool": "a"}, gpu_report=fresh))
    assert state.index(NOW + 101).filter(pod, ["n0"], NOW + 101).passed == ("n0",)


@st.composite
def workloads(draw: st.DrawFn) -> Workload:
    """A random pod mix: shares, MiB or whole GPUs, with and without host requests."""
    shapes = [
        Shape(
            weight=draw(st.integers(1, 5)),
            count=draw(st.integers(1, 3)),
            share_milli=share,
            mib_per_gpu=None if share is not None else draw(st.sampled_from((None, 4000, 9000))),
            milli_cpu=draw(st.sampled_from((0, 1000, 6000))),
            memory=draw(st.sampled_from((0, 1 << 30))),
        )
        for share in draw(st.lists(st.sampled_from((None, 250, 500, 1000)), min_size=1, max_size=4))
    ]
    total = sum(s.weight for s in shapes)
    return Workload(tuple(replace(s, weight=s.weight / total) for s in shapes))


def reference_gpu_scores(state: ClusterState, pod: PodRequest, names: list[str]) -> list[float]:
    """The strategy's score per name the way :func:`prioritize` computes it node by node."""
    strat = strategy_for(pod, "binpack")
    assert isinstance(strat, Fragmentation)
    out: list[float] = []
    for name in names:
        node = state.node(name)
        gpus = None if node is None else state.gpus(name, NOW)
        if node is None or isinstance(gpus, str) or gpus is None:
            out.append(0.0)
            continue
        if not strat.host_aware:
            if pod.gpu is None:
                out.append(0.0)
                continue
            chosen = strat.choose(gpus, pod.gpu)
            out.append(0.0 if chosen is None else strat.score(gpus, pod.gpu, chosen))
            continue
        hg, hn = host_context(gpus, pod.gpu, node, state.requested(name), pod)
        chosen = strat.choose(hg, hn)
        out.append(0.0 if chosen is None else strat.score(hg, hn, chosen))
    return out


def check_fragmentation(state: ClusterState, pod: PodRequest, names: list[str]) -> None:
    check(state, pod, names)
    got = state.index(NOW).gpu_scores(pod, names, NOW, strategy_for(pod, "binpack"))
    assert got is not None
    assert got.tolist() == reference_gpu_scores(state, pod, names)


@settings(max_examples=200, deadline=None)
@given(clusters(), st.lists(pods(), min_size=1, max_size=3), workloads(), st.booleans(), st.data())
def test_fragmentation_by_state_matches_reference(
    cluster: tuple[list[NodeInfo], list[PodRequest], list[str]],
    ps: list[PodRequest],
    workload: Workload,
    host_aware: bool,
    data: st.DataObject,
) -> None:
    ns, bound, names = cluster
    ns = [
        replace(n, allocatable_memory=data.draw(st.sampled_from((None, 1 << 30, 8 << 30))))
        for n in ns
    ]
    frag = Fragmentation(workload=workload, host_aware=host_aware)
    register(frag)
    try:
        state = ClusterState(InventoryConfig(stale_after=100))
        state.replace_nodes(ns)
        for pod in ps:
            pod = replace(
                pod, scoring="fragmentation", memory=data.draw(st.sampled_from((0, 1 << 29)))
            )
            check_fragmentation(state, pod, names)
            clear_caches()  # the index's remembered scores must agree with a fresh computation
            check_fragmentation(state, pod, names)
        probe = replace(ps[0], scoring="fragmentation")
        for p in bound:  # rows change: their state ids must be recomputed
            state.upsert_pod(p)
            check_fragmentation(state, probe, names)
    finally:
        register(Fragmentation())


def test_fragmentation_states_are_shared_and_remembered() -> None:
    devices = tuple(GpuDevice(d, "", "", 16000, 4000 * d) for d in range(4))
    report = GpuReport(devices, NOW, "annotation")
    ns = [NodeInfo(f"n{i}", {"pool": "a"}, gpu_report=report) for i in range(50)]
    state = ClusterState(InventoryConfig(stale_after=100))
    state.replace_nodes(ns)
    names = [n.name for n in ns]
    pod = PodRequest("ns", "p", gpu=GpuNeed(1, 3000), scoring="fragmentation")
    frag = strategy_for(pod, "binpack")
    calls: list[int] = []
    original = Fragmentation.score_arrays

    def counting(self: Fragmentation, arrays: StateArrays, need: GpuNeed) -> list[float]:
        calls.append(len(arrays))
        return original(self, arrays, need)

    Fragmentation.score_arrays = counting  # type: ignore[method-assign]
    try:
        index = state.index(NOW)
        first = index.prioritize(pod, names, NOW, frag)
        assert calls == [1]  # 50 identical nodes: one state scored
        assert index.prioritize(pod, names, NOW, frag) == first
        assert calls == [1]  # remembered
        busier = GpuReport((*devices[:3], GpuDevice(3, "", "", 16000, 15000)), NOW, "annotation")
        state.upsert_node(NodeInfo("n7", {"pool": "a"}, gpu_report=busier))
        assert state.index(NOW).prioritize(pod, names, NOW, frag) == prioritize(
            pod, names, state, NOW
        )
        assert calls == [1, 1]  # only the changed node's new state
    finally:
        Fragmentation.score_arrays = original  # type: ignore[method-assign]


def test_fragmentation_state_table_is_bounded() -> None:
    """Past its bound the state table starts afresh, and answers stay those of the reference."""
    ns = [
        NodeInfo(
            f"n{i}",
            {"pool": "a"},
            gpu_report=GpuReport(
                tuple(GpuDevice(d, "", "", 16000, 1000 * ((i + d) % 5)) for d in range(3)),
                NOW,
                "annotation",
            ),
        )
        for i in range(6)
    ]
    state = ClusterState(InventoryConfig(stale_after=100))
    state.replace_nodes(ns)
    names = [n.name for n in ns]
    pod = PodRequest("ns", "p", gpu=GpuNeed(1, 3000), scoring="fragmentation")
    index = state.index(NOW)
    index.memo.max_states = 4
    for k in range(3):
        check_fragmentation(state, pod, names)
        assert len(index.memo.states) <= 6
        busy = GpuDevice(0, "", "", 16000, 2000 + 3000 * k)
        state.upsert_node(
            NodeInfo("n1", {"pool": "a"}, gpu_report=GpuReport((busy,), NOW, "annotation"))
        )
        assert state.index(NOW) is index


def test_fragmentation_memo_survives_node_add_and_delete_and_can_be_warmed() -> None:
    """Adding or deleting a node rebuilds the index but keeps the scores of the states still
    there; ``warm`` computes a need's scores ahead, so the request computes nothing."""
    devices = tuple(GpuDevice(d, "", "", 16000, 4000 * d) for d in range(4))
    report = GpuReport(devices, NOW, "annotation")
    ns = [NodeInfo(f"n{i}", {"pool": "a"}, gpu_report=report) for i in range(5)]
    state = ClusterState(InventoryConfig(stale_after=100))
    state.replace_nodes(ns)
    pod = PodRequest("ns", "p", gpu=GpuNeed(1, 3000), scoring="fragmentation")
    frag = strategy_for(pod, "binpack")
    assert isinstance(frag, Fragmentation)
    need = frag.state_need(pod.gpu, pod)
    assert need is not None
    assert state.index(NOW).warm(frag, [need]) == 1
    calls: list[int] = []
    original = Fragmentation.score_arrays

    def counting(self: Fragmentation, arrays: StateArrays, need: GpuNeed) -> list[float]:
        calls.append(len(arrays))
        return original(self, arrays, need)

    Fragmentation.score_arrays = counting  # type: ignore[method-assign]
    try:
        names = [n.name for n in ns]
        first = state.index(NOW).prioritize(pod, names, NOW, frag)
        assert first is not None
        assert calls == []  # warmed
        state.upsert_node(NodeInfo("n9", {"pool": "a"}, gpu_report=report))
        state.delete_node("n0")
        rebuilt = state.index(NOW)
        names = [*names[1:], "n9"]
        assert rebuilt.prioritize(pod, names, NOW, frag) == [
            (n, s) for n, s in zip(names, [s for _, s in first[1:]] + [first[0][1]], strict=True)
        ]
        assert calls == []  # the new node has a state seen before, nothing recomputed
        assert rebuilt.prioritize(pod, names, NOW, frag) == prioritize(
            pod, names, state, NOW, strategy="fragmentation"
        )
    finally:
        Fragmentation.score_arrays = original  # type: ignore[method-assign]


def test_shortage_reasons_beyond_the_packed_range_match_the_reference() -> None:
    """Reasons are grouped through one packed integer; a node with more than 127 GPUs (or
    2^40 MiB free) takes the plain path, with the same answer."""
    small = GpuReport(
        tuple(GpuDevice(d, "", "", 16000, 15000) for d in range(2)), NOW, "annotation"
    )
    many = GpuReport(
        tuple(GpuDevice(d, "", "", 16000, 15000) for d in range(130)), NOW, "annotation"
    )
    huge = GpuReport((GpuDevice(0, "", "", 1 << 42, (1 << 42) - (1 << 41)),), NOW, "annotation")
    state = ClusterState(InventoryConfig(stale_after=100))
    state.replace_nodes(
        [
            NodeInfo("small", {"pool": "a"}, gpu_report=small),
            NodeInfo("many", {"pool": "a"}, gpu_report=many),
            NodeInfo("huge", {"pool": "a"}, gpu_report=huge),
        ]
    )
    for need in (GpuNeed(1, 1 << 42), GpuNeed(200, 1000), GpuNeed(3, None)):
        check(state, PodRequest("ns", "p", gpu=need), ["small", "many", "huge"])
        check(state, PodRequest("ns", "p", gpu=need), ["small"])
