"""``gpuscale simulate calibrate``: least-squares fits from steps, load levels and Prometheus."""

from __future__ import annotations

import dataclasses
import http.server
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuscale.cli import main
from policies.profiles import load_profile
from policies.stepmodel import EngineLimits, StepProfile, TokenMix, steady_state, step_time
from simulations.experiments.calibrate import (
    CONTEXT_FITTED,
    CalibrationError,
    Level,
    fit_alphas,
    fit_levels,
    read_steps,
)
from simulations.serving.clock import Engine
from simulations.serving.vllm import BatchingReplica, EngineConfig, ServingLog
from tests.support.fixtures import PrometheusFactory

SHIPPED = load_profile("llama-3.1-8b-h100-tp1")
TRUE = dataclasses.replace(SHIPPED, alpha0=0.0, alpha1=0.0, alpha2=0.0)
"""The shipped H100 steps without the overheads outside them."""


def write_steps(path: Path, n: int = 400, noise: float = 0.02, seed: int = 3) -> None:
    rng = np.random.default_rng(seed)
    lines = ["prefill_tokens,decode_seqs,step_seconds"]
    for _ in range(n):
        p = 0 if rng.random() < 2 / 3 else int(rng.integers(1, 2048))
        d = int(rng.integers(0 if p else 1, 256))
        t = step_time(TRUE, p, d) * (1 + noise * rng.standard_normal())
        lines.append(f"{p},{d},{t:.9f}")
    path.write_text("\n".join(lines) + "\n")


def test_steps_fit_recovers_the_coefficients(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    steps = tmp_path / "steps.csv"
    write_steps(steps)
    out = tmp_path / "mine.yaml"
    code = main(
        [
            "simulate", "calibrate", "--steps", str(steps), "--name", "mine", "--out", str(out),
            "--gpu-memory", "80Gi", "--weights", "16060522496", "--kv-bytes-per-token", "131072",
        ]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0
    assert "mine: fitted from steps.csv (engine steps)" in text and "mean relative error" in text
    fitted = load_profile(str(out))
    assert fitted.beta0 == pytest.approx(TRUE.beta0, rel=0.05)
    assert fitted.beta1 == pytest.approx(TRUE.beta1, rel=0.05)
    assert fitted.beta2 == pytest.approx(TRUE.beta2, rel=0.1)
    assert "fitted by gpuscale simulate calibrate from steps.csv" in fitted.source
    assert (fitted.gpu_memory_bytes, fitted.kv_bytes_per_token) == (80 * 2**30, 131072)
    assert (tmp_path / "mine-fit.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_measurements_exit_1_naming_file_line_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("prefill_tokens,decode_seqs,step_seconds\n10,2,0.01\n5,x,0.02\n")
    assert main(["simulate", "calibrate", "--steps", str(bad), "--name", "b"]) == 1
    assert f"{bad}:3: decode_seqs: expected a number, got 'x'" in capsys.readouterr().err
    bad.write_text("prefill,decode_seqs\n1,2\n")
    assert main(["simulate", "calibrate", "--steps", str(bad), "--name", "b"]) == 1
    assert "missing column(s) prefill_tokens, step_seconds" in capsys.readouterr().err
    bad.write_text("prefill_tokens,decode_seqs,step_seconds\n" + "100,4,0.01\n" * 10)
    with pytest.raises(CalibrationError, match="do not vary enough"):
        from simulations.experiments.calibrate import fit_steps

        fit_steps(read_steps(bad), "b")
    assert main(["simulate", "calibrate", "--name", "b"]) == 1
    assert "exactly one of --steps, --levels, --prometheus" in capsys.readouterr().err
    assert main(["simulate", "calibrate", "--steps", str(bad), "--name", "Bad Name"]) == 1
    assert "--name: expected lower-case" in capsys.readouterr().err


def load_test(
    rates: list[float],
    seconds: float = 600.0,
    profile: StepProfile = TRUE,
    prompts: tuple[int, int] = (200, 1800),
) -> list[tuple[ServingLog, BatchingReplica]]:
    """The simulated engine (the H100 profile's steps) under Poisson load at each rate."""
    out = []
    for k, rate in enumerate(rates):
        rng = np.random.default_rng(k)
        n = int(rate * seconds)
        arrival = np.cumsum(rng.exponential(1 / rate, n))
        prompt = rng.integers(*prompts, n).astype(float)
        gen = rng.integers(20, 400, n).astype(float)
        log = ServingLog(arrival, prompt, gen)
        engine = Engine()
        r = BatchingReplica(0, engine, log, EngineConfig(profile, EngineLimits(40_000)))
        engine.feed(log.arrival, r.admit)
        engine.run()
        out.append((log, r))
    return out


def level_of(rate: float, log: ServingLog, r: BatchingReplica) -> Level:
    return Level(
        rate,
        r.prompt_tokens / r.completed,
        r.generation_tokens / r.completed,
        r.ttft.sum / r.ttft.count,
        r.itl.sum / r.itl.count,
    )


RATES = [0.5, 2.0, 4.0, 6.0]


def test_load_levels_fit_predicts_the_engine_it_was_measured_on() -> None:
    runs = load_test(RATES)
    levels = [level_of(rate, *run) for rate, run in zip(RATES, runs, strict=True)]
    fit = fit_levels(levels, EngineLimits(40_000), "fitted")
    # the fluid model fits the engine's mean TTFT and inter-token latency closely ...
    assert fit.mape < 0.15
    # ... and lands near the coefficients the engine ran with
    assert fit.profile.beta0 == pytest.approx(TRUE.beta0, rel=0.25)
    assert fit.profile.beta1 == pytest.approx(TRUE.beta1, rel=0.35)


class _Metrics(http.server.BaseHTTPRequestHandler):
    body = b""
    scrapes = 0

    def do_GET(self) -> None:
        type(self).scrapes += 1
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(type(self).body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def exporter() -> Iterator[tuple[type[_Metrics], str]]:
    handler = type("Metrics", (_Metrics,), {"body": b"", "scrapes": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler, f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def exposition(totals: dict[str, float]) -> bytes:
    lines = [f'vllm:{k}{{model_name="llama"}} {v!r}' for k, v in totals.items()]
    return ("\n".join(lines) + "\n").encode()


def wait_scrapes(handler: type[_Metrics], count: int, within: float = 20.0) -> None:
    goal = handler.scrapes + count
    deadline = time.monotonic() + within
    while handler.scrapes < goal:
        assert time.monotonic() < deadline, "Prometheus stopped scraping"
        time.sleep(0.05)


def test_calibration_from_a_load_test_in_prometheus(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    prometheus_factory: PrometheusFactory,
    exporter: tuple[type[_Metrics], str],
) -> None:
    """The engine's V1 counters, served over HTTP level after level and scraped by a real
    Prometheus, give the same fit as the exact per-level means."""
    handler, target = exporter
    runs = load_test(RATES)
    totals = dict.fromkeys(
        (
            "request_success_total",
            "prompt_tokens_total",
            "generation_tokens_total",
            "time_to_first_token_seconds_sum",
            "time_to_first_token_seconds_count",
            "inter_token_latency_seconds_sum",
            "inter_token_latency_seconds_count",
        ),
        0.0,
    )
    handler.body = exposition(totals)
    prom = prometheus_factory([target], scrape_interval="1s")
    wait_scrapes(handler, 3)
    rows = ["start,end,rate"]
    for rate, (_, r) in zip(RATES, runs, strict=True):
        start = time.time()
        wait_scrapes(handler, 2)  # the window opens on samples of the previous level
        totals["request_success_total"] += r.completed
        totals["prompt_tokens_total"] += r.prompt_tokens
        totals["generation_tokens_total"] += r.generation_tokens
        totals["time_to_first_token_seconds_sum"] += r.ttft.sum
        totals["time_to_first_token_seconds_count"] += r.ttft.count
        totals["inter_token_latency_seconds_sum"] += r.itl.sum
        totals["inter_token_latency_seconds_count"] += r.itl.count
        handler.body = exposition(totals)
        wait_scrapes(handler, 3)
        rows.append(f"{start:.3f},{time.time():.3f},{rate}")
    wait_scrapes(handler, 2)  # the last samples reach the TSDB
    with urllib.request.urlopen(f"{prom.url}/api/v1/query?query=up", timeout=5) as resp:
        assert resp.status == 200
    windows = tmp_path / "windows.csv"
    windows.write_text("\n".join(rows) + "\n")
    out = tmp_path / "prom.yaml"
    code = main(
        [
            "simulate", "calibrate", "--prometheus", prom.url, "--windows", str(windows),
            "--selector", '{model_name="llama"}', "--kv-cache-tokens", "40000",
            "--name", "prom", "--out", str(out), "--no-plot",
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Prometheus load test (4 levels" in captured.out
    exact = fit_levels(
        [level_of(rate, *run) for rate, run in zip(RATES, runs, strict=True)],
        EngineLimits(40_000),
        "exact",
    ).profile
    got: StepProfile = load_profile(str(out))
    # increase() extrapolates each series to the window's edges on its own (limited by the
    # counter's distance to zero), so ratios of increases are close to the exact means, not equal
    assert got.beta0 == pytest.approx(exact.beta0, rel=0.02)
    assert got.beta1 == pytest.approx(exact.beta1, rel=0.02)
    assert got.beta2 == pytest.approx(exact.beta2, rel=0.1, abs=1e-7)


def test_levels_csv_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = load_test(RATES, seconds=300.0)
    rows = ["rate,prompt_tokens,generated_tokens,ttft_seconds,itl_seconds,replicas"]
    for rate, run in zip(RATES, runs, strict=True):
        lv = level_of(rate, *run)
        rows.append(f"{2 * rate},{lv.prompt_tokens},{lv.generated_tokens},{lv.ttft},{lv.itl},2")
    levels = tmp_path / "levels.csv"
    levels.write_text("\n".join(rows) + "\n")
    out = tmp_path / "lv.yaml"
    args = ["simulate", "calibrate", "--levels", str(levels), "--kv-cache-tokens", "40000"]
    assert main([*args, "--name", "lv", "--out", str(out), "--no-plot"]) == 0
    assert "lv: fitted from levels.csv (load levels)" in capsys.readouterr().out
    assert load_profile(str(out)).beta0 == pytest.approx(TRUE.beta0, rel=0.3)
    assert not (tmp_path / "lv-fit.png").exists()


def test_alphas_from_levels_against_measured_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Steps give the betas; the levels' latencies beyond the modelled steps give the alphas."""
    steps = tmp_path / "steps.csv"
    write_steps(steps, noise=0.0)
    rates = [0.5, 2.0, 4.0]
    runs = load_test(rates, 300.0, SHIPPED)
    # longer prompts at light load, so that alpha1 can be told from alpha0
    runs += load_test([0.5], 300.0, SHIPPED, prompts=(3000, 5000))
    rows = ["rate,prompt_tokens,generated_tokens,ttft_seconds,itl_seconds"]
    for rate, run in zip([*rates, 0.5], runs, strict=True):
        lv = level_of(rate, *run)
        rows.append(f"{rate},{lv.prompt_tokens},{lv.generated_tokens},{lv.ttft},{lv.itl}")
    levels = tmp_path / "levels.csv"
    levels.write_text("\n".join(rows) + "\n")
    out = tmp_path / "both.yaml"
    args = ["simulate", "calibrate", "--steps", str(steps), "--levels", str(levels)]
    assert main([*args, "--kv-cache-tokens", "40000", "--name", "b", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "alpha2" in text
    got = load_profile(str(out))
    assert got.beta0 == pytest.approx(TRUE.beta0, rel=1e-3)
    assert got.alpha2 == pytest.approx(SHIPPED.alpha2, rel=0.2)
    # alpha0 and alpha1 absorb the fluid TTFT model's own error (here 3.0 ms fitted against
    # 2.0 ms true at 1,000 prompt tokens): right in size, not in digits
    overhead = got.alpha0 + 1000 * got.alpha1
    assert 0.5 < overhead / (SHIPPED.alpha0 + 1000 * SHIPPED.alpha1) < 2


def test_levels_alone_say_that_they_cannot_fit_the_alphas() -> None:
    runs = load_test(RATES, 300.0, SHIPPED)
    levels = [level_of(rate, *run) for rate, run in zip(RATES, runs, strict=True)]
    fit = fit_levels(levels, EngineLimits(40_000), "x")
    assert (fit.profile.alpha0, fit.profile.alpha1, fit.profile.alpha2) == (0.0, 0.0, 0.0)
    assert fit.notes and "alphas not fitted" in fit.notes[0] and "--steps" in fit.notes[0]


def _levels_of(
    profile: StepProfile, shapes: Sequence[tuple[float, float, float, int]]
) -> list[Level]:
    """The steady-state model's own means at ``(rate, prompt, generated, budget)``: levels a
    fit on the same model must reproduce exactly."""
    out = []
    for rate, p, g, budget in shapes:
        lim = EngineLimits(40_000, max_num_batched_tokens=budget)
        s = steady_state(profile, lim, rate, TokenMix(p, g))
        assert s.limit is None
        out.append(Level(rate, p, g, s.ttft, s.tpot, budget))
    return out


SHAPES = [
    (2.0, 500, 250, 1024),
    (10.0, 500, 250, 8192),
    (20.0, 550, 250, 2048),
    (3.0, 1000, 1400, 2048),
    (1.0, 3000, 300, 4096),
]
"""Short and long prompts and outputs at light and heavy load, under several token budgets."""


@settings(max_examples=20, deadline=None)
@given(st.floats(0.0, 10e-3), st.floats(0.0, 5e-6), st.floats(0.0, 4e-3), st.floats(5e-9, 80e-9))
def test_context_fit_recovers_beta3_and_the_alphas(
    alpha0: float, alpha1: float, alpha2: float, beta3: float
) -> None:
    truth = dataclasses.replace(TRUE, beta3=beta3, alpha0=alpha0, alpha1=alpha1, alpha2=alpha2)
    fit = fit_alphas(_levels_of(truth, SHAPES), EngineLimits(40_000), TRUE, context=True)
    got = fit.profile
    assert got.beta3 == pytest.approx(beta3, rel=1e-3, abs=1e-11)
    assert got.alpha2 == pytest.approx(alpha2, abs=2e-6)
    assert got.alpha0 + 1000 * got.alpha1 == pytest.approx(alpha0 + 1000 * alpha1, abs=2e-5)
    assert (got.beta0, got.beta1, got.beta2) == (TRUE.beta0, TRUE.beta1, TRUE.beta2)
    assert fit.mape < 1e-3 and CONTEXT_FITTED in fit.notes


def test_without_context_the_given_beta3_is_kept_and_each_levels_budget_counts() -> None:
    truth = dataclasses.replace(TRUE, beta3=40e-9, alpha0=5e-3, alpha2=1e-3)
    levels = _levels_of(truth, SHAPES)
    fit = fit_alphas(levels, EngineLimits(40_000), dataclasses.replace(TRUE, beta3=40e-9))
    assert fit.profile.beta3 == 40e-9 and fit.mape < 1e-6
    # the same levels read as if all ran under the fit's default budget fit worse
    flat = [dataclasses.replace(lv, max_num_batched_tokens=None) for lv in levels]
    worse = fit_alphas(flat, EngineLimits(40_000), dataclasses.replace(TRUE, beta3=40e-9))
    assert worse.mape > 10 * fit.mape


def test_a_context_fit_names_what_it_cannot_fit() -> None:
    one_token = [Level(1.0, 500, 1, 0.02, 0.01)]
    with pytest.raises(CalibrationError, match="no level has decoding sequences"):
        fit_alphas(one_token, EngineLimits(40_000), TRUE, context=True)
    overloaded = [Level(1e4, 500, 250, 0.02, 0.01)]
    with pytest.raises(CalibrationError, match="already exceed its capacity"):
        fit_alphas(overloaded, EngineLimits(40_000), TRUE, context=True)
