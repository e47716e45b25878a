"""``benchmarks/bench_fidelity.py``: its data files read cleanly, bad rows name their field, a
single request reproduces the closed form the engine tests pin down, and the simulated figures
follow ``benchmark_serving.py``'s per-request definitions."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.profiles import load_profile
from policies.stepmodel import step_time

ROOT = Path(__file__).resolve().parents[2]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "bench_fidelity", ROOT / "benchmarks/bench_fidelity.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_fidelity"] = module
    spec.loader.exec_module(module)
    return module


bench = _bench()


def test_the_shipped_data_reads_and_names_shipped_profiles() -> None:
    points = bench.read_points(bench.DATA)
    assert points
    for p in points:
        assert load_profile(p.profile).source and p.source and p.published


def test_one_request_alone_is_the_closed_form() -> None:
    point = bench.Point("one", "llama-3.1-8b-h100-tp1", "batch", 1, 1, 1000, 11, {}, "")
    prof = load_profile(point.profile)
    got = bench.simulate(point, True)
    ttft = prof.alpha0 + prof.alpha1 * 1000 + step_time(prof, 1000, 0) + prof.alpha2
    assert got["ttft_mean_ms"] == pytest.approx(ttft * 1e3)
    assert got["itl_mean_ms"] == pytest.approx((step_time(prof, 0, 1) + prof.alpha2) * 1e3)
    assert got["e2e_mean_ms"] == pytest.approx(
        (ttft + 10 * (step_time(prof, 0, 1) + prof.alpha2)) * 1e3
    )


def test_a_closed_loop_keeps_its_clients_busy() -> None:
    point = bench.Point("c", "llama-3.1-8b-h100-tp1", "concurrency", 4, 40, 200, 20, {}, "")
    alone = bench.Point("c1", "llama-3.1-8b-h100-tp1", "concurrency", 1, 40, 200, 20, {}, "")
    # four clients share each step, so each waits longer per token than one client alone
    assert bench.simulate(point, False)["itl_mean_ms"] > bench.simulate(alone, False)["itl_mean_ms"]


def test_bad_rows_name_file_line_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "p.csv"
    head = "id,profile,load_kind,load,requests,prompt_tokens,output_tokens,ttft_mean_ms,source\n"
    bad.write_text(head + "x,llama-3.1-8b-h100-tp1,rate,fast,10,100,10,5,s\n")
    assert bench.main(["--data", str(bad)]) == 1
    assert f"{bad}:2: load: expected a number, got 'fast'" in capsys.readouterr().err
    bad.write_text(head + "x,llama-3.1-8b-h100-tp1,sometimes,1,10,100,10,5,s\n")
    assert bench.main(["--data", str(bad)]) == 1
    assert "load_kind: expected one of batch, burst, rate, concurrency" in capsys.readouterr().err


def test_per_request_lengths_are_the_points_requests() -> None:
    points = [p for p in bench.read_points(bench.DATA) if p.lengths]
    assert len(points) >= 8
    for p in points:
        assert len(p.lengths) == p.requests
        assert all(prompt >= 1 and out >= 0 for prompt, out in p.lengths)


def _write(tmp_path: Path, rows: str, lengths: str) -> Path:
    data = tmp_path / "p.csv"
    head = "id,profile,load_kind,load,requests,prompt_tokens,output_tokens,ttft_mean_ms,source\n"
    data.write_text(head + rows)
    (tmp_path / "p_requests.csv").write_text("id,prompt_tokens,output_tokens\n" + lengths)
    return data


def test_a_point_without_lengths_needs_one_row_per_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _write(tmp_path, "b,llama-3.1-8b-h100-tp1,burst,3,3,,,50,s\n", "b,10,5\nb,20,0\n")
    assert bench.main(["--data", str(data)]) == 1
    assert "must hold 3 rows for 'b'; it holds 2" in capsys.readouterr().err
    data = _write(tmp_path, "b,llama-3.1-8b-h100-tp1,burst,1,1,,,50,s\n", "b,0,5\n")
    assert bench.main(["--data", str(data)]) == 1
    assert "p_requests.csv:2: prompt_tokens: expected an integer >= 1, got '0'" in (
        capsys.readouterr().err
    )


def test_a_burst_replays_each_request_and_counts_unseen_output_as_ttft_zero(
    tmp_path: Path,
) -> None:
    data = _write(tmp_path, "b,llama-3.1-8b-h100-tp1,burst,2,2,,,50,s\n", "b,100,11\nb,100,0\n")
    (point,) = bench.read_points(data)
    assert point.lengths == ((100, 11), (100, 0))
    prof = load_profile(point.profile)
    got = bench.simulate(point, False)
    # both prompts share the first step; the second request's token is counted with TTFT 0
    first = step_time(prof, 200, 0)
    assert got["ttft_mean_ms"] == pytest.approx(first / 2 * 1e3)
    # TPOT only over the request of more than one token: its ten later tokens, one at a time
    # (the second request finished with its first token, so it never decodes)
    assert got["tpot_mean_ms"] == pytest.approx(step_time(prof, 0, 1) * 1e3)


def test_per_token_targets_take_itl_where_published_else_tpot() -> None:
    assert bench.per_token("itl_mean_ms", {"itl_mean_ms": 1.0}) == "per_token_mean"
    assert bench.per_token("tpot_mean_ms", {"itl_mean_ms": 1.0, "tpot_mean_ms": 1.0}) is None
    assert bench.per_token("tpot_p99_ms", {"tpot_p99_ms": 1.0}) == "per_token_p99"
    assert bench.per_token("ttft_p99_ms", {}) == "ttft_p99_ms"
    assert bench.per_token("e2e_mean_ms", {}) is None


@given(
    st.lists(
        st.tuples(st.floats(0.0, 10.0), st.floats(0.0, 100.0), st.integers(0, 50)),
        min_size=1,
        max_size=30,
    )
)
def test_client_figures_are_benchmark_serving_definitions(
    rows: list[tuple[float, float, int]],
) -> None:
    ttft = np.array([t for t, _, _ in rows])
    e2e = ttft + np.array([d for _, d, _ in rows])
    tokens = np.array([n for _, _, n in rows])
    got = bench.client_figures(ttft, e2e, tokens)
    assert got["ttft_mean_ms"] == pytest.approx(sum(ttft) / len(rows) * 1e3)
    assert got["e2e_p99_ms"] <= max(e2e) * 1e3 + 1e-9
    tpots = [(e - t) / (n - 1) for t, e, n in zip(ttft, e2e, tokens, strict=True) if n > 1]
    if tpots:
        assert got["tpot_mean_ms"] == pytest.approx(sum(tpots) / len(tpots) * 1e3)
        assert min(tpots) * 1e3 - 1e-9 <= got["tpot_p99_ms"] <= max(tpots) * 1e3 + 1e-9
    else:
        assert "tpot_mean_ms" not in got


@given(st.floats(0.5, 50.0), st.integers(1, 400), st.integers(0, 2**31))
def test_rate_arrivals_span_exactly_the_stage(rate: float, n: int, seed: int) -> None:
    # inference-perf's constant load: n exponential gaps scaled to last n / rate seconds
    times = bench.rate_arrivals(rate, n, seed)
    assert len(times) == n
    assert np.all(np.diff(times) >= 0) and times[0] > 0
    assert times[-1] == pytest.approx(n / rate)


@given(
    st.lists(st.tuples(st.floats(0.0, 5.0), st.floats(0.0, 60.0)), min_size=1, max_size=40),
    st.integers(2, 2000),
)
def test_derived_tpot_is_the_mean_tpot_when_every_output_is_the_same(
    rows: list[tuple[float, float]], output: int
) -> None:
    ttft = np.array([t for t, _ in rows])
    e2e = ttft + np.array([d for _, d in rows])
    figures = bench.client_figures(ttft, e2e, np.full(len(rows), output))
    point = bench.Point(
        "d",
        "llama-3.1-8b-h100-tp1",
        "rate",
        1,
        len(rows),
        100,
        output,
        {k: figures[k] for k in ("ttft_mean_ms", "e2e_mean_ms")},
        "",
    )
    assert bench.derived(point)["tpot_mean_ms"] == pytest.approx(figures["tpot_mean_ms"])


def test_tpot_is_not_derived_where_it_would_not_be_exact() -> None:
    pub = {"ttft_mean_ms": 20.0, "e2e_mean_ms": 2000.0}
    base = bench.Point("d", "llama-3.1-8b-h100-tp1", "rate", 1, 2, 100, 11, pub, "")
    assert bench.derived(base) == {"tpot_mean_ms": pytest.approx(198.0)}
    uneven = dataclasses.replace(base, lengths=((100, 11), (100, 5)))
    published = dataclasses.replace(base, published={**pub, "tpot_mean_ms": 1.0})
    batch = dataclasses.replace(base, kind="batch")
    one_token = dataclasses.replace(base, output=1)
    no_e2e = dataclasses.replace(base, published={"ttft_mean_ms": 20.0})
    for point in (uneven, published, batch, one_token, no_e2e):
        assert bench.derived(point) == {}


def test_a_points_budgets_reach_the_engine() -> None:
    both = bench.Point("b", "llama-3.1-8b-h100-tp1", "burst", 2, 2, 100, 5, {}, "")
    one_seat = dataclasses.replace(both, max_num_seqs=1)
    prof = load_profile(both.profile)
    shared = bench.simulate(both, False)
    serial = bench.simulate(one_seat, False)
    # with one seat the second request starts once the first has finished all its tokens
    alone = step_time(prof, 100, 0) + 4 * step_time(prof, 0, 1)
    assert serial["ttft_mean_ms"] == pytest.approx((step_time(prof, 100, 0) + alone / 2) * 1e3)
    assert serial["ttft_mean_ms"] > shared["ttft_mean_ms"]
    # a token budget below the prompt splits its prefill into chunks
    chunked = dataclasses.replace(both, requests=1, load=1, max_num_batched_tokens=64)
    first = step_time(prof, 64, 0) + step_time(prof, 36, 0)
    assert bench.simulate(chunked, False)["ttft_mean_ms"] == pytest.approx(first * 1e3)


def test_engine_versions_and_budgets_are_read_and_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "p.csv"
    head = (
        "id,profile,engine_version,load_kind,load,requests,prompt_tokens,output_tokens,"
        "max_num_seqs,max_num_batched_tokens,ttft_mean_ms,e2e_mean_ms,source\n"
    )
    data.write_text(head + "r,llama-3.1-8b-h100-tp1,v1,rate,2,20,100,10,128,1024,30,200,s\n")
    (point,) = bench.read_points(data)
    assert (point.engine_version, point.max_num_seqs, point.max_num_batched_tokens) == (
        "v1",
        128,
        1024,
    )
    assert bench.main(["--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "vLLM V1" in out and "tpot_mean_ms*" in out and "targets, vLLM V1" in out
    data.write_text(head + "r,llama-3.1-8b-h100-tp1,v2,rate,2,20,100,10,,,30,200,s\n")
    assert bench.main(["--data", str(data)]) == 1
    assert f"{data}:2: engine_version: expected one of v0, v1 or empty, got 'v2'" in (
        capsys.readouterr().err
    )
    data.write_text(head + "r,llama-3.1-8b-h100-tp1,v1,rate,2,20,100,10,0,,30,200,s\n")
    assert bench.main(["--data", str(data)]) == 1
    assert "max_num_seqs: expected a number > 0, got '0'" in capsys.readouterr().err


def test_the_shipped_v1_points_cover_the_targets_figures() -> None:
    v1 = [p for p in bench.read_points(bench.DATA) if p.engine_version == "v1"]
    assert len(v1) >= 8
    for p in v1:
        # inference-perf stages of 600 or 1200 s at a constant rate
        assert p.kind == "rate" and p.requests / p.load in (600, 1200)
        assert {"ttft_mean_ms", "ttft_p99_ms"} <= p.published.keys()
        assert "tpot_mean_ms" in bench.derived(p)
    # light load, the heaviest rate of the runs, and the longest prompts and outputs
    assert min(p.load for p in v1) <= 5 and max(p.load for p in v1) >= 20
    assert max(p.prompt for p in v1) > 1000 and max(p.output for p in v1) > 1000


def test_the_shipped_v1_profile_is_what_the_fit_gives_on_its_fit_points() -> None:
    base = load_profile(bench.V1_BASE)
    shipped = load_profile(bench.V1_PROFILE)
    v1 = [p for p in bench.read_points(bench.DATA) if p.engine_version == "v1"]
    train = [p for p in v1 if bench.is_v1_fit_point(p)]
    held = [p for p in v1 if not bench.is_v1_fit_point(p)]
    # fitted on some points, validated on at least the 8 others, long context among them
    assert len(train) == 4 and len(held) >= 8
    assert {p.max_num_batched_tokens for p in train} == set(bench.FIT_BUDGETS)
    assert max(p.output for p in held) > 1000
    fit = bench.fit_v1(train, base).profile
    # the betas of the 0.8.4 fit stay; beta3 is the KV read at HBM bandwidth, not fitted
    assert (shipped.beta0, shipped.beta1, shipped.beta2) == (base.beta0, base.beta1, base.beta2)
    assert shipped.beta3 == pytest.approx(131072 / 3.35e12, rel=1e-3)
    # the file holds the fit, rounded
    got = (shipped.beta3, shipped.alpha0, shipped.alpha1, shipped.alpha2)
    assert got == pytest.approx((fit.beta3, fit.alpha0, fit.alpha1, fit.alpha2), rel=1e-3)
    assert shipped.alpha2 < base.alpha2  # vLLM 0.15.1 spends less per token than 0.8.4's fit


def test_simulate_runs_a_point_on_another_profile() -> None:
    point = bench.Point("one", bench.V1_BASE, "batch", 1, 1, 1000, 11, {}, "")
    v1 = load_profile(bench.V1_PROFILE)
    got = bench.simulate(point, True, v1)
    # the prefill step decodes nothing, so beta3 has no context to read yet
    ttft = v1.alpha0 + v1.alpha1 * 1000 + step_time(v1, 1000, 0) + v1.alpha2
    assert got["ttft_mean_ms"] == pytest.approx(ttft * 1e3)
    assert got["ttft_mean_ms"] != pytest.approx(bench.simulate(point, True)["ttft_mean_ms"])
    # each decode step reads the whole context so far
    assert got["itl_mean_ms"] > (step_time(v1, 0, 1, 1000) + v1.alpha2) * 1e3


def test_v1_points_also_run_on_the_v1_profile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "p.csv"
    head = (
        "id,profile,engine_version,load_kind,load,requests,prompt_tokens,output_tokens,"
        "max_num_seqs,max_num_batched_tokens,ttft_mean_ms,e2e_mean_ms,source\n"
    )
    rows = (
        "a-2rps,llama-3.1-8b-h100-tp1,v1,rate,2,20,100,10,128,1024,30,200,s\n"
        "b-2rps,llama-3.1-8b-h100-tp1,v1,rate,2,20,100,10,128,2048,30,200,s\n"
    )
    data.write_text(head + rows)
    assert bench.main(["--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert f"{bench.V1_PROFILE} profile" in out and "a-2rps*" in out and "b-2rps (" in out
    assert "vLLM V1 fit set" in out and "vLLM V1 held out" in out
    assert bench.main(["--data", str(data), "--v1-profile", "nope"]) == 1
    assert "nope: no such profile" in capsys.readouterr().err


def test_fitting_needs_rate_points_with_mean_ttft_and_tpot() -> None:
    from simulations.experiments.calibrate import CalibrationError

    batch = bench.Point("x", bench.V1_BASE, "batch", 8, 8, 32, 128, {"e2e_mean_ms": 900.0}, "")
    with pytest.raises(CalibrationError, match="x: fitting needs a rate point"):
        bench.fit_v1([batch], load_profile(bench.V1_BASE))
