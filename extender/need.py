"""What a pod asks for: CPU, memory and its GPU need, counted the way Kubernetes counts requests.

A container's request for a resource is its ``requests`` entry, else its ``limits`` entry (the API
server defaults requests to limits, and extended resources must have them equal). The pod total is
``max(sum over app containers + sidecars, largest init container + sidecars started before it)``
plus the pod overhead, as ``k8s.io/component-helpers/resource.PodRequests`` computes it.

GPU need (DESIGN §4): the count is ``nvidia.com/gpu``; memory per GPU is the extended resource
``gpuscale.io/gpu-memory`` (or, when no container declares it, the pod annotation of the same
name). Memory without a count means one GPU. A count without memory means whole idle GPUs.
See :func:`extender.quantity.gpu_memory_mib` for the unit rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from extender.objects import GPU_MEMORY_RESOURCE, GPU_RESOURCE, GpuNeed
from extender.quantity import QuantityError, byte_count, count, gpu_memory_mib, milli_cpu

_CONVERTERS: Final[dict[str, Callable[[object], int]]] = {
    "cpu": milli_cpu,
    "memory": byte_count,
    GPU_RESOURCE: count,
    GPU_MEMORY_RESOURCE: gpu_memory_mib,
}


class NeedError(ValueError):
    """A pod's resources cannot be read; the message names the field."""


@dataclass(frozen=True, slots=True)
class ContainerResources:
    """Raw ``resources`` of one container. ``restartable`` marks a sidecar init container."""

    name: str
    requests: Mapping[str, object]
    limits: Mapping[str, object]
    restartable: bool = False


@dataclass(frozen=True, slots=True)
class PodNeed:
    milli_cpu: int
    memory: int
    gpu: GpuNeed | None


def _container_amount(c: ContainerResources, resource: str, path: str) -> int:
    raw = c.requests.get(resource)
    where = "requests"
    if raw is None:
        raw = c.limits.get(resource)
        where = "limits"
    if raw is None:
        return 0
    try:
        return _CONVERTERS[resource](raw)
    except QuantityError as exc:
        raise NeedError(f"{path}.resources.{where}[{resource}]: {exc}") from None


def pod_total(
    resource: str,
    containers: Sequence[ContainerResources],
    init_containers: Sequence[ContainerResources] = (),
    overhead: Mapping[str, object] | None = None,
) -> int:
    """The pod's effective request for ``resource`` (one of cpu, memory, GPU count, GPU memory)."""
    total = 0
    for i, c in enumerate(containers):
        total += _container_amount(c, resource, f"spec.containers[{i}]")
    sidecars = 0
    init_peak = 0
    for i, c in enumerate(init_containers):
        amount = _container_amount(c, resource, f"spec.initContainers[{i}]")
        if c.restartable:
            total += amount
            sidecars += amount
            init_peak = max(init_peak, sidecars)
        else:
            init_peak = max(init_peak, amount + sidecars)
    total = max(total, init_peak)
    if overhead and resource in overhead:
        try:
            total += _CONVERTERS[resource](overhead[resource])
        except QuantityError as exc:
            raise NeedError(f"spec.overhead[{resource}]: {exc}") from None
    return total


def pod_need(
    containers: Sequence[ContainerResources],
    init_containers: Sequence[ContainerResources] = (),
    overhead: Mapping[str, object] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> PodNeed:
    """CPU, memory and GPU need of a pod; raises :class:`NeedError` naming the bad field."""
    gpus = pod_total(GPU_RESOURCE, containers, init_containers)
    mib = pod_total(GPU_MEMORY_RESOURCE, containers, init_containers)
    declared = any(
        GPU_MEMORY_RESOURCE in c.requests or GPU_MEMORY_RESOURCE in c.limits
        for c in (*containers, *init_containers)
    )
    if not declared and annotations and GPU_MEMORY_RESOURCE in annotations:
        try:
            mib = gpu_memory_mib(annotations[GPU_MEMORY_RESOURCE])
        except QuantityError as exc:
            raise NeedError(f"metadata.annotations[{GPU_MEMORY_RESOURCE}]: {exc}") from None
    if gpus < 0:
        raise NeedError(f"{GPU_RESOURCE}: GPU count cannot be negative ({gpus})")
    need: GpuNeed | None
    if mib > 0:
        need = GpuNeed(count=max(gpus, 1), mib_per_gpu=mib)
    elif gpus > 0:
        need = GpuNeed(count=gpus, mib_per_gpu=None)
    else:
        need = None
    return PodNeed(
        milli_cpu=pod_total("cpu", containers, init_containers, overhead),
        memory=pod_total("memory", containers, init_containers, overhead),
        gpu=need,
    )
