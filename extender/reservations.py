"""Reservations: memory promised to a pod that measurements and the pod list do not show yet.

Between bind and the moment a pod's memory appears (model loading takes minutes), the free memory
a measurement reports is a lie. A reservation holds the chosen devices' memory for the pod until
one of these happens, so two pods are never placed into the same free memory:

- the pod appears in the pod list bound to the node (request accounting then counts it);
- a measurement taken after the reservation shows the memory in use on every chosen device;
- the pod is gone (deleted or finished);
- the TTL passes.

A book of reservations is an immutable mapping ``pod key → Reservation``; functions return new
books. ``now`` is always passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from extender.objects import GpuReport

Book = Mapping[str, "Reservation"]
EMPTY: Book = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Reservation:
    """``mib_per_gpu`` of ``None`` reserves the whole devices (a whole-GPU pod).

    ``baseline_used`` is the measured use of each chosen device when the reservation was made
    (aligned with ``indices``), or ``None`` when the node had no measurement.
    """

    pod_key: str
    uid: str
    node: str
    indices: tuple[int, ...]
    mib_per_gpu: int | None
    created: float
    expires: float
    baseline_used: tuple[int, ...] | None = None


def reserve(book: Book, r: Reservation) -> Book:
    """Add (or replace) the reservation for ``r.pod_key``."""
    return MappingProxyType({**book, r.pod_key: r})


def release(book: Book, pod_key: str) -> Book:
    if pod_key not in book:
        return book
    return MappingProxyType({k: v for k, v in book.items() if k != pod_key})


def expire(book: Book, now: float) -> Book:
    """Drop reservations whose TTL has passed."""
    if all(r.expires > now for r in book.values()):
        return book
    return MappingProxyType({k: v for k, v in book.items() if v.expires > now})


def on_node(book: Book, node: str) -> tuple[Reservation, ...]:
    return tuple(r for r in book.values() if r.node == node)


def measured(r: Reservation, report: GpuReport) -> bool:
    """True when ``report``, taken after ``r`` was made, shows its memory in use on every device.

    Whole-GPU reservations are never settled this way (a whole-GPU pod may use little memory);
    the pod list or the TTL releases them.
    """
    if report.time <= r.created or r.baseline_used is None or r.mib_per_gpu is None:
        return False
    used = {d.index: (d.used_mib, d.total_mib) for d in report.devices}
    for index, before in zip(r.indices, r.baseline_used, strict=True):
        if index not in used:
            return False
        now_used, total = used[index]
        if now_used < min(total, before + r.mib_per_gpu):
            return False
    return True


def settle(
    book: Book,
    *,
    node: str,
    pods_on_node: Iterable[str] = (),
    report: GpuReport | None = None,
) -> Book:
    """Release the reservations on ``node`` that the pod list or ``report`` now account for.

    ``pods_on_node`` are the keys of pods the pod list shows bound to ``node``.
    """
    seen = set(pods_on_node)
    keep = {
        k: r
        for k, r in book.items()
        if r.node != node or not (k in seen or (report is not None and measured(r, report)))
    }
    if len(keep) == len(book):
        return book
    return MappingProxyType(keep)
