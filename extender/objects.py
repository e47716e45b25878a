"""The scheduler extender's view of nodes and pods, as plain frozen data.

Only the fields that placement needs are kept, so a 5,000-node cluster fits in little memory and a
full-mode request decodes quickly. :mod:`extender.decode` builds these from Kubernetes JSON.
Memory on GPUs is in MiB throughout; CPU in millicores; host memory in bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal

GPU_RESOURCE: Final = "nvidia.com/gpu"
GPU_MEMORY_RESOURCE: Final = "gpuscale.io/gpu-memory"
"""Extended resource (and pod annotation) with the memory a pod needs on each of its GPUs."""
GPUS_ANNOTATION: Final = "gpuscale.io/gpus"
"""Node annotation written by ``gpuscale node-agent``: JSON list of per-device readings."""
GPU_INDICES_ANNOTATION: Final = "gpuscale.io/gpu-indices"
"""Pod annotation written at bind time: comma-separated device indices, e.g. ``"0,3"``."""
SCORING_ANNOTATION: Final = "gpuscale.io/scoring"
"""Pod annotation that picks the scoring strategy for this pod (overrides ``--scoring``)."""
GFD_COUNT_LABEL: Final = "nvidia.com/gpu.count"
GFD_MEMORY_LABEL: Final = "nvidia.com/gpu.memory"
GFD_PRODUCT_LABEL: Final = "nvidia.com/gpu.product"

TaintEffect = Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]
EMPTY_LABELS: Final[Mapping[str, str]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Taint:
    key: str
    value: str = ""
    effect: str = "NoSchedule"
    """Kept as a plain string: an unknown effect from a newer server must not break decoding."""


@dataclass(frozen=True, slots=True)
class Toleration:
    """A pod toleration; empty ``operator`` means ``Equal``, empty ``effect`` means every effect."""

    key: str = ""
    operator: str = ""
    value: str = ""
    effect: str = ""


@dataclass(frozen=True, slots=True)
class NodeSelectorRequirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NodeSelectorTerm:
    """Expressions and fields are ANDed; a term with neither matches nothing."""

    match_expressions: tuple[NodeSelectorRequirement, ...] = ()
    match_fields: tuple[NodeSelectorRequirement, ...] = ()


@dataclass(frozen=True, slots=True)
class NodeSelector:
    """Required node affinity: terms are ORed; an empty term list matches nothing."""

    terms: tuple[NodeSelectorTerm, ...] = ()


@dataclass(frozen=True, slots=True)
class PreferredTerm:
    weight: int
    preference: NodeSelectorTerm


@dataclass(frozen=True, slots=True)
class GpuDevice:
    """One GPU as measured (NVML, DCGM) or as declared (GFD labels)."""

    index: int
    uuid: str
    model: str
    total_mib: int
    used_mib: int

    @property
    def free_mib(self) -> int:
        return max(0, self.total_mib - self.used_mib)


@dataclass(frozen=True, slots=True)
class GpuReport:
    """A node's devices as measured at ``time`` (Unix seconds) by ``source``."""

    devices: tuple[GpuDevice, ...]
    time: float
    source: Literal["annotation", "dcgm"]


@dataclass(frozen=True, slots=True)
class GfdInfo:
    """Static GPU Feature Discovery labels: ``count`` devices of ``memory_mib`` each."""

    count: int
    memory_mib: int
    product: str = ""


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What the extender needs of a Node.

    ``gpu_report`` is the parsed ``gpuscale.io/gpus`` annotation (``None`` when absent);
    ``gpu_report_error`` says why the annotation was unusable, so the node fails with that reason
    instead of the request failing.
    """

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    allocatable_milli_cpu: int | None = None
    allocatable_memory: int | None = None
    gpu_report: GpuReport | None = None
    gpu_report_error: str | None = None
    gfd: GfdInfo | None = None


@dataclass(frozen=True, slots=True)
class GpuNeed:
    """``count`` GPUs, each with ``mib_per_gpu`` free; ``None`` means whole, otherwise idle GPUs."""

    count: int
    mib_per_gpu: int | None = None

    def describe(self) -> str:
        if self.mib_per_gpu is None:
            return f"{self.count} whole GPU(s)"
        return f"{self.count}×{self.mib_per_gpu} MiB"


@dataclass(frozen=True, slots=True)
class PodClaim:
    """One ``spec.resourceClaims[]`` entry: the ResourceClaim it names, or the template one is
    made from (``claim`` is then the generated claim's name from ``status.resourceClaimStatuses``,
    empty until the controller has made it)."""

    name: str
    claim: str = ""
    template: str = ""


@dataclass(frozen=True, slots=True)
class PodRequest:
    """What the extender needs of a Pod.

    ``gpu`` is ``None`` for a pod that asks for no GPU. ``node_name`` and ``gpu_indices`` are set
    for pods already bound (used for accounting); ``phase`` lets finished pods release memory.
    """

    namespace: str
    name: str
    uid: str = ""
    tolerations: tuple[Toleration, ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    required: NodeSelector | None = None
    preferred: tuple[PreferredTerm, ...] = ()
    milli_cpu: int = 0
    memory: int = 0
    gpu: GpuNeed | None = None
    scoring: str | None = None
    node_name: str = ""
    gpu_indices: tuple[int, ...] | None = None
    phase: str = ""
    claims: tuple[PodClaim, ...] = ()
    """DRA claims (``spec.resourceClaims``); their GPU need is resolved against the cluster's
    claims, templates and classes (:meth:`extender.cluster_state.ClusterState.dra_need`)."""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def terminated(self) -> bool:
        return self.phase in ("Succeeded", "Failed")
