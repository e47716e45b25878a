"""The names a verified client certificate carries, as ``getpeercert()`` returns it. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_SAN_KINDS = ("DNS", "URI", "email")


def certificate_names(peercert: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The subject CN first, then the DNS, URI and email subject alternative names."""
    names: list[str] = []
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                names.append(str(value))
    for kind, value in (peercert or {}).get("subjectAltName", ()):
        if kind in _SAN_KINDS:
            names.append(str(value))
    return tuple(dict.fromkeys(names))
