"""What the container image holds and runs, checked without a container engine."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.manifests import REPO, gpuscale_containers, render

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DOCKERFILE = (REPO / "Dockerfile").read_text()


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def _runtime_closure() -> set[str]:
    """Distributions installed by `pip install .[gpu]`: runtime deps, the gpu extra, theirs."""
    env = {k: str(v) for k, v in default_environment().items()}
    todo = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    todo += [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["gpu"]]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen or (req.marker and not req.marker.evaluate({**env, "extra": ""})):
            continue
        seen.add(name)
        try:
            todo += [Requirement(r) for r in requires(req.name) or []]
        except PackageNotFoundError:
            continue
    return seen


def _blocked_modules() -> list[str]:
    """Top-level modules that only the sim/test/dev extras bring: absent from the image."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    extra_dists = {
        canonicalize_name(Requirement(r).name)
        for group in ("sim", "test", "dev")
        for r in extras[group]
    }
    only_extra = extra_dists - _runtime_closure()
    return sorted(
        module
        for module, dists in packages_distributions().items()
        if module.isidentifier() and {canonicalize_name(d) for d in dists} <= only_extra
    )


def test_sim_extra_is_what_gets_blocked() -> None:
    blocked = set(_blocked_modules())
    assert {"matplotlib", "rich", "prometheus_api_client"} <= blocked
    assert not {"aiohttp", "kubernetes", "prometheus_client", "yaml", "click"} & blocked


_PROBE = textwrap.dedent(
    """
    import importlib, importlib.abc, pkgutil, sys, json
    BLOCKED = set(json.loads(sys.argv[1]))

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not installed in the image")
            return None

    sys.meta_path.insert(0, Block())
    import autoscaler, extender, policies
    for package in (autoscaler, extender, policies):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            importlib.import_module(info.name)
    from gpuscale.cli import main
    for command in ("controller", "extender", "node-agent"):
        code = main([command, "--help"])
        assert code == 0, (command, code)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    print("ok")
    """
)


def test_servers_import_and_start_without_the_sim_extra() -> None:
    """The image's three commands need nothing from the sim/test/dev extras."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(_blocked_modules())],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_the_probe_really_blocks() -> None:
    """Guard the guard: importing a blocked module fails in the same set-up."""
    probe = _PROBE.replace("import autoscaler, extender, policies", "import matplotlib")
    out = subprocess.run(
        [sys.executable, "-c", probe, json.dumps(_blocked_modules())],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=60,
    )
    assert out.returncode != 0
    assert "not installed in the image" in out.stderr


def test_dockerfile_is_multi_stage_on_slim_python() -> None:
    """python:3.11-slim by default; `make image` passes Debian bases through the same args."""
    instructions = _instructions()
    froms = [rest for word, rest in instructions if word == "FROM"]
    assert len(froms) == 3
    args = dict(rest.split("=", 1) for word, rest in instructions if word == "ARG" and "=" in rest)
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    assert args["RUNTIME_IMAGE"] == "${PYTHON_IMAGE}"
    assert froms[0] == "${PYTHON_IMAGE} AS deps"
    assert froms[1] == "deps AS build"
    assert froms[2] == "${RUNTIME_IMAGE}"


def test_dockerfile_installs_the_hashed_runtime_lock_only() -> None:
    runs = [rest for word, rest in _instructions() if word == "RUN" and "pip install" in rest]
    installs = [i for run in runs for i in re.split(r"&&", run) if "pip install" in i]
    assert any("--require-hashes" in i and "requirements/runtime.lock" in i for i in installs)
    assert any("--require-hashes" in i and "requirements/build.lock" in i for i in installs)
    others = [i for i in installs if "--require-hashes" not in i]
    # The project's own wheel, offline and without dependencies: nothing the lock did not pin.
    assert others == [i for i in others if "--no-deps" in i and "--no-index" in i]
    assert "nvidia-ml-py" in " ".join(PYPROJECT["project"]["optional-dependencies"]["gpu"])
    final = _final_stage()
    final_pip = [rest for word, rest in final if word == "RUN" and "pip" in rest]
    assert all("pip install" not in rest for rest in final_pip)
    copies = [rest for word, rest in final if word == "COPY"]
    # The locked environment, then the project apart: a source change ships a small layer.
    assert copies == [
        "--from=deps /opt/gpuscale /opt/gpuscale",
        "--from=build /opt/gpuscale/app /opt/gpuscale/app",
    ]


def test_dockerfile_compiles_bytecode_and_drops_the_installer() -> None:
    """The image runs read-only: only bytecode compiled at build is ever used."""
    build = _instructions()[: len(_instructions()) - len(_final_stage())]
    text = " ".join(rest for _, rest in build)
    assert "--no-compile" not in text
    assert "PYTHONDONTWRITEBYTECODE" not in text
    assert "compileall" in text and "--invalidation-mode unchecked-hash" in text
    assert "pip uninstall -q -y pip setuptools" in text
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "!requirements/runtime.lock" in ignore


def test_dockerfile_copies_every_package_the_wheel_needs() -> None:
    copied_all = " ".join(rest for word, rest in _instructions() if word == "COPY")
    packages = PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    for package in packages:
        assert re.search(rf"\b{package}\b", copied_all), f"{package} not copied"
    assert PYPROJECT["project"]["readme"] in copied_all
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    for package in [*packages, "pyproject.toml", PYPROJECT["project"]["readme"]]:
        assert f"!{package}" in ignore or f"!{package}/" in ignore, package


def test_final_stage_runs_gpuscale_as_non_root() -> None:
    final = _final_stage()
    users = [rest for word, rest in final if word == "USER"]
    assert users == ["65532:65532"]
    (entrypoint,) = [rest for word, rest in final if word == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["gpuscale"]
    env = " ".join(rest for word, rest in final if word == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PATH=/opt/gpuscale/app/bin:/opt/gpuscale/bin:" in env
    # The manifests run the same uid and rely on the entrypoint.
    for where, _spec, c in gpuscale_containers(render()):
        assert c["securityContext"]["runAsUser"] == 65532, where
        assert "command" not in c, where


def test_console_script_is_the_entrypoint() -> None:
    assert PYPROJECT["project"]["scripts"]["gpuscale"] == "gpuscale.cli:main"
    assert Path(sys.executable).with_name("gpuscale").exists()
