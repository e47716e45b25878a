"""Fake GPU nodes for the e2e: kwok makes them Ready, gpuscale's node-agent code publishes their
per-GPU memory (through an NVML stand-in, with the node agent's ServiceAccount token)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extender import node_agent
from extender.objects import (
    GFD_COUNT_LABEL,
    GFD_MEMORY_LABEL,
    GFD_PRODUCT_LABEL,
    GPU_INDICES_ANNOTATION,
    GPU_RESOURCE,
)
from tests.e2e.cluster import KWOK_NODE_ANNOTATION
from tests.extender.test_agent_and_app import FakeNvml
from tests.support.kube_standin import make_api_client

MIB = 2**20


class ModelNvml(FakeNvml):
    """The NVML stand-in of the node-agent tests, reporting a product name of our choice."""

    def __init__(self, model: str, devices: list[tuple[int, int]]) -> None:
        super().__init__(devices)
        self.model = model

    def nvmlDeviceGetName(self, h: int) -> str:
        return self.model


@dataclass(frozen=True)
class GpuNode:
    """A kwok node with ``len(used_mib)`` GPUs of ``total_mib`` each.

    The device plugin is taken to run with time-slicing (``replicas`` per GPU, as the GPU
    operator labels ``nvidia.com/gpu.replicas``), so ``nvidia.com/gpu`` counts shares and several
    pods may share a device, each within the memory it declares.
    """

    name: str
    product: str
    total_mib: int
    used_mib: tuple[int, ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: Sequence[Mapping[str, str]] = ()
    replicas: int = 4

    @property
    def gpus(self) -> int:
        return len(self.used_mib)

    def free_mib(self, index: int) -> int:
        return self.total_mib - self.used_mib[index]

    def manifest(self) -> dict[str, Any]:
        capacity = {
            "cpu": "64",
            "memory": "512Gi",
            "pods": "110",
            GPU_RESOURCE: str(self.gpus * self.replicas),
        }
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "annotations": {KWOK_NODE_ANNOTATION: "fake"},
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "type": "kwok",
                    "nvidia.com/gpu.present": "true",
                    GFD_PRODUCT_LABEL: self.product,
                    GFD_COUNT_LABEL: str(self.gpus),
                    GFD_MEMORY_LABEL: str(self.total_mib),
                    "nvidia.com/gpu.replicas": str(self.replicas),
                    **self.labels,
                },
            },
            "spec": {"taints": list(self.taints)},
            "status": {"capacity": capacity, "allocatable": capacity},
        }

    def nvml(self) -> ModelNvml:
        return ModelNvml(
            self.product, [(self.total_mib * MIB, used * MIB) for used in self.used_mib]
        )


def gpu_indices(pod: Any) -> list[int]:
    """The devices the extender chose for a bound pod (``gpuscale.io/gpu-indices``: "0,3")."""
    text = (pod.metadata.annotations or {})[GPU_INDICES_ANNOTATION]
    return [int(i) for i in text.split(",")]


@contextlib.asynccontextmanager
async def node_agents(
    nodes: Sequence[GpuNode], kubeconfig: Path, *, interval: float = 5.0
) -> AsyncIterator[None]:
    """Run ``gpuscale node-agent``'s loop for each node, as the node agent's ServiceAccount."""
    api = await make_api_client(kubeconfig)
    patch = node_agent.kube_patcher(api)
    tasks = [
        asyncio.create_task(
            node_agent.run(n.nvml(), n.name, patch, interval=interval, clock=time.time),
            name=f"node-agent {n.name}",
        )
        for n in nodes
    ]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await api.close()
