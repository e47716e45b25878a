"""Concurrent binds against the sequential reference (#24).

kube-scheduler binds in goroutines of their own, so the extender sees binds overlap one another,
the filter calls of the next pods and the watch events of the pods it bound. Hypothesis draws the
interleaving: which bind starts, which API call answers (or fails), when the watch shows a bound
pod, when a filter probes. Whatever the order:

- the extender's view (cached GPU states, the index, reservations) equals a state built from
  scratch out of what is committed at that moment (bound pods the watch has shown, reservations
  of binds in flight), for every device's free memory and for a filter's answer;
- replaying the successful binds one at a time in the order they were decided, each fits the
  devices it was given when its turn comes: no device is ever over-committed;
- when no API call fails, every bind gets exactly what the sequential reference gives it (the same
  verdict, the same devices).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extender.cluster_state import ClusterState
from extender.decode import node_from_json, pod_from_json
from extender.filtering import choose_devices
from extender.objects import GPU_INDICES_ANNOTATION
from extender.server import BindError, Extender, ExtenderSettings
from tests.extender.support import NOW
from tests.extender.test_filtering import node_json, pod_json

TTL = 3600.0
MIB = (10000, 20000, 30000, 50000)


@dataclass
class _Call:
    """One bind's API call, held until the test answers it."""

    key: str
    node: str
    indices: tuple[int, ...]
    answer: asyncio.Future[bool]


@dataclass
class HeldBinder:
    """A :class:`~extender.server.Binder` whose calls wait for the test to answer them."""

    calls: list[_Call] = field(default_factory=list)
    entered: asyncio.Event = field(default_factory=asyncio.Event)

    async def bind(
        self, *, namespace: str, name: str, uid: str, node: str, gpu_indices: tuple[int, ...]
    ) -> None:
        call = _Call(f"{namespace}/{name}", node, gpu_indices, asyncio.Future())
        self.calls.append(call)
        self.entered.set()
        if not await call.answer:
            raise BindError("HTTP 409: the object has been modified")

    async def get_claim(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return None

    async def get_pod(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return None


@dataclass(frozen=True)
class Case:
    used: tuple[tuple[int, int], ...]
    """Measured used MiB of each node's two GPUs."""
    pods: tuple[tuple[int, int, int], ...]
    """Per pod: MiB per GPU, GPU count, target node."""


def _pod(i: int, mib: int, count: int) -> dict[str, Any]:
    raw = pod_json(mib, count)
    raw["metadata"]["name"] = f"p{i}"
    raw["metadata"]["uid"] = f"uid-p{i}"
    return raw


def _bound(raw: Mapping[str, Any], node: str, indices: tuple[int, ...]) -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(orjson.dumps(raw))
    out["spec"]["nodeName"] = node
    out["metadata"].setdefault("annotations", {})[GPU_INDICES_ANNOTATION] = ",".join(
        map(str, indices)
    )
    return out


def _fresh(case: Case) -> ClusterState:
    state = ClusterState()
    for n, used in enumerate(case.used):
        state.upsert_node(node_from_json(node_json(f"n{n}", list(used))))
    return state


cases = st.builds(
    Case,
    used=st.lists(
        st.tuples(*[st.sampled_from((0, 10000, 30000, 60000))] * 2), min_size=2, max_size=2
    ).map(tuple),
    pods=st.lists(
        st.tuples(st.sampled_from(MIB), st.sampled_from((1, 1, 2)), st.integers(0, 1)),
        min_size=1,
        max_size=7,
    ).map(tuple),
)


class Run:
    """The extender under test, and the record of what it has committed so far."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.binder = HeldBinder()
        self.ext = Extender(_fresh(case), ExtenderSettings(reservation_ttl=TTL), binder=self.binder)
        self.raw = [_pod(i, mib, count) for i, (mib, count, _) in enumerate(case.pods)]
        for raw in self.raw:  # pending, as the watch shows them before the scheduler binds
            self.ext.state.upsert_pod(pod_from_json(raw))
        self.tasks: dict[int, asyncio.Task[dict[str, Any]]] = {}
        self.decided: list[tuple[int, str, tuple[int, ...]]] = []
        """(pod, node, devices) of each bind that reached the API, in the order decided."""
        self.started: list[int] = []
        self.answered: dict[int, bool] = {}
        self.shown: set[int] = set()

    def pod_of(self, key: str) -> int:
        return int(key.rsplit("/p", 1)[1])

    async def start(self, i: int) -> None:
        node = f"n{self.case.pods[i][2]}"
        args = {"PodName": f"p{i}", "PodNamespace": "ns", "PodUID": f"uid-p{i}", "Node": node}
        before = len(self.binder.calls)
        self.binder.entered.clear()
        task = asyncio.create_task(self.ext.bind(args, NOW))
        self.tasks[i] = task
        self.started.append(i)
        entered = asyncio.create_task(self.binder.entered.wait())
        await asyncio.wait({task, entered}, return_when=asyncio.FIRST_COMPLETED)
        entered.cancel()
        if len(self.binder.calls) > before:
            call = self.binder.calls[-1]
            self.decided.append((self.pod_of(call.key), call.node, call.indices))

    async def answer(self, call: _Call, ok: bool) -> None:
        i = self.pod_of(call.key)
        call.answer.set_result(ok)
        await self.tasks[i]
        self.answered[i] = ok

    def show(self, i: int) -> None:
        """The watch shows pod ``i`` bound, with the devices its bind wrote."""
        _, node, indices = next(d for d in self.decided if d[0] == i)
        self.ext.state.upsert_pod(pod_from_json(_bound(self.raw[i], node, indices)))
        self.shown.add(i)

    def reference(self) -> ClusterState:
        """From scratch: the pods the watch has shown bound, the reservations of binds in
        flight or answered but not yet shown."""
        state = _fresh(self.case)
        for i, node, indices in self.decided:
            if self.answered.get(i) is False:
                continue
            if i in self.shown:
                state.upsert_pod(pod_from_json(_bound(self.raw[i], node, indices)))
            else:
                state.upsert_pod(pod_from_json(self.raw[i]))
                pod = state.pods[f"ns/p{i}"]
                state.reserve(pod, node, indices, NOW, TTL)
        return state

    def check_same_view(self, probe_mib: int) -> None:
        reference = self.reference()
        for n in range(len(self.case.used)):
            ours, theirs = self.ext.state.gpus(f"n{n}", NOW), reference.gpus(f"n{n}", NOW)
            assert not isinstance(ours, str) and not isinstance(theirs, str)
            assert [d.free_mib for d in ours.devices] == [d.free_mib for d in theirs.devices]
        probe = {"Pod": _pod(99, probe_mib, 1), "NodeNames": ["n0", "n1"]}
        assert (
            self.ext.filter(probe, NOW)["NodeNames"]
            == Extender(reference).filter(probe, NOW)["NodeNames"]
        )


async def _play(case: Case, data: st.DataObject) -> Run:
    run = Run(case)
    waiting = list(range(len(case.pods)))
    while waiting or any(not c.answer.done() for c in run.binder.calls):
        held = [c for c in run.binder.calls if not c.answer.done()]
        unshown = [i for i, _, _ in run.decided if run.answered.get(i) and i not in run.shown]
        actions: list[tuple[str, Any]] = (
            [("start", i) for i in waiting[:2]]  # kube-scheduler binds roughly in order
            + [("answer", c) for c in held]
            + [("show", i) for i in unshown]
            + [("probe", m) for m in (20000, 50000)]
        )
        kind, what = data.draw(st.sampled_from(actions))
        if kind == "start":
            waiting.remove(what)
            await run.start(what)
        elif kind == "answer":
            await run.answer(what, data.draw(st.sampled_from((True, True, True, False))))
        elif kind == "show":
            run.show(what)
        else:
            run.check_same_view(what)
    for i in [i for i, _, _ in run.decided if run.answered.get(i) and i not in run.shown]:
        run.show(i)
    run.check_same_view(20000)
    return run


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=cases, data=st.data())
def test_concurrent_binds_match_the_sequential_reference(case: Case, data: st.DataObject) -> None:
    run = asyncio.run(_play(case, data))
    results = {i: task.result()["Error"] for i, task in run.tasks.items()}

    # No device is over-committed: in the order the binds were decided, each one that the API
    # accepted fits the devices it was given.
    state = _fresh(case)
    for i, node, indices in run.decided:
        if not run.answered[i]:
            continue
        gpus = state.gpus(node, NOW)
        assert not isinstance(gpus, str)
        free = {d.index: d.free_mib for d in gpus.devices}
        assert all(free[d] >= case.pods[i][0] for d in indices), (i, node, indices, free)
        state.upsert_pod(pod_from_json(_bound(run.raw[i], node, indices)))

    # With every API call accepted, concurrency changes nothing: each bind gets what binding
    # the pods one at a time, in the same order, gives it.
    if all(run.answered.values()):
        reference = _fresh(case)
        decided = {i: (node, indices) for i, node, indices in run.decided}
        for i in run.started:
            node = f"n{case.pods[i][2]}"
            raw = run.raw[i]
            chosen = choose_devices(pod_from_json(raw), node, reference, NOW, strategy="binpack")
            if isinstance(chosen, str):
                assert i not in decided and "cannot bind" in results[i], (i, results[i])
                continue
            assert decided[i] == (node, chosen) and results[i] == ""
            reference.upsert_pod(pod_from_json(_bound(raw, node, chosen)))
