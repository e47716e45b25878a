"""The built images, run the way the kubelet runs them (runc, read-only root, uid 65532).

These need buildah and runc and the images ``make image`` builds; they skip and say so otherwise
(``make image-test`` builds the images first). Building is left out of ``make test``: a cold
build takes minutes (see the README).
"""

from __future__ import annotations

import json
import re
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from gpuscale.cmd_simulate import SIM_EXTRA_MODULES
from tests.cluster.images import (
    GPUSCALE_ARCHIVE,
    GPUSCALE_TAG,
    KUBE_SCHEDULER_ARCHIVE,
    KUBE_SCHEDULER_PATH,
    RUN_AS,
    kube_scheduler_tag,
    kubernetes_version,
)
from tests.image import runner
from tests.image.lock import read_lock

_TOOLS = [t for t in ("buildah", "runc") if shutil.which(t) is None]
pytestmark = pytest.mark.skipif(
    bool(_TOOLS), reason=f"{', '.join(_TOOLS)} not installed (make image-tools installs them)"
)

SITE = "opt/gpuscale/lib/python3.11/site-packages"
"""The locked dependencies."""
APP = "opt/gpuscale/app"
"""The project, apart from its dependencies (a .pth in SITE names it)."""


def _need(tag: str) -> None:
    if not runner.image_exists(tag):
        pytest.skip(f"{tag} is not built: run `make image` (or `make image-test`)")


@pytest.fixture(scope="module")
def rootfs() -> Iterator[Path]:
    _need(GPUSCALE_TAG)
    with runner.mounted(GPUSCALE_TAG) as path:
        yield path


def _python(code: str) -> str:
    done = runner.run(GPUSCALE_TAG, ["-c", code], entrypoint=["python3"])
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_runs_as_65532_on_a_read_only_root() -> None:
    _need(GPUSCALE_TAG)
    config = runner.image_config(GPUSCALE_TAG)
    assert config.user == RUN_AS
    assert config.entrypoint == ("gpuscale",)
    out = _python(
        "import os\n"
        "print(os.getuid(), os.getgid())\n"
        "try:\n    open('/opt/gpuscale/probe', 'w')\n"
        "except OSError as e:\n    print(e.errno)\n"
    )
    assert out.split() == ["65532", "65532", "30"]  # 30: EROFS


@pytest.mark.parametrize(
    "args", [["--help"], ["controller", "--help"], ["extender", "--help"], ["node-agent", "--help"]]
)
def test_commands_start(args: list[str]) -> None:
    _need(GPUSCALE_TAG)
    done = runner.run(GPUSCALE_TAG, args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("Usage: gpuscale")


def test_version_comes_from_the_installed_metadata() -> None:
    """The project sits apart from its dependencies; its metadata must still be found."""
    _need(GPUSCALE_TAG)
    done = runner.run(GPUSCALE_TAG, ["--version"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "gpuscale, version 0.1.0"


def test_simulate_says_the_image_has_no_simulator() -> None:
    _need(GPUSCALE_TAG)
    done = runner.run(GPUSCALE_TAG, ["simulate"])
    assert done.returncode == 1
    assert "needs the 'sim' extra" in done.stderr
    assert "Traceback" not in done.stderr


def test_server_modules_import_and_load_only_precompiled_bytecode() -> None:
    """Every module the servers import comes from a .pyc made at build (none can be written)."""
    out = _python(
        "import importlib, pkgutil, sys, json\n"
        "import autoscaler, extender, policies, runtime\n"
        "for p in (autoscaler, extender, policies, runtime):\n"
        "    for i in pkgutil.walk_packages(p.__path__, p.__name__ + '.'):\n"
        "        importlib.import_module(i.name)\n"
        "import gpuscale.cmd_controller, gpuscale.cmd_extender\n"
        "import importlib.util as u, os\n"
        "bad = [m.__name__ for m in list(sys.modules.values())\n"
        "       if getattr(m, '__file__', None) and m.__file__.endswith('.py')\n"
        "       and not os.path.exists(u.cache_from_source(m.__file__))]\n"
        "print(json.dumps({'n': len(sys.modules), 'bad': bad}))\n"
    )
    result = json.loads(out)
    assert result["n"] > 200
    assert result["bad"] == []


def test_every_source_has_unchecked_hash_bytecode(rootfs: Path) -> None:
    """Hash-based, unchecked .pyc: valid whatever mtimes the sources got, no source reads."""
    site = rootfs / "opt/gpuscale"
    sources = [p for p in site.rglob("*.py") if "__pycache__" not in p.parts]
    assert len(sources) > 1000
    missing, stale = [], []
    for source in sources:
        pyc = source.parent / "__pycache__" / f"{source.stem}.cpython-311.pyc"
        if not pyc.exists():
            missing.append(str(source.relative_to(site)))
            continue
        flags = int.from_bytes(pyc.read_bytes()[4:8], "little")
        if flags != 0b01:  # hash-based, check_source off
            stale.append(str(source.relative_to(site)))
    assert not missing, missing[:20]
    assert not stale, stale[:20]
    assert (rootfs / APP / "autoscaler" / "__pycache__" / "app.cpython-311.pyc").exists()


def _installed(rootfs: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for info in [*(rootfs / SITE).glob("*.dist-info"), *(rootfs / APP).glob("*.dist-info")]:
        match = re.fullmatch(r"(.+?)-([^-]+)\.dist-info", info.name)
        assert match is not None, info.name
        out[canonicalize_name(match.group(1))] = match.group(2)
    return out


def test_no_installer_no_scipy_no_simulator_libraries(rootfs: Path) -> None:
    installed = _installed(rootfs)
    assert {"pip", "setuptools", "wheel"}.isdisjoint(installed)
    assert {canonicalize_name(m) for m in SIM_EXTRA_MODULES}.isdisjoint(installed)
    assert not list((rootfs / "opt/gpuscale/bin").glob("pip*"))
    assert not list((rootfs / "usr").glob("lib/python3*/*-packages/pip"))
    assert not list((rootfs / "usr/local").glob("lib/python3*/*-packages/pip"))
    done = runner.run(GPUSCALE_TAG, ["-m", "pip", "--version"], entrypoint=["python3"])
    assert done.returncode != 0
    assert "No module named pip" in done.stderr


def test_installed_distributions_are_exactly_the_lock(rootfs: Path) -> None:
    installed = _installed(rootfs)
    environment = {
        "python_version": "3.11",
        "python_full_version": "3.11.2",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "os_name": "posix",
        "extra": "",
    }
    locked = {
        name: pin.version
        for name, pin in read_lock("runtime.lock").items()
        if pin.applies(environment)
    }
    assert installed.pop("gpuscale") == "0.1.0"
    assert installed == locked


def test_kube_scheduler_image() -> None:
    tag = kube_scheduler_tag()
    _need(tag)
    config = runner.image_config(tag)
    assert config.user == RUN_AS
    assert config.entrypoint == (KUBE_SCHEDULER_PATH,)
    done = runner.run(tag, ["--version"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"Kubernetes {kubernetes_version()}"


@pytest.mark.parametrize(
    ("archive", "tag"),
    [(GPUSCALE_ARCHIVE, GPUSCALE_TAG), (KUBE_SCHEDULER_ARCHIVE, None)],
)
def test_archives_carry_their_tags(archive: Path, tag: str | None) -> None:
    """docker-archives named as the node will refer to them after ``ctr images import``."""
    if not archive.exists():
        pytest.skip(f"{archive} not written: run `make image`")
    with tarfile.open(archive) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        manifest = json.load(member)
    assert [m["RepoTags"] for m in manifest] == [[tag or kube_scheduler_tag()]]
