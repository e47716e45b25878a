"""The matching core: which pod the kubelet is starting, and what its containers get.

The property tests play a kubelet that admits the pods bound to one node in any order, one
container at a time (as its device manager does), with or without the PodResources view, the
plugin holding no state of its own (a restart at any point changes nothing), and check that a
container never gets anything but its own pod's annotated GPUs and memory.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from extender.device_plugin.matching import (
    Device,
    GpuContainer,
    Grant,
    KubeletView,
    PendingPod,
    PodKey,
    Refusal,
    decide,
    device_ids,
    offer_of,
    preferred,
    served_from_holders,
    uuid_of,
)

SHARES = 4


def gpus(n: int, total: int = 80_000) -> tuple[Device, ...]:
    return tuple(Device(i, f"GPU-{i:04d}", total) for i in range(n))


def pod(
    name: str,
    indices: tuple[int, ...],
    mib: int | None = 10_000,
    counts: tuple[int, ...] | None = None,
    created: float = 0.0,
    started: bool = False,
    placed: bool = True,
) -> PendingPod:
    counts = counts or (len(indices),)
    return PendingPod(
        "ns",
        name,
        f"uid-{name}",
        created,
        indices if placed else (),
        mib,
        tuple(GpuContainer(f"c{i}", c) for i, c in enumerate(counts)),
        started,
        placed,
    )


def ids_for(devices: tuple[Device, ...], n: int, offset: int = 0) -> list[str]:
    """n IDs the kubelet might pick (deliberately not on any particular GPU)."""
    every = [i for d in devices for i in device_ids(d, SHARES)]
    return [every[(offset + k) % len(every)] for k in range(n)]


def run(
    devices: tuple[Device, ...],
    pods: list[PendingPod],
    requested: list[str],
    served: dict[PodKey, int] | None = None,
    kubelet: KubeletView | None = None,
) -> Grant | Refusal:
    return decide(
        node="n1",
        resource="nvidia.com/gpu",
        requested=requested,
        devices=devices,
        shares=SHARES,
        pods=pods,
        served=served or {},
        kubelet=kubelet,
    )


def test_one_pending_pod_gets_its_annotation_whatever_ids_the_kubelet_chose() -> None:
    devices = gpus(4)
    p = pod("a", (2, 3), mib=20_000)
    got = run(devices, [p], ids_for(devices, 2))
    assert isinstance(got, Grant)
    assert [d.index for d in got.devices] == [2, 3]
    assert got.mib_per_gpu == 20_000
    assert got.fraction == 0.25


def test_no_annotated_pod_is_a_refusal_that_says_why() -> None:
    devices = gpus(2)
    got = run(devices, [pod("a", (0,), counts=(1,))], ids_for(devices, 2))
    assert isinstance(got, Refusal) and got.kind == "no-candidate"
    assert "schedulerName: gpuscale" in got.message


def test_a_pod_not_placed_by_gpuscale_is_never_mistaken_for_one_waiting_beside_it() -> None:
    devices = gpus(2)
    plain = pod("plain", (0,), placed=False, created=9)
    placed = pod("placed", (1,))
    # Without the kubelet's view either could be starting: refused, both named.
    got = run(devices, [plain, placed], ids_for(devices, 1))
    assert isinstance(got, Refusal) and got.kind == "ambiguous"
    assert "ns/plain (not placed by gpuscale)" in got.message
    # The kubelet's view says it is the plain pod: refused, with the Event on it.
    view = KubeletView({("ns", "plain"): frozenset()})
    got = run(devices, [plain, placed], ids_for(devices, 1), kubelet=view)
    assert isinstance(got, Refusal) and got.kind == "no-candidate"
    assert [p.name for p in got.pods] == ["plain"] and "waiting: ns/plain" in got.message
    # A view that knows neither is set aside; the placed pod alone is then served.
    view = KubeletView({("ns", "other"): frozenset()})
    got = run(devices, [placed], ids_for(devices, 1), kubelet=view)
    assert isinstance(got, Grant) and got.pod.name == "placed"


def test_unknown_device_ids_are_refused() -> None:
    got = run(gpus(1), [pod("a", (0,))], ["GPU-9999::0"])
    assert isinstance(got, Refusal) and got.kind == "bad-request"
    assert "GPU-9999::0" in got.message
    got = run(gpus(1), [pod("a", (0,))], [f"GPU-0000::{SHARES}"])
    assert isinstance(got, Refusal) and got.kind == "bad-request"


def test_two_waiting_pods_on_different_gpus_are_ambiguous_without_the_kubelet_view() -> None:
    devices = gpus(2)
    pods = [pod("a", (0,)), pod("b", (1,))]
    got = run(devices, pods, ids_for(devices, 1))
    assert isinstance(got, Refusal) and got.kind == "ambiguous"
    assert "ns/a (GPUs 0, 10000 MiB)" in got.message and "ns/b (GPUs 1" in got.message
    assert {p.name for p in got.pods} == {"a", "b"}
    # The kubelet's view names the pod being admitted: b, which it knows and has not served.
    view = KubeletView({("ns", "b"): frozenset()})
    got = run(devices, pods, ids_for(devices, 1), kubelet=view)
    assert isinstance(got, Grant) and got.pod.name == "b" and got.devices[0].index == 1


def test_identical_choices_are_interchangeable_and_the_oldest_is_marked() -> None:
    devices = gpus(2)
    pods = [pod("b", (1,), created=5), pod("a", (1,), created=7)]
    got = run(devices, pods, ids_for(devices, 1))
    assert isinstance(got, Grant)
    assert got.pod.name == "b" and got.interchangeable_with == (("ns", "a"),)


def test_same_gpus_different_memory_is_ambiguous() -> None:
    devices = gpus(1)
    got = run(devices, [pod("a", (0,), mib=1000), pod("b", (0,), mib=2000)], ids_for(devices, 1))
    assert isinstance(got, Refusal) and got.kind == "ambiguous"


def test_vanished_and_unhealthy_devices_refuse_and_name_the_pod() -> None:
    devices = (Device(0, "GPU-0", 80_000), Device(1, "GPU-1", 80_000, healthy=False))
    got = run(devices, [pod("a", (1,))], ["GPU-0::0"])
    assert isinstance(got, Refusal) and got.kind == "devices-gone"
    assert "GPU(s) 1 unhealthy" in got.message and got.pods[0].name == "a"
    got = run(devices, [pod("a", (5,))], ["GPU-0::0"])
    assert isinstance(got, Refusal) and "GPU(s) 5 no longer on the node" in got.message


def test_containers_get_consecutive_slices_and_init_containers_the_first() -> None:
    p = PendingPod(
        "ns",
        "a",
        "u",
        0,
        (4, 6, 7),
        None,
        (GpuContainer("init", 2, init=True), GpuContainer("x", 1), GpuContainer("y", 2)),
    )
    assert offer_of(p, 0) is not None and offer_of(p, 0).indices == (4, 6)  # type: ignore[union-attr]
    assert offer_of(p, 1).indices == (4,)  # type: ignore[union-attr]
    assert offer_of(p, 2).indices == (6, 7)  # type: ignore[union-attr]
    short = pod("s", (1,), counts=(2,))
    assert offer_of(short, 0) is None


def test_whole_gpu_fraction_is_one_and_shares_round_down() -> None:
    devices = (Device(0, "GPU-0", 3),)
    got = run(devices, [pod("a", (0,), mib=1)], ["GPU-0::0"])
    assert isinstance(got, Grant) and got.fraction == 0.3333
    got = run(devices, [pod("a", (0,), mib=None)], ["GPU-0::0"])
    assert isinstance(got, Grant) and got.fraction == 1.0


def test_preferred_steers_the_kubelet_to_the_annotated_gpus() -> None:
    devices = gpus(3)
    available = [i for d in devices for i in device_ids(d, SHARES)]
    got = preferred(
        available=available,
        must_include=[],
        size=2,
        devices=devices,
        pods=[pod("a", (2, 0))],
        served={},
        kubelet=None,
    )
    assert [uuid_of(i) for i in got] == ["GPU-0002", "GPU-0000"]
    # Ambiguous: the kubelet's own order; must_include always first; never more than size.
    got = preferred(
        available=available,
        must_include=["GPU-0001::3"],
        size=2,
        devices=devices,
        pods=[pod("a", (2, 0)), pod("b", (1, 0))],
        served={},
        kubelet=None,
    )
    assert got == ("GPU-0001::3", available[0])


# -- properties: a kubelet admitting many pods on one node -----------------------------------


@st.composite
def node_and_pods(draw: st.DrawFn) -> tuple[tuple[Device, ...], list[PendingPod]]:
    n = draw(st.integers(1, 6))
    devices = gpus(n)
    pods = []
    for k in range(draw(st.integers(1, 8))):
        counts = tuple(draw(st.lists(st.integers(1, min(n, 2)), min_size=1, max_size=2)))
        total = sum(counts)
        if total > n:
            counts, total = (1,), 1
        indices = tuple(draw(st.permutations(range(n)))[:total])
        mib = draw(st.sampled_from([None, 10_000, 20_000]))
        placed = draw(st.integers(0, 5)) > 0  # now and then a pod the default scheduler placed
        created = draw(st.integers(0, 3))
        pods.append(pod(f"p{k}", indices, mib, counts, created=created, placed=placed))
    return devices, pods


@settings(max_examples=300, deadline=None)
@given(
    world=node_and_pods(),
    order=st.randoms(use_true_random=False),
    with_view=st.booleans(),
    status_lag=st.booleans(),
)
def test_a_container_only_ever_gets_its_own_pods_choice(
    world: tuple[tuple[Device, ...], list[PendingPod]],
    order: object,
    with_view: bool,
    status_lag: bool,
) -> None:
    devices, pods = world
    admission = list(pods)
    order.shuffle(admission)  # type: ignore[attr-defined]
    served: dict[PodKey, int] = {}
    held: dict[PodKey, set[str]] = {}
    admitted: set[PodKey] = set()
    rejected: set[PodKey] = set()
    handed: Counter[tuple[int, int | None]] = Counter()
    step = 0
    for actual in admission:
        held[actual.key] = set()
        for pos, container in enumerate(actual.containers):
            # What was served comes from the kubelet's checkpoint (written after every
            # allocation, by pod uid), read afresh at every step: the plugin keeps no state of
            # its own, so a plugin restart at any step changes nothing.
            served = served_from_holders(
                pods, {p.uid: frozenset(held.get(p.key, ())) for p in pods}
            )
            step += 1
            # The API's view: admitted pods show as started unless their status lags; pods the
            # kubelet rejected are Failed (gone from the candidates).
            api = [
                replace(p, started=p.key in admitted and not status_lag)
                for p in pods
                if p.key not in rejected
            ]
            view = KubeletView({k: frozenset(v) for k, v in held.items()}) if with_view else None
            got = run(devices, api, ids_for(devices, container.count, step), served, view)
            own = offer_of(actual, pos)
            if not actual.placed:
                # A pod gpuscale did not place never gets GPUs (nor another pod's choice).
                assert isinstance(got, Refusal), got
                if with_view:
                    assert got.kind == "no-candidate" and actual in got.pods, got
            elif with_view:
                # The kubelet's view always finds the pod: every valid container is served.
                assert isinstance(got, Grant), got
            if isinstance(got, Refusal):
                # The kubelet rejects the pod (UnexpectedAdmissionError): no more containers.
                assert got.kind == "ambiguous" or not actual.placed, got
                rejected.add(actual.key)
                del held[actual.key]
                break
            assert own is not None
            assert tuple(d.index for d in got.devices) == own.indices
            assert got.mib_per_gpu == own.mib_per_gpu
            for d in got.devices:
                handed[(d.index, got.mib_per_gpu)] += 1
            held[actual.key].add(container.name)
        else:
            admitted.add(actual.key)
    # What the containers got, per device, never exceeds what the annotations account for.
    accounted: Counter[tuple[int, int | None]] = Counter()
    for p in pods:
        for pos in range(len(p.containers)):
            o = offer_of(p, pos)
            if o is not None:
                for i in o.indices:
                    accounted[(i, o.mib_per_gpu)] += 1
    assert all(handed[k] <= accounted[k] for k in handed)


@settings(max_examples=200, deadline=None)
@given(world=node_and_pods(), order=st.randoms(use_true_random=False))
def test_pods_with_one_plan_are_all_served_without_the_kubelet_view(
    world: tuple[tuple[Device, ...], list[PendingPod]], order: object
) -> None:
    """A scale-up of one Deployment onto the same GPUs (same choice for every replica) needs
    neither the kubelet's view nor any order: every replica is served, with the kubelet's
    checkpoint as the record of what was served."""
    devices, pods = world
    first = next((p for p in pods if p.placed), None)
    assume(first is not None)
    assert first is not None
    counts = tuple(c.count for c in first.containers)
    same = [
        pod(f"r{k}", first.indices, first.mib_per_gpu, counts, created=k % 2)
        for k in range(len(pods))
    ]
    order.shuffle(same)  # type: ignore[attr-defined]
    held: dict[str, set[str]] = {}
    for actual in same:
        held[actual.uid] = set()
        for pos, c in enumerate(actual.containers):
            served = served_from_holders(same, {u: frozenset(n) for u, n in held.items()})
            got = run(devices, same, ids_for(devices, c.count), served)
            assert isinstance(got, Grant), got
            own = offer_of(actual, pos)
            assert own is not None
            assert got.devices == tuple(devices[i] for i in own.indices)
            held[actual.uid].add(c.name)


@pytest.mark.parametrize("bad", ["GPU-1", "GPU-1::", "GPU-1::x", "::1", "GPU-1::١"])
def test_uuid_of_rejects_ids_of_other_forms(bad: str) -> None:
    assert uuid_of(bad) is None


@given(st.text(min_size=1).filter(lambda u: "::" not in u), st.integers(1, 64))
def test_device_ids_round_trip(uuid: str, shares: int) -> None:
    ids = device_ids(Device(0, uuid, 1), shares)
    assert len(set(ids)) == shares and all(uuid_of(i) == uuid for i in ids)
