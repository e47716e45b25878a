"""kind end to end for the controller's own contracts on a real API server.

``test_kind_install.py`` proves that deploy/ installs and that an HPA follows a policy; this
module checks what only a real kube-apiserver can: the controller holds its Lease, our HPA keeps
``tolerance: 0`` where the server supports it, an invalid policy is reported (Event + status
annotation) without touching the running HPA, and deleting the policy ConfigMap removes the HPA
(owner reference). Skipped with the reason where docker/kind (or a docker daemon) are absent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from tests.e2e import test_kind_install as install

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
if install._REASON is not None:
    pytestmark.append(pytest.mark.skip(reason=f"kind e2e needs docker and kind: {install._REASON}"))

cluster = install.cluster
kubectl = install.kubectl
NS = "inference"
POLICY = "synthetic"


@pytest.fixture(scope="module")
def installed(cluster: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """deploy/ installed (once per cluster) and the example policy applied."""
    present = kubectl("get", "deployments", "-n", "gpuscale-system", "-o", "name")
    if "gpuscale-controller" not in present:
        kubectl("apply", "-f", "-", input_=yaml.safe_dump_all(install._workloads()))
        install.wait("--for=condition=Available", "-n", "monitoring", "deployment/prometheus")
        install.wait("--for=condition=Available", "-n", NS, "deployment/synthetic")
        install._install(tmp_path_factory.mktemp("install"))
        install.wait(
            "--for=condition=Available", "-n", "gpuscale-system", "deployment/gpuscale-controller"
        )
    kubectl("apply", "-f", "-", input_=yaml.safe_dump(install._policy()))
    install.wait("--for=create", "-n", NS, f"hpa/gpuscale-{POLICY}")
    yield cluster


def _get(kind: str, name: str, namespace: str = NS) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(kubectl("get", kind, name, "-n", namespace, "-o", "json"))
    return result


def _eventually(check: Callable[[], Any], within: float = 120.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        time.sleep(2)


def test_the_controller_holds_its_lease(installed: str) -> None:
    lease = _get("lease", "gpuscale-controller", "gpuscale-system")
    spec = lease["spec"]
    assert str(spec["holderIdentity"]).startswith("gpuscale-controller-")
    assert spec["leaseDurationSeconds"] == 15


def test_hpa_is_ours_and_keeps_tolerance_where_supported(installed: str) -> None:
    hpa = _get("hpa", f"gpuscale-{POLICY}")
    meta = hpa["metadata"]
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "gpuscale"
    (owner,) = meta["ownerReferences"]
    assert owner["kind"] == "ConfigMap" and owner["name"] == POLICY and owner["controller"]
    version = json.loads(kubectl("version", "-o", "json"))["serverVersion"]
    minor = int(str(version["minor"]).rstrip("+"))
    behavior = hpa["spec"]["behavior"]
    if minor >= 35:
        assert behavior["scaleUp"]["tolerance"] == "0"
        assert behavior["scaleDown"]["tolerance"] == "0"
    else:
        assert "tolerance" not in behavior["scaleUp"]


def test_invalid_policy_is_reported_and_the_hpa_stays(installed: str) -> None:
    broken = install._policy()
    broken["data"] = {"policy.yaml": "replicas: {min: 9, max: 2}\n"}
    kubectl("apply", "-f", "-", input_=yaml.safe_dump(broken))

    def reported() -> bool:
        cm = _get("configmap", POLICY)
        text = str((cm["metadata"].get("annotations") or {}).get("gpuscale.io/status", ""))
        return bool(text) and json.loads(text)["state"] == "Invalid"

    _eventually(reported)
    events = json.loads(
        kubectl(
            "get", "events", "-n", NS, "-o", "json",
            "--field-selector", f"involvedObject.name={POLICY},reason=InvalidPolicy",
        )
    )  # fmt: skip
    assert events["items"] and events["items"][0]["type"] == "Warning"
    assert _get("hpa", f"gpuscale-{POLICY}")["spec"]["maxReplicas"] == 5
    kubectl("apply", "-f", "-", input_=yaml.safe_dump(install._policy()))


def test_deleting_the_policy_removes_its_hpa(installed: str) -> None:
    kubectl("delete", "configmap", "-n", NS, POLICY)
    install.wait("--for=delete", "-n", NS, f"hpa/gpuscale-{POLICY}", timeout="120s")
    kubectl("apply", "-f", "-", input_=yaml.safe_dump(install._policy()))
