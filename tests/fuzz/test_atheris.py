"""Short, seeded coverage-guided runs of the fuzz targets (``make fuzz`` runs long ones), and
every input that ever crashed a target, replayed as a regression test."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS, seeds

REPO = Path(__file__).resolve().parents[2]
REGRESSIONS = Path(__file__).with_name("regressions")
RUNS = int(os.environ.get("GPUSCALE_FUZZ_RUNS", "3000"))


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_seeded_atheris_run(target: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz.atheris_main",
            target,
            str(corpus),
            f"-runs={RUNS}",
            "-seed=1",
            f"-artifact_prefix={tmp_path}/",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    crashes = sorted(p.name for p in tmp_path.glob("crash-*"))
    assert out.returncode == 0 and not crashes, f"{crashes}\n{out.stderr[-4000:]}"
    done = re.search(r"Done (\d+) runs in (\d+) second", out.stderr)
    # libFuzzer checks -runs between mutation batches, so it may run a few inputs past it
    # (3,006 of 3,000 once, with the same seed): what matters is that it ran them all
    assert done is not None and int(done.group(1)) >= RUNS, out.stderr[-2000:]
    coverage = re.findall(r"cov: (\d+)", out.stderr)
    assert coverage and int(coverage[-1]) > 50, "the target was not instrumented"
    print(f"{target}: {done.group(1)} inputs in {done.group(2)} s, coverage {coverage[-1]}")


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_seeds_are_accepted_inputs(target: str) -> None:
    assert seeds(target)
    for seed in seeds(target):
        TARGETS[target](seed)


@pytest.mark.parametrize(
    "path",
    sorted(p for p in REGRESSIONS.rglob("*") if p.is_file()),
    ids=lambda p: str(p.relative_to(REGRESSIONS)),
)
def test_regression_inputs(path: Path) -> None:
    """``regressions/<target>/<name>``: inputs that once crashed ``<target>``."""
    TARGETS[path.parent.name](path.read_bytes())
