"""The hindsight bound's arithmetic: which replica count each interval gets, and what the
schedule costs once every start-up is paid for. Pure; :mod:`simulations.experiments.bounds`
measures the inputs with the simulator.

Two steps, each optimal for what it is given:

1. **Spending the miss budget** (:func:`allocate`). Interval ``k`` served by ``n`` replicas
   misses ``misses[k][n]`` requests (non-increasing in ``n``). The whole run may miss
   ``budget`` requests (``(1 - target) ×`` the requests counted). Each interval starts at the
   fewest replicas that reach its least misses; replicas are then taken away where they save
   the most replicas per extra miss (the lower convex hull of each interval's curve, its
   segments taken in order of increasing misses per replica) while the budget allows. This is
   the greedy solution of the relaxed problem; it is within one hull segment of the integer
   optimum.
2. **Paying for start-ups** (:func:`schedule`). A replica holds its GPU for ``startup``
   seconds before it serves. Keeping the ``j``-th replica through a gap of ``g`` seconds costs
   ``g``; stopping it and starting it again costs ``startup``; so each level keeps the cheaper
   of the two for every gap (replicas present at time 0 start free). This is exact: the cost
   ``Σ m_k·len_k + startup·Σ max(0, m_k − m_{k−1})`` splits into one such problem per level.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Allocation:
    replicas: tuple[int, ...]
    """Replicas per interval."""
    misses: int
    """Requests missed with these counts (at most the budget when ``feasible``)."""
    feasible: bool
    """False when even the most replicas of every interval miss more than the budget."""


def monotone(misses: Sequence[int]) -> list[int]:
    """``misses`` made non-increasing (a running minimum): with more replicas one can always
    leave the extra ones idle, so more never does worse."""
    out: list[int] = []
    best = math.inf
    for m in misses:
        best = min(best, m)
        out.append(int(best))
    return out


def _hull_down(curve: Sequence[int], top: int, floor: int) -> list[tuple[int, int]]:
    """Vertices ``(n, misses)`` of the lower convex hull of ``curve[floor..top]``, from ``top``
    down to ``floor``."""
    pts = [(n, curve[n]) for n in range(floor, top + 1)]
    hull: list[tuple[int, int]] = []
    for p in pts:  # Andrew's monotone chain, lower hull, left to right
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) <= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    hull.reverse()
    return hull


def allocate(misses: Sequence[Sequence[int]], budget: int, floor: int = 0) -> Allocation:
    """Replicas per interval with total misses within ``budget`` and as few replicas as found.

    ``misses[k][n]`` is interval ``k``'s misses with ``n`` replicas (``n = 0 … len - 1``,
    non-increasing; beyond its end a curve stays at its last value); every interval gets at
    least ``floor`` replicas.
    """
    tops: list[int] = []
    segments: list[tuple[float, int, int, int, int]] = []
    total = 0
    for k, given in enumerate(misses):
        curve = list(given) + [given[-1]] * (floor + 1 - len(given))
        lo = floor
        least = min(curve[lo:])
        top = next(n for n in range(lo, len(curve)) if curve[n] == least)
        tops.append(top)
        total += least
        hull = _hull_down(curve, top, lo)
        for s, ((n_a, m_a), (n_b, m_b)) in enumerate(itertools.pairwise(hull)):
            saved, cost = n_a - n_b, m_b - m_a
            segments.append((cost / saved, k, s, n_b, cost))
    if total > budget:
        return Allocation(tuple(tops), total, False)
    replicas = list(tops)
    blocked: set[int] = set()
    for _, k, _, n_b, cost in sorted(segments):
        if k in blocked:
            continue
        if total + cost > budget:
            blocked.add(k)
            continue
        total += cost
        replicas[k] = n_b
    return Allocation(tuple(replicas), total, True)


@dataclass(frozen=True, slots=True)
class Schedule:
    replicas: tuple[int, ...]
    """Replicas holding a GPU per interval, gaps kept where cheaper than a restart."""
    starts: int
    """Replica starts, each costing ``startup`` seconds of GPU time."""
    replica_seconds: float
    """``Σ replicas_k · length_k + startup · starts``."""


def schedule_cost(
    replicas: Sequence[int], lengths: Sequence[float], startup: float, warm: int
) -> tuple[int, float]:
    """``(starts, replica-seconds)`` of running ``replicas[k]`` during interval ``k``, with
    ``warm`` replicas already up at time 0."""
    prev = warm
    starts = 0
    seconds = 0.0
    for m, length in zip(replicas, lengths, strict=True):
        if m > prev:
            starts += m - prev
        seconds += m * length
        prev = m
    return starts, seconds + startup * starts


def schedule(needs: Sequence[int], lengths: Sequence[float], startup: float, warm: int) -> Schedule:
    """The cheapest replica counts ``m_k >= needs[k]`` when each start costs ``startup``."""
    k_count = len(needs)
    out = [0] * k_count
    for level in range(1, max(needs, default=0) + 1):
        on = [n >= level for n in needs]
        first = on.index(True)
        last = k_count - 1 - on[::-1].index(True)
        keep = [False] * k_count
        for k in range(first, last + 1):
            keep[k] = on[k]
        if level <= warm and sum(lengths[:first]) <= startup:
            for k in range(first):
                keep[k] = True
        k = first
        while k <= last:
            if keep[k]:
                k += 1
                continue
            end = k
            while not on[end]:
                end += 1
            if sum(lengths[k:end]) <= startup:
                for g in range(k, end):
                    keep[g] = True
            k = end
        for k in range(k_count):
            out[k] += keep[k]
    starts, seconds = schedule_cost(out, lengths, startup, warm)
    return Schedule(tuple(out), starts, seconds)


# --------------------------------------------------------------------------- priced options


@dataclass(frozen=True, slots=True)
class PricedAllocation:
    choice: tuple[int, ...]
    """Per interval, the index of the option taken."""
    misses: int
    cost: float
    feasible: bool
    """False when even each interval's fewest misses exceed the budget."""


def _priced_hull(options: Sequence[tuple[float, int]]) -> list[int]:
    """Indices of the lower convex hull of the options' ``(cost, misses)`` that are on the
    cost/misses front, from the fewest misses (dearest) down to the cheapest."""
    order = sorted(range(len(options)), key=lambda i: (options[i][0], options[i][1]))
    front: list[int] = []
    for i in order:  # cheapest first: keep an option only if it misses fewer than all cheaper
        if not front or options[i][1] < options[front[-1]][1]:
            front.append(i)
    hull: list[int] = []
    for i in front:  # Andrew's monotone chain, lower hull, left to right
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = options[hull[-2]], options[hull[-1]]
            x, y = options[i]
            if (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1) <= 0:
                hull.pop()
            else:
                break
        hull.append(i)
    hull.reverse()
    return hull


def allocate_priced(
    options: Sequence[Sequence[tuple[float, int]]], budget: int
) -> PricedAllocation:
    """One option per interval, total misses within ``budget``, as cheap as found.

    ``options[k]`` are interval ``k``'s choices as ``(cost, misses)`` (a replica mix of several
    variants and what it misses). :func:`allocate` generalised to priced choices: every interval
    starts at its cheapest option of fewest misses, and then moves down its cost/misses hull
    where a step saves the most cost per extra miss, while the budget allows; the greedy solution
    of the relaxed problem, within one hull segment of the integer optimum.
    """
    choice: list[int] = []
    segments: list[tuple[float, int, int, int]] = []
    total = 0
    for k, opts in enumerate(options):
        if not opts:
            raise ValueError(f"interval {k} has no options")
        hull = _priced_hull(opts)
        choice.append(hull[0])
        total += opts[hull[0]][1]
        for a, b in itertools.pairwise(hull):
            saved, extra = opts[a][0] - opts[b][0], opts[b][1] - opts[a][1]
            segments.append((extra / saved, k, b, extra))
    if total > budget:
        cost = sum(o[c][0] for o, c in zip(options, choice, strict=True))
        return PricedAllocation(tuple(choice), total, cost, False)
    blocked: set[int] = set()
    for _, k, b, extra in sorted(segments):
        if k in blocked:
            continue
        if total + extra > budget:
            blocked.add(k)
            continue
        total += extra
        choice[k] = b
    cost = sum(o[c][0] for o, c in zip(options, choice, strict=True))
    return PricedAllocation(tuple(choice), total, cost, True)
