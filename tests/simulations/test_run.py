"""The modelled cluster: scheduling through the extender, Pending pods, start-up, scale-down."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from simulations.config.scenario import Scenario, ScenarioError, parse_scenario
from simulations.experiments.compare import prepare, random_streams, run_one
from simulations.serving.arrivals import Workload
from simulations.serving.contenders import FixedReplicas
from simulations.serving.run import DRAINING, GONE, READY, Run, build_cluster


def scenario(**overrides: Any) -> Scenario:
    doc: dict[str, Any] = {
        "cluster": {"pools": [{"name": "a", "count": 1, "gpus": 1, "gpuMemory": "80Gi"}]},
        "service": {
            "gpuMemory": "30Gi",
            "engine": "per-request",
            "maxBatch": 1,
            "serviceTime": {"model": "fixed", "seconds": 1},
            "initialReplicas": 1,
            "startup": {
                "scheduling": "1s",
                "imagePull": "60s",
                "imagePullCached": "5s",
                "modelLoad": "20s",
            },
        },
        "workload": {"type": "poisson", "rate": 0.5},
        "duration": "10m",
        "policies": [{"baseline": "fixed", "replicas": 3}],
    }
    for key, value in overrides.items():
        base = doc.get(key)
        doc[key] = (
            {**base, **value} if isinstance(base, dict) and isinstance(value, dict) else value
        )
    return parse_scenario(doc, "t.yaml", Path("."))


def make_run(sc: Scenario, seed: int = 1) -> Run:
    workload, times, duration = prepare(sc, seed)
    _, _, c_rng, r_rng = random_streams(seed)
    cluster, _ = build_cluster(sc, c_rng)
    return Run(sc, workload, times, cluster, r_rng, duration)


def test_pods_that_do_not_fit_stay_pending_and_are_reported() -> None:
    result = run_one(scenario(), 0, 1)
    s = result.summary
    assert s["replicas_max"] == 3
    assert s["pending_max"] == 2  # both new pods are Pending until scheduled
    # 80 GiB fits two 30 GiB replicas: one pod stays Pending for the whole run
    assert 600 < s["pending_pod_seconds"] < 600 + 2 * 2
    [reason] = s["unschedulable"]
    assert "1 insufficient GPU memory" in reason
    assert abs(s["gpu_hours"] - 2 * 600 / 3600) < 0.01


def test_taints_keep_pods_off_unless_tolerated() -> None:
    pools = {
        "pools": [
            {
                "name": "t",
                "count": 1,
                "gpus": 1,
                "gpuMemory": "80Gi",
                "taints": [{"key": "gpu", "value": "big", "effect": "NoSchedule"}],
            }
        ]
    }
    blocked = run_one(scenario(cluster=pools, service={"initialReplicas": 0}), 0, 1).summary
    assert blocked["pending_max"] == 3 and blocked["completed"] == 0
    assert any("untolerated taint {gpu: big}" in r for r in blocked["unschedulable"])
    allowed = scenario(
        cluster=pools,
        service={"initialReplicas": 0, "tolerations": [{"key": "gpu", "operator": "Exists"}]},
    )
    tolerated = run_one(allowed, 0, 1).summary
    assert tolerated["completed"] > 0 and tolerated["pending_pod_seconds"] > 590


def test_start_up_uses_the_image_cache_and_scale_down_takes_newest_after_draining() -> None:
    sc = scenario(
        cluster={"pools": [{"name": "a", "count": 1, "gpus": 4, "gpuMemory": "80Gi"}]},
        workload={"type": "poisson", "rate": 0.01},
    )
    run = make_run(sc)
    run.start(FixedReplicas(1))
    run.engine.run(until=10.0)
    run.scale_to(3)
    run.engine.run(until=200.0)
    ready = [p for p in run.pods if p.state == READY]
    assert len(ready) == 3
    # The node already has the image (the warm pod), so start-up = 1 s + 5 s + 20 s.
    assert [round(p.ready_at - p.created) for p in ready[1:]] == [26, 26]
    busy = run.pods[2]
    assert busy.replica is not None
    busy.replica.admit(0)  # a request the newest pod is serving while it is told to go
    run.scale_to(1)
    assert run.pods[1].state == GONE  # idle: gone at once
    assert busy.state == DRAINING and run.status_replicas == 1
    run.engine.run(until=260.0)
    assert busy.state == GONE and run.pods[0].state == READY
    assert run.n_gpu_pods == 1


def three_ready(**service: Any) -> Run:
    """Three Ready replicas, the oldest (warm) one idle and the two newest each serving."""
    sc = scenario(
        cluster={"pools": [{"name": "a", "count": 1, "gpus": 4, "gpuMemory": "80Gi"}]},
        service={
            "maxBatch": 4,
            "terminationGracePeriod": "30s",
            **service,
        },
    )
    # four requests of 100 s that arrive after the test: it hands them to the replicas itself
    late = np.full(4, 10_000.0)
    workload = Workload(late, np.ones(4), np.ones(4))
    _, _, c_rng, r_rng = random_streams(1)
    cluster, _ = build_cluster(sc, c_rng)
    run = Run(sc, workload, np.full(4, 100.0), cluster, r_rng, 600.0)
    run.start(FixedReplicas(1))
    run.engine.run(until=10.0)
    run.scale_to(2)
    run.engine.run(until=50.0)
    run.scale_to(3)  # so that the third pod is the newest
    run.engine.run(until=100.0)
    assert [p.state for p in run.pods] == [READY] * 3
    for k, pod in enumerate(run.pods[1:]):
        assert pod.replica is not None
        pod.replica.admit(2 * k)
        pod.replica.admit(2 * k + 1)
    return run


def test_scale_down_cuts_what_a_replica_holds_without_a_drain() -> None:
    run = three_ready(drainOnTermination=False)
    run.scale_to(2)
    assert run.pods[2].state == GONE  # the newest, with its two requests
    assert run.cut_by_scale_down == 2 and sorted(run.dropped) == [2, 3]


def test_a_drain_keeps_what_ends_within_the_grace_period_and_cuts_the_rest() -> None:
    run = three_ready()
    run.scale_to(2)
    assert run.pods[2].state == DRAINING and run.cut_by_scale_down == 0
    run.engine.run(until=run.engine.now + 31.0)
    assert run.pods[2].state == GONE
    assert run.cut_by_scale_down == 2  # 100 s of service does not fit in 30 s of grace


def test_deletion_cost_removes_the_idle_replica_first() -> None:
    run = three_ready(drainOnTermination=False, deletionCost=True)
    run.engine.run(until=run.engine.now + 20.0)  # a scrape writes the costs
    assert [p.deletion_cost for p in run.pods] == [0, 2, 2]
    run.scale_to(2)
    assert run.pods[0].state == GONE  # the oldest, but idle
    assert run.cut_by_scale_down == 0 and not run.dropped


def test_scale_down_flags_must_be_booleans() -> None:
    try:
        scenario(service={"drainOnTermination": "yes", "deletionCost": 1})
    except ScenarioError as exc:
        text = str(exc)
    else:
        raise AssertionError("accepted a string and a number as booleans")
    assert "service.drainOnTermination: expected true or false, got" in text
    assert "service.deletionCost: expected true or false, got" in text


def test_openb_nodes_and_background_pods_take_gpu_memory() -> None:
    sc = scenario(
        cluster={"pools": [], "openb": {"count": 30, "gpuMemory": {"default": "16Gi"}}},
        background={"pods": 40},
    )
    cluster, unplaced = build_cluster(sc, np.random.default_rng(3))
    assert len(cluster.nodes) == 30 and cluster.gpu_count > 30
    models = {n.model for n in cluster.nodes}
    assert models and all(n.labels["gpuscale.io/pool"] == "openb" for n in cluster.nodes)
    assert 0.05 < cluster.memory_used_fraction() < 1.0
    assert unplaced < 40
