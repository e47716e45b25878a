"""Request streams: Poisson, diurnal, bursts, trace replay, and Prometheus range-query replay
against a real Prometheus."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulations.config.scenario import DATA_DIR, parse_scenario
from simulations.serving import arrivals
from simulations.serving.run import make_workload
from tests.support.fixtures import PrometheusFactory


def rng(seed: int = 1) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_poisson_rate_and_gaps() -> None:
    w = arrivals.poisson(5.0, 2000.0, rng())
    assert len(w) == pytest.approx(10_000, rel=0.04)
    gaps = np.diff(w.times)
    assert gaps.mean() == pytest.approx(0.2, rel=0.04)
    assert np.std(gaps) / gaps.mean() == pytest.approx(1.0, rel=0.05)  # exponential: CV 1
    assert (w.prompt >= 1).all() and (w.generated >= 1).all()


def test_diurnal_follows_the_sinusoid() -> None:
    w = arrivals.diurnal(10.0, 0.8, 1000.0, 1000.0, rng(), step=10.0)
    peak = ((w.times > 200) & (w.times < 300)).sum()  # sin ≈ 1 around t = 250
    trough = ((w.times > 700) & (w.times < 800)).sum()  # sin ≈ -1 around t = 750
    assert peak > 5 * trough


def test_bursts_on_and_off() -> None:
    w = arrivals.bursts(1.0, 50.0, 30.0, 90.0, 600.0, rng())
    starts = arrivals.burst_starts(30.0, 90.0, 600.0)
    assert starts == [90.0, 210.0, 330.0, 450.0, 570.0]
    in_burst = sum(((w.times >= s) & (w.times < s + 30)).sum() for s in starts[:4])
    assert in_burst == pytest.approx(4 * 30 * 50, rel=0.05)


def test_azure_trace_reads_and_replays_with_speedup_and_scale() -> None:
    trace = arrivals.read_trace(DATA_DIR / "azure_llm_2023_code.csv")
    assert len(trace.times) == 8819
    assert trace.times[0] == 0.0 and 3400 < trace.times[-1] < 3500
    assert trace.prompt.mean() == pytest.approx(2048, rel=0.01)
    fast = arrivals.replay(trace, rng(), speedup=2.0)
    assert fast.times[-1] == pytest.approx(trace.times[-1] / 2)
    more = arrivals.replay(trace, rng(), scale=2.5)
    assert len(more) == pytest.approx(2.5 * len(trace.times), rel=0.02)
    fewer = arrivals.replay(trace, rng(), scale=0.3)
    assert len(fewer) == pytest.approx(0.3 * len(trace.times), rel=0.05)
    assert (np.diff(more.times) >= 0).all()


@settings(max_examples=30, deadline=None)
@given(st.floats(0.05, 4.0), st.floats(0.5, 3.0))
def test_replay_keeps_order_and_scales_counts(scale: float, speedup: float) -> None:
    trace = arrivals.Trace(np.linspace(0, 100, 200), np.full(200, 10.0), np.full(200, 5.0))
    w = arrivals.replay(trace, rng(), scale=scale, speedup=speedup)
    assert (np.diff(w.times) >= 0).all()
    assert abs(len(w) - scale * 200) <= 4 * np.sqrt(200) + 1


def test_bad_traces_name_file_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "t.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n1.0,10,2\nsoon,5,5\n")
    with pytest.raises(arrivals.TraceError, match=r"t.csv:3: TIMESTAMP: expected a time"):
        arrivals.read_trace(bad)
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n1.0,-3,2\n")
    with pytest.raises(arrivals.TraceError, match=r"t.csv:2: ContextTokens: expected a token"):
        arrivals.read_trace(bad)
    bad.write_text("TIMESTAMP,Tokens\n1.0,3\n")
    with pytest.raises(arrivals.TraceError, match="missing column ContextTokens"):
        arrivals.read_trace(bad)


def test_prometheus_range_query_replay(prometheus_factory: PrometheusFactory) -> None:
    server = prometheus_factory()
    end = time.time()
    doc = {
        "cluster": {"pools": [{"count": 1, "gpus": 1, "gpuMemory": "80Gi"}]},
        "service": {},
        "workload": {
            "type": "prometheus",
            "url": server.url,
            "query": "vector(4)",
            "start": end - 300,
            "end": end,
            "step": "15s",
        },
    }
    sc = parse_scenario(doc, "p.yaml", Path("."))
    w = make_workload(sc.workload, None, rng())
    # 21 points of 4 requests/s held for 15 s each: 1,260 expected.
    assert len(w) == pytest.approx(21 * 15 * 4, rel=0.1)
    assert w.times[0] >= 0 and w.times[-1] <= 21 * 15
    query = arrivals.prometheus_range_query(server.url)
    two = 'label_replace(vector(1), "a", "x", "", "") or label_replace(vector(2), "a", "y", "", "")'
    with pytest.raises(ValueError, match="wrap it in sum"):
        query(two, end - 60, end, 15.0)
