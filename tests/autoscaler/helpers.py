"""Helpers for the controller tests: policies, certificates, a running controller."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import trustme
from aiohttp import web

from autoscaler import app
from autoscaler.leader import LeaderSettings
from autoscaler.settings import ControllerSettings
from policies.parse import policy_to_configmap
from policies.schema import (
    Behavior,
    LatencyMetric,
    Metric,
    QueueDepthMetric,
    ReplicaBounds,
    ScalingPolicy,
    ScalingRule,
    ScalingRules,
    TargetRef,
)
from tests.support.kube_aggregator import FRONT_PROXY_CN, HPA_USER, api_service, front_proxy_pki
from tests.support.kube_standin import KubeStandIn

FAST_UP = ScalingRules(0.0, "Max", (ScalingRule("Percent", 1000, 1.0),))


def fast_behavior(scale_down_window: float = 0.0) -> Behavior:
    return Behavior(
        scale_up=FAST_UP,
        scale_down=ScalingRules(scale_down_window, "Max", (ScalingRule("Percent", 100, 1.0),)),
    )


def make_policy(
    name: str = "llama",
    namespace: str = "inference",
    *,
    metrics: tuple[Metric, ...] | None = None,
    interval: float = 1.0,
    min_replicas: int = 1,
    max_replicas: int = 20,
    scale_down_window: float = 0.0,
    target: str | None = None,
) -> ScalingPolicy:
    return ScalingPolicy(
        namespace=namespace,
        name=name,
        target=TargetRef("apps/v1", "Deployment", target or name),
        replicas=ReplicaBounds(min_replicas, max_replicas),
        metrics=metrics or (QueueDepthMetric("queue", f'queue{{policy="{name}"}}', 4.0),),
        interval=interval,
        behavior=fast_behavior(scale_down_window),
    )


def latency_metric(query: str, slo: float = 1.0) -> LatencyMetric:
    return LatencyMetric("latency", query, slo)


def policy_configmap(policy: ScalingPolicy) -> dict[str, Any]:
    return policy_to_configmap(policy)


def deployment(name: str, namespace: str, replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "server", "image": "vllm"}]},
            },
        },
    }


@dataclass(frozen=True, slots=True)
class Certs:
    """Serving certificate (signed by ``ca``) and a front-proxy client CA with one client cert."""

    ca: trustme.CA
    cert_file: str
    key_file: str
    client_ca: trustme.CA
    client_ca_file: str
    client_cert: trustme.LeafCert

    def client_context(self, *, with_cert: bool = True) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if with_cert:
            self.client_cert.configure_cert(context)
        return context


SERVICE_HOST = "gpuscale-controller.gpuscale-system.svc"


def make_certs(directory: Path) -> Certs:
    """A serving certificate (loopback and the Service's name) and the session's front-proxy
    CA with its client certificate (CN ``front-proxy-client``), which the stand-in publishes."""
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost", SERVICE_HOST)
    cert_file = directory / "tls.crt"
    key_file = directory / "tls.key"
    server.cert_chain_pems[0].write_to_path(str(cert_file))
    for pem in server.cert_chain_pems[1:]:
        pem.write_to_path(str(cert_file), append=True)
    server.private_key_pem.write_to_path(str(key_file))
    pki = front_proxy_pki()
    client_ca_file = directory / "front-proxy-ca.crt"
    pki.ca.cert_pem.write_to_path(str(client_ca_file))
    assert pki.client_cert is not None and FRONT_PROXY_CN
    return Certs(ca, str(cert_file), str(key_file), pki.ca, str(client_ca_file), pki.client_cert)


def controller_settings(
    prometheus_url: str, kubeconfig: Path, certs: Certs | None, **overrides: Any
) -> ControllerSettings:
    base = ControllerSettings(
        prometheus_url=prometheus_url,
        kubeconfig=str(kubeconfig),
        secure_address="127.0.0.1:0",
        ops_address="127.0.0.1:0",
        tls_cert_file=certs.cert_file if certs else None,
        tls_private_key_file=certs.key_file if certs else None,
        requestheader_client_ca_file=certs.client_ca_file if certs else None,
        leader_elect=False,
        prometheus_timeout=2.0,
        stale_after=120.0,
        hpa_resync=300.0,
        drain_timeout=2.0,
        # These tests' series carry no namespace label; enforcement has tests of its own.
        tenancy_label=None,
    )
    return replace(base, **overrides)


def leader_settings(identity: str, **overrides: Any) -> LeaderSettings:
    return replace(LeaderSettings(namespace="gpuscale-system", identity=identity), **overrides)


@dataclass(slots=True)
class RunningController:
    running: app.Running
    stop: asyncio.Event
    task: asyncio.Task[int]

    @property
    def controller(self) -> Any:
        return self.running.controller


@contextlib.asynccontextmanager
async def run_controller(settings: ControllerSettings) -> AsyncIterator[RunningController]:
    """Start ``app.run`` in a task, wait until it is ready, stop it on exit (asserting exit 0)."""
    stop = asyncio.Event()
    started: asyncio.Future[app.Running] = asyncio.get_running_loop().create_future()

    def on_running(running: app.Running) -> None:
        started.set_result(running)

    task = asyncio.create_task(app.run(settings, stop, on_running=on_running))
    waiters: set[asyncio.Future[Any]] = {task, started}
    done, _ = await asyncio.wait(waiters, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
        raise AssertionError("controller exited before it started")
    running = started.result()
    async with asyncio.timeout(15):
        await running.ready.wait()
    handle = RunningController(running, stop, task)
    try:
        yield handle
    finally:
        stop.set()
        if not task.done():
            async with asyncio.timeout(15):
                code = await task
            assert code == 0


async def wait_until(predicate: Any, within: float = 10.0, every: float = 0.05) -> Any:
    """Poll ``predicate`` (sync or async) until truthy; fail clearly at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(every)


async def external_metric(
    session: aiohttp.ClientSession, port: int, namespace: str, policy: str, certs: Certs
) -> tuple[int, dict[str, Any]]:
    """GET the value straight from the controller over HTTPS, as the aggregator would send it
    (front-proxy client certificate, ``X-Remote-User``); the aggregated path is ``via_api``."""
    url = (
        f"https://127.0.0.1:{port}/apis/external.metrics.k8s.io/v1beta1/namespaces/"
        f"{namespace}/gpuscale_desired_replicas"
    )
    async with session.get(
        url,
        params={"labelSelector": f"gpuscale.io/policy={policy}"},
        headers={"X-Remote-User": HPA_USER},
        ssl=certs.client_context(),
    ) as resp:
        body = await resp.json()
        return resp.status, body


CONTROLLER_SERVICE = ("gpuscale-system", "gpuscale-controller", 443)


def register_api_service(kube: KubeStandIn, port: int, certs: Certs) -> None:
    """The APIService deploy/ installs, with the stand-in's aggregator sending it to ``port``."""
    namespace, name, _ = CONTROLLER_SERVICE
    kube.store.create(
        api_service(
            "external.metrics.k8s.io",
            "v1beta1",
            CONTROLLER_SERVICE,
            certs.ca.cert_pem.bytes().decode(),
        )
    )
    kube.aggregator.endpoints[(namespace, name)] = ("127.0.0.1", port)


async def metric_via_api(
    api_client: Any, namespace: str, policy: str
) -> tuple[int, dict[str, Any]]:
    """GET the value exactly as the HPA controller does: through the API server's aggregated
    path, with the official client (``GET /apis/external.metrics.k8s.io/v1beta1/namespaces/
    {ns}/gpuscale_desired_replicas?labelSelector=gpuscale.io/policy=<name>``)."""
    from kubernetes.aio import client as kclient

    api = kclient.CustomObjectsApi(api_client)
    try:
        body = await api.list_namespaced_custom_object(
            "external.metrics.k8s.io",
            "v1beta1",
            namespace,
            "gpuscale_desired_replicas",
            label_selector=f"gpuscale.io/policy={policy}",
        )
    except kclient.ApiException as exc:
        return int(exc.status or 0), json.loads(exc.body or "{}")
    assert isinstance(body, dict), body
    return 200, body


def metric_count(body: Mapping[str, Any]) -> int:
    items = body.get("items") or []
    assert len(items) == 1, body
    value = str(items[0]["value"])
    return int(value) if not value.endswith("m") else math.ceil(int(value[:-1]) / 1000)


class FakePrometheus:
    """``/api/v1/query`` answering from a dict: query → value (float), ``None`` (no series) or an
    HTTP status (int ≥ 400). For unit tests of the client only; integration tests use the real one.
    """

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}
        self.status: int | None = None
        self.delay = 0.0
        self.fail_first = 0
        """Answer this many requests with ``status`` first, then normally."""
        self.calls: list[str] = []
        self.hanging: set[str] = set()
        """Queries that get no answer until ``release`` is set (a hung Prometheus shard)."""
        self.release = asyncio.Event()
        self._arrivals = asyncio.Condition()
        self.chunked = False
        """Send answers with chunked transfer encoding (no Content-Length to check first)."""
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _query(self, request: web.Request) -> web.StreamResponse:
        form = await request.post() if request.method == "POST" else request.query
        query = str(form.get("query", ""))
        self.calls.append(query)
        async with self._arrivals:
            self._arrivals.notify_all()
        if query in self.hanging:
            await self.release.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status is not None and (self.fail_first <= 0 or len(self.calls) <= self.fail_first):
            return web.Response(status=self.status, text="injected")
        answer = self.answers.get(query)
        if isinstance(answer, int) and not isinstance(answer, bool) and answer >= 400:
            return web.Response(status=answer, text="injected")
        if isinstance(answer, dict):
            if self.chunked:
                return await self._chunked(request, json.dumps(answer).encode())
            return web.json_response(answer)
        result = [] if answer is None else [{"metric": {}, "value": [1.0, str(answer)]}]
        return web.json_response(
            {"status": "success", "data": {"resultType": "vector", "result": result}}
        )

    async def wait_for_calls(self, query: str, count: int) -> None:
        """Until ``query`` has arrived ``count`` times (answered or not)."""
        async with self._arrivals:
            await self._arrivals.wait_for(lambda: self.calls.count(query) >= count)

    async def _chunked(self, request: web.Request, body: bytes) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        with contextlib.suppress(ConnectionResetError):
            for at in range(0, len(body), 16 * 1024):
                await response.write(body[at : at + 16 * 1024])
            await response.write_eof()
        return response

    async def start(self) -> None:
        application = web.Application()
        application.router.add_route("*", "/api/v1/query", self._query)
        self._runner = web.AppRunner(application, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        if self.port == 0:
            self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
