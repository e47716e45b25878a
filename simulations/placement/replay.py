"""Replay the openb GPU cluster trace through the extender's placement code.

Protocol of the published evaluation (Weng et al., USENIX ATC 2023): pods arrive one by one with
no departures until the GPUs they request reach ``target_load`` (130%) of the cluster's GPU
capacity; a pod that fits on no node is skipped. For each repeat the pod list is first brought to
the target load by sampling trace pods with replacement (or dropping random ones when the trace is
larger), then shuffled, all from one seed. The figure of merit is the share of the cluster's GPU
capacity allocated, recorded as arrivals grow.

Units. ``gpu_milli`` is a share of one GPU. The extender works in MiB, so a pod's per-GPU need on
a node is ``gpu_milli × (that node's GPU memory) // 1000`` MiB (whole GPUs for ``gpu_milli`` 1000
and for multi-GPU pods), with per-model memory from ``gpu_memory_mib``. Allocation is counted in
the paper's unit: placed GPU thousandths over 1000 × GPUs, so it is comparable to the published
figures; the share of GPU memory allocated is reported beside it.

Every placement decision goes through the extender's pure code: :func:`extender.fitting.fits`
for the CPU, memory and GPU fit, the extender's affinity code for a ``gpu_spec``, the scoring
strategy's ``choose``/``score`` for device choice and node score, and (with
``selection="scheduler"``) :func:`extender.scoring.combine` for the 0..10 scores kube-scheduler
sees. Results are memoised
on a node's GPU state, which many nodes share, so a replay of ~9,000 pods over 1,213 nodes takes
seconds.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from extender.fit import DeviceState, NodeGpus
from extender.fitting import PodFit, fits
from extender.fragmentation import Fragmentation, Workload, per_gpu_need, with_host
from extender.objects import GpuNeed
from extender.scoring import MAX_EXTENDER_PRIORITY, Strategy, combine, get_strategy
from simulations.placement import dra, gpuspec
from simulations.placement.openb import MILLI, OpenbNode, OpenbPod

DEFAULT_GPU_MEMORY_MIB: Final[Mapping[str, int]] = {
    "V100M16": 16 * 1024,
    "V100M32": 32 * 1024,
    "T4": 16 * 1024,
    "P100": 16 * 1024,
    "A10": 24 * 1024,
    "G2": 16 * 1024,
    "G3": 32 * 1024,
}
"""GPU memory per model. G2 and G3 are undisclosed; because needs are shares of each card, the
allocation share does not depend on these values (up to MiB rounding)."""

TARGET_LOAD: Final = 1.3
CURVE_STEP: Final = 0.01
Selection = Literal["exact", "scheduler"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


class PlacementError(ValueError):
    """Inputs the replay cannot use (an unknown GPU model, an empty node list...)."""


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    """How to replay: load target, repeats and seeds, GPU memory per model, node selection."""

    target_load: float = TARGET_LOAD
    """Stop when requested GPUs reach this multiple of cluster GPU capacity."""
    repeats: int = 10
    """Independent runs, seeds ``seed .. seed + repeats - 1``."""
    seed: int = 42
    sample: bool = True
    """Sample pods to the target load and shuffle (the paper); else trace order, no resampling."""
    gpu_memory_mib: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_GPU_MEMORY_MIB))
    selection: Selection = "scheduler"
    """``scheduler`` (default): what kube-scheduler does with the extender's answer, the best
    of its integer 0..10 scores, ties at random; ``exact``: the node with the highest strategy
    score (ties at random), for analysis."""
    curve_step: float = CURVE_STEP


@dataclass(frozen=True, slots=True)
class RunResult:
    """One replay of one trace with one strategy and one seed."""

    trace: str
    scoring: str
    seed: int
    arrived: tuple[float, ...]
    """Grid of arrived load (requested GPUs / capacity)."""
    allocated: tuple[float, ...]
    """Allocated share of GPU capacity at each grid point."""
    pods_arrived: int
    pods_placed: int
    pods_skipped: int
    gpu_pods_skipped: int
    capacity_gpus: int
    allocated_gpus: float
    """GPU equivalents allocated at the end (placed thousandths / 1000)."""
    idle_gpus: int
    """GPUs with nothing on them at the end."""
    memory_share: float
    """Allocated GPU memory over total GPU memory at the end."""
    seconds: float
    holes_too_small: float = 0.0
    """GPU equivalents free (free memory over total) on partly used GPUs that no turned-away
    pod's share fits: none of the pods refused could have used them."""
    holes_host_blocked: float = 0.0
    """The same where a turned-away pod's share fits the GPU's free memory but the pod was
    still refused there: the node's CPU or memory ran out, or its GPU model was not in the
    pod's ``gpu_spec``. With :attr:`idle_gpus` these account for :attr:`unallocated_gpus` (a
    share's MiB are rounded down, so they can add up to a hair more)."""

    @property
    def unallocated_gpus(self) -> float:
        return self.capacity_gpus - self.allocated_gpus

    def at(self, load: float) -> float:
        """Allocated share when ``load`` had arrived (the last grid point at or below it)."""
        best = 0.0
        for x, y in zip(self.arrived, self.allocated, strict=True):
            if x <= load + 1e-9:
                best = y
        return best


def workload_of(pods: Sequence[OpenbPod]) -> Workload:
    """The GPU shapes of a trace, for the fragmentation strategy."""
    return Workload.estimate(_shape_key(p) for p in pods)


def _shape_key(p: OpenbPod) -> tuple[int, int | None, int | None, int, int]:
    share = p.gpu_milli if p.num_gpu == 1 and p.gpu_milli < MILLI else None
    return (p.num_gpu, share, None, p.cpu_milli, p.memory_mib)


def make_strategy(name: str, pods: Sequence[OpenbPod]) -> Strategy:
    """The extender's strategy ``name``; ``fragmentation`` learns the trace's workload.
    ``dra-upstream`` and ``dra-<strategy>`` replay in DRA form (:mod:`.dra`)."""
    if name == dra.UPSTREAM:
        return dra.AllocatorDevices(None)
    if name.startswith(dra.PREFIX):
        return dra.AllocatorDevices(make_strategy(name.removeprefix(dra.PREFIX), pods))
    if name == "fragmentation":
        return Fragmentation(workload=workload_of(pods))
    return get_strategy(name)


def sample_pods(
    pods: Sequence[OpenbPod], capacity_gpus: int, target_load: float, rng: random.Random
) -> list[OpenbPod]:
    """Bring the pod list to ``target_load`` × capacity and shuffle it (the paper's tuning).

    Too few: append pods drawn with replacement from the trace while the total stays within the
    target. Too many: drop random pods until it does.
    """
    target = target_load * capacity_gpus * MILLI
    out = list(pods)
    total = sum(p.gpu_total_milli for p in out)
    gpu_pods = [p for p in pods if p.num_gpu > 0]
    if total < target and gpu_pods:
        while True:
            p = pods[rng.randrange(len(pods))]
            if total + p.gpu_total_milli > target:
                break
            out.append(p)
            total += p.gpu_total_milli
    while total > target and out:
        p = out.pop(rng.randrange(len(out)))
        total -= p.gpu_total_milli
    rng.shuffle(out)
    return out


def trace_order(pods: Sequence[OpenbPod], capacity_gpus: int, target_load: float) -> list[OpenbPod]:
    """Trace order, cut where requested GPUs would pass the target load."""
    target = target_load * capacity_gpus * MILLI
    out: list[OpenbPod] = []
    total = 0
    for p in pods:
        if total + p.gpu_total_milli > target:
            break
        out.append(p)
        total += p.gpu_total_milli
    return out


class _GpuStates:
    """Interned GPU states: every distinct device state of a node gets a small integer id."""

    def __init__(self) -> None:
        self.ids: dict[tuple[tuple[int, int, bool], ...], int] = {}
        self.gpus: list[NodeGpus] = []

    def intern(self, devs: tuple[tuple[int, int, bool], ...]) -> int:
        found = self.ids.get(devs)
        if found is not None:
            return found
        sid = len(self.gpus)
        self.ids[devs] = sid
        self.gpus.append(
            NodeGpus(
                devices=tuple(
                    DeviceState(index=i, total_mib=t, free_mib=f, idle=idle)
                    for i, (t, f, idle) in enumerate(devs)
                ),
                source="accounting",
            )
        )
        return sid


@dataclass(frozen=True, slots=True)
class _Free:
    """A node state as :func:`extender.fitting.fits` reads it: free CPU and memory, GPU state.
    Labels are left out (a ``gpu_spec``'s affinity is decided per label set, see
    :meth:`ReplayCluster.allowed`) and the trace's nodes carry no taints."""

    allocatable_milli_cpu: int
    allocatable_memory: int
    state: NodeGpus
    name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[()] = ()

    def requested(self, name: str) -> tuple[int, int]:
        return 0, 0

    def gpus(self, name: str, now: float) -> NodeGpus:
        return self.state


Verdict = tuple[float, tuple[int, ...]] | None
"""Score and devices of a pod on a node, or ``None`` when it does not fit."""


class Judge:
    """The extender's verdict for a pod shape on a node state, computed once per distinct
    (GPU state, free CPU, free memory, pod shape)."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy
        self.states = _GpuStates()
        self.memo: dict[tuple[int, int, int, tuple[int, int, int, int]], Verdict] = {}

    def verdict(self, sid: int, cpu_free: int, mem_free: int, pod: OpenbPod) -> Verdict:
        key = (sid, cpu_free, mem_free, pod.shape)
        if key in self.memo:
            return self.memo[key]
        result: Verdict = None
        gpus = self.states.gpus[sid]
        if gpus.devices or pod.num_gpu == 0:
            need = need_on(gpus.devices[0].total_mib if gpus.devices else 0, pod)
            fit = PodFit(milli_cpu=pod.cpu_milli, memory=pod.memory_mib, need=need)
            free = _Free(cpu_free, mem_free, gpus)
            misfit = fits(fit, free, free, 0.0)
            if misfit is None:
                host_gpus, host_need = with_host(
                    gpus,
                    need,
                    milli_cpu_free=cpu_free,
                    memory_free=mem_free,
                    milli_cpu=pod.cpu_milli,
                    memory=pod.memory_mib,
                )
                chosen = self.strategy.choose(host_gpus, host_need)
                if chosen is not None:
                    result = (self.strategy.score(host_gpus, host_need, chosen), chosen)
        self.memo[key] = result
        return result


def need_on(total_mib: int, pod: OpenbPod) -> GpuNeed:
    """The extender's GPU need for ``pod`` on a card of ``total_mib`` (trace shares scaled)."""
    share = pod.gpu_milli if pod.num_gpu == 1 else MILLI
    mib = per_gpu_need(total_mib, share_milli=share, mib_per_gpu=None)
    return GpuNeed(count=pod.num_gpu, mib_per_gpu=mib)


class _ShapeScores:
    """Per node, the verdict for one pod shape, recomputed only for nodes changed since."""

    __slots__ = ("chosen", "score", "seen")

    def __init__(self, n: int) -> None:
        self.score: FloatArray = np.full(n, -np.inf)
        self.seen: IntArray = np.full(n, -1, dtype=np.int64)
        self.chosen: list[tuple[int, ...]] = [()] * n


@dataclass(slots=True)
class ReplayCluster:
    nodes: Sequence[OpenbNode]
    judge: Judge
    devs: list[list[tuple[int, int, bool]]]
    sid: IntArray
    cpu_free: IntArray
    mem_free: IntArray
    cpu_alloc: IntArray
    mem_alloc: IntArray
    version: IntArray
    shapes: dict[tuple[int, int, int, int], _ShapeScores] = field(default_factory=dict)
    allowed_by_spec: dict[tuple[str, ...], npt.NDArray[np.bool_]] = field(default_factory=dict)

    @classmethod
    def build(
        cls, nodes: Sequence[OpenbNode], judge: Judge, gpu_memory: Mapping[str, int]
    ) -> ReplayCluster:
        devs: list[list[tuple[int, int, bool]]] = []
        for n in nodes:
            if n.gpus > 0 and n.model not in gpu_memory:
                known = ", ".join(sorted(gpu_memory))
                raise PlacementError(
                    f"node {n.name}: GPU model {n.model!r} has no memory size (known: {known}); "
                    f"pass --gpu-memory {n.model}=MiB"
                )
            total = gpu_memory.get(n.model, 0)
            devs.append([(total, total, True)] * n.gpus)
        cpu = np.array([n.cpu_milli for n in nodes], dtype=np.int64)
        mem = np.array([n.memory_mib for n in nodes], dtype=np.int64)
        return cls(
            nodes=nodes,
            judge=judge,
            devs=devs,
            sid=np.array([judge.states.intern(tuple(d)) for d in devs], dtype=np.int64),
            cpu_free=cpu.copy(),
            mem_free=mem.copy(),
            cpu_alloc=cpu,
            mem_alloc=mem,
            version=np.zeros(len(nodes), dtype=np.int64),
        )

    def allowed(self, spec: tuple[str, ...]) -> npt.NDArray[np.bool_] | None:
        """Nodes whose labels satisfy the required node affinity of ``gpu_spec`` = ``spec``,
        decided by the extender's affinity code once per distinct label set; ``None``: all."""
        if not spec:
            return None
        hit = self.allowed_by_spec.get(spec)
        if hit is None:
            rule = gpuspec.compiled(spec)
            by_labels: dict[tuple[tuple[str, str], ...], bool] = {}
            ok = np.zeros(len(self.nodes), dtype=bool)
            for i, n in enumerate(self.nodes):
                labels = gpuspec.node_labels(n)
                key = tuple(sorted(labels.items()))
                if key not in by_labels:
                    by_labels[key] = rule.matches(labels, n.name)
                ok[i] = by_labels[key]
            hit = self.allowed_by_spec[spec] = ok
        return hit

    def gpu_scores(self, pod: OpenbPod) -> _ShapeScores:
        """Verdicts of ``pod``'s shape on every node, brought up to date."""
        cache = self.shapes.get(pod.shape)
        if cache is None:
            cache = self.shapes[pod.shape] = _ShapeScores(len(self.nodes))
        stale = np.flatnonzero(cache.seen != self.version)
        verdict = self.judge.verdict
        for i in stale.tolist():
            v = verdict(int(self.sid[i]), int(self.cpu_free[i]), int(self.mem_free[i]), pod)
            if v is None:
                cache.score[i] = -np.inf
            else:
                cache.score[i] = v[0]
                cache.chosen[i] = v[1]
        cache.seen[stale] = self.version[stale]
        return cache

    def least_allocated(self, pod: OpenbPod) -> npt.NDArray[np.float64]:
        """kube-scheduler's LeastAllocated score (CPU and memory, equal weights) where the pod's
        CPU and memory fit; ``-inf`` elsewhere."""
        cpu_left = self.cpu_free - pod.cpu_milli
        mem_left = self.mem_free - pod.memory_mib
        ok = ((pod.cpu_milli == 0) | (cpu_left >= 0)) & ((pod.memory_mib == 0) | (mem_left >= 0))
        score = (
            np.maximum(cpu_left, 0) / np.maximum(self.cpu_alloc, 1)
            + np.maximum(mem_left, 0) / np.maximum(self.mem_alloc, 1)
        ) / 2
        out: FloatArray = np.where(ok, score, -np.inf)
        return out

    def place(self, i: int, pod: OpenbPod, chosen: tuple[int, ...]) -> int:
        """Bind ``pod`` to node ``i`` on ``chosen`` devices; returns the GPU MiB it takes."""
        self.cpu_free[i] -= pod.cpu_milli
        self.mem_free[i] -= pod.memory_mib
        self.version[i] += 1
        if not chosen:
            return 0
        devs = self.devs[i]
        taken = 0
        for j in chosen:
            total, free, _ = devs[j]
            need = need_on(total, pod)
            use = free if need.mib_per_gpu is None else need.mib_per_gpu
            devs[j] = (total, free - use, False)
            taken += use
        self.sid[i] = self.judge.states.intern(tuple(devs))
        return taken

    def remove(self, i: int, pod: OpenbPod, chosen: tuple[int, ...]) -> None:
        """Undo :meth:`place` of ``pod`` on node ``i`` (a departure). A device is idle again
        when all of its memory is free: whole-GPU pods take a device's total, shares their
        rounded-down MiB, so the free memory returns to the total exactly when the last pod
        leaves (shares are at least 16 MiB on the openb cards)."""
        self.cpu_free[i] += pod.cpu_milli
        self.mem_free[i] += pod.memory_mib
        self.version[i] += 1
        if not chosen:
            return
        devs = self.devs[i]
        for j in chosen:
            total, free, _ = devs[j]
            need = need_on(total, pod)
            back = free + (total if need.mib_per_gpu is None else need.mib_per_gpu)
            devs[j] = (total, back, back == total)
        self.sid[i] = self.judge.states.intern(tuple(devs))


Progress = Callable[[str], None]


def select_node(
    rng: random.Random, candidates: IntArray, scores: FloatArray, selection: Selection
) -> int:
    if selection == "scheduler":
        final = np.array(
            combine(list(scores), [0] * len(scores), [0] * len(scores)), dtype=np.float64
        )
    else:
        final = scores
    return pick_tie(rng, candidates[final >= final.max()])


def choose_node(
    cluster: ReplayCluster,
    pod: OpenbPod,
    strategy: Strategy,
    rng: random.Random,
    selection: Selection,
) -> tuple[int, tuple[int, ...]] | None:
    """The node and devices ``pod`` gets, or ``None`` when it fits nowhere its ``gpu_spec``
    allows. Pods without GPUs are scored by host-aware strategies (``fragmentation``) as the
    extender's ``prioritize`` does; for the others every node scores the same, so they go where
    kube-scheduler's default LeastAllocated score is highest, as every pod does with
    ``dra-upstream`` (no GPU-aware scoring)."""
    allowed = cluster.allowed(pod.gpu_spec)
    if pod.num_gpu == 0 and not getattr(strategy, "host_aware", False):
        la = cluster.least_allocated(pod)
        if allowed is not None:
            la = np.where(allowed, la, -np.inf)
        top = la.max()
        if not np.isfinite(top):
            return None
        return pick_tie(rng, np.flatnonzero(la == top)), ()
    cache = cluster.gpu_scores(pod)
    ok = np.isfinite(cache.score)
    cand = np.flatnonzero(ok if allowed is None else ok & allowed)
    if not len(cand):
        return None
    if getattr(strategy, "upstream", False):
        la = cluster.least_allocated(pod)[cand]
        target = pick_tie(rng, cand[la >= la.max()])
    else:
        target = select_node(rng, cand, cache.score[cand], selection)
    return target, cache.chosen[target]


def pick_tie(rng: random.Random, best: IntArray) -> int:
    """One of ``best`` at random (kube-scheduler breaks score ties at random)."""
    return int(best[rng.randrange(len(best))]) if len(best) > 1 else int(best[0])


def replay(
    nodes: Sequence[OpenbNode],
    arrivals: Sequence[OpenbPod],
    strategy: Strategy,
    *,
    rng: random.Random,
    config: ReplayConfig = ReplayConfig(),
    trace: str = "",
    judge: Judge | None = None,
    record: list[tuple[str, str, tuple[int, ...]]] | None = None,
) -> RunResult:
    """Place ``arrivals`` in order with ``strategy``; never removes a pod.

    A pod goes to the best-scored node that fits (CPU, memory and GPU) and that its ``gpu_spec``
    accepts (a required node affinity on the GPU product label, see
    :mod:`simulations.placement.gpuspec`), as :func:`choose_node` decides. ``record``, when
    given, receives ``(pod, node, devices)`` for every placement.
    """
    start = time.perf_counter()
    if judge is None or judge.strategy is not strategy:
        judge = Judge(strategy)
    cluster = ReplayCluster.build(nodes, judge, config.gpu_memory_mib)
    capacity = sum(n.gpus for n in nodes)
    if capacity == 0:
        raise PlacementError("the node list has no GPUs")
    total_mib = sum(sum(t for t, _, _ in d) for d in cluster.devs)
    step = config.curve_step
    grid = [round(k * step, 6) for k in range(math.floor(config.target_load / step + 1e-9) + 1)]
    curve = [0.0] * len(grid)
    arrived_milli = 0
    placed_milli = 0
    placed_mib = 0
    placed = skipped = gpu_skipped = 0
    g = 0
    denom = capacity * MILLI
    smallest_refused: OpenbPod | None = None
    for pod in arrivals:
        arrived_milli += pod.gpu_total_milli
        load = arrived_milli / denom
        while g < len(grid) and grid[g] < load - 1e-12:
            curve[g] = placed_milli / denom
            g += 1
        found = choose_node(cluster, pod, strategy, rng, config.selection)
        if found is None:
            skipped += 1
            gpu_skipped += pod.num_gpu > 0
            share = pod.num_gpu == 1 and pod.gpu_milli < MILLI
            if share and (smallest_refused is None or pod.gpu_milli < smallest_refused.gpu_milli):
                smallest_refused = pod
        else:
            target, chosen = found
            placed += 1
            placed_mib += cluster.place(target, pod, chosen)
            if record is not None:
                record.append((pod.name, nodes[target].name, chosen))
            placed_milli += pod.gpu_total_milli
    for k in range(g, len(grid)):
        curve[k] = placed_milli / denom
    idle = sum(1 for d in cluster.devs for (_, _, i) in d if i)
    too_small, host_blocked = _holes(cluster.devs, smallest_refused)
    return RunResult(
        trace=trace,
        scoring=strategy.name,
        seed=0,
        arrived=tuple(grid),
        allocated=tuple(curve),
        pods_arrived=len(arrivals),
        pods_placed=placed,
        pods_skipped=skipped,
        gpu_pods_skipped=gpu_skipped,
        capacity_gpus=capacity,
        allocated_gpus=placed_milli / MILLI,
        idle_gpus=idle,
        memory_share=placed_mib / total_mib if total_mib else 0.0,
        seconds=time.perf_counter() - start,
        holes_too_small=too_small,
        holes_host_blocked=host_blocked,
    )


def _holes(
    devs: Sequence[Sequence[tuple[int, int, bool]]], smallest_refused: OpenbPod | None
) -> tuple[float, float]:
    """Free memory (in GPUs) of partly used GPUs, split by whether the smallest share that was
    turned away fits it: pods never leave, so a pod refused once is refused at the end, and
    shares need more memory as they grow, so the smallest decides."""
    too_small = fits = 0.0
    for node_devs in devs:
        for total, free, idle in node_devs:
            if idle or free <= 0 or total <= 0:
                continue
            need = None if smallest_refused is None else need_on(total, smallest_refused)
            if need is not None and need.mib_per_gpu is not None and need.mib_per_gpu <= free:
                fits += free / total
            else:
                too_small += free / total
    return too_small, fits


@dataclass(frozen=True, slots=True)
class Summary:
    """Mean and standard deviation over repeats of one trace × strategy."""

    trace: str
    scoring: str
    runs: tuple[RunResult, ...]

    def stat(self, values: Sequence[float]) -> tuple[float, float]:
        arr = np.array(values, dtype=np.float64)
        return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0

    def at(self, load: float) -> tuple[float, float]:
        return self.stat([r.at(load) for r in self.runs])

    def unallocated(self) -> tuple[float, float]:
        return self.stat([r.unallocated_gpus for r in self.runs])

    def curve(self) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
        """Grid, mean allocated share and its standard deviation."""
        arr = np.array([r.allocated for r in self.runs], dtype=np.float64)
        std = arr.std(axis=0, ddof=1) if len(self.runs) > 1 else np.zeros(arr.shape[1])
        return (
            self.runs[0].arrived,
            tuple(float(x) for x in arr.mean(axis=0)),
            tuple(float(x) for x in std),
        )


def run_trace(
    nodes: Sequence[OpenbNode],
    pods: Sequence[OpenbPod],
    scorings: Sequence[str],
    *,
    config: ReplayConfig = ReplayConfig(),
    trace: str = "",
    progress: Progress | None = None,
) -> list[Summary]:
    """Every strategy on the same sampled arrivals (seed ``config.seed + r`` for repeat ``r``)."""
    if config.repeats < 1:
        raise PlacementError("repeats must be at least 1")
    if not config.target_load > 0:
        raise PlacementError("target load must be positive")
    capacity = sum(n.gpus for n in nodes)
    if capacity == 0:
        raise PlacementError("the node list has no GPUs")
    strategies = [make_strategy(name, pods) for name in scorings]
    memo = {s.name: Judge(s) for s in strategies}
    runs: dict[str, list[RunResult]] = {s.name: [] for s in strategies}
    for r in range(config.repeats):
        seed = config.seed + r
        rng = random.Random(seed)
        if config.sample:
            arrivals = sample_pods(pods, capacity, config.target_load, rng)
        else:
            arrivals = trace_order(pods, capacity, config.target_load)
        for s in strategies:
            result = replay(
                nodes,
                arrivals,
                s,
                rng=random.Random(seed * 7919 + 1),
                config=config,
                trace=trace,
                judge=memo[s.name],
            )
            result = _with_seed(result, seed)
            runs[s.name].append(result)
            if progress is not None:
                progress(
                    f"{trace or 'trace'} {s.name:<13} repeat {r + 1}/{config.repeats} "
                    f"seed {seed}: {result.pods_placed}/{result.pods_arrived} placed, "
                    f"{100 * result.at(1.0):.1f}% at 100%, "
                    f"{100 * result.at(config.target_load):.1f}% at "
                    f"{100 * config.target_load:.0f}% ({result.seconds:.1f} s)"
                )
    return [Summary(trace=trace, scoring=s.name, runs=tuple(runs[s.name])) for s in strategies]


def _with_seed(result: RunResult, seed: int) -> RunResult:
    return replace(result, seed=seed)


def scheduler_scores(scores: Sequence[float]) -> list[int]:
    """The 0..10 scores kube-scheduler sees for these GPU scores (no affinity, no taints)."""
    out = combine(list(scores), [0] * len(scores), [0] * len(scores))
    assert all(0 <= s <= MAX_EXTENDER_PRIORITY for s in out)
    return out


PUBLISHED_FGD_DEFAULT: Final = 0.954
"""Published FGD allocation at 130% arrived load on the default trace (Weng et al., 2023)."""


def _mean_std(pair: tuple[float, float]) -> dict[str, float]:
    return {"mean": round(pair[0], 6), "std": round(pair[1], 6)}


def summaries_to_json(summaries: Sequence[Summary], config: ReplayConfig) -> dict[str, object]:
    """Everything ``placement.json`` holds: the configuration, and per trace × scoring the
    allocated share at 100% and at the target load, unallocated GPUs and the mean curve."""
    results: list[dict[str, object]] = []
    for s in summaries:
        grid, mean, std = s.curve()
        results.append(
            {
                "trace": s.trace,
                "scoring": s.scoring,
                "repeats": len(s.runs),
                "allocated_at_100": _mean_std(s.at(1.0)),
                f"allocated_at_{round(100 * config.target_load)}": _mean_std(
                    s.at(config.target_load)
                ),
                "unallocated_gpus": _mean_std(s.unallocated()),
                "idle_gpus": _mean_std(s.stat([r.idle_gpus for r in s.runs])),
                "memory_share": _mean_std(s.stat([r.memory_share for r in s.runs])),
                "gpu_pods_skipped": _mean_std(s.stat([r.gpu_pods_skipped for r in s.runs])),
                "holes_too_small": _mean_std(s.stat([r.holes_too_small for r in s.runs])),
                "holes_host_blocked": _mean_std(s.stat([r.holes_host_blocked for r in s.runs])),
                "capacity_gpus": s.runs[0].capacity_gpus,
                "curve": {
                    "arrived": list(grid),
                    "allocated_mean": [round(x, 6) for x in mean],
                    "allocated_std": [round(x, 6) for x in std],
                },
                "runs": [
                    {
                        "seed": r.seed,
                        "allocated_at_100": round(r.at(1.0), 6),
                        "allocated_at_target": round(r.at(config.target_load), 6),
                        "unallocated_gpus": round(r.unallocated_gpus, 3),
                        "idle_gpus": r.idle_gpus,
                        "holes_too_small": round(r.holes_too_small, 3),
                        "holes_host_blocked": round(r.holes_host_blocked, 3),
                        "pods_arrived": r.pods_arrived,
                        "pods_placed": r.pods_placed,
                        "gpu_pods_skipped": r.gpu_pods_skipped,
                        "seconds": round(r.seconds, 3),
                    }
                    for r in s.runs
                ],
            }
        )
    return {
        "protocol": (
            "pods sampled to the target load (with replacement) and shuffled per seed, no "
            "departures, a pod that fits nowhere is skipped; allocation = placed GPU thousandths "
            "/ (1000 x cluster GPUs)"
            if config.sample
            else "trace order up to the target load, no departures, unfit pods skipped"
        ),
        "target_load": config.target_load,
        "repeats": config.repeats,
        "seed": config.seed,
        "selection": config.selection,
        "gpu_memory_mib": dict(config.gpu_memory_mib),
        "results": results,
    }


def runs_csv(summaries: Sequence[Summary], config: ReplayConfig) -> str:
    """One row per run (trace, scoring, seed) with the figures of merit."""
    lines = [
        "trace,scoring,seed,allocated_at_100,allocated_at_target,unallocated_gpus,idle_gpus,"
        "memory_share,pods_arrived,pods_placed,gpu_pods_skipped,seconds,holes_too_small,"
        "holes_host_blocked"
    ]
    for s in summaries:
        for r in s.runs:
            lines.append(
                f"{s.trace},{s.scoring},{r.seed},{r.at(1.0):.6f},"
                f"{r.at(config.target_load):.6f},{r.unallocated_gpus:.3f},{r.idle_gpus},"
                f"{r.memory_share:.6f},{r.pods_arrived},{r.pods_placed},{r.gpu_pods_skipped},"
                f"{r.seconds:.3f},{r.holes_too_small:.3f},{r.holes_host_blocked:.3f}"
            )
    return "\n".join(lines) + "\n"


def curve_csv(summaries: Sequence[Summary]) -> str:
    """Long format: trace, scoring, arrived load, mean and std of the allocated share."""
    lines = ["trace,scoring,arrived,allocated_mean,allocated_std"]
    for s in summaries:
        grid, mean, std = s.curve()
        for x, m, d in zip(grid, mean, std, strict=True):
            lines.append(f"{s.trace},{s.scoring},{x:.2f},{m:.6f},{d:.6f}")
    return "\n".join(lines) + "\n"


def table(summaries: Sequence[Summary], config: ReplayConfig) -> str:
    """The terminal (and README) table: mean ± std over repeats."""
    target = f"{100 * config.target_load:.0f}%"
    head = (
        f"| trace | scoring | allocated at 100% | allocated at {target} | "
        "unallocated GPUs | GPU pods skipped | repeats |"
    )
    rows = [head, "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for s in summaries:
        m100, s100 = s.at(1.0)
        mt, st = s.at(config.target_load)
        un, us = s.unallocated()
        sk, ss = s.stat([r.gpu_pods_skipped for r in s.runs])
        rows.append(
            f"| {s.trace} | {s.scoring} | {100 * m100:.2f} ± {100 * s100:.2f}% | "
            f"{100 * mt:.2f} ± {100 * st:.2f}% | {un:.1f} ± {us:.1f} | {sk:.0f} ± {ss:.0f} | "
            f"{len(s.runs)} |"
        )
    return "\n".join(rows)


def plot(summaries: Sequence[Summary], path: str, config: ReplayConfig) -> None:
    """Allocated share vs arrived load, one panel per trace, one line per scoring."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = list(dict.fromkeys(s.trace for s in summaries))
    fig, axes = plt.subplots(
        1, len(traces), figsize=(4.6 * len(traces), 3.6), squeeze=False, sharey=True
    )
    for ax, trace in zip(axes[0], traces, strict=True):
        for s in summaries:
            if s.trace != trace:
                continue
            grid, mean, std = s.curve()
            x = 100 * np.array(grid)
            y = 100 * np.array(mean)
            d = 100 * np.array(std)
            ax.plot(x, y, label=s.scoring, linewidth=1.4)
            ax.fill_between(x, y - d, y + d, alpha=0.2)
        ax.plot([0, 100], [0, 100], color="grey", linewidth=0.6, linestyle=":")
        if trace == "default":
            ax.axhline(
                100 * PUBLISHED_FGD_DEFAULT,
                color="black",
                linewidth=0.8,
                linestyle="--",
                label="published FGD",
            )
        ax.set_title(f"openb {trace}")
        ax.set_xlabel("arrived GPU requests, % of capacity")
        ax.set_xlim(50, 100 * config.target_load)
        ax.set_ylim(60, 100)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("GPU capacity allocated, %")
    axes[0][0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
