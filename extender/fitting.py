"""Does a pod fit a node? The one composition of the filter predicates, as kube-scheduler exports
``Fits()`` for cluster-autoscaler's simulator.

The checks run in kube-scheduler's plugin order (TaintToleration, NodeAffinity,
NodeResourcesFit, then GPU memory) and the first failure is the answer. The pod's side is
compiled once (:class:`PodFit`, kube-scheduler's PreFilter); the node's is read through two small
protocols, so the extender's :class:`~extender.filtering.ClusterView` answers as it is. The
extender's per-node filter, its columnar index, the serving simulator's cluster and the
placement simulator all ask :func:`fits`. The index caches :func:`label_misfit` per node class
and answers the CPU, memory and GPU checks for many nodes at once over arrays, held to
:func:`fits` by the property tests of ``tests/extender/test_index.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from extender import taints as taint_rules
from extender.affinity import AFFINITY_REASON, RequiredAffinity, compile_required
from extender.fit import NodeGpus, gpu_fit_reason, resource_fit_reasons
from extender.objects import GpuNeed, PodRequest, Taint, Toleration

UNRESOLVABLE: Final = frozenset(
    {"node_not_found", "untolerated_taint", "node_affinity", "gpu_inventory"}
)
"""Checks whose failure preemption cannot fix (``FailedAndUnresolvableNodes``)."""


@dataclass(frozen=True, slots=True)
class Misfit:
    """Why a pod does not fit a node: the check that failed (one of
    :data:`extender.filtering.FAILURE_KINDS`) and the reason kube-scheduler reports."""

    check: str
    reason: str
    resolvable: bool
    """Preemption could make room (``FailedNodes``, not ``FailedAndUnresolvableNodes``)."""


_NO_AFFINITY: Final = Misfit("node_affinity", AFFINITY_REASON, False)


@dataclass(frozen=True, slots=True)
class PodFit:
    """What the checks need of a pod, compiled once per pod."""

    tolerations: tuple[Toleration, ...] = ()
    required: RequiredAffinity | None = None
    """The ``nodeSelector`` and required node affinity; ``None`` when they match every node."""
    milli_cpu: int = 0
    memory: int = 0
    need: GpuNeed | None = None

    @staticmethod
    def of(pod: PodRequest) -> PodFit:
        required = compile_required(pod.node_selector, pod.required)
        always = required.terms is None and not required.node_selector
        return PodFit(
            pod.tolerations, None if always else required, pod.milli_cpu, pod.memory, pod.gpu
        )


class Labelled(Protocol):
    """What the label and taint checks read of a node (or of a class of alike nodes)."""

    @property
    def name(self) -> str: ...

    @property
    def labels(self) -> Mapping[str, str]: ...

    @property
    def taints(self) -> Sequence[Taint]: ...


class NodeFacts(Labelled, Protocol):
    @property
    def allocatable_milli_cpu(self) -> int | None:
        """``None`` where unknown: not checked."""
        ...

    @property
    def allocatable_memory(self) -> int | None: ...


class Host(Protocol):
    """What is in use on a node now; asked only when a check needs it."""

    def requested(self, name: str) -> tuple[int, int]:
        """Millicores and bytes of memory already requested by the node's pods."""
        ...

    def gpus(self, name: str, now: float) -> NodeGpus | str:
        """The node's GPU state, or why it has none usable."""
        ...


def label_misfit(pod: PodFit, node: Labelled) -> Misfit | None:
    """The taint and affinity checks alone: they read only the node's labels and taints."""
    taints = node.taints
    if taints:
        reason = taint_rules.filter_reason(taints, pod.tolerations)
        if reason is not None:
            return Misfit("untolerated_taint", reason, False)
    required = pod.required
    if required is not None and not required.matches(node.labels, node.name):
        return _NO_AFFINITY
    return None


def fits(pod: PodFit, node: NodeFacts, host: Host, now: float) -> Misfit | None:
    """``None`` when ``pod`` fits ``node``, else the first check it fails."""
    if node.taints or pod.required is not None:
        misfit = label_misfit(pod, node)
        if misfit is not None:
            return misfit
    if pod.milli_cpu or pod.memory:
        cpu, mem = host.requested(node.name)
        short = resource_fit_reasons(
            pod.milli_cpu,
            pod.memory,
            allocatable_milli_cpu=node.allocatable_milli_cpu,
            allocatable_memory=node.allocatable_memory,
            requested_milli_cpu=cpu,
            requested_memory=mem,
        )
        if short:
            return Misfit("insufficient_resources", ", ".join(short), True)
    need = pod.need
    if need is not None:
        gpus = host.gpus(node.name, now)
        if isinstance(gpus, str):
            return Misfit("gpu_inventory", gpus, False)
        reason = gpu_fit_reason(gpus, need)
        if reason is not None:
            return Misfit("insufficient_gpu", reason, True)
    return None
