"""The Helm chart installed by a real helm into a real control plane of its own.

A second control plane (so the chart's cluster-scoped objects do not meet the kustomize
install's) gets ``helm install`` of ``deploy/helm/gpuscale`` with a CA bundle of our own, as a
cluster without cert-manager would. Then the same checks as the kustomize install: every
object is stored, the APIService carries the CA, each Kubernetes call in gpuscale's source is
allowed for its ServiceAccount by the real authorizer and calls outside the roles are refused.
``helm uninstall`` leaves no cluster-scoped object behind.
"""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.test_helm import HELM
from tests.deploy.test_rbac_covers_code import _OPT_IN, ACCOUNTS, account_calls
from tests.e2e.cluster import ControlPlane
from tests.e2e.install import NAMESPACE, REPO, ServingCert
from tests.e2e.test_cluster_install import _path, _review

pytestmark = [pytest.mark.cluster]

CHART = REPO / "deploy" / "helm" / "gpuscale"
RELEASE = "gpuscale"


def helm(cp: ControlPlane, *args: str, home_name: str = "helm-home") -> str:
    """Run the cached helm against ``cp`` as admin, with its own cache/config/data folders."""
    home = cp.workdir / home_name
    env = {
        **os.environ,
        "KUBECONFIG": str(cp.admin_kubeconfig),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    out = subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    if out.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({out.returncode}):\n{out.stderr}")
    return out.stdout


@pytest.fixture(scope="module")
def helm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    if not HELM.is_file():
        pytest.fail(f"{HELM} not built: run `make helm`")
    cp = ControlPlane(Path(tmp_path_factory.mktemp("helm-cluster")))
    try:
        cp.start()
        cert = ServingCert.make(cp.workdir / "serving")
        ca = base64.b64encode(cert.ca.read_bytes()).decode()
        helm(
            cp,
            "install",
            RELEASE,
            str(CHART),
            f"--namespace={NAMESPACE}",
            "--create-namespace",
            "--set=tls.source=caBundle",
            f"--set=tls.caBundle={ca}",
        )
        yield cp
    finally:
        cp.stop()


def _manifest(cp: ControlPlane) -> list[dict[str, Any]]:
    text = helm(cp, "get", "manifest", RELEASE, f"--namespace={NAMESPACE}")
    return [d for d in yaml.safe_load_all(text) if d]


def test_helm_install_is_stored_object_by_object(helm_cluster: ControlPlane) -> None:
    status = helm(helm_cluster, "status", RELEASE, f"--namespace={NAMESPACE}", "-o", "json")
    assert '"status":"deployed"' in status.replace(" ", "")
    objects = _manifest(helm_cluster)
    kinds = {o["kind"] for o in objects}
    assert {"APIService", "Deployment", "DaemonSet", "ClusterRole", "RoleBinding"} <= kinds
    for obj in objects:
        if _namespaced(obj):
            obj["metadata"].setdefault("namespace", NAMESPACE)
        code, body = helm_cluster.request("GET", _path(obj))
        assert code == 200, f"{obj['kind']} {obj['metadata']['name']}: {code} {body}"
    code, body = helm_cluster.request(
        "GET", "/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.external.metrics.k8s.io"
    )
    assert code == 200 and body["spec"]["caBundle"], body


def _namespaced(obj: dict[str, Any]) -> bool:
    return obj["kind"] not in {
        "APIService",
        "ClusterRole",
        "ClusterRoleBinding",
        "FlowSchema",
        "Namespace",
    }


@pytest.mark.parametrize("account", ACCOUNTS)
def test_the_charts_rbac_allows_every_call_in_the_code(
    helm_cluster: ControlPlane, account: str
) -> None:
    calls = account_calls(account)
    if account == "gpuscale-controller":
        calls -= set(_OPT_IN)  # granted only by their opt-in values (controller.podDeletionCost)
        for call in _OPT_IN:
            assert not _review(helm_cluster, account, *call), f"{call} granted by default"
    denied = [c for c in sorted(calls) if not _review(helm_cluster, account, *c)]
    assert not denied, f"{account} is refused {denied} by the chart's RBAC"
    assert not _review(helm_cluster, "gpuscale-controller", "get", "", "secrets")
    assert not _review(helm_cluster, "gpuscale-node-agent", "delete", "", "nodes")


def test_helm_uninstall_leaves_no_cluster_object(helm_cluster: ControlPlane) -> None:
    cluster_scoped = [o for o in _manifest(helm_cluster) if not _namespaced(o)]
    assert cluster_scoped
    helm(helm_cluster, "uninstall", RELEASE, f"--namespace={NAMESPACE}", "--wait")
    for obj in cluster_scoped:
        code, _ = helm_cluster.request("GET", _path(obj))
        assert code == 404, f"{obj['kind']} {obj['metadata']['name']} left behind"
