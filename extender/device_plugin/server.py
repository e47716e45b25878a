"""The kubelet device plugin (API ``v1beta1``, gRPC on a unix socket): the thin I/O shell.

It serves ``DevicePlugin`` on ``<directory>/<socket_name>``, registers with the kubelet's
``Registration`` service on ``<directory>/kubelet.sock``, and starts over (new socket, new
registration) when the kubelet restarts: the kubelet then deletes the plugin sockets and makes a
new ``kubelet.sock``, which :meth:`DevicePlugin.run` notices by polling both. Each ``Allocate``
reads the pods bound to this node from the API (a fresh list, not a watch, so a pod the kubelet
has just seen is in it) and the kubelet's PodResources view, and hands the decision to
:func:`extender.device_plugin.matching.decide`. A refusal fails ``Allocate`` (the kubelet then
rejects the pod with the message) and leaves a Warning Event on the pods it names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import grpc
import orjson

from extender.device_plugin.devices import (
    CHECKPOINT_FILE,
    checkpoint_holders,
    conflicts,
    plugin_devices,
)
from extender.device_plugin.matching import (
    Device,
    Grant,
    KubeletView,
    PendingPod,
    PodKey,
    Refusal,
    decide,
    device_ids,
    preferred,
    served_from_holders,
    uuid_of,
)
from extender.device_plugin.pods import PodError, pending_pod
from extender.device_plugin.proto import deviceplugin_v1beta1_pb2 as pb
from extender.device_plugin.proto import deviceplugin_v1beta1_pb2_grpc as pb_grpc
from extender.device_plugin.proto import podresources_v1_pb2 as pr
from extender.device_plugin.proto import podresources_v1_pb2_grpc as pr_grpc
from extender.objects import GPU_RESOURCE

log = logging.getLogger("gpuscale.device_plugin")

API_VERSION: Final = "v1beta1"
KUBELET_SOCKET: Final = "kubelet.sock"
MEMORY_FRACTION_ENV: Final = "GPUSCALE_GPU_MEMORY_FRACTION"
MEMORY_MIB_ENV: Final = "GPUSCALE_GPU_MEMORY_MIB"
INDICES_ENV: Final = "GPUSCALE_GPU_INDICES"
VISIBLE_DEVICES_ENV: Final = "NVIDIA_VISIBLE_DEVICES"
CONTROL_DEVICES: Final = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")


@dataclass(frozen=True, slots=True)
class PluginSettings:
    """How the plugin is reached and what it hands out."""

    node: str
    """This node's name: the pods it matches are those bound here."""
    directory: str = "/var/lib/kubelet/device-plugins"
    """The kubelet's device plugin directory (``kubelet.sock`` and the checkpoint live here)."""
    socket_name: str = "gpuscale-gpu.sock"
    resource: str = GPU_RESOURCE
    """The resource served: the extender counts GPUs by ``nvidia.com/gpu``, so this is it."""
    shares: int = 16
    """IDs advertised per GPU: how many pods the kubelet lets share one GPU (the extender's
    memory accounting is the real bound; this only has to be large enough)."""
    pod_resources_socket: str | None = "/var/lib/kubelet/pod-resources/kubelet.sock"
    """The kubelet's PodResources API, which tells apart pods that wait side by side; ``None``
    to do without it (then pods with different choices waiting together are refused)."""
    device_specs: bool = False
    """Also hand out ``/dev/nvidia<index>`` and the control devices (without the NVIDIA container
    runtime, which acts on ``NVIDIA_VISIBLE_DEVICES`` instead)."""
    cdi: bool = False
    """Also hand out CDI names ``<cdi_kind>=<uuid>`` (with a CDI spec from nvidia-ctk)."""
    cdi_kind: str = "nvidia.com/gpu"
    poll_interval: float = 1.0
    """Seconds between checks that the kubelet (socket) is the one registered with."""
    inventory_interval: float = 10.0
    """Seconds between reads of the devices (health changes go to ListAndWatch)."""
    retry_interval: float = 5.0
    """Seconds before registering again after a failure or a refused configuration."""

    def __post_init__(self) -> None:
        if self.resource != GPU_RESOURCE:
            raise ValueError(
                f"resource = {self.resource!r}: the extender counts GPUs by {GPU_RESOURCE}, so"
                " the plugin must serve that name"
            )
        if not 1 <= self.shares <= 1024:
            raise ValueError(f"shares = {self.shares}, must be between 1 and 1024")
        if "/" in self.socket_name or not self.socket_name.endswith(".sock"):
            raise ValueError(f"socket name {self.socket_name!r} must be a file name ending .sock")
        if self.socket_name == KUBELET_SOCKET:
            raise ValueError("socket name must not be the kubelet's own kubelet.sock")


class PodLister(Protocol):
    async def __call__(self) -> Sequence[Mapping[str, Any]]:
        """The pods bound to this node, as JSON objects, read now (not from a cache)."""


class EventRecorder(Protocol):
    async def __call__(self, pod: PendingPod, reason: str, message: str) -> None: ...


class KubeletViewer(Protocol):
    async def __call__(self) -> KubeletView | None: ...


@dataclass(slots=True)
class PluginStatus:
    """What the plugin is doing, for logs, probes and tests."""

    registered: bool = False
    registrations: int = 0
    problem: str = ""
    allocations: int = 0
    refusals: int = 0


class DevicePlugin(pb_grpc.DevicePluginServicer):
    """The servicer plus the registration loop; one per process."""

    def __init__(
        self,
        settings: PluginSettings,
        *,
        nvml: Any,
        list_pods: PodLister,
        record_event: EventRecorder,
        kubelet_view: KubeletViewer,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.nvml = nvml
        self._list_pods = list_pods
        self._record_event = record_event
        self._kubelet_view = kubelet_view
        self._sleep = sleep
        self.status = PluginStatus()
        self.devices: tuple[Device, ...] = ()
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()

    # -- devices ------------------------------------------------------------------------------

    def refresh_devices(self) -> bool:
        """Read the devices again; True (and ListAndWatch streams wake up) when they changed."""
        devices = plugin_devices(self.nvml, self.devices)
        if devices == self.devices:
            return False
        self.devices = devices
        self._changed.set()
        self._changed = asyncio.Event()
        return True

    def _device_list(self) -> list[pb.Device]:
        return [
            pb.Device(ID=i, health="Healthy" if d.healthy else "Unhealthy")
            for d in self.devices
            for i in device_ids(d, self.settings.shares)
        ]

    # -- DevicePlugin service -----------------------------------------------------------------

    async def GetDevicePluginOptions(
        self, request: pb.Empty, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DevicePluginOptions:
        return pb.DevicePluginOptions(
            pre_start_required=True, get_preferred_allocation_available=True
        )

    async def ListAndWatch(
        self, request: pb.Empty, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ListAndWatchResponse]:
        while True:
            changed = self._changed
            yield pb.ListAndWatchResponse(devices=self._device_list())
            await changed.wait()

    async def _inputs(self) -> tuple[list[PendingPod], dict[PodKey, int], KubeletView | None]:
        """Pods bound here, containers served per pod, the kubelet's view."""
        raw = await self._list_pods()
        pods = []
        for obj in raw:
            try:
                pod = pending_pod(obj)
            except PodError as exc:
                meta = obj.get("metadata") or {}
                log.warning(
                    "pod not readable",
                    extra={"pod": f"{meta.get('namespace')}/{meta.get('name')}", "error": str(exc)},
                )
                continue
            if pod is not None:
                pods.append(pod)
        # The kubelet writes its checkpoint after every allocation, by pod uid: the record of
        # what was served (also when interchangeable pods were started in another order than
        # the one marked here), and what a restarted plugin starts from. None yet: nothing is.
        holders = checkpoint_holders(self._checkpoint(), self.settings.resource)
        served = served_from_holders(pods, holders)
        return pods, served, await self._kubelet_view()

    async def GetPreferredAllocation(
        self, request: pb.PreferredAllocationRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PreferredAllocationResponse:
        try:
            pods, served, view = await self._inputs()
        except Exception as exc:
            log.warning("preferred allocation without pods", extra={"error": repr(exc)})
            pods, served, view = [], {}, None
        out = []
        for req in request.container_requests:
            ids = preferred(
                available=list(req.available_deviceIDs),
                must_include=list(req.must_include_deviceIDs),
                size=req.allocation_size,
                devices=self.devices,
                pods=pods,
                served=served,
                kubelet=view,
            )
            out.append(pb.ContainerPreferredAllocationResponse(deviceIDs=ids))
        return pb.PreferredAllocationResponse(container_responses=out)

    async def Allocate(
        self, request: pb.AllocateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.AllocateResponse:
        async with self._lock:  # one decision at a time, each on what the last one left
            try:
                pods, served, view = await self._inputs()
            except Exception as exc:
                self.status.refusals += 1
                message = f"cannot read the pods bound to node {self.settings.node}: {exc!r}"
                log.error("allocate failed", extra={"node": self.settings.node, "error": message})
                await context.abort(grpc.StatusCode.UNAVAILABLE, message)
            responses = []
            for req in request.container_requests:
                decision = decide(
                    node=self.settings.node,
                    resource=self.settings.resource,
                    requested=list(req.devices_ids),
                    devices=self.devices,
                    shares=self.settings.shares,
                    pods=pods,
                    served=served,
                    kubelet=view,
                )
                if isinstance(decision, Refusal):
                    await self._refuse(decision)
                    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, decision.message)
                assert isinstance(decision, Grant)
                key = decision.pod.key
                served[key] = decision.position + 1
                self.status.allocations += 1
                log.info(
                    "allocated",
                    extra={
                        "pod": f"{key[0]}/{key[1]}",
                        "container": decision.container,
                        "node": self.settings.node,
                        "gpus": [d.index for d in decision.devices],
                        "mib_per_gpu": decision.mib_per_gpu,
                        "kubelet_ids": list(req.devices_ids),
                        "interchangeable_with": [
                            f"{n}/{p}" for n, p in decision.interchangeable_with
                        ],
                    },
                )
                responses.append(container_response(decision, self.settings))
            return pb.AllocateResponse(container_responses=responses)

    async def _refuse(self, refusal: Refusal) -> None:
        self.status.refusals += 1
        log.error(
            "allocate refused",
            extra={"node": self.settings.node, "reason": refusal.kind, "error": refusal.message},
        )
        for pod in refusal.pods:
            try:
                await self._record_event(pod, "GpuAllocationFailed", refusal.message)
            except Exception as exc:
                log.warning(
                    "event not recorded",
                    extra={"pod": f"{pod.namespace}/{pod.name}", "error": repr(exc)},
                )

    async def PreStartContainer(
        self, request: pb.PreStartContainerRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PreStartContainerResponse:
        """Last check before the container starts: the GPUs it was given are still healthy."""
        healthy = {d.uuid for d in self.devices if d.healthy}
        sick = sorted({str(uuid_of(i) or i) for i in request.devices_ids} - healthy)
        if sick:
            message = f"GPU(s) {', '.join(sick)} gone or unhealthy on node {self.settings.node}"
            log.error("pre-start refused", extra={"node": self.settings.node, "error": message})
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, message)
        return pb.PreStartContainerResponse()

    # -- registration loop ---------------------------------------------------------------------

    @property
    def socket_path(self) -> str:
        return os.path.join(self.settings.directory, self.settings.socket_name)

    @property
    def kubelet_socket(self) -> str:
        return os.path.join(self.settings.directory, KUBELET_SOCKET)

    def _checkpoint(self) -> dict[str, Any]:
        """The kubelet device manager's checkpoint ({} when absent or unreadable)."""
        path = os.path.join(self.settings.directory, CHECKPOINT_FILE)
        try:
            with open(path, "rb") as f:
                data = orjson.loads(f.read())
        except FileNotFoundError:
            return {}
        except (OSError, orjson.JSONDecodeError) as exc:
            log.warning("kubelet checkpoint unreadable", extra={"error": repr(exc)})
            return {}
        return data if isinstance(data, dict) else {}

    def configuration_problems(self) -> list[str]:
        """Why registering would let two plugins hand out the same GPUs (from the kubelet's
        checkpoint); empty when there is no checkpoint yet."""
        return conflicts(self._checkpoint(), self.settings.resource, (d.uuid for d in self.devices))

    async def _register(self) -> None:
        async with grpc.aio.insecure_channel(f"unix://{self.kubelet_socket}") as channel:
            stub = pb_grpc.RegistrationStub(channel)
            await stub.Register(
                pb.RegisterRequest(
                    version=API_VERSION,
                    endpoint=self.settings.socket_name,
                    resource_name=self.settings.resource,
                    options=pb.DevicePluginOptions(
                        pre_start_required=True, get_preferred_allocation_available=True
                    ),
                ),
                timeout=10.0,
            )

    def _kubelet_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.kubelet_socket)
        except OSError:
            return None
        return (st.st_ino, st.st_ctime_ns)

    async def run(self) -> None:
        """Serve and stay registered until cancelled."""
        while True:
            self.refresh_devices()
            problems = self.configuration_problems()
            if problems:
                self.status.problem = "; ".join(problems)
                self.status.registered = False
                log.error(
                    "not registering: another device plugin hands out these GPUs",
                    extra={"node": self.settings.node, "error": self.status.problem},
                )
                await self._sleep(self.settings.retry_interval)
                continue
            kubelet = self._kubelet_identity()
            if kubelet is None:
                self.status.problem = f"no kubelet socket at {self.kubelet_socket}"
                await self._sleep(self.settings.poll_interval)
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)
            server = grpc.aio.server()
            pb_grpc.add_DevicePluginServicer_to_server(self, server)
            server.add_insecure_port(f"unix://{self.socket_path}")
            await server.start()
            try:
                try:
                    await self._register()
                except grpc.aio.AioRpcError as exc:
                    self.status.problem = f"registration failed: {exc.code().name}: {exc.details()}"
                    log.error("registration failed", extra={"error": self.status.problem})
                    await self._sleep(self.settings.retry_interval)
                    continue
                self.status.registered = True
                self.status.registrations += 1
                self.status.problem = ""
                log.info(
                    "registered with the kubelet",
                    extra={
                        "node": self.settings.node,
                        "resource": self.settings.resource,
                        "gpus": len(self.devices),
                    },
                )
                await self._watch(kubelet)
            finally:
                self.status.registered = False
                await server.stop(grace=1.0)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.socket_path)

    async def _watch(self, kubelet: tuple[int, int]) -> None:
        """Return when the kubelet restarted (new kubelet.sock, or our socket deleted) or
        another device plugin registered for these GPUs."""
        since_read = 0.0
        while True:
            await self._sleep(self.settings.poll_interval)
            if self._kubelet_identity() != kubelet or not _exists(self.socket_path):
                log.info("kubelet restarted: registering again", extra={"node": self.settings.node})
                return
            since_read += self.settings.poll_interval
            if since_read >= self.settings.inventory_interval:
                since_read = 0.0
                try:
                    if self.refresh_devices():
                        log.info(
                            "devices changed",
                            extra={
                                "node": self.settings.node,
                                "unhealthy": [d.index for d in self.devices if not d.healthy],
                            },
                        )
                except Exception as exc:
                    log.error("device read failed", extra={"error": repr(exc)})
                if self.configuration_problems():
                    # Another plugin registered for these GPUs after us (the kubelet keeps the
                    # last one per resource): stop serving; run() logs why and waits.
                    return


def container_response(grant: Grant, settings: PluginSettings) -> pb.ContainerAllocateResponse:
    """What the kubelet gives the container: the chosen GPUs by UUID, and its memory share."""
    mib = grant.mib_per_gpu
    if mib is None:
        mib = min(d.total_mib for d in grant.devices)
    envs = {
        VISIBLE_DEVICES_ENV: ",".join(d.uuid for d in grant.devices),
        INDICES_ENV: ",".join(str(d.index) for d in grant.devices),
        MEMORY_MIB_ENV: str(mib),
        MEMORY_FRACTION_ENV: f"{grant.fraction:.4f}",
    }
    specs = []
    if settings.device_specs:
        paths = [f"/dev/nvidia{d.index}" for d in grant.devices]
        paths += [p for p in CONTROL_DEVICES if os.path.exists(p)]
        specs = [pb.DeviceSpec(container_path=p, host_path=p, permissions="rw") for p in paths]
    cdi = (
        [pb.CDIDevice(name=f"{settings.cdi_kind}={d.uuid}") for d in grant.devices]
        if settings.cdi
        else []
    )
    return pb.ContainerAllocateResponse(envs=envs, devices=specs, cdi_devices=cdi)


def _exists(path: str) -> bool:
    """A stat of a local socket: no I/O worth a thread."""
    return os.path.exists(path)


# -- the real dependencies -------------------------------------------------------------------


def pod_resources_viewer(socket: str | None, resource: str) -> KubeletViewer:
    """The kubelet's PodResources ``List`` as a :class:`KubeletView` (``None`` when the socket
    is not configured or does not answer within two seconds: the matching then goes without)."""

    async def view() -> KubeletView | None:
        if socket is None or not _exists(socket):
            return None
        try:
            async with grpc.aio.insecure_channel(f"unix://{socket}") as channel:
                resp = await pr_grpc.PodResourcesListerStub(channel).List(
                    pr.ListPodResourcesRequest(), timeout=2.0
                )
        except grpc.aio.AioRpcError as exc:
            log.warning("PodResources unavailable", extra={"error": f"{exc.code().name}"})
            return None
        holding: dict[PodKey, frozenset[str]] = {}
        for p in resp.pod_resources:
            holding[(p.namespace, p.name)] = frozenset(
                c.name
                for c in p.containers
                if any(d.resource_name == resource and d.device_ids for d in c.devices)
            )
        return KubeletView(holding)

    return view


def kube_pod_lister(api_client: Any, node: str) -> PodLister:
    """Pods with ``spec.nodeName=<node>`` from the API server (a quorum read)."""
    from kubernetes.aio import client

    core = client.CoreV1Api(api_client)

    async def pods() -> Sequence[Mapping[str, Any]]:
        resp = await core.list_pod_for_all_namespaces_without_preload_content(
            field_selector=f"spec.nodeName={node}", _request_timeout=10
        )
        try:
            body = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"listing pods: HTTP {resp.status}: {body[:200]!r}")
        finally:
            resp.release()
        data = orjson.loads(body)
        items = data.get("items") if isinstance(data, dict) else None
        return [i for i in items or [] if isinstance(i, dict)]

    return pods


def kube_event_recorder(api_client: Any, node: str, clock: Callable[[], float]) -> EventRecorder:
    """Warning Events on pods through ``kubernetes.aio`` (core/v1, as the kubelet writes them)."""
    import time as _time

    from kubernetes.aio import client

    core = client.CoreV1Api(api_client)

    async def record(pod: PendingPod, reason: str, message: str) -> None:
        now = clock()
        stamp = _time.strftime("%Y-%m-%dT%H:%M:%SZ", _time.gmtime(now))
        body: Any = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{pod.name}.{int(now * 1e9):x}", "namespace": pod.namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod.name,
                "namespace": pod.namespace,
                "uid": pod.uid,
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning",
            "source": {"component": "gpuscale-device-plugin", "host": node},
            "reportingComponent": "gpuscale.io/device-plugin",
            "reportingInstance": node,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        resp = await core.create_namespaced_event_without_preload_content(
            pod.namespace, body, _request_timeout=10
        )
        try:
            if resp.status >= 300:
                raise RuntimeError(f"HTTP {resp.status}")
        finally:
            resp.release()

    return record


class PluginCollector:
    """The plugin's :class:`PluginStatus` as Prometheus metrics, read at scrape time."""

    def __init__(self, plugin: DevicePlugin) -> None:
        self.plugin = plugin

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        st = self.plugin.status
        yield GaugeMetricFamily(
            "gpuscale_device_plugin_registered",
            "1 while registered with the kubelet; 0 while not (see the log for why).",
            value=1.0 if st.registered else 0.0,
        )
        yield CounterMetricFamily(
            "gpuscale_device_plugin_registrations",
            "Registrations with the kubelet (one more after each kubelet restart).",
            value=st.registrations,
        )
        yield CounterMetricFamily(
            "gpuscale_device_plugin_allocations",
            "Containers handed the GPUs of their pod's gpuscale.io/gpu-indices.",
            value=st.allocations,
        )
        yield CounterMetricFamily(
            "gpuscale_device_plugin_refusals",
            "Allocate calls refused (no or ambiguous pod, GPUs gone, API unreachable).",
            value=st.refusals,
        )
        yield GaugeMetricFamily(
            "gpuscale_device_plugin_unhealthy_gpus",
            "GPUs advertised as unhealthy.",
            value=sum(not d.healthy for d in self.plugin.devices),
        )
