"""The Helm chart (deploy/helm/gpuscale), checked with a real helm built from its Go module.

The default render must carry the same objects, field for field, as the kustomize install
(`kubectl kustomize deploy/`), and each option the same as the matching overlay; the only
differences allowed are Helm's own labels, the scheduler ConfigMap's name hash (the chart rolls
pods through a checksum annotation instead) and the Namespace (the chart leaves it to
`--create-namespace` unless namespace.create). Every render passes `helm lint`, strict
Kubernetes schema validation and the security settings of tests/deploy/test_security.py.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import os
import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.deploy.manifests import (
    CRD_KINDS,
    DEPLOY,
    NAMESPACE,
    Obj,
    find,
    ident,
    render,
    render_with_component,
)
from tests.deploy.test_render_validate import VERSIONS

CHART = DEPLOY / "helm" / "gpuscale"
HELM_VERSION = os.environ.get("HELM_VERSION", "v3.22.0")
CACHE = Path(
    os.environ.get("GPUSCALE_CLUSTER_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpuscale" / "cluster"
)
HELM = CACHE / f"helm-{HELM_VERSION}" / "helm"
HELM_LABELS = {
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
}
_HASHED = re.compile(r"^(gpuscale-scheduler-config)-[a-z0-9]{10}$")
COPIES = {
    "files/prometheusrule.yaml": DEPLOY / "monitoring" / "prometheusrule.yaml",
    "files/dashboard.json": DEPLOY / "monitoring" / "dashboard.json",
    "files/node-agent-admission.yaml": DEPLOY / "components/node-agent-admission/policy.yaml",
}

pytestmark = pytest.mark.skipif(
    not HELM.is_file(), reason=f"{HELM} not built: run `make helm` (tests/cluster/build_helm.sh)"
)


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HELM_CACHE_HOME": "/nonexistent", "HELM_CONFIG_HOME": "/nonexistent"}
    return subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, check=False, env=env, timeout=120
    )


def _set_args(values: tuple[tuple[str, str], ...]) -> list[str]:
    return [a for k, v in values for a in ("--set", f"{k}={v}")]


@functools.cache
def _template(values: tuple[tuple[str, str], ...]) -> tuple[Obj, ...]:
    out = helm("template", "gpuscale", str(CHART), "-n", NAMESPACE, *_set_args(values))
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def template(**values: str) -> list[Obj]:
    """`helm template` with ``--set key=value`` (``__`` in a keyword stands for ``.``)."""
    return copy.deepcopy(
        list(_template(tuple((k.replace("__", "."), v) for k, v in values.items())))
    )


def normalise(objs: list[Obj]) -> dict[str, Obj]:
    """Objects by identity, with what legitimately differs between the two renders removed."""
    out: dict[str, Obj] = {}
    for obj in copy.deepcopy(objs):
        meta = obj["metadata"]
        labels = {k: v for k, v in (meta.get("labels") or {}).items() if k not in HELM_LABELS}
        if labels:
            meta["labels"] = labels
        else:
            meta.pop("labels", None)
        meta["name"] = _HASHED.sub(r"\1", meta["name"])
        if obj["kind"] == "ConfigMap":
            obj["data"] = {
                k: json.loads(v) if k.endswith(".json") else yaml.safe_load(v)
                for k, v in obj["data"].items()
            }
        if obj["kind"] == "ValidatingAdmissionPolicy":
            # kustomize re-folds `>-` scalars with more-indented lines, adding a blank line
            # inside the CEL; whitespace means nothing to CEL.
            for item in (*obj["spec"]["validations"], *obj["spec"].get("matchConditions", [])):
                item["expression"] = " ".join(item["expression"].split())
        if obj["kind"] in ("Deployment", "DaemonSet"):
            template_ = obj["spec"]["template"]
            annotations = template_["metadata"].pop("annotations", {})
            annotations.pop("checksum/config", None)
            if annotations:
                template_["metadata"]["annotations"] = annotations
            for volume in template_["spec"].get("volumes", []):
                if "configMap" in volume:
                    volume["configMap"]["name"] = _HASHED.sub(r"\1", volume["configMap"]["name"])
        out[ident(obj)] = obj
    return out


def assert_same(
    chart: list[Obj], kustomize: list[Obj], *, without: frozenset[str] = frozenset()
) -> None:
    ours, theirs = normalise(chart), normalise(kustomize)
    for key in without:
        theirs.pop(key)
    assert sorted(ours) == sorted(theirs)
    for key in ours:
        assert ours[key] == theirs[key], f"{key} differs from the kustomize tree"


# -- helm itself -------------------------------------------------------------------------------


def test_helm_is_the_pinned_release() -> None:
    out = helm("version", "--short")
    assert out.returncode == 0 and out.stdout.startswith(HELM_VERSION), out.stdout


OPTIONS: list[dict[str, str]] = [
    {},
    {"actuation": "prometheus"},
    {"actuation": "prometheus", "monitoring.enabled": "true"},
    {"tls.source": "caBundle", "tls.caBundle": base64.b64encode(b"PEM").decode()},
    {"monitoring.enabled": "true"},
    {"nodeAgent.enabled": "false"},
    {"nodeAgent.enabled": "false", "monitoring.enabled": "true"},
    {"nodeAgent.admissionPolicy": "true"},
    {"namespace.create": "true"},
    {"image.repository": "registry.example/gpuscale", "image.tag": "1.2.3"},
    {"controller.replicas": "3", "scheduler.replicas": "1"},
    {"controller.resources.limits.memory": "1Gi", "nodeAgent.resources.requests.cpu": "20m"},
    {"scheduler.extender.scoring": "fragmentation"},
    {
        "scheduler.extender.inventory": "{dcgm,annotation}",
        "scheduler.extender.prometheusUrl": "http://prometheus.monitoring:9090",
    },
    {"controller.prometheusUrl": "http://prom.obs.svc:9090"},
    {"controller.nodeSelector.pool": "ops", "scheduler.tolerations[0].operator": "Exists"},
]


def _option_id(values: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in values.items()) or "defaults"


@pytest.mark.parametrize("values", OPTIONS, ids=_option_id)
def test_helm_lint(values: dict[str, str]) -> None:
    out = helm("lint", "--strict", str(CHART), "-n", NAMESPACE, *_set_args(tuple(values.items())))
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("values", OPTIONS, ids=_option_id)
def test_every_render_validates_strictly(values: dict[str, str], version: str) -> None:
    objs = template(**{k.replace(".", "__"): v for k, v in values.items()})
    errors = []
    for obj in objs:
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{ident(obj)}: {'.'.join(map(str, exc.path))}: {exc.message}")
    assert not errors, "\n".join(errors)
    for obj in objs:
        if obj["kind"] not in ("Deployment", "DaemonSet"):
            continue
        spec = obj["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, ident(obj)
        for c in spec["containers"]:
            ctx = c["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, ident(obj)
            assert ctx["readOnlyRootFilesystem"] is True and ctx["capabilities"] == {
                "drop": ["ALL"]
            }, ident(obj)
            assert c["resources"]["requests"] and c["resources"]["limits"], ident(obj)
            assert c["livenessProbe"]["httpGet"]["path"] == "/livez", ident(obj)
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", ident(obj)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"actuation": "keda"}, "actuation: expected hpa or prometheus"),
        ({"tls.source": "vault"}, "tls.source: expected cert-manager or caBundle"),
        ({"tls.source": "caBundle"}, "tls.caBundle: required"),
        ({"scheduler.extender.scoring": "best"}, "scheduler.extender.scoring: expected"),
        ({"scheduler.extender.inventory": "{nvml}"}, 'unknown source "nvml"'),
        ({"scheduler.extender.inventory": "{dcgm}"}, "prometheusUrl: required"),
        ({"nodeAgent.devicePlugin.enabled": "true"}, "would hand out the same GPUs"),
    ],
)
def test_bad_values_fail_with_the_value_named(values: dict[str, str], message: str) -> None:
    out = helm("template", "gpuscale", str(CHART), *_set_args(tuple(values.items())))
    assert out.returncode != 0 and message in out.stderr, out.stderr


def test_chart_files_are_copies_of_deploy() -> None:
    for name, source in COPIES.items():
        assert (CHART / name).read_bytes() == source.read_bytes(), (
            f"{CHART / name} differs from {source}: cp {source} {CHART / name}"
        )


# -- the same objects as the kustomize tree ----------------------------------------------------

NS_OBJECT = f"Namespace/{NAMESPACE}"


def test_default_render_is_the_kustomize_install() -> None:
    assert_same(template(), render(""), without=frozenset({NS_OBJECT}))


def test_namespace_create_adds_the_restricted_namespace() -> None:
    assert_same(template(namespace__create="true"), render(""))


def test_monitoring_is_the_with_monitoring_overlay() -> None:
    assert_same(
        template(monitoring__enabled="true"),
        render("overlays/with-monitoring"),
        without=frozenset({NS_OBJECT}),
    )


def test_prometheus_actuation_is_its_overlay() -> None:
    chart = template(actuation="prometheus", monitoring__enabled="true")
    assert_same(chart, render("overlays/prometheus-actuation"), without=frozenset({NS_OBJECT}))


def test_admission_policy_is_the_component(tmp_path: Path) -> None:
    rendered = render_with_component("node-agent-admission", tmp_path)
    assert_same(
        template(nodeAgent__admissionPolicy="true"),
        rendered,
        without=frozenset({NS_OBJECT}),
    )


def test_device_plugin_is_the_component(tmp_path: Path) -> None:
    rendered = render_with_component("device-plugin", tmp_path)
    assert_same(
        template(
            namespace__create="true",
            nodeAgent__devicePlugin__enabled="true",
            nodeAgent__devicePlugin__nvidiaDevicePluginOnSameNodes="false",
        ),
        rendered,
    )


def test_pod_deletion_cost_is_the_component(tmp_path: Path) -> None:
    rendered = render_with_component("pod-deletion-cost", tmp_path)
    assert_same(
        template(controller__podDeletionCost="true"),
        rendered,
        without=frozenset({NS_OBJECT}),
    )


def test_ca_bundle_trusts_the_given_ca_and_needs_no_cert_manager() -> None:
    ca = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n").decode()
    objs = template(tls__source="caBundle", tls__caBundle=ca)
    kinds = {o["kind"] for o in objs}
    assert not kinds & {"Issuer", "Certificate"}
    api = find(objs, "APIService", "v1beta1.external.metrics.k8s.io")
    assert api["spec"]["caBundle"] == ca and "insecureSkipTLSVerify" not in api["spec"]
    assert "annotations" not in api["metadata"]
    # Otherwise the cert-manager install, minus its certificates and CA injection.
    default = normalise(template())
    for key, obj in normalise(objs).items():
        if key == "APIService/v1beta1.external.metrics.k8s.io":
            continue
        assert obj == default[key], key


def test_without_the_node_agent_nothing_of_it_is_installed() -> None:
    objs = template(nodeAgent__enabled="false", monitoring__enabled="true")
    assert not [ident(o) for o in objs if "node-agent" in o["metadata"]["name"]]
    with_agent = normalise(template(monitoring__enabled="true"))
    without = normalise(objs)
    assert set(with_agent) - set(without) == {
        f"ServiceAccount/{NAMESPACE}/gpuscale-node-agent",
        "ClusterRole/gpuscale-node-agent",
        "ClusterRoleBinding/gpuscale-node-agent",
        f"DaemonSet/{NAMESPACE}/gpuscale-node-agent",
        f"NetworkPolicy/{NAMESPACE}/gpuscale-node-agent",
        f"PodMonitor/{NAMESPACE}/gpuscale-node-agent",
    }


def _args(objs: list[Obj], kind: str, name: str, container: str) -> list[str]:
    pod = find(objs, kind, name)["spec"]["template"]["spec"]
    [c] = [c for c in pod["containers"] if c["name"] == container]
    args: list[str] = c["args"]
    return args


def test_values_reach_the_containers() -> None:
    objs = template(
        image__repository="registry.example/gpuscale",
        image__tag="1.2.3",
        controller__replicas="3",
        controller__prometheusUrl="http://prom.obs.svc:9090",
        scheduler__extender__scoring="fragmentation",
        scheduler__extender__inventory="{dcgm,annotation}",
        scheduler__extender__prometheusUrl="http://prometheus.monitoring:9090",
        scheduler__extender__weight="7",
        nodeAgent__interval="5s",
    )
    images = {
        c["image"]
        for o in objs
        if o["kind"] in ("Deployment", "DaemonSet")
        for c in o["spec"]["template"]["spec"]["containers"]
        if c["name"] != "kube-scheduler"
    }
    assert images == {"registry.example/gpuscale:1.2.3"}
    assert find(objs, "Deployment", "gpuscale-controller")["spec"]["replicas"] == 3
    assert "--prometheus-url=http://prom.obs.svc:9090" in _args(
        objs, "Deployment", "gpuscale-controller", "controller"
    )
    extender = _args(objs, "Deployment", "gpuscale-scheduler", "extender")
    assert "--scoring=fragmentation" in extender
    assert "--inventory=dcgm,annotation" in extender
    assert "--prometheus-url=http://prometheus.monitoring:9090" in extender
    config = yaml.safe_load(
        find(objs, "ConfigMap", "gpuscale-scheduler-config")["data"]["config.yaml"]
    )
    assert config["extenders"][0]["weight"] == 7
    assert "--interval=5s" in _args(objs, "DaemonSet", "gpuscale-node-agent", "node-agent")


def test_namespace_enforcement_is_on_unless_turned_off() -> None:
    default = _args(template(), "Deployment", "gpuscale-controller", "controller")
    assert "--tenancy-label=namespace" in default and "--no-tenancy" not in default
    relabelled = template(controller__tenancy__label="kubernetes_namespace")
    args = _args(relabelled, "Deployment", "gpuscale-controller", "controller")
    assert "--tenancy-label=kubernetes_namespace" in args
    off = _args(
        template(controller__tenancy__enabled="false"),
        "Deployment",
        "gpuscale-controller",
        "controller",
    )
    assert "--no-tenancy" in off and not any(a.startswith("--tenancy-label") for a in off)


def test_scheduler_pods_roll_when_their_config_changes() -> None:
    def checksum(objs: list[Obj]) -> str:
        pod = find(objs, "Deployment", "gpuscale-scheduler")["spec"]["template"]
        value: str = pod["metadata"]["annotations"]["checksum/config"]
        return value

    assert checksum(template()) != checksum(template(scheduler__extender__weight="2"))
    assert checksum(template()) == checksum(template(controller__replicas="5"))


def test_other_namespace_follows_everywhere() -> None:
    out = helm("template", "gpuscale", str(CHART), "-n", "platform")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert NAMESPACE not in text
    objs = [d for d in yaml.safe_load_all(text) if d]
    api = find(objs, "APIService", "v1beta1.external.metrics.k8s.io")
    assert api["spec"]["service"]["namespace"] == "platform"
    assert api["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        "platform/gpuscale-controller"
    )
    cert = find(objs, "Certificate", "gpuscale-controller")
    assert cert["spec"]["dnsNames"][0] == "gpuscale-controller.platform.svc"


def test_scheduling_constraints_reach_both_deployments() -> None:
    """nodeSelector, tolerations and nodeAffinity put the controller and the second scheduler
    where the values say (the e2e pins them to its tainted real node this way); unset, the pod
    specs carry none of them, as the kustomize tree."""
    for component, deployment in (("controller", "gpuscale-controller"), ("scheduler", None)):
        name = deployment or "gpuscale-scheduler"
        objs = template(
            **{
                f"{component}__nodeSelector__pool": "ops",
                f"{component}__tolerations[0]__key": "dedicated",
                f"{component}__tolerations[0]__operator": "Equal",
                f"{component}__tolerations[0]__value": "ops",
                f"{component}__tolerations[0]__effect": "NoSchedule",
                f"{component}__nodeAffinity__requiredDuringSchedulingIgnoredDuringExecution"
                "__nodeSelectorTerms[0]__matchExpressions[0]__key": "zone",
                f"{component}__nodeAffinity__requiredDuringSchedulingIgnoredDuringExecution"
                "__nodeSelectorTerms[0]__matchExpressions[0]__operator": "Exists",
            }
        )
        pod = find(objs, "Deployment", name)["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"pool": "ops"}
        assert pod["tolerations"] == [
            {"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}
        ]
        terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert terms["nodeSelectorTerms"][0]["matchExpressions"] == [
            {"key": "zone", "operator": "Exists"}
        ]
        assert "podAntiAffinity" in pod["affinity"]
        other = "gpuscale-scheduler" if component == "controller" else "gpuscale-controller"
        untouched = find(objs, "Deployment", other)["spec"]["template"]["spec"]
        assert "nodeSelector" not in untouched and "tolerations" not in untouched
        assert set(untouched["affinity"]) == {"podAntiAffinity"}
    default = find(template(), "Deployment", "gpuscale-controller")["spec"]["template"]["spec"]
    assert "nodeSelector" not in default and "tolerations" not in default
