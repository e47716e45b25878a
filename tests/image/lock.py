"""Read the hashed requirement locks under ``requirements/`` (what ``uv pip compile`` writes)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from packaging.markers import Marker
from packaging.utils import NormalizedName, canonicalize_name

from tests.cluster.images import REPO

LOCKS = REPO / "requirements"


class LockError(ValueError):
    """A lock line that is not ``name==version [; marker] \\`` with ``--hash`` lines."""


@dataclass(frozen=True)
class Pin:
    """One locked distribution."""

    name: NormalizedName
    version: str
    marker: Marker | None
    hashes: tuple[str, ...]

    def applies(self, environment: dict[str, str]) -> bool:
        return self.marker is None or self.marker.evaluate(environment)


_PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)\s*(?:;(?P<marker>[^\\]+))?\\?$"
)
_HASH = re.compile(r"^--hash=(?P<algo>sha256):(?P<digest>[0-9a-f]{64})\s*\\?$")


def parse_lock(text: str, *, where: str = "lock") -> dict[NormalizedName, Pin]:
    """Pins by normalised name; every pin must carry at least one sha256 hash."""
    pins: dict[NormalizedName, Pin] = {}
    current: tuple[NormalizedName, str, Marker | None] | None = None
    hashes: list[str] = []

    def close(lineno: int) -> None:
        if current is None:
            return
        if not hashes:
            raise LockError(f"{where}:{lineno}: {current[0]}=={current[1]} has no --hash")
        name, version, marker = current
        if name in pins:
            raise LockError(f"{where}:{lineno}: {name} is pinned twice")
        pins[name] = Pin(name, version, marker, tuple(hashes))

    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("--hash="):
            match = _HASH.match(line)
            if match is None or current is None:
                raise LockError(f"{where}:{lineno}: bad hash line {line!r}")
            hashes.append(match.group("digest"))
            continue
        match = _PIN.match(line)
        if match is None:
            raise LockError(f"{where}:{lineno}: expected name==version, got {line!r}")
        close(lineno)
        marker_text = (match.group("marker") or "").strip()
        current = (
            canonicalize_name(match.group("name")),
            match.group("version"),
            Marker(marker_text) if marker_text else None,
        )
        hashes = []
    close(len(text.splitlines()))
    return pins


def read_lock(name: str) -> dict[NormalizedName, Pin]:
    path = LOCKS / name
    return parse_lock(path.read_text(), where=str(path.relative_to(REPO)))
