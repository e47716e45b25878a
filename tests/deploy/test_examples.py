"""The example policies and adapter files: valid, consistent with each other and the code."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gpuscale.cli import main
from policies.parse import load_policy_file
from tests.deploy.manifests import DEPLOY
from tests.deploy.promql import metric_names, needs_promtool, promtool_check_rules
from tests.deploy.test_monitoring import exported_series_names
from tests.deploy.test_render_validate import VERSIONS
from tests.support.inference_server import InferenceServer

EXAMPLES = sorted((DEPLOY / "examples").glob("*.yaml"))
WORKLOADS = sorted((DEPLOY / "examples" / "workloads").glob("*.yaml"))
ADAPTERS = DEPLOY / "adapters"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 2
    assert WORKLOADS


def test_policy_check_passes_on_every_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", *map(str, EXAMPLES)]) == 0
    out = capsys.readouterr().out
    for path in EXAMPLES:
        assert str(path) in out


def test_policy_check_fails_on_a_broken_example(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Guard the guard: the same command rejects a bad field."""
    broken = tmp_path / "broken.yaml"
    source = (DEPLOY / "examples" / "llama-chat.yaml").read_text()
    broken.write_text(source.replace("slo: 2s", "slo: fast", 1))
    assert main(["policy", "check", str(broken)]) == 1
    assert "slo" in capsys.readouterr().err


@pytest.mark.parametrize("path", EXAMPLES + WORKLOADS, ids=lambda p: p.name)
@pytest.mark.parametrize("version", VERSIONS)
def test_examples_are_valid_kubernetes_objects(path: Path, version: str) -> None:
    for doc in _docs(path):
        kubernetes_validate.validate(doc, version, strict=True)


def test_example_policies_are_labelled_configmaps() -> None:
    for path in EXAMPLES:
        (doc,) = _docs(path)
        assert doc["kind"] == "ConfigMap"
        assert doc["metadata"]["labels"]["gpuscale.io/scaling-policy"] == "true"
        assert set(doc["data"]) == {"policy.yaml"}


def test_example_workload_is_scaled_by_a_policy_and_placed_by_gpuscale() -> None:
    targets = {
        (p.namespace, p.target.name) for path in EXAMPLES for p in load_policy_file(str(path))
    }
    for path in WORKLOADS:
        for doc in _docs(path):
            key = (doc["metadata"]["namespace"], doc["metadata"]["name"])
            assert key in targets, f"{path.name}: no example policy scales {key}"
            spec = doc["spec"]["template"]["spec"]
            assert spec["schedulerName"] == "gpuscale"
            limits = spec["containers"][0]["resources"]["limits"]
            assert int(limits["gpuscale.io/gpu-memory"]) > 0


def test_adapter_files_point_at_the_exported_gauge() -> None:
    exported = exported_series_names()
    rules = yaml.safe_load((ADAPTERS / "prometheus-adapter-rules.yaml").read_text())
    (rule,) = rules["externalRules"]
    assert rule["name"]["as"] == "gpuscale_desired_replicas"
    query = rule["metricsQuery"].replace("<<.Series>>", rule["name"]["as"])
    query = query.replace("<<.LabelMatchers>>", 'namespace="inference"')
    assert metric_names(query) <= exported
    assert metric_names(rule["seriesQuery"]) <= exported

    (scaled,) = _docs(ADAPTERS / "keda-scaledobject.yaml")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metricType"] == "AverageValue"
    assert trigger["metadata"]["threshold"] == "1"
    assert trigger["metadata"]["ignoreNullValues"] == "false"  # empty result must not mean 0
    assert metric_names(trigger["metadata"]["query"]) <= exported


@pytest.mark.parametrize("version", VERSIONS)
def test_adapter_hpa_targets_one_replica_per_unit(version: str) -> None:
    (hpa,) = _docs(ADAPTERS / "hpa-for-prometheus-adapter.yaml")
    kubernetes_validate.validate(hpa, version, strict=True)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["external"]["metric"]["name"] == "gpuscale_desired_replicas"
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "1"}


@needs_promtool
def test_adapter_queries_are_valid_promql(tmp_path: Path) -> None:
    rules = yaml.safe_load((ADAPTERS / "prometheus-adapter-rules.yaml").read_text())
    (rule,) = rules["externalRules"]
    adapter = rule["metricsQuery"].replace("<<.Series>>", rule["name"]["as"])
    adapter = adapter.replace("<<.LabelMatchers>>", 'namespace="inference",policy="llama-chat"')
    (scaled,) = _docs(ADAPTERS / "keda-scaledobject.yaml")
    keda = scaled["spec"]["triggers"][0]["metadata"]["query"]
    exprs = [adapter, keda, rule["seriesQuery"]]
    group = {
        "name": "adapters",
        "rules": [{"record": f"adapter:query:{i}", "expr": e} for i, e in enumerate(exprs)],
    }
    out = promtool_check_rules(tmp_path, [group])
    assert out.returncode == 0, out.stdout + out.stderr


def _prestop(port: int) -> str:
    """The drain example's preStop script, aimed at a test server and without its first wait."""
    doc = _docs(DEPLOY / "examples" / "workloads" / "llama-drain-deployment.yaml")[0]
    hook = doc["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]
    script = str(hook["exec"]["command"][-1])
    assert "time.sleep(5)" in script and "127.0.0.1:8000" in script
    return script.replace("time.sleep(5)", "pass").replace("127.0.0.1:8000", f"127.0.0.1:{port}")


async def test_the_drain_hook_waits_for_running_requests_and_then_lets_go(
    inference_server: InferenceServer,
) -> None:
    """Run the preStop script against a server that speaks vLLM's metrics: it keeps waiting
    while a request runs and returns within one poll once none runs or waits."""
    inference_server.set_running(2)
    inference_server.set_waiting(1)
    hook = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _prestop(inference_server.port)
    )
    await asyncio.sleep(3)
    assert hook.returncode is None  # still draining
    inference_server.set_waiting(0)
    inference_server.set_running(0)
    async with asyncio.timeout(10):
        assert await hook.wait() == 0
    gone = await asyncio.create_subprocess_exec(sys.executable, "-c", _prestop(1))  # no server
    async with asyncio.timeout(10):
        assert await gone.wait() == 0
