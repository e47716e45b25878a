"""Expected stranded capacity of a node state, and the placement that raises it least, one state
at a time (memoised on the state)."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from functools import lru_cache
from typing import Final

import numpy as np
import numpy.typing as npt

from extender.fit import DeviceState
from extender.fragmentation.host import HostNeed
from extender.fragmentation.workload import Workload, per_gpu_need
from extender.objects import GpuNeed
from extender.scoring import MAX_NODE_SCORE
from extender.state_arrays import canonical

TIE_BREAK: Final = 1e-3
"""Added fragmentation charged per GPU equivalent left free on the chosen devices, so that among
placements that strand the same, the tighter one wins."""
STEEPNESS: Final = 4.0
"""Slope of the score: a placement stranding half a GPU more scores about 12 out of 100 lower
near the middle of the scale."""
CACHE_SIZE: Final = 1 << 16
NEXT_POD_WEIGHT: Final = 0.5
"""Blend of the two views of stranded capacity in :func:`unusable`: whether the next pod of a
shape fits (the paper's), and how many more pods of the shape fit. Replaying the openb trace,
the blend places more than either alone."""


F64 = npt.NDArray[np.float64]

Dev = tuple[int, int, bool]
"""``(total_mib, free_mib, idle)`` of one device."""
Host = tuple[int, int] | None
"""``(milli_cpu_free, memory_free)`` of a node, or ``None`` when not known."""


UNBOUNDED: Final = 1 << 62


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


def _slot(dev: Dev, need: int | None) -> int:
    total, free, idle = dev
    if need is None:
        return 1 if idle else 0
    if need <= 0:
        return UNBOUNDED if total > 0 else 0
    return free // need


def _frac(dev: Dev) -> float:
    return dev[1] / dev[0] if dev[0] > 0 else 0.0


@lru_cache(maxsize=CACHE_SIZE)
def _part_room(devs: tuple[Dev, ...], workload: Workload) -> tuple[float, tuple[_Part, ...]]:
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
    old: Dev,
    new: Dev,
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
def _host_table(host: Host, workload: Workload) -> _Table:
    """Per GPU part, for a host with ``host`` free: how many pods of each of the part's shapes
    its CPU and memory still allow (sorted), with prefix sums of weight and of weight × that
    count, the part's total weight, and the weight of shapes the host has room for at all."""
    rows: list[list[tuple[int, float]]] = [[] for _ in workload.parts]
    index = {part: i for i, part in enumerate(workload.parts)}
    for s in workload.shapes:
        n = UNBOUNDED
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


def _value(room: tuple[float, tuple[_Part, ...]], host: Host, workload: Workload) -> float:
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
def unusable(devs: tuple[Dev, ...], host: Host, workload: Workload) -> float:
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


def take(dev: Dev, need: GpuNeed) -> Dev:
    total, free, _ = dev
    used = free if need.mib_per_gpu is None else need.mib_per_gpu
    return (total, free - used, False)


def _fits(dev: Dev, need: GpuNeed) -> bool:
    return dev[2] if need.mib_per_gpu is None else dev[1] >= need.mib_per_gpu


def host_after(host: Host, need: GpuNeed) -> Host:
    if host is None or not isinstance(need, HostNeed):
        return host
    return (host[0] - need.milli_cpu, host[1] - need.memory)


@lru_cache(maxsize=CACHE_SIZE)
def place(
    devs: tuple[Dev, ...], host: Host, need: GpuNeed, workload: Workload
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
    devs: tuple[Dev, ...], host: Host, need: GpuNeed, workload: Workload
) -> tuple[tuple[int, ...], float] | None:
    """:func:`place` on devices already in canonical order. Devices are taken one at a time,
    each step choosing among devices that differ (equal devices are interchangeable, so only
    the first of each is tried)."""
    room = _part_room(devs, workload)
    before = _value(room, host, workload)
    after_host = host_after(host, need)
    if need.count <= 0:
        return (), _value(room, after_host, workload) - before
    state = list(devs)
    chosen: list[int] = []
    best: tuple[float, float, int] | None = None
    for _ in range(need.count):
        best = None
        tried: set[Dev] = set()
        for pos, dev in enumerate(state):
            if pos in chosen or dev in tried or not _fits(dev, need):
                continue
            tried.add(dev)
            taken = take(dev, need)
            frag = _value(_swap(room, pos, dev, taken, workload), after_host, workload)
            left = _frac(taken)
            key = (frag + TIE_BREAK * left, left, pos)
            if best is None or key < best:
                best = key
        if best is None:
            return None
        pos = best[2]
        taken = take(state[pos], need)
        room = _swap(room, pos, state[pos], taken, workload)
        state[pos] = taken
        chosen.append(pos)
    assert best is not None
    left_total = sum(_frac(state[p]) for p in chosen)
    frag_after = best[0] - TIE_BREAK * best[1]
    return tuple(sorted(chosen)), frag_after - before + TIE_BREAK * left_total


_DEVS: dict[int, tuple[tuple[DeviceState, ...], tuple[Dev, ...]]] = {}
"""Device tuples already converted, by identity: a node's state object is reused from request
to request until the node changes, so the conversion is paid once per change."""


def devs_of(devices: tuple[DeviceState, ...]) -> tuple[Dev, ...]:
    hit = _DEVS.get(id(devices))
    if hit is not None and hit[0] is devices:
        return hit[1]
    devs = tuple((d.total_mib, d.free_mib, d.idle) for d in devices)
    if len(_DEVS) >= CACHE_SIZE:
        _DEVS.clear()
    _DEVS[id(devices)] = (devices, devs)
    return devs


def clear_placement_caches() -> None:
    """Forget memoised node states and placements."""
    for cached in (_needs, _part_room, _host_table, unusable, place, _place):
        cached.cache_clear()
    _DEVS.clear()


def score_of(increase: float) -> float:
    """0..100 from the added fragmentation (GPU equivalents): 50 when nothing is stranded or
    freed, higher when the pod fills fragments, lower as it strands more."""
    x = max(-50.0, min(50.0, STEEPNESS * increase))
    return MAX_NODE_SCORE / (1.0 + math.exp(x))


def scores_of_increases(increase: F64, fits: npt.NDArray[np.bool_]) -> list[float]:
    """``[score_of(x) if fit else 0.0 ...]``, the clipping and the arithmetic done on arrays
    (the same IEEE operations, so the same bits); ``exp`` stays :func:`math.exp`, as numpy's
    may differ from it in the last place."""
    x = STEEPNESS * increase
    x = np.where(x < 50.0, x, 50.0)  # min(50.0, x), NaN included
    x = np.where(x > -50.0, x, -50.0)  # max(-50.0, x)
    e = np.fromiter(map(math.exp, x.tolist()), dtype=np.float64, count=len(x))
    out: list[float] = np.where(fits, MAX_NODE_SCORE / (1.0 + e), 0.0).tolist()
    return out
