"""The ``external.metrics.k8s.io/v1beta1`` API the HPA reads our replica counts from.

kube-aggregator proxies ``/apis/external.metrics.k8s.io/v1beta1/...`` to this server over
HTTPS, authenticating itself with the front-proxy client certificate. Answers mirror the shapes
``k8s.io/metrics`` and kube-apiserver use, errors included, so the HPA's events read as usual.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from autoscaler.authn import FrontProxy, authenticate
from autoscaler.selectors import SelectorError, parse_selector
from autoscaler.store import DecisionStore, Published

GROUP = "external.metrics.k8s.io"
VERSION = "v1beta1"
GROUP_VERSION = f"{GROUP}/{VERSION}"
METRIC = "gpuscale_desired_replicas"
POLICY_LABEL = "gpuscale.io/policy"
VARIANT_LABEL = "gpuscale.io/variant"
"""With a variants policy: which variant's count (each variant's HPA pins it)."""
BASE = f"/apis/{GROUP_VERSION}"

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ExternalMetricsSettings:
    stale_after: float = 120.0
    """Seconds a value may rest on no fresh data before requests for it fail."""


def format_quantity(value: float) -> str:
    """A Kubernetes quantity string: ``"7"`` for whole numbers, else milli-units (``"1500m"``).

    Fractions below a milli-unit round up, as the metrics APIs do, so a positive value never
    reads as zero.
    """
    if not math.isfinite(value):
        raise ValueError(f"cannot express {value!r} as a quantity")
    if value == int(value) and abs(value) < 2**63:
        return str(int(value))
    return f"{math.ceil(value * 1000)}m"


def rfc3339(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def status_body(
    code: int, reason: str, message: str, details: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A ``meta/v1 Status`` failure, field for field as kube-apiserver writes it."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
    }
    if details is not None:
        body["details"] = dict(details)
    body["code"] = code
    return body


def discovery_document() -> dict[str, Any]:
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": GROUP_VERSION,
        "resources": [
            {
                "name": METRIC,
                "singularName": "",
                "namespaced": True,
                "kind": "ExternalMetricValueList",
                "verbs": ["get"],
            }
        ],
    }


def group_document() -> dict[str, Any]:
    version = {"groupVersion": GROUP_VERSION, "version": VERSION}
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": GROUP,
        "versions": [version],
        "preferredVersion": version,
    }


def labels_of(p: Published) -> dict[str, str]:
    """The labels a record is selected by: its policy, and its variant where it has one."""
    if p.variant:
        return {POLICY_LABEL: p.policy, VARIANT_LABEL: p.variant}
    return {POLICY_LABEL: p.policy}


def value_list(items: list[Published]) -> dict[str, Any]:
    return {
        "kind": "ExternalMetricValueList",
        "apiVersion": GROUP_VERSION,
        "metadata": {},
        "items": [
            {
                "metricName": METRIC,
                "metricLabels": labels_of(p),
                "timestamp": rfc3339(p.decided_at),
                "value": format_quantity(p.replicas),
            }
            for p in items
        ],
    }


def _json(body: Mapping[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _not_found(message: str) -> web.Response:
    return _json(status_body(404, "NotFound", message), 404)


def build_app(
    store: DecisionStore,
    settings: ExternalMetricsSettings,
    *,
    wall: Callable[[], float] = time.time,
    trust: Callable[[], FrontProxy | None] | None = None,
) -> web.Application:
    """The aiohttp application; ``wall`` is the clock staleness is measured with.

    ``trust`` gives the current front-proxy trust; every request must then come from the
    front proxy (see ``authn``). None serves anyone (unit tests, ``--insecure-allow-any-client``).
    """

    async def group(_: web.Request) -> web.Response:
        return _json(group_document())

    async def resources(_: web.Request) -> web.Response:
        return _json(discovery_document())

    async def metric(request: web.Request) -> web.Response:
        namespace = request.match_info["namespace"]
        name = request.match_info["metric"]
        if name != METRIC:
            return _not_found(
                f"the server could not find the metric {name} for namespace {namespace}"
            )
        text = request.query.get("labelSelector", "")
        try:
            selector = parse_selector(text)
        except SelectorError as exc:
            return _json(status_body(400, "BadRequest", str(exc)), 400)
        pinned = selector.equals(POLICY_LABEL)
        if pinned is not None:
            candidates = store.of_policy(namespace, pinned)
        else:
            candidates = list(store.in_namespace(namespace))
        found = [p for p in candidates if selector.matches(labels_of(p))]
        if not found:
            return _not_found(
                f"the server could not find the metric {METRIC} for namespace {namespace}"
                f" and selector {text!r}"
            )
        now = wall()
        stale = [p for p in found if now - p.fresh_at > settings.stale_after]
        if stale:
            p = stale[0]
            return _json(
                status_body(
                    503,
                    "ServiceUnavailable",
                    f"{METRIC} for policy {p.namespace}/{p.policy}"
                    + (f" variant {p.variant}" if p.variant else "")
                    + " is stale: no decision based"
                    f" on data for {now - p.fresh_at:.0f}s (limit {settings.stale_after:g}s)"
                    + (f": {p.note}" if p.note else ""),
                ),
                503,
            )
        return _json(value_list(found))

    async def unknown(request: web.Request) -> web.Response:
        return _json(
            status_body(404, "NotFound", "the server could not find the requested resource", {}),
            404,
        )

    @web.middleware
    async def authenticated(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        transport = request.transport
        peercert = transport.get_extra_info("peercert") if transport is not None else None
        verdict = authenticate(trust() if trust is not None else None, peercert, request.headers)
        if not verdict.allowed:
            reason = "Unauthorized" if verdict.status == 401 else "Forbidden"
            log.warning(
                "external metrics request refused",
                extra={"status": verdict.status, "path": request.path, "error": verdict.message},
            )
            return _json(status_body(verdict.status, reason, verdict.message), verdict.status)
        response = await handler(request)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "external metrics request",
                extra={
                    "user": verdict.user,
                    "groups": list(verdict.groups),
                    "path": request.path_qs,
                    "status": response.status,
                },
            )
        return response

    app = web.Application(middlewares=[authenticated])
    app.router.add_get(f"/apis/{GROUP}", group)
    app.router.add_get(BASE, resources)
    app.router.add_get(BASE + "/namespaces/{namespace}/{metric}", metric)
    app.router.add_route("*", "/{tail:.*}", unknown)
    return app
