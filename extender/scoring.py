"""GPU scoring strategies, and the one normalisation every score goes through.

A strategy is any object with a ``name``, a ``choose`` (which devices the pod would take on a node)
and a ``score`` (0..100, higher is better, computed for the devices ``choose`` picked). Strategies
are looked up by name in a registry: ``binpack`` and ``spread`` live here; other modules call
:func:`register` (``fragmentation`` lives in :mod:`extender.fragmentation` and is imported on first
lookup).

The extender's final score per node combines the GPU score with preferred node affinity and
untolerated ``PreferNoSchedule`` taints, each brought to 0..100 the way kube-scheduler's plugins
do, weighted, and then normalised once more to 0..10 (``MaxExtenderPriority``) with
:func:`normalize_scores`, a port of upstream's ``DefaultNormalizeScore``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from extender.fit import NodeGpus, choose_best_fit, choose_worst_fit
from extender.objects import GpuNeed, PodRequest

MAX_NODE_SCORE: Final = 100
"""kube-scheduler's ``MaxNodeScore``: the scale of each component before weighting."""
MAX_EXTENDER_PRIORITY: Final = 10
"""``extenderv1.MaxExtenderPriority``: the scale of the scores the extender returns."""


class Strategy(Protocol):
    """How to place a pod's GPU need on one node, and how good that placement is."""

    @property
    def name(self) -> str: ...

    def choose(self, gpus: NodeGpus, need: GpuNeed) -> tuple[int, ...] | None:
        """Device indices to use, or ``None`` when the need does not fit."""
        ...

    def score(self, gpus: NodeGpus, need: GpuNeed, chosen: tuple[int, ...]) -> float:
        """Goodness of placing ``need`` on ``chosen`` devices, in 0..100 (higher is better)."""
        ...


NodeState = tuple[tuple[tuple[int, int, bool], ...], tuple[int, int] | None]
"""What a node-local score may depend on: ``(total_mib, free_mib, idle)`` of each device in the
node's device order, and the host's ``(milli_cpu_free, memory_free)`` (``None`` when neither is
known; an unknown one alone is ``2**62``). Nodes in the same state get the same score."""


class StateScorer(Protocol):
    """Optional fast path of a strategy whose score is a function of :data:`NodeState`: the
    columnar index scores each distinct state once per need and remembers it."""

    def state_need(self, need: GpuNeed | None, pod: PodRequest) -> GpuNeed | None:
        """What the score depends on of the pod (hashable); ``None``: 0 on every node."""
        ...

    def score_states(self, states: Sequence[NodeState], need: GpuNeed) -> Sequence[float]:
        """The score (0..100, 0 where the need does not fit) of a node in each state."""
        ...


def packed_fraction(gpus: NodeGpus, need: GpuNeed, chosen: Sequence[int]) -> float:
    """How full the placement leaves things, 0..1.

    For a memory need: memory used on the chosen devices after placement over their total. For a
    whole-GPU need (which fills its devices completely): the fraction of the node's devices busy
    after placement, so that whole GPUs go where other GPUs are already taken.
    """
    if need.mib_per_gpu is None:
        n = len(gpus.devices)
        if n == 0:
            return 0.0
        return (n - gpus.idle_count + len(chosen)) / n
    by_index = {d.index: d for d in gpus.devices}
    total = sum(by_index[i].total_mib for i in chosen)
    if total <= 0:
        return 0.0
    left = sum(by_index[i].free_mib - need.mib_per_gpu for i in chosen)
    return min(1.0, max(0.0, 1.0 - left / total))


@dataclass(frozen=True, slots=True)
class DeviceRows:
    """Many nodes' devices as arrays, for scoring a need on all of them at once.

    Row ``r`` holds one node's free MiB sorted descending (``free_desc``, padded with -1) and the
    totals of the same devices (``total_desc``, padded with 0); ``count`` devices and ``idle``
    idle ones. Only nodes whose devices all have the same total are given here, so ties in free
    memory cannot change which totals a choice covers.
    """

    free_desc: npt.NDArray[np.int64]
    total_desc: npt.NDArray[np.int64]
    count: npt.NDArray[np.int64]
    idle: npt.NDArray[np.int64]


def _window_sum(
    a: npt.NDArray[np.int64], start: npt.NDArray[np.int64], k: int
) -> npt.NDArray[np.int64]:
    """Per row, the sum of columns ``start .. start+k`` (``k`` is a pod's GPU count: small)."""
    rows = np.arange(a.shape[0])
    out: npt.NDArray[np.int64] = np.zeros(a.shape[0], dtype=np.int64)
    for j in range(k):
        out += a[rows, start + j]
    return out


def packed_fraction_rows(
    rows: DeviceRows, need: GpuNeed, *, best_fit: bool
) -> npt.NDArray[np.float64]:
    """:func:`packed_fraction` for every row, for the devices best fit (binpack) or worst fit
    (spread) would choose. Rows must fit the need."""
    if need.mib_per_gpu is None:
        n = rows.count.astype(np.float64)
        busy = (rows.count - rows.idle + need.count).astype(np.float64)
        return np.divide(busy, n, out=np.zeros_like(n), where=n > 0)
    if best_fit:
        enough = (rows.free_desc >= need.mib_per_gpu).sum(axis=1)
        start = enough - need.count
    else:
        start = np.zeros(rows.free_desc.shape[0], dtype=np.int64)
    free = np.maximum(rows.free_desc, 0)
    left = (_window_sum(free, start, need.count) - need.count * need.mib_per_gpu).astype(np.float64)
    total = _window_sum(rows.total_desc, start, need.count).astype(np.float64)
    frac = np.ones_like(total) - np.divide(left, total, out=np.ones_like(total), where=total > 0)
    return np.where(total > 0, np.clip(frac, 0.0, 1.0), 0.0)


@dataclass(frozen=True, slots=True)
class Binpack:
    """Least memory left over on the chosen devices: keeps big holes for big pods."""

    name: str = "binpack"

    def choose(self, gpus: NodeGpus, need: GpuNeed) -> tuple[int, ...] | None:
        return choose_best_fit(gpus.devices, need)

    def score(self, gpus: NodeGpus, need: GpuNeed, chosen: tuple[int, ...]) -> float:
        return MAX_NODE_SCORE * packed_fraction(gpus, need, chosen)

    def score_rows(self, rows: DeviceRows, need: GpuNeed) -> npt.NDArray[np.float64]:
        """:meth:`score` of the best-fit choice on every row (all rows fit the need)."""
        return MAX_NODE_SCORE * packed_fraction_rows(rows, need, best_fit=True)


@dataclass(frozen=True, slots=True)
class Spread:
    """Most memory left over: spreads load and noisy neighbours across GPUs."""

    name: str = "spread"

    def choose(self, gpus: NodeGpus, need: GpuNeed) -> tuple[int, ...] | None:
        return choose_worst_fit(gpus.devices, need)

    def score(self, gpus: NodeGpus, need: GpuNeed, chosen: tuple[int, ...]) -> float:
        return MAX_NODE_SCORE * (1.0 - packed_fraction(gpus, need, chosen))

    def score_rows(self, rows: DeviceRows, need: GpuNeed) -> npt.NDArray[np.float64]:
        """:meth:`score` of the worst-fit choice on every row (all rows fit the need)."""
        return MAX_NODE_SCORE * (1.0 - packed_fraction_rows(rows, need, best_fit=False))


_REGISTRY: dict[str, Strategy] = {}
_PLUGINS: Final = {"fragmentation": "extender.fragmentation"}
"""Strategies defined in other modules, imported on first lookup (they call :func:`register`)."""


def register(strategy: Strategy) -> None:
    """Make ``strategy`` available by its name (replacing any earlier one of that name)."""
    _REGISTRY[strategy.name] = strategy


def strategy_names() -> tuple[str, ...]:
    return tuple(sorted({*_REGISTRY, *_PLUGINS}))


def get_strategy(name: str) -> Strategy:
    """The strategy called ``name``; ``ValueError`` listing the known names otherwise."""
    if name not in _REGISTRY and name in _PLUGINS:
        try:
            importlib.import_module(_PLUGINS[name])
        except ModuleNotFoundError as exc:
            if exc.name != _PLUGINS[name]:
                raise
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"unknown scoring strategy {name!r} (known: {known})") from None


register(Binpack())
register(Spread())


def normalize_array(
    scores: npt.ArrayLike, max_priority: int, *, reverse: bool = False
) -> npt.NDArray[np.int64]:
    """``DefaultNormalizeScore``: scale so the largest becomes ``max_priority``.

    Scores are truncated to integers first, as the Go code works on int64. With all scores zero,
    everything is 0 (or ``max_priority`` when ``reverse``); negative scores count as 0.
    """
    ints = np.maximum(np.asarray(scores, dtype=np.float64).astype(np.int64), 0)
    top = int(ints.max()) if ints.size else 0
    if top == 0:
        return np.full(ints.shape, max_priority if reverse else 0, dtype=np.int64)
    out = max_priority * ints // top
    return max_priority - out if reverse else out


def normalize_scores(
    scores: Sequence[float], max_priority: int, *, reverse: bool = False
) -> list[int]:
    """:func:`normalize_array` on a list."""
    return [int(v) for v in normalize_array(scores, max_priority, reverse=reverse)]


@dataclass(frozen=True, slots=True)
class ScoreWeights:
    """Relative weight of each component in the extender's score."""

    gpu: int = 1
    """GPU placement (the strategy's 0..100 score)."""
    node_affinity: int = 1
    """Preferred node affinity, normalised like kube-scheduler's NodeAffinity plugin."""
    taint_toleration: int = 1
    """Untolerated PreferNoSchedule taints, reverse-normalised like TaintToleration."""


def combine_arrays(
    gpu: npt.ArrayLike,
    affinity_weights: npt.ArrayLike,
    intolerable_taints: npt.ArrayLike,
    weights: ScoreWeights | None = None,
) -> npt.NDArray[np.int64]:
    """Final 0..10 scores from per-node components (aligned by node).

    A component that is the same on every node cannot change the ranking, so it is left out
    rather than added as a constant that would squeeze the others in the final normalisation.
    """
    weights = weights or ScoreWeights()
    g = np.asarray(gpu, dtype=np.float64)
    aff = np.asarray(affinity_weights, dtype=np.int64)
    taint = np.asarray(intolerable_taints, dtype=np.int64)
    total = weights.gpu * g
    if aff.size and aff.min() != aff.max():
        total = total + weights.node_affinity * normalize_array(aff, MAX_NODE_SCORE)
    if taint.size and taint.min() != taint.max():
        total = total + weights.taint_toleration * normalize_array(
            taint, MAX_NODE_SCORE, reverse=True
        )
    return normalize_array(total, MAX_EXTENDER_PRIORITY)


def combine(
    gpu: Sequence[float],
    affinity_weights: Sequence[int],
    intolerable_taints: Sequence[int],
    weights: ScoreWeights | None = None,
) -> list[int]:
    """:func:`combine_arrays` on lists."""
    if not (len(gpu) == len(affinity_weights) == len(intolerable_taints)):
        raise ValueError("score components must be aligned by node")
    return [int(v) for v in combine_arrays(gpu, affinity_weights, intolerable_taints, weights)]
