"""The ``fragmentation`` scoring strategy and how it learns the workload."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from extender.fit import DeviceState, NodeGpus
from extender.fragmentation.arrays import scores_arrays
from extender.fragmentation.host import NO_GPU, HostGpus, HostNeed
from extender.fragmentation.stranding import (
    Dev,
    Host,
    clear_placement_caches,
    devs_of,
    host_after,
    place,
    score_of,
    take,
    unusable,
)
from extender.fragmentation.workload import DEFAULT_WORKLOAD, Workload
from extender.objects import GpuNeed, PodRequest
from extender.scoring import NodeState, get_strategy, register
from extender.state_arrays import StateArrays

ARRAY_BATCH: Final = 64
"""From this many node states on, :meth:`Fragmentation.score_states` uses the array form
(fixed cost ~1 ms, then a few µs a state); fewer go through :func:`place` one by one (~20-50 µs
each), as after one node changed."""

_LAST: list[tuple[NodeGpus, GpuNeed, Workload, tuple[tuple[int, ...], float] | None] | None] = [
    None
]
"""The last placement computed: ``score`` follows ``choose`` for the same node and need."""


def clear_caches() -> None:
    """Forget memoised node states (benchmarks measure the cold cost with this)."""
    clear_placement_caches()
    _LAST[0] = None


@dataclass(frozen=True, slots=True)
class Fragmentation:
    """Fragmentation-aware strategy (``--scoring fragmentation``).

    ``workload`` is what the extender expects to arrive; replace the registered instance
    (``register(Fragmentation(workload=Workload.from_pods(...)))``) as the observed mix changes.
    """

    workload: Workload = field(default=DEFAULT_WORKLOAD)
    name: str = "fragmentation"
    host_aware: bool = True
    """Wants :class:`HostGpus`/:class:`HostNeed` (see :func:`host_context`), and scores pods
    without GPUs too: their CPU and memory can strand a node's free GPUs."""

    def _devs(self, gpus: NodeGpus) -> tuple[Dev, ...]:
        return devs_of(gpus.devices)

    def _host(self, gpus: NodeGpus) -> Host:
        if not isinstance(gpus, HostGpus):
            return None
        big = 1 << 62
        cpu = big if gpus.milli_cpu_free is None else gpus.milli_cpu_free
        mem = big if gpus.memory_free is None else gpus.memory_free
        return None if cpu == mem == big else (cpu, mem)

    def placement(self, gpus: NodeGpus, need: GpuNeed) -> tuple[tuple[int, ...], float] | None:
        """Chosen device indices and the fragmentation they add; ``None`` if it does not fit.

        CPU and memory count when ``gpus`` is a :class:`HostGpus` and ``need`` a
        :class:`HostNeed`; otherwise only the GPUs do."""
        last = _LAST[0]
        if last is not None and last[0] is gpus and last[1] is need and last[2] is self.workload:
            return last[3]
        result = self._placement(gpus, need)
        _LAST[0] = (gpus, need, self.workload, result)
        return result

    def _placement(self, gpus: NodeGpus, need: GpuNeed) -> tuple[tuple[int, ...], float] | None:
        found = place(self._devs(gpus), self._host(gpus), need, self.workload)
        if found is None:
            return None
        positions, increase = found
        devices: Sequence[DeviceState] = gpus.devices
        return tuple(sorted(devices[p].index for p in positions)), increase

    def state_need(self, need: GpuNeed | None, pod: PodRequest) -> GpuNeed | None:
        """The need :func:`extender.filtering.prioritize` hands this strategy for ``pod``."""
        if not self.host_aware:
            return need
        g = NO_GPU if need is None else need
        return HostNeed(
            count=g.count, mib_per_gpu=g.mib_per_gpu, milli_cpu=pod.milli_cpu, memory=pod.memory
        )

    def score_states(self, states: Sequence[NodeState], need: GpuNeed) -> list[float]:
        """:meth:`score` of :meth:`choose`'s devices (0 where none fit) for nodes in ``states``:
        the columnar index's fast path, memoised there per distinct state. A few states go
        through :func:`place` one by one (its own memo helps); many through the array form."""
        if len(states) >= ARRAY_BATCH:
            return self.score_arrays(StateArrays.of(states), need)
        out: list[float] = []
        for devs, host in states:
            found = place(devs, host if self.host_aware else None, need, self.workload)
            out.append(0.0 if found is None else score_of(found[1]))
        return out

    def learned_needs(self) -> list[GpuNeed]:
        """The needs :meth:`state_need` gives for pods of the workload's shapes (share shapes,
        which only trace replays use, have no MiB need and are left out): what to score before
        readiness."""
        return [
            HostNeed(
                count=s.count, mib_per_gpu=s.mib_per_gpu, milli_cpu=s.milli_cpu, memory=s.memory
            )
            if self.host_aware
            else GpuNeed(count=s.count, mib_per_gpu=s.mib_per_gpu)
            for s in self.workload.shapes
            if s.share_milli is None
        ]

    def score_arrays(self, arrays: StateArrays, need: GpuNeed) -> list[float]:
        """:meth:`score_states` over states already in array form (what the index keeps);
        the same numbers, bit for bit."""
        if len(arrays) < ARRAY_BATCH:
            return self.score_states(arrays.states, need)
        if not self.host_aware:
            arrays = arrays.without_hosts()
        return scores_arrays(arrays, need, self.workload)

    def choose(self, gpus: NodeGpus, need: GpuNeed) -> tuple[int, ...] | None:
        found = self.placement(gpus, need)
        return None if found is None else found[0]

    def score(self, gpus: NodeGpus, need: GpuNeed, chosen: tuple[int, ...]) -> float:
        found = self.placement(gpus, need)
        if found is not None and found[0] == tuple(sorted(chosen)):
            return score_of(found[1])
        by_index = {d.index: p for p, d in enumerate(gpus.devices)}
        devs = list(self._devs(gpus))
        host = self._host(gpus)
        before = unusable(tuple(devs), host, self.workload)
        for i in chosen:
            devs[by_index[i]] = take(devs[by_index[i]], need)
        return score_of(unusable(tuple(devs), host_after(host, need), self.workload) - before)


def learn(pods: Iterable[PodRequest]) -> Fragmentation:
    """Register a ``fragmentation`` strategy for the workload of ``pods`` (the pods the extender
    sees, bound or pending) and return it; call again as the mix changes. The registered one is
    kept while the new estimate is :meth:`Workload.similar` to it, so its caches stay warm."""
    current = get_strategy("fragmentation")
    workload = Workload.from_pods(pods)
    if isinstance(current, Fragmentation) and current.workload.similar(workload):
        return current
    strategy = Fragmentation(workload=workload)
    register(strategy)
    return strategy


register(Fragmentation())
