"""Least privilege and pod security, asserted on the rendered default install."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.manifests import DEPLOY, Obj, containers, find, ident, pod_specs, render

SECURE_PORTS_PROBED = {"gpuscale-controller", "gpuscale-scheduler"}


@pytest.fixture(scope="module")
def objs() -> list[Obj]:
    return render()


def _rules(objs: list[Obj]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (ident(o), rule)
        for o in objs
        if o["kind"] in {"ClusterRole", "Role"}
        for rule in o.get("rules", [])
    ]


def test_no_wildcards_in_rbac(objs: list[Obj]) -> None:
    rules = _rules(objs)
    assert len(rules) >= 10
    for where, rule in rules:
        for field in ("verbs", "resources", "apiGroups", "resourceNames", "nonResourceURLs"):
            assert "*" not in rule.get(field, []), f"{where}: wildcard in {field}: {rule}"
            assert not any("*" in item for item in rule.get(field, [])), where


def test_no_escalating_verbs_or_secret_access(objs: list[Obj]) -> None:
    for where, rule in _rules(objs):
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), where
        assert "secrets" not in rule.get("resources", []), where


def test_bindings_only_grant_built_in_or_our_roles(objs: list[Obj]) -> None:
    ours = {o["metadata"]["name"] for o in objs if o["kind"] in {"ClusterRole", "Role"}}
    built_in = {
        "system:auth-delegator",
        "system:kube-scheduler",
        "system:volume-scheduler",
        "extension-apiserver-authentication-reader",
    }
    for o in objs:
        if o["kind"] in {"ClusterRoleBinding", "RoleBinding"}:
            name = o["roleRef"]["name"]
            assert name in ours | built_in, f"{ident(o)} grants {name}"
            assert name not in {"cluster-admin", "admin", "edit"}


def test_every_rbac_rule_is_commented_in_the_sources() -> None:
    """Each rule in deploy/**/rbac.yaml is preceded by a comment saying why."""
    files = sorted(DEPLOY.glob("**/rbac.yaml"))
    assert len(files) >= 3
    for path in files:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.strip().startswith("- apiGroups:"):
                assert lines[i - 1].strip().startswith("#"), f"{path}:{i + 1}: rule without a why"


def test_external_metrics_are_readable_by_the_hpa_controller_only_for_our_metric(
    objs: list[Obj],
) -> None:
    binding = find(objs, "ClusterRoleBinding", "gpuscale-external-metrics-reader")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "horizontal-pod-autoscaler", "namespace": "kube-system"}
    ]
    role = find(objs, "ClusterRole", binding["roleRef"]["name"])
    assert role["rules"] == [
        {
            "apiGroups": ["external.metrics.k8s.io"],
            "resources": ["gpuscale_desired_replicas"],
            "verbs": ["get", "list"],
        }
    ]


def test_leases_are_named_and_namespaced(objs: list[Obj]) -> None:
    for where, rule in _rules(objs):
        if "leases" in rule.get("resources", []) and set(rule["verbs"]) != {"create"}:
            assert rule.get("resourceNames"), f"{where}: lease access not limited by name"
            assert where.startswith("Role/gpuscale-system/"), where


def test_auth_reader_bindings_live_in_kube_system(objs: list[Obj]) -> None:
    readers = [
        o
        for o in objs
        if o["kind"] == "RoleBinding"
        and o["roleRef"]["name"] == "extension-apiserver-authentication-reader"
    ]
    assert {o["metadata"]["namespace"] for o in readers} == {"kube-system"}
    assert {s["name"] for o in readers for s in o["subjects"]} == {
        "gpuscale-controller",
        "gpuscale-scheduler",
    }


def test_pods_run_non_root_with_default_seccomp(objs: list[Obj]) -> None:
    specs = list(pod_specs(objs))
    assert len(specs) == 3
    for where, spec in specs:
        ctx = spec["securityContext"]
        assert ctx["runAsNonRoot"] is True, where
        assert ctx["runAsUser"] == 65532, where
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), where
        assert not any("hostPath" in v for v in spec.get("volumes", [])), where


def test_containers_are_locked_down(objs: list[Obj]) -> None:
    found = list(containers(objs))
    assert len(found) == 4
    for where, _spec, c in found:
        ctx = c["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False, where
        assert ctx["readOnlyRootFilesystem"] is True, where
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == 65532, where
        assert ctx["capabilities"] == {"drop": ["ALL"]}, where
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert not ctx.get("privileged", False), where


def test_every_container_has_requests_and_limits(objs: list[Obj]) -> None:
    for where, _spec, c in containers(objs):
        res = c["resources"]
        assert set(res["requests"]) == {"cpu", "memory"}, where
        assert set(res["limits"]) == {"cpu", "memory"}, where


def test_serving_containers_probe_livez_and_readyz(objs: list[Obj]) -> None:
    probed = 0
    for where, _spec, c in containers(objs):
        probed += 1
        port_names = {p["name"] for p in c["ports"]}
        assert c["livenessProbe"]["httpGet"]["path"] == "/livez", where
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", where
        for probe in (c["livenessProbe"], c["readinessProbe"]):
            assert probe["httpGet"]["port"] in port_names, where
    assert probed == 4


def test_controller_uses_the_ops_port_for_probes_and_https_for_the_api(objs: list[Obj]) -> None:
    c = find(objs, "Deployment", "gpuscale-controller")["spec"]["template"]["spec"]["containers"][0]
    assert c["livenessProbe"]["httpGet"]["port"] == "ops"
    assert c["readinessProbe"]["httpGet"]["port"] == "ops"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"https": 6443, "ops": 8080}
    assert "--ops-address=0.0.0.0:8080" in c["args"]
    assert "--secure-address=0.0.0.0:6443" in c["args"]


def test_grace_period_covers_the_ten_second_shutdown(objs: list[Obj]) -> None:
    for where, spec in pod_specs(objs):
        assert 12 <= spec["terminationGracePeriodSeconds"] <= 30, where


def test_namespace_enforces_restricted_pod_security(objs: list[Obj]) -> None:
    labels = find(objs, "Namespace", "gpuscale-system")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_controller_is_highly_available(objs: list[Obj]) -> None:
    deployment = find(objs, "Deployment", "gpuscale-controller")
    assert deployment["spec"]["replicas"] == 2
    assert "--leader-elect" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    anti = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    term = anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    pdb = find(objs, "PodDisruptionBudget", "gpuscale-controller")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]


def test_network_policies_deny_by_default_and_open_only_named_ports(objs: list[Obj]) -> None:
    policies = {o["metadata"]["name"]: o for o in objs if o["kind"] == "NetworkPolicy"}
    deny = policies["gpuscale-default-deny-ingress"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}
    controller = policies["gpuscale-controller"]["spec"]["ingress"]
    api_rule = next(r for r in controller if r["ports"][0]["port"] == "https")
    ops_rule = next(r for r in controller if r["ports"][0]["port"] == "ops")
    assert "from" not in api_rule  # the API server is not selectable; mTLS guards the port
    assert ops_rule["from"]
    scheduler = policies["gpuscale-scheduler"]["spec"]["ingress"]
    assert all(r.get("from") for r in scheduler), "extender reachable from anywhere"
    # every named port exists on the selected pods
    for policy in policies.values():
        selector = policy["spec"]["podSelector"].get("matchLabels", {})
        ports: set[str] = set()
        for _where, spec, c in containers(objs):
            del spec
            ports |= {p["name"] for p in c.get("ports", [])}
        for rule in policy["spec"].get("ingress", []):
            for port in rule["ports"]:
                assert port["port"] in ports, (policy["metadata"]["name"], port)
        assert selector or policy["metadata"]["name"] == "gpuscale-default-deny-ingress"


def test_node_agent_runs_on_gpu_nodes_only(objs: list[Obj]) -> None:
    spec = find(objs, "DaemonSet", "gpuscale-node-agent")["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    tolerated = {(t["key"], t.get("effect")) for t in spec["tolerations"]}
    assert ("nvidia.com/gpu", "NoSchedule") in tolerated
    env = {e["name"]: e for e in spec["containers"][0]["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    for c in spec["containers"]:
        limits = c["resources"]["limits"]
        assert "nvidia.com/gpu" not in limits, "the agent must not take a GPU from workloads"


def test_scheduler_config_matches_the_extender_contract(objs: list[Obj]) -> None:
    (cm,) = (
        o
        for o in objs
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("gpuscale-scheduler-")
    )
    config = yaml.safe_load(cm["data"]["config.yaml"])
    assert config["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    assert config["kind"] == "KubeSchedulerConfiguration"
    assert [p["schedulerName"] for p in config["profiles"]] == ["gpuscale"]
    election = config["leaderElection"]
    assert election["leaderElect"] is True
    assert election["resourceNamespace"] == "gpuscale-system"
    (extender,) = config["extenders"]
    assert extender["urlPrefix"] == "https://127.0.0.1:8888"
    assert extender["filterVerb"] == "filter"
    assert extender["prioritizeVerb"] == "prioritize"
    assert extender["bindVerb"] == "bind"
    assert extender["nodeCacheCapable"] is True
    assert extender["ignorable"] is True
    assert extender["weight"] >= 1
    assert extender["managedResources"] == [
        {"name": "gpuscale.io/gpu-memory", "ignoredByScheduler": True},
        {"name": "nvidia.com/gpu", "ignoredByScheduler": False},
    ]
    # The lease the scheduler elects with is one its Role may get and update.
    role = find(objs, "Role", "gpuscale-scheduler-leader-election")
    named = [r for r in role["rules"] if r.get("resourceNames")]
    assert named[0]["resourceNames"] == [election["resourceName"]]
    # The extender listens where urlPrefix points.
    deployment = find(objs, "Deployment", "gpuscale-scheduler")
    pod = deployment["spec"]["template"]["spec"]
    ext = next(c for c in pod["containers"] if c["name"] == "extender")
    assert "--address=0.0.0.0:8888" in ext["args"]
    assert "--plain-http-sidecar" not in ext["args"]
    sched = next(c for c in pod["containers"] if c["name"] == "kube-scheduler")
    assert sched["image"].startswith("registry.k8s.io/kube-scheduler:v")
    mount = next(m for m in sched["volumeMounts"] if m["name"] == "config")
    assert f"--config={mount['mountPath']}/config.yaml" in sched["args"]
    volume = next(v for v in pod["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == cm["metadata"]["name"]


# Fields of kubescheduler.config.k8s.io/v1 (k8s.io/kube-scheduler/config/v1/types.go); the
# schema validator does not know this file format, so unknown keys are caught here.
_CONFIG_FIELDS = {
    "apiVersion",
    "kind",
    "parallelism",
    "leaderElection",
    "clientConnection",
    "enableProfiling",
    "enableContentionProfiling",
    "percentageOfNodesToScore",
    "podInitialBackoffSeconds",
    "podMaxBackoffSeconds",
    "profiles",
    "extenders",
    "delayCacheUntilActive",
}
_ELECTION_FIELDS = {
    "leaderElect",
    "leaseDuration",
    "renewDeadline",
    "retryPeriod",
    "resourceLock",
    "resourceName",
    "resourceNamespace",
}
_EXTENDER_FIELDS = {
    "urlPrefix",
    "filterVerb",
    "preemptVerb",
    "prioritizeVerb",
    "weight",
    "bindVerb",
    "enableHTTPS",
    "tlsConfig",
    "httpTimeout",
    "nodeCacheCapable",
    "managedResources",
    "ignorable",
}


def test_scheduler_config_has_no_unknown_fields() -> None:
    config = yaml.safe_load(
        Path(DEPLOY / "base/install/scheduler/kube-scheduler-config.yaml").read_text()
    )
    assert set(config) <= _CONFIG_FIELDS
    assert set(config["leaderElection"]) <= _ELECTION_FIELDS
    for extender in config["extenders"]:
        assert set(extender) <= _EXTENDER_FIELDS
        for resource in extender["managedResources"]:
            assert set(resource) <= {"name", "ignoredByScheduler"}
    for profile in config["profiles"]:
        assert set(profile) <= {
            "schedulerName",
            "percentageOfNodesToScore",
            "plugins",
            "pluginConfig",
        }


def _mounted_file(pod: Obj, container: Obj, path: str) -> tuple[str, str]:
    """(Secret name, key) behind a file path in a container's Secret volume mounts."""
    for mount in container.get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(prefix):
            volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
            return volume["secret"]["secretName"], path[len(prefix) :]
    raise AssertionError(f"{container['name']}: nothing mounted at {path}")


def test_kube_scheduler_calls_the_extender_over_mtls_with_certificates_it_mounts(
    objs: list[Obj],
) -> None:
    (cm,) = (
        o
        for o in objs
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("gpuscale-scheduler-")
    )
    (extender,) = yaml.safe_load(cm["data"]["config.yaml"])["extenders"]
    assert extender["enableHTTPS"] is True
    tls = extender["tlsConfig"]
    assert not tls.get("insecure", False)
    pod = find(objs, "Deployment", "gpuscale-scheduler")["spec"]["template"]["spec"]
    sched = next(c for c in pod["containers"] if c["name"] == "kube-scheduler")
    ext = next(c for c in pod["containers"] if c["name"] == "extender")
    client = {k: _mounted_file(pod, sched, tls[k]) for k in ("certFile", "keyFile", "caFile")}
    assert client == {
        "certFile": ("gpuscale-scheduler-client-tls", "tls.crt"),
        "keyFile": ("gpuscale-scheduler-client-tls", "tls.key"),
        "caFile": ("gpuscale-scheduler-client-tls", "ca.crt"),
    }
    flags = dict(a.split("=", 1) for a in ext["args"] if "=" in a)
    served = {f: _mounted_file(pod, ext, flags[f]) for f in ("--tls-cert-file", "--client-ca-file")}
    assert served == {
        "--tls-cert-file": ("gpuscale-extender-tls", "tls.crt"),
        "--client-ca-file": ("gpuscale-extender-tls", "ca.crt"),
    }
    assert flags["--allowed-client-names"] == "system:kube-scheduler"
    # Probes and scrapes use the plain ops port, never the mTLS one.
    ports = {p["name"]: p["containerPort"] for p in ext["ports"]}
    assert flags["--ops-address"].endswith(f":{ports['extender-ops']}")
    for probe in ("livenessProbe", "readinessProbe"):
        assert ext[probe]["httpGet"]["port"] == "extender-ops"
    # With cert-manager, the certificates name what the other side checks.
    certificates = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Certificate"}
    if certificates:
        serving = certificates["gpuscale-extender"]["spec"]
        assert serving["secretName"] == "gpuscale-extender-tls"
        assert tls["serverName"] in serving["dnsNames"]
        scheduler = certificates["gpuscale-scheduler-client"]["spec"]
        assert scheduler["secretName"] == "gpuscale-scheduler-client-tls"
        assert scheduler["commonName"] == flags["--allowed-client-names"]
        assert scheduler["usages"][0] == "client auth"
        issuers = {serving["issuerRef"]["name"], scheduler["issuerRef"]["name"]}
        assert issuers == {"gpuscale-ca"}  # one CA: each side's ca.crt verifies the other
