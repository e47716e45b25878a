"""/metrics of the cluster state: a fixed set of families whose series do not grow with the
cluster (per GPU model), per-device series only when asked, and rendering that hands the event
loop back every slice of nodes."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from extender import cluster_metrics
from extender.cluster_state import ClusterState
from extender.decode import node_from_json, pod_from_json
from extender.inventory import gpus_annotation
from extender.objects import GpuDevice
from tests.extender.support import NOW
from tests.extender.test_filtering import STAMP, node_json, pod_json

MODELS = ("NVIDIA-A100-SXM4-80GB", "NVIDIA-L4", "Tesla-T4")
DEFAULT_FAMILIES = {
    "gpuscale_extender_gpus",
    "gpuscale_extender_gpus_idle",
    "gpuscale_extender_gpu_memory_free_mib",
    "gpuscale_extender_gpu_memory_total_mib",
    "gpuscale_extender_nodes",
    "gpuscale_extender_reservations",
    "gpuscale_extender_pending_gpu_pods",
}


def gpu_node(i: int, model: str, used: int) -> dict[str, Any]:
    name = f"node-{i:05d}"
    devices = [GpuDevice(d, f"GPU-{i}-{d}", model, 24000, used * (d % 2)) for d in range(8)]
    raw = node_json(name, [])
    raw["metadata"]["annotations"]["gpuscale.io/gpus"] = gpus_annotation(devices, STAMP)
    return raw


def cluster(n: int, models: tuple[str, ...] = MODELS) -> ClusterState:
    state = ClusterState()
    for i in range(n):
        state.upsert_node(node_from_json(gpu_node(i, models[i % len(models)], 1000)))
    bare = node_json("no-inventory", [])
    del bare["metadata"]["annotations"]["gpuscale.io/gpus"]
    state.upsert_node(node_from_json(bare))
    return state


Families = dict[str, dict[tuple[tuple[str, str], ...], float]]


def scrape(state: ClusterState, now: float = NOW, **kw: Any) -> Families:
    text = asyncio.run(cluster_metrics.render(state, now, **kw)).decode()
    out: Families = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "gauge"
        out[family.name] = {tuple(sorted(s.labels.items())): s.value for s in family.samples}
    return out


def test_series_do_not_grow_with_the_cluster() -> None:
    small, large = scrape(cluster(30)), scrape(cluster(600))
    assert set(small) == set(large) == DEFAULT_FAMILIES
    series = sum(len(v) for v in large.values())
    assert series == sum(len(v) for v in small.values()) == 4 * len(MODELS) + 2 + 1 + 1
    gpus = {dict(k)["model"]: v for k, v in large["gpuscale_extender_gpus"].items()}
    assert gpus == dict.fromkeys(MODELS, 600 / 3 * 8)
    free = {dict(k)["model"]: v for k, v in large["gpuscale_extender_gpu_memory_free_mib"].items()}
    assert free == dict.fromkeys(MODELS, 600 / 3 * (8 * 24000 - 4 * 1000))
    idle = {dict(k)["model"]: v for k, v in large["gpuscale_extender_gpus_idle"].items()}
    assert idle == dict.fromkeys(MODELS, 600 / 3 * 4)
    nodes = {dict(k)["gpu_state"]: v for k, v in large["gpuscale_extender_nodes"].items()}
    assert nodes == {"known": 600, "unknown": 1}


def test_measurements_turning_stale_count_as_unknown() -> None:
    state = cluster(30)
    assert scrape(state)["gpuscale_extender_nodes"][(("gpu_state", "unknown"),)] == 1
    later = scrape(state, NOW + 3600)  # past --stale-after: the verbs fail these nodes too
    assert later["gpuscale_extender_nodes"][(("gpu_state", "unknown"),)] == 31
    assert later["gpuscale_extender_gpus"] == {}


def test_per_device_series_only_when_asked() -> None:
    state = cluster(60)
    families = scrape(state, per_device=True)
    per_device = families["gpuscale_extender_gpu_free_mib"]
    assert len(per_device) == 60 * 8
    assert per_device[(("gpu", "1"), ("node", "node-00007"))] == 23000
    assert set(families) == DEFAULT_FAMILIES | {"gpuscale_extender_gpu_free_mib"}
    assert set(families) == set(cluster_metrics.FAMILIES)
    assert "gpuscale_extender_gpu_free_mib" not in scrape(state)
    summed = families["gpuscale_extender_gpu_memory_free_mib"].values()
    assert sum(summed) == sum(per_device.values())  # the index's rows agree with the state


def test_model_label_values_are_capped() -> None:
    models = tuple(f"model-{i}" for i in range(100))
    gpus = scrape(cluster(200, models))["gpuscale_extender_gpus"]
    labels = {dict(k)["model"] for k in gpus}
    assert len(labels) == cluster_metrics.MAX_MODELS + 1
    assert cluster_metrics.OTHER_MODEL in labels
    assert sum(gpus.values()) == 200 * 8


def test_rendering_hands_the_loop_back_every_slice() -> None:
    """Counted in event-loop turns, not time: a ticker task runs between slices."""
    state = cluster(1000)

    async def main() -> tuple[int, bytes]:
        turns = 0
        done = False

        async def ticker() -> None:
            nonlocal turns
            while not done:
                turns += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        start = turns
        text = await cluster_metrics.render(state, NOW, per_device=True, slice_nodes=100)
        done = True
        await task
        return turns - start, text

    turns, text = asyncio.run(main())
    assert turns >= 1001 // 100
    assert text.count(b"\ngpuscale_extender_gpu_free_mib{") == 8000


pod_events = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),  # pod name
        st.sampled_from([None, 1000]),  # GPU memory
        st.sampled_from(["", "node-00000"]),  # node
        st.sampled_from(["Pending", "Running", "Succeeded"]),
        st.booleans(),  # delete instead of upsert
    ),
    max_size=30,
)


@given(pod_events)
def test_the_pending_gpu_pod_count_follows_the_pods(events: list[tuple[Any, ...]]) -> None:
    """The count a scrape reads is kept as pods come and go; it equals a recount."""
    state = cluster(1)
    for name, mib, node, phase, delete in events:
        if delete:
            state.delete_pod(f"ns/{name}")
            continue
        raw = pod_json(mib)
        raw["metadata"]["name"] = name
        raw["spec"]["nodeName"] = node
        raw["status"] = {"phase": phase}
        state.upsert_pod(pod_from_json(raw))
    recount = sum(1 for p in state.pods.values() if p.gpu is not None and not p.node_name)
    assert state.pending_gpu_pods() == recount
