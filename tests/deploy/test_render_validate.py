"""Every rendered object validates against the Kubernetes OpenAPI schemas of two releases."""

from __future__ import annotations

import base64
import copy
import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import trustme
from kubernetes_validate.utils import all_versions, major_minor

from tests.deploy.manifests import (
    CRD_KINDS,
    DEPLOY,
    TREES,
    Obj,
    find,
    ident,
    render,
    render_dir,
    write_extender_pems,
)


def _minor(version: str) -> tuple[int, int]:
    major, minor = major_minor(version).split(".")
    return int(major), int(minor)


# The newest release kubernetes-validate knows and one about two years older (three minor
# releases a year).
_KNOWN = sorted({_minor(v) for v in all_versions()})
NEWEST = _KNOWN[-1]
OLDER = (NEWEST[0], NEWEST[1] - 6)
VERSIONS = [f"{NEWEST[0]}.{NEWEST[1]}", f"{OLDER[0]}.{OLDER[1]}"]


def test_two_versions_are_known_to_the_validator() -> None:
    assert OLDER in _KNOWN, f"kubernetes-validate lacks {OLDER}; it knows {_KNOWN}"
    assert NEWEST[1] - OLDER[1] >= 6


def _validate(obj: Obj, version: str) -> None:
    kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("tree", TREES)
def test_core_objects_validate_strictly(tree: str, version: str) -> None:
    errors = []
    for obj in render(tree):
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            continue  # not in the core schemas: see test_crd_objects_are_well_formed
        try:
            _validate(obj, version)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{ident(obj)}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{ident(obj)}: {exc.message}")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("version", VERSIONS)
def test_strict_validation_rejects_an_unknown_field(version: str) -> None:
    """Guard the guard: a misspelt field must fail, or the test above proves nothing."""
    deployment = copy.deepcopy(find(render(), "Deployment", "gpuscale-controller"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFilesystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(deployment, version)


def test_every_tree_installs_into_gpuscale_system_or_kube_system() -> None:
    for tree in TREES:
        for obj in render(tree):
            ns = obj["metadata"].get("namespace")
            if obj["kind"] in {
                "Namespace",
                "ClusterRole",
                "ClusterRoleBinding",
                "APIService",
                "FlowSchema",
            }:
                assert ns is None, ident(obj)
            elif obj["kind"] == "RoleBinding" and ns == "kube-system":
                ref = obj["roleRef"]["name"]
                assert ref == "extension-apiserver-authentication-reader", ident(obj)
            else:
                assert ns == "gpuscale-system", ident(obj)


def test_everything_is_labelled_part_of_gpuscale() -> None:
    for tree in TREES:
        for obj in render(tree):
            labels = obj["metadata"].get("labels", {})
            assert labels.get("app.kubernetes.io/part-of") == "gpuscale", ident(obj)


def test_crd_objects_are_well_formed() -> None:
    """Structural checks for the CRD kinds kubernetes-validate cannot know."""
    objs = render("overlays/with-monitoring")
    kinds = {(o["apiVersion"], o["kind"]) for o in objs}
    assert kinds >= CRD_KINDS
    services = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Service"}
    deployments = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Deployment"}

    issuers = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Issuer"}
    certs = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Certificate"}
    for cert in certs.values():
        assert set(cert) == {"apiVersion", "kind", "metadata", "spec"}
        assert cert["spec"]["issuerRef"]["kind"] == "Issuer"
        assert cert["spec"]["issuerRef"]["name"] in issuers
        assert cert["spec"]["secretName"]
    for issuer in issuers.values():
        spec = issuer["spec"]
        assert len(spec) == 1 and next(iter(spec)) in {"selfSigned", "ca"}, ident(issuer)
        if "ca" in spec:
            secrets = {c["spec"]["secretName"] for c in certs.values() if c["spec"].get("isCA")}
            assert spec["ca"]["secretName"] in secrets

    serving = certs["gpuscale-controller"]
    assert "gpuscale-controller.gpuscale-system.svc" in serving["spec"]["dnsNames"]
    mounted = deployments["gpuscale-controller"]["spec"]["template"]["spec"]["volumes"]
    assert {
        "name": "tls",
        "secret": {"secretName": serving["spec"]["secretName"], "defaultMode": 0o440},
    } in mounted
    apiservice = find(objs, "APIService", "v1beta1.external.metrics.k8s.io")
    assert apiservice["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        "gpuscale-system/gpuscale-controller"
    )

    for monitor in (o for o in objs if o["kind"] == "ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        matching = [
            s
            for s in services.values()
            if selector.items() <= s["metadata"].get("labels", {}).items()
        ]
        assert matching, f"{ident(monitor)} selects no Service"
        for endpoint in monitor["spec"]["endpoints"]:
            ports = {p["name"] for s in matching for p in s["spec"]["ports"]}
            assert endpoint["port"] in ports, ident(monitor)
            # the series' own `namespace` label (the policy's) must survive the scrape
            assert endpoint["honorLabels"] is True
    for monitor in (o for o in objs if o["kind"] == "PodMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        pods = [
            d["spec"]["template"]
            for d in objs
            if d["kind"] in ("Deployment", "DaemonSet")
            and selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert pods, f"{ident(monitor)} selects no pods"
        ports = {
            p["name"] for t in pods for c in t["spec"]["containers"] for p in c.get("ports", [])
        }
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert endpoint["port"] in ports, ident(monitor)
    rules = find(objs, "PrometheusRule", "gpuscale")
    for group in rules["spec"]["groups"]:
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_default_install_never_skips_tls_verification() -> None:
    for tree in TREES:
        if tree == "overlays/prometheus-actuation":
            continue  # registers no APIService: see the next test
        apiservice = find(render(tree), "APIService", "v1beta1.external.metrics.k8s.io")
        assert not apiservice["spec"].get("insecureSkipTLSVerify", False)
        assert apiservice["spec"]["service"] == {
            "name": "gpuscale-controller",
            "namespace": "gpuscale-system",
            "port": 443,
        }


def test_ca_bundle_overlay_trusts_exactly_the_given_ca(tmp_path: Path) -> None:
    """The documented alternative to cert-manager: caBundle comes from the user's ca.crt."""
    tree = tmp_path / "deploy"
    shutil.copytree(DEPLOY, tree)
    overlay = tree / "overlays" / "ca-bundle"
    ca = trustme.CA()
    leaf = ca.issue_cert("gpuscale-controller.gpuscale-system.svc")
    ca.cert_pem.write_to_path(str(overlay / "ca.crt"))
    leaf.cert_chain_pems[0].write_to_path(str(overlay / "tls.crt"))
    leaf.private_key_pem.write_to_path(str(overlay / "tls.key"))
    write_extender_pems(overlay, ca)

    objs = render_dir(overlay)
    apiservice = find(objs, "APIService", "v1beta1.external.metrics.k8s.io")
    bundle: Any = apiservice["spec"]["caBundle"]
    assert base64.b64decode("".join(bundle.split())) == ca.cert_pem.bytes()
    assert "annotations" not in apiservice["metadata"]
    assert not apiservice["spec"].get("insecureSkipTLSVerify", False)
    secret = find(objs, "Secret", "gpuscale-controller-tls")
    assert secret["type"] == "kubernetes.io/tls"
    assert base64.b64decode(secret["data"]["tls.key"]) == leaf.private_key_pem.bytes()
    assert not [o for o in objs if o["apiVersion"].startswith("cert-manager.io/")]
    for name in ("gpuscale-extender-tls", "gpuscale-scheduler-client-tls"):
        pair = find(objs, "Secret", name)
        assert pair["type"] == "kubernetes.io/tls"
        assert base64.b64decode(pair["data"]["ca.crt"]) == ca.cert_pem.bytes()
    for version in VERSIONS:
        for obj in objs:
            _validate(obj, version)


def test_prometheus_actuation_leaves_the_external_metrics_api_alone() -> None:
    """Where KEDA or prometheus-adapter owns the APIService, we neither replace nor serve it."""
    objs = render("overlays/prometheus-actuation")
    assert not [o for o in objs if o["kind"] == "APIService"]
    names = {o["metadata"]["name"] for o in objs}
    assert "gpuscale-external-metrics-reader" not in names
    assert "gpuscale-controller:system:auth-delegator" not in names
    role = find(objs, "ClusterRole", "gpuscale-controller")
    assert not [r for r in role["rules"] if "horizontalpodautoscalers" in r["resources"]]
    pod = find(objs, "Deployment", "gpuscale-controller")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "--actuation=prometheus" in container["args"]
    assert not [a for a in container["args"] if a.startswith("--tls")]
    assert [p["name"] for p in container["ports"]] == ["ops"]
    assert "tls" not in {v["name"] for v in pod["volumes"]}
    assert "tls" not in {m["name"] for m in container["volumeMounts"]}
    service = find(objs, "Service", "gpuscale-controller")
    assert [p["name"] for p in service["spec"]["ports"]] == ["ops"]
    # Prometheus must scrape the gauge with its own namespace label.
    monitor = find(objs, "ServiceMonitor", "gpuscale-controller")
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True


def test_front_proxy_component_makes_the_controller_require_client_certificates(
    tmp_path: Path,
) -> None:
    tree = tmp_path / "deploy"
    shutil.copytree(DEPLOY, tree)
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tree / "components/front-proxy-ca/front-proxy-ca.crt"))
    overlay = tree / "overlays" / "hardened"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "resources: [../../base]\n"
        "components: [../../components/cert-manager, ../../components/front-proxy-ca]\n"
    )
    objs = render_dir(overlay)
    pod = find(objs, "Deployment", "gpuscale-controller")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    flag = "--requestheader-client-ca-file="
    (arg,) = [a for a in container["args"] if a.startswith(flag)]
    path = Path(arg.removeprefix(flag))
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent)]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    cm = find(objs, "ConfigMap", volume["configMap"]["name"])
    assert cm["data"][path.name] == ca.cert_pem.bytes().decode()
    assert "--requestheader-allowed-names=front-proxy-client" in container["args"]
    for version in VERSIONS:
        for obj in objs:
            if (obj["apiVersion"], obj["kind"]) not in CRD_KINDS:
                _validate(obj, version)
