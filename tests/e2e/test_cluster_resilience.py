"""Scenarios 4 and 5: high availability on a real Lease, and restarts of the control plane.

HA: two controllers elect a leader on ``coordination.k8s.io/v1`` Lease ``gpuscale-controller``.
The leader is killed (SIGKILL: no clean release); the other takes over within the lease duration
(15 s) of the last renewal, by the API server's own timestamps, and the audit log shows that
their writes never overlap in time (every write carries the writer's identity in its user agent).

Restarts: kube-apiserver restarted under a running controller and extender (every watch breaks
and resumes); then an etcd compaction while both are frozen (SIGSTOP) forces a real ``410 Gone``
when their watches resume. Both relist, and nothing is lost (a policy created meanwhile gets its
HPA, a deleted one stops being served, a pod bound meanwhile by someone else holds its GPU
memory) or duplicated (one HPA per policy, one Event per change).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest

from extender.objects import GPU_INDICES_ANNOTATION
from tests.autoscaler.helpers import metric_count, metric_via_api
from tests.e2e.cluster import ControlPlane, Process, free_port
from tests.e2e.gpu_nodes import GpuNode, gpu_indices, node_agents
from tests.e2e.install import (
    NAMESPACE,
    NODE_AGENT_SA,
    Installed,
    apply,
    controller_process,
    delete,
    extender_process,
    scheduler_process,
    wait_http_ok,
)
from tests.e2e.kube import (
    api,
    deployment,
    eventually,
    namespace,
    policy_configmap,
    spec_replicas,
    status_annotation,
)
from tests.support.inference_server import InferenceServer
from tests.support.prometheus import PrometheusServer

pytestmark = [pytest.mark.cluster]

NS = "resilience"
LEASE = "gpuscale-controller"
LEASE_DURATION = 15.0
PODS_LISTED = '"event":"pods listed"'


def _policy(target: str, query: str) -> dict[str, Any]:
    return {
        "apiVersion": "gpuscale.io/v1alpha1",
        "kind": "ScalingPolicy",
        "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
        "replicas": {"min": 1, "max": 20},
        "interval": "1s",
        "metrics": [{"name": "queue", "type": "queueDepth", "query": query, "targetPerReplica": 4}],
        "behavior": {
            "scaleDown": {
                "stabilizationWindow": "0s",
                "policies": [{"type": "Percent", "value": 100, "period": "1s"}],
            }
        },
    }


QUEUE = 'sum(vllm:num_requests_waiting{model_name="llama"})'


async def _replicas(admin_client: Any, name: str) -> int:
    return await spec_replicas(admin_client, NS, name)


async def _desired(admin_client: Any, name: str) -> int | None:
    """What the leader last wrote in the policy's status (the HA pair is not behind the
    APIService, so this, not the HPA, shows who decides)."""
    cm = await api(admin_client, "CoreV1Api").read_namespaced_config_map(name, NS)
    desired = status_annotation(cm).get("desiredReplicas")
    return int(desired) if desired is not None else None


async def _lease(admin_client: Any) -> Any:
    return await api(admin_client, "CoordinationV1Api").read_namespaced_lease(LEASE, NAMESPACE)


def _writes_by(cp: ControlPlane, identities: set[str]) -> dict[str, list[float]]:
    """Stage timestamps of successful non-Lease writes per controller identity."""
    out: dict[str, list[float]] = {i: [] for i in identities}
    for event in cp.audit_events():
        agent = event.get("userAgent", "")
        ident = (
            agent.split("/", 1)[1].split(" ", 1)[0]
            if agent.startswith("gpuscale-controller/")
            else None
        )
        if ident not in out:
            continue
        if event["objectRef"].get("resource") == "leases":
            continue
        if event.get("responseStatus", {}).get("code", 0) >= 400:
            continue
        out[ident].append(
            datetime.fromisoformat(event["stageTimestamp"].replace("Z", "+00:00")).timestamp()
        )
    return out


async def _audit_writes(cp: ControlPlane, identities: set[str]) -> dict[str, list[float]]:
    return _writes_by(cp, identities)


async def test_leader_killed_the_other_takes_over_and_writes_never_overlap(
    control_plane: ControlPlane,
    installed: Installed,
    prometheus: PrometheusServer,
    vllm_server: InferenceServer,
    admin_client: Any,
) -> None:
    apply(control_plane, [namespace(NS), deployment("ha", NS, 1)])
    vllm_server.set_waiting(8)
    ids = {"ha-a", "ha-b"}
    procs = {
        "ha-a": controller_process(
            installed, name="ha-a", prometheus_url=prometheus.url, host="127.0.0.2"
        ),
        "ha-b": controller_process(
            installed, name="ha-b", prometheus_url=prometheus.url, host="127.0.0.3"
        ),
    }
    for proc in procs.values():
        proc.start()
    try:
        for proc in procs.values():
            wait_http_ok(f"http://127.0.0.1:{proc.ports['ops']}/readyz", within=60, proc=proc)
        lease = await eventually(
            "a leader",
            lambda: _lease(admin_client),
            lambda lease: lease.spec.holder_identity in ids,
            within=30,
        )
        leader = lease.spec.holder_identity
        follower = (ids - {leader}).pop()
        apply(control_plane, [policy_configmap("ha", NS, _policy("ha", QUEUE))], manager="sre")
        await eventually(
            "leader decides 2", lambda: _desired(admin_client, "ha"), lambda n: n == 2, within=60
        )

        procs[leader].signal(signal.SIGKILL)
        killed_at = time.time()
        last_renew = (await _lease(admin_client)).spec.renew_time.timestamp()
        lease = await eventually(
            "takeover",
            lambda: _lease(admin_client),
            lambda lease: lease.spec.holder_identity == follower,
            within=LEASE_DURATION + 10,
        )
        taken = lease.spec.acquire_time.timestamp()
        assert taken - last_renew <= LEASE_DURATION + 1.0, (last_renew, taken)

        # The new leader acts: more load, a new decision, written by it alone.
        vllm_server.set_waiting(20)
        await eventually(
            "new leader decides 5",
            lambda: _desired(admin_client, "ha"),
            lambda n: n == 5,
            within=60,
        )
        writes = await eventually(
            "audit records of both writers",
            lambda: _audit_writes(control_plane, ids),
            lambda w: bool(w[leader]) and bool(w[follower]),
            within=10,
        )
        assert max(writes[leader]) <= killed_at + 0.5, "the killed leader wrote after its death"
        assert min(writes[follower]) >= max(writes[leader]), (
            f"two writers overlapped: {leader} until {max(writes[leader])}, "
            f"{follower} from {min(writes[follower])}"
        )
    finally:
        for proc in procs.values():
            proc.stop()
        delete(
            control_plane,
            [policy_configmap("ha", NS, _policy("ha", QUEUE)), deployment("ha", NS, 1)],
        )


GPU_NODE = GpuNode("gpu-r", "NVIDIA-A100-SXM4-80GB", 81920, (0, 0), labels={"zone": "r"})


@pytest.fixture
async def running(
    control_plane: ControlPlane,
    installed: Installed,
    prometheus: PrometheusServer,
    admin_client: Any,
) -> AsyncIterator[dict[str, Process]]:
    apply(control_plane, [namespace(NS), GPU_NODE.manifest()])
    port = free_port()
    procs = {
        "controller": controller_process(
            installed, name="restart-c", prometheus_url=prometheus.url
        ),
        "extender": extender_process(installed, port=port),
        "scheduler": scheduler_process(installed, extender_url=f"https://127.0.0.1:{port}"),
    }
    for proc in procs.values():
        proc.start()
    try:
        wait_http_ok(
            f"http://127.0.0.1:{procs['controller'].ports['ops']}/readyz",
            within=60,
            proc=procs["controller"],
        )
        wait_http_ok(
            f"http://127.0.0.1:{procs['extender'].ports['ops']}/readyz",
            within=60,
            proc=procs["extender"],
        )
        supervisor = asyncio.create_task(procs["scheduler"].keep_running())
        try:
            async with node_agents([GPU_NODE], installed.kubeconfig(NODE_AGENT_SA)):
                yield procs
        finally:
            supervisor.cancel()
    finally:
        # The scheduler first: it must never see its extender gone.
        for proc in reversed(list(procs.values())):
            proc.stop()
        delete(control_plane, [GPU_NODE.manifest()])


def _gpu_pod(
    name: str, mib: int, *, node: str | None = None, indices: list[int] | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "schedulerName": "gpuscale",
        "nodeSelector": {"zone": "r"},
        "containers": [
            {
                "name": "server",
                "image": "vllm/vllm-openai:v0.8.5",
                "resources": {
                    "limits": {"nvidia.com/gpu": "1", "gpuscale.io/gpu-memory": str(mib)}
                },
            }
        ],
    }
    meta: dict[str, Any] = {"name": name, "namespace": NS, "labels": {"app": "restart"}}
    if node is not None:
        spec["nodeName"] = node
        meta["annotations"] = {GPU_INDICES_ANNOTATION: ",".join(map(str, indices or [0]))}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


async def _log(proc: Process) -> str:
    return proc.log.read_text()


async def _pod(admin_client: Any, name: str) -> Any:
    return await api(admin_client, "CoreV1Api").read_namespaced_pod(name, NS)


async def _hpas(admin_client: Any) -> list[str]:
    hpas = await api(admin_client, "AutoscalingV2Api").list_namespaced_horizontal_pod_autoscaler(NS)
    return sorted(h.metadata.name for h in hpas.items)


async def test_apiserver_restart_then_compaction_410_lose_and_duplicate_nothing(
    control_plane: ControlPlane,
    running: dict[str, Process],
    vllm_server: InferenceServer,
    prometheus: PrometheusServer,
    admin_client: Any,
) -> None:
    client = admin_client
    vllm_server.set_waiting(8)
    apply(control_plane, [deployment("one", NS, 1), deployment("two", NS, 1)])
    apply(control_plane, [policy_configmap("one", NS, _policy("one", QUEUE))], manager="sre")
    await eventually("one at 2", lambda: _replicas(client, "one"), lambda n: n == 2, within=60)
    first = _gpu_pod("first", 40960)
    apply(control_plane, [first])
    await eventually(
        "first bound", lambda: _pod(client, "first"), lambda p: bool(p.spec.node_name), within=30
    )

    # 1. kube-apiserver restarts: watches break and resume from where they were.
    control_plane.restart_apiserver()
    vllm_server.set_waiting(12)
    await eventually("one at 3", lambda: _replicas(client, "one"), lambda n: n == 3, within=60)

    # 2. Freeze both, change the world, compact etcd past what they saw, restart the API server
    # so that their watches must resume from a compacted version: 410 Gone.
    first_device = gpu_indices(await _pod(client, "first"))[0]
    other_device = 1 - first_device
    pods_listed_before = running["extender"].log.read_text().count(PODS_LISTED)
    for name in ("controller", "extender"):
        running[name].signal(signal.SIGSTOP)
    try:
        apply(control_plane, [policy_configmap("two", NS, _policy("two", QUEUE))], manager="sre")
        await api(client, "CoreV1Api").delete_namespaced_config_map("one", NS)
        # Bound by someone else to the other device: the extender must count it after its relist.
        apply(control_plane, [_gpu_pod("outsider", 81920, node="gpu-r", indices=[other_device])])
        control_plane.compact_etcd()
        control_plane.restart_apiserver()
    finally:
        for name in ("controller", "extender"):
            running[name].signal(signal.SIGCONT)

    await eventually("two at 3", lambda: _replicas(client, "two"), lambda n: n == 3, within=90)
    await eventually(
        "only two's HPA",
        lambda: _hpas(client),
        lambda h: [n for n in h if n in {"gpuscale-one", "gpuscale-two"}] == ["gpuscale-two"],
        within=30,
    )
    status, body = await metric_via_api(client, NS, "one")
    assert status != 200 or not body.get("items"), body
    status, body = await metric_via_api(client, NS, "two")
    assert status == 200 and metric_count(body) == 3
    # The controller resumes its watches from the last version it saw: that resumption must hit
    # the compaction (410) and relist. The extender's cache lists afresh after any broken watch.
    await eventually(
        "controller relists after a 410",
        lambda: _log(running["controller"]),
        lambda log: "watch expired (410 Gone)" in log,
        within=30,
    )
    await eventually(
        "extender lists pods again",
        lambda: _log(running["extender"]),
        lambda log: log.count(PODS_LISTED) > pods_listed_before,
        within=30,
    )

    # `first` holds 40960 of its device's 81920, the outsider all of the other: 50000 fits nowhere.
    apply(control_plane, [_gpu_pod("late", 50000)])
    events = await eventually(
        "late unschedulable",
        lambda: api(client, "CoreV1Api").list_namespaced_event(
            NS, field_selector="involvedObject.name=late,reason=FailedScheduling"
        ),
        lambda ev: bool(ev.items),
        within=60,
    )
    assert any("insufficient GPU memory" in e.message for e in events.items)
    # ... while 40960 still fits beside `first`.
    apply(control_plane, [_gpu_pod("fits", 40960)])
    pod = await eventually(
        "fits bound", lambda: _pod(client, "fits"), lambda p: bool(p.spec.node_name), within=60
    )
    assert gpu_indices(pod) == [first_device]
    # One DesiredReplicas Event per change of `two`: none repeated by the relist.
    ev = await api(client, "CoreV1Api").list_namespaced_event(
        NS, field_selector="involvedObject.name=two,reason=DesiredReplicas"
    )
    messages = [e.message for e in ev.items]
    assert len(messages) == len(set(messages)), messages
