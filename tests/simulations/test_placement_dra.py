"""The openb replay in DRA form: node scores from the extender (or none), devices from the DRA
allocator's first fit."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.fit import DeviceState, NodeGpus
from extender.fragmentation import Fragmentation, Shape, Workload
from extender.objects import GpuNeed
from extender.scoring import get_strategy
from gpuscale.cli import main
from simulations.placement.dra import UPSTREAM, AllocatorDevices
from simulations.placement.openb import OpenbNode, OpenbPod
from simulations.placement.replay import ReplayConfig, make_strategy, replay

MEM = {"T4": 16384}


def node(name: str, cpu: int = 32000) -> OpenbNode:
    return OpenbNode(name=name, cpu_milli=cpu, memory_mib=65536, gpus=2, model="T4")


def pod(name: str, milli: int, cpu: int = 1000) -> OpenbPod:
    return OpenbPod(name=name, cpu_milli=cpu, memory_mib=1024, num_gpu=1, gpu_milli=milli)


def placements(
    nodes: list[OpenbNode], pods: list[OpenbPod], scoring: str, seed: int = 1
) -> dict[str, tuple[str, tuple[int, ...]]]:
    record: list[tuple[str, str, tuple[int, ...]]] = []
    config = ReplayConfig(gpu_memory_mib=MEM, repeats=1, target_load=10.0)
    strategy = make_strategy(scoring, pods)
    replay(nodes, pods, strategy, rng=random.Random(seed), config=config, record=record)
    return {p: (n, devs) for p, n, devs in record}


def test_the_allocator_takes_the_first_device_with_room_where_the_extender_packs() -> None:
    pods = [pod("sixty", 600), pod("eighty", 800), pod("fifteen", 150)]
    # gpu-0 has 40% left, gpu-1 20%: the extender's binpack fills gpu-1, the allocator gpu-0
    assert placements([node("a")], pods, "binpack")["fifteen"] == ("a", (1,))
    assert placements([node("a")], pods, "dra-binpack")["fifteen"] == ("a", (0,))


def test_upstream_spreads_by_cpu_and_memory_where_node_scoring_packs_gpus() -> None:
    nodes = [node("a"), node("b")]
    pods = [pod("first", 500, cpu=8000), pod("second", 500)]
    for seed in range(5):
        packed = placements(nodes, pods, "dra-binpack", seed)
        assert packed["first"][0] == packed["second"][0]  # the half-used GPU is the best fit
        upstream = placements(nodes, pods, UPSTREAM, seed)
        assert upstream["first"][0] != upstream["second"][0]  # the less allocated node


devices = st.lists(
    st.tuples(st.sampled_from([16384, 32768]), st.integers(0, 100)), min_size=1, max_size=8
)


@settings(max_examples=200, deadline=None)
@given(devices, st.integers(1, 3), st.sampled_from([None, 1024, 4096, 9000]))
def test_allocator_devices_are_first_fit_and_node_scores_the_strategys_own(
    devs: list[tuple[int, int]], count: int, mib: int | None
) -> None:
    gpus = NodeGpus(
        devices=tuple(
            DeviceState(index=i, total_mib=t, free_mib=t * pct // 100, idle=pct == 100)
            for i, (t, pct) in enumerate(devs)
        ),
        source="accounting",
    )
    need = GpuNeed(count if mib is None else 1, mib)
    room = [d.idle if mib is None else d.free_mib >= mib for d in gpus.devices]
    expected = tuple(i for i, ok in enumerate(room) if ok)[: need.count]
    frag = Fragmentation(workload=Workload(shapes=(Shape(weight=1.0, count=1),)))
    dra = AllocatorDevices(frag)
    chosen = dra.choose(gpus, need)
    if len(expected) < need.count:
        assert chosen is None
        return
    assert chosen == expected
    own = frag.choose(gpus, need)
    assert own is not None
    assert dra.score(gpus, need, chosen) == frag.score(gpus, need, own)
    assert AllocatorDevices(None).score(gpus, need, chosen) == 0.0


def test_dra_names_wrap_the_registered_strategies() -> None:
    assert make_strategy("dra-spread", []).name == "dra-spread"
    wrapped = make_strategy("dra-spread", [])
    assert isinstance(wrapped, AllocatorDevices) and wrapped.inner is get_strategy("spread")
    assert make_strategy(UPSTREAM, []).name == UPSTREAM


def test_an_unknown_dra_name_is_refused_with_the_known_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["simulate", "placement", "--scoring", "dra-best", "--out", str(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err
    assert "--scoring: unknown strategy dra-best" in err and "dra-upstream" in err
