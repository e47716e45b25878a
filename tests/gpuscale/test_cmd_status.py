"""``gpuscale status``: rows from what the controller writes, the real controller against the
API stand-in, and clear failures when the cluster cannot be reached."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from autoscaler.feedback import STATUS_ANNOTATION, PolicyStatus
from autoscaler.hpa import build_hpa
from autoscaler.overview import policy_row, policy_rows
from gpuscale.cli import main
from policies.parse import policy_to_configmap
from policies.schema import POLICY_LABEL, QueueDepthMetric
from tests.autoscaler.helpers import controller_settings, deployment, make_policy, run_controller
from tests.support.inference_server import InferenceServer
from tests.support.kube_standin import KubeStandIn
from tests.support.prometheus import PrometheusServer

NS = "inference"
SINCE = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def configmap(name: str = "llama", status: PolicyStatus | None = None) -> dict[str, Any]:
    cm = policy_to_configmap(make_policy(name, NS))
    cm["metadata"]["uid"] = f"uid-{name}"
    if status is not None:
        cm["metadata"]["annotations"] = {STATUS_ANNOTATION: status.to_json(SINCE)}
    return cm


def hpa_with(status: dict[str, Any]) -> dict[str, Any]:
    hpa = build_hpa(make_policy("llama", NS), "uid-llama", tolerance=True)
    hpa["status"] = status
    return hpa


def warning(name: str, reason: str, message: str, at: str) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{name}.1", "namespace": NS},
        "involvedObject": {"kind": "ConfigMap", "name": name, "namespace": NS},
        "type": "Warning",
        "reason": reason,
        "message": message,
        "lastTimestamp": at,
    }


def test_an_active_policy_with_the_hpa_count() -> None:
    status = PolicyStatus("Active", "queue 12 → 3", 3, 2, winner="queue")
    row = policy_row(configmap(status=status), hpa_with({"currentReplicas": 3}), [])
    assert (row.state, row.detail, row.target) == ("Active", "Active", "Deployment/llama")
    assert (row.desired, row.current, row.winner, row.missing) == (3, 3, "queue", ())
    assert row.last_error is None and row.since == "2027-01-15T08:00:00Z"
    assert row.hpa == "gpuscale-llama"


@pytest.mark.parametrize("state", ["MetricsUnavailable", "TargetUnavailable"])
def test_unavailable_inputs_show_their_state_with_the_reason(state: Any) -> None:
    status = PolicyStatus(state, "queue: no series", 4, 4, metrics_missing=("queue",))
    row = policy_row(configmap(status=status), None, [])
    assert (row.state, row.detail, row.missing) == (state, state, ("queue",))
    assert row.last_error == "queue: no series" and row.hpa is None


def test_invalid_policy_errors_from_the_annotation_or_the_parser() -> None:
    status = PolicyStatus("Invalid", "nothing runs", errors=("replicas.min: a", "metrics: b"))
    row = policy_row(configmap(status=status), None, [])
    assert row.state == "Invalid" and row.last_error == "replicas.min: a (+1 more)"
    broken = configmap("broken")
    broken["data"]["policy.yaml"] = "apiVersion: gpuscale.io/v1alpha1\nkind: ScalingPolicy\n"
    row = policy_row(broken, None, [])
    assert (row.state, row.detail, row.target) == ("Invalid", "no status yet", "-")
    assert row.last_error is not None and "required field is missing" in row.last_error


def test_no_status_yet_is_pending() -> None:
    row = policy_row(configmap(), None, [])
    assert (row.state, row.desired, row.last_error) == ("Pending", None, None)
    assert "has not reported" in row.reason


def test_hpa_that_cannot_read_our_metric_is_the_last_error() -> None:
    status = PolicyStatus("Active", "ok", 2, 2, winner="queue")
    condition = {
        "type": "ScalingActive",
        "status": "False",
        "reason": "FailedGetExternalMetric",
        "message": "unable to get external metric gpuscale_desired_replicas",
    }
    row = policy_row(configmap(status=status), hpa_with({"conditions": [condition]}), [])
    assert row.state == "Active"
    assert row.last_error == (
        "HPA ScalingActive=False: FailedGetExternalMetric: "
        "unable to get external metric gpuscale_desired_replicas"
    )


def test_only_warnings_since_the_last_status_change_count() -> None:
    status = PolicyStatus("Active", "ok", 2, 2, winner="queue")
    old = warning("llama", "MetricsUnavailable", "queue: no series", "2027-01-15T07:00:00Z")
    new = warning("llama", "HPANotOwned", "HPA gpuscale-llama exists", "2027-01-15T09:00:00Z")
    other = warning("other", "InvalidPolicy", "x", "2027-01-15T10:00:00Z")
    rows = policy_rows([configmap(status=status)], [], [old, other])
    assert rows[0].last_error is None
    rows = policy_rows([configmap(status=status)], [], [old, new, other])
    assert rows[0].last_error == "HPANotOwned: HPA gpuscale-llama exists"


async def _gpuscale(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gpuscale",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.slow
async def test_status_of_a_running_controller(
    kube: KubeStandIn, inference_server: InferenceServer, prometheus: PrometheusServer
) -> None:
    """Real controller, real Prometheus, the stand-in: Active, MetricsUnavailable and Invalid."""
    queue = 'sum(vllm:num_requests_waiting{model_name="llama"})'
    active = make_policy("llama", NS, metrics=(QueueDepthMetric("queue", queue, 4.0),))
    absent = 'sum(vllm:num_requests_waiting{model_name="nobody"})'
    holding = make_policy("ghost", NS, metrics=(QueueDepthMetric("queue", absent, 4.0),))
    broken = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "broken", "namespace": "other", "labels": {POLICY_LABEL: "true"}},
        "data": {"policy.yaml": yaml.safe_dump({"apiVersion": "gpuscale.io/v1alpha1"})},
    }
    for obj in (deployment("llama", NS, 1), deployment("ghost", NS, 1)):
        kube.store.create(obj)
    inference_server.set_waiting(12)
    await prometheus.wait_for_value(queue, lambda v: v == 12)
    assert kube.kubeconfig_path is not None
    settings = controller_settings(prometheus.url, kube.kubeconfig_path, None)
    kubeconfig = str(kube.kubeconfig_path)
    async with run_controller(settings):
        for obj in (policy_to_configmap(active), policy_to_configmap(holding), broken):
            kube.store.create(obj)

        def reported(state: str) -> Any:
            return lambda cm: (
                state in (cm["metadata"].get("annotations") or {}).get(STATUS_ANNOTATION, "")
            )

        await kube.wait_for_object("configmaps", NS, "llama", reported('"desiredReplicas":3'))
        # Play the HPA once: the Deployment follows, and the decision settles at 3 of 3.
        kube.store.patch("deployments", NS, "llama", {"spec": {"replicas": 3}})
        await kube.wait_for_object(
            "configmaps", NS, "llama", reported('"currentReplicas":3,"desiredReplicas":3')
        )
        await kube.wait_for_object("configmaps", NS, "ghost", reported("MetricsUnavailable"))
        await kube.wait_for_object("configmaps", "other", "broken", reported("Invalid"))
        await kube.wait_for_object("horizontalpodautoscalers", NS, "gpuscale-llama")

        code, out, err = await _gpuscale("status", "--kubeconfig", kubeconfig, "-o", "json")
        assert code == 0, err
        rows = {f"{r['namespace']}/{r['name']}": r for r in json.loads(out)}
        assert list(rows) == ["inference/ghost", "inference/llama", "other/broken"]
        llama = rows["inference/llama"]
        assert (llama["state"], llama["target"], llama["desiredReplicas"]) == (
            "Active",
            "Deployment/llama",
            3,
        )
        assert llama["winningMetric"] == "queue" and llama["hpa"] == "gpuscale-llama"
        ghost = rows["inference/ghost"]
        assert (ghost["state"], ghost["missingMetrics"]) == ("MetricsUnavailable", ["queue"])
        assert ghost["lastError"]
        bad = rows["other/broken"]
        assert bad["state"] == "Invalid" and "required field is missing" in bad["lastError"]

        code, out, _ = await _gpuscale("status", "--kubeconfig", kubeconfig, "-n", NS)
        assert code == 0
        header, *lines = out.splitlines()
        assert header.split()[:4] == ["POLICY", "TARGET", "STATE", "DESIRED"]
        assert [line.split()[:5] for line in lines] == [
            ["inference/ghost", "Deployment/ghost", "MetricsUnavailable", "1", "1"],
            ["inference/llama", "Deployment/llama", "Active", "3", "3"],
        ]
        code, out, _ = await _gpuscale("status", "--kubeconfig", kubeconfig, "-o", "wide")
        assert code == 0 and "CONTROLLER STATE" in out and "MetricsUnavailable" in out


def _dead_kubeconfig(tmp_path: Path) -> Path:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


def test_unreachable_cluster_is_a_message_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--kubeconfig", str(_dead_kubeconfig(tmp_path))]) == 1
    err = capsys.readouterr().err
    assert "gpuscale status: cannot reach the Kubernetes API at http://127.0.0.1:" in err
    assert "Traceback" not in err


def test_missing_kubeconfig_is_a_message_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--kubeconfig", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert f"gpuscale status: --kubeconfig: no such file: {tmp_path / 'none'}" in err
    assert "Traceback" not in err


def test_no_kubeconfig_outside_a_pod_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["status"]) == 1
    err = capsys.readouterr().err
    assert "no kubeconfig ($KUBECONFIG, ~/.kube/config) and not running in a pod" in err
    assert "Traceback" not in err


async def test_forbidden_names_the_api_and_rbac(kube: KubeStandIn) -> None:
    kube.faults.fail("GET", "/api/v1/configmaps", status=403, times=None, message="forbidden")
    assert kube.kubeconfig_path is not None
    code, _, err = await _gpuscale("status", "--kubeconfig", str(kube.kubeconfig_path))
    assert code == 1
    assert f"the Kubernetes API at {kube.url} answered 403" in err and "RBAC" in err
    assert "Traceback" not in err
