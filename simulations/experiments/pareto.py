"""Pareto frontiers of SLO attainment against GPU-hours, and the cost of a target attainment.

A configuration is worth keeping only if no other one reaches at least its attainment for at
most its GPU-hours. The frontier of a family is its configurations that survive, cheapest
first; along it both GPU-hours and attainment rise strictly.

``gpu_hours_at`` reads the frontier as a piecewise-linear curve: between two neighbouring
frontier points, alternating the two configurations in the right proportion reaches every
attainment in between, in expectation, for the interpolated GPU-hours. Below the cheapest
frontier point nothing is known, so a target it already meets costs what it costs; a target
above the best attainment is out of reach (``None``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Point:
    """One configuration's mean over seeds."""

    attainment: float
    gpu_hours: float


def frontier(points: Sequence[Point]) -> list[int]:
    """Indices of the non-dominated points, by GPU-hours ascending (attainment strictly rising).

    Points with a non-finite coordinate are left out. Of equal points the first one is kept.
    """
    usable = [
        i
        for i, p in enumerate(points)
        if math.isfinite(p.attainment) and math.isfinite(p.gpu_hours)
    ]
    usable.sort(key=lambda i: (points[i].gpu_hours, -points[i].attainment, i))
    out: list[int] = []
    best = -math.inf
    for i in usable:
        if points[i].attainment > best:
            out.append(i)
            best = points[i].attainment
    return out


def gpu_hours_at(curve: Sequence[Point], target: float) -> float | None:
    """GPU-hours needed for ``target`` attainment on a frontier (as :func:`frontier` orders it).

    ``None`` when no point reaches the target.
    """
    if not curve or curve[-1].attainment < target:
        return None
    if curve[0].attainment >= target:
        return curve[0].gpu_hours
    for lo, hi in itertools.pairwise(curve):
        if lo.attainment < target <= hi.attainment:
            share = (target - lo.attainment) / (hi.attainment - lo.attainment)
            return lo.gpu_hours + share * (hi.gpu_hours - lo.gpu_hours)
    return None  # pragma: no cover - unreachable for a frontier ordered as documented
