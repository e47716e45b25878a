"""The node images' OCI archives are what ``ctr images import`` reads: every blob named by its
digest, index -> manifest -> config -> layer consistent, the binary the only file, and the same
input always the same bytes (so the image ID does not change between builds)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.cluster.node_images import (
    HTTP,
    IMAGES,
    PAUSE,
    SOURCES,
    Image,
    compile_static,
    oci_archive,
)

names = st.from_regex(r"localhost/[a-z0-9]{1,8}/[a-z0-9]{1,8}:[a-z0-9]{1,5}", fullmatch=True)
images = st.builds(
    Image,
    name=names,
    source=st.sampled_from([i.source for i in IMAGES]),
    user=st.sampled_from(["0:0", "65532:65532"]),
    args=st.lists(st.text(min_size=1, max_size=5), max_size=3).map(tuple),
)


def _members(archive: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    out: dict[str, tuple[tarfile.TarInfo, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for info in tar.getmembers():
            f = tar.extractfile(info)
            assert f is not None
            out[info.name] = (info, f.read())
    return out


def _blob(files: dict[str, tuple[tarfile.TarInfo, bytes]], digest: str) -> bytes:
    algo, hexdigest = digest.split(":")
    assert algo == "sha256"
    data = files[f"blobs/sha256/{hexdigest}"][1]
    assert hashlib.sha256(data).hexdigest() == hexdigest
    return data


@given(image=images, binary=st.binary(max_size=4096))
def test_archive_is_a_consistent_oci_layout(image: Image, binary: bytes) -> None:
    archive = oci_archive(image, binary)
    assert oci_archive(image, binary) == archive
    files = _members(archive)
    assert json.loads(files["oci-layout"][1]) == {"imageLayoutVersion": "1.0.0"}
    (entry,) = json.loads(files["index.json"][1])["manifests"]
    assert entry["annotations"]["io.containerd.image.name"] == image.name
    manifest = json.loads(_blob(files, entry["digest"]))
    assert entry["size"] == len(_blob(files, entry["digest"]))
    config = json.loads(_blob(files, manifest["config"]["digest"]))
    (layer_ref,) = manifest["layers"]
    layer = _blob(files, layer_ref["digest"])
    assert config["rootfs"]["diff_ids"] == [layer_ref["digest"]]
    exe = image.source.removesuffix(".c")
    assert config["config"]["Entrypoint"] == [f"/{exe}"]
    assert config["config"]["Cmd"] == list(image.args)
    assert config["config"]["User"] == image.user
    (only,) = _members(layer).items()
    name, (info, data) = only
    assert (name, data, info.mode, info.mtime, info.uid) == (exe, binary, 0o755, 0, 0)
    # Nothing else in the archive: three blobs and the two layout files.
    assert len(files) == 5


@given(binary=st.binary(min_size=1, max_size=64))
def test_a_different_binary_is_a_different_image(binary: bytes) -> None:
    assert oci_archive(PAUSE, binary) != oci_archive(PAUSE, binary + b"\0")


@pytest.mark.skipif(shutil.which("musl-gcc") is None and shutil.which("gcc") is None, reason="no C")
def test_programs_compile_static_and_httpd_rejects_bad_arguments(tmp_path: Path) -> None:
    for image in (PAUSE, HTTP):
        compile_static(SOURCES / image.source, tmp_path / image.source.removesuffix(".c"))
    bad = subprocess.run(
        [tmp_path / "httpd", "70000"], capture_output=True, text=True, timeout=10, check=False
    )
    assert (bad.returncode, bad.stderr) == (2, "usage: httpd [PORT [READY_AFTER_SECONDS]]\n")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.skipif(shutil.which("musl-gcc") is None and shutil.which("gcc") is None, reason="no C")
def test_httpd_answers_its_environment_on_env(tmp_path: Path) -> None:
    """``/env`` is how the device plugin e2e reads a container's environment from the host."""
    compile_static(SOURCES / HTTP.source, tmp_path / "httpd")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    big = "x" * 20000  # more than /env's 16 KiB: left out whole, never cut mid-entry
    env = {"NVIDIA_VISIBLE_DEVICES": "GPU-a,GPU-b", "A_EMPTY": "", "ZZ_BIG": big}
    proc = subprocess.Popen([tmp_path / "httpd", str(port), "3600"], env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, body = _get(f"http://127.0.0.1:{port}/env")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert status == 200
        assert body.splitlines() == ["NVIDIA_VISIBLE_DEVICES=GPU-a,GPU-b", "A_EMPTY="]
        # The other paths behave as before: health still starting, the host name elsewhere.
        assert _get(f"http://127.0.0.1:{port}/healthz") == (503, "starting\n")
        assert _get(f"http://127.0.0.1:{port}/envelope")[0] == 200
        assert not _get(f"http://127.0.0.1:{port}/envelope")[1].startswith("NVIDIA")
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
