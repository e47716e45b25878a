"""Run a command in a locally built image the way a kubelet would: runc, read-only root, uid 65532.

``buildah run`` gives a writable root, which would hide the one thing that matters for bytecode
(nothing can be written at run time), so the image's root filesystem is mounted by buildah and
handed to runc as an OCI bundle with ``root.readonly`` and a tmpfs on ``/tmp``, like the
manifests' ``readOnlyRootFilesystem`` with an ``emptyDir`` at ``/tmp``. The host network is
shared so that a readiness endpoint can be polled on localhost.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.cluster.images import REPO

CONTAINERS_CONF = REPO / "build" / "containers" / "containers.conf"


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image's OCI config a container start needs."""

    env: tuple[str, ...]
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    user: str
    workdir: str


def buildah(*args: str) -> str:
    env = {**os.environ}
    if CONTAINERS_CONF.exists():
        env["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    out = subprocess.run(
        ["buildah", *args], env=env, capture_output=True, text=True, check=False, timeout=300
    )
    if out.returncode != 0:
        raise RuntimeError(f"buildah {' '.join(args)}: {out.stderr.strip()[-1000:]}")
    return out.stdout.strip()


def image_exists(tag: str) -> bool:
    try:
        buildah("inspect", "--type", "image", tag)
    except RuntimeError:
        return False
    return True


def image_config(tag: str) -> ImageConfig:
    config = json.loads(buildah("inspect", "--type", "image", tag))["OCIv1"]["config"]
    return ImageConfig(
        env=tuple(config.get("Env") or ()),
        entrypoint=tuple(config.get("Entrypoint") or ()),
        cmd=tuple(config.get("Cmd") or ()),
        user=config.get("User") or "0:0",
        workdir=config.get("WorkingDir") or "/",
    )


@contextmanager
def mounted(tag: str) -> Iterator[Path]:
    """The image's root filesystem, mounted read-write on the host for the block's length."""
    container = buildah("from", "--pull-never", tag)
    try:
        yield Path(buildah("mount", container))
    finally:
        buildah("umount", container)
        buildah("rm", container)


def oci_spec(
    *,
    rootfs: Path,
    config: ImageConfig,
    argv: Sequence[str],
    extra_env: Mapping[str, str],
    mounts: Sequence[tuple[Path, str]],
) -> dict[str, object]:
    """An OCI runtime spec: the image's user and env, read-only root, no capabilities."""
    uid, _, gid = config.user.partition(":")
    env = [*config.env, *(f"{k}={v}" for k, v in extra_env.items())]
    binds = [
        {"destination": dest, "type": "bind", "source": str(src), "options": ["rbind", "ro"]}
        for src, dest in mounts
    ]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": int(uid), "gid": int(gid or uid)},
            "args": list(argv),
            "env": env,
            "cwd": config.workdir,
            "capabilities": {"bounding": [], "effective": [], "permitted": [], "ambient": []},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": "gpuscale",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/tmp",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
            *binds,
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            # No network namespace: the host's, so localhost reaches the container's ports.
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")],
        },
    }


@contextmanager
def container(
    tag: str,
    args: Sequence[str] | None = None,
    *,
    extra_env: Mapping[str, str] | None = None,
    mounts: Sequence[tuple[Path, str]] = (),
    entrypoint: Sequence[str] | None = None,
) -> Iterator[list[str]]:
    """The ``runc run`` command line for ``tag`` with ``args`` after its entrypoint.

    The caller runs it (to time it, or to poll a port while it runs); the bundle and the mount
    are cleaned up when the block ends.
    """
    config = image_config(tag)
    argv = [*(config.entrypoint if entrypoint is None else entrypoint)]
    argv += list(config.cmd if args is None else args)
    with mounted(tag) as rootfs, tempfile.TemporaryDirectory(prefix="gpuscale-oci-") as bundle:
        spec = oci_spec(
            rootfs=rootfs, config=config, argv=argv, extra_env=extra_env or {}, mounts=mounts
        )
        (Path(bundle) / "config.json").write_text(json.dumps(spec))
        name = f"gpuscale-test-{uuid.uuid4().hex[:10]}"
        try:
            yield ["runc", "run", "--bundle", bundle, name]
        finally:
            subprocess.run(["runc", "delete", "--force", name], capture_output=True, check=False)


def run(
    tag: str,
    args: Sequence[str] | None = None,
    *,
    entrypoint: Sequence[str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run to completion and capture the output."""
    with container(tag, args, entrypoint=entrypoint) as command:
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
