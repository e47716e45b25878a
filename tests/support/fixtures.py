"""pytest fixtures for the real parts the tests talk to.

- `kube`: a running `KubeStandIn` (Kubernetes API stand-in) with a kubeconfig written for it.
- `kube_client`: a `kubernetes.aio.client.ApiClient` pointed at `kube`, closed afterwards.
- `inference_server`: a synthetic vLLM-style metrics server (`.target` is host:port).
- `prometheus` / `prometheus_factory`: Debian's Prometheus scraping targets the test names.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.kube_standin import KubeStandIn, make_api_client


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[KubeStandIn]:
    """A fresh API stand-in per test; `kube.kubeconfig_path` points a client at it."""
    standin = KubeStandIn()
    await standin.start()
    standin.write_kubeconfig(tmp_path / "kubeconfig")
    try:
        yield standin
    finally:
        await standin.stop()


@pytest.fixture
async def kube_client(kube: KubeStandIn) -> AsyncIterator[Any]:
    """The official `kubernetes.aio` ApiClient, configured from `kube`'s kubeconfig."""
    assert kube.kubeconfig_path is not None
    client = await make_api_client(kube.kubeconfig_path)
    try:
        yield client
    finally:
        await client.close()
