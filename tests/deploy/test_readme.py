"""deploy/README.md: its overlay example renders, and it names what the issue asks for."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import yaml

from tests.deploy.manifests import DEPLOY, find, render, render_dir

README = (DEPLOY / "README.md").read_text()


def _yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", README, flags=re.S)


def test_the_overlay_example_renders_with_its_changes(tmp_path: Path) -> None:
    (block,) = [b for b in _yaml_blocks() if "kind: Kustomization" in b]
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    mine = tmp_path / "my-gpuscale"
    mine.mkdir()
    (mine / "kustomization.yaml").write_text(block)
    config = yaml.safe_load(block)
    objs = render_dir(mine)

    controller = find(objs, "Deployment", "gpuscale-controller")["spec"]["template"]["spec"]
    args = controller["containers"][0]["args"]
    assert "--prometheus-url=http://prometheus.observability.svc:9090" in args
    assert len([a for a in args if a.startswith("--prometheus-url")]) == 1
    scheduler = find(objs, "Deployment", "gpuscale-scheduler")["spec"]["template"]["spec"]
    images = {c["name"]: c["image"] for c in scheduler["containers"]}
    wanted = {i["name"]: f"{i.get('newName', i['name'])}:{i['newTag']}" for i in config["images"]}
    assert images["kube-scheduler"] == wanted["registry.k8s.io/kube-scheduler"]
    assert images["extender"] == wanted["ghcr.io/gpuscale/gpuscale"]
    assert not images["extender"].startswith("ghcr.io/"), "no public image: the README builds one"


def test_readme_has_the_verify_commands_and_every_section() -> None:
    for command in (
        "kubectl apply -k deploy/",
        "kubectl get apiservice v1beta1.external.metrics.k8s.io",
        'kubectl get --raw "/apis/external.metrics.k8s.io/v1beta1"',
        "kubectl -n inference describe hpa gpuscale-llama-chat",
        "kubectl delete -k deploy/",
        "--actuation=prometheus",
    ):
        assert command in README, command
    for heading in (
        "## Install",
        "## Verify",
        "## A first policy",
        "## Watch it work",
        "## Uninstall",
        "## KEDA or prometheus-adapter already installed",
    ):
        assert heading in README


def test_readme_names_real_files_and_alerts() -> None:
    for path in re.findall(
        r"`((?:overlays|components|adapters|examples|monitoring)/[\w./-]+)`", README
    ):
        assert (DEPLOY / path).exists(), path
    rule = find(render("overlays/with-monitoring"), "PrometheusRule", "gpuscale")
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(re.findall(r"`(Gpuscale\w+)`", README)) == alerts
