"""The opt-in ValidatingAdmissionPolicy keeps the node agent to its own node's gpuscale.io/gpus.

Its CEL is evaluated with cel-python against admission requests built here (the API server uses
cel-go; the expressions stick to the common subset: ``has``, ``in``, ``all``, ``==``).
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import celpy
import kubernetes_validate
import pytest
import yaml
from celpy.adapter import json_to_cel

from tests.deploy.manifests import DEPLOY, render_dir
from tests.deploy.test_render_validate import VERSIONS

COMPONENT = DEPLOY / "components" / "node-agent-admission"
AGENT = "system:serviceaccount:gpuscale-system:gpuscale-node-agent"
NODE = {
    "metadata": {
        "name": "gpu-node-1",
        "labels": {"nvidia.com/gpu.present": "true"},
        "annotations": {"gpuscale.io/gpus": "[]", "other": "x"},
    },
    "spec": {"taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]},
}


def _policy() -> dict[str, Any]:
    docs = list(yaml.safe_load_all((COMPONENT / "policy.yaml").read_text()))
    policies: list[dict[str, Any]] = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"]
    (policy,) = policies
    return policy


def _evaluate(expression: str, activation: dict[str, Any]) -> bool:
    env = celpy.Environment()
    program = env.program(env.compile(expression))
    return bool(program.evaluate({k: json_to_cel(v) for k, v in activation.items()}))


def _admit(
    new: dict[str, Any],
    *,
    old: dict[str, Any] = NODE,
    user: str = AGENT,
    node_name: str | None = "gpu-node-1",
) -> bool:
    """True when the policy lets the update through (or does not apply to it)."""
    policy = _policy()["spec"]
    extra = {"authentication.kubernetes.io/node-name": [node_name]} if node_name else {}
    activation = {
        "object": new,
        "oldObject": old,
        "request": {"userInfo": {"username": user, "extra": extra}},
    }
    if not all(_evaluate(c["expression"], activation) for c in policy["matchConditions"]):
        return True
    return all(_evaluate(v["expression"], activation) for v in policy["validations"])


def _changed(**edits: Any) -> dict[str, Any]:
    node = copy.deepcopy(NODE)
    for path, value in edits.items():
        where: dict[str, Any] = node
        *parents, last = path.split("__")
        for key in parents:
            where = where.setdefault(key, {})
        if value is None:
            where.pop(last, None)
        else:
            where[last] = value
    return node


def test_agent_may_update_its_own_nodes_gpu_annotation() -> None:
    annotations = {"gpuscale.io/gpus": '[{"index": 0}]', "other": "x"}
    assert _admit(_changed(metadata__annotations=annotations))


def test_agent_may_add_the_annotation_to_a_bare_node() -> None:
    bare = _changed(metadata__annotations=None)
    assert _admit(_changed(metadata__annotations={"gpuscale.io/gpus": "[]"}), old=bare)


@pytest.mark.parametrize(
    ("why", "node", "kwargs"),
    [
        (
            "another node",
            _changed(metadata__annotations={"gpuscale.io/gpus": "[1]", "other": "x"}),
            {"node_name": "gpu-node-2"},
        ),
        ("a token not bound to a pod", _changed(), {"node_name": None}),
        (
            "another annotation",
            _changed(metadata__annotations={"gpuscale.io/gpus": "[]", "other": "y"}),
            {},
        ),
        ("an annotation removed", _changed(metadata__annotations={"gpuscale.io/gpus": "[]"}), {}),
        ("a label", _changed(metadata__labels={"nvidia.com/gpu.present": "false"}), {}),
        ("the labels removed", _changed(metadata__labels=None), {}),
        ("the spec", _changed(spec__taints=[]), {}),
    ],
)
def test_agent_may_not_change(why: str, node: dict[str, Any], kwargs: dict[str, Any]) -> None:
    assert not _admit(node, **kwargs), why


def test_other_users_are_not_affected() -> None:
    assert _admit(_changed(metadata__labels={}), user="system:node:gpu-node-1")


@pytest.mark.parametrize("version", VERSIONS)
def test_component_renders_and_validates(tmp_path: Path, version: str) -> None:
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "resources: [../deploy/base]\ncomponents: [../deploy/components/node-agent-admission]\n"
    )
    objs = render_dir(overlay)
    kinds = {o["kind"] for o in objs}
    assert {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} <= kinds
    for obj in objs:
        if obj["kind"].startswith("ValidatingAdmissionPolicy"):
            assert obj["metadata"].get("namespace") is None
            kubernetes_validate.validate(obj, version, strict=True)
    sa = next(
        o for o in objs if o["kind"] == "ServiceAccount" and "node-agent" in o["metadata"]["name"]
    )
    assert f"system:serviceaccount:{sa['metadata']['namespace']}:{sa['metadata']['name']}" == AGENT
