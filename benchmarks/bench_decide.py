"""How fast is one decision? ``decide()`` for many realistic policies, against a trivial baseline.

Each policy has three metrics (queueDepth, latency, arrivalRate), the default behavior and a
warmed-up state: 300 s of recommendations every 15 s, recent scale events and, for a third of
the policies, Holt forecast state. Every round draws fresh metric values, so the memoised Erlang C
search mostly misses, as it would with live Prometheus data. The baseline runs the same loop
over the same inputs doing only ``ceil(queue / target)``.

    python benchmarks/bench_decide.py [--policies 1000] [--rounds 5] [--seed 1]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from collections.abc import Callable

from policies.decide import decide
from policies.decide_types import (
    Decision,
    HoltState,
    Proposal,
    Recommendation,
    ScaleEvent,
    Snapshot,
    State,
)
from policies.schema import (
    ArrivalRateMetric,
    Forecast,
    LatencyMetric,
    LatencyTarget,
    QueueDepthMetric,
    ReplicaBounds,
    ScalingPolicy,
    TargetRef,
)

NOW = 10_000.0


def make_policy(i: int, rng: random.Random) -> ScalingPolicy:
    mu = rng.choice([0.5, 1.0, 2.0, 3.5, 8.0])
    return ScalingPolicy(
        namespace=f"team-{i % 40}",
        name=f"model-{i}",
        target=TargetRef("apps/v1", "Deployment", f"model-{i}"),
        replicas=ReplicaBounds(rng.randint(1, 3), rng.choice([8, 16, 32, 64])),
        metrics=(
            QueueDepthMetric("queue", "sum(vllm:num_requests_waiting)", rng.choice([2, 4, 8])),
            LatencyMetric("latency", "histogram_quantile(0.95, …)", rng.choice([1.0, 2.0, 5.0])),
            ArrivalRateMetric(
                "load",
                "sum(rate(vllm:request_success_total[1m]))",
                mu,
                LatencyTarget(rng.choice([0.9, 0.95, 0.99]), rng.choice([2.0, 4.0, 8.0]) / mu),
            ),
        ),
        forecast=Forecast("holt") if i % 3 == 0 else Forecast(),
    )


def warm_state(p: ScalingPolicy, current: int, rng: random.Random) -> State:
    recs = tuple(
        Recommendation(NOW - age, max(0, current + rng.randint(-2, 2)))
        for age in range(285, 0, -15)
    )
    ups = (ScaleEvent(NOW - 10.0, 2),) if rng.random() < 0.3 else ()
    holt = {"load": HoltState(5.0, 0.01, NOW - 15.0)} if p.forecast.method == "holt" else {}
    return State(recs, ups, (), holt, None)


def snapshot(p: ScalingPolicy, current: int, rng: random.Random) -> Snapshot:
    load = p.metrics[2]
    assert isinstance(load, ArrivalRateMetric)
    lam = rng.uniform(0.2, 0.9) * current * load.service_rate_per_replica
    return Snapshot(
        {"queue": float(rng.randint(0, 40)), "latency": rng.uniform(0.3, 3.0), "load": lam},
        current,
        current,
    )


def timed(fn: Callable[[list[Snapshot]], None], snaps: list[Snapshot]) -> float:
    t0 = time.perf_counter()
    fn(snaps)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--policies", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)

    rng = random.Random(args.seed)
    policies = [make_policy(i, rng) for i in range(args.policies)]
    currents = [rng.randint(p.replicas.min, p.replicas.max // 2) for p in policies]
    states = [warm_state(p, c, rng) for p, c in zip(policies, currents, strict=True)]
    rounds = [
        [snapshot(p, c, rng) for p, c in zip(policies, currents, strict=True)]
        for _ in range(args.rounds + 1)
    ]
    work = list(zip(policies, states, strict=True))
    ceil = math.ceil

    def run_decide(snaps: list[Snapshot]) -> None:
        for (p, s), snap in zip(work, snaps, strict=True):
            decide(p, snap, s, NOW)

    def run_ceil(snaps: list[Snapshot]) -> None:
        for (p, _), snap in zip(work, snaps, strict=True):
            queue = p.metrics[0]
            q = snap.values["queue"]
            assert isinstance(queue, QueueDepthMetric) and q is not None
            ceil(q / queue.target_per_replica)

    def run_objects(snaps: list[Snapshot]) -> None:
        """Only build what one decision returns: three Proposals, a Decision and a State."""
        for (p, s), snap in zip(work, snaps, strict=True):
            props = tuple(
                Proposal(m.name, m.type, snap.values[m.name], 1, "reason") for m in p.metrics
            )
            Decision(1, snap.current_replicas, props, "queue", 1, None, ("step",), ())
            State(s.recommendations, s.scale_up_events, s.scale_down_events, s.holt, None)

    run_decide(rounds[0])  # warm-up: first allocations, caches of rule labels
    times: dict[str, list[float]] = {"decide": [], "ceil": [], "objects": []}
    for snaps in rounds[1:]:  # interleaved, so that load from elsewhere hits all three alike
        times["decide"].append(timed(run_decide, snaps))
        times["ceil"].append(timed(run_ceil, snaps))
        times["objects"].append(timed(run_objects, snaps))

    n = args.policies

    def per_1000(xs: list[float]) -> str:
        best, median = min(xs), sorted(xs)[len(xs) // 2]
        return (
            f"best {best / n * 1e6:.3f} ms per 1,000 (median {median / n * 1e6:.3f}), "
            f"{n / best:,.0f}/s"
        )

    print(f"bench_decide: {n} policies x {args.rounds} rounds, os.cpu_count()={os.cpu_count()}")
    print(f"  python {sys.version.split()[0]}, one thread; three metrics, default behavior")
    print(f"  decide():                              {per_1000(times['decide'])}")
    print(f"  baseline, ceil(queue/target) only:     {per_1000(times['ceil'])}")
    print(f"  baseline, building the output objects: {per_1000(times['objects'])}")
    verdict = "met" if min(times["decide"]) / n * 1e6 < 20.0 else "MISSED"
    print(f"  target: 1,000 decisions in under 20 ms: {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
