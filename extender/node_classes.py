"""Nodes grouped by what node-level predicates read (labels and taints), and those predicates
evaluated once per group.

Taints, ``nodeSelector`` and node affinity depend only on a node's labels and taints, and the
nodes of a pool share them, apart from per-node labels such as the hostname, which a class keeps
only when some pod refers to them. :class:`NodeClasses` answers per class and per pod signature,
and remembers the answers until labels or taints change (``static_version``);
:class:`extender.index.NodeIndex` maps them onto its rows.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, cast

import numpy as np
import numpy.typing as npt

from extender import taints as taint_rules
from extender.affinity import PreferredAffinity, compile_preferred, compile_required
from extender.fitting import PodFit, label_misfit
from extender.objects import NodeInfo, PodRequest, Taint, Toleration

I64 = npt.NDArray[np.int64]
SIGNATURES: Final = 512
"""Pod signatures (and toleration or preferred-term lists) whose per-class answers are kept."""
STATIC_KIND: Final = {"untolerated_taint": 1, "node_affinity": 2}
"""The label and taint checks of :func:`extender.fitting.fits`, as the index's kind codes."""


@dataclass(frozen=True, slots=True)
class NodeClass:
    labels: Mapping[str, str]
    taints: tuple[Taint, ...]
    name: str = "\0class"
    """No node's name: a class's answer holds for each of its nodes only when the pod's terms
    do not match on fields (those pods are evaluated per node)."""


@dataclass(slots=True)
class Static:
    """Per-class outcome of a pod's static predicates."""

    version: int
    kind: npt.NDArray[np.int8]  # 0 pass, else STATIC_KIND of the failed check
    reason: list[str]  # "" where the class passes


class NodeClasses:
    """The classes of ``nodes`` (a list the owner keeps and this class updates in place)."""

    def __init__(self, nodes: list[NodeInfo]) -> None:
        self.nodes = nodes
        self.static_version = 0
        """Bumped whenever remembered per-class answers stop holding."""
        self.classes: list[NodeClass] = []
        self.class_of: I64 = np.zeros(len(nodes), dtype=np.int64)
        self._class_keys: tuple[str, ...] | None = None
        self._static: OrderedDict[object, Static] = OrderedDict()
        self._taint_counts: dict[tuple[Toleration, ...], tuple[int, I64]] = {}
        self._preferred_by_terms: dict[object, tuple[int, I64]] = {}
        self.classify()

    def classify(self) -> None:
        """Group nodes by taints and labels, leaving out labels whose values are all distinct
        (hostname and the like: pods that refer to them are evaluated per node)."""
        self._label_values: dict[str, dict[str, int]] = {}
        self._shared_values: dict[str, int] = {}
        for node in self.nodes:
            self._count_labels(node.labels, 1)
        self._assign_classes()

    def _count_labels(self, labels: Mapping[str, str], delta: int) -> None:
        """Per label key, how many nodes carry each value (and how many values are shared by
        more than one node), so that the per-node keys can be told after one node's change."""
        for key, value in labels.items():
            values = self._label_values.setdefault(key, {})
            before = values.get(value, 0)
            after = before + delta
            if after:
                values[value] = after
            else:
                del values[value]
                if not values:
                    del self._label_values[key]
            shared = (after > 1) - (before > 1)
            if shared:
                self._shared_values[key] = self._shared_values.get(key, 0) + shared

    def _unique_keys(self) -> tuple[str, ...]:
        return tuple(
            sorted(
                key
                for key, values in self._label_values.items()
                if len(values) > 1 and not self._shared_values.get(key)
            )
        )

    def _class_key(self, node: NodeInfo) -> tuple[object, ...]:
        unique = self._class_keys or ()
        labels = tuple(sorted((k, v) for k, v in node.labels.items() if k not in unique))
        return (labels, node.taints)

    def _assign_classes(self) -> None:
        self._class_keys = self._unique_keys()
        self._class_ids: dict[tuple[object, ...], int] = {}
        self.classes = []
        class_of = np.zeros(len(self.nodes), dtype=np.int64)
        for i, node in enumerate(self.nodes):
            class_of[i] = self._class_id(node)
        self.class_of = class_of
        self._static.clear()
        self.static_version += 1

    def _class_id(self, node: NodeInfo) -> int:
        key = self._class_key(node)
        c = self._class_ids.get(key)
        if c is None:
            c = self._class_ids[key] = len(self.classes)
            labels, _ = key
            self.classes.append(
                NodeClass(dict(cast(tuple[tuple[str, str], ...], labels)), node.taints)
            )
        return c

    def reclassify(self, i: int, node: NodeInfo) -> None:
        """A node's labels or taints changed: move it to its class, creating the class if it is
        new. Only when the change makes a label key per-node or shared (a second node with the
        same hostname value, say) are all nodes regrouped."""
        self._count_labels(self.nodes[i].labels, -1)
        self._count_labels(node.labels, 1)
        self.nodes[i] = node
        if self._unique_keys() != self._class_keys:
            self._assign_classes()
            return
        classes = len(self.classes)
        self.class_of[i] = self._class_id(node)
        if len(self.classes) != classes:
            # per-class answers cached for the old classes do not cover the new one
            self._static.clear()
            self.static_version += 1

    @property
    def ignored_keys(self) -> tuple[str, ...]:
        return self._class_keys or ()

    def static_for(self, pod: PodRequest) -> Static | None:
        """Per-class predicate outcome, or ``None`` when the pod needs per-node evaluation
        (it matches on fields, or refers to per-node labels). Only per-class outcomes are
        remembered, and the per-node labels change only with the version, so a remembered one
        is returned before anything is compiled."""
        sig = (pod.tolerations, tuple(sorted(pod.node_selector.items())), pod.required)
        hit = self._static.get(sig)
        if hit is not None and hit.version == self.static_version:
            self._static.move_to_end(sig)
            return hit
        required = compile_required(pod.node_selector, pod.required)
        if required.uses_fields:
            return None
        referenced = set(pod.node_selector)
        for term in pod.required.terms if pod.required else ():
            referenced.update(r.key for r in term.match_expressions)
        if referenced & set(self.ignored_keys):
            return None
        always = required.terms is None and not required.node_selector
        fit = PodFit(pod.tolerations, None if always else required)
        kind = np.zeros(len(self.classes), dtype=np.int8)
        reason: list[str] = [""] * len(self.classes)
        for c, cls in enumerate(self.classes):
            misfit = label_misfit(fit, cls)
            if misfit is not None:
                kind[c], reason[c] = STATIC_KIND[misfit.check], misfit.reason
        out = Static(self.static_version, kind, reason)
        self._static[sig] = out
        while len(self._static) > SIGNATURES:
            self._static.popitem(last=False)
        return out

    def static_per_node(self, pod: PodRequest, rows: I64) -> tuple[npt.NDArray[np.int8], list[str]]:
        fit = PodFit.of(pod)
        kind = np.zeros(len(rows), dtype=np.int8)
        reason: list[str] = [""] * len(rows)
        for j, i in enumerate(rows.tolist()):
            if i < 0:
                continue
            misfit = label_misfit(fit, self.nodes[i])
            if misfit is not None:
                kind[j], reason[j] = STATIC_KIND[misfit.check], misfit.reason
        return kind, reason

    def intolerable_by_class(self, tolerations: tuple[Toleration, ...]) -> I64:
        """Untolerated PreferNoSchedule taints per class, cached per toleration list."""
        hit = self._taint_counts.get(tolerations)
        if hit is not None and hit[0] == self.static_version:
            return hit[1]
        relevant = taint_rules.prefer_no_schedule_tolerations(tolerations)
        counts = np.array(
            [
                taint_rules.count_intolerable_prefer_no_schedule(c.taints, relevant)
                if c.taints
                else 0
                for c in self.classes
            ]
            or [0],
            dtype=np.int64,
        )
        if len(self._taint_counts) >= SIGNATURES:
            self._taint_counts.clear()
        self._taint_counts[tolerations] = (self.static_version, counts)
        return counts

    def preferred_of(self, pod: PodRequest, rows: I64, known: npt.NDArray[np.bool_]) -> I64:
        """:meth:`_preferred` with the per-class weights remembered per preferred-term list
        (pods of one Deployment share it) until labels change."""
        if not pod.preferred:
            return np.zeros(len(rows), dtype=np.int64)
        hit = self._preferred_by_terms.get(pod.preferred)
        if hit is not None and hit[0] == self.static_version:
            return np.where(known, hit[1][self.class_of[rows]], 0)
        preferred = compile_preferred(pod.preferred)
        referenced = {r.key for _, t in preferred.terms for r in (t.labels or ())}
        if preferred.uses_fields or (referenced & set(self.ignored_keys)):
            return self._preferred(rows, known, preferred)
        by_class = np.array(
            [preferred.score(c.labels, "\0class") for c in self.classes] or [0], dtype=np.int64
        )
        if len(self._preferred_by_terms) >= SIGNATURES:
            self._preferred_by_terms.clear()
        self._preferred_by_terms[pod.preferred] = (self.static_version, by_class)
        return np.where(known, by_class[self.class_of[rows]], 0)

    def _preferred(
        self, rows: I64, known: npt.NDArray[np.bool_], preferred: PreferredAffinity
    ) -> I64:
        """Preferred-affinity weight per node, per class where the terms allow it."""
        if not preferred.terms:
            return np.zeros(len(rows), dtype=np.int64)
        referenced = {r.key for _, t in preferred.terms for r in (t.labels or ())}
        if not preferred.uses_fields and not (referenced & set(self.ignored_keys)):
            by_class = np.array(
                [preferred.score(c.labels, "\0class") for c in self.classes], dtype=np.int64
            )
            return np.where(known, by_class[self.class_of[rows]], 0)
        out = np.zeros(len(rows), dtype=np.int64)
        for j, i in enumerate(rows.tolist()):
            if known[j]:
                node = self.nodes[i]
                out[j] = preferred.score(node.labels, node.name)
        return out
