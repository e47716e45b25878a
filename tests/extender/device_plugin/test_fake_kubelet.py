"""The device plugin against a fake kubelet that speaks the real gRPC APIs on unix sockets.

The fake kubelet does what the kubelet's device manager does, in the same order: it serves
``Registration`` on ``kubelet.sock``; on ``Register`` it dials the plugin's socket, asks for its
options and reads ``ListAndWatch``; to admit a pod it picks device IDs (asking
``GetPreferredAllocation`` first), calls ``Allocate`` per container, writes its checkpoint
(``kubelet_internal_checkpoint``), and calls ``PreStartContainer``. It also serves the
PodResources ``List`` API. On a restart it deletes the plugin's socket and makes a new
``kubelet.sock``. Pods live in the API stand-in and are read through ``kubernetes.aio``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest

from extender.device_plugin.devices import FakeNvml
from extender.device_plugin.proto import deviceplugin_v1beta1_pb2 as pb
from extender.device_plugin.proto import deviceplugin_v1beta1_pb2_grpc as pb_grpc
from extender.device_plugin.proto import podresources_v1_pb2 as pr
from extender.device_plugin.proto import podresources_v1_pb2_grpc as pr_grpc
from extender.device_plugin.server import (
    DevicePlugin,
    PluginSettings,
    kube_event_recorder,
    kube_pod_lister,
    pod_resources_viewer,
)
from tests.support.kube_standin import KubeStandIn

NODE = "gpu-1"
GPUS = [
    {"index": i, "uuid": f"GPU-{i:08x}-0000", "model": "NVIDIA H100", "totalMiB": 81920}
    for i in range(4)
]


@dataclass
class AdmittedPod:
    namespace: str
    name: str
    uid: str
    containers: dict[str, list[str]] = field(default_factory=dict)
    """container name -> device IDs held."""


class FakeKubelet(pb_grpc.RegistrationServicer, pr_grpc.PodResourcesListerServicer):
    """The device manager's side of the protocol, in miniature."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.registrations: list[pb.RegisterRequest] = []
        self.devices: dict[str, str] = {}  # ID -> health, from ListAndWatch
        self.known: dict[tuple[str, str], AdmittedPod] = {}
        self.server: grpc.aio.Server | None = None
        self.channel: grpc.aio.Channel | None = None
        self.plugin: pb_grpc.DevicePluginAsyncStub | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.updates = asyncio.Event()
        self.options: pb.DevicePluginOptions | None = None

    async def start(self) -> None:
        self.server = grpc.aio.server()
        pb_grpc.add_RegistrationServicer_to_server(self, self.server)
        pr_grpc.add_PodResourcesListerServicer_to_server(self, self.server)
        self.server.add_insecure_port(f"unix://{self.dir / 'kubelet.sock'}")
        self.server.add_insecure_port(f"unix://{self.dir / 'pod-resources.sock'}")
        await self.server.start()

    async def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.watcher
        if self.channel is not None:
            await self.channel.close()
        if self.server is not None:
            await self.server.stop(None)
        for name in ("kubelet.sock", "pod-resources.sock"):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / name).unlink()

    async def restart(self) -> None:
        """As the kubelet does at start: remove every socket in the directory, serve anew."""
        await self.stop()
        for p in self.dir.glob("*.sock"):
            p.unlink()
        self.devices = {}
        self.plugin = None
        await self.start()

    # Registration
    async def Register(
        self, request: pb.RegisterRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Empty:
        assert request.version == "v1beta1"
        self.registrations.append(request)
        if self.watcher is not None:
            self.watcher.cancel()
        if self.channel is not None:
            await self.channel.close()
        self.devices = {}
        self.channel = grpc.aio.insecure_channel(f"unix://{self.dir / request.endpoint}")
        self.plugin = pb_grpc.DevicePluginStub(self.channel)
        self.watcher = asyncio.create_task(self._watch())
        return pb.Empty()

    async def _watch(self) -> None:
        assert self.plugin is not None
        try:
            self.options = await self.plugin.GetDevicePluginOptions(pb.Empty())
            async for resp in self.plugin.ListAndWatch(pb.Empty()):
                self.devices = {d.ID: d.health for d in resp.devices}
                self.updates.set()
        except grpc.aio.AioRpcError:
            # The plugin went away: the kubelet marks its devices unhealthy.
            self.devices = dict.fromkeys(self.devices, "Unhealthy")

    # PodResources
    async def List(
        self, request: pr.ListPodResourcesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pr.ListPodResourcesResponse:
        return pr.ListPodResourcesResponse(
            pod_resources=[
                pr.PodResources(
                    name=p.name,
                    namespace=p.namespace,
                    containers=[
                        pr.ContainerResources(
                            name=c,
                            devices=[
                                pr.ContainerDevices(resource_name="nvidia.com/gpu", device_ids=ids)
                            ],
                        )
                        for c, ids in p.containers.items()
                    ],
                )
                for p in self.known.values()
            ]
        )

    async def GetAllocatableResources(
        self, request: pr.AllocatableResourcesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pr.AllocatableResourcesResponse:
        raise NotImplementedError  # the plugin does not call it

    async def Get(
        self, request: pr.GetPodResourcesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pr.GetPodResourcesResponse:
        raise NotImplementedError  # the plugin does not call it

    def healthy(self) -> int:
        return sum(h == "Healthy" for h in self.devices.values())

    # admission
    def _free(self) -> list[str]:
        used = {i for p in self.known.values() for ids in p.containers.values() for i in ids}
        return sorted(i for i, h in self.devices.items() if h == "Healthy" and i not in used)

    def _write_checkpoint(self) -> None:
        entries = [
            {
                "PodUID": p.uid,
                "ContainerName": c,
                "ResourceName": "nvidia.com/gpu",
                "DeviceIDs": {"-1": ids},
                "AllocResp": "",
            }
            for p in self.known.values()
            for c, ids in p.containers.items()
        ]
        data = {"Data": {"PodDeviceEntries": entries, "RegisteredDevices": {}}, "Checksum": 0}
        (self.dir / "kubelet_internal_checkpoint").write_bytes(orjson.dumps(data))

    async def admit(self, pod: dict[str, Any]) -> dict[str, dict[str, str]]:
        """Allocate every GPU container of ``pod`` in order; returns container -> envs. A failed
        Allocate rejects the pod (it leaves the kubelet's pod list) and re-raises."""
        assert self.plugin is not None
        meta = pod["metadata"]
        record = AdmittedPod(meta["namespace"], meta["name"], meta["uid"])
        self.known[(record.namespace, record.name)] = record
        envs = {}
        try:
            for c in pod["spec"]["containers"]:
                n = int((c.get("resources", {}).get("limits") or {}).get("nvidia.com/gpu", 0))
                if n == 0:
                    continue
                free = self._free()
                pref = await self.plugin.GetPreferredAllocation(
                    pb.PreferredAllocationRequest(
                        container_requests=[
                            pb.ContainerPreferredAllocationRequest(
                                available_deviceIDs=free, allocation_size=n
                            )
                        ]
                    )
                )
                ids = list(pref.container_responses[0].deviceIDs)
                assert len(ids) == n and set(ids) <= set(free)
                resp = await self.plugin.Allocate(
                    pb.AllocateRequest(
                        container_requests=[pb.ContainerAllocateRequest(devices_ids=ids)]
                    )
                )
                record.containers[c["name"]] = ids
                self._write_checkpoint()
                await self.plugin.PreStartContainer(pb.PreStartContainerRequest(devices_ids=ids))
                envs[c["name"]] = dict(resp.container_responses[0].envs)
        except grpc.aio.AioRpcError:
            del self.known[(record.namespace, record.name)]
            self._write_checkpoint()
            raise
        return envs


def gpu_pod(
    name: str, indices: str, *, gpus: int = 1, mib: int | None = 20480, node: str = NODE
) -> dict[str, Any]:
    limits = {"nvidia.com/gpu": str(gpus)}
    if mib is not None:
        limits["gpuscale.io/gpu-memory"] = str(mib)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "inference",
            "annotations": {"gpuscale.io/gpu-indices": indices},
        },
        "spec": {
            "nodeName": node,
            "schedulerName": "gpuscale",
            "containers": [{"name": "vllm", "image": "x", "resources": {"limits": limits}}],
        },
    }


@dataclass
class Setup:
    kubelet: FakeKubelet
    plugin: DevicePlugin
    task: asyncio.Task[None]
    inventory: Path
    kube: KubeStandIn

    def create(self, pod: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = self.kube.store.create(pod)
        return created


async def until(predicate: Any, within: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


@pytest.fixture
async def setup(kube: KubeStandIn, kube_client: Any) -> AsyncIterator[Setup]:
    # A short directory: unix socket paths are limited to 107 bytes.
    directory = Path(os.environ.get("TMPDIR", "/tmp")) / f"gdp-{os.getpid()}-{id(kube) % 10**6}"
    directory.mkdir()
    inventory = directory / "gpus.json"
    inventory.write_bytes(orjson.dumps(GPUS))
    kubelet = FakeKubelet(directory)
    await kubelet.start()
    nvml = FakeNvml(str(inventory))
    plugin = DevicePlugin(
        PluginSettings(
            node=NODE,
            directory=str(directory),
            shares=4,
            pod_resources_socket=str(directory / "pod-resources.sock"),
            poll_interval=0.02,
            inventory_interval=0.02,
            retry_interval=0.05,
        ),
        nvml=nvml,
        list_pods=kube_pod_lister(kube_client, NODE),
        record_event=kube_event_recorder(kube_client, NODE, clock=lambda: 1.7e9),
        kubelet_view=pod_resources_viewer(str(directory / "pod-resources.sock"), "nvidia.com/gpu"),
    )
    task = asyncio.create_task(plugin.run())
    try:
        await until(lambda: kubelet.healthy() == 16)
        yield Setup(kubelet, plugin, task, inventory, kube)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await kubelet.stop()
        for p in directory.iterdir():
            p.unlink()
        directory.rmdir()


async def test_registration_and_the_advertised_devices(setup: Setup) -> None:
    (reg,) = setup.kubelet.registrations
    assert (reg.resource_name, reg.endpoint) == ("nvidia.com/gpu", "gpuscale-gpu.sock")
    assert reg.options.get_preferred_allocation_available and reg.options.pre_start_required
    assert sorted(setup.kubelet.devices) == sorted(
        f"{g['uuid']}::{k}" for g in GPUS for k in range(4)
    )
    assert set(setup.kubelet.devices.values()) == {"Healthy"}


async def test_pods_get_the_gpus_in_their_annotation_and_their_memory_share(setup: Setup) -> None:
    a = setup.create(gpu_pod("a", "2"))
    b = setup.create(gpu_pod("b", "2", mib=40960))
    c = setup.create(gpu_pod("c", "0,3", gpus=2, mib=None))
    # All three wait side by side; the kubelet admits them in another order than created.
    env_c = (await setup.kubelet.admit(c))["vllm"]
    env_b = (await setup.kubelet.admit(b))["vllm"]
    env_a = (await setup.kubelet.admit(a))["vllm"]
    assert env_a["NVIDIA_VISIBLE_DEVICES"] == GPUS[2]["uuid"]
    assert env_b["NVIDIA_VISIBLE_DEVICES"] == GPUS[2]["uuid"]
    assert env_c["NVIDIA_VISIBLE_DEVICES"] == f"{GPUS[0]['uuid']},{GPUS[3]['uuid']}"
    assert (env_a["GPUSCALE_GPU_MEMORY_FRACTION"], env_a["GPUSCALE_GPU_MEMORY_MIB"]) == (
        "0.2500",
        "20480",
    )
    assert env_b["GPUSCALE_GPU_MEMORY_FRACTION"] == "0.5000"
    assert env_c["GPUSCALE_GPU_MEMORY_FRACTION"] == "1.0000"
    assert env_c["GPUSCALE_GPU_INDICES"] == "0,3"
    # Two pods sharing a GPU see the same UUID and their shares sum to at most its memory.
    assert (
        float(env_a["GPUSCALE_GPU_MEMORY_FRACTION"]) + float(env_b["GPUSCALE_GPU_MEMORY_FRACTION"])
        <= 1.0
    )
    # The preferred allocation made the kubelet's own record name the same GPUs.
    held = setup.kubelet.known[("inference", "c")].containers["vllm"]
    assert {i.rpartition("::")[0] for i in held} == {GPUS[0]["uuid"], GPUS[3]["uuid"]}


async def test_a_pod_not_placed_by_gpuscale_is_refused_with_a_clear_error(setup: Setup) -> None:
    pod = gpu_pod("plain", "0")
    del pod["metadata"]["annotations"]
    created = setup.create(pod)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await setup.kubelet.admit(created)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "must be placed by the gpuscale scheduler" in (err.value.details() or "")
    (event,) = setup.kube.store.list("events", "inference")
    assert event["involvedObject"]["name"] == "plain" and event["reason"] == "GpuAllocationFailed"


async def test_a_pod_whose_gpu_vanished_fails_allocate_with_an_event(setup: Setup) -> None:
    pod = setup.create(gpu_pod("lost", "1"))
    gone = [dict(g, healthy=g["index"] != 1) for g in GPUS]
    setup.inventory.write_bytes(orjson.dumps(gone))
    await until(lambda: setup.kubelet.devices.get(f"{GPUS[1]['uuid']}::0") == "Unhealthy")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await setup.kubelet.admit(pod)
    assert "GPU(s) 1 unhealthy" in (err.value.details() or "")
    (event,) = setup.kube.store.list("events", "inference")
    assert event["involvedObject"]["name"] == "lost"
    assert event["involvedObject"]["uid"] == pod["metadata"]["uid"]
    assert (event["type"], event["reason"]) == ("Warning", "GpuAllocationFailed")
    assert "refusing rather than handing out other GPUs" in event["message"]


async def test_kubelet_restart_reregisters_and_keeps_allocations(setup: Setup) -> None:
    a = setup.create(gpu_pod("a", "1"))
    before = await setup.kubelet.admit(a)
    await setup.kubelet.restart()
    await until(lambda: len(setup.kubelet.registrations) == 2 and setup.kubelet.healthy() == 16)
    assert setup.plugin.status.registrations == 2
    # The kubelet kept its record of a; a second pod on another GPU is told apart from it.
    b = setup.create(gpu_pod("b", "3"))
    after = await setup.kubelet.admit(b)
    assert before["vllm"]["NVIDIA_VISIBLE_DEVICES"] == GPUS[1]["uuid"]
    assert after["vllm"]["NVIDIA_VISIBLE_DEVICES"] == GPUS[3]["uuid"]


async def test_plugin_restart_recovers_from_the_kubelets_record(
    setup: Setup, kube_client: Any
) -> None:
    a = setup.create(gpu_pod("a", "1"))
    b = setup.create(gpu_pod("b", "1"))
    await setup.kubelet.admit(a)
    setup.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await setup.task
    # A new plugin process: nothing in memory; the kubelet's checkpoint and PodResources remain.
    fresh = DevicePlugin(
        setup.plugin.settings,
        nvml=setup.plugin.nvml,
        list_pods=kube_pod_lister(kube_client, NODE),
        record_event=kube_event_recorder(kube_client, NODE, clock=lambda: 1.7e9),
        kubelet_view=pod_resources_viewer(
            setup.plugin.settings.pod_resources_socket, "nvidia.com/gpu"
        ),
    )
    setup.task = asyncio.create_task(fresh.run())
    await until(lambda: len(setup.kubelet.registrations) == 2)
    await until(lambda: setup.kubelet.healthy() == 16)
    env = await setup.kubelet.admit(b)
    assert env["vllm"]["NVIDIA_VISIBLE_DEVICES"] == GPUS[1]["uuid"]
    assert fresh.status.allocations == 1


async def test_a_foreign_plugin_on_the_same_gpus_blocks_registration(
    kube: KubeStandIn, kube_client: Any, tmp_path: Path
) -> None:
    directory = Path("/tmp") / f"gdpf-{os.getpid()}"
    directory.mkdir()
    try:
        (directory / "kubelet_internal_checkpoint").write_bytes(
            orjson.dumps({"Data": {"RegisteredDevices": {"nvidia.com/gpu": [GPUS[0]["uuid"]]}}})
        )
        inventory = directory / "gpus.json"
        inventory.write_bytes(orjson.dumps(GPUS))
        nvml = FakeNvml(str(inventory))
        kubelet = FakeKubelet(directory)
        await kubelet.start()
        plugin = DevicePlugin(
            PluginSettings(node=NODE, directory=str(directory), retry_interval=0.02),
            nvml=nvml,
            list_pods=kube_pod_lister(kube_client, NODE),
            record_event=kube_event_recorder(kube_client, NODE, clock=lambda: 0.0),
            kubelet_view=pod_resources_viewer(None, "nvidia.com/gpu"),
        )
        task = asyncio.create_task(plugin.run())
        await until(lambda: bool(plugin.status.problem))
        await asyncio.sleep(0.1)
        assert kubelet.registrations == [] and not plugin.status.registered
        assert "another device plugin" in plugin.status.problem
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await kubelet.stop()
    finally:
        for p in directory.iterdir():
            p.unlink()
        directory.rmdir()


async def test_a_foreign_plugin_registering_later_makes_the_plugin_step_back(setup: Setup) -> None:
    (setup.kubelet.dir / "kubelet_internal_checkpoint").write_bytes(
        orjson.dumps({"Data": {"RegisteredDevices": {"nvidia.com/gpu": [GPUS[2]["uuid"]]}}})
    )
    await until(lambda: bool(setup.plugin.status.problem))
    assert not setup.plugin.status.registered
    assert "another device plugin" in setup.plugin.status.problem
    assert not (setup.kubelet.dir / "gpuscale-gpu.sock").exists()
