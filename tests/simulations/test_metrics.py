"""The metrics pipeline against Prometheus itself (promtool evaluates the same samples), and
the scrape/query plumbing of :class:`MetricStore`."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulations.serving.clock import Engine
from simulations.serving.metrics import MetricStore, bucket_quantile, extrapolated_rate
from simulations.serving.replicas import Replica, RequestLog

STEP = 15.0
BOUNDS = (0.5, 1.0, 2.0)

# Series on a 15 s grid from t=0, written as promtool expands them ("_" = no sample).
SERIES: dict[str, Sequence[int | None]] = {
    'c{pod="a"}': [3 + 15 * k for k in range(12)] + [4 + 9 * k for k in range(10)],  # reset
    'c{pod="b"}': [7 * k for k in range(22)],
    'c{pod="c"}': [100 + 2 * k * k for k in range(22)],  # accelerating
    'c{pod="d"}': [None] * 5 + [7 * k for k in range(17)],  # starts late, from zero
    'h_bucket{pod="a",le="0.5"}': [2 * k for k in range(22)],
    'h_bucket{pod="a",le="1"}': [5 * k for k in range(22)],
    'h_bucket{pod="a",le="2"}': [6 * k for k in range(22)],
    'h_bucket{pod="a",le="+Inf"}': [7 * k for k in range(22)],
    'h_bucket{pod="b",le="0.5"}': [1 * k for k in range(22)],
    'h_bucket{pod="b",le="1"}': [1 * k for k in range(22)],
    'h_bucket{pod="b",le="2"}': [4 * k * k for k in range(22)],
    'h_bucket{pod="b",le="+Inf"}': [9 * k * k for k in range(22)],
}


def _samples(name: str, start: float, end: float) -> tuple[list[float], list[float]]:
    times, values = [], []
    for k, v in enumerate(SERIES[name]):
        t = k * STEP
        if v is not None and start < t <= end:
            times.append(t)
            values.append(float(v))
    return times, values


def _our_rate(name: str, at: float, window: float) -> float | None:
    times, values = _samples(name, at - window, at)
    return extrapolated_rate(times, values, at - window, at)


def _our_quantile(q: float, at: float, window: float) -> float:
    summed = []
    for le in ("0.5", "1", "2", "+Inf"):
        total = 0.0
        for pod in ("a", "b"):
            r = _our_rate(f'h_bucket{{pod="{pod}",le="{le}"}}', at, window)
            total += 0.0 if r is None else r
        summed.append(total)
    return bucket_quantile(q, BOUNDS, summed)


def _promtool_value(tmp_path: Path, expr: str, at: float) -> float:
    lines = []
    for name, values in SERIES.items():
        text = " ".join("_" if v is None else f"{v:g}" for v in values)
        lines.append(f"      - series: '{name}'\n        values: '{text}'")
    test = (
        "evaluation_interval: 1s\ntests:\n  - interval: 15s\n    input_series:\n"
        + "\n".join(lines)
        + "\n"
        f"    promql_expr_test:\n      - expr: {expr}\n        eval_time: {at:g}s\n"
        "        exp_samples:\n          - labels: '{}'\n            value: -12345\n"
    )
    path = tmp_path / "t.yml"
    path.write_text(test)
    out = subprocess.run(
        ["promtool", "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    m = re.search(r"got: \{\} (\S+)", out.stdout + out.stderr)
    assert m, out.stdout + out.stderr
    return float(m.group(1))


needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (`make test` installs it)"
)


@needs_promtool
@pytest.mark.parametrize("at", [52.0, 127.0, 187.0, 247.0, 307.0])
def test_rate_matches_prometheus(tmp_path: Path, at: float) -> None:
    rates = [_our_rate(f'c{{pod="{p}"}}', at, 60.0) for p in "abcd"]
    ours = sum(r for r in rates if r is not None)
    theirs = _promtool_value(tmp_path, "sum(rate(c[1m]))", at)
    assert ours == pytest.approx(theirs, rel=1e-9)


@needs_promtool
@pytest.mark.parametrize(("q", "at"), [(0.5, 127.0), (0.9, 187.0), (0.99, 307.0), (0.2, 97.0)])
def test_histogram_quantile_matches_prometheus(tmp_path: Path, q: float, at: float) -> None:
    ours = _our_quantile(q, at, 60.0)
    theirs = _promtool_value(
        tmp_path, f"histogram_quantile({q}, sum by (le) (rate(h_bucket[1m])))", at
    )
    assert ours == pytest.approx(theirs, rel=1e-9)


def test_rate_needs_two_samples_and_extrapolates_within_limits() -> None:
    assert extrapolated_rate([10.0], [5.0], 0.0, 60.0) is None
    # A counter from 0 at 1/s sampled every 15 s over (0, 60]: exactly 1/s.
    one = extrapolated_rate([15.0, 30.0, 45.0, 60.0], [15, 30, 45, 60], 0.0, 60.0)
    assert one == pytest.approx(1.0)
    # Samples far from the range ends extrapolate by half an interval only.
    r = extrapolated_rate([20.0, 30.0], [100.0, 110.0], 0.0, 60.0)
    assert r == pytest.approx(10.0 * (10 + 5 + 5) / 10 / 60)
    # A counter that starts inside the range is not extrapolated below zero.
    r = extrapolated_rate([45.0, 60.0, 75.0, 90.0], [0.0, 1.0, 2.0, 3.0], 37.0, 97.0)
    assert r == pytest.approx(3.0 * (45 + 0 + 7) / 45 / 60)


def test_bucket_quantile_edges() -> None:
    assert math.isnan(bucket_quantile(0.5, BOUNDS, [0, 0, 0, 0]))
    assert bucket_quantile(0.5, BOUNDS, [10, 10, 10, 10]) == 0.25  # first bucket starts at 0
    assert bucket_quantile(0.99, BOUNDS, [0, 0, 0, 10]) == 2.0  # +Inf bucket: highest bound
    assert bucket_quantile(-0.1, BOUNDS, [1, 1, 1, 1]) == -math.inf
    assert bucket_quantile(1.5, BOUNDS, [1, 1, 1, 1]) == math.inf


@given(st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=4), st.floats(0, 1))
def test_bucket_quantile_stays_within_bounds(counts: list[float], q: float) -> None:
    cumulative = [sum(counts[: k + 1]) for k in range(len(counts))]
    cumulative += [cumulative[-1]] * (4 - len(cumulative))
    value = bucket_quantile(q, BOUNDS, cumulative)
    assert math.isnan(value) or 0.0 <= value <= BOUNDS[-1]


def _replica(engine: Engine, log: RequestLog, rid: int) -> Replica:
    return Replica(rid, engine, log, max_batch=1, buckets=BOUNDS)


def test_store_scrapes_replicas_and_answers_queries() -> None:
    import numpy as np

    engine = Engine()
    n = 40
    log = RequestLog(np.arange(n, dtype=np.float64) * 3.0, np.full(n, 0.7))
    a, b = _replica(engine, log, 0), _replica(engine, log, 1)
    store = MetricStore(BOUNDS)

    def arrive(i: int) -> None:
        (a if i % 2 == 0 else b).admit(i)

    for i in range(n):
        engine.schedule_at(log.arrival[i], arrive, i)

    def scrape(_: None) -> None:
        store.scrape(engine.now, [a, b])
        engine.schedule(15.0, scrape, None, 2)

    engine.schedule(0.0, scrape, None, 2)
    engine.run(until=121.0)
    # One request every 3 s, all served in 0.7 s: rate 1/3 per s, p50 inside (0.5, 1].
    assert store.rate_sum(120.0, "arrived", 60.0) == pytest.approx(1 / 3, rel=0.1)
    assert store.rate_sum(120.0, "completed", 60.0) == pytest.approx(1 / 3, rel=0.1)
    q = store.quantile(120.0, 0.5, 60.0)
    assert q is not None and 0.5 < q <= 1.0
    assert store.gauge_sum(120.0, "waiting") == 0.0
    store.end(1, 120.0)
    assert set(store.pod_gauge(120.0, "waiting")) == {0}
    assert store.gauge_sum(0.0, "running") is not None
    assert MetricStore(BOUNDS).gauge_sum(10.0, "waiting") is None
