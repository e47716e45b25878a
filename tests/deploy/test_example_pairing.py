"""The examples connect: the vLLM Deployment's metric labels, the scrape that collects them and
the policy that reads them agree, so that installed as shown no metric is missing.

vLLM puts ``--served-model-name`` into every metric's ``model_name``; the scrape adds the pod's
namespace as ``namespace``, which the controller's namespace enforcement adds to every query.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from policies.parse import PolicyError, load_policy_file, parse_configmap
from policies.promql import parse, selectors
from policies.schema import metric_inputs
from policies.tenancy import scope_policy
from tests.deploy.manifests import DEPLOY, render_dir
from tests.deploy.promql import needs_promtool, promtool_check_rules

EXAMPLES = DEPLOY / "examples"
DEPLOYMENT = EXAMPLES / "workloads" / "llama-chat-deployment.yaml"
POLICY = EXAMPLES / "llama-chat.yaml"
POD_MONITOR = EXAMPLES / "monitoring" / "llama-chat-podmonitor.yaml"
SCRAPE_CONFIG = EXAMPLES / "monitoring" / "prometheus-scrape-config.yaml"


def _one(path: Path) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert isinstance(doc, dict)
    return doc


def _served_model_name(deployment: dict[str, Any]) -> str:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args: list[str] = container["args"]
    assert "--served-model-name" in args, "without it, model_name is the model's path"
    return args[args.index("--served-model-name") + 1]


def _port_names(deployment: dict[str, Any]) -> set[str]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {p["name"] for p in container["ports"]}


def _queries() -> list[str]:
    (policy,) = load_policy_file(POLICY)
    return [q for m in policy.metrics for _, q in metric_inputs(m)]


def test_the_policy_scales_the_example_deployment_in_its_namespace() -> None:
    deployment = _one(DEPLOYMENT)
    (policy,) = load_policy_file(POLICY)
    assert policy.namespace == deployment["metadata"]["namespace"]
    assert (policy.target.kind, policy.target.name) == (
        "Deployment",
        deployment["metadata"]["name"],
    )


def _assert_selectors_read(served: str, namespace: str) -> None:
    """Every selector of the example policy, as the controller scopes it, reads model
    ``served`` in ``namespace``."""
    (policy,) = load_policy_file(POLICY)
    scoped = scope_policy(replace(policy, namespace=namespace))
    for query in [q for m in scoped.metrics for _, q in metric_inputs(m)]:
        for vs in selectors(parse(query)):
            labels = {m.name: (m.op, m.value) for m in vs.matchers}
            assert labels.get("model_name") == ("=", served), f"{vs.name} in {query}"
            assert labels.get("namespace") == ("=", namespace), query
            assert vs.name is not None and vs.name.startswith("vllm:")


def test_every_selector_of_the_policy_reads_the_served_model_name() -> None:
    deployment = _one(DEPLOYMENT)
    _assert_selectors_read(_served_model_name(deployment), deployment["metadata"]["namespace"])


def test_a_mismatch_is_caught() -> None:
    """Guard the guard: vLLM's default model_name (the model path) does not pass."""
    deployment = _one(DEPLOYMENT)
    with pytest.raises(AssertionError, match="model_name"):
        _assert_selectors_read("meta-llama/Llama-3.1-8B-Instruct", "inference")
    with pytest.raises(PolicyError, match='reads namespace "inference"'):
        _assert_selectors_read(_served_model_name(deployment), "team-b")


def test_the_pod_monitor_scrapes_the_deployment_with_its_namespace() -> None:
    deployment = _one(DEPLOYMENT)
    monitor = _one(POD_MONITOR)
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    assert monitor["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in _port_names(deployment)
    assert endpoint.get("honorLabels", False) is False, "a pod could forge another namespace"
    relabel = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
    assert relabel["namespace"] == ["__meta_kubernetes_namespace"]


def test_the_plain_scrape_config_does_the_same() -> None:
    deployment = _one(DEPLOYMENT)
    (job,) = _one(SCRAPE_CONFIG)["scrape_configs"]
    assert job["honor_labels"] is False
    (sd,) = job["kubernetes_sd_configs"]
    assert sd["role"] == "pod"
    assert sd["namespaces"]["names"] == [deployment["metadata"]["namespace"]]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    (selector,) = sd["selectors"]
    key, value = selector["label"].split("=")
    assert pod_labels[key] == value
    rules = job["relabel_configs"]
    (keep,) = [r for r in rules if r.get("action") == "keep"]
    assert keep["source_labels"] == ["__meta_kubernetes_pod_container_port_name"]
    assert keep["regex"] in _port_names(deployment)
    (ns,) = [r for r in rules if r.get("target_label") == "namespace"]
    assert ns["source_labels"] == ["__meta_kubernetes_namespace"]


@needs_promtool
def test_the_policy_queries_are_valid_promql(tmp_path: Path) -> None:
    rules = [{"record": f"example:query:{i}", "expr": q} for i, q in enumerate(_queries())]
    out = promtool_check_rules(tmp_path, [{"name": "llama-chat", "rules": rules}])
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_kustomize_example_is_the_same_policy_as_its_configmap() -> None:
    """policy.yaml as a file of its own (configMapGenerator) renders to the example ConfigMap's
    policy, under the same name, with the label and without a hash suffix."""
    folder = EXAMPLES / "kustomize" / "llama-chat"
    (configmap,) = render_dir(folder)
    (example,) = load_policy_file(POLICY)
    assert parse_configmap(configmap) == example
    (bare,) = load_policy_file(folder / "policy.yaml", namespace="inference", name="llama-chat")
    assert bare == example
