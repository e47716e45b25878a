"""What the cluster is expected to run: pod shapes weighted by how often they arrive."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from extender.objects import PodRequest

MILLI: Final = 1000
MAX_SHAPES: Final = 128
"""Shapes kept in a workload (most frequent first); rarer ones are dropped, weights rescaled."""
COVERAGE: Final = 0.99
"""A workload keeps the most frequent shapes until they cover this share of GPU pods."""
RELEARN_TOLERANCE: Final = 0.05
"""A re-estimated workload replaces the registered one only when some shape's weight moved by
more than this (or the shapes changed)."""


@dataclass(frozen=True, slots=True)
class Shape:
    """One pod shape of the workload.

    Per-GPU need is ``share_milli`` thousandths of each device (trace style: the same share of any
    card), else ``mib_per_gpu`` MiB; with neither, the pod needs whole idle GPUs. ``milli_cpu``
    and ``memory`` (bytes, or whatever unit the node's free memory is given in) are what the pod
    needs of the host besides its GPUs.
    """

    weight: float
    count: int
    share_milli: int | None = None
    mib_per_gpu: int | None = None
    milli_cpu: int = 0
    memory: int = 0

    @property
    def gpu_part(self) -> GpuPart:
        return (self.count, self.share_milli, self.mib_per_gpu)


GpuPart = tuple[int, int | None, int | None]
"""``(gpu count, share_milli, mib_per_gpu)`` of a shape."""
ShapeKey = tuple[int, int | None, int | None, int, int]
"""``(gpu count, share_milli, mib_per_gpu, milli_cpu, memory)``."""


def per_gpu_need(total_mib: int, *, share_milli: int | None, mib_per_gpu: int | None) -> int | None:
    """MiB one GPU of a pod takes on a device of ``total_mib``; ``None`` means the whole, idle
    device. A share is rounded down, so that shares summing to 1000 fill a device exactly, and a
    share of 1000 is a whole device."""
    if share_milli is not None:
        return None if share_milli >= MILLI else share_milli * total_mib // MILLI
    return mib_per_gpu


@dataclass(frozen=True, slots=True)
class Workload:
    """The pod shapes expected to arrive, most frequent first; weights sum to 1 (or no shapes).

    ``parts`` lists the distinct GPU parts of the shapes; the fragmentation maths counts GPU
    room per part and host room per shape.
    """

    shapes: tuple[Shape, ...] = ()
    parts: tuple[GpuPart, ...] = field(init=False, repr=False, compare=False)
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "parts", tuple(dict.fromkeys(s.gpu_part for s in self.shapes)))
        object.__setattr__(self, "_hash", hash(self.shapes))

    def __hash__(self) -> int:
        """Cached: workloads key the memo tables, so they are hashed on every lookup."""
        return self._hash

    def similar(self, other: Workload, tolerance: float = RELEARN_TOLERANCE) -> bool:
        """Same shapes with weights within ``tolerance``: switching to ``other`` would only
        empty the memo tables (a cold prioritize costs ~8x a warm one) for no better choice."""
        mine = {_key(s): s.weight for s in self.shapes}
        theirs = {_key(s): s.weight for s in other.shapes}
        return mine.keys() == theirs.keys() and all(
            abs(w - theirs[k]) <= tolerance for k, w in mine.items()
        )

    @classmethod
    def estimate(
        cls,
        observed: Iterable[ShapeKey],
        *,
        max_shapes: int = MAX_SHAPES,
        coverage: float = COVERAGE,
    ) -> Workload:
        """Estimate the workload from observed pods.

        Pods with no GPU are left out: no GPU placement changes what they can use. The most
        frequent shapes are kept until they cover ``coverage`` of the GPU pods (at most
        ``max_shapes``); their weights are rescaled to sum to 1.
        """
        counts = Counter(s for s in observed if s[0] > 0)
        total = sum(counts.values())
        kept: list[tuple[ShapeKey, int]] = []
        covered = 0
        for key, n in sorted(counts.items(), key=lambda item: (-item[1], repr(item[0]))):
            if len(kept) >= max_shapes or covered >= coverage * total:
                break
            kept.append((key, n))
            covered += n
        return cls(
            shapes=tuple(
                Shape(
                    weight=n / covered,
                    count=c,
                    share_milli=s,
                    mib_per_gpu=m,
                    milli_cpu=cpu,
                    memory=mem,
                )
                for (c, s, m, cpu, mem), n in kept
            )
        )

    @classmethod
    def from_pods(
        cls, pods: Iterable[PodRequest], *, max_shapes: int = MAX_SHAPES, coverage: float = COVERAGE
    ) -> Workload:
        """The workload of pods seen by the extender (GPU count, MiB per GPU, CPU, memory)."""
        return cls.estimate(
            (
                (p.gpu.count, None, p.gpu.mib_per_gpu, p.milli_cpu, p.memory)
                for p in pods
                if p.gpu is not None
            ),
            max_shapes=max_shapes,
            coverage=coverage,
        )


def _key(shape: Shape) -> ShapeKey:
    return (shape.count, shape.share_milli, shape.mib_per_gpu, shape.milli_cpu, shape.memory)


DEFAULT_WORKLOAD: Final = Workload(shapes=(Shape(weight=1.0, count=1),))
"""Before any pod is seen: whole single GPUs, so a partly used GPU's free memory is the waste."""
