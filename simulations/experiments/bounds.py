"""Reference lines that need no autoscaler, measured with the simulator itself.

- **Static provisioning**: ``N`` replicas, all Ready from the start and never changed
  (:func:`static_contender`); the sweep searches the fewest ``N`` whose mean attainment over the
  seeds reaches the target.
- **Hindsight bound** (:func:`interval_curves`, then :mod:`~simulations.experiments.hindsight`):
  time is cut into intervals of ``interval`` seconds; each interval's arrivals are replayed *alone*
  on ``n = 1, 2, …`` warm replicas of the scenario's cluster (same serving model, router and SLO as
  every contender, through :class:`~simulations.serving.run.Run`), giving the requests it misses
  with ``n`` replicas, up to the first ``n`` that misses none or the most replicas that fit. That is
  what each interval really needs when the future is known: no queue is left over from earlier
  intervals and nobody waits for a replica to start. The miss budget of the target is then spent
  where it saves the most replicas, and every start-up is paid for at the cheapest start-up the
  scenario allows (a cached image pull plus the mean model load; the scheduling delay holds no GPU).
  The bound is that schedule's GPU-hours.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass, replace

import numpy as np

from simulations.config.scenario import FixedContender, Scenario
from simulations.experiments.compare import prepare, random_streams, request_times
from simulations.serving.arrivals import Workload
from simulations.serving.cluster import Placement
from simulations.serving.contenders import FixedReplicas
from simulations.serving.run import Run, build_cluster


def static_scenario(scenario: Scenario, replicas: int) -> Scenario:
    """``scenario`` with ``replicas`` Ready replicas at time 0 and a fixed-count contender."""
    service = replace(scenario.service, initial_replicas=replicas)
    contender = FixedContender(f"static-{replicas}", replicas)
    return replace(scenario, service=service, contenders=(contender,))


def static_contender(replicas: int) -> FixedContender:
    return FixedContender(f"static-{replicas}", replicas)


def fitting_replicas(scenario: Scenario, seed: int) -> int:
    """How many of the service's pods fit on the cluster next to the seed's background pods
    (at most ``service.replicas.max``)."""
    cluster, _ = build_cluster(scenario, random_streams(seed)[2])
    rng = np.random.default_rng([seed, 99])
    run = Run(scenario, Workload(*(np.zeros(0),) * 3), np.zeros(0), cluster, rng, 1.0)
    n = 0
    while n < scenario.service.max_replicas:
        if not isinstance(cluster.schedule(run.pod_spec, rng), Placement):
            break
        n += 1
    return n


def startup_seconds(scenario: Scenario) -> float:
    """GPU-seconds a new replica holds before it serves, at its cheapest expected value."""
    st = scenario.service.startup
    return st.image_pull_cached.mean + st.model_load.mean


@dataclass(frozen=True, slots=True)
class IntervalCurves:
    """Per interval: requests counted, and misses with ``n`` replicas (``n = 0 …``)."""

    interval: float
    lengths: tuple[float, ...]
    counted: tuple[int, ...]
    misses: tuple[tuple[int, ...], ...]
    cap: int


def slo_tail(scenario: Scenario, generated: np.ndarray) -> float:
    """How long after its arrival a request can still meet the SLO (the longest of the
    interval's): by then one still in flight has missed it."""
    slo = scenario.service.slo
    longest = float(generated.max()) if len(generated) else 1.0
    bounds = []
    if slo.e2e is not None:
        bounds.append(slo.e2e)
    if slo.ttft is not None and slo.tpot is not None:
        bounds.append(slo.ttft + slo.tpot * max(longest - 1.0, 0.0))
    return (min(bounds) if bounds else 600.0) + 1.0


@dataclass(frozen=True, slots=True)
class Replay:
    """What replaying a seed's arrivals interval by interval needs: the workload, the cluster
    as it starts (pickled, so each replay starts from a fresh copy) and the intervals."""

    workload: Workload
    service_times: np.ndarray
    duration: float
    frozen_cluster: bytes
    edges: np.ndarray
    """Index of each interval's first arrival (and, last, the count of arrivals)."""
    lengths: tuple[float, ...]


def replay_intervals(scenario: Scenario, seed: int, interval: float) -> Replay:
    """The seed's workload and starting cluster, its arrivals cut into ``interval`` pieces."""
    workload, service_times, duration = prepare(scenario, seed)
    _, _, c_rng, _ = random_streams(seed)
    cluster, _ = build_cluster(scenario, c_rng)
    times = workload.times
    n_int = max(1, math.ceil(duration / interval - 1e-9))
    edges = np.searchsorted(times, np.arange(n_int + 1) * interval, side="left")
    edges[-1] = len(times)
    lengths = tuple(min(interval, duration - k * interval) for k in range(n_int))
    return Replay(workload, service_times, duration, pickle.dumps(cluster), edges, lengths)


def interval_curves(scenario: Scenario, seed: int, interval: float, cap: int) -> IntervalCurves:
    """Each interval's misses on ``n`` warm replicas, its arrivals replayed alone."""
    replay = replay_intervals(scenario, seed, interval)
    workload, service_times = replay.workload, replay.service_times
    frozen, edges, lengths = replay.frozen_cluster, replay.edges, replay.lengths
    times = workload.times
    n_int = len(lengths)
    counted: list[int] = []
    curves: list[tuple[int, ...]] = []
    for k in range(n_int):
        a, b = int(edges[k]), int(edges[k + 1])
        if a == b:
            counted.append(0)
            curves.append((0,))
            continue
        t0 = k * interval
        sub = Workload(times[a:b] - t0, workload.prompt[a:b], workload.generated[a:b])
        st = service_times[a:b]
        run_for = interval + slo_tail(scenario, sub.generated)
        curve: list[int] = []
        for n in range(1, cap + 1):
            sc = static_scenario(scenario, n)
            run = Run(
                sc, sub, st, pickle.loads(frozen), np.random.default_rng([seed, k, n]), run_for
            )
            run.start(FixedReplicas(n))
            run.run()
            # every request is judged by the end of the run (see slo_tail)
            curve.append(b - a - int(request_times(run).meets.sum()))
            if curve[-1] == 0:
                break
        total = b - a
        counted.append(total)
        curves.append((total, *curve))
    return IntervalCurves(interval, lengths, tuple(counted), tuple(curves), cap)
