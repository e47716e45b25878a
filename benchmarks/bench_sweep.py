"""Sweep throughput: points per minute with 2 worker processes, and the same points in one
process (the baseline), in the same run; plus the wall time of a whole sweep spec.

1. A small sweep (default: the built-in scenario cut to its first 20 minutes, 8 baseline
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
import sys
import tempfile
import time
from pathlib import Path

from simulations.sweep import ProcessBackend, SerialBackend, read_results, run_sweep
from simulations.sweep_report import pareto_dict
from simulations.sweep_spec import SweepSpec, load_sweep, parse_sweep

SMALL = {
    "duration": "20m",
    "seeds": 1,
    "target": 0.99,
    "bounds": {"static": False, "hindsight": False},
    "families": {
        "hpa": {"baseline": "hpa", "set": {"metric": "concurrency"}, "grid": {"target": [1, 4]}},
        "keda": {"baseline": "keda", "set": {"metric": "queue"}, "grid": {"threshold": [0.5, 2]}},
        "kpa": {"baseline": "kpa", "grid": {"target": [1, 2, 4, 8]}},
    },
}


def timed(spec: SweepSpec, workers: int) -> tuple[float, dict[str, dict[str, object]]]:
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        backend = ProcessBackend(workers) if workers > 1 else SerialBackend()
        start = time.perf_counter()
        run = run_sweep(spec, Path(tmp), backend)
        wall = time.perf_counter() - start
        assert run.ran == len(run.points)
        return wall, read_results(Path(tmp) / "results.jsonl")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, help="also time this whole sweep with 2 workers")
    parser.add_argument("--default", action="store_true", help="also time the built-in sweep")
    args = parser.parse_args(argv)
    print(f"cpu_count={os.cpu_count()}  python={sys.version.split()[0]}")

    spec = parse_sweep(SMALL, "bench-sweep", Path("."))
    points = sum(len(f.points) for f in spec.families) * len(spec.seeds)
    one, serial = timed(spec, 1)
    two, pooled = timed(spec, 2)
    same = serial == pooled
    print(f"\nsmall sweep: {points} runs of the default scenario's first 20 minutes")
    print(f"  1 process (baseline): {points / one * 60:6.1f} points/min  ({one:6.1f} s)")
    print(f"  2 worker processes  : {points / two * 60:6.1f} points/min  ({two:6.1f} s)")
    print(f"  speed-up            : {one / two:.2f}x; same results: {same}")

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
