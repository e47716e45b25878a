"""kind end to end: build the image, install deploy/, and watch an HPA follow gpuscale's decision.

Needs docker (with a running daemon), kind and network access to pull ``prom/prometheus``; it is
skipped with the reason otherwise. ``GPUSCALE_E2E_KEEP=1`` keeps the cluster for debugging.

What it proves: the image builds and runs as uid 65532 with a read-only root filesystem; the
manifests install on a real API server (RBAC, Pod Security ``restricted``, NetworkPolicies); the
APIService becomes Available with the caBundle overlay; a policy's external metric reaches the
HPA, which scales a synthetic inference Deployment to ``ceil(queue / targetPerReplica)``; the
second scheduler (kube-scheduler + extender) places a pod that names ``schedulerName: gpuscale``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
import yaml

from tests.deploy.manifests import write_extender_pems

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CLUSTER = "gpuscale-e2e"
IMAGE = "gpuscale:e2e"
PROMETHEUS_IMAGE = "prom/prometheus:v2.53.0"
QUEUE_DEPTH = 11  # with targetPerReplica 4 the policy wants ceil(11 / 4) = 3 replicas
EXPECTED_REPLICAS = 3


def _why_not() -> str | None:
    for tool in ("docker", "kind"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    daemon = subprocess.run(
        ["docker", "info", "--format", "{{.ServerVersion}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if daemon.returncode != 0:
        return f"no docker daemon: {daemon.stderr.strip()[:200]}"
    return None


_REASON = _why_not()
if _REASON is not None:
    pytestmark.append(pytest.mark.skip(reason=f"kind e2e needs docker and kind: {_REASON}"))


def _kubectl_path() -> str:
    beside = Path(sys.executable).with_name("kubectl")
    return str(beside) if beside.exists() else "kubectl"


def run(*args: str, input_: str | None = None, timeout: float = 600) -> str:
    out = subprocess.run(
        list(args), input=input_, capture_output=True, text=True, check=False, timeout=timeout
    )
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({out.returncode}):\n{out.stderr}")
    return out.stdout


def kubectl(*args: str, input_: str | None = None, timeout: float = 600) -> str:
    return run(
        _kubectl_path(), "--context", f"kind-{CLUSTER}", *args, input_=input_, timeout=timeout
    )


def wait(*args: str, timeout: str = "300s") -> None:
    """``kubectl wait``: block on a condition on the server side, with a deadline."""
    kubectl("wait", f"--timeout={timeout}", *args, timeout=float(timeout.rstrip("s")) + 30)


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    run("docker", "build", "-t", IMAGE, str(REPO), timeout=1200)
    existing = run("kind", "get", "clusters").split()
    if CLUSTER not in existing:
        run("kind", "create", "cluster", "--name", CLUSTER, "--wait", "180s", timeout=600)
    try:
        run("kind", "load", "docker-image", IMAGE, "--name", CLUSTER)
        yield CLUSTER
    finally:
        if not os.environ.get("GPUSCALE_E2E_KEEP"):
            run("kind", "delete", "cluster", "--name", CLUSTER)


def _server_version() -> str:
    version = json.loads(kubectl("version", "-o", "json"))
    return str(version["serverVersion"]["gitVersion"]).split("+")[0]


_SYNTHETIC = textwrap.dedent(
    """
    import os
    from wsgiref.simple_server import make_server
    from prometheus_client import Gauge, make_wsgi_app
    Gauge("synthetic_queue_depth", "Requests waiting.").set(float(os.environ["QUEUE_DEPTH"]))
    make_server("", 8000, make_wsgi_app()).serve_forever()
    """
)


def _workloads() -> list[dict[str, object]]:
    """A Prometheus scraping a synthetic inference server that reports a fixed queue depth."""
    labels = {"app": "synthetic"}
    prom_config = {
        "global": {"scrape_interval": "5s"},
        "scrape_configs": [
            {
                "job_name": "synthetic",
                "static_configs": [{"targets": ["synthetic.inference.svc:8000"]}],
            },
            {
                "job_name": "gpuscale",
                "honor_labels": True,
                "static_configs": [{"targets": ["gpuscale-controller.gpuscale-system.svc:8080"]}],
            },
        ],
    }
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "inference"}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "monitoring"}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "synthetic", "namespace": "inference"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "server",
                                "image": IMAGE,
                                "imagePullPolicy": "Never",
                                "command": ["python", "-c", _SYNTHETIC],
                                "env": [{"name": "QUEUE_DEPTH", "value": str(QUEUE_DEPTH)}],
                                "ports": [{"containerPort": 8000}],
                            }
                        ]
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "synthetic", "namespace": "inference"},
            "spec": {"selector": labels, "ports": [{"port": 8000}]},
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "prometheus", "namespace": "monitoring"},
            "data": {"prometheus.yml": yaml.safe_dump(prom_config)},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "prometheus", "namespace": "monitoring"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "prometheus"}},
                "template": {
                    "metadata": {"labels": {"app": "prometheus"}},
                    "spec": {
                        "containers": [
                            {
                                "name": "prometheus",
                                "image": PROMETHEUS_IMAGE,
                                "args": ["--config.file=/etc/prometheus/prometheus.yml"],
                                "ports": [{"containerPort": 9090}],
                                "volumeMounts": [
                                    {"name": "config", "mountPath": "/etc/prometheus"}
                                ],
                            }
                        ],
                        "volumes": [{"name": "config", "configMap": {"name": "prometheus"}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "prometheus-operated", "namespace": "monitoring"},
            "spec": {"selector": {"app": "prometheus"}, "ports": [{"port": 9090}]},
        },
    ]


def _policy() -> dict[str, object]:
    policy = {
        "apiVersion": "gpuscale.io/v1alpha1",
        "kind": "ScalingPolicy",
        "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "synthetic"},
        "replicas": {"min": 1, "max": 5},
        "interval": "5s",
        "metrics": [
            {
                "name": "queue",
                "type": "queueDepth",
                "query": "sum(synthetic_queue_depth)",
                "targetPerReplica": 4,
            }
        ],
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "synthetic",
            "namespace": "inference",
            "labels": {"gpuscale.io/scaling-policy": "true"},
        },
        "data": {"policy.yaml": yaml.safe_dump(policy)},
    }


def _install(tmp_path: Path) -> None:
    """deploy/overlays/ca-bundle with fresh certificates, our image and the cluster's scheduler."""
    tree = tmp_path / "deploy"
    shutil.copytree(REPO / "deploy", tree)
    ca_bundle = tree / "overlays" / "ca-bundle"
    ca = trustme.CA()
    leaf = ca.issue_cert("gpuscale-controller.gpuscale-system.svc")
    ca.cert_pem.write_to_path(str(ca_bundle / "ca.crt"))
    leaf.cert_chain_pems[0].write_to_path(str(ca_bundle / "tls.crt"))
    leaf.private_key_pem.write_to_path(str(ca_bundle / "tls.key"))
    write_extender_pems(ca_bundle, ca)
    overlay = tmp_path / "e2e"
    overlay.mkdir()
    name, tag = IMAGE.split(":")
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": ["../deploy/overlays/ca-bundle"],
                "images": [
                    {"name": "ghcr.io/gpuscale/gpuscale", "newName": name, "newTag": tag},
                    {"name": "registry.k8s.io/kube-scheduler", "newTag": _server_version()},
                ],
            }
        )
    )
    kubectl("apply", "-k", str(overlay))


def test_install_and_hpa_follows_the_policy(cluster: str, tmp_path: Path) -> None:
    del cluster
    kubectl("apply", "-f", "-", input_=yaml.safe_dump_all(_workloads()))
    wait("--for=condition=Available", "-n", "monitoring", "deployment/prometheus")
    wait("--for=condition=Available", "-n", "inference", "deployment/synthetic")

    _install(tmp_path)
    for deployment in ("gpuscale-controller", "gpuscale-scheduler"):
        wait("--for=condition=Available", "-n", "gpuscale-system", f"deployment/{deployment}")
    wait("--for=condition=Available", "apiservice/v1beta1.external.metrics.k8s.io")
    discovery = json.loads(kubectl("get", "--raw", "/apis/external.metrics.k8s.io/v1beta1"))
    assert discovery["groupVersion"] == "external.metrics.k8s.io/v1beta1"

    kubectl("apply", "-f", "-", input_=yaml.safe_dump(_policy()))
    wait(
        f"--for=jsonpath={{.status.desiredReplicas}}={EXPECTED_REPLICAS}",
        "-n",
        "inference",
        "hpa/gpuscale-synthetic",
    )
    wait(
        f"--for=jsonpath={{.status.readyReplicas}}={EXPECTED_REPLICAS}",
        "-n",
        "inference",
        "deployment/synthetic",
    )
    value = json.loads(
        kubectl(
            "get",
            "--raw",
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/inference/gpuscale_desired_replicas"
            "?labelSelector=gpuscale.io%2Fpolicy%3Dsynthetic",
        )
    )
    assert [item["value"] for item in value["items"]] == [str(EXPECTED_REPLICAS)]
    status = kubectl(
        "get",
        "configmap",
        "-n",
        "inference",
        "synthetic",
        "-o",
        "jsonpath={.metadata.annotations.gpuscale\\.io/status}",
    )
    assert status


def test_second_scheduler_places_pods_that_name_it(cluster: str) -> None:
    del cluster
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "placed-by-gpuscale", "namespace": "inference"},
        "spec": {
            "schedulerName": "gpuscale",
            "containers": [
                {
                    "name": "c",
                    "image": IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["python", "-c", "import time; time.sleep(3600)"],
                }
            ],
        },
    }
    kubectl("apply", "-f", "-", input_=yaml.safe_dump(pod))
    wait("--for=condition=PodScheduled", "-n", "inference", "pod/placed-by-gpuscale")
    events = kubectl(
        "get",
        "events",
        "-n",
        "inference",
        "-o",
        "json",
        "--field-selector",
        "involvedObject.name=placed-by-gpuscale",
    )
    sources = {
        e.get("reportingComponent") or e["source"].get("component")
        for e in json.loads(events)["items"]
        if e["reason"] == "Scheduled"
    }
    assert "gpuscale" in sources
