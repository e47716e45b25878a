"""The Helm chart's pods on the real node (issue #23, scenario steps 1-5, and uninstall).

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
3. A Deployment of a vLLM stand-in (``vllm_standin.py`` in the gpuscale image, real pods on
   ``real-0``) is found by Prometheus through Kubernetes service discovery
   (``deploy/examples``' scrape config with a kubeconfig; ``vllm_pods.py``); its policy is
   served 1, then 3 once one pod's queue is set to 12, and the real HPA takes it to 3 pods
   that start and become Ready there, each scraped as it appears.
4. Pods with ``schedulerName: gpuscale`` go to a kwok GPU node, bound by the chart's
   second-scheduler pod through its extender sidecar (the extender's ``gpu-indices``, the
   ``Scheduled`` Events reported by that pod); one too big for any GPU stays Pending.
5. ``helm upgrade --reuse-values --set controller.logLevel=debug`` rolls both controllers;
   meanwhile the external metric is read every 0.1 s and never fails for longer than
   one HPA sync (1 s here: ``cluster.HPA_SYNC``), the Lease moves only when its holder stops,
   and never do two Ready pods report ``gpuscale_is_leader 1`` (``rollout.py``).
6. ``helm uninstall`` leaves none of the chart's objects behind.

(Step 6 of the issue, the same with kustomize, is ``test_cluster_kustomize_node.py``.)

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
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.aio import client as kclient

from tests.cluster.build import binary
from tests.cluster.images import (
    GPUSCALE_ARCHIVE,
    GPUSCALE_TAG,
    KUBE_SCHEDULER_ARCHIVE,
    kube_scheduler_tag,
)
from tests.deploy.test_helm import HELM
from tests.e2e import vllm_pods
from tests.e2e.cluster import HPA_SYNC, ControlPlane, Process, free_port, wait_until
from tests.e2e.gpu_nodes import GpuNode, gpu_indices
from tests.e2e.install import (
    NAMESPACE,
    REPO,
    Installed,
    ServingCert,
    adapt_for_local_processes,
    apply,
    delete,
    kubectl,
)
from tests.e2e.kube import (
    api,
    condition,
    deployment,
    eventually,
    namespace,
    policy_configmap,
    spec_replicas,
)
from tests.e2e.node import LABELS, TOLERATION, RealNode, archive_image_names
from tests.e2e.rollout import RolloutWatch, double_claims, holders, outages
from tests.e2e.test_cluster_helm import helm
from tests.e2e.vllm_pods import (
    SCRAPE_JOB,
    discovery_kubeconfig,
    discovery_rbac,
    pod_scrape_config,
    prometheus_sd_binary,
    standin_objects,
)
from tests.support.inference_server import InferenceServer
from tests.support.prometheus import PrometheusServer

pytestmark = [pytest.mark.cluster]

CHART = REPO / "deploy" / "helm" / "gpuscale"
RELEASE = "gpuscale"
NS = "helm-node-app"
UNSERVED = "unserved"
"""The target's scheduler: none serves it, so its pods stay Pending without an Unschedulable
verdict (the default kube-scheduler here has no node for them, and the controller would rightly
hold the count while they are unschedulable; this test is about the metric's path)."""
"""The workload's namespace (the Prometheus fixture labels its series with it)."""
APP = "llama-helm"
QUEUE = 'sum(vllm:num_requests_waiting{model_name="llama"})'
WAITING, PER_REPLICA = 12, 4
EXPECTED = 3
"""ceil(WAITING / PER_REPLICA): what the controller pod serves for the policy."""
CONTROLLER_LABELS = "app.kubernetes.io/name=gpuscale,app.kubernetes.io/component=controller"
SCHEDULER_LABELS = "app.kubernetes.io/name=gpuscale,app.kubernetes.io/component=scheduler"


def metric_path(ns: str, policy: str) -> str:
    """The external metric the HPA of ``policy`` reads, as ``kubectl get --raw`` asks for it."""
    return (
        f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/gpuscale_desired_replicas"
        "?labelSelector=" + urllib.parse.quote(f"gpuscale.io/policy={policy}", safe="")
    )


METRIC_PATH = metric_path(NS, APP)
PODS_NS = "helm-node-vllm"
"""Step 3's namespace: the stand-in's pods, found by Prometheus' service discovery."""
PODS_APP, PODS_MODEL = "opt-standin", "opt"
PODS_QUEUE = f'sum(vllm:num_requests_waiting{{model_name="{PODS_MODEL}"}})'
PODS_EXPECTED = 3
"""ceil(12 / 4) with one pod reporting 12 waiting and the HPA's new pods none."""


def _archive(env: str, default: Path) -> Path:
    return Path(os.environ.get(env) or default)


def import_images(node: RealNode) -> None:
    """``make image``'s two archives into the node's containerd, unless an earlier module did
    (a 360 MB import takes a while); skips the module where they are not built."""
    archives = [
        _archive("GPUSCALE_IMAGE_ARCHIVE", GPUSCALE_ARCHIVE),
        _archive("GPUSCALE_SCHEDULER_IMAGE_ARCHIVE", KUBE_SCHEDULER_ARCHIVE),
    ]
    missing = [str(a) for a in archives if not a.exists()]
    if missing:
        pytest.skip(f"images not built: {', '.join(missing)} (`make image`)")
    have = set(node.images())
    for path in archives:
        if not set(archive_image_names(path)) <= have:
            node.import_image(path)


def _helm(cp: ControlPlane, *args: str) -> str:
    return helm(cp, *args, home_name="helm-node-home")


TLS_SECRETS = (
    "gpuscale-controller-tls",
    "gpuscale-extender-tls",
    "gpuscale-scheduler-client-tls",
)


def tls_secret_commands(cert: ServingCert) -> list[list[str]]:
    """The three ``kubectl create secret`` commands the README's caBundle install gives, with
    the PEM files of ``cert`` (deploy/README.md's names): the controller's serving pair, the
    extender's serving pair and kube-scheduler's client pair, the last two with ``ca.crt``."""
    d, ns = cert.dir, f"--namespace={NAMESPACE}"
    ca = f"--from-file=ca.crt={cert.ca}"
    return [
        ["create", "secret", "tls", TLS_SECRETS[0], ns, f"--cert={cert.cert}", f"--key={cert.key}"],
        *(
            [
                "create",
                "secret",
                "generic",
                name,
                ns,
                "--type=kubernetes.io/tls",
                f"--from-file=tls.crt={d / f'{stem}.crt'}",
                f"--from-file=tls.key={d / f'{stem}.key'}",
                ca,
            ]
            for name, stem in zip(TLS_SECRETS[1:], ("extender", "scheduler-client"), strict=True)
        ),
    ]


def helm_values(prometheus_url: str) -> dict[str, Any]:
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


@pytest.fixture(scope="module")
def prometheus(
    control_plane: ControlPlane,
    vllm_server: InferenceServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PrometheusServer]:
    """Prometheus with Kubernetes discovery (``make prometheus-sd``: Debian's has none) and two
    jobs: the host's vLLM-style server for step 2 (labelled
    with ``NS`` as discovery would), and step 3's pods in ``PODS_NS`` through Kubernetes
    service discovery, as a ServiceAccount that may only list and watch that namespace's pods.
    """
    binary = prometheus_sd_binary()
    if not binary.is_file():
        pytest.fail(f"{binary} not built: run `make prometheus-sd`")
    apply(control_plane, [namespace(PODS_NS), *discovery_rbac(PODS_NS)])
    kubeconfig = discovery_kubeconfig(control_plane, PODS_NS)
    server = PrometheusServer(
        tmp_path_factory.mktemp("prometheus"),
        [vllm_server.target],
        labels={"namespace": NS},
        extra_scrape_configs=[pod_scrape_config(kubeconfig, PODS_NS, PODS_APP)],
        binary=str(binary),
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()
        kubectl(control_plane, "delete", "--ignore-not-found", "--wait=false", "ns", PODS_NS)


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
    import_images(real_node)
    real_node.publish_apiserver()
    prom_host, prom_port = real_node.relay(prometheus.port)
    vllm_server.set_waiting(WAITING)

    cert = ServingCert.make(control_plane.workdir / "helm-node-serving")
    ca = base64.b64encode(cert.ca.read_bytes()).decode()
    values = control_plane.workdir / "helm-node-values.yaml"
    values.write_text(yaml.safe_dump(helm_values(f"http://{prom_host}:{prom_port}")))
    kept = _take_out(installed)
    sched = default_scheduler(control_plane)
    sched.start()
    try:
        # The namespace is there already (the session's install's); a user creates it.
        apply(control_plane, [namespace(NAMESPACE)])
        for command in tls_secret_commands(cert):
            kubectl(control_plane, *command)
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
            *TLS_SECRETS,
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


async def ready_chart_pods(admin_client: Any) -> list[tuple[set[str], list[Any]]]:
    """The controller's and the scheduler's two pods each, once all are Ready, with the
    containers each pod should run."""
    out = []
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
        out.append((containers, pods))
    return out


async def test_chart_pods_become_ready_on_the_real_node(
    admin_client: Any, release: Release
) -> None:
    for containers, pods in await ready_chart_pods(admin_client):
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
    apply(
        cp,
        [
            namespace(NS),
            deployment(APP, NS, 1, scheduler=UNSERVED),
            policy_configmap(APP, NS, policy),
        ],
    )

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


READ_TIMEOUT = 15.0
"""How long one read of the external metric may take: a real cluster's HPA sync period. A new
controller replica's first answers through the aggregator can take seconds on a loaded machine
(up to 5 s seen): slow, not failed; the HPA waits for them too."""


def _served(cp: ControlPlane, path: str) -> tuple[bool, str, list[dict[str, Any]]]:
    """One read of an external metric through the aggregator: (answered, why not, items)."""
    status, body = cp.request("GET", path, timeout=READ_TIMEOUT)
    if status != 200:
        return False, f"{status}: {str(body)[:300]}", []
    return True, "", list(body.get("items") or [])


def _served_value(cp: ControlPlane, path: str) -> str | None:
    ok, _, items = _served(cp, path)
    return str(items[0]["value"]) if ok and len(items) == 1 else None


def _put_waiting(pod_ip: str, waiting: int) -> None:
    """Set the stand-in's queue depth, from this host to the pod's IP (the bridge is ours)."""
    url = f"http://{pod_ip}:{vllm_pods.PORT}/waiting"
    req = urllib.request.Request(url, data=str(waiting).encode(), method="PUT")
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 204


async def _standin_pods(admin_client: Any) -> list[Any]:
    pods = await api(admin_client, "CoreV1Api").list_namespaced_pod(
        PODS_NS, label_selector=f"app={PODS_APP}"
    )
    return [p for p in pods.items if p.metadata.deletion_timestamp is None]


async def test_a_policy_scales_real_pods_that_prometheus_found_by_service_discovery(
    admin_client: Any, release: Release, prometheus: PrometheusServer
) -> None:
    """Step 3: the stand-in's pods, found by ``kubernetes_sd_configs``, scaled 1 -> 3 by the
    real HPA when one pod's queue grows; the new pods start on ``real-0`` and become Ready."""
    cp = release.cp
    apply(cp, standin_objects(PODS_APP, PODS_NS, image=GPUSCALE_TAG, model=PODS_MODEL, replicas=1))
    [first] = await eventually(
        "the stand-in's first pod Ready",
        lambda: _standin_pods(admin_client),
        lambda ps: _all_ready(ps, 1),
        within=120,
    )
    assert first.spec.node_name == release.node.name
    series_query = f'vllm:num_requests_waiting{{model_name="{PODS_MODEL}"}}'
    await prometheus.wait_for_value(series_query, lambda v: v == 0, within=60)
    [series] = await prometheus.query(series_query)
    # Discovered, not configured: the target is the pod's IP, the labels its metadata.
    assert series["metric"]["job"] == SCRAPE_JOB
    assert series["metric"]["namespace"] == PODS_NS
    assert series["metric"]["pod"] == first.metadata.name
    assert series["metric"]["instance"] == f"{first.status.pod_ip}:{vllm_pods.PORT}"

    policy = {
        "apiVersion": "gpuscale.io/v1alpha1",
        "kind": "ScalingPolicy",
        "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": PODS_APP},
        "replicas": {"min": 1, "max": 6},
        "interval": "1s",
        "metrics": [
            {"name": "queue", "type": "queueDepth", "query": PODS_QUEUE, "targetPerReplica": 4}
        ],
    }
    apply(cp, [policy_configmap(PODS_APP, PODS_NS, policy)])
    path = metric_path(PODS_NS, PODS_APP)
    wait_until(f"{path} = 1 (empty queue)", lambda: _served_value(cp, path) == "1", within=120)
    assert await spec_replicas(admin_client, PODS_NS, PODS_APP) == 1

    _put_waiting(first.status.pod_ip, WAITING)
    await prometheus.wait_for_value(PODS_QUEUE, lambda v: v == WAITING, within=30)
    wait_until(
        f"{path} = {PODS_EXPECTED}",
        lambda: _served_value(cp, path) == str(PODS_EXPECTED),
        within=60,
    )
    pods = await eventually(
        f"{PODS_EXPECTED} stand-in pods Ready",
        lambda: _standin_pods(admin_client),
        lambda ps: _all_ready(ps, PODS_EXPECTED),
        within=120,
    )
    assert {p.spec.node_name for p in pods} == {release.node.name}
    assert first.metadata.name in {p.metadata.name for p in pods}
    hpa = await eventually(
        "the HPA at 3",
        lambda: api(admin_client, "AutoscalingV2Api").read_namespaced_horizontal_pod_autoscaler(
            f"gpuscale-{PODS_APP}", PODS_NS
        ),
        lambda h: (
            h.status.current_replicas == PODS_EXPECTED
            and h.status.desired_replicas == PODS_EXPECTED
        ),
        within=60,
    )
    assert hpa.spec.metrics[0].external.metric.name == "gpuscale_desired_replicas"
    # The new pods are scraped too (found by discovery as they started), and report no queue:
    # the sum stays at what the first pod reports, so the count settles at 3.
    up = f'count(up{{job="{SCRAPE_JOB}",namespace="{PODS_NS}"}} == 1)'
    await prometheus.wait_for_value(up, lambda v: v == PODS_EXPECTED, within=30)
    assert await prometheus.query_value(PODS_QUEUE) == WAITING
    assert await spec_replicas(admin_client, PODS_NS, PODS_APP) == PODS_EXPECTED


GPU_NS = "helm-node-gpu"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
GPU_NODE = GpuNode("gpu-beside-chart", "NVIDIA-L4", 23034, (0, 0), taints=(GPU_TAINT,))
"""A kwok node with two 24 GB GPUs, tainted as GPU pools are (the other pods stay off it)."""


async def test_the_charts_scheduler_pod_places_gpu_pods_through_its_extender(
    admin_client: Any, release: Release
) -> None:
    """Step 4: pods with ``schedulerName: gpuscale`` go to a kwok GPU node, bound by the
    chart's second-scheduler pod through its extender sidecar (``gpuscale.io/gpu-indices``,
    which only the extender's bind writes); one asking for more GPU memory than a device has
    stays Pending with the extender's reason. No node agent: the extender reads the node's
    GPU Feature Discovery labels (``inventory: [annotation, gfd]``)."""
    cp = release.cp
    core = api(admin_client, "CoreV1Api")
    gpu_pod = {"tolerations": [{"operator": "Equal", **GPU_TAINT}]}
    fits = deployment(
        "gpu-fits", GPU_NS, 2, scheduler="gpuscale", gpus=1, gpu_memory_mib=8000, pod_spec=gpu_pod
    )
    too_big = deployment(
        "gpu-too-big",
        GPU_NS,
        1,
        scheduler="gpuscale",
        gpus=1,
        gpu_memory_mib=40000,
        pod_spec=gpu_pod,
    )
    schedulers = {p.metadata.name for p in await _pods(admin_client, SCHEDULER_LABELS)}
    try:
        apply(cp, [GPU_NODE.manifest(), namespace(GPU_NS), fits, too_big])

        async def placed(app: str) -> list[Any]:
            pods = await core.list_namespaced_pod(GPU_NS, label_selector=f"app={app}")
            return list(pods.items)

        bound = await eventually(
            "the fitting GPU pods bound",
            lambda: placed("gpu-fits"),
            lambda ps: len(ps) == 2 and all(p.spec.node_name for p in ps),
            within=90,
        )
        for pod in bound:
            assert pod.spec.node_name == GPU_NODE.name
            assert gpu_indices(pod) in ([0], [1]), pod.metadata.annotations

        async def scheduled_by() -> set[str]:
            events = await api(admin_client, "EventsV1Api").list_namespaced_event(
                GPU_NS, field_selector="reason=Scheduled"
            )
            return {e.reporting_instance or "" for e in events.items}

        # kube-scheduler reports as <scheduler name>-<host name>; a pod's host name is its name.
        reporters = await eventually("the Scheduled events", scheduled_by, bool, within=30)
        assert {r.removeprefix("gpuscale-") for r in reporters} <= schedulers, reporters

        async def refusals() -> list[str]:
            (pod,) = await placed("gpu-too-big")
            assert pod.spec.node_name is None, f"bound to {pod.spec.node_name}"
            events = await core.list_namespaced_event(
                GPU_NS,
                field_selector=f"involvedObject.name={pod.metadata.name},reason=FailedScheduling",
            )
            return [e.message for e in events.items]

        messages = await eventually("FailedScheduling", refusals, bool, within=60)
        assert any("GPU" in m or "gpu" in m for m in messages), messages
    finally:
        delete(cp, [fits, too_big, GPU_NODE.manifest()])
        kubectl(cp, "delete", "--ignore-not-found", "--wait=false", "ns", GPU_NS)


def _controller_pods(cp: ControlPlane) -> list[dict[str, Any]]:
    path = f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=" + urllib.parse.quote(
        CONTROLLER_LABELS, safe=""
    )
    status, body = cp.request("GET", path)
    assert status == 200, body
    return [p for p in body["items"] if not p["metadata"].get("deletionTimestamp")]


def _ready_ips(cp: ControlPlane) -> dict[str, str]:
    return {
        p["metadata"]["name"]: p["status"]["podIP"]
        for p in _controller_pods(cp)
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p["status"].get("conditions", [])
        )
    }


def _lease_holder(cp: ControlPlane) -> str:
    path = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/gpuscale-controller"
    status, body = cp.request("GET", path)
    if status != 200:
        raise AssertionError(f"lease: {status}")
    return str(body["spec"].get("holderIdentity") or "")


UPGRADE_SET = "controller.logLevel=debug"
"""The changed value of step 5's ``helm upgrade`` (the README's upgrade command)."""
SYNC_PERIOD = float(HPA_SYNC.removesuffix("s"))
"""The e2e's HPA sync period (kube-controller-manager's
``--horizontal-pod-autoscaler-sync-period``; 15 s by default in a cluster): the longest the
served metric may fail during a rollout without the HPA missing a sync."""


def test_helm_upgrade_rolls_the_controller_without_a_gap_or_two_leaders(
    release: Release,
) -> None:
    """Step 5: a changed value (``controller.logLevel``) rolls both controller pods; all along,
    the external metric of step 3's policy answers (never failing for longer than one HPA
    sync) and at most one Ready pod claims leadership."""
    cp = release.cp
    old = {p["metadata"]["name"] for p in _controller_pods(cp)}
    assert len(old) == 2
    path = metric_path(PODS_NS, PODS_APP)

    def read_metric() -> tuple[bool, str]:
        ok, why, items = _served(cp, path)
        if ok and not (len(items) == 1 and items[0]["value"] == str(PODS_EXPECTED)):
            return False, f"items {items}"
        return ok, why

    def rolled() -> bool:
        pods = _ready_ips(cp)
        return (
            len(pods) == 2
            and not (set(pods) & old)
            and not ({p["metadata"]["name"] for p in _controller_pods(cp)} & old)
            and _lease_holder(cp) in pods
        )

    started = time.monotonic()
    with RolloutWatch(read_metric, lambda: _lease_holder(cp), lambda: _ready_ips(cp)) as watch:
        time.sleep(1)
        _helm(
            cp,
            "upgrade",
            RELEASE,
            str(CHART),
            f"--namespace={NAMESPACE}",
            "--reuse-values",
            f"--set={UPGRADE_SET}",
            "--wait",
            "--timeout=4m",
        )
        wait_until("old controllers gone, the Lease held by a new one", rolled, within=120)
        time.sleep(2)
    took = time.monotonic() - started
    new = {p["metadata"]["name"]: p for p in _controller_pods(cp)}
    for pod in new.values():
        [container] = pod["spec"]["containers"]
        assert "--log-level=debug" in container["args"], container["args"]

    answers, found = watch.answers, outages(watch.answers)
    slowest = max((a.end - a.start for a in answers if a.ok), default=0.0)
    summary = (
        f"{len(answers)} reads in {took:.1f} s, the slowest good one {slowest:.2f} s, "
        "outages (observed/bound s): "
        + ", ".join(f"{o.observed:.2f}/{o.bound:.2f} ({o.failures}: {o.detail})" for o in found)
    )
    print(f"\nrollout: {summary}; holders {holders(watch.looks)}, {len(watch.looks)} looks")
    assert len(answers) > 20 and answers[-1].ok, summary
    # Failing for longer than a sync would make the HPA miss one: from the first failed read to
    # the next good one. (The bound adds the recovering read's own latency, ~1 s once at load
    # 4-5: a slow answer, not a failed one.)
    worst = max((o.observed for o in found), default=0.0)
    assert worst <= SYNC_PERIOD, summary

    order = holders(watch.looks)
    assert order and order[0] in old and order[-1] in new, order
    # Each holder holds one term (never back to a pod that lost it), and the Lease moves only
    # when its holder stops: at most once per old pod. Twice happens when the ReplicaSet stops
    # the leader first (the other old pod takes over, then stops too); nothing tells it which
    # pod leads.
    assert len(order) == len(set(order)) <= len(old) + 1, order
    assert set(order) <= old | set(new), order
    # The pods' own gauges were read (the leader's said so), and never two at once.
    assert any(look.claimants == {look.holder} for look in watch.looks), watch.looks[-3:]
    assert double_claims(watch.looks) == [], double_claims(watch.looks)


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
