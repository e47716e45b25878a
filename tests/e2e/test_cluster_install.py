"""Scenario 1, install: the real kube-apiserver accepts ``deploy/`` and enforces its RBAC.

Every object the ca-bundle overlay renders is applied server-side (field validation ``Strict``
is kubectl's default) and read back. Each Kubernetes call found in gpuscale's source is allowed
for the ServiceAccount that runs it by the real authorizer (a SubjectAccessReview, so built-in
roles such as ``system:auth-delegator`` count too), and calls outside the roles are refused, both
as reviews and as real requests made with the ServiceAccount's own token.
"""

from __future__ import annotations

import pytest

from tests.deploy.test_rbac_covers_code import _OPT_IN, ACCOUNTS, account_calls
from tests.e2e.cluster import ControlPlane
from tests.e2e.install import NAMESPACE, Installed

pytestmark = [pytest.mark.cluster]


def _path(obj: dict[str, object]) -> str:
    api_version = str(obj["apiVersion"])
    meta = obj["metadata"]
    assert isinstance(meta, dict)
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    plural = {
        "APIService": "apiservices",
        "ClusterRole": "clusterroles",
        "ClusterRoleBinding": "clusterrolebindings",
        "ConfigMap": "configmaps",
        "DaemonSet": "daemonsets",
        "Deployment": "deployments",
        "FlowSchema": "flowschemas",
        "Namespace": "namespaces",
        "NetworkPolicy": "networkpolicies",
        "PodDisruptionBudget": "poddisruptionbudgets",
        "Role": "roles",
        "RoleBinding": "rolebindings",
        "Secret": "secrets",
        "Service": "services",
        "ServiceAccount": "serviceaccounts",
    }[str(obj["kind"])]
    ns = meta.get("namespace")
    return (
        f"{base}/namespaces/{ns}/{plural}/{meta['name']}"
        if ns
        else f"{base}/{plural}/{meta['name']}"
    )


def test_every_rendered_object_is_stored(installed: Installed) -> None:
    kinds = {o["kind"] for o in installed.objects}
    assert {"APIService", "Deployment", "DaemonSet", "ClusterRole", "NetworkPolicy"} <= kinds
    for obj in installed.objects:
        status, body = installed.cp.request("GET", _path(obj))
        assert status == 200, f"{obj['kind']} {obj['metadata']['name']}: {status} {body}"
        assert body["metadata"]["name"] == obj["metadata"]["name"]


def test_apiservice_carries_the_ca_bundle(installed: Installed) -> None:
    status, body = installed.cp.request(
        "GET", "/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.external.metrics.k8s.io"
    )
    assert status == 200
    assert body["spec"]["service"] == {
        "name": "gpuscale-controller",
        "namespace": NAMESPACE,
        "port": 443,
    }
    assert body["spec"]["caBundle"], "the ca-bundle overlay must fill spec.caBundle"
    assert not body["spec"].get("insecureSkipTLSVerify")


def _review(cp: ControlPlane, account: str, verb: str, group: str, resource: str) -> bool:
    plural, _, sub = resource.partition("/")
    # Leader-election Leases live in gpuscale's own namespace; the rest is where workloads are.
    where = NAMESPACE if plural == "leases" else "inference"
    attrs = {"verb": verb, "group": group, "resource": plural, "namespace": where}
    if plural == "leases" and verb != "create":
        attrs["name"] = account  # each Lease is granted by name: the account's own
    if sub:
        attrs["subresource"] = sub
    if plural in {"nodes", "namespaces"}:
        attrs.pop("namespace")
    status, body = cp.request(
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": f"system:serviceaccount:{NAMESPACE}:{account}",
                "groups": [
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{NAMESPACE}",
                    "system:authenticated",
                ],
                "resourceAttributes": attrs,
            },
        },
    )
    assert status == 201, body
    return bool(body["status"].get("allowed"))


@pytest.mark.parametrize("account", ACCOUNTS)
def test_the_real_authorizer_allows_every_call_in_the_code(
    installed: Installed, account: str
) -> None:
    calls = account_calls(account)
    assert calls, f"no API calls found for {account}"
    if account == "gpuscale-controller":
        calls -= set(_OPT_IN)  # granted only by their opt-in components
    denied = [c for c in sorted(calls) if not _review(installed.cp, account, *c)]
    assert not denied, f"{account} is refused {denied} by the installed RBAC"


@pytest.mark.parametrize(
    ("account", "verb", "group", "resource"),
    [
        ("gpuscale-controller", "get", "", "secrets"),
        ("gpuscale-controller", "list", "", "secrets"),
        ("gpuscale-controller", "delete", "apps", "deployments"),
        ("gpuscale-controller", "update", "apps", "deployments"),
        ("gpuscale-controller", "patch", "", "pods"),  # only with components/pod-deletion-cost
        ("gpuscale-scheduler", "update", "apps", "deployments"),
        ("gpuscale-scheduler", "get", "", "secrets"),
        ("gpuscale-node-agent", "delete", "", "nodes"),
        ("gpuscale-node-agent", "list", "", "pods"),
    ],
)
def test_calls_outside_the_roles_are_refused(
    installed: Installed, account: str, verb: str, group: str, resource: str
) -> None:
    assert not _review(installed.cp, account, verb, group, resource)


def test_service_account_tokens_are_refused_outside_their_roles(installed: Installed) -> None:
    cp = installed.cp
    token = cp.service_account_token(NAMESPACE, "gpuscale-controller")
    status, body = cp.request("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets", token=token)
    assert status == 403, body
    assert body["reason"] == "Forbidden"
    status, body = cp.request(
        "DELETE",
        f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/gpuscale-controller",
        token=token,
    )
    assert status == 403, body
    # ... while what it needs works with the same token.
    status, body = cp.request(
        "GET",
        "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication",
        token=token,
    )
    assert status == 200, body
    assert "requestheader-client-ca-file" in body["data"]
