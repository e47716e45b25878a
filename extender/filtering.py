"""The extender's decisions: which nodes a pod may use, how good each is, which devices it takes.

Pure functions of a pod, node names, a :class:`ClusterView` and ``now``; the HTTP server and the
simulator both call them. Filter checks run in kube-scheduler's plugin order (TaintToleration,
NodeAffinity, NodeResourcesFit, then GPU memory) and a node reports the first failure only.
Failures preemption cannot fix (taints, affinity, missing or stale GPU inventory) go to
``unresolvable``; shortages of CPU, memory or GPU memory go to ``failed``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from extender import taints as taint_rules
from extender.affinity import compile_preferred
from extender.fit import NodeGpus, gpu_fit_reason
from extender.fitting import PodFit, fits
from extender.fragmentation import NO_GPU, host_context
from extender.inventory import InventoryConfig, node_gpus
from extender.objects import GpuReport, NodeInfo, PodRequest
from extender.reservations import EMPTY, Book, Reservation
from extender.scoring import ScoreWeights, Strategy, combine, get_strategy

NOT_FOUND_REASON: Final = "node not found in the extender's cache"
FAILURE_KINDS: Final = (
    "node_not_found",
    "untolerated_taint",
    "node_affinity",
    "insufficient_resources",
    "gpu_inventory",
    "insufficient_gpu",
)


class ClusterView(Protocol):
    """What the decisions read about the cluster."""

    def node(self, name: str) -> NodeInfo | None:
        """The node called ``name``, or ``None`` when unknown."""
        ...

    def gpus(self, name: str, now: float) -> NodeGpus | str:
        """Effective GPU state of a known node, or why it has none usable."""
        ...

    def requested(self, name: str) -> tuple[int, int]:
        """Millicores and bytes of memory already requested by pods bound to the node."""
        ...


class ClusterSnapshot:
    """A :class:`ClusterView` over plain data (nodes, bound pods, reservations, DCGM reports).

    It computes each node's GPU state on demand; the server keeps a cached equivalent.
    """

    def __init__(
        self,
        nodes: Iterable[NodeInfo],
        pods: Iterable[PodRequest] = (),
        *,
        reservations: Book = EMPTY,
        dcgm: Mapping[str, GpuReport] | None = None,
        config: InventoryConfig | None = None,
    ) -> None:
        self.nodes = {n.name: n for n in nodes}
        self.pods_by_node: dict[str, list[PodRequest]] = defaultdict(list)
        for p in pods:
            if p.node_name and not p.terminated:
                self.pods_by_node[p.node_name].append(p)
        self.reservations_by_node: dict[str, list[Reservation]] = defaultdict(list)
        for r in reservations.values():
            self.reservations_by_node[r.node].append(r)
        self.dcgm = dict(dcgm or {})
        self.config = config or InventoryConfig()

    def node(self, name: str) -> NodeInfo | None:
        return self.nodes.get(name)

    def gpus(self, name: str, now: float) -> NodeGpus | str:
        return node_gpus(
            self.nodes[name],
            config=self.config,
            now=now,
            dcgm=self.dcgm.get(name),
            pods=self.pods_by_node.get(name, ()),
            reservations=self.reservations_by_node.get(name, ()),
        )

    def requested(self, name: str) -> tuple[int, int]:
        pods = self.pods_by_node.get(name, ())
        return sum(p.milli_cpu for p in pods), sum(p.memory for p in pods)


@dataclass(frozen=True, slots=True)
class FilterResult:
    passed: tuple[str, ...]
    failed: dict[str, str] = field(default_factory=dict)
    """Nodes that could fit after preemption (``FailedNodes``)."""
    unresolvable: dict[str, str] = field(default_factory=dict)
    """Nodes preemption cannot help (``FailedAndUnresolvableNodes``)."""
    counts: dict[str, int] = field(default_factory=dict)
    """Failures per check (one of :data:`FAILURE_KINDS`), for metrics."""


def filter_nodes(
    pod: PodRequest, names: Sequence[str], view: ClusterView, now: float
) -> FilterResult:
    """Split ``names`` into passing, failed and unresolvable nodes (order of ``names`` kept)."""
    fit = PodFit.of(pod)
    passed: list[str] = []
    failed: dict[str, str] = {}
    unresolvable: dict[str, str] = {}
    counts = dict.fromkeys(FAILURE_KINDS, 0)
    for name in names:
        node = view.node(name)
        if node is None:
            unresolvable[name] = NOT_FOUND_REASON
            counts["node_not_found"] += 1
            continue
        misfit = fits(fit, node, view, now)
        if misfit is None:
            passed.append(name)
            continue
        (failed if misfit.resolvable else unresolvable)[name] = misfit.reason
        counts[misfit.check] += 1
    return FilterResult(tuple(passed), failed, unresolvable, counts)


def strategy_for(pod: PodRequest, default: str) -> Strategy:
    """The pod's own strategy (annotation ``gpuscale.io/scoring``) if known, else ``default``."""
    if pod.scoring:
        try:
            return get_strategy(pod.scoring)
        except ValueError:
            pass
    return get_strategy(default)


def prioritize(
    pod: PodRequest,
    names: Sequence[str],
    view: ClusterView,
    now: float,
    *,
    strategy: str = "binpack",
    weights: ScoreWeights | None = None,
) -> list[tuple[str, int]]:
    """Scores 0..10 for ``names`` (same order). Unknown nodes and nodes the pod does not fit on
    get GPU score 0; the other components still count, as in kube-scheduler."""
    strat = strategy_for(pod, strategy)
    host_aware = getattr(strat, "host_aware", False)
    preferred = compile_preferred(pod.preferred)
    pns_tolerations = taint_rules.prefer_no_schedule_tolerations(pod.tolerations)
    need = pod.gpu
    gpu_scores: list[float] = []
    affinity: list[int] = []
    intolerable: list[int] = []
    for name in names:
        node = view.node(name)
        if node is None:
            gpu_scores.append(0.0)
            affinity.append(0)
            intolerable.append(0)
            continue
        g = 0.0
        if need is not None or host_aware:
            gpus = view.gpus(name, now)
            if not isinstance(gpus, str):
                g_need = need if need is not None else NO_GPU
                if host_aware:
                    gpus, g_need = host_context(gpus, need, node, view.requested(name), pod)
                chosen = strat.choose(gpus, g_need)
                if chosen is not None:
                    g = strat.score(gpus, g_need, chosen)
        gpu_scores.append(g)
        affinity.append(preferred.score(node.labels, name) if preferred.terms else 0)
        intolerable.append(
            taint_rules.count_intolerable_prefer_no_schedule(node.taints, pns_tolerations)
            if node.taints
            else 0
        )
    return list(zip(names, combine(gpu_scores, affinity, intolerable, weights), strict=True))


def choose_devices(
    pod: PodRequest,
    name: str,
    view: ClusterView,
    now: float,
    *,
    strategy: str = "binpack",
    exclude: frozenset[int] = frozenset(),
) -> tuple[int, ...] | str:
    """Devices ``pod`` should take on node ``name`` (for bind), or why it cannot go there now.
    ``exclude``: devices it may not have (those a DRA driver hands out, for a device-plugin
    pod)."""
    if pod.gpu is None:
        return ()
    node = view.node(name)
    if node is None:
        return NOT_FOUND_REASON
    gpus = view.gpus(name, now)
    if isinstance(gpus, str):
        return gpus
    if exclude:
        gpus = NodeGpus(tuple(d for d in gpus.devices if d.index not in exclude), gpus.source)
    reason = gpu_fit_reason(gpus, pod.gpu)
    if reason is not None:
        return reason
    strat = strategy_for(pod, strategy)
    g_need = pod.gpu
    if getattr(strat, "host_aware", False):
        gpus, g_need = host_context(gpus, pod.gpu, node, view.requested(name), pod)
    chosen = strat.choose(gpus, g_need)
    if chosen is None:
        return f"strategy found no devices for {pod.gpu.describe()}"
    return chosen
