"""The hindsight bound for variants: the cheapest replica mix per interval, knowing the trace.

:mod:`simulations.experiments.bounds` extended to several GPU types. Time is cut into
``interval``-second slices; each slice's arrivals are replayed *alone* on warm fixed mixes (every
count of the leading variants up to what fits, the last variant walked up from 0 until nothing
is missed), through the same :class:`~simulations.serving.variants.VariantWorld` (serving model,
router, SLO) every variant contender runs on. That gives each slice's options as
``(price of the mix × slice length, requests missed)``. :func:`~simulations.experiments.hindsight.
allocate_priced` spends the target's miss budget where it saves the most money, and every
variant's start-ups are paid for per variant (:func:`~simulations.experiments.hindsight.schedule`,
a cached image pull plus the mean model load). The bound is that schedule's cost; each family's
best sweep cost is reported against it::

    python -m simulations.experiments.variants_bound simulations/sweeps/variants.yaml \\
        --interval 60s --routing capacity-weighted
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import pickle
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from policies.durations import parse_duration
from simulations.config.scenario import Scenario, ScenarioError
from simulations.config.variants import VariantContender
from simulations.experiments.bounds import replay_intervals, slo_tail, startup_seconds
from simulations.experiments.compare import prepare, random_streams, request_times
from simulations.experiments.hindsight import allocate_priced, schedule
from simulations.experiments.variants import load_variant_sweep
from simulations.serving.arrivals import Workload
from simulations.serving.run import build_cluster
from simulations.serving.variants import VariantWorld


@dataclass(frozen=True, slots=True)
class MixCurves:
    """Per interval: its length, requests counted, and ``(mix, misses)`` of every mix tried."""

    lengths: tuple[float, ...]
    counted: tuple[int, ...]
    options: tuple[tuple[tuple[tuple[int, ...], int], ...], ...]


def caps(scenario: Scenario, seed: int) -> tuple[int, ...]:
    """Per variant, the most replicas that fit next to the seed's background pods (at most its
    ``max``)."""
    assert scenario.variants is not None
    workload, _, duration = prepare(scenario, seed)
    _, _, c_rng, r_rng = random_streams(seed)
    cluster, _ = build_cluster(scenario, c_rng)
    world = VariantWorld(
        scenario,
        _mix(scenario, (0,) * len(scenario.variants.deployments)),
        workload,
        cluster,
        r_rng,
        duration,
    )
    return tuple(
        min(world.placeable(k), d.service.max_replicas)
        for k, d in enumerate(scenario.variants.deployments)
    )


def _mix(scenario: Scenario, ns: Sequence[int]) -> VariantContender:
    assert scenario.variants is not None
    names = scenario.variants.names()
    return VariantContender(
        "mix " + " ".join(f"{n}={k}" for n, k in zip(names, ns, strict=True)),
        "fixed",
        {n: (k, k) for n, k in zip(names, ns, strict=True)},
    )


def candidate_mixes(cap: Sequence[int], enough: list[tuple[int, ...]]) -> Iterator[tuple[int, ...]]:
    """Every mix within ``cap`` but none: the variant with the most room is walked up from 0
    for each count of the others, and a walk stops at (and no later mix may contain) a mix in
    ``enough``, which the caller fills as mixes turn out to miss nothing."""
    walk = max(range(len(cap)), key=lambda j: (cap[j], j))
    others = [j for j in range(len(cap)) if j != walk]
    for lead in itertools.product(*(range(cap[j] + 1) for j in others)):
        for n in range(cap[walk] + 1):
            ns = [0] * len(cap)
            ns[walk] = n
            for j, m in zip(others, lead, strict=True):
                ns[j] = m
            mix = tuple(ns)
            if sum(mix) == 0:
                continue
            if any(all(a <= b for a, b in zip(z, mix, strict=True)) for z in enough):
                break
            yield mix


def mix_curves(scenario: Scenario, seed: int, interval: float, cap: Sequence[int]) -> MixCurves:
    """Each interval's misses on warm fixed mixes, its arrivals replayed alone."""
    assert scenario.variants is not None
    replay = replay_intervals(scenario, seed, interval)
    workload, frozen, edges, lengths = (
        replay.workload,
        replay.frozen_cluster,
        replay.edges,
        replay.lengths,
    )
    times = workload.times
    n_int = len(lengths)
    zero = (0,) * len(cap)
    counted: list[int] = []
    options: list[tuple[tuple[tuple[int, ...], int], ...]] = []
    for k in range(n_int):
        a, b = int(edges[k]), int(edges[k + 1])
        total = b - a
        counted.append(total)
        if total == 0:
            options.append(((zero, 0),))
            continue
        t0 = k * interval
        sub = Workload(times[a:b] - t0, workload.prompt[a:b], workload.generated[a:b])
        run_for = interval + slo_tail(scenario, sub.generated)
        tried: list[tuple[tuple[int, ...], int]] = [(zero, total)]
        enough: list[tuple[int, ...]] = []  # mixes that miss nothing: more of any is no option
        for ns in candidate_mixes(cap, enough):
            world = VariantWorld(
                scenario,
                _mix(scenario, ns),
                sub,
                pickle.loads(frozen),
                np.random.default_rng([seed, k, *ns]),
                run_for,
            )
            world.start(scenario.hpa)
            world.run()
            missed = total - int(request_times(world.merged()).meets.sum())
            tried.append((ns, missed))
            if missed == 0:
                enough.append(ns)
        options.append(tuple(tried))
    return MixCurves(lengths, tuple(counted), tuple(options))


def bound(scenario: Scenario, curves: MixCurves, target: float) -> dict[str, Any]:
    """The cheapest schedule of mixes within the target's miss budget, start-ups paid."""
    assert scenario.variants is not None
    deployments = scenario.variants.deployments
    prices = [d.price for d in deployments]
    counted = sum(curves.counted)
    budget = math.floor((1.0 - target) * counted + 1e-9)
    priced = [
        [
            (sum(n * p for n, p in zip(ns, prices, strict=True)) * length / 3600.0, missed)
            for ns, missed in opts
        ]
        for opts, length in zip(curves.options, curves.lengths, strict=True)
    ]
    alloc = allocate_priced(priced, budget)
    mixes = [opts[c][0] for opts, c in zip(curves.options, alloc.choice, strict=True)]
    per: dict[str, Any] = {}
    cost = 0.0
    for j, d in enumerate(deployments):
        needs = [m[j] for m in mixes]
        startup = startup_seconds(replace(scenario, service=d.service))
        plan = schedule(needs, curves.lengths, startup, 0)
        hours = plan.replica_seconds / 3600.0
        cost += hours * d.price
        per[d.name] = {
            "replica_hours": hours,
            "cost": hours * d.price,
            "replicas_mean": sum(m * t for m, t in zip(plan.replicas, curves.lengths, strict=True))
            / sum(curves.lengths),
            "replicas_max": max(plan.replicas, default=0),
            "starts": plan.starts,
        }
    return {
        "cost": cost,
        "modelled_attainment": 1.0 - alloc.misses / counted if counted else None,
        "feasible": alloc.feasible,
        "variants": per,
        "mixes": [list(m) for m in mixes],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="a variants sweep (its scenario, seeds, target)")
    parser.add_argument("--interval", default="60s")
    parser.add_argument(
        "--routing", choices=("least-outstanding", "capacity-weighted"), default=None
    )
    parser.add_argument("--out", type=Path, default=None, help="write the bound as JSON here")
    args = parser.parse_args(argv)
    try:
        scenario, spec = load_variant_sweep(args.sweep)
    except ScenarioError as exc:
        print("\n".join(exc.messages), file=sys.stderr)
        return 1
    try:
        interval = parse_duration(args.interval)
    except ValueError as exc:
        print(f"--interval: {exc}", file=sys.stderr)
        return 1
    variants = scenario.variants
    assert variants is not None
    if args.routing is not None:
        variants = replace(variants, routing=args.routing)
        scenario = replace(scenario, variants=variants)
    load = os.getloadavg()[0]
    seeds = []
    for seed in spec.seeds:
        cap = caps(scenario, seed)
        curves = mix_curves(scenario, seed, interval, cap)
        seeds.append({"seed": seed, "caps": list(cap), **bound(scenario, curves, spec.target)})
    cost = sum(s["cost"] for s in seeds) / len(seeds)
    report = {
        "sweep": str(args.sweep),
        "routing": variants.routing,
        "interval": interval,
        "target": spec.target,
        "cost": cost,
        "seeds": seeds,
        "load_average": {"start": load, "end": os.getloadavg()[0]},
    }
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1))
    att = ", ".join(f"{s['modelled_attainment']:.4f}" for s in seeds)
    print(
        f"hindsight bound ({variants.routing}, {interval:g}s intervals): cost {cost:.2f}"
        f" (modelled attainment {att}; load average {load:.2f} at the start,"
        f" {report['load_average']['end']:.2f} at the end)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
