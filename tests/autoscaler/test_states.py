"""One vocabulary for a policy's state: the annotation, ``gpuscale status``, the gauge and the
docs that describe them all name the states of ``autoscaler/states.py``, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

import pytest

from autoscaler import feedback, ops
from autoscaler.feedback import STATUS_ANNOTATION, PolicyStatus, status_from_annotation
from autoscaler.overview import policy_row
from autoscaler.states import POLICY_STATES, PolicyState, gauge_label
from gpuscale import cmd_status
from policies.parse import policy_to_configmap
from tests.autoscaler.helpers import make_policy

ROOT = Path(__file__).resolve().parents[2]
WRITTEN = [s for s in POLICY_STATES if s != "Pending"]


def test_the_annotation_type_is_the_shared_vocabulary() -> None:
    assert get_args(feedback.StatusState) == POLICY_STATES


def test_the_gauge_exports_every_state_and_only_those() -> None:
    metrics = ops.ControllerMetrics()
    metrics.policy_states = lambda: dict.fromkeys(POLICY_STATES, 1)
    exported = {
        sample.labels["state"]
        for family in metrics.registry.collect()
        if family.name == "gpuscale_policies"
        for sample in family.samples
    }
    assert exported == set(ops.POLICY_STATES) == {gauge_label(s) for s in POLICY_STATES}
    assert gauge_label("MetricsUnavailable") == "metrics_unavailable"


@pytest.mark.parametrize("state", WRITTEN)
def test_gpuscale_status_shows_what_the_annotation_says(state: PolicyState) -> None:
    cm = policy_to_configmap(make_policy("llama", "inference"))
    text = PolicyStatus(state, "why", 2, 2).to_json(0.0)
    cm["metadata"]["annotations"] = {STATUS_ANNOTATION: text}
    assert policy_row(cm, None, []).state == state
    assert status_from_annotation(text) == PolicyStatus(state, "why", 2, 2)


def test_a_state_outside_the_vocabulary_is_unreadable_not_shown() -> None:
    cm = policy_to_configmap(make_policy("llama", "inference"))
    cm["metadata"]["annotations"] = {STATUS_ANNOTATION: '{"state":"Holding","reason":"x"}'}
    row = policy_row(cm, None, [])
    assert (row.state, row.detail) == ("Pending", "unreadable status annotation")


def _states_in(text: str) -> set[str]:
    return set(re.findall(r"`(\w+)`", text))


def test_the_docs_list_exactly_these_states() -> None:
    readme = (ROOT / "autoscaler" / "README.md").read_text()
    annotation = re.search(r"\*\*Status annotation\*\*.*?`state` \(([^)]*)\)", readme, re.S)
    assert annotation is not None
    assert _states_in(annotation.group(1)) == set(WRITTEN)
    gauge = re.search(r"^\| `gpuscale_policies` \|.*$", readme, re.M)
    assert gauge is not None
    assert _states_in(gauge.group(0).split("|")[3]) == set(ops.POLICY_STATES)
    assert cmd_status.status.help is not None
    help_text = " ".join(cmd_status.status.help.split())
    assert all(state in help_text for state in POLICY_STATES)
    assert "Holding" not in help_text
