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

from extender.fit import NodeGpus, choose_best_fit, choose_worst_fit
from extender.model import GpuNeed

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
class Binpack:
    """Least memory left over on the chosen devices: keeps big holes for big pods."""

    name: str = "binpack"

    def choose(self, gpus: NodeGpus, need: GpuNeed) -> tuple[int, ...] | None:
        return choose_best_fit(gpus.devices, need)

    def score(self, gpus: NodeGpus, need: GpuNeed, chosen: tuple[int, ...]) -> float:
        return MAX_NODE_SCORE * packed_fraction(gpus, need, chosen)


@dataclass(frozen=True, slots=True)
class Spread:
    """Most memory left over: spreads load and noisy neighbours across GPUs."""

    name: str = "spread"

    def choose(self, gpus: NodeGpus, need: GpuNeed) -> tuple[int, ...] | None:
        return choose_worst_fit(gpus.devices, need)

    def score(self, gpus: NodeGpus, need: GpuNeed, chosen: tuple[int, ...]) -> float:
        return MAX_NODE_SCORE * (1.0 - packed_fraction(gpus, need, chosen))


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


def normalize_scores(
    scores: Sequence[float], max_priority: int, *, reverse: bool = False
) -> list[int]:
    """``DefaultNormalizeScore``: scale so the largest becomes ``max_priority``.

    Scores are truncated to integers first, as the Go code works on int64. With all scores zero,
    everything is 0 (or ``max_priority`` when ``reverse``); negative scores count as 0.
    """
    ints = [max(0, int(s)) for s in scores]
    top = max(ints, default=0)
    if top == 0:
        return [max_priority if reverse else 0 for _ in ints]
    out = [max_priority * s // top for s in ints]
    if reverse:
        return [max_priority - s for s in out]
    return out


@dataclass(frozen=True, slots=True)
class ScoreWeights:
    """Relative weight of each component in the extender's score."""

    gpu: int = 1
    """GPU placement (the strategy's 0..100 score)."""
    node_affinity: int = 1
    """Preferred node affinity, normalised like kube-scheduler's NodeAffinity plugin."""
    taint_toleration: int = 1
    """Untolerated PreferNoSchedule taints, reverse-normalised like TaintToleration."""


def combine(
    gpu: Sequence[float],
    affinity_weights: Sequence[int],
    intolerable_taints: Sequence[int],
    weights: ScoreWeights | None = None,
) -> list[int]:
    """Final 0..10 scores from per-node components (all three sequences aligned by node).

    A component that is the same on every node cannot change the ranking, so it is left out
    rather than added as a constant that would squeeze the others in the final normalisation.
    """
    weights = weights or ScoreWeights()
    n = len(gpu)
    aff = (
        normalize_scores(affinity_weights, MAX_NODE_SCORE)
        if len(set(affinity_weights)) > 1
        else [0] * n
    )
    taint = (
        normalize_scores(intolerable_taints, MAX_NODE_SCORE, reverse=True)
        if len(set(intolerable_taints)) > 1
        else [0] * n
    )
    total = [
        weights.gpu * g + weights.node_affinity * a + weights.taint_toleration * t
        for g, a, t in zip(gpu, aff, taint, strict=True)
    ]
    return normalize_scores(total, MAX_EXTENDER_PRIORITY)
