"""GPU-model constraints in the placement replay: ``gpu_spec`` read, turned into the node
affinity a pod would carry, enforced through the extender's affinity code."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from extender.affinity import compile_required
from extender.objects import GFD_PRODUCT_LABEL
from simulations.placement.gpuspec import (
    compiled,
    constrain,
    constrained_share,
    model_mix,
    node_labels,
    required_affinity,
)
from simulations.placement.openb import OpenbNode, OpenbPod, read_nodes, read_pods
from simulations.placement.replay import ReplayConfig, make_strategy, replay, sample_pods

DATA = Path(__file__).resolve().parents[2] / "simulations" / "data"
MEM = {"T4": 16384, "V100M32": 32768, "A10": 24576}


def node(name: str, model: str, gpus: int = 2) -> OpenbNode:
    return OpenbNode(name=name, cpu_milli=32000, memory_mib=65536, gpus=gpus, model=model)


def pod(name: str, spec: tuple[str, ...] = (), milli: int = 1000, n: int = 1) -> OpenbPod:
    return OpenbPod(name, 1000, 1024, n, milli if n else 0, gpu_spec=spec)


def test_gpu_spec_is_read_from_the_trace(tmp_path: Path) -> None:
    path = tmp_path / "pods.csv"
    path.write_text(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,creation_time,deletion_time\n"
        "a,1,1,1,500,V100M16|V100M32,10,20\nb,1,1,1,500,,0,5\nc,1,1,0,0,nan,,\n"
    )
    a, b, c = read_pods(path)
    assert a.gpu_spec == ("V100M16", "V100M32")
    assert (a.creation_time, a.deletion_time) == (10, 20)
    assert b.gpu_spec == c.gpu_spec == ()
    assert c.creation_time is None
    path.write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\na,1,1,1,5,T4||A10\n")
    with pytest.raises(ValueError, match=r":2: gpu_spec: empty model name"):
        read_pods(path)


def test_the_spec_is_a_required_affinity_on_the_gpu_product_label() -> None:
    affinity = required_affinity(("T4", "A10"))
    assert affinity is not None
    (term,) = affinity.terms
    (req,) = term.match_expressions
    assert (req.key, req.operator, req.values) == (GFD_PRODUCT_LABEL, "In", ("T4", "A10"))
    assert required_affinity(()) is None
    rule = compiled(("T4",))
    assert rule.matches(node_labels(node("a", "T4")), "a")
    assert not rule.matches(node_labels(node("b", "A10")), "b")
    assert compile_required({}, None).matches(node_labels(node("b", "A10")), "b")


def test_replay_puts_constrained_pods_only_on_models_they_accept() -> None:
    nodes = [node("t4", "T4", 1), node("v100", "V100M32", 4), node("a10", "A10", 1)]
    pods = [pod("t4-only", ("T4",)), pod("a10-or-t4", ("A10", "T4"))]
    pods += [pod("t4-too", ("T4",)), pod("v", ("V100M32",), 500), pod("any", ())]
    for scoring in ("binpack", "spread", "fragmentation"):
        record: list[tuple[str, str, tuple[int, ...]]] = []
        result = replay(
            nodes,
            pods,
            make_strategy(scoring, pods),
            rng=random.Random(3),
            config=ReplayConfig(gpu_memory_mib=MEM, repeats=1, target_load=10.0),
            record=record,
        )
        where = {p: n for p, n, _ in record}
        assert where["t4-only"] == "t4"
        assert where["a10-or-t4"] == "a10"  # the only T4 is taken
        assert "t4-too" not in where  # accepts only the full T4: skipped, though GPUs are free
        assert where["v"] == where["any"] == "v100"
        assert result.gpu_pods_skipped == 1


def test_constrained_lists_are_seeded_and_follow_the_clusters_model_mix() -> None:
    nodes = read_nodes(DATA / "openb_node_list_gpu_node.csv")
    pods = read_pods(DATA / "openb_pod_list_default.csv")
    one = constrain(pods, nodes, 0.33, seed=5)
    assert one == constrain(pods, nodes, 0.33, seed=5)
    assert one != constrain(pods, nodes, 0.33, seed=6)
    assert constrained_share(one) == pytest.approx(0.33, abs=0.02)
    assert all(not p.gpu_spec for p in one if p.num_gpu == 0)
    mix = model_mix(nodes)
    firsts = Counter(m for p in one for m in p.gpu_spec)
    assert set(firsts) <= set(mix)
    # the most common model of the cluster is the most common accepted one
    assert firsts.most_common(1)[0][0] == max(mix, key=mix.__getitem__)
    by_model: dict[str, list[OpenbNode]] = {}
    for n in nodes:
        by_model.setdefault(n.model, []).append(n)
    for p in one:
        for m in p.gpu_spec:  # each accepted model has a node big enough for the pod
            assert any(
                n.gpus >= p.num_gpu and n.cpu_milli >= p.cpu_milli and n.memory_mib >= p.memory_mib
                for n in by_model[m]
            )
    with pytest.raises(ValueError, match="fraction"):
        constrain(pods, nodes, 1.5, seed=0)


@pytest.mark.slow
def test_no_pod_lands_on_a_model_it_did_not_accept_on_the_real_trace() -> None:
    nodes = read_nodes(DATA / "openb_node_list_gpu_node.csv")[::6]
    pods = constrain(read_pods(DATA / "openb_pod_list_default.csv")[:1500], nodes, 0.5, seed=1)
    model = {n.name: n.model for n in nodes}
    spec = {p.name: p.gpu_spec for p in pods}
    arrivals = sample_pods(pods, sum(n.gpus for n in nodes), 1.3, random.Random(2))
    for scoring in ("binpack", "fragmentation"):
        record: list[tuple[str, str, tuple[int, ...]]] = []
        replay(
            nodes,
            arrivals,
            make_strategy(scoring, pods),
            rng=random.Random(4),
            config=ReplayConfig(repeats=1),
            record=record,
        )
        constrained = [(p, n) for p, n, _ in record if spec[p]]
        assert len(constrained) > 100
        assert all(model[n] in spec[p] for p, n in constrained)
