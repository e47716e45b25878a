"""Each Kubernetes API call in the code is allowed by the role of the pod that runs it.

The calls are found in the source (``read_namespaced_lease``, ``patch_node``…), so a new call
without a matching RBAC rule fails here rather than with a 403 in a cluster.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

from tests.deploy.manifests import REPO, Obj, render, render_dir

_VERBS = {
    "read": "get",
    "list": "list",
    "create": "create",
    "patch": "patch",
    "replace": "update",
    "delete": "delete",
}
# python client resource spelling -> (API group, resource)
_RESOURCES = {
    "config_map": ("", "configmaps"),
    "event": ("", "events"),
    "lease": ("coordination.k8s.io", "leases"),
    "horizontal_pod_autoscaler": ("autoscaling", "horizontalpodautoscalers"),
    "deployment_scale": ("apps", "deployments/scale"),
    "replica_set_scale": ("apps", "replicasets/scale"),
    "stateful_set_scale": ("apps", "statefulsets/scale"),
    "deployment": ("apps", "deployments"),
    "replica_set": ("apps", "replicasets"),
    "stateful_set": ("apps", "statefulsets"),
    "node": ("", "nodes"),
    "pod": ("", "pods"),
    "binding": ("", "pods/binding"),
    "pod_binding": ("", "pods/binding"),
    "resource_slice": ("resource.k8s.io", "resourceslices"),
    "resource_claim": ("resource.k8s.io", "resourceclaims"),
    "device_class": ("resource.k8s.io", "deviceclasses"),
}
_CALL = re.compile(
    r"(read|list|create|patch|replace|delete)_(?:namespaced_)?([a-z_]+?)(?:_for_all_namespaces)?"
)
_SUFFIX = re.compile(r"_(?:with_http_info|without_preload_content)$")

# Which sources run under which ServiceAccount: the node agent's modules (NVML reading, node
# patching) run in the DaemonSet, the rest of extender/ beside kube-scheduler.
_NODE_AGENT = ("*node_agent*.py", "*nvml*.py")
# `gpuscale status` runs with the credentials of whoever types it (Kubernetes' built-in `view`
# ClusterRole covers its LISTs of ConfigMaps, HPAs and Events), never as the controller.
_CLI_ONLY = ("overview.py",)


# The device plugin (extender/device_plugin/) runs in the node agent too, with the RBAC of
# components/device-plugin added.
DEVICE_PLUGIN = "gpuscale-node-agent+device-plugin"


def _sources(account: str) -> list[Path]:
    agent = {p for pattern in _NODE_AGENT for p in (REPO / "extender").rglob(pattern)}
    plugin = set((REPO / "extender" / "device_plugin").rglob("*.py"))
    if account == "gpuscale-controller":
        return sorted(p for p in (REPO / "autoscaler").rglob("*.py") if p.name not in _CLI_ONLY)
    if account == "gpuscale-node-agent":
        return sorted(agent)
    if account == DEVICE_PLUGIN:
        return sorted(agent | plugin)
    assert account == "gpuscale-scheduler"
    return sorted(set((REPO / "extender").rglob("*.py")) - agent - plugin)


ACCOUNTS = ("gpuscale-controller", "gpuscale-scheduler", "gpuscale-node-agent")


def _api_methods() -> set[str]:
    """Method names of the generated Kubernetes API classes the code may use."""
    from kubernetes import client

    classes = (
        client.CoreV1Api,
        client.AppsV1Api,
        client.AutoscalingV2Api,
        client.CoordinationV1Api,
        client.EventsV1Api,
        client.ResourceV1Api,
    )
    return {name for cls in classes for name in dir(cls) if _CALL.fullmatch(name)}


def _calls(paths: list[Path]) -> set[tuple[str, str, str]]:
    """(verb, group, resource) of every generated-client method the sources refer to.

    Attribute names and string constants (methods picked by name) are read from the syntax
    tree; names the sources define themselves (a cache's ``delete_pod``) are not API calls.
    """
    api = _api_methods()
    used: set[str] = set()
    defined: set[str] = set()
    for path in paths:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                used.add(node.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                used.add(node.value)  # methods looked up by name (getattr)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                defined.add(node.name)
    used = {_SUFFIX.sub("", name) for name in used}
    found = set()
    for name in (used & api) - defined:
        match = _CALL.fullmatch(name)
        assert match is not None
        verb, resource = match.groups()
        assert resource in _RESOURCES, f"the code calls {name}: add its resource to this test"
        group, plural = _RESOURCES[resource]
        found.add((_VERBS[verb], group, plural))
        if verb == "list":
            found.add(("watch", group, plural))  # list-then-watch
    return found


def _allowed(objs: list[Obj], account: str) -> set[tuple[str, str, str]]:
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objs if "rules" in o}
    allowed = set()
    for binding in objs:
        if binding["kind"] not in {"RoleBinding", "ClusterRoleBinding"}:
            continue
        if not any(s.get("name") == account for s in binding["subjects"]):
            continue
        role = by_name.get((binding["roleRef"]["kind"], binding["roleRef"]["name"]))
        if role is None:
            continue  # a built-in role
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        allowed.add((verb, group, resource))
    return allowed


def _with_device_plugin(tmp: Path) -> list[Obj]:
    (tmp / "kustomization.yaml").write_text(
        f"resources: [{os.path.relpath(REPO / 'deploy', tmp)}]\n"
        f"components: [{os.path.relpath(REPO / 'deploy/components/device-plugin', tmp)}]\n"
    )
    return render_dir(tmp)


_NEVER_WATCHED: dict[str, set[tuple[str, str, str]]] = {
    DEVICE_PLUGIN: {("watch", "", "pods")},  # it lists afresh at each Allocate
    # HPAs are listed by a policy's label to delete stale variant HPAs, never watched
    "gpuscale-controller": {("watch", "autoscaling", "horizontalpodautoscalers")},
}
"""Lists the code makes without a watch after them (the finder assumes list-then-watch)."""


def account_calls(account: str) -> set[tuple[str, str, str]]:
    """The API calls in ``account``'s sources: what its roles must allow, here and in e2e."""
    return _calls(_sources(account)) - _NEVER_WATCHED.get(account, set())


# Calls the controller makes only for policies that opt in, with RBAC from an opt-in component.
_OPT_IN = {("patch", "", "pods"): "pod-deletion-cost"}


@pytest.mark.parametrize("account", [*ACCOUNTS, DEVICE_PLUGIN])
def test_roles_cover_the_calls_in_the_code(account: str, tmp_path: Path) -> None:
    objs = _with_device_plugin(tmp_path) if account == DEVICE_PLUGIN else render()
    name = account.partition("+")[0]
    missing = account_calls(account) - _allowed(objs, name)
    if account == "gpuscale-controller":
        missing -= set(_OPT_IN)
    assert not missing, f"{account} lacks RBAC for {sorted(missing)}"


@pytest.mark.parametrize(("call", "component"), sorted(_OPT_IN.items()))
def test_opt_in_calls_are_granted_by_their_component_only(
    call: tuple[str, str, str], component: str, tmp_path: Path
) -> None:
    assert call in _calls(_sources("gpuscale-controller"))
    assert call not in _allowed(render(), "gpuscale-controller")
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: [{os.path.relpath(REPO / 'deploy', tmp_path)}]\n"
        f"components: [{os.path.relpath(REPO / 'deploy/components' / component, tmp_path)}]\n"
    )
    assert call in _allowed(render_dir(tmp_path), "gpuscale-controller")


def test_call_finder_sees_the_device_plugins_calls() -> None:
    calls = _calls(_sources(DEVICE_PLUGIN))
    assert {("list", "", "pods"), ("create", "", "events")} <= calls


def test_call_finder_sees_the_controllers_calls() -> None:
    calls = _calls(_sources("gpuscale-controller"))
    assert ("get", "coordination.k8s.io", "leases") in calls
    assert ("patch", "", "configmaps") in calls
    assert ("get", "apps", "statefulsets/scale") in calls
    # a *_without_preload_content twin
    assert ("watch", "", "pods") in _calls(_sources("gpuscale-scheduler"))
