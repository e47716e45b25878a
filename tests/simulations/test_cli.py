"""``gpuscale simulate`` end to end: the default scenario (shortened), determinism, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuscale.cli import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["simulate", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_default_scenario_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    code, stdout, stderr = run(capsys, "--duration", "8m", "--out", str(out), "--workers", "1")
    assert code == 0, stderr
    names = ["llama-serving", "llama-burst", "hpa", "keda", "kpa"]
    for name in names:
        assert f"\n{name} " in stdout
    assert "SLO att." in stdout and "GPU-h" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "gpuscale.io/simulation-report/v2"
    assert [p["name"] for p in report["policies"]] == names
    for p in report["policies"]:
        mean = p["mean"]
        assert 0.0 <= mean["slo_attainment"] <= 1.0
        assert mean["gpu_hours"] > 0 and mean["replicas_max"] >= 1
        assert p["per_seed"][0]["requests"] == report["scenario"]["requests"] > 1000
    header = (out / "timeline.csv").read_text().splitlines()[0]
    assert header.startswith("policy,seed,time,arrivals_per_s,desired,replicas,ready")
    for png in ("timeline.png", "tradeoff.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert " cost" not in stdout.splitlines()[1]  # no variants, no cost column


def test_same_seed_gives_identical_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--duration", "4m", "--no-plots", "--baseline", "hpa,kpa"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(capsys, *common, "--out", str(a), "--workers", "1")[0] == 0
    assert run(capsys, *common, "--out", str(b), "--workers", "2")[0] == 0
    assert (a / "report.json").read_bytes() == (b / "report.json").read_bytes()
    assert (a / "timeline.csv").read_bytes() == (b / "timeline.csv").read_bytes()
    c = tmp_path / "c"
    assert run(capsys, *common, "--out", str(c), "--seed", "7")[0] == 0
    assert (a / "report.json").read_bytes() != (c / "report.json").read_bytes()


def test_seeds_report_mean_and_spread(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r"
    code, stdout, _ = run(
        capsys, "--duration", "3m", "--no-plots", "--baseline", "kpa", "--seeds", "2",
        "--policy", str(Path("policies/examples/llm-chat-vllm.yaml")), "--out", str(out),
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["scenario"]["seeds"] == [1, 2]
    assert [p["name"] for p in report["policies"]] == ["llama-chat", "kpa"]
    for p in report["policies"]:
        assert [s["seed"] for s in p["per_seed"]] == [1, 2]
        assert set(p["spread"]) == set(p["mean"])
    assert "±" in stdout


def test_bad_inputs_exit_1_with_file_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster: {pools: []}\nservice: {slo: fast}\nworkload: {type: poisson}\n")
    code, _, stderr = run(capsys, str(bad))
    assert code == 1
    assert f"{bad}: service.slo: expected a duration" in stderr
    assert f"{bad}: workload.rate: required for type: poisson" in stderr
    assert "Traceback" not in stderr
    assert run(capsys, str(tmp_path / "nope.yaml"))[0] == 1
    code, _, stderr = run(capsys, "--baseline", "hpa,vpa")
    assert code == 1 and "unknown baseline vpa" in stderr
    code, _, stderr = run(capsys, "--duration", "soon")
    assert code == 1 and "--duration" in stderr


def test_placement_is_a_sub_verb(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run(capsys, "placement", "--help")
    assert code == 0
    assert "Usage:" in stdout and "placement" in stdout
    code, stdout, _ = run(capsys, "--help")
    assert code == 0 and "[SCENARIO]" in stdout and "simulate placement" in stdout


def test_variant_contenders_run_beside_the_others_with_their_cost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = Path(__file__).resolve().parents[2] / "simulations/scenarios/variants.yaml"
    out = tmp_path / "report"
    args = ("--duration", "2m", "--out", str(out), "--workers", "1", "--no-plots")
    code, stdout, stderr = run(capsys, str(scenario), *args)
    assert code == 0, stderr
    names = ["gpuscale-variants", "hpa-per-variant", "hpa-h100-only"]
    for name in names:
        assert f"\n{name} " in stdout
    assert stdout.splitlines()[1].rstrip().endswith("cost")
    report = json.loads((out / "report.json").read_text())
    assert [p["name"] for p in report["policies"]] == names
    for p in report["policies"]:
        assert p["kind"].startswith("variants-") and p["mean"]["cost"] > 0
        assert set(p["per_seed"][0]["variants"]) == {"a100", "h100"}
