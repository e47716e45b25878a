"""The root README's install section is what the real-node e2e does: its kustomize overlay, its
Helm values, Secrets and commands are compared here with the ones the e2e builds, so that one
cannot change without the other (no cluster needed)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.install import REPO, ServingCert
from tests.e2e.test_cluster_helm_node import (
    UPGRADE_SET,
    helm_values,
    tls_secret_commands,
)
from tests.e2e.test_cluster_kustomize_node import my_overlay

README = REPO / "README.md"
PROMETHEUS_URL = "http://prometheus.observability.svc:9090"
"""The README's stand-in for your Prometheus (the e2e's is a relay on its bridge)."""


def _install_section() -> str:
    text = README.read_text()
    start = text.index("## Install into a cluster")
    return text[start : text.index("\n## ", start + 1)]


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", _install_section(), re.S)


def _yaml_block(first_line: str) -> Any:
    [block] = [b for b in _blocks("yaml") if b.startswith(first_line)]
    return yaml.safe_load(block)


def _commands() -> list[list[str]]:
    """The README's shell lines, continuations joined, comments dropped, split like a shell."""
    out = []
    for block in _blocks("sh"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                out.append(shlex.split(line))
    return out


def test_the_kustomize_overlay_is_the_e2es() -> None:
    readme = _yaml_block("# my-gpuscale/kustomization.yaml")
    ours = my_overlay(PROMETHEUS_URL)
    for doc in (readme, ours):  # the patches are YAML in a string: compare what they say
        for patch in doc["patches"]:
            patch["patch"] = yaml.safe_load(patch["patch"])
    assert readme == ours


def test_the_helm_values_are_the_e2es() -> None:
    assert _yaml_block("# values.yaml") == helm_values(PROMETHEUS_URL)


def test_the_tls_secrets_are_created_as_the_e2e_creates_them(tmp_path: Path) -> None:
    cert = ServingCert(tmp_path)
    ours = [
        [
            "kubectl",
            *(a.replace(f"{tmp_path}/", "") for a in cmd if a != "--namespace=gpuscale-system"),
        ]
        for cmd in tls_secret_commands(cert)
    ]
    readme = [
        [a for a in cmd if a not in ("-n", "gpuscale-system")]
        for cmd in _commands()
        if cmd[:3] == ["kubectl", "-n", "gpuscale-system"] and cmd[3:5] == ["create", "secret"]
    ]
    assert readme == ours


def test_the_helm_commands_are_the_e2es() -> None:
    helm = {cmd[1]: cmd for cmd in _commands() if cmd[0] == "helm"}
    install = helm["install"]
    assert install[2:4] == ["gpuscale", "deploy/helm/gpuscale"]
    assert "--values" in install and "tls.source=caBundle" in install
    assert any(a.startswith("tls.caBundle=") for a in install)
    assert helm["upgrade"][-4:-1] == ["--reuse-values", "--set", UPGRADE_SET]
    assert helm["upgrade"][-1] == "--wait"
    assert helm["uninstall"] == [
        "helm",
        "uninstall",
        "gpuscale",
        "--namespace",
        "gpuscale-system",
        "--wait",
    ]


def test_kubectl_apply_and_delete_k_name_the_overlay() -> None:
    commands = _commands()
    assert ["kubectl", "apply", "-k", "my-gpuscale/"] in commands
    assert ["kubectl", "delete", "-k", "my-gpuscale/"] in commands
