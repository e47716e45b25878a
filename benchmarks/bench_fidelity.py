"""Fidelity: the simulated vLLM engine against published measurements of real vLLM.

Each row of ``simulations/data/vllm_published.csv`` (sources in its ``ATTRIBUTION.md``) is one
load point of real vLLM serving Llama-3.1-8B: the load (a batch sent at once, a Poisson rate or
a closed-loop concurrency), the prompt and output lengths, and the latencies that were
published. The simulator runs the same load through :class:`simulations.batching.BatchingReplica`
on the shipped profile of the same model × GPU, once with the profile as shipped (steps and
BLIS's alpha overheads) and once with the steps alone (the model before the alphas), and
prints its figures beside the published ones with the relative error, then the median relative
error per figure over the points that publish it.

The targets (median relative error at most 10% on mean TTFT and mean ITL, 20% at p99, over at
least 8 load points covering light load, saturation and long prompts) can only be judged when
the data file holds that many points; the summary says when it does not.

Usage: ``python benchmarks/bench_fidelity.py [--data FILE]``. Deterministic (seeded); well under
a second per point.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "simulations" / "data" / "vllm_published.csv"
FIGURES = ("ttft_mean_ms", "ttft_p99_ms", "itl_mean_ms", "itl_p99_ms", "e2e_mean_ms")
KINDS = ("batch", "rate", "concurrency")
SEED = 0


class DataError(ValueError):
    """A row that cannot be used; the message names the file, line and column."""


@dataclass(frozen=True, slots=True)
class Point:
    id: str
    profile: str
    kind: str
    load: float
    requests: int
    prompt: int
    output: int
    published: dict[str, float]
    source: str


def read_points(path: Path) -> list[Point]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    points = []
    for n, row in enumerate(csv.DictReader(text.splitlines()), start=2):
        where = f"{path}:{n}"

        def number(key: str, row: dict[str, str] = row, where: str = where) -> float:
            raw = (row.get(key) or "").strip()
            try:
                value = float(raw)
            except ValueError:
                raise DataError(f"{where}: {key}: expected a number, got {raw!r}") from None
            if not math.isfinite(value) or value <= 0:
                raise DataError(f"{where}: {key}: expected a number > 0, got {raw!r}")
            return value

        kind = (row.get("load_kind") or "").strip()
        if kind not in KINDS:
            raise DataError(f"{where}: load_kind: expected one of {', '.join(KINDS)}, got {kind!r}")
        published = {k: number(k) for k in FIGURES if (row.get(k) or "").strip()}
        points.append(
            Point(
                id=(row.get("id") or "").strip() or f"line {n}",
                profile=(row.get("profile") or "").strip(),
                kind=kind,
                load=number("load"),
                requests=int(number("requests")),
                prompt=int(number("prompt_tokens")),
                output=int(number("output_tokens")),
                published=published,
                source=(row.get("source") or "").strip(),
            )
        )
    return points


def simulate(point: Point, alphas: bool) -> dict[str, float]:
    """The point's load through one simulated engine; latencies in ms."""
    from policies.profiles import load_profile
    from policies.stepmodel import EngineLimits, kv_cache_blocks
    from simulations.batching import BatchingReplica, EngineConfig, ServingLog
    from simulations.engine import Engine

    profile = load_profile(point.profile)
    if not alphas:
        profile = dataclasses.replace(profile, alpha0=0.0, alpha1=0.0, alpha2=0.0)
    blocks = kv_cache_blocks(
        profile.gpu_memory_bytes, profile.weights_bytes, profile.kv_bytes_per_token
    )
    n = point.requests
    arrival = np.zeros(n)
    if point.kind == "rate":
        arrival = np.cumsum(np.random.default_rng(SEED).exponential(1.0 / point.load, n))
    log = ServingLog(arrival, np.full(n, float(point.prompt)), np.full(n, float(point.output)))
    engine = Engine()
    state = {"next": 0}
    replica: BatchingReplica

    def closed_loop(_: int) -> None:
        i = state["next"]
        if i < n:
            state["next"] = i + 1
            log.arrival[i] = engine.now
            replica.admit(i)

    on_complete = closed_loop if point.kind == "concurrency" else None
    replica = BatchingReplica(
        0, engine, log, EngineConfig(profile, EngineLimits(blocks)), on_complete
    )
    if point.kind == "concurrency":
        for _ in range(min(int(point.load), n)):
            closed_loop(0)
    else:
        engine.feed(log.arrival, replica.admit)
    engine.run()
    first = np.asarray(log.first_token) - np.asarray(log.arrival)
    finish = np.asarray(log.finish)
    e2e = finish - np.asarray(log.arrival)
    return {
        "ttft_mean_ms": float(first.mean()) * 1e3,
        "ttft_p99_ms": float(np.percentile(first, 99)) * 1e3,
        "itl_mean_ms": replica.itl.sum / max(replica.itl.count, 1) * 1e3,
        # the batch latency of ``vllm bench latency`` is the whole generate() call
        "e2e_mean_ms": float(finish.max() if point.kind == "batch" else e2e.mean()) * 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args(argv)
    try:
        points = read_points(args.data)
    except DataError as exc:
        print(exc, file=sys.stderr)
        return 1
    if not points:
        print(f"{args.data}: no published load points")
        return 0
    errors: dict[tuple[str, str], list[float]] = {}
    print(f"{len(points)} published load points ({args.data.name}); sim = shipped profile")
    header = f"  {'point':<22} {'figure':<13} {'published':>10} {'sim':>10} {'err':>7}"
    print(header + f" {'steps only':>11} {'err':>7}")
    for p in points:
        sims = {"shipped": simulate(p, True), "steps only": simulate(p, False)}
        load = f"{p.kind} {p.load:g}, {p.prompt}→{p.output} tokens"
        print(f"  {p.id} ({p.profile}; {load})")
        for figure, value in p.published.items():
            cells = []
            for which, sim in sims.items():
                got = sim.get(figure)
                if got is None:
                    cells.append(f"{'—':>10} {'':>7}")
                    continue
                rel = got / value - 1
                errors.setdefault((which, figure), []).append(abs(rel))
                cells.append(f"{got:10.1f} {rel * 100:+6.1f}%")
            print(f"  {'':<22} {figure:<13} {value:10.1f} {cells[0]} {cells[1]:>19}")
    print("\nmedian |relative error| per figure (points):")
    for (which, figure), errs in sorted(errors.items()):
        print(f"  {which:<11} {figure:<13} {statistics.median(errs) * 100:6.1f}%  ({len(errs)})")
    counted = {figure for _, figure in errors}
    for figure, target in (("ttft_mean_ms", 10), ("itl_mean_ms", 10), ("ttft_p99_ms", 20)):
        have = len(errors.get(("shipped", figure), []))
        if have < 8:
            print(f"  target on {figure} (<= {target}% over >= 8 points): not evaluable,", end="")
            print(f" {have} published point(s)")
    if not counted:
        print("  no figure is published for any point")
    return 0


if __name__ == "__main__":
    sys.exit(main())
