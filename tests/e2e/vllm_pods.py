"""The vLLM stand-in as real pods on ``real-0``, and a Prometheus that finds them as a cluster's
would: Kubernetes service discovery (``kubernetes_sd_configs``, role ``pod``) with a kubeconfig
for the e2e's API server and a ServiceAccount that may only list and watch the pods of one
namespace.

The pods run ``vllm_standin.py`` (mounted from a ConfigMap) with the gpuscale image's Python:
no other image is needed, and none can be pulled. Prometheus runs on this host and scrapes the
pod IPs directly (the bridge is this host's), and labels each series with the pod's namespace and
name, as ``deploy/examples``' scrape config (and the Prometheus Operator's PodMonitor) does:
what the controller's tenancy relies on.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.build import cache_root
from tests.e2e.cluster import ControlPlane
from tests.e2e.install import REPO
from tests.e2e.node import LABELS, TOLERATION

STANDIN_SOURCE = Path(__file__).with_name("vllm_standin.py")
EXAMPLE_SCRAPE = REPO / "deploy" / "examples" / "monitoring" / "prometheus-scrape-config.yaml"
PORT = 8000
PORT_NAME = "http"
"""The container port the example scrape config keeps (as vLLM's Deployment example names it)."""
SCRAPE_JOB = "vllm-pods"
PROMETHEUS_SA = "prometheus-sd"
"""The ServiceAccount Prometheus discovers pods as (in the workload's namespace)."""

Obj = dict[str, Any]

BUILD_PROMETHEUS = REPO / "tests" / "cluster" / "build_prometheus.sh"


def prometheus_sd_binary() -> Path:
    """Where ``tests/cluster/build_prometheus.sh`` puts Prometheus with Kubernetes discovery
    (Debian's is built without it); the version is the script's, or its environment's."""
    text = BUILD_PROMETHEUS.read_text()
    match = re.search(r"PROMETHEUS_MODULE_VERSION:-(v[0-9.]+)\}", text)
    if match is None:
        raise AssertionError(f"{BUILD_PROMETHEUS}: no default PROMETHEUS_MODULE_VERSION")
    version = os.environ.get("PROMETHEUS_MODULE_VERSION") or match.group(1)
    return cache_root() / f"prometheus-{version}" / "prometheus"


def discovery_rbac(ns: str) -> list[Obj]:
    """A ServiceAccount for Prometheus that may read the pods of ``ns`` and nothing else."""
    meta = {"name": PROMETHEUS_SA, "namespace": ns}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta,
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": PROMETHEUS_SA,
            },
            "subjects": [{"kind": "ServiceAccount", "name": PROMETHEUS_SA, "namespace": ns}],
        },
    ]


def discovery_kubeconfig(cp: ControlPlane, ns: str) -> Path:
    """A kubeconfig with a TokenRequest token of :data:`PROMETHEUS_SA` (made by
    :func:`discovery_rbac`), valid for two hours."""
    token = cp.service_account_token(ns, PROMETHEUS_SA, seconds=7200)
    return cp.write_kubeconfig(PROMETHEUS_SA, token)


def pod_scrape_config(kubeconfig: Path, ns: str, app: str) -> Obj:
    """``deploy/examples/monitoring/prometheus-scrape-config.yaml``'s job, as a user adapts it:
    their namespace and app label, and here a kubeconfig (Prometheus runs outside the cluster)
    and a 1 s interval. Its relabelling (keep the port named ``http``, ``namespace`` and ``pod``
    from the pod's metadata) is the example's own."""
    [job] = yaml.safe_load(EXAMPLE_SCRAPE.read_text())["scrape_configs"]
    job = copy.deepcopy(job)
    [sd] = job["kubernetes_sd_configs"]
    sd["kubeconfig_file"] = str(kubeconfig)
    sd["namespaces"] = {"names": [ns]}
    [selector] = sd["selectors"]
    selector["label"] = f"app={app}"
    job.update(job_name=SCRAPE_JOB, scrape_interval="1s", scrape_timeout="1s")
    return dict(job)


def standin_objects(name: str, ns: str, *, image: str, model: str, replicas: int) -> list[Obj]:
    """The stand-in's ConfigMap and Deployment: pods on ``real-0`` (its label and taint), Ready
    through ``/health``, on a read-only root as the image's non-root user. The ConfigMap is
    ``<name>-source``: ``<name>`` is left for the workload's ScalingPolicy."""
    source = f"{name}-source"
    container = {
        "name": "vllm",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python3", f"/standin/{STANDIN_SOURCE.name}"],
        "env": [{"name": "MODEL_NAME", "value": model}, {"name": "PORT", "value": str(PORT)}],
        "ports": [{"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/health", "port": PORT_NAME},
            "periodSeconds": 1,
        },
        "securityContext": {
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "standin", "mountPath": "/standin", "readOnly": True}],
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": source, "namespace": ns},
            "data": {STANDIN_SOURCE.name: STANDIN_SOURCE.read_text()},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "nodeSelector": dict(LABELS),
                        "tolerations": [dict(TOLERATION)],
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": 65532,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "terminationGracePeriodSeconds": 2,
                        "containers": [container],
                        "volumes": [{"name": "standin", "configMap": {"name": source}}],
                    },
                },
            },
        },
    ]
