"""``gpuscale simulate sweep`` end to end on a short window: results, resumption, bounds,
errors, and the same points as Ray tasks on a local Ray instance."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gpuscale.cli import main
from simulations.experiments.sweep import RESULTS_FILE, StaticSearch, read_results

SPEC = {
    "scenario": str(Path("simulations/scenarios/default.yaml").resolve()),
    "duration": "4m",
    "seeds": 2,
    "target": 0.9,
    "bounds": {"hindsight": {"interval": "30s"}},
    "families": {
        "hpa": {"baseline": "hpa", "grid": {"target": [0.5, 2]}},
        "ours": {
            "file": "examples:llm-chat-vllm.yaml",
            "grid": {"metrics[queue].targetPerReplica": [2, 8]},
        },
    },
}


def write_spec(tmp_path: Path, **changes: object) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(SPEC | changes))
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["simulate", "sweep", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_sweep_writes_frontiers_bounds_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec(tmp_path)
    out = tmp_path / "out"
    code, stdout, stderr = run(capsys, str(spec), "--out", str(out), "--workers", "2")
    assert code == 0, stderr
    doc = json.loads((out / "pareto.json").read_text())
    assert doc["schema"] == "gpuscale.io/sweep-pareto/v1" and doc["target"] == 0.9
    assert [f["name"] for f in doc["families"]] == ["hpa", "ours"]
    for f in doc["families"]:
        assert len(f["points"]) == 4  # 2 points x 2 seeds
        assert {p["seed"] for p in f["points"]} == {1, 2}
        for p in f["points"]:
            assert 0 <= p["slo_attainment"] <= 1 and p["gpu_hours"] > 0
            assert p["latency_p95"] is not None
        front = f["frontier"]
        assert front and all(
            a["gpu_hours"] < b["gpu_hours"] and a["slo_attainment"] < b["slo_attainment"]
            for a, b in itertools.pairwise(front)
        )
        g = f["gpu_hours_at_target"]
        assert (g is None) == (f["best_attainment"] < 0.9)
    bounds = doc["bounds"]
    hind = bounds["hindsight"]
    assert hind["gpu_hours"] > 0 and len(hind["per_seed"]) == 2
    for s in hind["per_seed"]:
        assert s["feasible"] and s["modelled_attainment"] >= 0.9
        assert all(m >= n for m, n in zip(s["replicas"], s["needs"], strict=True))
    static = bounds["static"]
    assert static is not None and static["slo_attainment"] >= 0.9
    # the probe just below the answer misses the target
    below = [p for p in bounds["static_probes"] if p["replicas"] == static["replicas"] - 1]
    assert below and below[0]["slo_attainment"] < 0.9
    # hindsight knows the future: no family and no fixed count needs fewer GPU-hours
    assert hind["gpu_hours"] <= static["gpu_hours"]
    for f in doc["families"]:
        if f["gpu_hours_at_target"] is not None:
            assert f["gpu_hours_at_target"] >= hind["gpu_hours"]
    assert "hindsight" in stdout and "static" in stdout and "GPU-h @ 90%" in stdout
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"

    lines = (out / RESULTS_FILE).read_text().splitlines()
    first = (out / "pareto.json").read_bytes()
    # a re-run reuses every result and gives the same bytes
    code, stdout, _ = run(capsys, str(spec), "--out", str(out), "--workers", "1")
    assert code == 0 and " 0 runs in " in stdout and f"{len(lines)} reused" in stdout
    assert (out / "pareto.json").read_bytes() == first

    # an interrupted sweep: lose two results and tear the last line; only those run again
    kept = lines[:-2]
    (out / RESULTS_FILE).write_text("\n".join(kept) + "\n" + lines[-2][:40])
    code, stdout, _ = run(capsys, str(spec), "--out", str(out), "--no-plots")
    assert code == 0 and " 2 runs in " in stdout
    assert (out / "pareto.json").read_bytes() == first
    assert len(read_results(out / RESULTS_FILE)) == len(lines)

    # a new point in the spec runs only that point's seeds
    grown = dict(SPEC["families"])  # type: ignore[call-overload]
    grown["hpa"] = {"baseline": "hpa", "grid": {"target": [0.5, 1, 2]}}
    spec2 = write_spec(tmp_path, families=grown)
    code, stdout, _ = run(capsys, str(spec2), "--out", str(out), "--no-plots")
    assert code == 0 and " 2 runs in " in stdout


def test_bad_spec_exits_1_with_file_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec(tmp_path, target="high")
    code, stdout, stderr = run(capsys, str(spec), "--out", str(tmp_path / "o"))
    assert code == 1 and stdout == ""
    assert stderr.strip() == f'{spec}: target: expected a number, got "high"'
    code, _, stderr = run(capsys, str(tmp_path / "nope.yaml"))
    assert code == 1 and "nope.yaml: cannot read" in stderr
    code, _, stderr = run(capsys, str(spec), "--workers", "2", "--ray", "auto")
    assert code == 1


def test_static_search_bisects() -> None:
    s = StaticSearch(0, 20)
    truth = 13
    probes = []
    while (n := s.next_probe()) is not None:
        probes.append(n)
        s.record(n, 1.0 if n >= truth else 0.5, 0.9)
    assert s.answer == truth and probes[0] == 20 and len(probes) <= 6
    never = StaticSearch(0, 20)
    never.record(20, 0.5, 0.9)
    assert never.next_probe() is None and never.answer is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def ray_cluster() -> Iterator[str]:
    """A local Ray head on loopback, in its own process group (stopped by that group's id)."""
    pytest.importorskip("ray")
    ray_bin = Path(sys.executable).parent / "ray"
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    port = _free_port()
    proc = subprocess.Popen(
        [
            str(ray_bin), "start", "--head", "--block", f"--port={port}",
            "--node-ip-address=127.0.0.1", "--num-cpus=2", "--include-dashboard=false",
            "--disable-usage-stats", f"--temp-dir={temp}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the local Ray head did not start")
            time.sleep(0.5)
        yield address
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_ray_backend_gives_the_same_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ray_cluster: str
) -> None:
    spec = write_spec(
        tmp_path, duration="3m", seeds=1, bounds={"static": False, "hindsight": False}
    )
    local, remote = tmp_path / "local", tmp_path / "ray"
    code, _, stderr = run(capsys, str(spec), "--out", str(local), "--workers", "1", "--no-plots")
    assert code == 0, stderr
    code, stdout, stderr = run(capsys, str(spec), "--out", str(remote), "--ray", ray_cluster)
    assert code == 0, stderr
    assert " 4 runs in " in stdout
    assert (local / "pareto.json").read_bytes() == (remote / "pareto.json").read_bytes()
    assert read_results(local / RESULTS_FILE) == read_results(remote / RESULTS_FILE)


def test_ray_address_that_answers_nothing_is_a_clean_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("ray")
    spec = write_spec(tmp_path, bounds={"static": False, "hindsight": False})
    port = _free_port()
    code, _, stderr = run(capsys, str(spec), "--ray", f"127.0.0.1:{port}")
    assert code == 1 and stderr.startswith(f"--ray 127.0.0.1:{port}: cannot connect")
