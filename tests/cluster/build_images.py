"""Build the container images with buildah and export them as archives for containerd.

``python3 -m tests.cluster.build_images`` (what ``make image`` runs) needs buildah, runc and
mmdebstrap (Debian packages; ``make image-tools`` installs them) and no registry:

1. the Debian bases (:data:`tests.cluster.images.BASES`) are made once by mmdebstrap and kept
   as local images, tagged with a hash of their description, so later builds reuse them
   (``--refresh-base`` rebuilds them, e.g. for security updates);
2. the Dockerfile is built with ``PYTHON_IMAGE``/``RUNTIME_IMAGE`` pointing at those bases, this
   machine's CA bundle as the ``pip-ca`` build secret, and buildah's layer cache;
3. the kube-scheduler image is the binary from ``make cluster`` on an empty root;
4. both are written as docker-archives under ``build/images/``, which
   ``ctr -n k8s.io images import`` accepts; an archive is rewritten only when its image changed.

Containers run under runc with this project's own ``containers.conf`` (``build/containers/``):
crun refuses these machines' hybrid cgroups and the default ulimits exceed the hard limits.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.cluster.build import binary
from tests.cluster.images import (
    BASE_REPOSITORY,
    BASES,
    GPUSCALE_ARCHIVE,
    GPUSCALE_TAG,
    KUBE_SCHEDULER_ARCHIVE,
    KUBE_SCHEDULER_PATH,
    MIRROR,
    REPO,
    RUN_AS,
    SUITE,
    Base,
    kube_scheduler_tag,
)

TOOLS = ("buildah", "runc", "mmdebstrap")
IMAGES = ("gpuscale", "kube-scheduler")
DEFAULT_CA = Path("/etc/ssl/certs/ca-certificates.crt")
# Documentation and translations are no use in a container; copyright files stay.
_DPKG_EXCLUDES = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
)


class BuildError(Exception):
    """A step failed; the message says which and what to do."""


def _say(started: float, text: str) -> None:
    print(f"[{time.monotonic() - started:6.1f} s] {text}", flush=True)


def containers_conf(path: Path) -> Path:
    """Write the containers.conf buildah runs with: runc, cgroupfs, ulimits within the hard ones."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nofile = hard if hard != resource.RLIM_INFINITY else 1_048_576
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# Written by tests/cluster/build_images.py; see its docstring.\n"
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
    )
    return path


def base_key() -> str:
    """One hash over every base: they are made together, so both carry the same Python build
    (the bytecode compiled in the build stage must match the runtime's interpreter)."""
    description = json.dumps([SUITE, MIRROR, _DPKG_EXCLUDES, [repr(b) for b in BASES]])
    return hashlib.sha256(description.encode()).hexdigest()[:12]


def base_tag(base: Base) -> str:
    return f"{BASE_REPOSITORY}:{base.role}-{base_key()}"


def mmdebstrap_command(base: Base, tarball: Path) -> list[str]:
    cmd = ["mmdebstrap", f"--variant={base.variant}", "--mode=root", "--quiet"]
    cmd += [f"--include={','.join(base.packages)}"]
    # Merged /usr by a hook rather than the usrmerge package, which would pull in perl.
    cmd += ["--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr"]
    cmd += [f"--dpkgopt={opt}" for opt in _DPKG_EXCLUDES]
    return [*cmd, SUITE, str(tarball), MIRROR]


class Buildah:
    """The buildah calls this script makes, with its environment and progress lines."""

    def __init__(self, *, conf: Path, started: float) -> None:
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        self.started = started

    def run(self, *args: str, quiet: bool = True) -> str:
        out = subprocess.run(
            ["buildah", *args],
            env=self.env,
            stdout=subprocess.PIPE if quiet else None,
            stderr=subprocess.PIPE if quiet else None,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            detail = (out.stderr or "").strip()[-2000:] if quiet else "see above"
            raise BuildError(f"buildah {' '.join(args[:2])} failed ({out.returncode}): {detail}")
        return (out.stdout or "").strip()

    def image_id(self, tag: str) -> str | None:
        out = subprocess.run(
            ["buildah", "images", "--noheading", "--no-trunc", "--format", "{{.ID}}", tag],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        lines = out.stdout.split()
        return lines[0] if out.returncode == 0 and lines else None

    def from_tarball(self, tarball: Path, tag: str) -> None:
        container = self.run("from", "scratch")
        try:
            self.run("add", container, str(tarball), "/")
            self.run("config", "--env", "LANG=C.UTF-8", "--cmd", "python3", container)
            self.run("commit", "--quiet", "--rm", container, tag)
        except BuildError:
            self.run("rm", container)
            raise

    def export(self, tag: str, archive: Path) -> bool:
        """Write ``tag`` as a docker-archive unless the archive already holds that image."""
        image = self.image_id(tag)
        if image is None:
            raise BuildError(f"{tag} was not built")
        stamp = archive.with_suffix(".id")
        if archive.exists() and stamp.exists() and stamp.read_text() == image:
            return False
        archive.parent.mkdir(parents=True, exist_ok=True)
        partial = archive.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        self.run("push", "--quiet", tag, f"docker-archive:{partial}:{tag}")
        partial.rename(archive)
        stamp.write_text(image)
        return True


def ensure_bases(buildah: Buildah, *, refresh: bool) -> dict[str, str]:
    tags = {base.role: base_tag(base) for base in BASES}
    missing = [b for b in BASES if refresh or buildah.image_id(tags[b.role]) is None]
    if not missing:
        _say(buildah.started, f"Debian bases cached: {', '.join(tags.values())}")
        return tags
    # Both or neither: see base_key.
    with tempfile.TemporaryDirectory(prefix="gpuscale-base-") as tmp:
        for base in BASES:
            tarball = Path(tmp) / f"{base.role}.tar"
            _say(
                buildah.started, f"mmdebstrap {SUITE} {base.role} base ({', '.join(base.packages)})"
            )
            done = subprocess.run(mmdebstrap_command(base, tarball), check=False)
            if done.returncode != 0:
                raise BuildError(f"mmdebstrap failed ({done.returncode}) for the {base.role} base")
            buildah.from_tarball(tarball, tags[base.role])
            _say(buildah.started, f"  {tags[base.role]} ready")
    return tags


def build_gpuscale(buildah: Buildah, bases: dict[str, str], *, ca: Path | None) -> None:
    _say(buildah.started, f"buildah build {GPUSCALE_TAG} (Dockerfile, layer cache on)")
    args = ["build", "--layers", "--tag", GPUSCALE_TAG]
    args += ["--build-arg", f"PYTHON_IMAGE={bases['build']}"]
    args += ["--build-arg", f"RUNTIME_IMAGE={bases['runtime']}"]
    if ca is not None:
        args += ["--secret", f"id=pip-ca,src={ca}"]
    index_url = os.environ.get("GPUSCALE_INDEX_URL")
    if index_url:
        args += ["--build-arg", f"INDEX_URL={index_url}"]
    buildah.run(*args, str(REPO), quiet=False)


def build_kube_scheduler(buildah: Buildah) -> str:
    """The kube-scheduler binary (static, from ``make cluster``) alone on an empty root."""
    tag = kube_scheduler_tag()
    source = binary("kube-scheduler")
    if not source.is_file():
        raise BuildError(f"{source} is missing: run `make cluster` first")
    stamp = KUBE_SCHEDULER_ARCHIVE.with_suffix(".source")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    if buildah.image_id(tag) is not None and stamp.exists() and stamp.read_text() == digest:
        _say(buildah.started, f"{tag}: cached")
        return tag
    _say(buildah.started, f"{tag} from {source}")
    container = buildah.run("from", "scratch")
    try:
        buildah.run("copy", "--chmod", "0755", container, str(source), KUBE_SCHEDULER_PATH)
        buildah.run(
            "config",
            "--entrypoint",
            json.dumps([KUBE_SCHEDULER_PATH]),
            "--user",
            RUN_AS,
            container,
        )
        buildah.run("commit", "--quiet", "--rm", container, tag)
    except BuildError:
        buildah.run("rm", container)
        raise
    KUBE_SCHEDULER_ARCHIVE.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest)
    return tag


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="make image", description="Build gpuscale's images without a registry."
    )
    parser.add_argument(
        "--refresh-base", action="store_true", help="rebuild the Debian bases (security updates)"
    )
    parser.add_argument(
        "--ca",
        type=Path,
        default=Path(os.environ.get("GPUSCALE_BUILD_CA", DEFAULT_CA)),
        help="CA bundle pip trusts inside the build ($GPUSCALE_BUILD_CA; 'none' for none)",
    )
    parser.add_argument("only", nargs="*", help=f"images to build ({', '.join(IMAGES)}; all)")
    options = parser.parse_args(argv)
    unknown = [name for name in options.only if name not in IMAGES]
    if unknown:
        parser.error(f"unknown image(s) {', '.join(unknown)}; choose from {', '.join(IMAGES)}")
    return options


def main(argv: Sequence[str]) -> int:
    options = _parse(argv)
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        print(
            f"make image needs {', '.join(missing)} on PATH: `make image-tools` installs them"
            " (apt-get install buildah runc mmdebstrap)",
            file=sys.stderr,
        )
        return 1
    ca: Path | None = None if str(options.ca) == "none" else options.ca
    if ca is not None and not ca.is_file():
        print(f"--ca {ca}: no such file (pass --ca none to use the base's CAs)", file=sys.stderr)
        return 1
    wanted = options.only or list(IMAGES)
    started = time.monotonic()
    buildah = Buildah(
        conf=containers_conf(REPO / "build" / "containers" / "containers.conf"), started=started
    )
    try:
        if "gpuscale" in wanted:
            bases = ensure_bases(buildah, refresh=options.refresh_base)
            build_gpuscale(buildah, bases, ca=ca)
            wrote = buildah.export(GPUSCALE_TAG, GPUSCALE_ARCHIVE)
            _say(started, f"{GPUSCALE_ARCHIVE} {'written' if wrote else 'unchanged'}")
        if "kube-scheduler" in wanted:
            tag = build_kube_scheduler(buildah)
            wrote = buildah.export(tag, KUBE_SCHEDULER_ARCHIVE)
            _say(started, f"{KUBE_SCHEDULER_ARCHIVE} {'written' if wrote else 'unchanged'}")
    except BuildError as exc:
        print(f"make image: {exc}", file=sys.stderr)
        return 1
    _say(started, "images ready")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
