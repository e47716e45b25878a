"""``timeline.png`` and ``tradeoff.png``: the comparison drawn for people.

Choices that make them readable: gpuscale policies are drawn solid and thick, baselines dashed
and thin, with one colour per policy in every panel and one legend for all; desired replicas
(the decision) and Ready replicas (what served) get a panel each; a latency quantile is drawn
through the short idle intervals of a burst (an idle interval has no quantile, and a line broken
at each one is unreadable) but broken at long idle stretches; TPOT is in milliseconds; every
bound is a labelled line; axes are scaled to the data. Only :func:`write_plots` imports
matplotlib, so the controller never loads it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simulations.experiments.compare import Comparison, RunResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes

GPUSCALE_COLOURS = ("#1f5fbf", "#2ca02c", "#9467bd", "#17becf", "#0b3d2e", "#7f3fbf")
BASELINE_COLOURS = ("#d62728", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")


def _style(runs: Sequence[RunResult]) -> dict[str, dict[str, Any]]:
    """Line style per policy label: gpuscale solid and thick, baselines dashed and thin."""
    styles: dict[str, dict[str, Any]] = {}
    ours = theirs = 0
    for r in runs:
        if r.label in styles:
            continue
        if r.kind == "gpuscale":
            colour = GPUSCALE_COLOURS[ours % len(GPUSCALE_COLOURS)]
            styles[r.label] = {"color": colour, "lw": 1.8, "ls": "-", "marker": "o"}
            ours += 1
        else:
            colour = BASELINE_COLOURS[theirs % len(BASELINE_COLOURS)]
            styles[r.label] = {"color": colour, "lw": 1.1, "ls": (0, (4, 2)), "marker": "s"}
            theirs += 1
    return styles


def legend_label(r: RunResult) -> str:
    return f"{r.label} (gpuscale)" if r.kind == "gpuscale" else f"{r.label} (baseline)"


MAX_JOINED_GAP_S = 60.0
"""Idle stretches up to this long are bridged by a latency line; longer ones break it."""


def through_gaps(t: np.ndarray, values: Sequence[float], scale: float) -> tuple[Any, Any]:
    """The finite points, with a break only where the gap between two is longer than
    :data:`MAX_JOINED_GAP_S`: a burst's short lulls do not cut its line into dashes, and a long
    idle stretch is not drawn as a slope nobody measured. ``t`` is in minutes."""
    v = np.asarray(values, dtype=float) * scale
    keep = np.isfinite(v)
    tk, vk = t[keep], v[keep]
    if len(tk) < 2:
        return tk, vk
    cut = np.nonzero(np.diff(tk) * 60.0 > MAX_JOINED_GAP_S)[0] + 1
    return np.insert(tk, cut, np.nan), np.insert(vk, cut, np.nan)


def _bound_line(ax: Axes, value: float, text: str) -> None:
    ax.axhline(value, color="black", ls=":", lw=1.2, zorder=1)
    ax.annotate(
        text,
        (1.0, value),
        xycoords=("axes fraction", "data"),
        xytext=(-4, 3),
        textcoords="offset points",
        ha="right",
        va="bottom",
        fontsize=8,
        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:g} ms" if seconds < 1 else f"{seconds:g} s"


def write_plots(comparison: Comparison, out: Path) -> list[Path]:
    """Write ``timeline.png`` (first seed) and ``tradeoff.png`` (all seeds) into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return [_timeline(comparison, out / "timeline.png", plt), _tradeoff(comparison, out, plt)]


def _timeline(comparison: Comparison, path: Path, plt: Any) -> Path:
    from matplotlib.ticker import FuncFormatter, LogLocator

    first = comparison.seeds[0]
    runs = [r for r in comparison.results if r.seed == first]
    styles = _style(runs)
    slo = comparison.scenario.service.slo
    latency = [("ttft_p95", "p95 TTFT (s)", slo.ttft, 1.0, "TTFT"),
               ("tpot_p95", "p95 TPOT (ms)", slo.tpot, 1000.0, "TPOT")]  # fmt: skip
    if slo.e2e is not None or comparison.scenario.service.engine != "vllm":
        latency.append(("latency_p95", "p95 e2e latency (s)", slo.e2e, 1.0, "e2e"))
    rows = 4 + len(latency)
    fig, axes = plt.subplots(
        rows, 1, figsize=(12, 2.1 * rows + 1.2), sharex=True, constrained_layout=True
    )
    t0 = np.asarray(runs[0].timeline["time"], dtype=float) / 60.0
    axes[0].fill_between(t0, runs[0].timeline["arrivals_per_s"], color="0.75", lw=0)
    axes[0].plot(t0, runs[0].timeline["arrivals_per_s"], color="0.3", lw=0.8)
    axes[0].set_ylabel("arrivals / s")
    axes[0].set_title(f"{comparison.scenario.name} (seed {first}): SLO {slo.describe()}")
    kv_top = 0.0
    for r in runs:
        st = dict(styles[r.label])
        st.pop("marker")
        t = np.asarray(r.timeline["time"], dtype=float) / 60.0
        axes[1].step(t, r.timeline["desired"], where="post", label=legend_label(r), **st)
        axes[2].step(t, r.timeline["ready"], where="post", **st)
        kv = np.asarray(r.timeline["kv_cache_usage"], dtype=float) * 100.0
        if np.isfinite(kv).any():
            kv_top = max(kv_top, float(np.nanmax(kv)))
        axes[3].plot(*through_gaps(t, r.timeline["kv_cache_usage"], 100.0), **st)
        for ax, (key, _, _, scale, _) in zip(axes[4:], latency, strict=True):
            ax.plot(*through_gaps(t, r.timeline[key], scale), **st)
    axes[1].set_ylabel("desired replicas")
    axes[2].set_ylabel("Ready replicas")
    axes[3].set_ylabel("KV cache use (%)")
    axes[3].set_ylim(0, max(kv_top * 1.15, 1.0))
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    for ax, (_, label, bound, scale, name) in zip(axes[4:], latency, strict=True):
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(
            LogLocator(base=10, subs=(1.0, 2.0, 5.0) if scale > 1 else (1.0,))
        )
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.set_ylabel(label)
        if bound is not None:
            _bound_line(ax, bound * scale, f"SLO: {name} ≤ {_ms(bound)}")
    for ax in axes[1:]:
        ax.grid(alpha=0.25)
    axes[-1].set_xlabel(
        f"minutes (latency lines bridge idle gaps up to {MAX_JOINED_GAP_S:g} s; longer ones break)"
    )
    axes[1].legend(
        loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, title="policy"
    )
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


LABEL_OFFSETS = ((7, 5), (7, -13), (-7, 5), (-7, -13), (7, 17), (7, -25), (-7, 17), (-7, -25))
"""Where a point's name may go, in points from it, tried in turn."""


def place_labels(ax: Axes, points: Sequence[tuple[str, float, float]]) -> None:
    """Name each point beside it where the name overlaps no name already placed (close points,
    such as two baselines at the same cost, would otherwise print on top of each other)."""
    placed: list[tuple[float, float, float, float]] = []
    scale = ax.figure.dpi / 72.0
    for label, x, y in points:
        px, py = ax.transData.transform((x, y))
        width, height = 6.0 * len(label) * scale, 11.0 * scale
        box = (px, py, px, py)
        chosen = LABEL_OFFSETS[-1]
        for dx, dy in LABEL_OFFSETS:
            left = px + dx * scale - (width if dx < 0 else 0.0)
            bottom = py + dy * scale
            box = (left, bottom, left + width, bottom + height)
            if not any(_overlap(box, other) for other in placed):
                chosen = (dx, dy)
                break
        placed.append(box)
        ax.annotate(
            label,
            (x, y),
            textcoords="offset points",
            xytext=chosen,
            ha="right" if chosen[0] < 0 else "left",
            fontsize=8,
        )


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _tradeoff(comparison: Comparison, out: Path, plt: Any) -> Path:
    from matplotlib.ticker import PercentFormatter

    from simulations.experiments.report import aggregate, by_label

    slo = comparison.scenario.service.slo
    groups = by_label(comparison)
    styles = _style([g[0] for g in groups.values()])
    fig, ax = plt.subplots(figsize=(8.5, 5.2), constrained_layout=True)
    points: list[tuple[str, float, float]] = []
    for label, group in groups.items():
        agg = aggregate(group)
        x, y = agg["mean"]["gpu_hours"], agg["mean"]["slo_attainment"] * 100.0
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        st = styles[label]
        ours = group[0].kind == "gpuscale"
        ax.errorbar(
            x,
            y,
            xerr=agg["spread"]["gpu_hours"],
            yerr=agg["spread"]["slo_attainment"] * 100.0,
            fmt=st["marker"],
            ms=9 if ours else 7,
            color=st["color"],
            mfc=st["color"] if ours else "white",
            mew=1.6,
            capsize=3,
            label=legend_label(group[0]),
        )
        points.append((label, x, y))
    fig.canvas.draw()
    place_labels(ax, points)
    target = slo.attainment * 100.0
    ax.axhline(target, color="black", ls=":", lw=1.2, label=f"SLO target: {target:g}% of requests")
    ax.set_xlabel("GPU-hours (lower is cheaper)")
    ax.set_ylabel("requests meeting the SLO")
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    ax.set_title(f"SLO attainment vs. cost ({slo.describe().split(' for ')[0]})")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    path = out / "tradeoff.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
