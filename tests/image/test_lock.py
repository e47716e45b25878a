"""The hashed locks: parsed strictly, and covering what pyproject asks for (no image needed)."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.cluster.images import REPO
from tests.image.lock import LockError, parse_lock, read_lock

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
LINUX_311 = {
    **{k: str(v) for k, v in default_environment().items()},
    "python_version": "3.11",
    "python_full_version": "3.11.2",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}

_names = st.from_regex(r"[a-z][a-z0-9]{0,8}(-[a-z0-9]{1,5})?", fullmatch=True)
_versions = st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,3}){0,3}", fullmatch=True)
_digests = st.from_regex(r"[0-9a-f]{64}", fullmatch=True)


@given(
    st.dictionaries(
        _names, st.tuples(_versions, st.lists(_digests, min_size=1, max_size=3)), max_size=8
    ),
    st.booleans(),
)
def test_rendered_pins_parse_back(
    pins: dict[str, tuple[str, list[str]]], with_marker: bool
) -> None:
    marker = " ; sys_platform == 'linux'" if with_marker else ""
    lines = ["# header", "#    make lock"]
    for name, (version, digests) in pins.items():
        lines.append(f"{name}=={version}{marker} \\")
        lines += [f"    --hash=sha256:{d} \\" for d in digests[:-1]]
        lines += [f"    --hash=sha256:{digests[-1]}", "    # via pyproject.toml"]
    parsed = parse_lock("\n".join(lines))
    assert {n: (p.version, list(p.hashes)) for n, p in parsed.items()} == {
        canonicalize_name(n): v for n, v in pins.items()
    }
    assert all((p.marker is not None) == with_marker for p in parsed.values())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("requests>=2 \\\n    --hash=sha256:" + "0" * 64, "expected name==version"),
        ("requests==2.0", "has no --hash"),
        ("--hash=sha256:" + "0" * 64, "bad hash line"),
        ("a==1 \\\n    --hash=md5:abc", "bad hash line"),
        (
            "a==1 \\\n    --hash=sha256:" + "0" * 64 + "\nA==2 \\\n    --hash=sha256:" + "1" * 64,
            "pinned twice",
        ),
    ],
)
def test_bad_locks_say_which_line(text: str, message: str) -> None:
    with pytest.raises(LockError, match=message):
        parse_lock(text, where="x.lock")


def _closure_names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def test_runtime_lock_is_the_gpu_install_and_nothing_from_sim_test_dev() -> None:
    pins = read_lock("runtime.lock")
    extras = PYPROJECT["project"]["optional-dependencies"]
    wanted = _closure_names(PYPROJECT["project"]["dependencies"] + extras["gpu"])
    assert wanted <= set(pins), wanted - set(pins)
    only_elsewhere = _closure_names(extras["sim"] + extras["dev"] + extras["test"]) - wanted
    assert not only_elsewhere & set(pins), only_elsewhere & set(pins)
    assert "scipy" not in pins
    assert {"pip", "setuptools", "wheel"}.isdisjoint(pins)
    for requirement in map(Requirement, PYPROJECT["project"]["dependencies"] + extras["gpu"]):
        pin = pins[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(pin.version), (requirement, pin.version)


def test_test_lock_covers_every_extra_make_test_installs() -> None:
    pins = read_lock("test.lock")
    extras = PYPROJECT["project"]["optional-dependencies"]
    groups = {"dependencies": PYPROJECT["project"]["dependencies"]} | {
        group: extras[group] for group in ("sim", "test", "dev", "ray", "gpu")
    }
    for group, requirements in groups.items():
        for requirement in map(Requirement, requirements):
            if requirement.marker and not requirement.marker.evaluate(LINUX_311):
                continue
            pin = pins.get(canonicalize_name(requirement.name))
            assert pin is not None, f"{requirement.name} ({group}) is not in test.lock: make lock"
            assert requirement.specifier.contains(pin.version), (requirement, pin.version)


def test_runtime_pins_agree_with_the_test_pins() -> None:
    """The image runs the versions the tests ran with."""
    runtime, test = read_lock("runtime.lock"), read_lock("test.lock")
    differ = {
        n: (p.version, test[n].version)
        for n, p in runtime.items()
        if n in test and test[n].version != p.version
    }
    assert not differ, f"make lock: runtime and test locks disagree: {differ}"


def test_build_lock_holds_the_build_backend() -> None:
    backend = PYPROJECT["build-system"]["requires"]
    assert _closure_names(backend) <= set(read_lock("build.lock"))
