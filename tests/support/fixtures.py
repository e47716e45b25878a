"""pytest fixtures for the real parts the tests talk to.

- `kube`: a running `KubeStandIn` (Kubernetes API stand-in) with a kubeconfig written for it,
  an aggregation layer (`kube.aggregator`, proxying external.metrics.k8s.io to its APIService)
  and `kube-system/extension-apiserver-authentication` naming the front-proxy CA.
- `front_proxy`: that aggregation layer (`Aggregator`: `.pki`, `.endpoints`, `.forwarded`).
- `kube_client`: a `kubernetes.aio.client.ApiClient` pointed at `kube`, closed afterwards.
- `inference_server`: a synthetic vLLM-style metrics server (`.target` is host:port).
- `prometheus`: Debian's Prometheus scraping `inference_server` every second.
- `prometheus_factory`: `make(targets, **options) -> PrometheusServer` for other set-ups.
Prometheus fixtures skip with a reason where the binary is missing (`make test` installs it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support.inference_server import InferenceServer
from tests.support.kube_aggregator import Aggregator, front_proxy_pki
from tests.support.kube_standin import KubeStandIn, make_api_client
from tests.support.prometheus import PrometheusServer, find_prometheus

PrometheusFactory = Callable[..., PrometheusServer]


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[KubeStandIn]:
    """A fresh API stand-in per test; `kube.kubeconfig_path` points a client at it."""
    standin = KubeStandIn()
    aggregator = Aggregator(front_proxy_pki())
    aggregator.install(standin)
    standin.aggregator = aggregator
    await standin.start()
    standin.write_kubeconfig(tmp_path / "kubeconfig")
    try:
        yield standin
    finally:
        await standin.stop()
        await aggregator.close()
    assert not standin.internal_errors, f"the API stand-in failed: {standin.internal_errors}"


@pytest.fixture
def front_proxy(kube: KubeStandIn) -> Aggregator:
    """The aggregation layer of `kube` (APIServices proxied with the front-proxy certificate)."""
    aggregator: Aggregator = kube.aggregator
    return aggregator


@pytest.fixture
async def kube_client(kube: KubeStandIn) -> AsyncIterator[Any]:
    """The official `kubernetes.aio` ApiClient, configured from `kube`'s kubeconfig."""
    assert kube.kubeconfig_path is not None
    client = await make_api_client(kube.kubeconfig_path)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def inference_server() -> AsyncIterator[InferenceServer]:
    server = InferenceServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[PrometheusFactory]:
    """Start Prometheus servers (each in its own directory); all are stopped afterwards."""
    if find_prometheus() is None:
        pytest.skip("prometheus binary not found; `make test` installs Debian's prometheus")
    started: list[PrometheusServer] = []

    def make(targets: Sequence[str] = (), **options: Any) -> PrometheusServer:
        server = PrometheusServer(tmp_path / f"prometheus-{len(started)}", targets, **options)
        started.append(server)
        server.start()
        return server

    try:
        yield make
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def prometheus(
    prometheus_factory: PrometheusFactory, inference_server: InferenceServer
) -> PrometheusServer:
    """A real Prometheus scraping `inference_server` every second."""
    return prometheus_factory([inference_server.target])
