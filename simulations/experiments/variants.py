"""Runs of a scenario's variant contenders (:mod:`simulations.serving.variants`), and sweeps of
them: the same per-run report as every contender, plus what the variants cost.

``cost`` is the price per replica-hour of each variant times the hours its pods held GPUs
(Pending pods cost nothing); ``variants`` gives the figures per variant. A sweep
(``simulations/sweeps/variants.yaml``) runs every grid point of every family on every seed and
reports, per family, the cheapest point whose attainment (mean over the seeds) reaches the
target, with its cuts by scale-down::

    python -m simulations.experiments.variants simulations/sweeps/variants.yaml --out DIR
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from simulations.config.scenario import (
    Scenario,
    ScenarioError,
    read_yaml_file,
)
from simulations.config.sweep_spec import SweepSpecError, parse_variant_sweep
from simulations.config.variants import VariantContender, VariantPoint, VariantSweepSpec
from simulations.experiments.compare import (
    RunResult,
    detect_bursts,
    prepare,
    random_streams,
    summarise,
)
from simulations.experiments.pool import run_in_order
from simulations.serving.run import build_cluster
from simulations.serving.variants import VariantWorld


def run_variants(scenario: Scenario, contender: VariantContender, seed: int) -> RunResult:
    """Simulate ``contender`` on the scenario's variants with ``seed`` (the same workload,
    cluster and random streams as every other contender of that seed)."""
    workload, _, duration = prepare(scenario, seed)
    _, _, c_rng, r_rng = random_streams(seed)
    cluster, _ = build_cluster(scenario, c_rng)
    world = VariantWorld(scenario, contender, workload, cluster, r_rng, duration)
    controller = world.start(scenario.hpa)
    world.run()
    bursts = detect_bursts(workload.times, duration, scenario)
    result = summarise(world.merged(), contender.label, f"variants-{contender.kind}", seed, bursts)
    per = world.costs()
    result.summary["variants"] = per
    result.summary["cost"] = sum(v["cost"] for v in per.values())
    result.summary["cost_per_hour"] = result.summary["cost"] / (duration / 3600.0)
    if controller is not None:
        result.summary["decisions"] = controller.decisions
        result.summary["saturated_decisions"] = controller.saturated
    return result


def run_variant_contender(scenario: Scenario, index: int, seed: int) -> RunResult:
    """Variant contender ``index`` of the scenario's ``variants.contenders``."""
    if scenario.variants is None:
        raise ValueError(f"{scenario.file}: the scenario has no variants")
    return run_variants(scenario, scenario.variants.contenders[index], seed)


# --------------------------------------------------------------------------- sweeps


class VariantSweepError(ScenarioError):
    """A variants sweep file that cannot be used; ``messages`` are ``file: path: message``."""


def load_variant_sweep(path: Path | str) -> tuple[Scenario, VariantSweepSpec]:
    """Read a variants sweep: ``scenario`` (relative to the file), ``seeds``, ``target`` and
    ``families`` (per family a ``base`` contender and a ``grid`` of knob paths)."""
    p = Path(path)
    document = read_yaml_file(p, VariantSweepError)
    try:
        return parse_variant_sweep(document, str(p), p.resolve().parent)
    except SweepSpecError as exc:
        raise VariantSweepError(exc.messages) from None


def _task(args: tuple[Scenario, VariantPoint, int]) -> dict[str, Any]:
    scenario, point, seed = args
    result = run_variants(scenario, point.contender, seed)
    return {
        "family": point.family,
        "label": point.contender.label,
        "knobs": dict(point.knobs),
        "seed": seed,
        "summary": result.summary,
    }


def run_variant_sweep(
    scenario: Scenario,
    spec: VariantSweepSpec,
    *,
    workers: int = 1,
    on_done: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Every point × seed, in ``workers`` processes; records in a fixed order."""
    tasks = [
        (scenario, point, seed)
        for _, points in spec.families
        for point in points
        for seed in spec.seeds
    ]
    return run_in_order(_task, tasks, workers, on_done)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def variant_sweep_report(spec: VariantSweepSpec, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per family: every point's means over the seeds, and the cheapest point whose mean
    attainment reaches the target (``None`` when none does)."""
    families = []
    for name, points in spec.families:
        rows = []
        for point in points:
            group = [r["summary"] for r in records if r["label"] == point.contender.label]
            if not group:
                continue
            rows.append(
                {
                    "knobs": dict(point.knobs),
                    "slo_attainment": _mean([g["slo_attainment"] for g in group]),
                    "cost": _mean([g["cost"] for g in group]),
                    "gpu_hours": _mean([g["gpu_hours"] for g in group]),
                    "cut_by_scale_down": sum(g["cut_by_scale_down"] for g in group),
                    "pending_pod_seconds": _mean([g["pending_pod_seconds"] for g in group]),
                    "variants": {
                        v: {
                            "replicas_mean": _mean(
                                [g["variants"][v]["replicas_mean"] for g in group]
                            ),
                            "cost": _mean([g["variants"][v]["cost"] for g in group]),
                        }
                        for v in group[0]["variants"]
                    },
                }
            )
        meeting = [r for r in rows if r["slo_attainment"] >= spec.target]
        best = min(meeting, key=lambda r: r["cost"]) if meeting else None
        top = max(rows, key=lambda r: r["slo_attainment"]) if rows else None
        families.append({"name": name, "best": best, "best_attainment": top, "points": rows})
    return {
        "sweep": spec.file,
        "scenario": spec.scenario_file,
        "seeds": list(spec.seeds),
        "target": spec.target,
        "families": families,
    }


def _table(report: dict[str, Any]) -> str:
    target = report["target"]
    lines = [
        f"cost at {target:.0%} attainment (mean of seeds {report['seeds']}),"
        f" routing {report.get('routing', '?')}, load average"
        f" {report.get('load_average', {}).get('start', math.nan):.2f} at the start,"
        f" {report.get('load_average', {}).get('end', math.nan):.2f} at the end:"
    ]
    for f in report["families"]:
        b = f["best"]
        if b is None:
            t = f["best_attainment"]
            lines.append(
                f"  {f['name']:<20} none reaches the target (best {t['slo_attainment']:.4f}"
                f" at cost {t['cost']:.2f}, {t['knobs']})"
            )
            continue
        mix = ", ".join(f"{v} {x['replicas_mean']:.1f}" for v, x in b["variants"].items())
        lines.append(
            f"  {f['name']:<20} cost {b['cost']:7.2f}  GPU-h {b['gpu_hours']:6.2f}"
            f"  attainment {b['slo_attainment']:.4f}  cut {b['cut_by_scale_down']}"
            f"  mean replicas {mix}  {b['knobs']}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--out", type=Path, default=Path("variants-sweep"))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--routing",
        choices=("least-outstanding", "capacity-weighted"),
        help="the gateway's routing (default: the scenario's variants.routing)",
    )
    args = parser.parse_args(argv)
    try:
        scenario, spec = load_variant_sweep(args.sweep)
    except ScenarioError as exc:
        print("\n".join(exc.messages), file=sys.stderr)
        return 1
    if args.routing is not None and scenario.variants is not None:
        variants = replace(scenario.variants, routing=args.routing)
        scenario = replace(scenario, variants=variants)
    load = os.getloadavg()
    total = sum(len(p) for _, p in spec.families) * len(spec.seeds)
    done = [0]

    def progress(_: dict[str, Any]) -> None:
        done[0] += 1
        print(f"\r{done[0]}/{total} runs", end="", file=sys.stderr, flush=True)

    records = run_variant_sweep(scenario, spec, workers=args.workers, on_done=progress)
    print(file=sys.stderr)
    report = variant_sweep_report(spec, records)
    assert scenario.variants is not None
    report["routing"] = scenario.variants.routing
    report["load_average"] = {"start": load[0], "end": os.getloadavg()[0]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "variants-sweep.json").write_text(json.dumps(report, indent=1, default=str))
    print(_table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
