"""The modelled cluster: scheduling through the extender, Pending pods, start-up, scale-down."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from simulations.config.scenario import Scenario, parse_scenario
from simulations.experiments.compare import prepare, random_streams, run_one
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
