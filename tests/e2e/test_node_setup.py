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


def test_relay_carries_both_directions_to_a_loopback_port() -> None:
    """What pods use to reach loopback servers (the API server, Prometheus): bytes go through
    both ways, and each side's close reaches the other."""
    import socket
    import threading

    upstream = socket.create_server(("127.0.0.1", 0))

    def echo_upper() -> None:
        conn, _ = upstream.accept()
        with conn:
            data = b""
            while chunk := conn.recv(1024):
                data += chunk
            conn.sendall(data.upper())

    threading.Thread(target=echo_upper, daemon=True).start()
    relay = node.Relay("127.0.0.1", upstream.getsockname()[1])
    try:
        with socket.create_connection(relay.address, timeout=5) as client:
            client.sendall(b"through the relay")
            client.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := client.recv(1024):
                answer += chunk
        assert answer == b"THROUGH THE RELAY"
    finally:
        relay.close()
        upstream.close()
    with pytest.raises(OSError):
        socket.create_connection(relay.address, timeout=1).close()


def test_gateway_is_the_pod_cidrs_first_address(tmp_path: Path) -> None:
    class _Cp:
        pass

    real = RealNode(_Cp(), tmp_path)  # type: ignore[arg-type]
    assert real.gateway == "10.199.0.1"
