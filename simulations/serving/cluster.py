"""Nodes with GPUs, background pods, and scheduling through the extender's pure code.

Each device keeps the memory taken by the pods on it and how many pods hold it; the extender's
:class:`extender.fit.NodeGpus` is built from that (the ``accounting`` source). The extender's own
filter (:func:`extender.fitting.fits`: taints, node selector and required affinity, GPU fit) and
scoring strategy (``binpack``/``spread``/``fragmentation`` choose the devices and score them;
preferred affinity and ``PreferNoSchedule`` taints are combined and normalised to 0..10 by
:func:`extender.scoring.combine`) pick the node, as ``/filter`` and ``/prioritize`` would.
kube-scheduler's own plugins are left out; ties are broken by the run's seeded random generator,
as ``selectHost`` breaks them at random.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from extender.affinity import (
    PreferredAffinity,
    RequiredAffinity,
    compile_preferred,
    compile_required,
)
from extender.fit import DeviceState, NodeGpus
from extender.fitting import PodFit, fits
from extender.objects import GpuNeed, Taint, Toleration
from extender.scoring import combine, get_strategy
from extender.taints import count_intolerable_prefer_no_schedule


@dataclass(slots=True)
class Device:
    index: int
    total_mib: int
    used_mib: int = 0
    holders: int = 0


@dataclass(slots=True)
class Node:
    name: str
    pool: str
    model: str
    devices: list[Device]
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    has_image: bool = False
    """Whether the service's image has been pulled here already (later pulls are fast)."""

    # A node is its own host for :func:`extender.fitting.fits`; CPU and memory are not simulated.
    @property
    def allocatable_milli_cpu(self) -> int | None:
        return None

    @property
    def allocatable_memory(self) -> int | None:
        return None

    def requested(self, name: str) -> tuple[int, int]:
        return 0, 0

    def gpus(self, name: str = "", now: float = 0.0) -> NodeGpus:
        return NodeGpus(
            tuple(
                DeviceState(d.index, d.total_mib, max(0, d.total_mib - d.used_mib), d.holders == 0)
                for d in self.devices
            ),
            "accounting",
        )


@dataclass(frozen=True, slots=True)
class PodSpec:
    """What scheduling needs of a pod: its GPU need and where it may go."""

    gpu: GpuNeed
    tolerations: tuple[Toleration, ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    required: RequiredAffinity = field(default_factory=lambda: compile_required({}, None))
    preferred: PreferredAffinity = field(default_factory=lambda: compile_preferred(()))


@dataclass(frozen=True, slots=True)
class Placement:
    node: Node
    indices: tuple[int, ...]


class Cluster:
    """The nodes and what runs on their GPUs."""

    def __init__(self, nodes: Sequence[Node], scoring: str = "binpack") -> None:
        self.nodes = list(nodes)
        self.strategy = get_strategy(scoring)

    @property
    def gpu_count(self) -> int:
        return sum(len(n.devices) for n in self.nodes)

    def filter(self, pod: PodSpec) -> tuple[list[tuple[Node, NodeGpus]], dict[str, str]]:
        """Nodes that pass (with their GPU state) and the reason each other node failed."""
        passed: list[tuple[Node, NodeGpus]] = []
        failed: dict[str, str] = {}
        fit = PodFit(pod.tolerations, pod.required, need=pod.gpu)
        for node in self.nodes:
            misfit = fits(fit, node, node, 0.0)
            if misfit is None:
                passed.append((node, node.gpus()))
            else:
                failed[node.name] = misfit.reason
        return passed, failed

    def schedule(self, pod: PodSpec, rng: np.random.Generator) -> Placement | dict[str, str]:
        """Pick a node and devices for ``pod`` and take them; else the reasons per node."""
        passed, failed = self.filter(pod)
        if not passed:
            return failed
        strategy = self.strategy
        chosen: list[tuple[int, ...]] = []
        gpu_scores: list[float] = []
        for _node, gpus in passed:
            idx = strategy.choose(gpus, pod.gpu)
            assert idx is not None  # the node passed the fit filter
            chosen.append(idx)
            gpu_scores.append(strategy.score(gpus, pod.gpu, idx))
        scores = combine(
            gpu_scores,
            [pod.preferred.score(n.labels, n.name) for n, _ in passed],
            [count_intolerable_prefer_no_schedule(n.taints, pod.tolerations) for n, _ in passed],
        )
        top = max(scores)
        best = [k for k, s in enumerate(scores) if s == top]
        k = best[int(rng.integers(len(best)))] if len(best) > 1 else best[0]
        node = passed[k][0]
        placement = Placement(node, chosen[k])
        self.take(placement, pod.gpu)
        return placement

    def take(self, placement: Placement, need: GpuNeed) -> None:
        for i in placement.indices:
            d = placement.node.devices[i]
            d.used_mib += d.total_mib if need.mib_per_gpu is None else need.mib_per_gpu
            d.holders += 1

    def release(self, placement: Placement, need: GpuNeed) -> None:
        for i in placement.indices:
            d = placement.node.devices[i]
            d.used_mib -= d.total_mib if need.mib_per_gpu is None else need.mib_per_gpu
            d.holders -= 1

    def memory_used_fraction(self) -> float:
        total = sum(d.total_mib for n in self.nodes for d in n.devices)
        used = sum(min(d.used_mib, d.total_mib) for n in self.nodes for d in n.devices)
        return used / total if total else 0.0
