"""The openb replay with departures: pods arrive and leave at their trace times.

The published protocol (:mod:`simulations.placement.replay`) never removes a pod. Here each pod of
the trace arrives at ``creation_time / compress`` and, once placed, runs for its traced run time
``deletion_time - creation_time`` (not compressed). Compressing arrivals and not run times
multiplies the offered load by about ``compress``: the openb lists cover 150 days of one team's
pods on a cluster of 6,212 GPUs, which on its own loads that cluster to about 1%. ``copies``
replays each pod that many times (the copies arrive together), so the offered load can pass
the cluster's capacity.

A pod that fits nowhere waits. kube-scheduler retries unschedulable pods when the cluster
changes; here every departure retries the waiting pods in arrival order. Only the node the pod
left has changed since a waiting pod last failed, so that node is the only one it can newly fit
on and the retry checks it alone (with the same verdict, affinity and memo as a fresh arrival).

Reported per run: allocation (placed GPU thousandths / 1000 × GPUs) over time, its mean over
the arrival window, the share of GPU pods that waited, p50/p99 of their waits (replay seconds),
and the GPU pods still waiting when the last pod has left or arrived.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from extender.scoring import Strategy
from simulations.placement.openb import MILLI, OpenbNode, OpenbPod
from simulations.placement.replay import (
    Judge,
    PlacementError,
    ReplayCluster,
    ReplayConfig,
    choose_node,
)

COMPRESS: Final = 1000.0
"""Default arrival compression: 150 days of arrivals in about 3.6 hours, run times as traced."""
COPIES: Final = 3
"""Default copies of each trace pod (the default list alone asks for 98% of the GPUs; three
copies bring the pods present to about 130% of the GPUs at the end of the arrivals)."""
SAMPLES: Final = 200
"""Points of the allocation-over-time curve, evenly spaced over the arrival window."""

_LEAVE, _ARRIVE = 0, 1
"""Event order at equal times: capacity frees before new pods are tried."""


@dataclass(frozen=True, slots=True)
class DeparturesConfig:
    """How to replay with departures."""

    compress: float = COMPRESS
    """Arrival times are ``creation_time / compress``; run times are as traced."""
    copies: int = COPIES
    """Each pod of the trace arrives this many times."""
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    """GPU memory per model, node selection and the seed (``replay.seed``)."""


@dataclass(frozen=True, slots=True)
class DeparturesResult:
    """One replay with departures of one trace and one strategy."""

    trace: str
    scoring: str
    times: tuple[float, ...]
    """Sample times (replay seconds) over the arrival window."""
    allocated: tuple[float, ...]
    """Allocated share of GPU capacity at each sample time."""
    offered: tuple[float, ...]
    """GPUs asked for by pods present (placed or waiting) over capacity, at each sample time."""
    gpu_pods: int
    waited: int
    """GPU pods not placed on arrival."""
    wait_p50: float | None
    wait_p99: float | None
    """Waits of the GPU pods that waited and were placed, replay seconds."""
    never_placed: int
    """GPU pods still waiting when nothing was left to free capacity."""
    seconds: float

    @property
    def waited_share(self) -> float:
        return self.waited / self.gpu_pods if self.gpu_pods else 0.0

    @property
    def allocated_peak(self) -> float:
        return max(self.allocated, default=0.0)

    @property
    def allocated_oversubscribed(self) -> float | None:
        """Mean allocated share over the samples where pods present asked for more than the
        cluster's GPUs (``None`` if they never did): how much of the demand the strategy fits
        when everything cannot fit."""
        got = [a for a, o in zip(self.allocated, self.offered, strict=True) if o >= 1.0]
        return float(np.mean(got)) if got else None


def _timed(pods: Sequence[OpenbPod]) -> list[OpenbPod]:
    missing = [p.name for p in pods if p.creation_time is None or p.deletion_time is None]
    if missing:
        raise PlacementError(
            f"departures need creation_time and deletion_time; {len(missing)} pod(s) have none "
            f"(first: {missing[0]})"
        )
    return sorted(pods, key=lambda p: (p.creation_time or 0, p.name))


def quantile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (nearest rank), ``None`` for no values."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def replay_departures(
    nodes: Sequence[OpenbNode],
    pods: Sequence[OpenbPod],
    strategy: Strategy,
    *,
    config: DeparturesConfig = DeparturesConfig(),
    trace: str = "",
    record: list[tuple[str, str, float, float]] | None = None,
) -> DeparturesResult:
    """Arrivals and departures at trace times; ``record`` receives ``(pod, node, arrived,
    placed)`` for every placement."""
    if config.compress <= 0:
        raise PlacementError("compress must be positive")
    if config.copies < 1:
        raise PlacementError("copies must be at least 1")
    start = time.perf_counter()
    ordered = _timed(pods)
    rng = random.Random(config.replay.seed * 7919 + 1)
    judge = Judge(strategy)
    cluster = ReplayCluster.build(nodes, judge, config.replay.gpu_memory_mib)
    capacity = sum(n.gpus for n in nodes)
    if capacity == 0:
        raise PlacementError("the node list has no GPUs")
    denom = capacity * MILLI
    host_aware = bool(getattr(strategy, "host_aware", False))
    selection = config.replay.selection

    events: list[tuple[float, int, int]] = []
    arrivals: list[OpenbPod] = []
    for p in ordered:
        for _ in range(config.copies):
            k = len(arrivals)
            arrivals.append(p)
            heapq.heappush(events, ((p.creation_time or 0) / config.compress, _ARRIVE, k))
    last_arrival = max(t for t, _, _ in events)
    to_arrive = len(arrivals)
    sample_at = [last_arrival * (i + 1) / SAMPLES for i in range(SAMPLES)]
    placed_on: dict[int, tuple[int, tuple[int, ...]]] = {}
    arrived_at: dict[int, float] = {}
    waiting: list[int] = []
    waits: list[float] = []
    waited = 0
    placed_milli = 0
    present_milli = 0
    curve: list[float] = []
    offered: list[float] = []
    s = 0

    def candidates(pod: OpenbPod) -> tuple[int, tuple[int, ...]] | None:
        return choose_node(cluster, pod, strategy, rng, selection)

    def fits_on(pod: OpenbPod, i: int) -> tuple[int, ...] | None:
        allowed = cluster.allowed(pod.gpu_spec)
        if allowed is not None and not allowed[i]:
            return None
        if pod.num_gpu == 0 and not host_aware:
            la = cluster.least_allocated(pod)
            return () if np.isfinite(la[i]) else None
        v = judge.verdict(
            int(cluster.sid[i]), int(cluster.cpu_free[i]), int(cluster.mem_free[i]), pod
        )
        return None if v is None else v[1]

    def place(k: int, i: int, chosen: tuple[int, ...], now: float) -> None:
        nonlocal placed_milli
        pod = arrivals[k]
        cluster.place(i, pod, chosen)
        placed_on[k] = (i, chosen)
        placed_milli += pod.gpu_total_milli
        runtime = (pod.deletion_time or 0) - (pod.creation_time or 0)
        heapq.heappush(events, (now + runtime, _LEAVE, k))
        if record is not None:
            record.append((pod.name, nodes[i].name, arrived_at[k], now))
        if now > arrived_at[k] and pod.num_gpu > 0:
            waits.append(now - arrived_at[k])

    while events:
        now, kind, k = heapq.heappop(events)
        while s < len(sample_at) and sample_at[s] < now:
            curve.append(placed_milli / denom)
            offered.append(present_milli / denom)
            s += 1
        pod = arrivals[k]
        if kind == _ARRIVE:
            to_arrive -= 1
            arrived_at[k] = now
            present_milli += pod.gpu_total_milli
            found = candidates(pod)
            if found is None:
                waiting.append(k)
                waited += pod.num_gpu > 0
            else:
                place(k, found[0], found[1], now)
            continue
        i, chosen = placed_on.pop(k)
        cluster.remove(i, pod, chosen)
        placed_milli -= pod.gpu_total_milli
        present_milli -= pod.gpu_total_milli
        still: list[int] = []
        for w in waiting:
            got = fits_on(arrivals[w], i)
            if got is None:
                still.append(w)
            else:
                place(w, i, got, now)
        waiting = still
        if not placed_on and not to_arrive:
            break  # nothing left to free capacity for the pods still waiting
    while s < len(sample_at):
        curve.append(placed_milli / denom)
        offered.append(present_milli / denom)
        s += 1
    gpu_pods = sum(1 for p in arrivals if p.num_gpu > 0)
    return DeparturesResult(
        trace=trace,
        scoring=strategy.name,
        times=tuple(sample_at),
        allocated=tuple(curve),
        offered=tuple(offered),
        gpu_pods=gpu_pods,
        waited=waited,
        wait_p50=quantile(waits, 0.5),
        wait_p99=quantile(waits, 0.99),
        never_placed=sum(1 for w in waiting if arrivals[w].num_gpu > 0),
        seconds=time.perf_counter() - start,
    )


def _share(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f} s"


def departures_table(results: Sequence[DeparturesResult]) -> str:
    """The terminal (and README) table of a departures replay."""
    rows = [
        "| trace | scoring | allocated while oversubscribed | allocated, peak | peak asked | "
        "GPU pods waited | wait p50 | wait p99 | never placed |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        rows.append(
            f"| {r.trace} | {r.scoring} | {_share(r.allocated_oversubscribed)} | "
            f"{100 * r.allocated_peak:.2f}% | {100 * max(r.offered, default=0.0):.0f}% | "
            f"{100 * r.waited_share:.2f}% "
            f"({r.waited}/{r.gpu_pods}) | {_pct(r.wait_p50)} | {_pct(r.wait_p99)} | "
            f"{r.never_placed} |"
        )
    return "\n".join(rows)


def departures_json(
    results: Sequence[DeparturesResult], config: DeparturesConfig
) -> dict[str, object]:
    """``departures.json``: the configuration and per trace × scoring the figures and curves."""
    return {
        "protocol": (
            f"arrivals at creation_time / {config.compress:g}, run times as traced, "
            f"{config.copies} cop{'y' if config.copies == 1 else 'ies'} of each pod; waiting "
            "pods retried in arrival order on every departure"
        ),
        "compress": config.compress,
        "copies": config.copies,
        "selection": config.replay.selection,
        "seed": config.replay.seed,
        "results": [
            {
                "trace": r.trace,
                "scoring": r.scoring,
                "allocated_oversubscribed": None
                if r.allocated_oversubscribed is None
                else round(r.allocated_oversubscribed, 6),
                "allocated_peak": round(r.allocated_peak, 6),
                "gpu_pods": r.gpu_pods,
                "waited": r.waited,
                "waited_share": round(r.waited_share, 6),
                "wait_p50_s": r.wait_p50,
                "wait_p99_s": r.wait_p99,
                "never_placed": r.never_placed,
                "seconds": round(r.seconds, 3),
                "curve": {
                    "time_s": [round(t, 3) for t in r.times],
                    "allocated": [round(a, 6) for a in r.allocated],
                    "offered": [round(o, 6) for o in r.offered],
                },
            }
            for r in results
        ],
    }


def departures_curve_csv(results: Sequence[DeparturesResult]) -> str:
    """Long format: trace, scoring, time (replay seconds), allocated and asked-for shares."""
    lines = ["trace,scoring,time_s,allocated,offered"]
    for r in results:
        for t, a, o in zip(r.times, r.allocated, r.offered, strict=True):
            lines.append(f"{r.trace},{r.scoring},{t:.3f},{a:.6f},{o:.6f}")
    return "\n".join(lines) + "\n"
