"""Scenario 3, scheduling: the real kube-scheduler, configured by ``deploy/``'s
KubeSchedulerConfiguration (only the extender URL and the kubeconfig differ), places GPU pods
through the gpuscale extender's filter, prioritize and bind onto kwok GPU nodes.

The nodes' per-GPU memory comes from gpuscale's node-agent code (NVML stand-in) as the node
agent's ServiceAccount. Pods are created many at once where fewer fit: exactly the right number
bind, no device is over-committed by the recorded indices, and the rest stay Pending with the
extender's reason in their FailedScheduling event. kwok starts a bound pod one second after the
bind, so the extender must hold memory for pods that are bound but not yet running.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from extender.objects import GPUS_ANNOTATION
from extender.quantity import gpu_memory_mib
from tests.e2e.cluster import ControlPlane, Process
from tests.e2e.gpu_nodes import GpuNode, gpu_indices, node_agents
from tests.e2e.install import (
    NODE_AGENT_SA,
    Installed,
    apply,
    delete,
    second_scheduler,
)
from tests.e2e.kube import api, condition, deployment, eventually, namespace

pytestmark = [pytest.mark.cluster]

NS = "gpu-workloads"
A100_80 = "NVIDIA-A100-SXM4-80GB"
A100_40 = "NVIDIA-A100-SXM4-40GB"
L4 = "NVIDIA-L4"
NODES = (
    # Device 1 is mostly used by something outside Kubernetes: only NVML knows.
    GpuNode("gpu-a", A100_80, 81920, (0, 50000), labels={"zone": "a"}),
    GpuNode(
        "gpu-b",
        A100_40,
        40960,
        (0, 0, 0, 0),
        labels={"zone": "b"},
        taints=({"key": "gpu", "value": "reserved", "effect": "NoSchedule"},),
    ),
    GpuNode("gpu-c", L4, 23034, (0,), labels={"zone": "c"}),
)
BY_NAME = {n.name: n for n in NODES}


@pytest.fixture(scope="module")
def scheduler(installed: Installed) -> Iterator[tuple[Process, Process]]:
    try:
        with second_scheduler(installed) as running:
            yield running
    finally:
        delete(installed.cp, [n.manifest() for n in NODES] + [namespace(NS)])


@pytest.fixture
async def gpu_nodes(
    control_plane: ControlPlane, installed: Installed, admin_client: Any
) -> AsyncIterator[tuple[GpuNode, ...]]:
    apply(control_plane, [n.manifest() for n in NODES] + [namespace(NS)])
    core = api(admin_client, "CoreV1Api")

    async def published() -> list[str]:
        nodes = await core.list_node(label_selector="type=kwok")
        return sorted(
            n.metadata.name
            for n in nodes.items
            if GPUS_ANNOTATION in (n.metadata.annotations or {})
            and (c := condition(n, "Ready")) is not None
            and c.status == "True"
        )

    async with node_agents(NODES, installed.kubeconfig(NODE_AGENT_SA)):
        await eventually(
            "GPU nodes Ready with their GPU annotation",
            published,
            lambda names: names == sorted(BY_NAME),
            within=60,
        )
        yield NODES


async def _pods(admin_client: Any, app: str) -> list[Any]:
    pods = await api(admin_client, "CoreV1Api").list_namespaced_pod(NS, label_selector=f"app={app}")
    return list(pods.items)


async def _failed_scheduling(admin_client: Any, pod: str) -> list[str]:
    events = await api(admin_client, "CoreV1Api").list_namespaced_event(
        NS, field_selector=f"involvedObject.name={pod},reason=FailedScheduling"
    )
    return [e.message for e in events.items]


def _memory(pod: Any) -> int:
    # The API server canonicalises quantities ("20000" comes back as "20k").
    return gpu_memory_mib(pod.spec.containers[0].resources.limits["gpuscale.io/gpu-memory"])


def _assert_no_device_overcommitted(pods: list[Any]) -> dict[tuple[str, int], int]:
    used: dict[tuple[str, int], int] = defaultdict(int)
    for pod in pods:
        if not pod.spec.node_name:
            continue
        indices = gpu_indices(pod)
        for index in indices:
            used[(pod.spec.node_name, int(index))] += _memory(pod)
    for (node, index), mib in used.items():
        assert mib <= BY_NAME[node].free_mib(index), (node, index, mib, dict(used))
    return dict(used)


async def _settle(admin_client: Any, app: str, bound: int, pending: int) -> list[Any]:
    """Wait until ``bound`` pods are bound and ``pending`` have a FailedScheduling event."""

    async def state() -> tuple[int, int]:
        pods = await _pods(admin_client, app)
        n_bound = sum(1 for p in pods if p.spec.node_name)
        n_failed = 0
        for p in pods:
            if not p.spec.node_name and await _failed_scheduling(admin_client, p.metadata.name):
                n_failed += 1
        return n_bound, n_failed

    await eventually(
        f"{app}: {bound} bound, {pending} failed", state, lambda s: s == (bound, pending), within=60
    )
    # The scheduler retries unschedulable pods; a second look must still show the same split.
    await asyncio.sleep(3)
    assert await state() == (bound, pending)
    return await _pods(admin_client, app)


async def test_gpu_pods_bind_by_free_memory_and_the_rest_stay_pending(
    control_plane: ControlPlane,
    scheduler: tuple[Process, Process],
    gpu_nodes: tuple[GpuNode, ...],
    admin_client: Any,
) -> None:
    # 40 GiB each: only gpu-a's device 0 has room (twice); device 1 has 31920 MiB free, gpu-b is
    # tainted and gpu-c is too small. Six at once: exactly two bind.
    apply(
        control_plane,
        [deployment("llm", NS, 6, scheduler="gpuscale", gpus=1, gpu_memory_mib=40960)],
    )
    pods = await _settle(admin_client, "llm", bound=2, pending=4)
    assert {p.spec.node_name for p in pods if p.spec.node_name} == {"gpu-a"}
    used = _assert_no_device_overcommitted(pods)
    assert used == {("gpu-a", 0): 81920}
    for pod in pods:
        if not pod.spec.node_name:
            messages = await _failed_scheduling(admin_client, pod.metadata.name)
            assert any("insufficient GPU memory" in m for m in messages), messages
            assert any("untolerated taint" in m for m in messages), messages
    # kwok then runs them: bound pods become Running.
    await eventually(
        "bound pods Running",
        lambda: _pods(admin_client, "llm"),
        lambda ps: sum(1 for p in ps if p.status.phase == "Running") == 2,
        within=30,
    )


async def test_tolerations_and_required_affinity_as_kubernetes_means_them(
    control_plane: ControlPlane,
    scheduler: tuple[Process, Process],
    gpu_nodes: tuple[GpuNode, ...],
    admin_client: Any,
) -> None:
    pod_spec = {
        "tolerations": [
            {"key": "gpu", "operator": "Equal", "value": "reserved", "effect": "NoSchedule"}
        ],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": "nvidia.com/gpu.product",
                                    "operator": "In",
                                    "values": [A100_40],
                                }
                            ]
                        }
                    ]
                }
            }
        },
    }
    apply(
        control_plane,
        [
            deployment(
                "tolerant",
                NS,
                6,
                scheduler="gpuscale",
                gpus=1,
                gpu_memory_mib=40960,
                pod_spec=pod_spec,
            )
        ],
    )
    pods = await _settle(admin_client, "tolerant", bound=4, pending=2)
    bound = [p for p in pods if p.spec.node_name]
    assert {p.spec.node_name for p in bound} == {"gpu-b"}
    indices = sorted(gpu_indices(p)[0] for p in bound)
    assert indices == [0, 1, 2, 3]
    _assert_no_device_overcommitted(await _pods(admin_client, "llm") + pods)


async def test_node_selector_beats_the_score(
    control_plane: ControlPlane,
    scheduler: tuple[Process, Process],
    gpu_nodes: tuple[GpuNode, ...],
    admin_client: Any,
) -> None:
    # Bin packing alone would pick gpu-c (least memory left over); the selector says zone a,
    # where only device 1 (31920 MiB free) has room.
    apply(
        control_plane,
        [
            deployment(
                "pinned",
                NS,
                1,
                scheduler="gpuscale",
                gpus=1,
                gpu_memory_mib=20000,
                pod_spec={"nodeSelector": {"zone": "a"}},
            )
        ],
    )
    pods = await _settle(admin_client, "pinned", bound=1, pending=0)
    assert pods[0].spec.node_name == "gpu-a"
    assert gpu_indices(pods[0]) == [1]
    all_pods = [*await _pods(admin_client, "llm"), *await _pods(admin_client, "tolerant"), *pods]
    _assert_no_device_overcommitted(all_pods)


async def test_the_scheduler_binds_over_mtls_and_an_unauthenticated_bind_is_refused(
    control_plane: ControlPlane,
    installed: Installed,
    scheduler: tuple[Process, Process],
    gpu_nodes: tuple[GpuNode, ...],
    admin_client: Any,
) -> None:
    """deploy/'s mTLS between kube-scheduler and the extender: the scheduler's client
    certificate gets a GPU pod placed and bound; without one, or with a certificate of the same
    CA that names someone else, /bind is refused and the pod stays unbound."""
    extender, _sched = scheduler
    apply(
        control_plane,
        [
            deployment("mtls", NS, 1, scheduler="gpuscale", gpus=1, gpu_memory_mib=8000),
            # Nobody schedules these: the target of the forged binds.
            deployment("victim", NS, 1, scheduler="nobody", gpus=1, gpu_memory_mib=8000),
        ],
    )
    (placed,) = await _settle(admin_client, "mtls", bound=1, pending=0)
    assert gpu_indices(placed), "bound by the extender, which records the devices"

    (victim,) = await eventually(
        "the victim pod exists",
        lambda: _pods(admin_client, "victim"),
        lambda ps: len(ps) == 1,
        within=30,
    )
    bind = orjson.dumps(
        {
            "PodName": victim.metadata.name,
            "PodNamespace": NS,
            "PodUID": victim.metadata.uid,
            "Node": placed.spec.node_name,
        }
    )
    url = f"https://127.0.0.1:{extender.ports['verbs']}/bind"
    anonymous = ssl.create_default_context(cafile=str(installed.cert.ca))
    intruder = ssl.create_default_context(cafile=str(installed.cert.ca))
    cert_dir = installed.cert.dir
    intruder.load_cert_chain(cert_dir / "intruder.crt", cert_dir / "intruder.key")
    async with aiohttp.ClientSession() as http:
        served: int | None
        try:
            async with http.post(url, data=bind, ssl=anonymous) as resp:
                served = resp.status
        except (aiohttp.ClientError, ssl.SSLError, ConnectionError):
            served = None
        assert served is None, f"served without a client certificate: {served}"
        async with http.post(url, data=bind, ssl=intruder) as resp:
            assert resp.status == 403
            assert "may not call /bind" in orjson.loads(await resp.read())["Error"]
    (after,) = await _pods(admin_client, "victim")
    assert not after.spec.node_name, "a forged bind went through"
