"""Does a pod fit a node? The one composition of the filter predicates, as kube-scheduler exports
``Fits()`` for cluster-autoscaler's simulator.

The checks run in kube-scheduler's plugin order (TaintToleration, NodeAffinity,
NodeResourcesFit, then GPU memory) and the first failure is the answer. The extender's per-node
filter, its columnar index (per node class for the label and taint checks), the serving
simulator's cluster and the placement simulator all ask :func:`fits`; the index answers the
CPU, memory and GPU checks for many nodes at once over arrays and is held to :func:`fits` by
the property tests of ``tests/extender/test_index.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from extender import taints as taint_rules
from extender.affinity import AFFINITY_REASON, RequiredAffinity
from extender.fit import NodeGpus, gpu_fit_reason, resource_fit_reasons
from extender.model import GpuNeed, Taint, Toleration

UNRESOLVABLE: Final = frozenset(
    {"node_not_found", "untolerated_taint", "node_affinity", "gpu_inventory"}
)
"""Checks whose failure preemption cannot fix (``FailedAndUnresolvableNodes``)."""

NO_RESOURCES: Final = (None, None)


@dataclass(frozen=True, slots=True)
class Misfit:
    """Why a pod does not fit a node: the check that failed (one of
    :data:`extender.filtering.FAILURE_KINDS`) and the reason kube-scheduler reports."""

    check: str
    reason: str

    @property
    def resolvable(self) -> bool:
        """Preemption could make room (``FailedNodes``, not ``FailedAndUnresolvableNodes``)."""
        return self.check not in UNRESOLVABLE


def fits(
    *,
    name: str,
    labels: Mapping[str, str],
    taints: Sequence[Taint],
    tolerations: Sequence[Toleration],
    required: RequiredAffinity | None = None,
    milli_cpu: int = 0,
    memory: int = 0,
    allocatable: tuple[int | None, int | None] = NO_RESOURCES,
    requested: tuple[int, int] | Callable[[], tuple[int, int]] = (0, 0),
    need: GpuNeed | None = None,
    gpus: NodeGpus | str | Callable[[], NodeGpus | str] = "",
) -> Misfit | None:
    """``None`` when the pod fits the node, else the first check it fails.

    ``required`` is the pod's compiled ``nodeSelector`` and required affinity (``None``: any
    node). ``allocatable`` is the node's (milli-CPU, bytes), ``None`` where unknown (not
    checked); ``requested`` what its pods request already. ``gpus`` is the node's GPU state or
    why it has none usable (only read for a pod with a GPU ``need``). ``requested`` and ``gpus``
    may be given as functions, called only when their check is reached.
    """
    if taints:
        reason = taint_rules.filter_reason(taints, tolerations)
        if reason is not None:
            return Misfit("untolerated_taint", reason)
    if required is not None and not required.matches(labels, name):
        return Misfit("node_affinity", AFFINITY_REASON)
    if milli_cpu or memory:
        cpu, mem = requested() if callable(requested) else requested
        short = resource_fit_reasons(
            milli_cpu,
            memory,
            allocatable_milli_cpu=allocatable[0],
            allocatable_memory=allocatable[1],
            requested_milli_cpu=cpu,
            requested_memory=mem,
        )
        if short:
            return Misfit("insufficient_resources", ", ".join(short))
    if need is not None:
        state = gpus() if callable(gpus) else gpus
        if isinstance(state, str):
            return Misfit("gpu_inventory", state)
        reason = gpu_fit_reason(state, need)
        if reason is not None:
            return Misfit("insufficient_gpu", reason)
    return None
