"""The comparison as files and as a table: ``report.json``, ``timeline.csv``, PNG plots.

``report.json`` (schema ``gpuscale.io/simulation-report/v1``, documented in
``simulations/README.md``) holds no wall-clock times or paths that vary between runs, and its
floats are rounded to 6 significant digits, so the same scenario and seeds give the same bytes.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simulations.experiments.compare import Comparison, RunResult

SCHEMA = "gpuscale.io/simulation-report/v2"
AGGREGATED = (
    "slo_attainment",
    "ttft_p50",
    "ttft_p90",
    "ttft_p99",
    "tpot_p50",
    "tpot_p90",
    "tpot_p99",
    "latency_p50",
    "latency_p95",
    "latency_p99",
    "latency_mean",
    "gpu_hours",
    "replicas_mean",
    "replicas_max",
    "ready_mean",
    "scale_events",
    "pending_pod_seconds",
    "pending_max",
    "recovery_mean_s",
    "bursts_unrecovered",
    "dropped",
    "cut_by_scale_down",
    "unfinished",
    "preemptions",
    "kv_cache_usage_mean",
    "kv_cache_usage_max",
    "waiting_max",
)
TIMELINE_COLUMNS = (
    "time",
    "arrivals_per_s",
    "desired",
    "replicas",
    "ready",
    "pending",
    "gpus",
    "in_system",
    "waiting",
    "running",
    "kv_cache_usage",
    "preemptions",
    "latency_p95",
    "ttft_p95",
    "tpot_p95",
    "slo_attainment",
)


def json_safe(value: Any) -> Any:
    """JSON-safe and stable: NaN/inf become null, floats keep 6 significant digits."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def by_label(comparison: Comparison) -> dict[str, list[RunResult]]:
    out: dict[str, list[RunResult]] = {}
    for r in comparison.results:
        out.setdefault(r.label, []).append(r)
    return out


def aggregate(runs: Sequence[RunResult]) -> dict[str, dict[str, float]]:
    """Mean, standard deviation (the spread across seeds), min and max of each figure."""
    out: dict[str, dict[str, float]] = {"mean": {}, "spread": {}, "min": {}, "max": {}}
    for key in AGGREGATED:
        vals = np.array([float(r.summary[key]) for r in runs], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        if len(vals) == 0:
            for part in out.values():
                part[key] = math.nan
            continue
        out["mean"][key] = float(vals.mean())
        out["spread"][key] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        out["min"][key] = float(vals.min())
        out["max"][key] = float(vals.max())
    return out


def report_dict(comparison: Comparison) -> dict[str, Any]:
    sc = comparison.scenario
    policies = []
    contenders: dict[str, object] = {c.label: c for c in sc.contenders}
    if sc.variants is not None:
        contenders |= {c.label: c for c in sc.variants.contenders}
    for label, runs in by_label(comparison).items():
        c = contenders[label]
        entry: dict[str, Any] = {"name": label, "kind": runs[0].kind}
        file = getattr(c, "file", None)
        if file:
            entry["file"] = Path(file).name
        entry.update(aggregate(runs))
        costs = [float(r.summary["cost"]) for r in runs if "cost" in r.summary]
        if costs:  # variant contenders: price x hours the pods held GPUs
            entry["mean"]["cost"] = sum(costs) / len(costs)
        entry["per_seed"] = [{"seed": r.seed, **r.summary} for r in runs]
        policies.append(entry)
    doc = {
        "schema": SCHEMA,
        "scenario": {
            "name": sc.name,
            "seeds": list(comparison.seeds),
            "duration_s": comparison.duration,
            "requests": comparison.requests,
            "slo": {
                "ttft_s": sc.service.slo.ttft,
                "tpot_s": sc.service.slo.tpot,
                "e2e_s": sc.service.slo.e2e,
                "attainment": sc.service.slo.attainment,
            },
            "engine": sc.service.engine,
            "profile": sc.service.vllm.profile.name if sc.service.vllm else None,
            "workload": sc.workload.type,
            "bursts": list(comparison.bursts),
        },
        "policies": policies,
    }
    return dict(json_safe(doc))


def write_json(comparison: Comparison, path: Path) -> None:
    path.write_text(json.dumps(report_dict(comparison), indent=2, sort_keys=False) + "\n")


def write_timeline(comparison: Comparison, path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["policy", "seed", *TIMELINE_COLUMNS])
        for r in comparison.results:
            cols = [r.timeline[c] for c in TIMELINE_COLUMNS]
            for row in zip(*cols, strict=True):
                w.writerow(
                    [r.label, r.seed] + ["" if not math.isfinite(v) else f"{v:.6g}" for v in row]
                )


def _fmt(mean: float, spread: float, n: int, spec: str, scale: float = 1.0) -> str:
    if not math.isfinite(mean):
        return "-"
    text = format(mean * scale, spec)
    if n > 1:
        text += f" ±{format(spread * scale, spec)}"
    return text


def table_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    header = [
        "policy",
        "SLO att.",
        "TTFT p50/p99 s",
        "TPOT p50/p99 ms",
        "e2e p95 s",
        "preempt.",
        "GPU-h",
        "replicas",
        "max",
        "scale ev.",
        "pending pod-s",
        "dropped/unfinished",
        "burst recovery s",
    ]
    n = len(comparison.seeds)
    priced = any("cost" in r.summary for r in comparison.results)
    if priced:  # variant contenders run: their cost, as an extra column
        header.append("cost")
    rows = []
    for label, group in by_label(comparison).items():
        a = aggregate(group)
        m, s = a["mean"], a["spread"]
        costs = [float(r.summary["cost"]) for r in group if "cost" in r.summary]
        extra = [f"{sum(costs) / len(costs):.2f}" if costs else "-"] if priced else []
        rows.append(
            [
                label,
                _fmt(m["slo_attainment"], s["slo_attainment"], n, ".1f", 100.0) + "%",
                _fmt(m["ttft_p50"], s["ttft_p50"], n, ".2f")
                + " / "
                + _fmt(m["ttft_p99"], s["ttft_p99"], n, ".2f"),
                _fmt(m["tpot_p50"], s["tpot_p50"], n, ".0f", 1000.0)
                + " / "
                + _fmt(m["tpot_p99"], s["tpot_p99"], n, ".0f", 1000.0),
                _fmt(m["latency_p95"], s["latency_p95"], n, ".2f"),
                _fmt(m["preemptions"], s["preemptions"], n, ".0f"),
                _fmt(m["gpu_hours"], s["gpu_hours"], n, ".1f"),
                _fmt(m["replicas_mean"], s["replicas_mean"], n, ".1f"),
                _fmt(m["replicas_max"], s["replicas_max"], n, ".0f"),
                _fmt(m["scale_events"], s["scale_events"], n, ".0f"),
                _fmt(m["pending_pod_seconds"], s["pending_pod_seconds"], n, ".0f"),
                _fmt(m["dropped"], s["dropped"], n, ".0f")
                + " / "
                + _fmt(m["unfinished"], s["unfinished"], n, ".0f"),
                _recovery(group, _fmt(m["recovery_mean_s"], s["recovery_mean_s"], n, ".0f")),
                *extra,
            ]
        )
    return header, rows


def _recovery(group: Sequence[RunResult], mean: str) -> str:
    """The mean recovery of the bursts that recovered, and how many never did: a mean over
    the recovered ones alone would make a policy that never recovers from the worst burst
    look fast."""
    total = sum(len(r.summary["bursts"]) for r in group)
    never = sum(int(r.summary["bursts_unrecovered"]) for r in group)
    if total == 0:
        return "-"
    if never == total:
        return f"never ({never}/{total})"
    return f"{mean} ({never}/{total} never)" if never else mean


def failures(comparison: Comparison) -> list[str]:
    """One line per policy that left requests unfinished or bursts unrecovered, for under the
    table: these are what a summary of means hides."""
    lines = []
    for label, group in by_label(comparison).items():
        unfinished = sum(int(r.summary["unfinished"]) for r in group)
        dropped = sum(int(r.summary["dropped"]) for r in group)
        cut = sum(int(r.summary.get("cut_by_scale_down", 0)) for r in group)
        never = sum(int(r.summary["bursts_unrecovered"]) for r in group)
        total = sum(len(r.summary["bursts"]) for r in group)
        parts = []
        if unfinished:
            parts.append(f"{unfinished:,} requests still unfinished when the run ended")
        if dropped:
            parts.append(f"{dropped:,} dropped")
        if cut:
            parts.append(f"{cut:,} of them cut by scale-down")
        if never:
            parts.append(f"{never} of {total} bursts never recovered")
        if parts:
            seeds = f" over {len(group)} seeds" if len(group) > 1 else ""
            lines.append(f"{label}: " + ", ".join(parts) + seeds)
    if lines:
        lines.append(
            "(an unfinished request counts as an SLO miss once it has waited past the TTFT or"
            " e2e bound; one still within it is not counted)"
        )
    return lines


def plain_table(comparison: Comparison) -> str:
    header, rows = table_rows(comparison)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    ]
    for r in rows:
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    problems = failures(comparison)
    if problems:
        lines += ["", "Failures:", *(f"  {p}" for p in problems)]
    return "\n".join(lines)


def write_all(comparison: Comparison, out: Path, *, plots: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.json", out / "timeline.csv"]
    write_json(comparison, written[0])
    write_timeline(comparison, written[1])
    if plots:
        from simulations.experiments.plots import write_plots

        written += write_plots(comparison, out)
    return written
