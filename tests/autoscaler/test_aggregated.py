"""The stand-in's aggregation layer behaves as kube-aggregator does for our APIService."""

from __future__ import annotations

import ssl
from typing import Any

import trustme
from aiohttp import web

from autoscaler.authn import common_name
from runtime.startup import serving
from tests.autoscaler.helpers import (
    CONTROLLER_SERVICE,
    Certs,
    metric_via_api,
    register_api_service,
)
from tests.support.kube_aggregator import FRONT_PROXY_CN, HPA_USER, Aggregator, api_service
from tests.support.kube_standin import KubeStandIn
from tests.support.prometheus import free_port

NS = "inference"


async def test_no_apiservice_is_a_404(kube: KubeStandIn, kube_client: Any) -> None:
    status, body = await metric_via_api(kube_client, NS, "llama")
    assert (status, body["reason"]) == (404, "NotFound")


async def test_unreachable_backend_is_a_503_status(
    kube: KubeStandIn, kube_client: Any, certs: Certs
) -> None:
    register_api_service(kube, free_port(), certs)
    status, body = await metric_via_api(kube_client, NS, "llama")
    assert (status, body["kind"], body["reason"]) == (503, "Status", "ServiceUnavailable")
    assert "gpuscale-system/gpuscale-controller" in body["message"]


async def test_request_carries_the_front_proxy_identity_and_checks_the_backend(
    kube: KubeStandIn, kube_client: Any, certs: Certs, front_proxy: Aggregator
) -> None:
    seen: list[tuple[str | None, str, list[str]]] = []

    async def echo(request: web.Request) -> web.Response:
        assert request.transport is not None
        cn = common_name(request.transport.get_extra_info("peercert"))
        seen.append(
            (cn, request.headers["X-Remote-User"], request.headers.getall("X-Remote-Group"))
        )
        return web.json_response({"kind": "ExternalMetricValueList", "items": []})

    backend = web.Application()
    backend.router.add_get("/{tail:.*}", echo)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.cert_file, certs.key_file)
    certs.client_ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    async with serving(backend, "127.0.0.1:0", context) as port:
        register_api_service(kube, port, certs)
        status, body = await metric_via_api(kube_client, NS, "llama")
        assert status == 200 and body["kind"] == "ExternalMetricValueList"
        cn, user, groups = seen[0]
        assert (cn, user) == (FRONT_PROXY_CN, HPA_USER)
        assert "system:authenticated" in groups

        # A caller cannot name itself: its own identity headers never reach the backend.
        from kubernetes.aio import client as kclient

        await kclient.CustomObjectsApi(kube_client).list_namespaced_custom_object(
            "external.metrics.k8s.io",
            "v1beta1",
            NS,
            "gpuscale_desired_replicas",
            _headers={"X-Remote-User": "mallory", "X-Remote-Group": "system:masters"},
        )
        assert seen[1][1:] == seen[0][1:]

        # A caBundle that did not sign the backend's certificate: unreachable, as upstream.
        other = api_service(
            "external.metrics.k8s.io",
            "v1beta1",
            CONTROLLER_SERVICE,
            trustme.CA().cert_pem.bytes().decode(),
        )
        kube.store.patch(
            "apiservices", None, "v1beta1.external.metrics.k8s.io", {"spec": other["spec"]}
        )
        status, body = await metric_via_api(kube_client, NS, "llama")
        assert (status, body["reason"]) == (503, "ServiceUnavailable")
        assert len(seen) == 2
    assert front_proxy.forwarded[0]["X-Remote-User"] == HPA_USER
