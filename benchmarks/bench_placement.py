"""Per-request cost of the extender's prioritize with ``fragmentation`` beside ``binpack``.

A synthetic cluster (default 5,000 nodes x 8 GPUs of 80 GiB, 100,000 pods bound with
device-level accounting) behind an in-memory :class:`~extender.filtering.ClusterView` that holds
each node's GPU state ready, as the server's cache does. Each request is one pending GPU pod
scored over every node name (nodeCacheCapable mode, no HTTP), two ways:

* per node: :func:`extender.filtering.prioritize`, the reference the simulator uses;
* index: :meth:`extender.index.NodeIndex.prioritize`, what the server answers with (binpack
  through its arrays, fragmentation through its per-state memo).

Reported per strategy: p50/p99 per request and the cost per node. Baseline, measured in the same
run for each way: a strategy that scores nothing (the loop or arrays, affinity/taint components
and normalisation alone).

``fragmentation`` memoises on (node state, pod need): "cold" is every request with empty memo
tables (every node state new to it; through the index also a freshly built index), "warm" the
same requests once each need has been seen and no node has changed, "1 node changed" warm but
with one node's devices changed before each request (the steady state: a pod was placed), "new
pod shape" a need not seen before on node states already seen, scored through the array form
(``place_many``) and, as the same-run "before", one ``place()`` call per state; "after a
restart, warmed" a fresh index and empty memo whose learned shapes were scored before the
request (what the server does before readiness; the warm-up time is printed), "index rebuilt"
a new index sharing the memo (a node added or deleted). "new pod shape, N names" is the
request kube-scheduler really sends at its default ``percentageOfNodesToScore`` (10% of 5,000
nodes, a different window of nodes for each pod), beside the baseline over the same windows.

Run: ``python benchmarks/bench_placement.py [--nodes 5000] [--pods 100000] [--requests 60]
[--cold 20]``.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from extender.filtering import prioritize
from extender.fit import DeviceState, NodeGpus
from extender.fragmentation import Fragmentation, Workload, clear_caches, place, score_of
from extender.index import NodeIndex
from extender.objects import GpuNeed, NodeInfo, PodRequest
from extender.scoring import DeviceRows, get_strategy, register
from extender.state_arrays import StateArrays
from extender.state_memo import StateMemo

GIB = 1024
SIZES = (10 * GIB, 20 * GIB, 40 * GIB, 80 * GIB)
SIZE_WEIGHTS = (4, 3, 2, 1)


@dataclass(frozen=True, slots=True)
class Nothing:
    """Baseline strategy: no device choice, score 0 everywhere."""

    name: str = "nothing"

    def choose(self, gpus: NodeGpus, need: GpuNeed) -> tuple[int, ...] | None:
        return ()

    def score(self, gpus: NodeGpus, need: GpuNeed, chosen: tuple[int, ...]) -> float:
        return 0.0

    def score_rows(self, rows: DeviceRows, need: GpuNeed) -> npt.NDArray[np.float64]:
        return np.zeros(len(rows.count))


@dataclass(frozen=True, slots=True)
class PerStateLoop(Fragmentation):
    """``fragmentation`` scoring new node states one ``place()`` call at a time: the index's
    path before the array form (the "before" figure of the same run)."""

    name: str = "fragmentation-loop"

    def score_arrays(self, arrays: StateArrays, need: GpuNeed) -> list[float]:
        out: list[float] = []
        for devs, host in arrays.states:
            found = place(devs, host if self.host_aware else None, need, self.workload)
            out.append(0.0 if found is None else score_of(found[1]))
        return out


class View:
    """ClusterView over ready-made node objects and GPU states."""

    def __init__(self, nodes: dict[str, NodeInfo], gpus: dict[str, NodeGpus]) -> None:
        self.nodes = nodes
        self._gpus = gpus
        self._requested = dict.fromkeys(nodes, (0, 0))

    def node(self, name: str) -> NodeInfo | None:
        return self.nodes.get(name)

    def gpus(self, name: str, now: float) -> NodeGpus | str:
        return self._gpus[name]

    def requested(self, name: str) -> tuple[int, int]:
        return self._requested[name]

    def index(self, memo: StateMemo | None = None, previous: NodeIndex | None = None) -> NodeIndex:
        return NodeIndex(
            list(self.nodes.values()),
            gpus_of=self.gpus,
            requested=self.requested,
            valid_until=lambda name: math.inf,
            now=0.0,
            memo=memo,
            previous=previous,
        )

    def place_one(self, index: NodeIndex, rng: random.Random) -> None:
        """Take 1 GiB more on one device of a random node, as a placement would."""
        name = rng.choice(list(self.nodes))
        g = self._gpus[name]
        d = rng.randrange(len(g.devices))
        devices = list(g.devices)
        old = devices[d]
        devices[d] = DeviceState(old.index, old.total_mib, max(0, old.free_mib - GIB), False)
        self._gpus[name] = NodeGpus(tuple(devices), g.source)
        index.refresh_row(index.pos[name], 0.0)


def build(n_nodes: int, n_pods: int, seed: int) -> tuple[View, list[PodRequest]]:
    rng = random.Random(seed)
    total = 80 * GIB
    used = [[0] * 8 for _ in range(n_nodes)]
    placed: list[PodRequest] = []
    for k in range(n_pods):
        size = rng.choices(SIZES, SIZE_WEIGHTS)[0]
        for _ in range(4):
            i, d = rng.randrange(n_nodes), rng.randrange(8)
            if used[i][d] + size <= total:
                used[i][d] += size
                placed.append(PodRequest("bench", f"p{k}", milli_cpu=4000, gpu=GpuNeed(1, size)))
                break
    nodes = {
        f"node-{i:05d}": NodeInfo(
            f"node-{i:05d}", allocatable_milli_cpu=128000, allocatable_memory=1 << 40
        )
        for i in range(n_nodes)
    }
    gpus = {
        name: NodeGpus(
            devices=tuple(
                DeviceState(d, total, total - used[i][d], used[i][d] == 0) for d in range(8)
            ),
            source="annotation",
        )
        for i, name in enumerate(nodes)
    }
    return View(nodes, gpus), placed


def timed(fn: object, repeat: int) -> list[float]:
    out: list[float] = []
    assert callable(fn)
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--pods", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--cold", type=int, default=20, help="cold requests through the index")
    args = ap.parse_args(argv)

    view, placed = build(args.nodes, args.pods, args.seed)
    names = list(view.nodes)
    register(Nothing())
    learned = Workload.from_pods(placed)
    register(Fragmentation(workload=learned))
    register(PerStateLoop(workload=learned))
    rng = random.Random(args.seed + 1)
    pending = [
        PodRequest(
            "bench", f"q{i}", milli_cpu=4000, gpu=GpuNeed(1, rng.choices(SIZES, SIZE_WEIGHTS)[0])
        )
        for i in range(args.requests)
    ]
    print(
        f"cpus={os.cpu_count()} nodes={args.nodes} gpus={8 * args.nodes} "
        f"bound pods={len(placed)} requests={args.requests} (one GPU pod over all node names)"
    )
    print(f"{'strategy':<36}{'p50 ms':>10}{'p99 ms':>10}{'us/node':>10}")
    results: dict[str, list[float]] = {}

    def report(label: str, times: list[float]) -> None:
        results[label] = times
        p50 = statistics.median(times)
        print(
            f"{label:<36}{1e3 * p50:>10.2f}{1e3 * pct(times, 0.99):>10.2f}"
            f"{1e6 * p50 / len(names):>10.2f}"
        )

    for label, strategy in (
        ("per node: baseline (no scoring)", "nothing"),
        ("per node: binpack", "binpack"),
        ("per node: fragmentation cold", "fragmentation"),
        ("per node: fragmentation warm", "fragmentation"),
    ):
        if label.endswith("cold"):
            clear_caches()
        if label.endswith("warm"):
            for pod in pending:
                prioritize(pod, names, view, 0.0, strategy=strategy)
        times: list[float] = []
        for pod in pending:
            times += timed(lambda p=pod, s=strategy: prioritize(p, names, view, 0.0, strategy=s), 1)
            if label.endswith("cold"):
                clear_caches()
        report(label, times)

    def through_index(index: NodeIndex, pod: PodRequest, strategy: str) -> None:
        assert index.prioritize(pod, names, 0.0, get_strategy(strategy)) is not None

    index = view.index()
    for label, strategy in (
        ("index: baseline (no scoring)", "nothing"),
        ("index: binpack", "binpack"),
        ("index: fragmentation warm", "fragmentation"),
    ):
        for pod in pending:
            through_index(index, pod, strategy)
        report(
            label,
            [
                t
                for pod in pending
                for t in timed(lambda p=pod, s=strategy: through_index(index, p, s), 1)
            ],
        )
    times = []
    place_rng = random.Random(args.seed + 2)
    for pod in pending:
        view.place_one(index, place_rng)
        times += timed(lambda p=pod: through_index(index, p, "fragmentation"), 1)
    report("index: fragmentation, 1 node changed", times)
    for label, strategy in (
        ("index: fragmentation, new pod shape (loop, before)", "fragmentation-loop"),
        ("index: fragmentation, new pod shape", "fragmentation"),
    ):
        times = []
        shape_rng = random.Random(args.seed + 3)  # the same new shapes for both
        for pod in pending[: args.cold]:
            odd = GpuNeed(1, shape_rng.randrange(GIB, 80 * GIB) | 1)  # a MiB not seen before
            new_shape = replace(pod, gpu=odd)
            times += timed(lambda p=new_shape, s=strategy: through_index(index, p, s), 1)
        report(label, times)
    # kube-scheduler sends the extender the feasible nodes it found, and stops looking after
    # percentageOfNodesToScore of them (adaptive by default: 10% at 5,000 nodes), starting
    # each pod where the previous one stopped; a new shape is scored for those nodes' states
    sample = sample_size(len(names))
    windows = [
        [names[(k * sample + j) % len(names)] for j in range(sample)] for k in range(args.cold)
    ]
    base_times: list[float] = []
    for window in windows:
        assert index.prioritize(pending[0], window, 0.0, get_strategy("nothing")) is not None
    for pod, window in zip(pending, windows, strict=False):
        base_times += timed(
            lambda p=pod, w=window: index.prioritize(p, w, 0.0, get_strategy("nothing")), 1
        )
    report(f"index: baseline, {sample} names (sample)", base_times)
    times = []
    shape_rng = random.Random(args.seed + 4)
    frag_strategy = get_strategy("fragmentation")
    for pod, window in zip(pending, windows, strict=False):
        odd = GpuNeed(1, shape_rng.randrange(GIB, 80 * GIB) | 1)
        new_shape = replace(pod, gpu=odd)
        times += timed(lambda p=new_shape, w=window: index.prioritize(p, w, 0.0, frag_strategy), 1)
    report(f"index: fragmentation, new pod shape, {sample} names", times)
    for label, strategy in (
        ("index: fragmentation cold (loop, before)", "fragmentation-loop"),
        ("index: fragmentation cold", "fragmentation"),
    ):
        times = []
        for pod in pending[: args.cold]:
            fresh = view.index()
            clear_caches()
            times += timed(lambda p=pod, f=fresh, s=strategy: through_index(f, p, s), 1)
        report(label, times)
    frag = get_strategy("fragmentation")
    assert isinstance(frag, Fragmentation)
    warmups: list[float] = []
    times = []
    for pod in pending[: args.cold]:
        fresh = view.index()
        clear_caches()
        warmups += timed(lambda f=fresh: f.warm(frag, frag.learned_needs()), 1)
        times += timed(lambda p=pod, f=fresh: through_index(f, p, "fragmentation"), 1)
    report("index: fragmentation after a restart, warmed", times)
    print(
        f"  (warm-up before readiness, {len(frag.learned_needs())} learned shapes: "
        f"{1e3 * statistics.median(warmups):.0f} ms p50)"
    )
    times = []
    rebuilds: list[float] = []
    for pod in pending[: args.cold]:
        t0 = time.perf_counter()
        rebuilt = view.index(memo=index.memo, previous=index)  # a node added or deleted
        rebuilds.append(time.perf_counter() - t0)
        times += timed(lambda p=pod, f=rebuilt: through_index(f, p, "fragmentation"), 1)
    report("index: fragmentation, index rebuilt (node add/delete)", times)
    print(
        f"  (the rebuild itself, before the request: "
        f"{1e3 * statistics.median(rebuilds):.0f} ms p50)"
    )

    for way in ("per node", "index"):
        base = statistics.median(results[f"{way}: baseline (no scoring)"])
        for label in results:
            if label.startswith(f"{way}:") and "baseline" not in label and "names" not in label:
                print(f"{label}: {statistics.median(results[label]) / base:.1f}x the baseline")
    base = statistics.median(results[f"index: baseline, {sample} names (sample)"])
    label = f"index: fragmentation, new pod shape, {sample} names"
    print(f"{label}: {statistics.median(results[label]) / base:.1f}x its baseline")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


def sample_size(n: int) -> int:
    """Nodes kube-scheduler hands its extenders per pod at its default adaptive
    percentageOfNodesToScore (``numFeasibleNodesToFind``: all below 100 nodes, else
    max(5, 50 - n/125) percent, at least 100), when every node is feasible."""
    if n < 100:
        return n
    percent = max(5, 50 - n // 125)
    return min(n, max(100, n * percent // 100))


if __name__ == "__main__":
    sys.exit(main())
