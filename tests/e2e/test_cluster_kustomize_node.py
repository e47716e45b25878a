"""The kustomize install on the real node (issue #23, scenario step 6): ``kubectl apply -k`` of
an overlay of one's own over ``deploy/overlays/ca-bundle``, as the root README's install
section says, and ``kubectl delete -k`` of it.

The overlay is what ``deploy/README.md`` ("Install") tells a user to write, with ``resources``
the ca-bundle overlay (its seven PEM files put beside it, made here): ``images`` for the images
``make image`` built (imported into ``real-0``'s containerd; the manifests' ``IfNotPresent``
keeps them from being pulled), the ``--prometheus-url`` patch, and the two Deployments pinned to
the real node (its label and taint). A default kube-scheduler places the pods, as in
``test_cluster_helm_node.py``, whose helpers this module shares.

1. The controllers and the second scheduler's pods (kube-scheduler and extender) become Ready
   on ``real-0`` through their own probes.
2. The APIService carries the overlay's CA (``caBundle``, never ``insecureSkipTLSVerify``), is
   Available through the ClusterIP Service, and a policy's external metric answers.
3. ``kubectl delete -k`` leaves none of the overlay's objects and no pod.

What differs from a cluster: as in ``test_cluster_helm_node.py`` (API server on loopback,
reached through the ``kubernetes`` Service and a relay; the session's own install taken out and
put back, with its Namespace, which ``delete -k`` removes).
"""

from __future__ import annotations

import base64
import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.images import GPUSCALE_TAG, KUBE_SCHEDULER_REPOSITORY, kubernetes_version
from tests.e2e.cluster import ControlPlane, wait_until
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
from tests.e2e.test_cluster_helm_node import (
    PER_REPLICA,
    UNSERVED,
    WAITING,
    _served_value,
    default_scheduler,
    import_images,
    metric_path,
    ready_chart_pods,
)
from tests.support.inference_server import InferenceServer
from tests.support.prometheus import PrometheusServer

pytestmark = [pytest.mark.cluster]

NS = "kustomize-node-app"
"""The workload's namespace (the Prometheus fixture labels its series with it)."""
APP = "llama-kustomize"
QUEUE = 'sum(vllm:num_requests_waiting{model_name="llama"})'
EXPECTED = 3
"""ceil(WAITING / PER_REPLICA)."""
GPUSCALE_IMAGE = "ghcr.io/gpuscale/gpuscale"
KUBE_SCHEDULER_IMAGE = "registry.k8s.io/kube-scheduler"


def my_overlay(prometheus_url: str) -> dict[str, Any]:
    """``my-gpuscale/kustomization.yaml``: deploy/README.md's own overlay, over the ca-bundle
    overlay, with the local images and the two Deployments on the real node."""
    repository, tag = GPUSCALE_TAG.split(":")
    placement = [
        {"op": "add", "path": "/spec/template/spec/nodeSelector", "value": dict(LABELS)},
        {"op": "add", "path": "/spec/template/spec/tolerations", "value": [dict(TOLERATION)]},
    ]
    prometheus = {
        "op": "replace",
        "path": "/spec/template/spec/containers/0/args/1",
        "value": f"--prometheus-url={prometheus_url}",
    }
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["../deploy/overlays/ca-bundle"],
        "images": [
            {"name": GPUSCALE_IMAGE, "newName": repository, "newTag": tag},
            {
                "name": KUBE_SCHEDULER_IMAGE,
                "newName": KUBE_SCHEDULER_REPOSITORY,
                "newTag": kubernetes_version(),
            },
        ],
        "patches": [
            {
                "target": {"kind": "Deployment", "name": "gpuscale-controller"},
                "patch": yaml.safe_dump([prometheus, *placement]),
            },
            {
                "target": {"kind": "Deployment", "name": "gpuscale-scheduler"},
                "patch": yaml.safe_dump(placement),
            },
        ],
    }


@dataclass
class Overlay:
    cp: ControlPlane
    node: RealNode
    dir: Path
    """``my-gpuscale/``, the folder ``kubectl apply -k`` was given."""
    ca: bytes
    objects: list[dict[str, Any]]
    """What ``kubectl kustomize`` renders from it."""


def _write_tree(cp: ControlPlane, cert: ServingCert, prometheus_url: str) -> Path:
    """A copy of ``deploy/`` with the ca-bundle overlay's seven PEM files, and beside it the
    user's own overlay; returns the latter's folder."""
    root = cp.workdir / "kustomize-node"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(REPO / "deploy", root / "deploy")
    for src in (cert.ca, cert.cert, cert.key, *cert.extender_files()):
        shutil.copy(src, root / "deploy" / "overlays" / "ca-bundle" / src.name)
    mine = root / "my-gpuscale"
    mine.mkdir()
    (mine / "kustomization.yaml").write_text(
        yaml.safe_dump(my_overlay(prometheus_url), sort_keys=False)
    )
    return mine


def _take_out(inst: Installed) -> None:
    """The session's install out, but its Namespace (``delete -k`` removes that later)."""
    objs = [o for o in adapt_for_local_processes(inst.objects) if o["kind"] != "Namespace"]
    text = yaml.safe_dump_all(objs, sort_keys=False)
    kubectl(inst.cp, "delete", "--ignore-not-found", "--wait=true", "-f", "-", input_=text)


def _put_back(inst: Installed) -> None:
    """The session's install back, its Namespace first (``delete -k`` removed it)."""
    apply(inst.cp, adapt_for_local_processes(inst.objects))
    inst.kubeconfigs.clear()  # new ServiceAccounts: the old tokens no longer authenticate


@pytest.fixture(scope="module")
def overlay(
    control_plane: ControlPlane,
    real_node: RealNode,
    installed: Installed,
    prometheus: PrometheusServer,
    vllm_server: InferenceServer,
) -> Iterator[Overlay]:
    import_images(real_node)
    real_node.publish_apiserver()
    prom_host, prom_port = real_node.relay(prometheus.port)
    vllm_server.set_waiting(WAITING)
    cert = ServingCert.make(control_plane.workdir / "kustomize-node-serving")
    mine = _write_tree(control_plane, cert, f"http://{prom_host}:{prom_port}")
    rendered = kubectl(control_plane, "kustomize", str(mine))
    objects = [d for d in yaml.safe_load_all(rendered) if d]
    _take_out(installed)
    sched = default_scheduler(control_plane)
    sched.start()
    try:
        kubectl(control_plane, "apply", "-k", str(mine))
        yield Overlay(control_plane, real_node, mine, cert.ca.read_bytes(), objects)
    finally:
        # Already gone after the delete test; where that failed, it said why.
        with contextlib.suppress(AssertionError):
            kubectl(control_plane, "delete", "--ignore-not-found", "-k", str(mine), timeout=180)
        sched.stop()
        kubectl(control_plane, "delete", "--ignore-not-found", "--wait=false", "ns", NS)
        _put_back(installed)


async def test_overlay_pods_become_ready_on_the_real_node(
    admin_client: Any, overlay: Overlay
) -> None:
    for containers, pods in await ready_chart_pods(admin_client):
        for pod in pods:
            assert pod.spec.node_name == overlay.node.name
            assert {c.name for c in pod.spec.containers} == containers
            for c in pod.spec.containers:
                assert c.readiness_probe is not None and c.readiness_probe.http_get is not None
                assert c.image_pull_policy == "IfNotPresent"
                assert c.image.startswith("localhost/"), c.image  # the overlay's `images`


async def test_apiservice_has_the_overlays_ca_and_the_metric_answers(
    admin_client: Any, overlay: Overlay, prometheus: PrometheusServer
) -> None:
    registration = api(admin_client, "ApiregistrationV1Api")
    apisvc = await eventually(
        "APIService Available",
        lambda: registration.read_api_service("v1beta1.external.metrics.k8s.io"),
        lambda s: (c := condition(s, "Available")) is not None and c.status == "True",
        within=120,
    )
    # The replacement copied ca.crt into the caBundle; the client decodes it to bytes or str.
    bundle = apisvc.spec.ca_bundle
    bundle = base64.b64decode(bundle) if isinstance(bundle, str) else bundle
    assert bundle == overlay.ca
    assert not apisvc.spec.insecure_skip_tls_verify
    svc = await api(admin_client, "CoreV1Api").read_namespaced_service(
        "gpuscale-controller", NAMESPACE
    )
    assert svc.spec.type == "ClusterIP"

    await prometheus.wait_for_value(QUEUE, lambda v: v == WAITING)
    policy = {
        "apiVersion": "gpuscale.io/v1alpha1",
        "kind": "ScalingPolicy",
        "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": APP},
        "replicas": {"min": 1, "max": 8},
        "interval": "1s",
        "metrics": [
            {"name": "queue", "type": "queueDepth", "query": QUEUE, "targetPerReplica": PER_REPLICA}
        ],
    }
    cp = overlay.cp
    apply(
        cp,
        [
            namespace(NS),
            deployment(APP, NS, 1, scheduler=UNSERVED),
            policy_configmap(APP, NS, policy),
        ],
    )
    path = metric_path(NS, APP)
    wait_until(f"{path} = {EXPECTED}", lambda: _served_value(cp, path) == str(EXPECTED), within=120)


def test_kubectl_delete_k_leaves_nothing_behind(overlay: Overlay) -> None:
    cp = overlay.cp
    kubectl(cp, "delete", "-k", str(overlay.dir), timeout=180)
    for obj in overlay.objects:
        ns = obj["metadata"].get("namespace")
        out = kubectl(
            cp,
            "get",
            "--ignore-not-found",
            *((f"--namespace={ns}",) if ns else ()),
            obj["kind"],
            obj["metadata"]["name"],
            "-o",
            "name",
        )
        assert out.strip() == "", f"{obj['kind']} {obj['metadata']['name']} left behind"
    pods = f"/api/v1/namespaces/{NAMESPACE}/pods"

    def no_pods() -> bool:
        status, body = cp.request("GET", pods)
        return status == 404 or (status == 200 and body["items"] == [])

    wait_until("the overlay's pods gone", no_pods, within=60)
