"""The Helm chart's pods on the real node (issue #23, scenario steps 1-2, and uninstall).

``helm install`` of ``deploy/helm/gpuscale`` into the session's control plane, with a CA bundle
of our own (``tls.source=caBundle``, the three TLS Secrets made here as a user would), the
images ``make image`` built (imported into ``real-0``'s containerd, ``IfNotPresent``: nothing
is pulled) and values that put the controller and the second scheduler on ``real-0``
(``*.nodeSelector`` its label, ``*.tolerations`` its taint). A default kube-scheduler (the
cached binary, the control plane's ``system:kube-scheduler`` user) places the chart's pods.

1. The controller, the second scheduler and its extender sidecar become Ready through their
   own probes; the controller's leader holds its Lease, a scheduler pod the scheduler's.
2. The aggregator reaches the controller through the chart's ClusterIP Service (kube-proxy's
   iptables rules on this host), not an ExternalName: the APIService is Available and
   ``kubectl get --raw`` of a policy's external metric answers with the policy's count, read
   by the controller pod from the e2e's Prometheus (relayed to the bridge: pods cannot reach
   host loopback).
3. ``helm uninstall`` leaves none of the chart's objects behind.

What differs from a cluster, and why: the API server listens on loopback only, so pods reach
it through the ``kubernetes`` Service and a relay on the bridge (``RealNode.publish_apiserver``);
the session's kustomize install (``installed``, same cluster-wide names: one release per
cluster) is taken out while the chart is in and put back after, with fresh tokens.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.aio import client as kclient

from tests.cluster.build import binary
from tests.cluster.images import GPUSCALE_ARCHIVE, KUBE_SCHEDULER_ARCHIVE, kube_scheduler_tag
from tests.deploy.test_helm import HELM
from tests.e2e.cluster import ControlPlane, Process, free_port, wait_until
from tests.e2e.install import (
    NAMESPACE,
    REPO,
    Installed,
    ServingCert,
    adapt_for_local_processes,
    apply,
    kubectl,
)
from tests.e2e.kube import api, condition, deployment, eventually, namespace, policy_configmap
from tests.e2e.node import LABELS, TOLERATION, RealNode
from tests.e2e.test_cluster_helm import helm
from tests.support.inference_server import InferenceServer
from tests.support.prometheus import PrometheusServer

pytestmark = [pytest.mark.cluster]

CHART = REPO / "deploy" / "helm" / "gpuscale"
RELEASE = "gpuscale"
NS = "helm-node-app"
"""The workload's namespace (the Prometheus fixture labels its series with it)."""
APP = "llama-helm"
QUEUE = 'sum(vllm:num_requests_waiting{model_name="llama"})'
WAITING, PER_REPLICA = 12, 4
EXPECTED = 3
"""ceil(WAITING / PER_REPLICA): what the controller pod serves for the policy."""
CONTROLLER_LABELS = "app.kubernetes.io/name=gpuscale,app.kubernetes.io/component=controller"
SCHEDULER_LABELS = "app.kubernetes.io/name=gpuscale,app.kubernetes.io/component=scheduler"
METRIC_PATH = (
    f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{NS}/gpuscale_desired_replicas"
    "?labelSelector=" + urllib.parse.quote(f"gpuscale.io/policy={APP}", safe="")
)


def _archive(env: str, default: Path) -> Path:
    return Path(os.environ.get(env) or default)


def _helm(cp: ControlPlane, *args: str) -> str:
    return helm(cp, *args, home_name="helm-node-home")


def _tls_secrets(cert: ServingCert) -> list[dict[str, Any]]:
    """The three kubernetes.io/tls Secrets the chart's caBundle mode asks the user for."""

    def secret(name: str, crt: str, key: str, ca: bool) -> dict[str, Any]:
        data = {
            "tls.crt": (cert.dir / crt).read_bytes(),
            "tls.key": (cert.dir / key).read_bytes(),
        }
        if ca:
            data["ca.crt"] = cert.ca.read_bytes()
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
        }

    return [
        secret("gpuscale-controller-tls", "tls.crt", "tls.key", False),
        secret("gpuscale-extender-tls", "extender.crt", "extender.key", True),
        secret(
            "gpuscale-scheduler-client-tls", "scheduler-client.crt", "scheduler-client.key", True
        ),
    ]


def _values(node: RealNode, prometheus_url: str) -> dict[str, Any]:
    """Local images, never pulled, and both Deployments on the real node."""
    repository, tag = "localhost/gpuscale", "dev"
    placement = {"nodeSelector": dict(LABELS), "tolerations": [dict(TOLERATION)]}
    return {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "IfNotPresent"},
        "controller": {"prometheusUrl": prometheus_url, **placement},
        "scheduler": {"kubeScheduler": {"image": kube_scheduler_tag()}, **placement},
        # No GPU node here for the agent; the kwok nodes are not this scenario's.
        "nodeAgent": {"enabled": False},
    }


def default_scheduler(cp: ControlPlane) -> Process:
    """kube-scheduler with its defaults (profile ``default-scheduler``) as the control plane's
    ``system:kube-scheduler`` user: what places the chart's pods in a real cluster."""
    kubeconfig = cp.write_kubeconfig("default-scheduler", cp.tokens["scheduler"])
    argv = [
        str(binary("kube-scheduler")),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={free_port()}",
        "--leader-elect=false",
        "--v=2",
    ]
    return Process("default-scheduler", argv, cp.workdir / "default-scheduler.log")


@dataclass
class Release:
    cp: ControlPlane
    node: RealNode
    manifest: list[dict[str, Any]]


def _take_out(inst: Installed) -> list[dict[str, Any]]:
    """The session's kustomize install, but its Namespace, deleted (and waited for): the chart
    holds the same cluster-wide names."""
    objs = [o for o in adapt_for_local_processes(inst.objects) if o["kind"] != "Namespace"]
    text = yaml.safe_dump_all(objs, sort_keys=False)
    kubectl(inst.cp, "delete", "--ignore-not-found", "--wait=true", "-f", "-", input_=text)
    return objs


def _put_back(inst: Installed, objs: list[dict[str, Any]]) -> None:
    apply(inst.cp, objs)
    # Its ServiceAccounts are new: tokens of the old ones no longer authenticate.
    inst.kubeconfigs.clear()


@pytest.fixture(scope="module")
def release(
    control_plane: ControlPlane,
    real_node: RealNode,
    installed: Installed,
    prometheus: PrometheusServer,
    vllm_server: InferenceServer,
) -> Iterator[Release]:
    if not HELM.is_file():
        pytest.fail(f"{HELM} not built: run `make helm`")
    archives = [
        _archive("GPUSCALE_IMAGE_ARCHIVE", GPUSCALE_ARCHIVE),
        _archive("GPUSCALE_SCHEDULER_IMAGE_ARCHIVE", KUBE_SCHEDULER_ARCHIVE),
    ]
    missing = [str(a) for a in archives if not a.exists()]
    if missing:
        pytest.skip(f"images not built: {', '.join(missing)} (`make image`)")
    for path in archives:
        real_node.import_image(path)
    real_node.publish_apiserver()
    prom_host, prom_port = real_node.relay(prometheus.port)
    vllm_server.set_waiting(WAITING)

    cert = ServingCert.make(control_plane.workdir / "helm-node-serving")
    ca = base64.b64encode(cert.ca.read_bytes()).decode()
    values = control_plane.workdir / "helm-node-values.yaml"
    values.write_text(yaml.safe_dump(_values(real_node, f"http://{prom_host}:{prom_port}")))
    kept = _take_out(installed)
    sched = default_scheduler(control_plane)
    sched.start()
    try:
        apply(control_plane, [namespace(NAMESPACE), *_tls_secrets(cert)])
        _helm(
            control_plane,
            "install",
            RELEASE,
            str(CHART),
            f"--namespace={NAMESPACE}",
            f"--values={values}",
            "--set=tls.source=caBundle",
            f"--set=tls.caBundle={ca}",
        )
        text = _helm(control_plane, "get", "manifest", RELEASE, f"--namespace={NAMESPACE}")
        yield Release(control_plane, real_node, [d for d in yaml.safe_load_all(text) if d])
    finally:
        # Already gone after the uninstall test; where that failed, it said why.
        with contextlib.suppress(AssertionError):
            _helm(control_plane, "uninstall", RELEASE, f"--namespace={NAMESPACE}", "--wait")
        sched.stop()
        kubectl(
            control_plane,
            "delete",
            "--ignore-not-found",
            f"--namespace={NAMESPACE}",
            "secret",
            *(s["metadata"]["name"] for s in _tls_secrets(cert)),
        )
        kubectl(control_plane, "delete", "--ignore-not-found", "--wait=false", "ns", NS)
        _put_back(installed, kept)


async def _pods(admin_client: Any, selector: str) -> list[Any]:
    pods = await api(admin_client, "CoreV1Api").list_namespaced_pod(
        NAMESPACE, label_selector=selector
    )
    return [p for p in pods.items if p.metadata.deletion_timestamp is None]


def _all_ready(pods: list[Any], count: int) -> bool:
    return len(pods) == count and all(
        (c := condition(p, "Ready")) is not None and c.status == "True" for p in pods
    )


async def test_chart_pods_become_ready_on_the_real_node(
    admin_client: Any, release: Release
) -> None:
    for selector, containers in (
        (CONTROLLER_LABELS, {"controller"}),
        (SCHEDULER_LABELS, {"kube-scheduler", "extender"}),
    ):
        pods = await eventually(
            f"2 pods of {selector} Ready",
            lambda s=selector: _pods(admin_client, s),  # type: ignore[misc]
            lambda ps: _all_ready(ps, 2),
            within=240,
        )
        for pod in pods:
            assert pod.spec.node_name == release.node.name
            statuses = {s.name: s for s in pod.status.container_statuses}
            assert set(statuses) == containers
            for c in pod.spec.containers:
                # Ready through the chart's own probe, from the local image, never pulled.
                assert c.readiness_probe is not None and c.readiness_probe.http_get is not None
                assert c.image_pull_policy == "IfNotPresent"
                assert statuses[c.name].ready, (pod.metadata.name, c.name)
                assert statuses[c.name].image.endswith(c.image.split("/", 1)[1])
    leases = api(admin_client, "CoordinationV1Api")

    async def holder(name: str) -> str:
        try:
            lease = await leases.read_namespaced_lease(name, NAMESPACE)
        except kclient.ApiException as exc:
            if exc.status == 404:
                return ""
            raise
        return str(lease.spec.holder_identity or "")

    controllers = {p.metadata.name for p in await _pods(admin_client, CONTROLLER_LABELS)}
    leader = await eventually(
        "the controller Lease held",
        lambda: holder("gpuscale-controller"),
        lambda h: h in controllers,
        within=60,
    )
    assert leader in controllers
    schedulers = {p.metadata.name for p in await _pods(admin_client, SCHEDULER_LABELS)}
    # kube-scheduler's identity is <hostname>_<uuid>; a pod's hostname is its name.
    leader = await eventually(
        "the second scheduler's Lease held",
        lambda: holder("gpuscale-scheduler"),
        lambda h: h.split("_")[0] in schedulers,
        within=60,
    )
    assert leader.split("_")[0] in schedulers


async def test_aggregator_reaches_the_controller_through_the_charts_service(
    admin_client: Any, release: Release, prometheus: PrometheusServer
) -> None:
    cp = release.cp
    svc = await api(admin_client, "CoreV1Api").read_namespaced_service(
        "gpuscale-controller", NAMESPACE
    )
    assert svc.spec.type == "ClusterIP"
    assert ipaddress.ip_address(svc.spec.cluster_ip) in ipaddress.ip_network(
        release.node.service_cidr
    )
    registration = api(admin_client, "ApiregistrationV1Api")
    apisvc = await registration.read_api_service("v1beta1.external.metrics.k8s.io")
    assert (apisvc.spec.service.namespace, apisvc.spec.service.name) == (
        NAMESPACE,
        "gpuscale-controller",
    )
    cond = await eventually(
        "APIService Available",
        lambda: registration.read_api_service("v1beta1.external.metrics.k8s.io"),
        lambda s: (c := condition(s, "Available")) is not None and c.status == "True",
        within=120,
    )
    assert condition(cond, "Available").reason == "Passed"

    await prometheus.wait_for_value(QUEUE, lambda v: v == WAITING)
    policy = {
        "apiVersion": "gpuscale.io/v1alpha1",
        "kind": "ScalingPolicy",
        "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": APP},
        "replicas": {"min": 1, "max": 8},
        "interval": "1s",
        "metrics": [{"name": "queue", "type": "queueDepth", "query": QUEUE, "targetPerReplica": 4}],
    }
    apply(cp, [namespace(NS), deployment(APP, NS, 1), policy_configmap(APP, NS, policy)])

    def served() -> dict[str, Any]:
        out = kubectl(cp, "get", "--raw", METRIC_PATH)
        body: dict[str, Any] = json.loads(out)
        return body

    def has_count() -> bool:
        try:
            items = served().get("items") or []
        except AssertionError:
            return False  # not served yet (the policy's first tick)
        return len(items) == 1 and items[0]["value"] == str(EXPECTED)

    wait_until(f"{METRIC_PATH} = {EXPECTED}", has_count, within=120)
    body = served()
    assert body["kind"] == "ExternalMetricValueList"
    [item] = body["items"]
    assert item["metricName"] == "gpuscale_desired_replicas"
    assert item["value"] == str(EXPECTED)


async def test_helm_uninstall_leaves_nothing_behind(release: Release) -> None:
    assert release.manifest
    _helm(release.cp, "uninstall", RELEASE, f"--namespace={NAMESPACE}", "--wait")
    for obj in release.manifest:
        ns = obj["metadata"].get("namespace")
        out = kubectl(
            release.cp,
            "get",
            "--ignore-not-found",
            *((f"--namespace={ns}",) if ns else ()),
            obj["kind"],
            obj["metadata"]["name"],
            "-o",
            "name",
        )
        assert out.strip() == "", f"{obj['kind']} {obj['metadata']['name']} left behind"
    pods = f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=app.kubernetes.io/name=gpuscale"

    def no_pods() -> bool:
        status, body = release.cp.request("GET", pods)
        return status == 200 and body["items"] == []

    wait_until("the chart's pods gone", no_pods, within=60)
