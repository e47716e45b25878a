"""``gpuscale simulate placement`` end to end on a tiny trace, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuscale.cli import main

NODES = "sn,cpu_milli,memory_mib,gpu,model\n" + "".join(
    f"n{i},32000,131072,{g},{m}\n" for i, (g, m) in enumerate([(2, "T4"), (4, "G2"), (8, "G3")])
)
PODS = "name,cpu_milli,memory_mib,num_gpu,gpu_milli\n" + "".join(
    f"p{i},{c},4096,{n},{m}\n"
    for i, (c, n, m) in enumerate(
        [(4000, 1, 470), (2000, 1, 1000), (8000, 2, 1000), (1000, 0, 0), (3000, 1, 250)] * 3
    )
)


@pytest.fixture
def trace(tmp_path: Path) -> tuple[Path, Path]:
    nodes = tmp_path / "nodes.csv"
    pods = tmp_path / "pods.csv"
    nodes.write_text(NODES)
    pods.write_text(PODS)
    return nodes, pods


def test_writes_every_output_and_prints_the_table(
    trace: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes, pods = trace
    out = tmp_path / "out"
    code = main(
        [
            "simulate",
            "placement",
            "--nodes",
            str(nodes),
            "--pods",
            str(pods),
            "--repeats",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr()
    assert "| pods | fragmentation |" in printed.out
    assert "repeat 2/2" in printed.err
    report = json.loads((out / "placement.json").read_text())
    assert report["target_load"] == 1.3
    assert {r["scoring"] for r in report["results"]} == {"binpack", "spread", "fragmentation"}
    for r in report["results"]:
        assert r["repeats"] == 2
        assert 0 < r["allocated_at_130"]["mean"] <= 1
        assert r["curve"]["arrived"][-1] == pytest.approx(1.3)
    assert len((out / "placement.csv").read_text().splitlines()) == 1 + 3 * 2
    assert (out / "placement_curve.csv").read_text().startswith("trace,scoring,arrived")
    assert (out / "placement.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scoring", "binpack,best"], "--scoring: unknown strategy best"),
        (["--repeats", "0"], "--repeats: must be at least 1"),
        (["--gpu-memory", "T4"], "--gpu-memory: expected MODEL=MiB"),
        (["--target-load", "0"], "--target-load: must be in (0, 10]"),
    ],
)
def test_bad_flags_exit_1_with_a_message(
    trace: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    nodes, pods = trace
    base = ["simulate", "placement", "--nodes", str(nodes), "--pods", str(pods)]
    assert main([*base, "--out", str(tmp_path / "o"), *args]) == 1
    assert message in capsys.readouterr().err


def test_bad_trace_file_exits_1_naming_file_and_field(
    trace: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes, _ = trace
    bad = tmp_path / "bad.csv"
    bad.write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np,1,2,x,0\n")
    code = main(["simulate", "placement", "--nodes", str(nodes), "--pods", str(bad)])
    assert code == 1
    err = capsys.readouterr().err
    assert f"{bad}:2: num_gpu: expected an integer" in err
    assert "Traceback" not in err


def test_unknown_gpu_model_exits_1(
    trace: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, pods = trace
    nodes = tmp_path / "n.csv"
    nodes.write_text("sn,cpu_milli,memory_mib,gpu,model\na,1000,1000,1,H100\n")
    code = main(["simulate", "placement", "--nodes", str(nodes), "--pods", str(pods)])
    assert code == 1
    assert "GPU model 'H100' has no memory size" in capsys.readouterr().err


def test_help_names_the_full_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "placement", "--help"]) == 0
    assert capsys.readouterr().out.startswith("Usage: gpuscale simulate placement [OPTIONS]")


TIMED = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,creation_time,deletion_time\n" + (
    "".join(
        f"q{i},2000,4096,{n},{m},{spec},{10 * i},{10 * i + 300}\n"
        for i, (n, m, spec) in enumerate(
            [(1, 500, ""), (1, 1000, "T4"), (2, 1000, ""), (0, 0, ""), (1, 250, "G2|G3")] * 4
        )
    )
)


def test_departures_write_their_report(
    trace: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes, _ = trace
    pods = tmp_path / "timed.csv"
    pods.write_text(TIMED)
    out = tmp_path / "dep"
    args = ["simulate", "placement", "--nodes", str(nodes), "--pods", str(pods)]
    code = main([*args, "--order", "trace", "--departures", "--copies", "2", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr()
    assert "| timed | fragmentation |" in printed.out
    report = json.loads((out / "departures.json").read_text())
    assert report["copies"] == 2
    assert report["selection"] == "scheduler"
    assert {r["scoring"] for r in report["results"]} == {"binpack", "spread", "fragmentation"}
    for r in report["results"]:
        assert r["gpu_pods"] == 32
        assert 0 < r["allocated_peak"] <= 1
    assert (out / "departures_curve.csv").read_text().startswith("trace,scoring,time_s,")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--departures"], "--departures: needs --order trace"),
        (["--order", "trace", "--departures", "--copies", "0"], "--copies: must be at least 1"),
        (["--constrain", "2"], "--constrain: must be in [0, 1]"),
    ],
)
def test_bad_departure_flags_exit_1(
    trace: tuple[Path, Path], extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes, pods = trace
    assert main(["simulate", "placement", "--nodes", str(nodes), "--pods", str(pods), *extra]) == 1
    assert message in capsys.readouterr().err


def test_departures_need_trace_times(
    trace: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    nodes, pods = trace
    args = ["simulate", "placement", "--nodes", str(nodes), "--pods", str(pods)]
    assert main([*args, "--order", "trace", "--departures"]) == 1
    assert "departures need creation_time and deletion_time" in capsys.readouterr().err


def test_constrained_variant_is_replayed_beside_the_list(
    trace: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes, pods = trace
    out = tmp_path / "c"
    args = ["simulate", "placement", "--nodes", str(nodes), "--pods", str(pods), "--repeats", "1"]
    assert main([*args, "--constrain", "0.5", "--scoring", "binpack", "--out", str(out)]) == 0
    report = json.loads((out / "placement.json").read_text())
    assert [r["trace"] for r in report["results"]] == ["pods", "pods+spec50"]
    assert report["selection"] == "scheduler"
