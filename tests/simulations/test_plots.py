"""The plots: rendered from a real (short) run, non-trivial, and drawn so that a reader can
tell gpuscale policies from baselines and read latency lines across a burst's lulls."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from gpuscale.cli import main
from simulations.experiments.compare import RunResult
from simulations.experiments.plots import MAX_JOINED_GAP_S, _style, legend_label, through_gaps

ROOT = Path(__file__).resolve().parents[2]


def test_plots_are_written_and_not_blank(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import matplotlib.image

    monkeypatch.chdir(ROOT)
    out = tmp_path / "r"
    args = ["simulate", "--duration", "4m", "--baseline", "hpa", "--out", str(out)]
    assert main([*args, "--policy", "policies/examples/llm-chat-vllm.yaml"]) == 0
    capsys.readouterr()
    for name, min_height in (("timeline.png", 1000), ("tradeoff.png", 400)):
        path = out / name
        assert path.stat().st_size > 20_000, name
        pixels = matplotlib.image.imread(path)
        assert pixels.shape[0] >= min_height and pixels.shape[1] >= 800, name
        colours = np.unique(pixels[..., :3].reshape(-1, 3).round(2), axis=0)
        assert len(colours) > 50, f"{name} looks blank"


def _run(label: str, kind: str) -> RunResult:
    return RunResult(label, kind, 1, {}, {})


def test_gpuscale_policies_are_drawn_unlike_baselines() -> None:
    runs = [_run("a", "gpuscale"), _run("b", "gpuscale"), _run("hpa", "hpa"), _run("kpa", "kpa")]
    style = _style(runs)
    assert style["a"]["ls"] == style["b"]["ls"] == "-"
    assert style["hpa"]["ls"] != "-" and style["kpa"]["ls"] != "-"
    assert style["a"]["lw"] > style["hpa"]["lw"]
    assert len({s["color"] for s in style.values()}) == 4
    assert legend_label(runs[0]) == "a (gpuscale)" and legend_label(runs[2]) == "hpa (baseline)"


def test_latency_lines_bridge_short_lulls_and_break_at_long_idle_stretches() -> None:
    step = 10.0  # seconds between timeline rows
    minutes = np.arange(20) * step / 60.0
    values = [0.2] * 20
    values[3] = values[4] = math.nan  # 30 s lull inside a burst: bridged
    long_gap = int(MAX_JOINED_GAP_S / step) + 2
    for i in range(8, 8 + long_gap):  # a long idle stretch: broken
        values[i] = math.nan
    t, v = through_gaps(minutes, values, 1000.0)
    breaks = np.isnan(v)
    assert breaks.sum() == 1
    assert np.nanmax(v) == pytest.approx(200.0)  # scaled to milliseconds
    before = t[: int(np.argmax(breaks))]
    assert (np.diff(before) * 60.0).max() == pytest.approx(30.0)


def test_names_of_close_points_do_not_overlap() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from simulations.experiments.plots import place_labels

    fig, ax = plt.subplots(figsize=(6, 4))
    points = [("hpa", 1.17, 41.7), ("keda", 1.18, 41.7), ("kpa", 1.19, 41.8), ("far", 3.0, 60.0)]
    ax.plot([p[1] for p in points], [p[2] for p in points], "o")
    fig.canvas.draw()
    place_labels(ax, points)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert [t.get_text() for t in ax.texts] == ["hpa", "keda", "kpa", "far"]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b)
    plt.close(fig)
