"""The openb replay in DRA form: every GPU pod claims its GPUs, and the devices inside the chosen
node are the ones kube-scheduler's DRA allocator gives.

With Dynamic Resource Allocation a node scorer (the extender) chooses only the node; the DRA
plugin's allocator then takes, per request, the first published device with room
(:func:`extender.dra.allocator_choice`: slice and device order, no scoring). Two contenders
model that, beside the extender placing devices itself (the replay's usual strategies):

- ``dra-upstream``: upstream today, no GPU-aware scoring at all: among the nodes whose devices
  can hold the claim, kube-scheduler's default LeastAllocated score (CPU and memory) decides;
- ``dra-<strategy>`` (``dra-fragmentation``, ``dra-binpack``, ...): the extender's node score,
  computed for the devices it would choose, with the allocator's devices inside the node.

Shares are consumable capacity (``capacity.requests.memory`` on a device that allows multiple
allocations); whole GPUs ask for an idle device, as the device plugin path does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from extender.dra import DraDevice, DraNeed, allocator_choice
from extender.fit import NodeGpus
from extender.objects import GpuNeed
from extender.scoring import Strategy

PREFIX: Final = "dra-"
UPSTREAM: Final = "dra-upstream"
DRIVER: Final = "gpu.nvidia.com"


def dra_names(strategies: Sequence[str]) -> list[str]:
    """The DRA-form contenders the replay knows, given the extender's strategy names."""
    return [UPSTREAM, *(PREFIX + s for s in strategies)]


@dataclass(frozen=True, slots=True)
class AllocatorDevices:
    """A node strategy whose devices are the DRA allocator's; ``inner`` ``None`` scores every
    node alike (``upstream``: the replay orders nodes by LeastAllocated instead)."""

    inner: Strategy | None

    @property
    def name(self) -> str:
        return UPSTREAM if self.inner is None else PREFIX + self.inner.name

    @property
    def upstream(self) -> bool:
        return self.inner is None

    @property
    def host_aware(self) -> bool:
        return bool(getattr(self.inner, "host_aware", False))

    def choose(self, gpus: NodeGpus, need: GpuNeed) -> tuple[int, ...] | None:
        if need.count == 0:
            return ()
        devices = [
            DraDevice(DRIVER, "node", f"gpu-{d.index}", "node", {}, d.total_mib, shared=True)
            for d in gpus.devices
        ]
        free = {dev.key: (d.free_mib, d.idle) for dev, d in zip(devices, gpus.devices, strict=True)}
        claim = DraNeed(GpuNeed(need.count, need.mib_per_gpu), ((),) * need.count)
        keys = allocator_choice(claim, devices, free)
        if keys is None:
            return None
        index = {dev.key: d.index for dev, d in zip(devices, gpus.devices, strict=True)}
        return tuple(sorted(index[k] for k in keys))

    def score(self, gpus: NodeGpus, need: GpuNeed, chosen: tuple[int, ...]) -> float:
        """The node's score as the extender sends it: for the devices it would choose (it
        cannot know the allocator's)."""
        if self.inner is None:
            return 0.0
        own = self.inner.choose(gpus, need)
        return self.inner.score(gpus, need, chosen if own is None else own)
