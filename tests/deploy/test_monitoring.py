"""Alert rules pass promtool, and every metric the rules and the dashboard read is exported."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from tests.deploy.manifests import DEPLOY, find, render
from tests.deploy.promql import KEYWORDS, metric_names, needs_promtool, promtool_check_rules

DASHBOARD = DEPLOY / "monitoring" / "dashboard.json"

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
}


def exported_series_names() -> set[str]:
    """Sample names the code's registries would expose, read from the registries themselves."""
    from autoscaler.ops import ControllerMetrics
    from extender.cluster_metrics import FAMILIES
    from extender.cluster_state import ClusterState
    from extender.node_agent import AgentHealth, agent_registry
    from extender.server import Metrics

    registries: list[CollectorRegistry] = [
        ControllerMetrics().registry,
        Metrics(ClusterState(), clock=lambda: 0.0).registry,
        agent_registry(lambda: AgentHealth(started=0.0)),
    ]
    names: set[str] = set(FAMILIES)  # the extender's state gauges, rendered outside a registry
    for registry in registries:
        for family in registry.collect():
            names |= {family.name + suffix for suffix in _SUFFIXES[family.type]}
    return names


def _rules() -> list[dict[str, Any]]:
    rule = find(render("overlays/with-monitoring"), "PrometheusRule", "gpuscale")
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def _dashboard_exprs() -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in _dashboard()["panels"]
        for target in panel.get("targets", [])
    ]


@needs_promtool
def test_promtool_accepts_the_alert_rules(tmp_path: Path) -> None:
    groups = _rules()
    out = promtool_check_rules(tmp_path, groups)
    assert out.returncode == 0, out.stdout + out.stderr
    count = sum(len(g["rules"]) for g in groups)
    assert f"SUCCESS: {count} rules found" in out.stdout


@needs_promtool
def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    """Guard the guard: promtool must fail on bad PromQL."""
    out = promtool_check_rules(
        tmp_path, [{"name": "x", "rules": [{"alert": "X", "expr": "sum(rate(foo[5m])"}]}]
    )
    assert out.returncode != 0


def test_the_listed_alerts_exist() -> None:
    alerts = {r["alert"] for g in _rules() for r in g["rules"]}
    assert alerts >= {
        "GpuscaleDecisionsStale",
        "GpuscalePrometheusUnreachable",
        "GpuscalePolicyInvalid",
        "GpuscaleExtenderErrors",
        "GpuscalePodsPendingForGpuMemory",
    }


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each dashboard query, wrapped as a recording rule (variables filled)."""
    rules = [
        {"record": f"dashboard:query:{i}", "expr": re.sub(r"\$\{?\w+\}?", ".*", expr)}
        for i, (_title, expr) in enumerate(_dashboard_exprs())
    ]
    out = promtool_check_rules(tmp_path, [{"name": "dashboard", "rules": rules}])
    assert out.returncode == 0, out.stdout + out.stderr


def test_dashboard_has_the_listed_panels_each_with_a_query() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"]
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(set(ids)) == len(ids)
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["refId"]
    names = set().union(*(metric_names(e) for _t, e in _dashboard_exprs()))
    assert {
        "gpuscale_desired_replicas",
        "gpuscale_current_replicas",
        "gpuscale_winning_metric_info",
        "gpuscale_metric_value",
        "gpuscale_metric_target",
        "gpuscale_extender_request_duration_seconds_bucket",
        "gpuscale_extender_filter_failures_total",
        "gpuscale_extender_gpu_memory_free_mib",
    } <= names
    titles = " ".join(p["title"].lower() for p in panels)
    for words in ("desired", "queue", "latency", "filter failures", "gpu memory free"):
        assert words in titles


def test_dashboard_ships_as_a_grafana_sidecar_configmap() -> None:
    cm = find(render("overlays/with-monitoring"), "ConfigMap", "gpuscale-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["gpuscale.json"]) == _dashboard()


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            "time() - max by (namespace, policy) (gpuscale_decision_timestamp_seconds) > 120",
            {"gpuscale_decision_timestamp_seconds"},
        ),
        (
            'sum by (le) (rate(a_bucket{x="y{z}", le!~"b"}[5m])) / on(job) group_left(p) c_info',
            {"a_bucket", "c_info"},
        ),
        ("(sum(up) or vector(0)) < 1 and bool foo offset 5m", {"up", "foo"}),
        (
            'histogram_quantile(0.99, sum(rate(d_bucket{v=~"$verb"}[$__rate_interval])) by (le))',
            {"d_bucket"},
        ),
    ],
)
def test_metric_name_lexer(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_every_metric_used_is_exported_by_the_code() -> None:
    exported = exported_series_names()
    assert "gpuscale_desired_replicas" in exported
    used: dict[str, set[str]] = {}
    for group in _rules():
        for rule in group["rules"]:
            for name in metric_names(rule["expr"]):
                used.setdefault(name, set()).add(f"alert {rule['alert']}")
    for title, expr in _dashboard_exprs():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(f"panel {title!r}")
    missing = {name: sorted(where) for name, where in used.items() if name not in exported}
    assert not missing, f"not exported by the code: {missing}"


def test_label_values_used_exist_in_the_code() -> None:
    """Label values the rules match exactly are ones the code emits."""
    from autoscaler import ops
    from extender.filtering import FAILURE_KINDS

    known = {
        "state": set(ops.POLICY_STATES),
        "reason": set(FAILURE_KINDS),
        # outcomes ControllerMetrics.observe_query is called with
        "outcome": set(re.findall(r'outcome == "(\w+)"', Path(ops.__file__).read_text())),
    }
    assert "error" in known["outcome"]
    exprs = [r["expr"] for g in _rules() for r in g["rules"]]
    exprs += [e for _t, e in _dashboard_exprs()]
    checked = 0
    for expr in exprs:
        for label, value in re.findall(r'\b(state|reason|outcome)="([^"]*)"', expr):
            assert value in known[label], f"{label}={value!r} is never emitted: {expr}"
            checked += 1
    assert checked >= 3


_NAME = st.from_regex(r"[a-z_][a-z0-9_:]{0,20}", fullmatch=True).filter(
    lambda n: n.lower() not in KEYWORDS
)
_VALUE = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters='"\\'), max_size=12
)


@given(
    names=st.lists(_NAME, min_size=1, max_size=3, unique=True),
    label=st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True),
    value=_VALUE,
    agg=st.sampled_from(["sum", "max", "avg"]),
)
def test_metric_name_lexer_finds_exactly_the_selected_series(
    names: list[str], label: str, value: str, agg: str
) -> None:
    """Label values may hold any text (braces, names, keywords); only selectors count."""
    parts = [f'{agg} by ({label}) (rate({name}{{{label}="{value}"}}[5m]))' for name in names]
    assert metric_names(" + on (x) group_left (y) ".join(parts)) == set(names)
