"""The columnar index answers exactly as the per-node reference functions do."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from extender.filtering import filter_nodes, prioritize, strategy_for
from extender.inventory import InventoryConfig
from extender.model import (
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
from extender.state import ClusterState

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
