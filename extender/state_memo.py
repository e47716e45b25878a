"""Distinct node states and the scores remembered for them, shared by successive node indexes.

Nodes in the same :data:`~extender.scoring.NodeState` score the same, and a 5,000-node cluster
has few distinct states, so a strategy with a state fast path (``fragmentation``) scores each
state once per need; :class:`~extender.index.NodeIndex` maps its rows to state ids.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

import numpy as np
import numpy.typing as npt

from extender.objects import GpuNeed
from extender.scoring import NodeState, StateScorer
from extender.state_arrays import StateArrays

I64 = npt.NDArray[np.int64]
STATE_NEEDS: Final = 64
"""Needs (pod shapes) whose per-state scores are remembered, least recently used dropped."""


class StateMemo:
    """Distinct node states and the scores remembered per (strategy, need, state).

    Owned by :class:`~extender.cluster_state.ClusterState` and handed to every index it builds, so a
    node added or deleted (which rebuilds the index) keeps what was computed for the states that
    are still there. ``arrays`` holds the states in array form for strategies that score many
    states at once (``score_arrays``), extended as states are interned.
    """

    def __init__(self, max_states: int = 1 << 16) -> None:
        self.max_states = max_states
        self.states: list[NodeState] = []
        self.ids: dict[NodeState, int] = {}
        self.scores: OrderedDict[tuple[int, object], tuple[object, npt.NDArray[np.float64]]]
        self.scores = OrderedDict()
        self._arrays = StateArrays()
        self.generation = 0
        """Bumped when the memo is emptied: state ids handed out before are void."""

    def clear(self) -> None:
        self.states.clear()
        self.ids.clear()
        self.scores.clear()
        self._arrays = StateArrays()
        self.generation += 1

    def arrays(self) -> StateArrays:
        """Every interned state as arrays (the new ones converted now)."""
        if len(self._arrays) < len(self.states):
            self._arrays = self._arrays.extended(self.states[len(self._arrays) :])
        return self._arrays

    def scores_of(self, scorer: StateScorer, need: GpuNeed, ids: I64) -> npt.NDArray[np.float64]:
        """Scores of the states ``ids`` for ``need``, computing the ones not remembered (all
        at once through ``score_arrays`` where the strategy has it)."""
        states, tables = self.states, self.scores
        key = (id(scorer), need)
        hit = tables.get(key)
        if hit is None or hit[0] is not scorer:
            memo = np.full(len(states), np.nan)
            if len(tables) >= STATE_NEEDS:
                tables.popitem(last=False)
        else:
            memo = hit[1]
            tables.move_to_end(key)
            if len(memo) < len(states):
                memo = np.concatenate([memo, np.full(len(states) - len(memo), np.nan)])
        tables[key] = (scorer, memo)
        out = memo[ids]
        todo = np.isnan(out)
        if todo.any():
            wanted = np.zeros(len(states), dtype=bool)
            wanted[ids[todo]] = True  # distinct and sorted, in one pass rather than a sort
            new = np.flatnonzero(wanted)
            by_arrays = getattr(scorer, "score_arrays", None)
            if by_arrays is not None:
                arrays = self.arrays()
                memo[new] = by_arrays(arrays if len(new) == len(arrays) else arrays.take(new), need)
            else:
                memo[new] = scorer.score_states([states[k] for k in new.tolist()], need)
            out = memo[ids]
        return out
