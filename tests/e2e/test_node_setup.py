"""The real node's decisions that need no node: when it skips and why, which names an image
archive carries, and what a pod for it looks like. (The node itself: test_cluster_node.py.)"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.cluster.node_images import HTTP, oci_archive
from tests.e2e import node
from tests.e2e.cluster import ClusterError
from tests.e2e.node import TAINT, RealNode, archive_image_names, unavailable_reason


def test_not_root_is_a_reason_to_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert unavailable_reason() == (
        "a real node needs root (containerd, runc, bridge networking, iptables)"
    )


def test_missing_packages_are_named_with_the_command_that_installs_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 0)
    monkeypatch.setattr("shutil.which", lambda exe: None if exe == "runc" else f"/x/{exe}")
    monkeypatch.setattr(node, "CNI_DIR", tmp_path)  # no plugins there
    assert unavailable_reason() == (
        "a real node needs Debian's runc, containernetworking-plugins: "
        "apt-get install runc containernetworking-plugins (make e2e installs them)"
    )


def _tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_image_names_from_a_docker_archive_and_an_oci_layout(tmp_path: Path) -> None:
    manifest = [{"Config": "c.json", "RepoTags": ["localhost/gpuscale:dev"], "Layers": []}]
    docker = _tar(tmp_path / "d.tar", {"manifest.json": json.dumps(manifest).encode()})
    assert archive_image_names(docker) == ["localhost/gpuscale:dev"]
    oci = tmp_path / "o.tar"
    oci.write_bytes(oci_archive(HTTP, b"\x7fELF"))
    assert archive_image_names(oci) == [HTTP.name]
    # A bare tag in ref.name is no name containerd would store it under.
    index = {"manifests": [{"annotations": {"org.opencontainers.image.ref.name": "dev"}}]}
    assert (
        archive_image_names(_tar(tmp_path / "t.tar", {"index.json": json.dumps(index).encode()}))
        == []
    )
    with pytest.raises(ClusterError, match="neither a docker-archive nor an OCI layout"):
        archive_image_names(_tar(tmp_path / "x.tar", {"README": b"hi"}))


def test_a_pod_for_the_node_is_bound_to_it_and_tolerates_its_taint(tmp_path: Path) -> None:
    real = RealNode(cp=None, workdir=tmp_path)  # type: ignore[arg-type]  # pod_spec needs no cluster
    spec = real.pod_spec([{"name": "c", "image": "i"}], restartPolicy="Never")
    assert spec["nodeName"] == "real-0"
    assert spec["restartPolicy"] == "Never"
    (toleration,) = spec["tolerations"]
    assert {k: toleration[k] for k in ("key", "value", "effect")} == dict(TAINT)
    assert toleration["operator"] == "Equal"
