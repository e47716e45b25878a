"""Build the real node's two local images as OCI archives, without a container engine.

Nothing can be pulled on the test machines, yet a kubelet needs a pause image for every pod
sandbox, and the e2e needs a workload to run. Both are one static program from ``node/``
(compiled with Debian's ``musl-gcc``, or ``gcc -static`` where musl is missing) in an image
built from scratch: one uncompressed tar layer, a config and a manifest in an OCI image layout,
written as a tar that ``ctr -n k8s.io images import`` takes. Every timestamp is zero and the
entries are sorted, so the same sources give the same digests.

``build.py node`` runs ``node_images.py <cache root>``, which writes them to
``~/.cache/gpuscale/cluster/images-<hash>/`` (the hash covers the C sources and this file) and
builds nothing when they are there. Standard library only, like ``build.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "node"


@dataclass(frozen=True)
class Image:
    """One from-scratch image: a single static binary as its entrypoint."""

    name: str
    """The full reference containerd stores it under (what pod specs and ``sandbox_image`` use)."""
    source: str
    """C file under ``node/``; the binary is installed as ``/<stem>``."""
    user: str
    """``uid:gid`` it runs as (nobody needs root inside these)."""
    args: tuple[str, ...] = ()
    """Default arguments (the image's ``Cmd``)."""

    @property
    def archive_name(self) -> str:
        return self.source.removesuffix(".c") + ".tar"


PAUSE = Image(name="localhost/gpuscale-e2e/pause:1", source="pause.c", user="65535:65535")
HTTP = Image(
    name="localhost/gpuscale-e2e/http:1", source="httpd.c", user="65532:65532", args=("8080",)
)
IMAGES = (PAUSE, HTTP)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tar_bytes(files: dict[str, tuple[bytes, int]]) -> bytes:
    """A reproducible tar: sorted entries, mtime 0, root-owned, the given modes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(files):
            data, mode = files[path]
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def oci_archive(image: Image, binary: bytes) -> bytes:
    """The OCI image layout (as a tar) holding ``binary`` as ``/<name>`` and nothing else."""
    exe = image.source.removesuffix(".c")
    layer = _tar_bytes({exe: (binary, 0o755)})
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"User": image.user, "Entrypoint": [f"/{exe}"], "Cmd": list(image.args)},
        "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
        "history": [{"created_by": f"tests/cluster/node_images.py: {image.source}"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": _digest(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": _digest(layer),
                "size": len(layer),
            }
        ],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": _digest(manifest_bytes),
                "size": len(manifest_bytes),
                # containerd names the imported image after the first; other tools the second.
                "annotations": {
                    "io.containerd.image.name": image.name,
                    "org.opencontainers.image.ref.name": image.name.rsplit(":", 1)[1],
                },
            }
        ],
    }
    files = {"oci-layout": (b'{"imageLayoutVersion":"1.0.0"}', 0o644)}
    files["index.json"] = (json.dumps(index, sort_keys=True).encode(), 0o644)
    for blob in (layer, config_bytes, manifest_bytes):
        files["blobs/sha256/" + _digest(blob).split(":", 1)[1]] = (blob, 0o644)
    return _tar_bytes(files)


def _compiler() -> list[str]:
    if shutil.which("musl-gcc"):
        return ["musl-gcc"]
    if shutil.which("gcc"):
        return ["gcc"]
    raise SystemExit("building the node images needs musl-gcc (Debian: musl-tools) or gcc")


def compile_static(source: Path, out: Path) -> None:
    cmd = [*_compiler(), "-static", "-Os", "-s", "-Wall", "-Wextra", "-o", str(out), str(source)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")


def _stamp() -> str:
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for image in IMAGES:
        digest.update((SOURCES / image.source).read_bytes())
    return digest.hexdigest()[:16]


def images_dir(cache: Path) -> Path:
    return cache / f"images-{_stamp()}"


def archive(cache: Path, image: Image) -> Path:
    """Where ``image``'s archive is (or will be) for the current sources."""
    return images_dir(cache) / image.archive_name


def build_images(cache: Path) -> Path:
    """Compile and assemble every image into ``images_dir(cache)``; a no-op when present."""
    out = images_dir(cache)
    if all((out / i.archive_name).is_file() for i in IMAGES):
        print(f"node images: cached in {out}", flush=True)
        return out
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as work:
        for image in IMAGES:
            exe = Path(work) / image.source.removesuffix(".c")
            compile_static(SOURCES / image.source, exe)
            (tmp / image.archive_name).write_bytes(oci_archive(image, exe.read_bytes()))
            print(f"  built {image.name} ({exe.stat().st_size} bytes)", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    for stale in cache.glob("images-*"):  # from older sources; nothing refers to them
        if stale != out and not stale.name.endswith(".partial"):
            shutil.rmtree(stale, ignore_errors=True)
    print(f"node images: ready in {out}", flush=True)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(
            "usage: node_images.py CACHE_ROOT   (build.py passes its cache root)", file=sys.stderr
        )
        return 2
    build_images(Path(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
