"""Sweep specs: expansion of grids, lists and ranges, and file:field errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from simulations.config.scenario import GpuscaleContender, HpaContender, KedaContender
from simulations.config.sweep_spec import (
    SweepSpecError,
    load_sweep,
    parse_sweep,
    point_label,
    set_policy_field,
)

BASE: dict[str, Any] = {"target": 0.99, "seeds": 2}


def parse(doc: dict[str, Any]) -> Any:
    return parse_sweep(doc, "sweep.yaml", Path("."))


def errors(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(SweepSpecError) as info:
        parse(doc)
    return info.value.messages


def test_built_in_sweep_parses() -> None:
    spec = load_sweep(None)
    assert spec.target == 0.99
    kinds = {f.kind for f in spec.families}
    assert {"hpa", "keda", "kpa", "gpuscale"} <= kinds
    assert all(f.points for f in spec.families)


def test_grids_lists_and_ranges_expand() -> None:
    spec = parse(
        BASE
        | {
            "families": {
                "hpa": {
                    "baseline": "hpa",
                    "set": {"metric": "concurrency"},
                    "grid": [{"target": [1, 2]}, {"target": {"from": 3, "to": 4, "step": 0.5}}],
                    "points": [{"target": 2}, {"target": 7, "metric": "queue"}],
                },
                "keda": {
                    "baseline": "keda",
                    "grid": {"threshold": [1, 2], "pollingInterval": ["15s", "30s"]},
                },
            }
        }
    )
    hpa, keda = spec.families
    assert spec.seeds == (1, 2)
    targets = [(p.contender.metric, p.contender.target) for p in hpa.points]
    # the listed target 2 repeats a grid point and is run once
    assert targets == [
        ("concurrency", 1.0), ("concurrency", 2.0), ("concurrency", 3.0),
        ("concurrency", 3.5), ("concurrency", 4.0), ("queue", 7.0),
    ]  # fmt: skip
    assert all(isinstance(p.contender, HpaContender) for p in hpa.points)
    assert len(keda.points) == 4
    first = keda.points[0].contender
    assert isinstance(first, KedaContender) and first.polling_interval == 15.0
    assert keda.points[0].label == "keda[pollingInterval=15s,threshold=1]"
    assert first.label == keda.points[0].label


def test_policy_knobs_are_paths_into_the_policy() -> None:
    spec = parse(
        BASE
        | {
            "families": {
                "ours": {
                    "file": "examples:llm-chat-vllm.yaml",
                    "grid": {
                        "metrics[queue].targetPerReplica": [2, 8],
                        "coldStart": ["60s"],
                        "forecast.method": ["none", "holt"],
                    },
                }
            }
        }
    )
    (fam,) = spec.families
    assert fam.kind == "gpuscale" and len(fam.points) == 4
    c = fam.points[-1].contender
    assert isinstance(c, GpuscaleContender)
    assert c.policy.cold_start == 60.0 and c.policy.forecast.method == "holt"
    queue = next(m for m in c.policy.metrics if m.name == "queue")
    assert queue.target_per_replica == 8  # type: ignore[union-attr]


def test_set_policy_field_explains_what_it_cannot_set() -> None:
    doc: dict[str, Any] = {"metrics": [{"name": "queue"}], "interval": "15s"}
    assert set_policy_field(doc, "metrics[load].slo", "1s") is not None
    assert "named 'load'" in str(set_policy_field(doc, "metrics[load].slo", "1s"))
    assert set_policy_field(doc, "metrics[3].slo", "1s") is not None
    assert set_policy_field(doc, "interval.x", 1) is not None
    assert set_policy_field(doc, "metrics[0].targetPerReplica", 3) is None
    assert doc["metrics"][0]["targetPerReplica"] == 3


def test_errors_name_file_and_field() -> None:
    msgs = errors(
        {
            "target": 1.5,
            "seeds": [1, 1],
            "colour": "blue",
            "families": {
                "hpa": {"baseline": "hpa", "grid": {"target": [-1, 2], "targt": [1]}},
                "kpa": {"baseline": "kpa", "grid": {"target": {"from": 4, "to": 1, "step": 1}}},
                "bad": {"baseline": "hpa", "file": "x.yaml"},
                "ours": {
                    "file": "examples:llm-chat-vllm.yaml",
                    "grid": {"metrics[queue].targetPerReplica": ["lots"], "metrics[nope].slo": [1]},
                },
                "sched": {"baseline": "hpa", "points": [{"name": "x"}]},
            },
        }
    )
    text = "\n".join(msgs)
    assert all(m.startswith("sweep.yaml: ") for m in msgs)
    assert "sweep.yaml: target: must be at most 1, got 1.5" in msgs
    assert "sweep.yaml: seeds: seeds must be distinct" in msgs
    assert "sweep.yaml: colour: unknown field" in text
    assert "sweep.yaml: families.hpa.grid.target: must be greater than 0, got -1" in msgs
    assert "families.hpa.grid.targt: unknown field (expected one of: metric, target" in text
    assert "sweep.yaml: families.kpa.grid.target.to: must be at least from (4), got 1" in msgs
    assert "families.bad: expected exactly one of baseline:" in text
    assert (
        "sweep.yaml: families.ours.grid.metrics[queue].targetPerReplica:"
        " expected a positive number, got a string ('lots')" in msgs
    )
    assert (
        "sweep.yaml: families.ours.grid.metrics[nope].slo: no metrics entry named 'nope'"
        " in the policy (have: queue, latency, load)" in msgs
    )
    assert "families.sched.points[0].name: not a knob" in text


def test_missing_pieces_are_reported() -> None:
    msgs = errors({"seeds": 0})
    assert "sweep.yaml: target: required: the attainment to reach, e.g. 0.99" in msgs
    assert "sweep.yaml: seeds: must be at least 1, got 0" in msgs
    assert any(m.startswith("sweep.yaml: families: required") for m in msgs)


def test_scenario_errors_are_passed_on(tmp_path: Path) -> None:
    bad = tmp_path / "sc.yaml"
    bad.write_text(yaml.safe_dump({"cluster": {}, "service": {"gpus": 0}, "workload": {}}))
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump(BASE | {"scenario": "sc.yaml", "families": {}}))
    with pytest.raises(SweepSpecError) as info:
        load_sweep(spec)
    assert any(m.startswith(f"{spec}: scenario: {bad}: service.gpus:") for m in info.value.messages)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(SweepSpecError, match="cannot read"):
        load_sweep(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("families: [\n")
    with pytest.raises(SweepSpecError, match=r"broken.yaml: line \d+, column \d+"):
        load_sweep(broken)


def test_labels_show_integers_plainly() -> None:
    assert (
        point_label("hpa", (("target", 2.0), ("metric", "queue"))) == "hpa[target=2,metric=queue]"
    )
    assert point_label("x", ()) == "x"
