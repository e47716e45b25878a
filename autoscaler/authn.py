"""Who may read the external metrics API: the aggregator, proven by its front-proxy certificate.

The same delegated scheme every aggregated API server uses (k8s.io/apiserver's request-header
authenticator): kube-apiserver publishes its front-proxy CA, the CNs it may use and the names of
the user/group headers in ``kube-system/extension-apiserver-authentication``. A request counts
only when its TLS client certificate chains to that CA (checked by the TLS layer), its CN is
allowed (when a list is given) and it names a user in a user header. Plain client certificates
(``client-ca-file``) and bearer tokens are not accepted: without a SubjectAccessReview they would
let any cluster user read the API, and only the aggregator needs to.

Pure: no I/O; ``app`` reads the ConfigMap and the files, the server hands us the peer certificate.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

CONFIGMAP_NAMESPACE = "kube-system"
CONFIGMAP_NAME = "extension-apiserver-authentication"
DEFAULT_USERNAME_HEADERS = ("X-Remote-User",)
DEFAULT_GROUP_HEADERS = ("X-Remote-Group",)


class AuthnConfigError(ValueError):
    """The ConfigMap or flags hold something we cannot use; says which key and why."""


@dataclass(frozen=True, slots=True)
class FrontProxy:
    """The front-proxy trust: CA (PEM), allowed CNs (empty: any), header names, where from."""

    ca_pem: str
    allowed_names: tuple[str, ...] = ()
    username_headers: tuple[str, ...] = DEFAULT_USERNAME_HEADERS
    group_headers: tuple[str, ...] = DEFAULT_GROUP_HEADERS
    source: str = ""


@dataclass(frozen=True, slots=True)
class Verdict:
    """``status`` 200 lets the request in; 401/403 refuse it with ``message``."""

    status: int
    user: str = ""
    groups: tuple[str, ...] = ()
    message: str = ""

    @property
    def allowed(self) -> bool:
        return self.status == 200


def _string_list(data: Mapping[str, Any], key: str) -> tuple[str, ...] | None:
    raw = data.get(key)
    if raw is None or raw == "":
        return None
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError as exc:
        raise AuthnConfigError(f"{key}: not a JSON list of strings: {exc}") from exc
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AuthnConfigError(f"{key}: expected a JSON list of strings, got {raw!r}")
    return tuple(value)


def from_configmap(data: Mapping[str, Any] | None) -> FrontProxy | None:
    """The front-proxy trust from the ConfigMap's ``data``; None when it names no front-proxy CA."""
    data = data or {}
    ca = data.get("requestheader-client-ca-file")
    if not isinstance(ca, str) or "BEGIN CERTIFICATE" not in ca:
        return None
    return FrontProxy(
        ca_pem=ca,
        allowed_names=_string_list(data, "requestheader-allowed-names") or (),
        username_headers=_string_list(data, "requestheader-username-headers")
        or DEFAULT_USERNAME_HEADERS,
        group_headers=_string_list(data, "requestheader-group-headers") or DEFAULT_GROUP_HEADERS,
        source=f"configmap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME}",
    )


def from_file(path: str, ca_pem: str, allowed_names: Iterable[str] = ()) -> FrontProxy:
    """The front-proxy trust from ``--requestheader-client-ca-file`` (and allowed names)."""
    if "BEGIN CERTIFICATE" not in ca_pem:
        raise AuthnConfigError(f"{path}: no PEM certificate in the file")
    names = tuple(n.strip() for n in allowed_names if n.strip())
    return FrontProxy(ca_pem=ca_pem, allowed_names=names, source=path)


def common_name(peercert: Mapping[str, Any] | None) -> str | None:
    """The subject CN of a certificate as ``ssl.SSLSocket.getpeercert()`` returns it."""
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def authenticate(
    trust: FrontProxy | None,
    peercert: Mapping[str, Any] | None,
    headers: Mapping[str, str],
) -> Verdict:
    """Decide for one request. ``trust`` None means ``--insecure-allow-any-client``.

    ``peercert`` is set only for a certificate the TLS layer verified against ``trust.ca_pem``
    (a certificate from another CA fails the handshake), so here it is present or not.
    """
    if trust is None:
        return Verdict(200, user=_first(headers, DEFAULT_USERNAME_HEADERS) or "anonymous")
    if not peercert:
        return Verdict(401, message="Unauthorized: a front-proxy client certificate is required")
    cn = common_name(peercert) or ""
    if trust.allowed_names and cn not in trust.allowed_names:
        return Verdict(
            403,
            message=f"Forbidden: client certificate CN {cn!r} is not one of the allowed front-proxy"
            f" names {list(trust.allowed_names)}",
        )
    user = _first(headers, trust.username_headers)
    if not user:
        return Verdict(
            401,
            message="Unauthorized: no user in "
            + " or ".join(trust.username_headers)
            + " from the front proxy",
        )
    groups = tuple(g for name in trust.group_headers for g in _all(headers, name) if g)
    return Verdict(200, user=user, groups=groups)


def _first(headers: Mapping[str, str], names: Iterable[str]) -> str:
    for name in names:
        value = headers.get(name, "")
        if value:
            return value
    return ""


def _all(headers: Mapping[str, str], name: str) -> list[str]:
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return [str(v) for v in getall(name, [])]
    value = headers.get(name)
    return [value] if value else []
