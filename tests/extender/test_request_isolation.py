"""Request data never becomes shared state: whatever /filter and /prioritize requests came
before (cache and full mode, any nodes, any pods, reused uids and resourceVersions), the next
request gets the answer it would get from an extender that saw none of them. Only the API
server (here: what the test puts into the cluster state, as the watch would) changes answers."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extender.cluster_state import ClusterState
from extender.decode import BadRequest, node_from_json, pod_from_json
from extender.server import Extender, ExtenderSettings
from tests.extender.support import NOW, FakeBinder, make_state
from tests.extender.test_filtering import node_json, pod_json

REAL = ["tight", "roomy", "full", "tainted"]
NAMES = st.sampled_from([*REAL, "ghost", "node-x", "full "])
TAINTS = st.sampled_from(
    [
        [],
        [{"key": "gpu", "value": "x", "effect": "NoExecute"}],
        [{"key": "a", "effect": "NoSchedule"}],
    ]
)
TOLERATIONS = st.sampled_from(
    [[], [{"operator": "Exists"}], [{"key": "gpu", "operator": "Exists"}]]
)


@st.composite
def nodes(draw: st.DrawFn) -> dict[str, Any]:
    """A node object as an attacker may send it: a real node's name with other GPUs, taints
    and labels, or a node nobody has."""
    name = draw(NAMES)
    used = draw(st.lists(st.sampled_from([0, 20000, 60000, 81920]), min_size=0, max_size=4))
    raw = node_json(
        name,
        used,
        taints=draw(TAINTS),
        labels=draw(st.dictionaries(st.sampled_from(["pool", "zone"]), st.sampled_from("ab"))),
    )
    raw["metadata"]["resourceVersion"] = draw(st.sampled_from(["1", "2", "999"]))
    return raw


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    """A pod, often reusing the probe pod's name, uid and resourceVersion with other content."""
    raw = pod_json(
        draw(st.sampled_from([None, 1000, 20000, 40000, 70000, 90000])),
        draw(st.sampled_from([None, 1, 2, 8])),
        tolerations=draw(TOLERATIONS),
        node_selector=draw(st.sampled_from([None, {"pool": "a"}])),
    )
    raw["metadata"].update(
        name=draw(st.sampled_from(["p", "q"])),
        uid=draw(st.sampled_from(["u1", "u2"])),
        resourceVersion=draw(st.sampled_from(["7", "8"])),
    )
    return raw


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    verb = draw(st.sampled_from(["filter", "prioritize"]))
    pod = draw(pods())
    if draw(st.booleans()):
        return verb, {"Pod": pod, "NodeNames": draw(st.lists(NAMES, max_size=6))}
    return verb, {"Pod": pod, "Nodes": {"items": draw(st.lists(nodes(), max_size=6))}}


def answers(ext: Extender, probes: list[tuple[str, dict[str, Any]]]) -> list[object]:
    out: list[object] = []
    for verb, args in probes:
        try:
            out.append(ext.filter(args, NOW) if verb == "filter" else ext.prioritize(args, NOW))
        except BadRequest as exc:
            out.append(str(exc))
    return out


def view(state: ClusterState) -> object:
    """What bind and the metrics read besides the verbs' answers."""
    return (dict(state.nodes), dict(state.pods), dict(state.reservations), dict(state.dcgm))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    st.lists(requests(), max_size=8),
    st.lists(requests(), min_size=1, max_size=3),
    st.booleans(),
)
def test_no_request_changes_what_a_later_request_sees(
    attack: list[tuple[str, dict[str, Any]]],
    probes: list[tuple[str, dict[str, Any]]],
    probe_pod_in_watch: bool,
) -> None:
    def extender() -> Extender:
        state = make_state()
        if probe_pod_in_watch:  # a pending pod the watch knows, as bind looks it up
            state.upsert_pod(pod_from_json(probes[0][1]["Pod"]))
        return Extender(state, ExtenderSettings(), binder=FakeBinder())

    attacked, fresh = extender(), extender()
    before = view(attacked.state)
    answers(attacked, attack)
    assert view(attacked.state) == before
    assert orjson.dumps(answers(attacked, probes)) == orjson.dumps(answers(fresh, probes))
    bind = {"PodName": "p", "PodNamespace": "ns", "PodUID": "u1", "Node": "roomy"}
    results = []
    for ext in (attacked, fresh):
        with contextlib.suppress(BadRequest):
            results.append(asyncio.run(ext.bind(dict(bind), NOW)))
        results.append(dict(ext.state.reservations))
    assert results[: len(results) // 2] == results[len(results) // 2 :]


def test_a_full_mode_node_with_every_gpu_full_leaves_the_real_node_alone() -> None:
    """The issue's probe: a node sent full, then the real node filtered in cache mode."""
    ext = Extender(make_state(), ExtenderSettings())
    fake = node_json("roomy", [81920, 81920])
    injected = [node_json(f"fake-{i}", [0, 0]) for i in range(50)]
    reply = ext.filter({"Pod": pod_json(20000), "Nodes": {"items": [fake, *injected]}}, NOW)
    assert [n["metadata"]["name"] for n in reply["Nodes"]["items"]] == ["roomy"]  # the watch's
    assert set(reply["FailedAndUnresolvableNodes"]) == {f"fake-{i}" for i in range(50)}
    assert set(ext.state.nodes) == set(REAL)
    later = ext.filter({"Pod": pod_json(20000), "NodeNames": ["roomy", "fake-1"]}, NOW)
    assert later["NodeNames"] == ["roomy"]


def test_the_watch_still_changes_answers() -> None:
    """The control for the property: a node the API server changes does change the answer."""
    ext = Extender(make_state(), ExtenderSettings())
    args = {"Pod": pod_json(20000), "NodeNames": ["roomy"]}
    assert ext.filter(args, NOW)["NodeNames"] == ["roomy"]
    ext.state.upsert_node(node_from_json(node_json("roomy", [81920, 81920])))
    assert ext.filter(args, NOW)["NodeNames"] == []


def test_what_requests_leave_behind_is_bounded_by_the_cluster() -> None:
    """Node lists of invented names (or repeats) are answered but not remembered, so requests
    cannot make the extender keep more than lists the size of its cluster."""
    ext = Extender(make_state(), ExtenderSettings())
    n = len(ext.state.nodes)
    for k in range(20):
        for pod in (pod_json(20000), pod_json(1000, tolerations=[{"operator": "Exists"}])):
            invented = [f"x-{k}-{i}" for i in range(1000)]
            reply = ext.filter({"Pod": pod, "NodeNames": [*invented, "roomy"]}, NOW)
            assert len(reply["FailedAndUnresolvableNodes"]) == 1000
            ext.prioritize({"Pod": pod, "NodeNames": ["roomy"] * 1000}, NOW)
    index = ext.state.index(NOW)
    kept = [names for names, _ in index._recent_positions]
    assert all(len(names) <= n + 64 for names in kept)
    assert all(len(out) <= n + 64 for _, _, out in index._static_failed.values())
    real = ["tight", "roomy", "full", "tainted"]
    ext.filter({"Pod": pod_json(20000), "NodeNames": real}, NOW)
    assert real in [names for names, _ in ext.state.index(NOW)._recent_positions]


def test_lists_longer_than_kube_scheduler_could_send_are_refused() -> None:
    """At most twice the cluster's nodes plus 1,024 (nodes the watch has yet to show)."""
    ext = Extender(make_state(), ExtenderSettings())
    bound = 2 * len(ext.state.nodes) + 1024
    pod = pod_json(20000)
    names = ["roomy", *(f"new-{i}" for i in range(bound - 1))]
    assert ext.filter({"Pod": pod, "NodeNames": names}, NOW)["NodeNames"] == ["roomy"]
    assert len(ext.prioritize({"Pod": pod, "NodeNames": names}, NOW)) == bound
    over = [*names, "one-more"]
    items = [{"metadata": {"name": n}} for n in over]
    for verb in (ext.filter, ext.prioritize):
        for args in ({"Pod": pod, "NodeNames": over}, {"Pod": pod, "Nodes": {"items": items}}):
            with pytest.raises(BadRequest, match=f"at most {bound}"):
                verb(args, NOW)
