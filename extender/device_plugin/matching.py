"""Which pod is the kubelet starting, and which devices does it get: the device plugin's pure core.

The kubelet's ``Allocate`` names only device IDs, never the pod. The extender has already chosen
the pod's GPUs (pod annotation ``gpuscale.io/gpu-indices``), so the plugin's job is to find that
choice again and hand it out, or refuse. Everything here is plain data in, a decision out.

Device IDs. Each GPU is advertised as ``shares`` IDs ``<uuid>::<k>`` (k = 0..shares-1), as
gpushare and HAMi do, so that several pods can hold the same GPU under one resource name. The IDs
are counters for the kubelet: which IDs it picks does not decide which GPU a container gets; the
annotation does. (``GetPreferredAllocation`` asks the kubelet for IDs on the annotated GPUs, so
its own records — checkpoint, PodResources — name the right GPUs whenever the choice is clear.)

Matching. A *candidate* is a pod bound to this node, carrying the annotation, not finished, not
yet started (status), whose next GPU-requesting container (in the kubelet's order: init
containers, then app containers) asks for exactly as many devices as the request names and has
not been served yet (``served``: the plugin's own record, rebuilt after a restart from the
kubelet's PodResources API). When the kubelet's view is known (``kubelet``: the pods it runs and
how many of their GPU containers already hold our devices), a candidate must also be a pod the
kubelet knows and is at that container; this is what tells apart pods that wait side by side.

The *offer* of a candidate is what its container would get: the GPU indices of that container's
slice of the annotation and the memory per GPU; its *plan* is the offers of all its GPU
containers. If every candidate is at the same container and has the same plan, the candidates
are interchangeable: whichever pod the kubelet is starting, the container gets exactly
its own pod's choice (same devices, same share), so the annotation stays true and the extender's
accounting holds without rewriting anything; the oldest candidate is marked served. If the offers
differ, the plugin cannot know which pod this is and refuses (``ambiguous``) instead of guessing:
a wrong guess would put a pod on GPUs other than its annotation says and break the accounting.
Pods with identical requests on *different* GPUs are therefore not swapped (that would need the
annotation rewritten after the fact); with the PodResources view they never meet in one
decision, because the kubelet admits one pod at a time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

SHARE_SEPARATOR: Final = "::"
FRACTION_DIGITS: Final = 4


@dataclass(frozen=True, slots=True)
class Device:
    """A GPU this node advertises."""

    index: int
    uuid: str
    total_mib: int
    healthy: bool = True


@dataclass(frozen=True, slots=True)
class GpuContainer:
    """A container that asks for ``count`` devices of the plugin's resource.

    ``init`` marks a plain (not restartable) init container: it runs before the app containers
    and, as the kubelet does, may reuse their devices, so it gets the first ``count`` of the
    pod's GPUs; app containers and sidecars get consecutive slices."""

    name: str
    count: int
    init: bool = False


PodKey = tuple[str, str]
"""(namespace, name)."""


@dataclass(frozen=True, slots=True)
class PendingPod:
    """A pod bound to this node with the extender's choice, as read from the API."""

    namespace: str
    name: str
    uid: str
    created: float
    """creationTimestamp, epoch seconds: the kubelet admits pods in this order."""
    indices: tuple[int, ...]
    """``gpuscale.io/gpu-indices``."""
    mib_per_gpu: int | None
    """Memory per GPU the extender accounted; ``None`` for whole GPUs."""
    containers: tuple[GpuContainer, ...]
    """GPU-requesting containers in the kubelet's order (init containers first)."""
    started: bool = False
    """The pod's status shows the kubelet admitted it (it holds its devices already)."""
    placed: bool = True
    """It carries the annotation. Pods that ask for the resource without it (not placed by
    gpuscale) are candidates too, so that the kubelet starting one is never mistaken for a
    placed pod waiting beside it; they are refused."""

    @property
    def key(self) -> PodKey:
        return (self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class Offer:
    """What one container gets: GPU indices and memory per GPU (``None``: whole GPUs)."""

    indices: tuple[int, ...]
    mib_per_gpu: int | None


@dataclass(frozen=True, slots=True)
class Grant:
    """The decision to hand ``devices`` to container ``position`` of ``pod``."""

    pod: PendingPod
    position: int
    devices: tuple[Device, ...]
    mib_per_gpu: int | None
    interchangeable_with: tuple[PodKey, ...] = ()
    """Other candidates with the same offer (any of them may be the pod being started)."""

    @property
    def container(self) -> str:
        return self.pod.containers[self.position].name

    @property
    def fraction(self) -> float:
        """Share of the smallest device's memory, rounded down (1.0 for whole GPUs)."""
        if self.mib_per_gpu is None:
            return 1.0
        total = min(d.total_mib for d in self.devices)
        if total <= 0:
            return 0.0
        scale = 10**FRACTION_DIGITS
        return min(1.0, math.floor(self.mib_per_gpu * scale / total) / scale)


RefusalKind = Literal["bad-request", "no-candidate", "ambiguous", "devices-gone"]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why ``Allocate`` fails; ``pods`` are the pods the message concerns (Events go there)."""

    kind: RefusalKind
    message: str
    pods: tuple[PendingPod, ...] = ()


@dataclass(frozen=True, slots=True)
class KubeletView:
    """From the PodResources API: per pod the kubelet knows, the names of its containers that
    hold devices of the plugin's resource. The pod being admitted is known with fewer holders
    than it has GPU containers; pods the kubelet has not seen yet are absent."""

    holding: Mapping[PodKey, frozenset[str]] = field(default_factory=dict)


def device_ids(device: Device, shares: int) -> tuple[str, ...]:
    """The IDs advertised for ``device``."""
    return tuple(f"{device.uuid}{SHARE_SEPARATOR}{k}" for k in range(shares))


def uuid_of(device_id: str) -> str | None:
    """The GPU UUID in an ID this plugin advertises, or ``None`` for another form."""
    uuid, sep, share = device_id.rpartition(SHARE_SEPARATOR)
    if not sep or not uuid or not share.isdigit() or not share.isascii():
        return None
    return uuid


def offer_of(pod: PendingPod, position: int) -> Offer | None:
    """The devices container ``position`` of ``pod`` gets, or ``None`` when the pod has no
    annotation or one with fewer indices than the containers ask for."""
    if not pod.placed:
        return None
    c = pod.containers[position]
    start = 0 if c.init else sum(o.count for o in pod.containers[:position] if not o.init)
    chosen = pod.indices[start : start + c.count]
    if len(chosen) != c.count:
        return None
    return Offer(chosen, pod.mib_per_gpu)


def next_position(pod: PendingPod, served: int, kubelet: KubeletView | None) -> int:
    """Index of the next GPU container the kubelet will allocate for ``pod``: with the kubelet's
    view, the one after the last container it reports holding devices (it allocates in order;
    PodResources does not list plain init containers, hence "last", not "how many"); without
    it, the one after those this process served."""
    if kubelet is None:
        return served
    held = kubelet.holding.get(pod.key, frozenset())
    return max((i for i, c in enumerate(pod.containers) if c.name in held), default=-1) + 1


def served_from_holders(
    pods: Sequence[PendingPod], holders: Mapping[str, frozenset[str]]
) -> dict[PodKey, int]:
    """Containers served per pod, from the kubelet's record of which containers (by pod uid)
    hold the resource's devices (its checkpoint): how a restarted plugin knows what it served."""
    out: dict[PodKey, int] = {}
    for pod in pods:
        held = holders.get(pod.uid)
        if held:
            last = max((i for i, c in enumerate(pod.containers) if c.name in held), default=-1)
            out[pod.key] = last + 1
    return out


def plan_of(pod: PendingPod) -> tuple[Offer | None, ...]:
    """Every GPU container's offer: two pods with the same plan are interchangeable."""
    return tuple(offer_of(pod, i) for i in range(len(pod.containers)))


def candidates(
    pods: Sequence[PendingPod],
    count: int,
    served: Mapping[PodKey, int],
    kubelet: KubeletView | None,
) -> list[tuple[PendingPod, int]]:
    """Pods (with the container position) that may be the one the kubelet is allocating
    ``count`` devices for, oldest first. A kubelet view that knows none of them (a kubelet
    whose PodResources omits the pod it is admitting) is set aside rather than trusted to
    refuse every pod: without it the rules still never hand out another pod's choice."""
    if kubelet is not None:
        found = _candidates(pods, count, served, kubelet)
        if found:
            return found
    return _candidates(pods, count, served, None)


def _candidates(
    pods: Sequence[PendingPod],
    count: int,
    served: Mapping[PodKey, int],
    kubelet: KubeletView | None,
) -> list[tuple[PendingPod, int]]:
    out: list[tuple[PendingPod, int]] = []
    for pod in pods:
        if pod.started and kubelet is None:
            continue
        if kubelet is not None and pod.key not in kubelet.holding:
            continue
        pos = next_position(pod, served.get(pod.key, 0), kubelet)
        if pos >= len(pod.containers) or pod.containers[pos].count != count:
            continue
        out.append((pod, pos))
    # The kubelet admits one pod at a time and allocates its containers in a row, so a pod
    # with some containers served and more to go is the one being admitted.
    in_progress = [(p, pos) for p, pos in out if pos > 0]
    if in_progress:
        out = in_progress
    out.sort(key=lambda pp: (pp[0].created, pp[0].namespace, pp[0].name, pp[1]))
    return out


def _describe(pod: PendingPod, offer: Offer | None) -> str:
    if not pod.placed:
        return f"{pod.namespace}/{pod.name} (not placed by gpuscale)"
    if offer is None:
        return f"{pod.namespace}/{pod.name} (annotation too short)"
    gpus = ",".join(map(str, offer.indices))
    mem = "whole" if offer.mib_per_gpu is None else f"{offer.mib_per_gpu} MiB"
    return f"{pod.namespace}/{pod.name} (GPUs {gpus}, {mem})"


def decide(
    *,
    node: str,
    resource: str,
    requested: Sequence[str],
    devices: Sequence[Device],
    shares: int,
    pods: Sequence[PendingPod],
    served: Mapping[PodKey, int],
    kubelet: KubeletView | None,
) -> Grant | Refusal:
    """Decide one container's ``Allocate``: ``requested`` are the device IDs the kubelet chose
    (their count is what the container asks for)."""
    if not requested:
        return Refusal("bad-request", f"{resource}: Allocate named no devices")
    by_uuid = {d.uuid: d for d in devices}
    unknown = [
        i
        for i in requested
        if (u := uuid_of(i)) is None
        or u not in by_uuid
        or not 0 <= int(i.rpartition(SHARE_SEPARATOR)[2]) < shares
    ]
    if unknown:
        return Refusal(
            "bad-request",
            f"{resource}: device IDs not advertised by gpuscale on node {node}: "
            + ", ".join(sorted(unknown)[:5]),
        )
    count = len(requested)
    found = candidates(pods, count, served, kubelet)
    if not any(p.placed for p, _ in found):
        unplaced = tuple(p for p, _ in found)
        named = "; ".join(_describe(p, None) for p in unplaced[:6])
        return Refusal(
            "no-candidate",
            f"no pod bound to node {node} with annotation gpuscale.io/gpu-indices waits for "
            f"{count} device(s) of {resource}{f' (waiting: {named})' if named else ''}: pods"
            f" that ask for {resource} on this node must be placed by the gpuscale scheduler"
            " (schedulerName: gpuscale); refusing rather than handing out GPUs the extender did"
            " not choose",
            unplaced,
        )
    offers = {(p.key, pos): offer_of(p, pos) for p, pos in found}
    plans = {(pos, plan_of(p)) for p, pos in found}
    if len(plans) > 1 or None in offers.values():
        listed = "; ".join(_describe(p, offers[(p.key, pos)]) for p, pos in found[:6])
        more = f" and {len(found) - 6} more" if len(found) > 6 else ""
        return Refusal(
            "ambiguous",
            f"cannot tell which of {len(found)} pods bound to node {node} the kubelet is"
            f" starting ({listed}{more}): their GPUs differ and Allocate names no pod",
            tuple(p for p, _ in found),
        )
    pod, pos = found[0]
    offer = offers[(pod.key, pos)]
    assert offer is not None
    by_index = {d.index: d for d in devices}
    gone = [i for i in offer.indices if i not in by_index]
    sick = [i for i in offer.indices if i in by_index and not by_index[i].healthy]
    if gone or sick:
        parts = []
        if gone:
            parts.append(f"GPU(s) {','.join(map(str, gone))} no longer on the node")
        if sick:
            parts.append(f"GPU(s) {','.join(map(str, sick))} unhealthy")
        return Refusal(
            "devices-gone",
            f"pod {pod.namespace}/{pod.name} was placed on GPUs "
            f"{','.join(map(str, offer.indices))} of node {node}, but {' and '.join(parts)};"
            " refusing rather than handing out other GPUs",
            tuple(p for p, _ in found),
        )
    return Grant(
        pod=pod,
        position=pos,
        devices=tuple(by_index[i] for i in offer.indices),
        mib_per_gpu=offer.mib_per_gpu,
        interchangeable_with=tuple(p.key for p, _ in found[1:]),
    )


def preferred(
    *,
    available: Sequence[str],
    must_include: Sequence[str],
    size: int,
    devices: Sequence[Device],
    pods: Sequence[PendingPod],
    served: Mapping[PodKey, int],
    kubelet: KubeletView | None,
) -> tuple[str, ...]:
    """IDs to suggest for ``GetPreferredAllocation``: when the candidates for ``size`` devices
    agree on one offer, one available ID on each of its GPUs; otherwise the kubelet's own order.
    Always ``size`` IDs when ``available`` has them, ``must_include`` first."""
    chosen: list[str] = list(dict.fromkeys(must_include))[:size]
    found = candidates(pods, size, served, kubelet)
    plans = {(pos, plan_of(p)) for p, pos in found}
    if len(plans) == 1 and (offer := offer_of(*found[0])) is not None:
        uuids = {d.index: d.uuid for d in devices}
        taken = {uuid_of(i) for i in chosen}
        for index in offer.indices:
            u = uuids.get(index)
            if u is None or u in taken or len(chosen) >= size:
                continue
            for i in available:
                if uuid_of(i) == u and i not in chosen:
                    chosen.append(i)
                    taken.add(u)
                    break
    for i in available:
        if len(chosen) >= size:
            break
        if i not in chosen:
            chosen.append(i)
    return tuple(chosen)
