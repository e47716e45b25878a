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
from autoscaler.selectors import Selector, parse_selector
from autoscaler.states import POLICY_STATES, PolicyState, gauge_label
from autoscaler.targets import TargetError
from gpuscale import cmd_status
from policies.parse import policy_to_configmap
from policies.schema import QueueDepthMetric
from tests.autoscaler.helpers import make_policy
from tests.autoscaler.test_isolation import Harness, _policy, _Targets

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


class _TargetsWithAGap(_Targets):
    """The stand-in's targets, except those in ``gone``, whose scale cannot be read."""

    def __init__(self) -> None:
        super().__init__()
        self.gone: set[tuple[str, str]] = set()

    async def replicas(self, api_version: str, kind: str, namespace: str, name: str) -> int:
        if (namespace, name) in self.gone:
            raise TargetError(f"{kind} {namespace}/{name} not found")
        return await super().replicas(api_version, kind, namespace, name)

    def selector(self, kind: str, namespace: str, name: str) -> Selector:
        return parse_selector(f"app={name}")


class _Pods:
    """Unschedulable pods per namespace, whatever the selector."""

    def __init__(self, pending: dict[str, int]) -> None:
        self.pending = pending

    def count(self, namespace: str, selector: Selector | None) -> int:
        assert selector == parse_selector("app=chat")
        return self.pending.get(namespace, 0)


async def test_the_gauge_counts_every_state_the_controller_reaches() -> None:
    h = Harness(targets=_TargetsWithAGap())
    policies = {
        state: _policy(ns, QueueDepthMetric("queue", f'sum(q{{namespace="{ns}"}})', 4.0))
        for state, ns in (
            ("Active", "team-a"),
            ("MetricsUnavailable", "team-b"),
            ("TargetUnavailable", "team-c"),
            ("Pending", "team-d"),
            ("CapacityLimited", "team-e"),
        )
    }
    h.controller.pods = _Pods({"team-e": 3})  # type: ignore[assignment]
    for p in policies.values():
        h.put(p)
    await h.tick(policies["Active"], 1000.0, {'sum(q{namespace="team-a"})': 8.0}, current=2)
    await h.tick(policies["MetricsUnavailable"], 1001.0, {}, current=2)
    assert isinstance(h.targets, _TargetsWithAGap)
    await h.tick(policies["CapacityLimited"], 1002.0, {'sum(q{namespace="team-e"})': 8.0}, 2)
    h.targets.gone.add(("team-c", "chat"))
    await h.controller.tick(policies["TargetUnavailable"].key)
    counts = h.controller.policy_states()
    assert counts == {"Pending": 1, "Active": 1, "CapacityLimited": 1, "MetricsUnavailable": 1,
                      "TargetUnavailable": 1, "Invalid": 0}  # fmt: skip
    assert tuple(counts) == POLICY_STATES
