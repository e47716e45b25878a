"""``benchmarks/bench_fidelity.py``: its data file reads cleanly, bad rows name their field, and a
single request reproduces the closed form the engine tests pin down."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

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
    assert "load_kind: expected one of batch, rate, concurrency" in capsys.readouterr().err
