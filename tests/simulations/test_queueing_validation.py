"""The simulator against queueing theory: an M/M/c scenario must match Erlang C.

The scenario is the real thing end to end (scenario parsing, Poisson arrivals, one replica with
``maxBatch: c`` slots fed from its FIFO queue, exponential service times, a fixed replica
count), so this validates the engine, the serving model and the request log together.

Customers: 2,000,000 per value of c (seed 1). At ρ = 0.8 waits are strongly autocorrelated
(the queue relaxes over ~100 service times at c = 1), so a long run is needed: measured over
eight seeds at 400,000 customers, the mean wait's relative standard deviation was about 4 % for
c = 10, which puts the standard error at 2,000,000 customers near 1.5-2 %; the seed-1 errors are
+0.9 % (c = 1), +1.2 % (c = 4) and +1.5 % (c = 10), P(wait) within 0.002.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from simulations.config.scenario import parse_scenario
from simulations.experiments.compare import prepare, random_streams
from simulations.serving.contenders import FixedReplicas
from simulations.serving.run import Run, build_cluster

RHO = 0.8
CUSTOMERS = 2_000_000
SEED = 1


def erlang_c(c: int, rho: float) -> tuple[float, float]:
    """P(wait) and mean wait (in service times) of M/M/c at utilisation ``rho``."""
    a = rho * c
    below = sum(a**k / math.factorial(k) for k in range(c))
    top = a**c / math.factorial(c) / (1 - rho)
    p_wait = top / (below + top)
    return p_wait, p_wait / (c - a)


def mmc_waits(c: int, seed: int) -> np.ndarray:
    doc = {
        "cluster": {"pools": [{"name": "gpu", "count": 1, "gpus": 1, "gpuMemory": "80Gi"}]},
        "service": {
            "engine": "per-request",
            "maxBatch": c,
            "serviceTime": {"model": "exponential", "mean": 1},
            "initialReplicas": 1,
            "replicas": {"min": 1, "max": 1},
        },
        "workload": {"type": "poisson", "rate": RHO * c},
        "duration": CUSTOMERS / (RHO * c),
        "policies": [{"baseline": "fixed", "replicas": 1}],
    }
    scenario = parse_scenario(doc, "mmc.yaml", Path("."))
    workload, service_times, duration = prepare(scenario, seed)
    _, _, cluster_rng, run_rng = random_streams(seed)
    cluster, _ = build_cluster(scenario, cluster_rng)
    run = Run(scenario, workload, service_times, cluster, run_rng, duration)
    run.start(FixedReplicas(1))
    run.run()
    start = np.asarray(run.log.start)
    arrival = np.asarray(run.log.arrival)
    started = ~np.isnan(start)
    assert started.mean() > 0.999
    waits: np.ndarray = start[started] - arrival[started]
    return waits


@pytest.mark.slow
@pytest.mark.parametrize("c", [1, 4, 10])
def test_mmc_matches_erlang_c(c: int) -> None:
    waits = mmc_waits(c, SEED)
    p_wait, mean_wait = erlang_c(c, RHO)
    assert len(waits) > 0.99 * CUSTOMERS
    assert abs(waits.mean() / mean_wait - 1) < 0.03, (waits.mean(), mean_wait)
    assert abs((waits > 0).mean() - p_wait) < 0.01, ((waits > 0).mean(), p_wait)


def test_erlang_c_reference_values() -> None:
    """The reference itself: M/M/1 waits rho/(1-rho), and a textbook M/M/2 value."""
    assert erlang_c(1, 0.8) == pytest.approx((0.8, 4.0))
    p, w = erlang_c(2, 0.5)
    assert p == pytest.approx(1 / 3) and w == pytest.approx(1 / 3)
