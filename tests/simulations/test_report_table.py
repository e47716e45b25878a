"""The terminal summary shows failures: unrecovered bursts and unfinished requests are in the
table and listed under it, never averaged away."""

from __future__ import annotations

from typing import Any, cast

from simulations.experiments.compare import Comparison, RunResult
from simulations.experiments.report import _recovery, failures


def _run(label: str, seed: int, **summary: Any) -> RunResult:
    base: dict[str, Any] = {"unfinished": 0, "dropped": 0, "bursts": [], "bursts_unrecovered": 0}
    return RunResult(label, "gpuscale", seed, {**base, **summary}, {})


def _comparison(*runs: RunResult) -> Comparison:
    seeds = tuple(sorted({r.seed for r in runs}))
    return Comparison(cast(Any, None), seeds, runs, 0, 0.0, ())


def test_recovery_says_how_many_bursts_never_recovered() -> None:
    three = [{"start": 0, "recovery_s": 40.0}, {"start": 60, "recovery_s": None}, {}]
    run = _run("hpa", 1, bursts=three, bursts_unrecovered=1)
    assert _recovery([run], "40") == "40 (1/3 never)"
    assert _recovery([_run("a", 1, bursts=[{}], bursts_unrecovered=1)], "-") == "never (1/1)"
    assert _recovery([_run("a", 1, bursts=[{}, {}])], "12") == "12"
    assert _recovery([_run("a", 1)], "-") == "-"


def test_failures_lists_every_policy_that_left_work_undone() -> None:
    comparison = _comparison(
        _run("llama-chat", 1),
        _run("hpa", 1, unfinished=683, bursts=[{}, {}], bursts_unrecovered=1),
        _run("keda", 1, unfinished=1060, dropped=3),
    )
    lines = failures(comparison)
    assert (
        lines[0]
        == "hpa: 683 requests still unfinished when the run ended, 1 of 2 bursts never recovered"
    )
    assert lines[1] == "keda: 1,060 requests still unfinished when the run ended, 3 dropped"
    assert "SLO miss" in lines[2] and len(lines) == 3


def test_no_failures_no_lines() -> None:
    assert failures(_comparison(_run("llama-chat", 1), _run("llama-chat", 2))) == []
