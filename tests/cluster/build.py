"""Build the real control plane the end-to-end tests run against, from pinned Go modules.

``python3 tests/cluster/build.py [COMPONENT…]`` (what ``make cluster`` runs) builds each component
below into ``~/.cache/gpuscale/cluster/<dir>/`` (``$GPUSCALE_CLUSTER_CACHE`` overrides the root):
the control plane, and ``node`` (kubelet, kube-proxy and, through ``node_images.py``, the node's
pause and workload images) for the real node of ``tests/e2e/node.py``. A binary is
rebuilt only when it is missing or when the module that pins it changed (its ``go.mod`` and
``go.sum`` are hashed into a stamp beside the binaries), so a second run builds nothing. The first
build compiles most of Kubernetes and takes a long while on two cores: the script says which
component it is on, how many packages it has compiled, and how long each took.

Versions come from the ``require`` line of each module's ``go.mod``; nothing is downloaded but
Go modules through the configured proxy. Only the standard library is used, so this runs before
any virtual environment exists.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Component:
    """One Go module under ``tests/cluster/`` and the commands built from it."""

    module_dir: str
    """Folder beside this file holding the pinning ``go.mod``."""
    requires: str
    """The module path whose required version names the build."""
    packages: tuple[str, ...]
    """Main packages to build, each into a binary named after its last element."""
    cache_prefix: str
    """Cache folder name before the version (``""`` for Kubernetes itself: ``v1.37.2/``)."""
    version_ldflags: tuple[str, ...] = ()
    """``-X`` settings (``{version}``, ``{major}``, ``{minor}`` filled in) so the binaries report
    the real version (discovery, ``/version``)."""
    binary_names: tuple[str, ...] = ()
    """Names for the binaries, when the last path element is not the command's name."""

    def version(self) -> str:
        text = (HERE / self.module_dir / "go.mod").read_text()
        match = re.search(rf"^\s*(?:require\s+)?{re.escape(self.requires)}\s+(v\S+)", text, re.M)
        if match is None:
            raise SystemExit(f"{self.module_dir}/go.mod: no require line for {self.requires}")
        return match.group(1)

    def names(self) -> tuple[str, ...]:
        return self.binary_names or tuple(p.rsplit("/", 1)[-1] for p in self.packages)


_K8S_X = (
    "k8s.io/component-base/version.gitVersion={version}",
    "k8s.io/component-base/version.gitMajor={major}",
    "k8s.io/component-base/version.gitMinor={minor}",
    "k8s.io/component-base/version.gitTreeState=clean",
    "k8s.io/client-go/pkg/version.gitVersion={version}",
    "k8s.io/client-go/pkg/version.gitMajor={major}",
    "k8s.io/client-go/pkg/version.gitMinor={minor}",
)

COMPONENTS = {
    "kubernetes": Component(
        module_dir="kubernetes",
        requires="k8s.io/kubernetes",
        packages=tuple(
            f"k8s.io/kubernetes/cmd/{c}"
            for c in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
        ),
        cache_prefix="",
        version_ldflags=_K8S_X,
    ),
    # The real node's binaries, from the same pinned module as the control plane (one version
    # skew: none), in a folder of their own so the control plane's tests need not build them.
    "node": Component(
        module_dir="kubernetes",
        requires="k8s.io/kubernetes",
        packages=tuple(f"k8s.io/kubernetes/cmd/{c}" for c in ("kubelet", "kube-proxy")),
        cache_prefix="node-",
        version_ldflags=_K8S_X,
    ),
    "etcd": Component(
        module_dir="etcd",
        requires="go.etcd.io/etcd/server/v3",
        packages=("go.etcd.io/etcd/server/v3",),
        cache_prefix="etcd-",
        binary_names=("etcd",),
    ),
    "kwok": Component(
        module_dir="kwok",
        requires="sigs.k8s.io/kwok",
        packages=("sigs.k8s.io/kwok/cmd/kwok",),
        cache_prefix="kwok-",
    ),
}


def cache_root() -> Path:
    env = os.environ.get("GPUSCALE_CLUSTER_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "gpuscale" / "cluster"


def binary_dir(component: Component) -> Path:
    return cache_root() / f"{component.cache_prefix}{component.version()}"


def binary(name: str) -> Path:
    """Path of a built binary by command name (``kube-apiserver``, ``etcd``, ``kwok``…)."""
    for component in COMPONENTS.values():
        if name in component.names():
            return binary_dir(component) / name
    raise KeyError(name)


def _stamp(component: Component) -> str:
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        digest.update((HERE / component.module_dir / name).read_bytes())
    digest.update(repr(component).encode())
    return digest.hexdigest()


def is_built(component: Component) -> bool:
    out = binary_dir(component)
    stamp = out / ".stamp"
    return (
        stamp.exists()
        and stamp.read_text() == _stamp(component)
        and all((out / n).is_file() for n in component.names())
    )


def _ldflags(component: Component) -> str:
    version = component.version()
    major, minor = ([*version.lstrip("v").split("."), "0", "0"])[:2]
    sets = [f.format(version=version, major=major, minor=minor) for f in component.version_ldflags]
    return " ".join(["-s", "-w", *(f"-X {s}" for s in sets)])


def build(component: Component, *, out: Path) -> None:
    """``go build`` the component's commands into ``out``, reporting progress every few seconds."""
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false"}
    started = time.monotonic()
    for package, name in zip(component.packages, component.names(), strict=True):
        cmd = ["go", "build", "-v", "-trimpath", "-ldflags", _ldflags(component)]
        cmd += ["-o", str(tmp / name), package]
        t0 = time.monotonic()
        print(f"  building {name} …", flush=True)
        proc = subprocess.Popen(
            cmd,
            cwd=HERE / component.module_dir,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        compiled, last_report = 0, t0
        tail: list[str] = []
        for line in proc.stderr:
            line = line.rstrip()
            tail = [*tail[-30:], line]
            if line and not line.startswith(("go: ", "#")):
                compiled += 1
            if time.monotonic() - last_report > 15:
                last_report = time.monotonic()
                print(
                    f"    {name}: {compiled} packages compiled, {last_report - t0:.0f} s",
                    flush=True,
                )
        if proc.wait() != 0:
            print("\n".join(tail), file=sys.stderr)
            raise SystemExit(f"go build {package} failed (exit {proc.returncode}); see above")
        print(f"  built {name} in {time.monotonic() - t0:.0f} s", flush=True)
    (tmp / ".stamp").write_text(_stamp(component))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"  {out} ready in {time.monotonic() - started:.0f} s", flush=True)


def main(argv: list[str]) -> int:
    if shutil.which("go") is None:
        print("make cluster needs Go (1.26 or newer) on PATH", file=sys.stderr)
        return 1
    wanted = argv or list(COMPONENTS)
    unknown = [w for w in wanted if w not in COMPONENTS]
    if unknown:
        print(f"unknown component(s) {unknown}; choose from {list(COMPONENTS)}", file=sys.stderr)
        return 1
    started = time.monotonic()
    for key in wanted:
        component = COMPONENTS[key]
        out = binary_dir(component)
        if is_built(component):
            print(f"{key} {component.version()}: cached in {out}", flush=True)
            continue
        print(f"{key} {component.version()}: building into {out}", flush=True)
        build(component, out=out)
    if "node" in wanted:  # the node's pause and workload images (C, not Go)
        images = subprocess.run([sys.executable, str(HERE / "node_images.py"), str(cache_root())])
        if images.returncode != 0:
            print("building the node images failed; see above", file=sys.stderr)
            return 1
    print(f"cluster binaries ready in {time.monotonic() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
