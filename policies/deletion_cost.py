"""Which pods to mark cheap to delete, so that a scale-down removes idle replicas first.

When a Deployment's count goes down, its ReplicaSet deletes the pods with the lowest
``controller.kubernetes.io/pod-deletion-cost`` first (after unscheduled and not-ready ones). The
controller keeps that annotation at the pod's requests in flight (running + waiting): an idle
replica costs 0 and goes first, a replica in the middle of long generations goes last, so a
scale-down cuts as few generations as it can. (It is a preference, not a guarantee: the pod that
goes still needs a ``preStop`` drain to finish what it runs; ``deploy/examples/workloads/``.)

Costs are coarse, ``0`` for idle and then the bit length of the count (1; 2–3; 4–7; …), because
every change is a pod patch: a busy replica's count moves every tick, its bucket rarely. Only
costs that differ from what was last written are written, at most ``most`` per tick, the ones
that matter most first: to or from idle (which pod a scale-down picks), then the largest moves.
Pure: the controller does the queries and the patches, the simulator can pick victims with it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"


def cost(requests: float) -> int:
    """The deletion cost of a pod with ``requests`` in flight (0: idle, or unknown)."""
    if not math.isfinite(requests) or requests < 0.5:
        return 0
    return round(requests).bit_length()


@dataclass(frozen=True, slots=True)
class Write:
    """Set ``pod``'s deletion cost to ``cost``."""

    pod: str
    cost: int


def plan(observed: Mapping[str, float], written: Mapping[str, int], most: int) -> tuple[Write, ...]:
    """The writes for this tick: pods in ``observed`` whose cost is not the one ``written``.

    ``written`` is what the controller last wrote (a pod it never wrote counts as unknown and
    is written). Idle transitions go first, then the largest changes, then by name.
    """
    changes: list[tuple[int, int, str, int]] = []
    for pod, requests in observed.items():
        new = cost(requests)
        old = written.get(pod)
        if old == new:
            continue
        idle_edge = 0 if new == 0 or old is None or old == 0 else 1
        changes.append((idle_edge, -abs(new - (old or 0)), pod, new))
    changes.sort()
    return tuple(Write(pod, new) for _, _, pod, new in changes[: max(most, 0)])
