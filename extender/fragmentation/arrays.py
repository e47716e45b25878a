"""The array form of :func:`~extender.fragmentation.stranding.place`, for many node states at
once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from extender.fragmentation.host import HostNeed
from extender.fragmentation.stranding import (
    F64,
    NEXT_POD_WEIGHT,
    TIE_BREAK,
    UNBOUNDED,
    Dev,
    Host,
    place,
    scores_of_increases,
)
from extender.fragmentation.workload import MILLI, Workload
from extender.objects import GpuNeed
from extender.state_arrays import StateArrays, canonical

# ---- array form -------------------------------------------------------------------------------
# :func:`place_many` computes :func:`place` for many node states at once with numpy, for the
# columnar index (a new pod shape, or a restart, would otherwise cost one ``place`` call per
# distinct node state). It evaluates the same formulas in the same order of floating-point
# operations (sequential sums, the same prefix sums, the same tie-break), so its results are
# bit-for-bit those of :func:`place`; property tests hold it to that. States it does not handle
# (a need of 0 MiB, which makes a device's room unbounded) go through :func:`place`.

_I64 = npt.NDArray[np.int64]


def _host_arrays(
    hosts: _I64, known: npt.NDArray[np.bool_], workload: Workload
) -> list[tuple[_I64, F64, F64, F64, F64]]:
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
        n = np.full((len(hosts), len(ks)), UNBOUNDED, dtype=np.int64)
        for j, s in enumerate(shapes):
            col = n[:, j]
            if s.milli_cpu > 0:
                col = np.minimum(col, cpu[:, 0] // s.milli_cpu)
            if s.memory > 0:
                col = np.minimum(col, mem[:, 0] // s.memory)
            n[:, j] = np.where(known, col, UNBOUNDED)
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
    def frac_of(total: _I64, free: _I64) -> F64:
        out: F64 = np.where(total > 0, free / np.maximum(total, 1), 0.0)
        return out

    def slot_of(self, g: int, free: _I64, idle: npt.NDArray[np.bool_]) -> _I64:
        nd = self.need[g]
        out: _I64 = np.where(nd < 0, idle.astype(np.int64), free // np.maximum(nd, 1))
        return out


def _value_many(
    free_sum: F64,
    copies: _I64,
    size: F64,
    roomy: F64,
    tables: list[tuple[_I64, F64, F64, F64, F64]],
    host_row: _I64,
) -> F64:
    """:func:`_value` per row: parts in order, the same sums."""
    alpha = NEXT_POD_WEIGHT
    used = np.zeros(len(free_sum))
    for g, (limits, pw, pwn, total, able) in enumerate(tables):
        c = copies[g]
        t: F64 | np.float64
        a: F64 | np.float64
        if len(limits) == 1:  # one host (or none known): its row's values broadcast
            i = np.searchsorted(limits[0], c, side="left")
            t, a, p_w, p_wn = total[0], able[0], pw[0][i], pwn[0][i]
        else:
            i = (limits[host_row] < c[:, None]).sum(axis=1)
            t, a, p_w, p_wn = total[host_row], able[host_row], pw[host_row, i], pwn[host_row, i]
        fits = p_wn + c.astype(np.float64) * (t - p_w)
        term = alpha * roomy[g] * a + (1.0 - alpha) * size[g] * fits
        used = np.where((c <= 0) | (t == 0.0), used, used + term)
    out: F64 = np.maximum(free_sum - used, 0.0)
    return out


def place_many(
    states: Sequence[tuple[tuple[Dev, ...], Host]], need: GpuNeed, workload: Workload
) -> list[tuple[tuple[int, ...], float] | None]:
    """:func:`place` for each ``(devs, host)`` state, computed with arrays."""
    return place_arrays(StateArrays.of(states), need, workload, positions=True)


def increases(arrays: StateArrays, need: GpuNeed, workload: Workload) -> list[float | None]:
    """The added fragmentation :func:`place` reports per state (``None``: does not fit)."""
    return [None if f is None else f[1] for f in place_arrays(arrays, need, workload)]


def scores_arrays(arrays: StateArrays, need: GpuNeed, workload: Workload) -> list[float]:
    """``score_of`` of :func:`increases` per state, 0.0 where the need does not fit."""
    placed = _place_canonical(arrays, need, workload, False)
    return scores_of_increases(placed.increase, placed.fits)


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
    frac: F64
    slots: _I64  # (parts, states, devices)
    free_sum: F64
    copies: _I64  # (parts, states)
    size: F64  # (parts, states)
    roomy: F64  # (parts, states)
    before: F64

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

    increase: F64
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
    states: Sequence[tuple[tuple[Dev, ...], Host]],
    need: GpuNeed,
    workload: Workload,
) -> _Placed:
    for k in np.flatnonzero(~ok).tolist():
        placed.set(k, place(states[k][0], states[k][1], need, workload))
    return placed
