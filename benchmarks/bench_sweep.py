"""Sweep throughput: points per minute with 2 worker processes, and the same points in one
process (the baseline), in the same run; plus the wall time of a whole sweep spec.

1. A small sweep (default: the built-in scenario cut to its first 30 minutes, 12 baseline
   points, one seed, no bounds) runs twice from an empty results folder: once in this process
   (``SerialBackend``), once on a pool of 2 processes. Prints points/min of both, the speed-up,
   and checks that both wrote the same results.
2. ``--spec FILE`` (or ``--default``) also times a whole sweep, bounds included, with 2
   workers, into a fresh folder: the figure behind "the default sweep finishes in under 15
   minutes on a 2-core machine".
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from simulations.config.sweep_spec import SweepSpec, load_sweep, parse_sweep
from simulations.experiments.sweep import ProcessBackend, SerialBackend, read_results, run_sweep
from simulations.experiments.sweep_report import pareto_dict

SMALL = {
    "duration": "30m",
    "seeds": 1,
    "target": 0.99,
    "bounds": {"static": False, "hindsight": False},
    "families": {
        "hpa": {
            "baseline": "hpa",
            "set": {"metric": "concurrency"},
            "grid": {"target": [1, 2, 4, 8]},
        },
        "keda": {
            "baseline": "keda",
            "set": {"metric": "concurrency"},
            "grid": {"threshold": [1, 2, 4, 8]},
        },
        "kpa": {"baseline": "kpa", "grid": {"target": [1, 2, 4, 8]}},
    },
}


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(spec: SweepSpec, workers: int) -> tuple[float, float, dict[str, dict[str, object]]]:
    """Wall seconds, CPU seconds (this process and its finished children) and the results."""
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        backend = ProcessBackend(workers) if workers > 1 else SerialBackend()
        cpu, start = _cpu(), time.perf_counter()
        run = run_sweep(spec, Path(tmp), backend)
        wall, cpu = time.perf_counter() - start, _cpu() - cpu
        assert run.ran == len(run.points)
        return wall, cpu, read_results(Path(tmp) / "results.jsonl")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, help="also time this whole sweep with 2 workers")
    parser.add_argument("--default", action="store_true", help="also time the built-in sweep")
    args = parser.parse_args(argv)
    print(f"cpu_count={os.cpu_count()}  python={sys.version.split()[0]}")

    spec = parse_sweep(SMALL, "bench-sweep", Path("."))
    points = sum(len(f.points) for f in spec.families) * len(spec.seeds)
    load = os.getloadavg()[0]
    one, cpu1, serial = timed(spec, 1)
    two, cpu2, pooled = timed(spec, 2)
    same = serial == pooled
    print(f"\nsmall sweep: {points} runs of the default scenario's first 30 minutes")
    for name, wall, cpu in (("1 process (baseline)", one, cpu1), ("2 workers", two, cpu2)):
        rate = points / wall * 60
        print(f"  {name:20}: {rate:6.1f} points/min  ({wall:5.1f} s, {cpu:5.1f} CPU-s)")
    print(f"  speed-up            : {one / two:.2f}x; same results: {same}")
    print(
        f"  load average before / after: {load:.1f} / {os.getloadavg()[0]:.1f}"
        " (other work on the machine takes cores from the pool)"
    )

    if args.spec is not None or args.default:
        whole = load_sweep(args.spec)
        runs = sum(len(f.points) for f in whole.families) * len(whole.seeds)
        with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
            start = time.perf_counter()
            result = run_sweep(whole, Path(tmp), ProcessBackend(2))
            wall = time.perf_counter() - start
            doc = pareto_dict(result)
        print(f"\n{whole.file}: {runs} point runs + bounds ({result.ran} tasks), 2 workers")
        print(f"  wall time: {wall:.0f} s ({wall / 60:.1f} min; target < 15 min)")
        h = doc["bounds"]["hindsight"]
        print(f"  hindsight bound: {h['gpu_hours'] if h else None} GPU-h")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
