"""Fragmentation-aware placement: put a pod where it strands the least GPU capacity.

The idea is that of fragmentation gradient descent (Weng et al., "Beware of Fragmentation",
USENIX ATC 2023), written from the paper's description and extended:

* The *workload* is the distribution of pod shapes the cluster sees (GPU count, per-GPU need,
  CPU, memory), each weighted by how often it arrives (:meth:`Workload.estimate`).
* A node's *expected stranded capacity* (:func:`unusable`) is its free GPU capacity that the
  workload could not use, in GPU equivalents (free MiB / device MiB, so half of a 16 GiB card and
  half of an 80 GiB card count the same, as in the paper's GPU-share accounting). Two views are
  averaged: the paper's "does the next pod of this shape fit, and which devices are too small for
  it", and "how many more pods of this shape fit before devices, idle GPUs, CPU or memory run
  out", which sees a host's CPU running out before its GPUs do.
* A pod goes where its placement (node and devices) raises that the least. Devices are chosen
  greedily, one GPU at a time; ties go to the tighter fit. Pods without GPUs are scored too:
  their CPU and memory can strand a node's free GPUs.

The extender hands host-aware strategies the node's free CPU and memory and the pod's requests
(:func:`host_context`); without them only the GPUs count. Results are memoised on node state,
which many nodes share and which changes only when a pod lands or leaves.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final

import numpy as np
import numpy.typing as npt

from extender.fit import DeviceState, NodeGpus
from extender.objects import GpuNeed, NodeInfo, PodRequest
from extender.scoring import MAX_NODE_SCORE, NodeState, get_strategy, register
from extender.state_arrays import StateArrays, canonical

MILLI: Final = 1000
MAX_SHAPES: Final = 128
"""Shapes kept in a workload (most frequent first); rarer ones are dropped, weights rescaled."""
COVERAGE: Final = 0.99
"""A workload keeps the most frequent shapes until they cover this share of GPU pods."""
RELEARN_TOLERANCE: Final = 0.05
"""A re-estimated workload replaces the registered one only when some shape's weight moved by
more than this (or the shapes changed)."""
TIE_BREAK: Final = 1e-3
"""Added fragmentation charged per GPU equivalent left free on the chosen devices, so that among
placements that strand the same, the tighter one wins."""
STEEPNESS: Final = 4.0
"""Slope of the score: a placement stranding half a GPU more scores about 12 out of 100 lower
near the middle of the scale."""
CACHE_SIZE: Final = 1 << 16
ARRAY_BATCH: Final = 64
"""From this many node states on, :meth:`Fragmentation.score_states` uses the array form
(fixed cost ~1 ms, then a few µs a state); fewer go through :func:`place` one by one (~20-50 µs
each), as after one node changed."""
NEXT_POD_WEIGHT: Final = 0.5
"""Blend of the two views of stranded capacity in :func:`unusable`: whether the next pod of a
shape fits (the paper's), and how many more pods of the shape fit. Replaying the openb trace,
the blend places more than either alone."""


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


_Dev = tuple[int, int, bool]
"""``(total_mib, free_mib, idle)`` of one device."""
_Host = tuple[int, int] | None
"""``(milli_cpu_free, memory_free)`` of a node, or ``None`` when not known."""


_UNBOUNDED: Final = 1 << 62


def _copies(slots: Sequence[int], count: int) -> int:
    """Most pods of ``count`` GPUs on distinct devices, device ``i`` holding ``slots[i]`` GPUs."""
    if count <= 1:
        return sum(slots)
    c = sum(slots) // count
    while c > 0 and sum(min(s, c) for s in slots) < count * c:
        c -= 1
    return c


_Part = tuple[tuple[int, ...], int, float, float]
"""Per GPU part on a node: slots per device (how many such GPUs each could still hold), pods of
the part that still fit, GPU equivalents each uses, and free capacity on devices with a slot."""


@lru_cache(maxsize=CACHE_SIZE)
def _needs(total_mib: int, workload: Workload) -> tuple[int | None, ...]:
    """Per GPU part, the MiB one of its GPUs needs on a device of ``total_mib``."""
    return tuple(
        per_gpu_need(total_mib, share_milli=share, mib_per_gpu=mib)
        for _, share, mib in workload.parts
    )


def _slot(dev: _Dev, need: int | None) -> int:
    total, free, idle = dev
    if need is None:
        return 1 if idle else 0
    if need <= 0:
        return _UNBOUNDED if total > 0 else 0
    return free // need


def _frac(dev: _Dev) -> float:
    return dev[1] / dev[0] if dev[0] > 0 else 0.0


@lru_cache(maxsize=CACHE_SIZE)
def _part_room(devs: tuple[_Dev, ...], workload: Workload) -> tuple[float, tuple[_Part, ...]]:
    """Free GPU equivalents of a node and its room for each GPU part of the workload."""
    needs = [_needs(t, workload) for t, _, _ in devs]
    free = sum(_frac(d) for d in devs)
    parts: list[_Part] = []
    for g, (count, _, _) in enumerate(workload.parts):
        slots = tuple(_slot(d, n[g]) for d, n in zip(devs, needs, strict=True))
        size = 0.0
        for d, n in zip(devs, needs, strict=True):
            need = n[g]
            if d[0] > 0:
                size = max(size, 1.0 if need is None else need / d[0])
        roomy = sum(_frac(d) for d, k in zip(devs, slots, strict=True) if k > 0)
        parts.append((slots, _copies(slots, count), size * count, roomy))
    return free, tuple(parts)


def _swap(
    room: tuple[float, tuple[_Part, ...]],
    pos: int,
    old: _Dev,
    new: _Dev,
    workload: Workload,
) -> tuple[float, tuple[_Part, ...]]:
    """``room`` after device ``pos`` changes from ``old`` to ``new`` (only that device is
    re-examined)."""
    free, parts = room
    needs = _needs(new[0], workload)
    old_frac, new_frac = _frac(old), _frac(new)
    out: list[_Part] = []
    for g, (count, _, _) in enumerate(workload.parts):
        slots, copies, size, roomy = parts[g]
        s_old, s_new = slots[pos], _slot(new, needs[g])
        if s_old == s_new and old_frac == new_frac:
            out.append(parts[g])
            continue
        new_slots = (*slots[:pos], s_new, *slots[pos + 1 :])
        copies = copies - s_old + s_new if count <= 1 else _copies(new_slots, count)
        roomy += (new_frac if s_new > 0 else 0.0) - (old_frac if s_old > 0 else 0.0)
        out.append((new_slots, copies, size, roomy))
    return free - old_frac + new_frac, tuple(out)


_Table = tuple[tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...], float, float], ...]


@lru_cache(maxsize=CACHE_SIZE)
def _host_table(host: _Host, workload: Workload) -> _Table:
    """Per GPU part, for a host with ``host`` free: how many pods of each of the part's shapes
    its CPU and memory still allow (sorted), with prefix sums of weight and of weight × that
    count, the part's total weight, and the weight of shapes the host has room for at all."""
    rows: list[list[tuple[int, float]]] = [[] for _ in workload.parts]
    index = {part: i for i, part in enumerate(workload.parts)}
    for s in workload.shapes:
        n = _UNBOUNDED
        if host is not None:
            if s.milli_cpu > 0:
                n = min(n, max(host[0], 0) // s.milli_cpu)
            if s.memory > 0:
                n = min(n, max(host[1], 0) // s.memory)
        rows[index[s.gpu_part]].append((n, s.weight))
    table = []
    for row in rows:
        row.sort()
        limits = tuple(n for n, _ in row)
        pw, pwn = [0.0], [0.0]
        for n, w in row:
            pw.append(pw[-1] + w)
            pwn.append(pwn[-1] + w * n)
        total = pw[-1]
        able = total - pw[bisect_left(limits, 1)]
        table.append((limits, tuple(pw), tuple(pwn), total, able))
    return tuple(table)


def _value(room: tuple[float, tuple[_Part, ...]], host: _Host, workload: Workload) -> float:
    """Expected stranded capacity (see :func:`unusable`) from a node's room and host."""
    free, parts = room
    alpha = NEXT_POD_WEIGHT
    used = 0.0
    for (_, copies, size, roomy), (limits, pw, pwn, total, able) in zip(
        parts, _host_table(host, workload), strict=True
    ):
        if copies <= 0 or total == 0.0:
            continue
        i = bisect_left(limits, copies)
        fits = pwn[i] + copies * (total - pw[i])
        used += alpha * roomy * able + (1.0 - alpha) * size * fits
    return max(free - used, 0.0)


@lru_cache(maxsize=CACHE_SIZE)
def unusable(devs: tuple[_Dev, ...], host: _Host, workload: Workload) -> float:
    """Expected free GPU capacity of a node that would stay unused, in GPU equivalents.

    Two views of each shape of the workload, averaged with :data:`NEXT_POD_WEIGHT`:

    * next pod (the paper's): if the next pod has this shape and fits, the free capacity of the
      devices too small for one of its GPUs is unusable; if it does not fit at all (too few
      devices with room, or too little CPU or memory), all free capacity is;
    * pods to come: if only pods of this shape arrived from now on, the free capacity they would
      leave, because devices hold too little for one more, too few are idle, or the host's CPU or
      memory runs out before the GPUs do.

    Shapes are weighted by how often they arrive. The value depends on the devices as a set:
    it is computed on them in :func:`canonical` order.
    """
    return _value(_part_room(canonical(devs)[0], workload), host, workload)


def _take(dev: _Dev, need: GpuNeed) -> _Dev:
    total, free, _ = dev
    used = free if need.mib_per_gpu is None else need.mib_per_gpu
    return (total, free - used, False)


def _fits(dev: _Dev, need: GpuNeed) -> bool:
    return dev[2] if need.mib_per_gpu is None else dev[1] >= need.mib_per_gpu


def _host_after(host: _Host, need: GpuNeed) -> _Host:
    if host is None or not isinstance(need, HostNeed):
        return host
    return (host[0] - need.milli_cpu, host[1] - need.memory)


@lru_cache(maxsize=CACHE_SIZE)
def place(
    devs: tuple[_Dev, ...], host: _Host, need: GpuNeed, workload: Workload
) -> tuple[tuple[int, ...], float] | None:
    """Device positions (into ``devs``) that add the least expected fragmentation, and that
    increase (plus the tie-break); ``None`` when the need does not fit. A need of no GPUs takes
    only host CPU and memory, which can still strand the node's free GPUs.

    Computed on the devices in :func:`canonical` order; ties go to the first device in that
    order."""
    ordered, order = canonical(devs)
    found = _place(ordered, host, need, workload)
    if found is None or order is None:
        return found
    return tuple(sorted(order[p] for p in found[0])), found[1]


@lru_cache(maxsize=CACHE_SIZE)
def _place(
    devs: tuple[_Dev, ...], host: _Host, need: GpuNeed, workload: Workload
) -> tuple[tuple[int, ...], float] | None:
    """:func:`place` on devices already in canonical order. Devices are taken one at a time,
    each step choosing among devices that differ (equal devices are interchangeable, so only
    the first of each is tried)."""
    room = _part_room(devs, workload)
    before = _value(room, host, workload)
    after_host = _host_after(host, need)
    if need.count <= 0:
        return (), _value(room, after_host, workload) - before
    state = list(devs)
    chosen: list[int] = []
    best: tuple[float, float, int] | None = None
    for _ in range(need.count):
        best = None
        tried: set[_Dev] = set()
        for pos, dev in enumerate(state):
            if pos in chosen or dev in tried or not _fits(dev, need):
                continue
            tried.add(dev)
            taken = _take(dev, need)
            frag = _value(_swap(room, pos, dev, taken, workload), after_host, workload)
            left = _frac(taken)
            key = (frag + TIE_BREAK * left, left, pos)
            if best is None or key < best:
                best = key
        if best is None:
            return None
        pos = best[2]
        taken = _take(state[pos], need)
        room = _swap(room, pos, state[pos], taken, workload)
        state[pos] = taken
        chosen.append(pos)
    assert best is not None
    left_total = sum(_frac(state[p]) for p in chosen)
    frag_after = best[0] - TIE_BREAK * best[1]
    return tuple(sorted(chosen)), frag_after - before + TIE_BREAK * left_total


_DEVS: dict[int, tuple[tuple[DeviceState, ...], tuple[_Dev, ...]]] = {}
"""Device tuples already converted, by identity: a node's state object is reused from request
to request until the node changes, so the conversion is paid once per change."""
_LAST: list[tuple[NodeGpus, GpuNeed, Workload, tuple[tuple[int, ...], float] | None] | None] = [
    None
]
"""The last placement computed: ``score`` follows ``choose`` for the same node and need."""


def _devs_of(devices: tuple[DeviceState, ...]) -> tuple[_Dev, ...]:
    hit = _DEVS.get(id(devices))
    if hit is not None and hit[0] is devices:
        return hit[1]
    devs = tuple((d.total_mib, d.free_mib, d.idle) for d in devices)
    if len(_DEVS) >= CACHE_SIZE:
        _DEVS.clear()
    _DEVS[id(devices)] = (devices, devs)
    return devs


def clear_caches() -> None:
    """Forget memoised node states (benchmarks measure the cold cost with this)."""
    for cached in (_needs, _part_room, _host_table, unusable, place, _place):
        cached.cache_clear()
    _DEVS.clear()
    _LAST[0] = None


def score_of(increase: float) -> float:
    """0..100 from the added fragmentation (GPU equivalents): 50 when nothing is stranded or
    freed, higher when the pod fills fragments, lower as it strands more."""
    x = max(-50.0, min(50.0, STEEPNESS * increase))
    return MAX_NODE_SCORE / (1.0 + math.exp(x))


def _scores(increase: _F64, fits: npt.NDArray[np.bool_]) -> list[float]:
    """``[score_of(x) if fit else 0.0 ...]``, the clipping and the arithmetic done on arrays
    (the same IEEE operations, so the same bits); ``exp`` stays :func:`math.exp`, as numpy's
    may differ from it in the last place."""
    x = STEEPNESS * increase
    x = np.where(x < 50.0, x, 50.0)  # min(50.0, x), NaN included
    x = np.where(x > -50.0, x, -50.0)  # max(-50.0, x)
    e = np.fromiter(map(math.exp, x.tolist()), dtype=np.float64, count=len(x))
    out: list[float] = np.where(fits, MAX_NODE_SCORE / (1.0 + e), 0.0).tolist()
    return out


@dataclass(frozen=True, slots=True)
class Fragmentation:
    """Fragmentation-aware strategy (``--scoring fragmentation``).

    ``workload`` is what the extender expects to arrive; replace the registered instance
    (``register(Fragmentation(workload=Workload.from_pods(...)))``) as the observed mix changes.
    """

    workload: Workload = field(default=DEFAULT_WORKLOAD)
    name: str = "fragmentation"
    host_aware: bool = True
    """Wants :class:`HostGpus`/:class:`HostNeed` (see :func:`host_context`), and scores pods
    without GPUs too: their CPU and memory can strand a node's free GPUs."""

    def _devs(self, gpus: NodeGpus) -> tuple[_Dev, ...]:
        return _devs_of(gpus.devices)

    def _host(self, gpus: NodeGpus) -> _Host:
        if not isinstance(gpus, HostGpus):
            return None
        big = 1 << 62
        cpu = big if gpus.milli_cpu_free is None else gpus.milli_cpu_free
        mem = big if gpus.memory_free is None else gpus.memory_free
        return None if cpu == mem == big else (cpu, mem)

    def placement(self, gpus: NodeGpus, need: GpuNeed) -> tuple[tuple[int, ...], float] | None:
        """Chosen device indices and the fragmentation they add; ``None`` if it does not fit.

        CPU and memory count when ``gpus`` is a :class:`HostGpus` and ``need`` a
        :class:`HostNeed`; otherwise only the GPUs do."""
        last = _LAST[0]
        if last is not None and last[0] is gpus and last[1] is need and last[2] is self.workload:
            return last[3]
        result = self._placement(gpus, need)
        _LAST[0] = (gpus, need, self.workload, result)
        return result

    def _placement(self, gpus: NodeGpus, need: GpuNeed) -> tuple[tuple[int, ...], float] | None:
        found = place(self._devs(gpus), self._host(gpus), need, self.workload)
        if found is None:
            return None
        positions, increase = found
        devices: Sequence[DeviceState] = gpus.devices
        return tuple(sorted(devices[p].index for p in positions)), increase

    def state_need(self, need: GpuNeed | None, pod: PodRequest) -> GpuNeed | None:
        """The need :func:`extender.filtering.prioritize` hands this strategy for ``pod``."""
        if not self.host_aware:
            return need
        g = NO_GPU if need is None else need
        return HostNeed(
            count=g.count, mib_per_gpu=g.mib_per_gpu, milli_cpu=pod.milli_cpu, memory=pod.memory
        )

    def score_states(self, states: Sequence[NodeState], need: GpuNeed) -> list[float]:
        """:meth:`score` of :meth:`choose`'s devices (0 where none fit) for nodes in ``states``:
        the columnar index's fast path, memoised there per distinct state. A few states go
        through :func:`place` one by one (its own memo helps); many through the array form."""
        if len(states) >= ARRAY_BATCH:
            return self.score_arrays(StateArrays.of(states), need)
        out: list[float] = []
        for devs, host in states:
            found = place(devs, host if self.host_aware else None, need, self.workload)
            out.append(0.0 if found is None else score_of(found[1]))
        return out

    def learned_needs(self) -> list[GpuNeed]:
        """The needs :meth:`state_need` gives for pods of the workload's shapes (share shapes,
        which only trace replays use, have no MiB need and are left out): what to score before
        readiness."""
        return [
            HostNeed(
                count=s.count, mib_per_gpu=s.mib_per_gpu, milli_cpu=s.milli_cpu, memory=s.memory
            )
            if self.host_aware
            else GpuNeed(count=s.count, mib_per_gpu=s.mib_per_gpu)
            for s in self.workload.shapes
            if s.share_milli is None
        ]

    def score_arrays(self, arrays: StateArrays, need: GpuNeed) -> list[float]:
        """:meth:`score_states` over states already in array form (what the index keeps);
        the same numbers, bit for bit."""
        if len(arrays) < ARRAY_BATCH:
            return self.score_states(arrays.states, need)
        if not self.host_aware:
            arrays = arrays.without_hosts()
        return scores_arrays(arrays, need, self.workload)

    def choose(self, gpus: NodeGpus, need: GpuNeed) -> tuple[int, ...] | None:
        found = self.placement(gpus, need)
        return None if found is None else found[0]

    def score(self, gpus: NodeGpus, need: GpuNeed, chosen: tuple[int, ...]) -> float:
        found = self.placement(gpus, need)
        if found is not None and found[0] == tuple(sorted(chosen)):
            return score_of(found[1])
        by_index = {d.index: p for p, d in enumerate(gpus.devices)}
        devs = list(self._devs(gpus))
        host = self._host(gpus)
        before = unusable(tuple(devs), host, self.workload)
        for i in chosen:
            devs[by_index[i]] = _take(devs[by_index[i]], need)
        return score_of(unusable(tuple(devs), _host_after(host, need), self.workload) - before)


def learn(pods: Iterable[PodRequest]) -> Fragmentation:
    """Register a ``fragmentation`` strategy for the workload of ``pods`` (the pods the extender
    sees, bound or pending) and return it; call again as the mix changes. The registered one is
    kept while the new estimate is :meth:`Workload.similar` to it, so its caches stay warm."""
    current = get_strategy("fragmentation")
    workload = Workload.from_pods(pods)
    if isinstance(current, Fragmentation) and current.workload.similar(workload):
        return current
    strategy = Fragmentation(workload=workload)
    register(strategy)
    return strategy


register(Fragmentation())


# ---- array form -------------------------------------------------------------------------------
# :func:`place_many` computes :func:`place` for many node states at once with numpy, for the
# columnar index (a new pod shape, or a restart, would otherwise cost one ``place`` call per
# distinct node state). It evaluates the same formulas in the same order of floating-point
# operations (sequential sums, the same prefix sums, the same tie-break), so its results are
# bit-for-bit those of :func:`place`; property tests hold it to that. States it does not handle
# (a need of 0 MiB, which makes a device's room unbounded) go through :func:`place`.

_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]


def _host_arrays(
    hosts: _I64, known: npt.NDArray[np.bool_], workload: Workload
) -> list[tuple[_I64, _F64, _F64, _F64, _F64]]:
    """:func:`_host_table` for many hosts: per GPU part, per host, the sorted limits, prefix
    sums of weight and of weight × limit, the part's total weight and the weight able to fit."""
    cpu = np.maximum(hosts[:, 0], 0)[:, None]
    mem = np.maximum(hosts[:, 1], 0)[:, None]
    out = []
    index = {part: i for i, part in enumerate(workload.parts)}
    members: list[list[int]] = [[] for _ in workload.parts]
    for k, s in enumerate(workload.shapes):
        members[index[s.gpu_part]].append(k)
    for ks in members:
        shapes = [workload.shapes[k] for k in ks]
        n = np.full((len(hosts), len(ks)), _UNBOUNDED, dtype=np.int64)
        for j, s in enumerate(shapes):
            col = n[:, j]
            if s.milli_cpu > 0:
                col = np.minimum(col, cpu[:, 0] // s.milli_cpu)
            if s.memory > 0:
                col = np.minimum(col, mem[:, 0] // s.memory)
            n[:, j] = np.where(known, col, _UNBOUNDED)
        w = np.broadcast_to(np.array([s.weight for s in shapes], dtype=np.float64), n.shape)
        order = np.lexsort((w, n), axis=1)
        limits = np.take_along_axis(n, order, axis=1)
        ws = np.take_along_axis(w, order, axis=1)
        zero = np.zeros((len(hosts), 1))
        pw = np.concatenate([zero, np.cumsum(ws, axis=1)], axis=1)
        pwn = np.concatenate([zero, np.cumsum(ws * limits.astype(np.float64), axis=1)], axis=1)
        total = pw[:, -1]
        first = (limits < 1).sum(axis=1)
        able = total - pw[np.arange(len(hosts)), first]
        out.append((limits, pw, pwn, total, able))
    return out


def _copies_many(slots: _I64, count: int) -> _I64:
    """:func:`_copies` per row of ``slots`` (binary search on the same feasibility test: the
    test is monotone, so the largest feasible count is the one the scalar loop stops at)."""
    total = slots.sum(axis=1)
    if count <= 1:
        out: _I64 = total
        return out
    lo = np.zeros(len(slots), dtype=np.int64)
    hi = total // count
    while True:
        todo = lo < hi
        if not todo.any():
            return lo
        mid = (lo + hi + 1) // 2
        ok = np.minimum(slots, mid[:, None]).sum(axis=1) >= count * mid
        lo = np.where(todo & ok, mid, lo)
        hi = np.where(todo & ~ok, mid - 1, hi)


class _Rooms:
    """:func:`_part_room` for a batch of node states with the same number of devices."""

    def __init__(self, total: _I64, free: _I64, idle: npt.NDArray[np.bool_], workload: Workload):
        self.total, self.free, self.idle = total, free, idle
        self.workload = workload
        s, d = total.shape
        parts = workload.parts
        # per part and device: MiB one GPU of the part takes (-1: a whole idle device)
        self.need = np.empty((len(parts), s, d), dtype=np.int64)
        for g, (_, share, mib) in enumerate(parts):
            if share is not None:
                self.need[g] = -1 if share >= MILLI else share * total // MILLI
            else:
                self.need[g] = -1 if mib is None else mib
        self.ok = ~((self.need == 0) & (total > 0)[None]).any(axis=(0, 2))
        """States :func:`place` must handle (a zero need: unbounded room)."""
        self.frac = self.frac_of(total, free)
        self.slots = np.stack([self.slot_of(g, free, idle) for g in range(len(parts))])
        self.free_sum = np.zeros(s)
        for j in range(d):
            self.free_sum = self.free_sum + self.frac[:, j]
        self.copies = (
            np.stack([_copies_many(self.slots[g], c) for g, (c, _, _) in enumerate(parts)])
            if parts
            else np.zeros((0, s), dtype=np.int64)
        )
        self.size = np.zeros((len(parts), s))
        self.roomy = np.zeros((len(parts), s))
        for g in range(len(parts)):
            size = np.zeros(s)
            roomy = np.zeros(s)
            for j in range(d):
                t = total[:, j]
                nd = self.need[g, :, j]
                frac_need = np.where(nd < 0, 1.0, nd / np.maximum(t, 1))
                size = np.where(t > 0, np.maximum(size, frac_need), size)
                roomy = roomy + np.where(self.slots[g, :, j] > 0, self.frac[:, j], 0.0)
            self.size[g] = size * parts[g][0]
            self.roomy[g] = roomy

    @staticmethod
    def frac_of(total: _I64, free: _I64) -> _F64:
        out: _F64 = np.where(total > 0, free / np.maximum(total, 1), 0.0)
        return out

    def slot_of(self, g: int, free: _I64, idle: npt.NDArray[np.bool_]) -> _I64:
        nd = self.need[g]
        out: _I64 = np.where(nd < 0, idle.astype(np.int64), free // np.maximum(nd, 1))
        return out


def _value_many(
    free_sum: _F64,
    copies: _I64,
    size: _F64,
    roomy: _F64,
    tables: list[tuple[_I64, _F64, _F64, _F64, _F64]],
    host_row: _I64,
) -> _F64:
    """:func:`_value` per row: parts in order, the same sums."""
    alpha = NEXT_POD_WEIGHT
    used = np.zeros(len(free_sum))
    for g, (limits, pw, pwn, total, able) in enumerate(tables):
        c = copies[g]
        t: _F64 | np.float64
        a: _F64 | np.float64
        if len(limits) == 1:  # one host (or none known): its row's values broadcast
            i = np.searchsorted(limits[0], c, side="left")
            t, a, p_w, p_wn = total[0], able[0], pw[0][i], pwn[0][i]
        else:
            i = (limits[host_row] < c[:, None]).sum(axis=1)
            t, a, p_w, p_wn = total[host_row], able[host_row], pw[host_row, i], pwn[host_row, i]
        fits = p_wn + c.astype(np.float64) * (t - p_w)
        term = alpha * roomy[g] * a + (1.0 - alpha) * size[g] * fits
        used = np.where((c <= 0) | (t == 0.0), used, used + term)
    out: _F64 = np.maximum(free_sum - used, 0.0)
    return out


def place_many(
    states: Sequence[tuple[tuple[_Dev, ...], _Host]], need: GpuNeed, workload: Workload
) -> list[tuple[tuple[int, ...], float] | None]:
    """:func:`place` for each ``(devs, host)`` state, computed with arrays."""
    return place_arrays(StateArrays.of(states), need, workload, positions=True)


def increases(arrays: StateArrays, need: GpuNeed, workload: Workload) -> list[float | None]:
    """The added fragmentation :func:`place` reports per state (``None``: does not fit)."""
    return [None if f is None else f[1] for f in place_arrays(arrays, need, workload)]


def scores_arrays(arrays: StateArrays, need: GpuNeed, workload: Workload) -> list[float]:
    """``score_of`` of :func:`increases` per state, 0.0 where the need does not fit."""
    placed = _place_canonical(arrays, need, workload, False)
    return _scores(placed.increase, placed.fits)


def _in_canonical_order(arrays: StateArrays) -> bool:
    """Whether every state's devices are in :func:`canonical` order (the index interns them
    so): one comparison of packed (total, free, idle) keys, padding last."""
    total, free = arrays.total, arrays.free
    if not total.size:
        return True
    if int(total.max()) >= 1 << 30 or int(free.min()) < -(1 << 31) or int(free.max()) >= 1 << 31:
        return all(canonical(devs)[1] is None for devs, _ in arrays.states)
    key = np.where(
        arrays.real, ((total << 32) + (free + (1 << 31))) * 2 + arrays.idle, np.iinfo(np.int64).max
    )
    return bool((key[:, 1:] >= key[:, :-1]).all())


def _place_canonical(
    arrays: StateArrays, need: GpuNeed, workload: Workload, positions: bool
) -> _Placed:
    """:func:`_place_arrays` on the states in :func:`canonical` order, positions mapped back to
    each state's own order."""
    if _in_canonical_order(arrays):
        return _place_arrays(arrays, need, workload, positions)
    sorted_states = [(canonical(devs), host) for devs, host in arrays.states]
    ordered = StateArrays.of([(devs, host) for (devs, _), host in sorted_states])
    placed = _place_arrays(ordered, need, workload, positions)
    if placed.positions is not None:
        placed.positions = [
            at if order is None else tuple(sorted(order[p] for p in at))
            for at, ((_, order), _) in zip(placed.positions, sorted_states, strict=True)
        ]
    return placed


@dataclass(slots=True)
class _Basis:
    """What :func:`place_arrays` derives from node states before looking at the pod: per
    state, :class:`_Rooms` and the fragmentation before placing. It depends on the states and
    the workload alone, so it is computed once per state (:func:`_basis`) and taken by row for
    every need; rows are independent, so a row's values are the same whatever batch computed
    them."""

    width: int
    need: _I64  # (parts, states, devices)
    ok: npt.NDArray[np.bool_]
    frac: _F64
    slots: _I64  # (parts, states, devices)
    free_sum: _F64
    copies: _I64  # (parts, states)
    size: _F64  # (parts, states)
    roomy: _F64  # (parts, states)
    before: _F64

    def __len__(self) -> int:
        return len(self.ok)

    def take(self, rows: _I64 | slice) -> _Basis:
        return _Basis(
            self.width,
            self.need[:, rows],
            self.ok[rows],
            self.frac[rows],
            self.slots[:, rows],
            self.free_sum[rows],
            self.copies[:, rows],
            self.size[:, rows],
            self.roomy[:, rows],
            self.before[rows],
        )

    def then(self, more: _Basis) -> _Basis:
        """These rows followed by ``more``'s."""
        return _Basis(
            self.width,
            np.concatenate([self.need, more.need], axis=1),
            np.concatenate([self.ok, more.ok]),
            np.concatenate([self.frac, more.frac]),
            np.concatenate([self.slots, more.slots], axis=1),
            np.concatenate([self.free_sum, more.free_sum]),
            np.concatenate([self.copies, more.copies], axis=1),
            np.concatenate([self.size, more.size], axis=1),
            np.concatenate([self.roomy, more.roomy], axis=1),
            np.concatenate([self.before, more.before]),
        )


_BASES: Final = 4
"""Workloads whose per-state basis a set of arrays keeps (a relearn adds one)."""


def _host_columns(arrays: StateArrays) -> tuple[npt.NDArray[np.bool_], _I64]:
    """Whether each distinct host is known, and its free (CPU, memory) (0 where unknown)."""
    if arrays.hostless:
        return np.zeros(1, dtype=bool), np.zeros((1, 2), dtype=np.int64)
    known = np.array([h is not None for h in arrays.hosts], dtype=bool)
    host = np.array([h if h is not None else (0, 0) for h in arrays.hosts], dtype=np.int64)
    return known, host.reshape(-1, 2)


def _compute_basis(arrays: StateArrays, rows: slice, workload: Workload) -> _Basis:
    total, free, idle = arrays.total[rows], arrays.free[rows], arrays.idle[rows]
    h_row = arrays.host_id[rows] if not arrays.hostless else np.zeros(len(total), dtype=np.int64)
    known, host = _host_columns(arrays)
    rooms = _Rooms(total, free, idle, workload)
    before = _value_many(
        rooms.free_sum,
        rooms.copies,
        rooms.size,
        rooms.roomy,
        _host_arrays(host, known, workload),
        h_row,
    )
    return _Basis(
        total.shape[1],
        rooms.need,
        rooms.ok,
        rooms.frac,
        rooms.slots,
        rooms.free_sum,
        rooms.copies,
        rooms.size,
        rooms.roomy,
        before,
    )


def _basis(arrays: StateArrays, workload: Workload) -> tuple[_Basis, bool]:
    """The :class:`_Basis` of ``arrays``' rows: sliced from the arrays they were taken from,
    where it is kept (:attr:`StateArrays.derived`) and extended to states interned since; and
    whether it is a copy of its own (else the one kept, not to be written)."""
    root, rows = arrays.root()
    key = (workload, arrays.hostless)
    width = root.total.shape[1]
    hit = root.derived.get(key)
    have = hit if isinstance(hit, _Basis) and hit.width == width else None
    n = len(root)
    if have is None or len(have) < n:
        start = 0 if have is None else len(have)
        view = root if not arrays.hostless else root.without_hosts()
        more = _compute_basis(view, slice(start, n), workload)
        have = more if have is None else have.then(more)
        root.derived.pop(key, None)
        while len(root.derived) >= _BASES:
            root.derived.pop(next(iter(root.derived)))
        root.derived[key] = have
    if rows is None:
        return (have, False) if len(have) == n else (have.take(slice(0, n)), False)
    return have.take(rows), True


@dataclass(slots=True)
class _Placed:
    """:func:`place` for a batch of states: the increase per state (0 where it does not fit),
    whether it fits, and with positions the device positions per state (``()`` where not)."""

    increase: _F64
    fits: npt.NDArray[np.bool_]
    positions: list[tuple[int, ...]] | None

    @classmethod
    def empty(cls, s: int, positions: bool) -> _Placed:
        return cls(np.zeros(s), np.zeros(s, dtype=bool), [()] * s if positions else None)

    def set(self, k: int, found: tuple[tuple[int, ...], float] | None) -> None:
        if found is None:
            self.increase[k], self.fits[k] = 0.0, False
            if self.positions is not None:
                self.positions[k] = ()
            return
        self.increase[k], self.fits[k] = found[1], True
        if self.positions is not None:
            self.positions[k] = found[0]

    def results(self) -> list[tuple[tuple[int, ...], float] | None]:
        inc = self.increase.tolist()
        where = self.positions
        return [
            ((() if where is None else where[k]), inc[k]) if fit else None
            for k, fit in enumerate(self.fits.tolist())
        ]


def place_arrays(
    arrays: StateArrays, need: GpuNeed, workload: Workload, *, positions: bool = False
) -> list[tuple[tuple[int, ...], float] | None]:
    """:func:`place` over :class:`StateArrays` (device positions only with ``positions``)."""
    return _place_canonical(arrays, need, workload, positions).results()


def _place_arrays(
    arrays: StateArrays, need: GpuNeed, workload: Workload, positions: bool
) -> _Placed:
    s, d = arrays.total.shape
    if s == 0:
        return _Placed.empty(0, positions)
    able = np.ones(s, dtype=bool)
    if need.count > 0 and d > 0:  # states where the pod cannot fit need no arithmetic
        whole_need = need.mib_per_gpu is None
        room = (arrays.idle if whole_need else arrays.free >= (need.mib_per_gpu or 0)) & arrays.real
        able = room.sum(axis=1) >= need.count
        few = 2 * int(able.sum()) < s  # many able: mask the others rather than copy the rest
        if few:
            out = _Placed.empty(s, positions)
            rows = np.flatnonzero(able)
            if rows.size:
                sub = _place_arrays(arrays.take(rows), need, workload, positions)
                out.increase[rows] = sub.increase
                out.fits[rows] = sub.fits
                if out.positions is not None and sub.positions is not None:
                    for k, taken in zip(rows.tolist(), sub.positions, strict=True):
                        out.positions[k] = taken
            return out
    if d == 0 or not workload.parts:
        out = _Placed.empty(s, positions)
        for k, (devs, state_host) in enumerate(arrays.states):
            out.set(k, place(devs, state_host, need, workload))
        return out
    basis, owned = _basis(arrays, workload)
    total, free, idle = arrays.total, arrays.free.copy(), arrays.idle.copy()
    known, host = _host_columns(arrays)
    offset = (
        np.array([need.milli_cpu, need.memory], dtype=np.int64)
        if isinstance(need, HostNeed)
        else np.zeros(2, dtype=np.int64)
    )
    after_tables = _host_arrays(host - offset, known, workload)
    h_row = arrays.host_id if not arrays.hostless else np.zeros(s, dtype=np.int64)
    before = basis.before
    if need.count <= 0:
        after_v = _value_many(
            basis.free_sum, basis.copies, basis.size, basis.roomy, after_tables, h_row
        )
        placed = _Placed(after_v - before, np.ones(s, dtype=bool), [()] * s if positions else None)
        return _fallback(placed, basis.ok, arrays.states, need, workload)
    tables = after_tables
    whole = need.mib_per_gpu is None
    mib = 0 if need.mib_per_gpu is None else need.mib_per_gpu
    if not owned:
        basis = _Basis(
            basis.width,
            basis.need,
            basis.ok,
            basis.frac.copy(),
            basis.slots.copy(),
            basis.free_sum.copy(),
            basis.copies.copy(),
            basis.size,
            basis.roomy.copy(),
            basis.before,
        )
    free_sum, copies, roomy = basis.free_sum, basis.copies, basis.roomy
    slots = basis.slots
    frac = basis.frac
    part_need = basis.need
    flat_total, flat_free, flat_frac = total.reshape(-1), free.reshape(-1), frac.reshape(-1)
    chosen = np.zeros((s, d), dtype=bool)
    order: list[_I64] = []
    alive = able.copy()
    rows = np.arange(s)
    best_p = np.zeros(s)
    best_left = np.zeros(s)
    parts = workload.parts
    for _ in range(need.count):
        cand = (idle if whole else free >= mib) & arrays.real & ~chosen & alive[:, None]
        # every candidate device of every state taken at once, as (state, device) pairs
        at = np.flatnonzero(cand)
        si, sj = at // d, at % d
        new_free = np.zeros(len(at), dtype=np.int64) if whole else flat_free[at] - mib
        new_frac = _Rooms.frac_of(flat_total[at], new_free)
        old_frac = flat_frac[at]
        c_new = np.empty((len(parts), len(at)), dtype=np.int64)
        r_new = np.empty((len(parts), len(at)))
        for g, (count, _, _) in enumerate(parts):
            s_old = slots[g].reshape(-1)[at]
            nd = part_need[g].reshape(-1)[at]
            s_new = np.where(nd < 0, 0, new_free // np.maximum(nd, 1))
            if count <= 1:
                c_new[g] = copies[g][si] - s_old + s_new
            else:
                sl = slots[g][si]
                sl[np.arange(len(at)), sj] = s_new
                c_new[g] = _copies_many(sl, count)
            r_new[g] = roomy[g][si] + (
                np.where(s_new > 0, new_frac, 0.0) - np.where(s_old > 0, old_frac, 0.0)
            )
        f_new = (free_sum[si] - old_frac) + new_frac
        frag = _value_many(f_new, c_new, basis.size[:, si], r_new, tables, h_row[si])
        p = np.full((s, d), np.inf)
        p.reshape(-1)[at] = frag + TIE_BREAK * new_frac
        left = np.full((s, d), np.inf)
        left.reshape(-1)[at] = new_frac
        m = p.min(axis=1)
        alive &= np.isfinite(m)
        first = p == m[:, None]
        left2 = np.where(first, left, np.inf)
        m2 = left2.min(axis=1)
        pos = np.argmax(first & (left2 == m2[:, None]), axis=1)
        best_p, best_left = m, m2
        # take the chosen device in every live state, as _swap does
        j_rows = rows[alive]
        jp = pos[alive]
        old_frac = frac[j_rows, jp]
        new_free_v = np.zeros(len(j_rows), dtype=np.int64) if whole else free[j_rows, jp] - mib
        new_frac = _Rooms.frac_of(total[j_rows, jp], new_free_v)
        for g, (count, _, _) in enumerate(parts):
            s_old = slots[g, j_rows, jp]
            nd = part_need[g, j_rows, jp]
            s_new = np.where(nd < 0, 0, new_free_v // np.maximum(nd, 1))
            slots[g, j_rows, jp] = s_new
            if count <= 1:
                copies[g, j_rows] = copies[g, j_rows] - s_old + s_new
            else:
                copies[g, j_rows] = _copies_many(slots[g, j_rows], count)
            roomy[g, j_rows] = roomy[g, j_rows] + (
                np.where(s_new > 0, new_frac, 0.0) - np.where(s_old > 0, old_frac, 0.0)
            )
        free_sum[j_rows] = free_sum[j_rows] - old_frac + new_frac
        free[j_rows, jp] = new_free_v
        idle[j_rows, jp] = False
        frac[j_rows, jp] = new_frac
        chosen[j_rows, jp] = True
        order.append(np.where(alive, pos, -1))
    left_total = np.zeros(s)
    for step in order:
        left_total = left_total + np.where(step >= 0, frac[rows, np.maximum(step, 0)], 0.0)
    best_p = np.where(alive, best_p, 0.0)
    best_left = np.where(alive, best_left, 0.0)
    frag_after = best_p - TIE_BREAK * best_left
    inc = frag_after - before + TIE_BREAK * left_total
    where: list[tuple[int, ...]] | None = None
    if positions:
        steps = np.stack(order, axis=1).tolist()
        alive_list = alive.tolist()
        where = [tuple(sorted(st)) if a else () for st, a in zip(steps, alive_list, strict=True)]
    placed = _Placed(np.where(alive, inc, 0.0), alive, where)
    return _fallback(placed, basis.ok, arrays.states, need, workload)


def _fallback(
    placed: _Placed,
    ok: npt.NDArray[np.bool_],
    states: Sequence[tuple[tuple[_Dev, ...], _Host]],
    need: GpuNeed,
    workload: Workload,
) -> _Placed:
    for k in np.flatnonzero(~ok).tolist():
        placed.set(k, place(states[k][0], states[k][1], need, workload))
    return placed
