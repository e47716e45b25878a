"""A sweep's results as ``pareto.json``, ``pareto.png`` and a table.

``pareto.json`` (schema ``gpuscale.io/sweep-pareto/v1``, documented in
``simulations/README.md``) gives per family every point × seed, its frontier over the means
across seeds, and the GPU-hours it needs for the target attainment; and the two bounds.
Floats keep 6 significant digits and nothing depends on timing, so the same results give the
same bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simulations.experiments.bounds import startup_seconds
from simulations.experiments.hindsight import allocate, monotone, schedule
from simulations.experiments.pareto import Point, frontier, gpu_hours_at
from simulations.experiments.report import json_safe
from simulations.experiments.sweep import SweepRun

SCHEMA = "gpuscale.io/sweep-pareto/v1"
BASELINE_KINDS = ("hpa", "keda", "kpa")
POINT_FIGURES = (
    "slo_attainment",
    "gpu_hours",
    "latency_p50",
    "latency_p95",
    "latency_p99",
    "replicas_mean",
    "replicas_max",
    "scale_events",
    "dropped",
    "cut_by_scale_down",
)


def _figures(summary: dict[str, Any]) -> dict[str, Any]:
    out = {k: summary.get(k) for k in POINT_FIGURES if k in summary}
    for k in sorted(summary):  # the same order whether read back from results.jsonl or not
        if k.startswith(("ttft_", "tpot_")) and k not in out:
            out[k] = summary[k]
    return out


def _mean(values: Sequence[float | None]) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if len(vals) == len(values) and vals else math.nan


def hindsight_seed(record: dict[str, Any], run: SweepRun) -> dict[str, Any]:
    """The hindsight bound of one seed from its interval curves (see :mod:`bounds`)."""
    sc = run.spec.scenario
    svc = sc.service
    counted = sum(record["counted"])
    budget = math.floor((1.0 - run.spec.target) * counted + 1e-9)
    curves = [monotone(m) for m in record["misses"]]
    alloc = allocate(curves, budget, floor=svc.min_replicas)
    lengths = record["lengths"]
    startup = startup_seconds(sc)
    plan = schedule(alloc.replicas, lengths, startup, svc.initial_replicas)
    duration = sum(lengths)
    return {
        "seed": record["seed"],
        "gpu_hours": plan.replica_seconds * svc.gpus / 3600.0,
        "replicas_mean": sum(m * t for m, t in zip(plan.replicas, lengths, strict=True)) / duration,
        "replicas_max": max(plan.replicas, default=0),
        "starts": plan.starts,
        "modelled_attainment": 1.0 - alloc.misses / counted if counted else None,
        "feasible": alloc.feasible,
        "needs": list(alloc.replicas),
        "replicas": list(plan.replicas),
    }


def pareto_dict(run: SweepRun) -> dict[str, Any]:
    spec = run.spec
    seeds = list(spec.seeds)
    families: list[dict[str, Any]] = []
    for fam in spec.families:
        records = [r for r in run.points if r["family"] == fam.name]
        by_label: dict[str, list[dict[str, Any]]] = {}
        for r in records:
            by_label.setdefault(r["label"], []).append(r)
        means: list[tuple[dict[str, Any], Point, int]] = []
        for pt in fam.points:
            group = by_label.get(pt.label, [])
            if len(group) < len(seeds):
                continue
            att = _mean([g["summary"]["slo_attainment"] for g in group])
            gpu = _mean([g["summary"]["gpu_hours"] for g in group])
            means.append((dict(pt.knobs), Point(att, gpu), len(group)))
        front = [means[i] for i in frontier([m[1] for m in means])]
        curve = [p for _, p, _ in front]
        at_target = gpu_hours_at(curve, spec.target)
        points = [
            {"knobs": r["knobs"], "seed": r["seed"], **_figures(r["summary"])}
            for r in sorted(records, key=lambda r: (r["label"], r["seed"]))
        ]
        families.append(
            {
                "name": fam.name,
                "kind": fam.kind,
                "points": points,
                "frontier": [
                    {"knobs": k, "slo_attainment": p.attainment, "gpu_hours": p.gpu_hours}
                    for k, p, _ in front
                ],
                "best_attainment": max((p.attainment for _, p, _ in means), default=None),
                "gpu_hours_at_target": at_target,
            }
        )

    static: dict[str, Any] | None = None
    if run.static_replicas is not None:
        group = [r for r in run.static if r["replicas"] == run.static_replicas]
        static = {
            "replicas": run.static_replicas,
            "gpu_hours": _mean([g["summary"]["gpu_hours"] for g in group]),
            "slo_attainment": _mean([g["summary"]["slo_attainment"] for g in group]),
        }
    probes = sorted({r["replicas"] for r in run.static})
    static_probes = [
        {
            "replicas": n,
            "slo_attainment": _mean(
                [r["summary"]["slo_attainment"] for r in run.static if r["replicas"] == n]
            ),
        }
        for n in probes
    ]
    hindsight: dict[str, Any] | None = None
    if run.hindsight and spec.hindsight is not None:
        per_seed = [hindsight_seed(r, run) for r in sorted(run.hindsight, key=lambda r: r["seed"])]
        hindsight = {
            "reachable": all(p["feasible"] for p in per_seed),
            "gpu_hours": _mean([p["gpu_hours"] for p in per_seed]),
            "interval_s": spec.hindsight.interval,
            "startup_s": startup_seconds(spec.scenario),
            "replica_cap": run.cap,
            "per_seed": per_seed,
        }
    h = hindsight["gpu_hours"] if hindsight and hindsight["reachable"] else None
    s = static["gpu_hours"] if static else None
    for f in families:
        g = f["gpu_hours_at_target"]
        f["above_hindsight"] = g / h - 1.0 if g is not None and h else None
        f["vs_static"] = g / s - 1.0 if g is not None and s else None

    def best(kinds: tuple[str, ...]) -> dict[str, Any] | None:
        cands = [f for f in families if f["kind"] in kinds and f["gpu_hours_at_target"] is not None]
        if not cands:
            return None
        f = min(cands, key=lambda f: f["gpu_hours_at_target"])
        return {"family": f["name"], "gpu_hours": f["gpu_hours_at_target"]}

    ours, theirs = best(("gpuscale",)), best(BASELINE_KINDS)
    summary = {
        "best_gpuscale": ours,
        "best_baseline": theirs,
        "saving_vs_best_baseline": 1.0 - ours["gpu_hours"] / theirs["gpu_hours"]
        if ours and theirs
        else None,
        "gpuscale_above_hindsight": ours["gpu_hours"] / h - 1.0 if ours and h else None,
    }
    sc = spec.scenario
    doc = {
        "schema": SCHEMA,
        "scenario": {
            "name": sc.name,
            "seeds": seeds,
            "duration_s": sc.duration,
            "workload": sc.workload.type,
            "slo": {
                "ttft": sc.service.slo.ttft,
                "tpot": sc.service.slo.tpot,
                "e2e": sc.service.slo.e2e,
            },
        },
        "target": spec.target,
        "families": families,
        "bounds": {"static": static, "static_probes": static_probes, "hindsight": hindsight},
        "summary": summary,
    }
    return dict(json_safe(doc))


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(doc, indent=2) + "\n")


def write_plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    target = doc["target"]
    for f in doc["families"]:
        front = f["frontier"]
        if not front:
            continue
        xs = [p["slo_attainment"] * 100 for p in front]
        ys = [p["gpu_hours"] for p in front]
        line = ax.plot(xs, ys, marker="o", ms=4, lw=1.2, label=f["name"])[0]
        color = line.get_color()
        by_knobs: dict[str, list[dict[str, Any]]] = {}
        for p in f["points"]:
            by_knobs.setdefault(json.dumps(p["knobs"], sort_keys=True), []).append(p)
        mx, my = [], []
        for group in by_knobs.values():
            a = [p["slo_attainment"] for p in group if p.get("slo_attainment") is not None]
            g = [p["gpu_hours"] for p in group if p.get("gpu_hours") is not None]
            if a and g:
                mx.append(sum(a) / len(a) * 100)
                my.append(sum(g) / len(g))
        ax.scatter(mx, my, s=8, color=color, alpha=0.3)
    b = doc["bounds"]
    if b.get("hindsight"):
        ax.axhline(b["hindsight"]["gpu_hours"], color="black", ls="--", lw=1, label="hindsight")
    if b.get("static"):
        ax.axhline(
            b["static"]["gpu_hours"],
            color="grey",
            ls=":",
            lw=1.2,
            label=f"static ({b['static']['replicas']} replicas)",
        )
    ax.axvline(target * 100, color="red", lw=0.8, label=f"target {target * 100:g}%")
    lo = min(
        [p["slo_attainment"] * 100 for f in doc["families"] for p in f["frontier"]]
        + [target * 100 - 5]
    )
    ax.set_xlim(max(lo - 1, target * 100 - 12, 0), 100.3)  # the region around the target
    ax.set_xlabel("SLO attainment (%), mean over seeds")
    ax.set_ylabel("GPU-hours")
    ax.set_title(f"{doc['scenario']['name']}: frontier per family")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:+.0f}%"


def table(doc: dict[str, Any]) -> str:
    """The terminal table: per family, GPU-hours at the target and distance to the bounds."""
    target = doc["target"]
    header = [
        "family",
        "points",
        "best att.",
        f"GPU-h @ {target * 100:g}%",
        "vs hindsight",
        "vs static",
        "cheapest frontier point at target",
    ]
    rows: list[list[str]] = []
    for f in doc["families"]:
        g = f["gpu_hours_at_target"]
        cheapest = next(
            (p for p in f["frontier"] if p["slo_attainment"] >= target),
            None,
        )
        knobs = (
            ",".join(f"{k}={v}" for k, v in cheapest["knobs"].items()) or "-" if cheapest else "-"
        )
        n = len({json.dumps(p["knobs"], sort_keys=True) for p in f["points"]})
        ba = f["best_attainment"]
        rows.append(
            [
                f["name"],
                str(n),
                "-" if ba is None else f"{ba * 100:.2f}%",
                "never" if g is None else f"{g:.1f}",
                _pct(f["above_hindsight"]),
                _pct(f["vs_static"]),
                knobs,
            ]
        )
    b = doc["bounds"]
    if b.get("static"):
        st = b["static"]
        rows.append(
            [
                "static",
                "-",
                f"{st['slo_attainment'] * 100:.2f}%",
                f"{st['gpu_hours']:.1f}",
                "",
                "",
                f"replicas={st['replicas']}",
            ]
        )
    if b.get("hindsight"):
        hb = b["hindsight"]
        if hb["reachable"]:
            rows.append(["hindsight", "-", "", f"{hb['gpu_hours']:.1f}", "", "", "lower bound"])
        else:
            best = min(p["modelled_attainment"] for p in hb["per_seed"])
            rows.append(
                [
                    "hindsight",
                    "-",
                    f"{best * 100:.2f}%",
                    "never",
                    "",
                    "",
                    f"even {hb['replica_cap']} replicas (all that fit) miss the target",
                ]
            )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = []
    for r in [header, *rows]:
        lines.append(
            "  ".join(
                c.ljust(w) if i in (0, len(r) - 1) else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            ).rstrip()
        )
    s = doc["summary"]
    if s["best_gpuscale"] and s["best_baseline"]:
        lines.append(
            f"best gpuscale ({s['best_gpuscale']['family']}) vs best baseline "
            f"({s['best_baseline']['family']}): {s['saving_vs_best_baseline'] * 100:.1f}% fewer "
            f"GPU-hours at {target * 100:g}%"
            + (
                f"; {s['gpuscale_above_hindsight'] * 100:.1f}% above the hindsight bound"
                if s["gpuscale_above_hindsight"] is not None
                else ""
            )
        )
    return "\n".join(lines)
