"""Node states as arrays, for strategies that score many states at once.

A :data:`~extender.scoring.NodeState` is ``(devices, host)``: per device ``(total_mib,
free_mib, idle)`` and the host's free ``(milli_cpu, memory)`` or ``None``. The columnar index
interns every distinct state once; :class:`StateArrays` holds them as numpy arrays, extended as
states are interned, so that scoring a need never seen before converts nothing.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import TypeVar

import numpy as np
import numpy.typing as npt

_Dev = tuple[int, int, bool]
_Host = tuple[int, int] | None
_I64 = npt.NDArray[np.int64]
_G = TypeVar("_G", bound=np.generic)


def canonical(devs: tuple[_Dev, ...]) -> tuple[tuple[_Dev, ...], tuple[int, ...] | None]:
    """The devices sorted, and the position each came from (``None``: already sorted).

    A node's score depends on its devices as a set, not on their order, so strategies compute
    on this order (``extender.fragmentation`` on every path: one place, the array form, the
    measure itself) and the index interns states in it: nodes whose devices are a permutation
    of each other share one memo entry and get the same bits. The sort is stable, so among
    equal devices the first in the node's own order comes first."""
    if all(devs[k] <= devs[k + 1] for k in range(len(devs) - 1)):
        return devs, None
    order = tuple(sorted(range(len(devs)), key=devs.__getitem__))
    return tuple(devs[k] for k in order), order


@dataclass(slots=True)
class StateArrays:
    """Node states as arrays: devices padded to a common width (``real`` marks the devices a
    state has; a padding device of no memory adds exact zeros to every sum), host free
    CPU/memory by host id among the distinct hosts. Built once and extended as states are
    interned, so a request for a new need converts nothing."""

    states: list[tuple[tuple[_Dev, ...], _Host]] = field(default_factory=list)
    total: _I64 = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))
    free: _I64 = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))
    idle: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros((0, 0), dtype=bool))
    real: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros((0, 0), dtype=bool))
    hosts: list[_Host] = field(default_factory=list)
    host_id: _I64 = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    ids: dict[_Host, int] = field(default_factory=dict)
    hostless: bool = False
    """Every host reads as unknown (:meth:`without_hosts`)."""
    origin: tuple[StateArrays, _I64] | None = None
    """For arrays made by :meth:`take` or :meth:`without_hosts`: the arrays they were taken
    from (never itself taken) and the rows, so that per-state results derived once for those
    (:attr:`derived`) serve every subset."""
    derived: dict[Hashable, object] = field(default_factory=dict)
    """Per-state results that do not depend on the pod (what a strategy derives from the
    states alone), by the strategy's key, each for a prefix of these rows: :meth:`extended`
    shares the dict, since these rows stay a prefix of the extended arrays."""

    @classmethod
    def of(cls, states: Sequence[tuple[tuple[_Dev, ...], _Host]]) -> StateArrays:
        return cls().extended(states)

    def __len__(self) -> int:
        return len(self.states)

    def extended(self, states: Sequence[tuple[tuple[_Dev, ...], _Host]]) -> StateArrays:
        """These arrays with ``states`` appended (the host list grows in place)."""
        old = self.total.shape[1]
        width = max([old, *(len(d) for d, _ in states)])
        flat = np.zeros((len(states), width, 3), dtype=np.int64)
        real = np.zeros((len(states), width), dtype=bool)
        for k, (devs, _) in enumerate(states):
            if devs:
                flat[k, : len(devs)] = devs
                real[k, : len(devs)] = True
        ids = self.ids
        host_id = np.fromiter(
            (ids.setdefault(h, len(ids)) for _, h in states), dtype=np.int64, count=len(states)
        )
        self.hosts.extend(list(ids)[len(self.hosts) :])

        def grow(a: npt.NDArray[_G], fill: object) -> npt.NDArray[_G]:
            if a.shape[1] == width:
                return a
            out = np.full((a.shape[0], width), fill, dtype=a.dtype)
            out[:, : a.shape[1]] = a
            return out

        return StateArrays(
            [*self.states, *states],
            np.concatenate([grow(self.total, 0), flat[:, :, 0]]),
            np.concatenate([grow(self.free, 0), flat[:, :, 1]]),
            np.concatenate([grow(self.idle, False), flat[:, :, 2] > 0]),
            np.concatenate([grow(self.real, False), real]),
            self.hosts,
            np.concatenate([self.host_id, host_id]),
            ids,
            derived=self.derived if self.origin is None and not self.hostless else {},
        )

    def root(self) -> tuple[StateArrays, _I64 | None]:
        """The arrays these rows were taken from, and which rows (``None``: these are they)."""
        if self.origin is None:
            return self, None
        return self.origin

    def without_hosts(self) -> StateArrays:
        """The same devices with every host unknown (strategies that ignore the host)."""
        return StateArrays(
            [(d, None) for d, _ in self.states],
            self.total,
            self.free,
            self.idle,
            self.real,
            [None],
            np.zeros(len(self.states), dtype=np.int64),
            {None: 0},
            hostless=True,
            origin=self.origin or (self, np.arange(len(self.states))),
        )

    def take(self, rows: _I64) -> StateArrays:
        """The states at ``rows``, sharing the host list."""
        at = rows.tolist()
        return StateArrays(
            list(itemgetter(*at)(self.states)) if len(at) > 1 else [self.states[k] for k in at],
            self.total[rows],
            self.free[rows],
            self.idle[rows],
            self.real[rows],
            self.hosts,
            self.host_id[rows],
            self.ids,
            hostless=self.hostless,
            origin=(self, rows) if self.origin is None else (self.origin[0], self.origin[1][rows]),
        )
