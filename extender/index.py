"""Columnar index of the cluster state: filter and prioritize for thousands of nodes in
milliseconds.

kube-scheduler asks about every node for every pod, so per-node Python is too slow at 5,000 nodes.
This module answers the same questions as :func:`extender.filtering.filter_nodes` and
:func:`~extender.filtering.prioritize` (and property tests hold it to exactly the same answers),
with two shortcuts:

- **Node classes.** Taints, ``nodeSelector`` and node affinity depend only on a node's labels and
  taints, and nodes of a pool share them (apart from per-node labels such as the hostname, which
  a class keeps only when some pod refers to them). Predicates are evaluated once per class and
  per pod signature, and cached until labels or taints change.
- **Arrays.** Per node: free GPU memory sorted descending, device totals, idle count, free CPU and
  memory, and the inventory problem if any. A pod's fit is a few vectorised comparisons; binpack
  and spread scores are computed for all rows at once (:meth:`Binpack.score_rows`).
- **Node states.** Strategies with a :class:`~extender.scoring.StateScorer` fast path
  (``fragmentation``) score each distinct :data:`~extender.scoring.NodeState` once per need; a
  node's state id is recomputed only when its row changes, and scores are remembered per need, so
  a request costs array lookups plus the states not seen before.

Rows are refreshed from :class:`extender.cluster_state.ClusterState` only for nodes that changed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from itertools import repeat
from operator import itemgetter
from typing import Final, TypeVar, cast

import numpy as np
import numpy.typing as npt

from extender.filtering import (
    FAILURE_KINDS,
    NOT_FOUND_REASON,
    FilterResult,
)
from extender.fit import NodeGpus, shortage_reason
from extender.node_classes import NodeClasses, Static
from extender.objects import GpuNeed, NodeInfo, PodRequest
from extender.scoring import (
    DeviceRows,
    NodeState,
    ScoreWeights,
    StateScorer,
    Strategy,
    combine_arrays,
)
from extender.state_arrays import canonical
from extender.state_memo import StateMemo

UNKNOWN: Final = 2**62
"""Free CPU/memory of a node whose allocatable is unknown: never short."""
_STATIC_FAILED: Final = 16
_UNKNOWN_SLACK: Final = 64
"""Names a remembered node list may have beyond the cluster's nodes (watch lag)."""
"""Unresolvable-node dicts remembered per (pod signature, node list)."""

I64 = npt.NDArray[np.int64]
_T = TypeVar("_T")


def _take(seq: Sequence[_T], positions: list[int]) -> list[_T]:
    """``[seq[i] for i in positions]``, at C speed."""
    if not positions:
        return []
    if len(positions) == 1:
        return [seq[positions[0]]]
    return list(itemgetter(*positions)(seq))


class NodeIndex:
    """Arrays over the nodes of a state; built and refreshed by :class:`ClusterState`.

    ``gpus_of(name, now)`` returns the node's :class:`NodeGpus` (or why it has none),
    ``requested(name)`` the CPU/memory requested on it, ``valid_until(name)`` when its GPU state
    may change by time alone (a measurement turning stale).
    """

    def __init__(
        self,
        nodes: Sequence[NodeInfo],
        *,
        gpus_of: Callable[[str, float], NodeGpus | str],
        requested: Callable[[str], tuple[int, int]],
        valid_until: Callable[[str], float],
        now: float,
        memo: StateMemo | None = None,
        previous: NodeIndex | None = None,
    ) -> None:
        self.names = [n.name for n in nodes]
        self.nodes = list(nodes)
        self.pos = {name: i for i, name in enumerate(self.names)}
        self._gpus_of = gpus_of
        self._requested = requested
        self._valid_until_of = valid_until
        n = len(self.names)
        self.width = 1
        self.free_desc: I64 = np.full((n, 1), -1, dtype=np.int64)
        self.total_desc: I64 = np.zeros((n, 1), dtype=np.int64)
        self.count: I64 = np.zeros(n, dtype=np.int64)
        self.idle: I64 = np.zeros(n, dtype=np.int64)
        self.uniform = np.ones(n, dtype=bool)
        self.gpu_problem = np.zeros(n, dtype=bool)
        self.gpu_reason: list[str | None] = [None] * n
        self.valid_until = np.zeros(n, dtype=np.float64)
        self.cpu_free: I64 = np.full(n, UNKNOWN, dtype=np.int64)
        self.mem_free: I64 = np.full(n, UNKNOWN, dtype=np.int64)
        self._recent_positions: list[tuple[list[str], I64]] = []
        self._static_failed: OrderedDict[tuple[int, int], tuple[Static, I64, dict[str, str]]]
        self._static_failed = OrderedDict()
        self._gpu_rows: list[NodeGpus | None] = [None] * n
        self._state_id: I64 = np.full(n, -1, dtype=np.int64)
        self.memo = memo if memo is not None else StateMemo()
        self.memo.max_states = max(self.memo.max_states, 2 * n + 1024)
        self._generation = self.memo.generation
        self.classes = NodeClasses(self.nodes)
        carried = self._carry_rows(previous, now) if previous is not None else set()
        for i in range(n):
            if i not in carried:
                self.refresh_row(i, now)

    def _carry_rows(self, previous: NodeIndex, now: float) -> set[int]:
        """Copy, in one step per column, the device rows of nodes whose GPU state object is
        ``previous``'s (a node added or deleted would otherwise sort and store every other
        node's devices again); returns the rows copied. Host rows are recomputed; state ids
        are kept where the free CPU/memory is also unchanged (same memo), so the next request
        does not re-intern every other node's state."""
        mine: list[int] = []
        theirs: list[int] = []
        for i, name in enumerate(self.names):
            j = previous.pos.get(name)
            if j is None:
                continue
            g = previous._gpu_rows[j]
            if g is None or self._gpus_of(name, now) is not g:
                continue
            mine.append(i)
            theirs.append(j)
            self._gpu_rows[i] = g
            self._set_host(i)
        if not mine:
            return set()
        if previous.width > self.width:
            self._widen(previous.width)
        a = np.array(mine, dtype=np.int64)
        b = np.array(theirs, dtype=np.int64)
        w = previous.width
        self.free_desc[a, :w] = previous.free_desc[b]
        self.total_desc[a, :w] = previous.total_desc[b]
        self.count[a] = previous.count[b]
        self.idle[a] = previous.idle[b]
        self.uniform[a] = previous.uniform[b]
        if previous.memo is self.memo and previous._generation == self.memo.generation:
            same = (
                (previous._state_id[b] >= 0)
                & (previous.cpu_free[b] == self.cpu_free[a])
                & (previous.mem_free[b] == self.mem_free[a])
            )
            self._state_id[a[same]] = previous._state_id[b[same]]
        return set(mine)

    # ---- classes -------------------------------------------------------------------------
    def reclassify_node(self, i: int, node: NodeInfo) -> None:
        """A node's labels or taints changed (:meth:`NodeClasses.reclassify`)."""
        self.classes.reclassify(i, node)
        self._static_failed.clear()  # they were built from the classes of the nodes

    @property
    def static_version(self) -> int:
        return self.classes.static_version

    @property
    def ignored_keys(self) -> tuple[str, ...]:
        return self.classes.ignored_keys

    # ---- rows ----------------------------------------------------------------------------
    def update_node(self, i: int, node: NodeInfo) -> None:
        """A node's labels and taints are unchanged; keep its new object for its other fields."""
        self.nodes[i] = node

    def _set_host(self, i: int) -> None:
        """The row's free CPU and memory and how long its GPU state holds."""
        name = self.names[i]
        cpu, mem = self._requested(name)
        node = self.nodes[i]
        self.cpu_free[i] = (
            UNKNOWN if node.allocatable_milli_cpu is None else node.allocatable_milli_cpu - cpu
        )
        self.mem_free[i] = (
            UNKNOWN if node.allocatable_memory is None else node.allocatable_memory - mem
        )
        self.valid_until[i] = self._valid_until_of(name)

    def refresh_row(self, i: int, now: float) -> None:
        name = self.names[i]
        g = self._gpus_of(name, now)
        self._set_host(i)
        self._state_id[i] = -1
        self._gpu_rows[i] = None if isinstance(g, str) else g
        if isinstance(g, str):
            self.gpu_problem[i] = True
            self.gpu_reason[i] = g
            self.count[i] = 0
            self.idle[i] = 0
            self.free_desc[i, :] = -1
            self.total_desc[i, :] = 0
            return
        self.gpu_problem[i] = False
        self.gpu_reason[i] = None
        devices = sorted(g.devices, key=lambda d: (-d.free_mib, d.index))
        if len(devices) > self.width:
            self._widen(len(devices))
        self.count[i] = len(devices)
        self.idle[i] = g.idle_count
        self.free_desc[i, :] = -1
        self.total_desc[i, :] = 0
        self.free_desc[i, : len(devices)] = [d.free_mib for d in devices]
        self.total_desc[i, : len(devices)] = [d.total_mib for d in devices]
        self.uniform[i] = len({d.total_mib for d in devices}) <= 1

    def _widen(self, width: int) -> None:
        n = len(self.names)
        free = np.full((n, width), -1, dtype=np.int64)
        total = np.zeros((n, width), dtype=np.int64)
        free[:, : self.width] = self.free_desc
        total[:, : self.width] = self.total_desc
        self.free_desc, self.total_desc, self.width = free, total, width

    def refresh_stale(self, now: float) -> None:
        for i in np.flatnonzero(self.valid_until < now).tolist():
            self.refresh_row(i, now)
            if self.valid_until[i] < now:  # still stale: no need to look again until it changes
                self.valid_until[i] = np.inf

    def positions(self, names: Sequence[str]) -> I64:
        """Row of each name, -1 for unknown names. Recent answers are reused: kube-scheduler
        sends the same node list for every pod, and prioritize gets the nodes filter passed."""
        as_list = names if isinstance(names, list) else list(names)
        recent = self._recent_positions
        for k, (cached_names, cached_idx) in enumerate(recent):
            if len(names) == len(cached_names) and as_list == cached_names:
                if k:  # most recently used first: the full list outlives the passed ones
                    recent.insert(0, recent.pop(k))
                return cached_idx
        idx = np.fromiter(map(self.pos.get, names, repeat(-1)), dtype=np.int64, count=len(names))
        self._remember_positions(list(as_list), idx)
        return idx

    def _remember_positions(self, names: list[str], idx: I64) -> None:
        """Kept only for lists kube-scheduler could send (its nodes, a few the watch may not
        have yet): what a request makes the index keep stays bounded by the cluster's size."""
        if len(names) > len(self.names) + _UNKNOWN_SLACK or (
            int(np.count_nonzero(idx < 0)) > _UNKNOWN_SLACK
        ):
            return
        self._recent_positions.insert(0, (names, idx))
        del self._recent_positions[4:]

    def _remembered(self, idx: I64) -> bool:
        return any(cached is idx for _, cached in self._recent_positions)

    # ---- filter --------------------------------------------------------------------------
    def filter(self, pod: PodRequest, names: Sequence[str], now: float) -> FilterResult:
        """Same result as :func:`extender.filtering.filter_nodes` over the state."""
        if not self.names:
            missing = dict.fromkeys(names, NOT_FOUND_REASON)
            counts = dict.fromkeys(FAILURE_KINDS, 0)
            counts["node_not_found"] = len(names)
            return FilterResult((), {}, missing, counts)
        self.refresh_stale(now)
        idx = self.positions(names)
        known = idx >= 0
        rows = np.where(known, idx, 0)
        static = self.classes.static_for(pod)
        if static is None:
            kind, per_node_reason = self.classes.static_per_node(pod, idx)
        else:
            kind = static.kind[self.classes.class_of[rows]]
            per_node_reason = None
        kind = np.where(known, kind, 0)
        ok = known & (kind == 0)
        short_cpu = ok & (pod.milli_cpu > 0) & (pod.milli_cpu > self.cpu_free[rows])
        short_mem = ok & (pod.memory > 0) & (pod.memory > self.mem_free[rows])
        short_res = short_cpu | short_mem
        ok &= ~short_res
        need = pod.gpu
        no_inv = np.zeros(len(idx), dtype=bool)
        short_gpu = np.zeros(len(idx), dtype=bool)
        if need is not None:
            no_inv = ok & self.gpu_problem[rows]
            ok &= ~no_inv
            fits = self._fits(rows, need)
            short_gpu = ok & ~fits
            ok &= fits
        ok_at = np.flatnonzero(ok)
        passed = _take(names, ok_at.tolist())
        self._remember_positions(passed, idx[ok_at])
        failed: dict[str, str] = {}
        unresolvable = self._static_failures(static, idx, names, known, kind, per_node_reason)
        if short_res.any():
            for text, where in (
                ("Insufficient cpu", short_cpu & ~short_mem),
                ("Insufficient memory", short_mem & ~short_cpu),
                ("Insufficient cpu, Insufficient memory", short_cpu & short_mem),
            ):
                failed.update(dict.fromkeys(_take(names, np.flatnonzero(where).tolist()), text))
        for j in np.flatnonzero(no_inv).tolist():
            unresolvable[names[j]] = self.gpu_reason[int(rows[j])] or ""
        if need is not None and short_gpu.any():
            self._gpu_reasons(need, names, rows, np.flatnonzero(short_gpu), failed)
        counts = dict(
            zip(
                FAILURE_KINDS,
                (
                    int((~known).sum()),
                    int((kind == 1).sum()),
                    int((kind == 2).sum()),
                    int(short_res.sum()),
                    int(no_inv.sum()),
                    int(short_gpu.sum()),
                ),
                strict=True,
            )
        )
        return FilterResult(tuple(passed), failed, unresolvable, counts)

    def _static_failures(
        self,
        static: Static | None,
        idx: I64,
        names: Sequence[str],
        known: npt.NDArray[np.bool_],
        kind: npt.NDArray[np.int8],
        per_node_reason: list[str] | None,
    ) -> dict[str, str]:
        """A new ``FailedAndUnresolvableNodes`` dict holding the names not found and those
        failing taints or affinity, in request order. It depends only on the positions and the
        per-class outcome, so for a node list seen before (``idx`` is the remembered positions
        array) and a pod signature seen before it is copied from the last one built."""
        key = (id(static), id(idx))
        hit = self._static_failed.get(key) if static is not None else None
        if hit is not None and hit[0] is static and hit[1] is idx:
            self._static_failed.move_to_end(key)
            return dict(hit[2])
        out: dict[str, str] = dict.fromkeys(
            _take(names, np.flatnonzero(~known).tolist()), NOT_FOUND_REASON
        )
        bad = np.flatnonzero(kind > 0)
        if static is not None:
            rows = np.where(known, idx, 0)
            reasons = _take(static.reason, self.classes.class_of[rows[bad]].tolist())
        else:
            assert per_node_reason is not None
            reasons = _take(per_node_reason, bad.tolist())
        out.update(zip(_take(names, bad.tolist()), reasons, strict=True))
        if static is not None and self._remembered(idx):
            self._static_failed[key] = (static, idx, out)
            while len(self._static_failed) > _STATIC_FAILED:
                self._static_failed.popitem(last=False)
            return dict(out)
        return out

    def _fits(self, rows: I64, need: GpuNeed) -> npt.NDArray[np.bool_]:
        if need.mib_per_gpu is None:
            out: npt.NDArray[np.bool_] = self.idle[rows] >= need.count
            return out
        if need.count > self.width:
            return np.zeros(len(rows), dtype=bool)
        kth: I64 = self.free_desc[rows, need.count - 1]
        return (self.count[rows] >= need.count) & (kth >= need.mib_per_gpu)

    def _gpu_reasons(
        self, need: GpuNeed, names: Sequence[str], rows: I64, where: I64, out: dict[str, str]
    ) -> None:
        r = rows[where]
        count, idle = self.count[r], self.idle[r]
        if need.mib_per_gpu is None:
            enough = np.zeros(len(r), dtype=np.int64)
            nxt = np.zeros(len(r), dtype=np.int64)
        else:
            free = self.free_desc[r]
            enough = (free >= need.mib_per_gpu).sum(axis=1)
            nxt = np.where(
                enough < count, free[np.arange(len(r)), np.minimum(enough, self.width - 1)], 0
            )
        # one reason text per distinct (devices, idle, enough, next free MiB), packed into one
        # integer (7 + 7 + 7 bits, and 40 for the MiB) so that grouping is one sort
        if len(r) and (int(count.max()) > 127 or int(nxt.max()) >= 1 << 40):
            rows_of = list(
                zip(count.tolist(), idle.tolist(), enough.tolist(), nxt.tolist(), strict=True)
            )
            memo: dict[tuple[int, int, int, int], str] = {}
            texts = [memo.get(k) or memo.setdefault(k, shortage_reason(need, *k)) for k in rows_of]
            out.update(zip(_take(names, where.tolist()), texts, strict=True))
            return
        packed = (((count << 7 | idle) << 7 | enough) << 40) | np.maximum(nxt, 0)
        uniq, inverse = np.unique(packed, return_inverse=True)
        texts = [
            shortage_reason(need, k >> 54, (k >> 47) & 127, (k >> 40) & 127, k & ((1 << 40) - 1))
            for k in uniq.tolist()
        ]
        out.update(
            zip(
                _take(names, where.tolist()),
                _take(texts, inverse.reshape(-1).tolist()),
                strict=True,
            )
        )

    # ---- prioritize ----------------------------------------------------------------------
    def prioritize(
        self,
        pod: PodRequest,
        names: Sequence[str],
        now: float,
        strategy: Strategy,
        weights: ScoreWeights | None = None,
    ) -> list[tuple[str, int]] | None:
        """Same result as :func:`extender.filtering.prioritize`, or ``None`` when the strategy
        has no array form (the caller then uses the per-node path)."""
        scores = self.priorities(pod, names, now, strategy, weights)
        return None if scores is None else list(zip(names, scores, strict=True))

    def priorities(
        self,
        pod: PodRequest,
        names: Sequence[str],
        now: float,
        strategy: Strategy,
        weights: ScoreWeights | None = None,
    ) -> list[int] | None:
        """:meth:`prioritize`'s scores alone, in the order of ``names``: the server builds its
        reply from them without an intermediate list of pairs."""
        if not self.names:
            return None if self._array_form(strategy) is None else [0] * len(names)
        self.refresh_stale(now)
        idx = self.positions(names)
        known = idx >= 0
        rows = np.where(known, idx, 0)
        gpu = self._gpu_scores(pod, names, rows, known, now, strategy)
        if gpu is None:
            return None
        affinity = self.classes.preferred_of(pod, rows, known)
        counts = self.classes.intolerable_by_class(pod.tolerations)
        intolerable = np.where(known, counts[self.classes.class_of[rows]], 0)
        scores: list[int] = combine_arrays(gpu, affinity, intolerable, weights).tolist()
        return scores

    def gpu_scores(
        self, pod: PodRequest, names: Sequence[str], now: float, strategy: Strategy
    ) -> npt.NDArray[np.float64] | None:
        """The strategy's own 0..100 score per name before combining (0 where unknown or not
        fitting), as :func:`extender.filtering.prioritize` computes it; ``None`` without an
        array form."""
        if not self.names:
            return None if self._array_form(strategy) is None else np.zeros(len(names))
        self.refresh_stale(now)
        idx = self.positions(names)
        return self._gpu_scores(pod, names, np.where(idx >= 0, idx, 0), idx >= 0, now, strategy)

    @staticmethod
    def _array_form(strategy: Strategy) -> str | None:
        if hasattr(strategy, "state_need") and hasattr(strategy, "score_states"):
            return "states"
        if hasattr(strategy, "score_rows") and not getattr(strategy, "host_aware", False):
            return "rows"
        return None

    def _gpu_scores(
        self,
        pod: PodRequest,
        names: Sequence[str],
        rows: I64,
        known: npt.NDArray[np.bool_],
        now: float,
        strategy: Strategy,
    ) -> npt.NDArray[np.float64] | None:
        form = self._array_form(strategy)
        if form is None:
            return None
        gpu = np.zeros(len(rows), dtype=np.float64)
        need = pod.gpu
        if form == "states":
            scorer = cast(StateScorer, strategy)
            state_need = scorer.state_need(need, pod)
            if state_need is not None:
                sel = np.flatnonzero(known & ~self.gpu_problem[rows])
                if sel.size:
                    gpu[sel] = self._score_by_state(scorer, state_need, rows[sel])
        elif need is not None:
            score_rows = strategy.score_rows  # type: ignore[attr-defined]
            fits = known & ~self.gpu_problem[rows] & self._fits(rows, need)
            fast = fits & self.uniform[rows]
            sel = np.flatnonzero(fast)
            if sel.size:
                r = rows[sel]
                dev = DeviceRows(self.free_desc[r], self.total_desc[r], self.count[r], self.idle[r])
                gpu[sel] = score_rows(dev, need)
            for j in np.flatnonzero(fits & ~fast).tolist():
                g = self._gpus_of(names[j], now)
                if not isinstance(g, str):
                    chosen = strategy.choose(g, need)
                    if chosen is not None:
                        gpu[j] = strategy.score(g, need, chosen)
        return gpu

    # ---- per-state scores -----------------------------------------------------------------
    def _node_state(self, i: int) -> NodeState:
        g = self._gpu_rows[i]
        assert g is not None
        devs = canonical(tuple((d.total_mib, d.free_mib, d.idle) for d in g.devices))[0]
        cpu, mem = int(self.cpu_free[i]), int(self.mem_free[i])
        return devs, None if cpu == mem == UNKNOWN else (cpu, mem)

    def _state_ids_of(self, rows: I64) -> I64:
        """State id of each row, interning the states of rows that changed since last asked."""
        memo = self.memo
        if self._generation != memo.generation:
            self._state_id[:] = -1
            self._generation = memo.generation
        ids: I64 = self._state_id[rows]
        missing = rows[ids < 0]
        if not missing.size:
            return ids
        missing = np.unique(missing)
        if len(memo.states) + missing.size > memo.max_states:
            memo.clear()
            self._generation = memo.generation
            self._state_id[:] = -1
            missing = np.unique(rows)
        states, known = memo.states, memo.ids
        for i in missing.tolist():
            state = self._node_state(i)
            sid = known.get(state)
            if sid is None:
                sid = known[state] = len(states)
                states.append(state)
            self._state_id[i] = sid
        out: I64 = self._state_id[rows]
        return out

    def _score_by_state(
        self, scorer: StateScorer, need: GpuNeed, rows: I64
    ) -> npt.NDArray[np.float64]:
        """``scorer``'s score per row: remembered per (strategy, need, state), the states not
        seen before computed once each."""
        ids = self._state_ids_of(rows)
        return self.memo.scores_of(scorer, need, ids)

    def warm(self, scorer: StateScorer, needs: Sequence[GpuNeed]) -> int:
        """Score every node's state for each of ``needs`` now (before readiness, for the
        shapes the strategy has learned); returns how many needs were computed."""
        if not self.names:
            return 0
        rows = np.flatnonzero(~self.gpu_problem)
        ids = self._state_ids_of(rows)
        for need in needs:
            self.memo.scores_of(scorer, need, ids)
        return len(needs)
