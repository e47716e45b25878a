"""A node's GPUs and a pod's GPU need, with the host's CPU and memory beside them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from extender.fit import NodeGpus
from extender.objects import GpuNeed, NodeInfo, PodRequest


@dataclass(frozen=True, slots=True)
class HostGpus(NodeGpus):
    """A node's GPUs plus what its host has left for new pods (``None``: not known)."""

    milli_cpu_free: int | None = None
    memory_free: int | None = None


@dataclass(frozen=True, slots=True)
class HostNeed(GpuNeed):
    """A pod's GPU need plus what it asks of the host."""

    milli_cpu: int = 0
    memory: int = 0


def with_host(
    gpus: NodeGpus,
    need: GpuNeed,
    *,
    milli_cpu_free: int | None,
    memory_free: int | None,
    milli_cpu: int,
    memory: int,
) -> tuple[HostGpus, HostNeed]:
    """Attach host resources so that the fragmentation strategy can see CPU and memory.

    The node's derived fields are copied rather than recomputed: this runs once per node and
    request."""
    host = object.__new__(HostGpus)
    for name in ("devices", "source", "free_desc", "idle_count"):
        object.__setattr__(host, name, getattr(gpus, name))
    object.__setattr__(host, "milli_cpu_free", milli_cpu_free)
    object.__setattr__(host, "memory_free", memory_free)
    return host, HostNeed(
        count=need.count, mib_per_gpu=need.mib_per_gpu, milli_cpu=milli_cpu, memory=memory
    )


NO_GPU: Final = GpuNeed(count=0)
"""The need of a pod without GPUs: host-aware strategies still score where its CPU goes."""


def host_context(
    gpus: NodeGpus,
    need: GpuNeed | None,
    node: NodeInfo,
    requested: tuple[int, int],
    pod: PodRequest,
) -> tuple[HostGpus, HostNeed]:
    """``gpus`` and ``need`` with the node's free CPU and memory (allocatable minus
    ``requested``, unknown when the node reports no allocatable) and the pod's requests."""
    cpu, mem = requested
    return with_host(
        gpus,
        NO_GPU if need is None else need,
        milli_cpu_free=None
        if node.allocatable_milli_cpu is None
        else node.allocatable_milli_cpu - cpu,
        memory_free=None if node.allocatable_memory is None else node.allocatable_memory - mem,
        milli_cpu=pod.milli_cpu,
        memory=pod.memory,
    )
