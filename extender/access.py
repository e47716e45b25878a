"""Who may call the extender's verbs: kube-scheduler, proven by its client certificate.

The extender listens twice. The *verbs* listener serves ``/filter``, ``/prioritize`` and
``/bind`` over mTLS: the TLS layer already refused clients without a certificate signed by the
client CA, and here a verb additionally needs a certificate naming an allowed identity (CN or
SAN; ``system:kube-scheduler`` unless configured). The *ops* listener is plain HTTP for the
kubelet's probes and Prometheus and serves ``/livez``, ``/readyz`` and ``/metrics`` only. When
the extender runs as the scheduler's sidecar on loopback with plain HTTP (``--plain-http-sidecar``)
the verbs listener has no certificates to check and serves everything.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import orjson
from aiohttp import web

from runtime.identity import certificate_names
from runtime.serving import Peer, peer_of

VERBS_LISTENER = "verbs"
OPS_LISTENER = "ops"
OPS_PATHS = frozenset({"/livez", "/readyz", "/metrics"})
DEFAULT_ALLOWED_NAMES = ("system:kube-scheduler",)


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    allowed_names: frozenset[str] = frozenset(DEFAULT_ALLOWED_NAMES)
    """Certificate names (CN or SAN) that may call the verbs; empty: any the client CA signed."""

    @classmethod
    def of(cls, names: Iterable[str]) -> AccessPolicy:
        return cls(frozenset(n.strip() for n in names if n.strip()))


def refusal(policy: AccessPolicy, path: str, peer: Peer | None) -> tuple[int, str] | None:
    """Why this request may not be served (status and reason), or None to serve it."""
    if peer is None:  # not served through runtime.serve (an app embedded in a test)
        return None
    if peer.listener != VERBS_LISTENER:
        if path in OPS_PATHS:
            return None
        return 403, f"{path} is served only on the extender's mTLS port, not on the ops port"
    if path in OPS_PATHS or not peer.tls or not policy.allowed_names:
        return None
    names = certificate_names(peer.certificate)
    if policy.allowed_names.intersection(names):
        return None
    return 403, (
        f"client certificate {list(names)} may not call {path}; allowed identities:"
        f" {sorted(policy.allowed_names)}"
    )


def middleware(policy: AccessPolicy) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def access(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        refused = refusal(policy, request.path, peer_of(request))
        if refused is not None:
            status, reason = refused
            return web.Response(
                status=status, body=orjson.dumps({"Error": reason}), content_type="application/json"
            )
        return await handler(request)

    return access
