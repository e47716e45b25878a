"""The container images the end-to-end node runs: their tags, archives and Debian bases.

One home for these names: ``make image`` (:mod:`tests.cluster.build_images`) builds and exports
them, the image tests check them, and the node tests import the archives with
``ctr -n k8s.io images import`` and refer to the tags. Only the standard library is used, so this
runs before any virtual environment exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.cluster.build import COMPONENTS

REPO = Path(__file__).resolve().parents[2]
IMAGES_DIR = REPO / "build" / "images"
"""Where ``make image`` writes the archives (``build/`` is git-ignored)."""

GPUSCALE_TAG = "localhost/gpuscale:dev"
"""The add-on's image: controller, extender and node agent (the Dockerfile at the repo root)."""
GPUSCALE_ARCHIVE = IMAGES_DIR / "gpuscale.tar"

KUBE_SCHEDULER_REPOSITORY = "localhost/kube-scheduler"
KUBE_SCHEDULER_ARCHIVE = IMAGES_DIR / "kube-scheduler.tar"
KUBE_SCHEDULER_PATH = "/usr/local/bin/kube-scheduler"
"""Where the binary sits in the image: the chart's ``command`` (as in registry.k8s.io's image)."""

RUN_AS = "65532:65532"
"""The uid:gid both images run as, and the manifests' ``runAsUser``."""


def kubernetes_version() -> str:
    """The pinned Kubernetes version (``v1.37.2``): the kube-scheduler image's tag."""
    return COMPONENTS["kubernetes"].version()


def kube_scheduler_tag() -> str:
    return f"{KUBE_SCHEDULER_REPOSITORY}:{kubernetes_version()}"


@dataclass(frozen=True)
class Base:
    """A Debian root filesystem made by mmdebstrap and kept as a local image.

    No registry is reachable from these machines, so the Dockerfile's ``PYTHON_IMAGE`` (build
    stage) and ``RUNTIME_IMAGE`` (final stage) come from Debian packages instead of
    ``python:3.11-slim``. The tag carries a hash of this description, so a changed package list
    makes a new base and an unchanged one is reused.
    """

    role: str
    """``build`` (can make virtual environments with pip) or ``runtime`` (Python only)."""
    packages: tuple[str, ...]
    """Packages on top of the variant's essential set."""
    variant: str
    """mmdebstrap variant: ``essential`` has no apt, which the runtime image never uses."""


SUITE = "bookworm"
"""Debian 12: its python3 is 3.11, the version pyproject and the wheels in the lock target."""
MIRROR = "http://deb.debian.org/debian"

BASES = (
    Base(role="build", packages=("python3", "python3-venv", "ca-certificates"), variant="minbase"),
    # libstdc++6: numpy's wheel links it (minbase has it through apt, essential does not).
    Base(
        role="runtime", packages=("python3", "ca-certificates", "libstdc++6"), variant="essential"
    ),
)
BASE_REPOSITORY = "localhost/gpuscale-base"
