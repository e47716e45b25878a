"""The controller's servers are bounded per connection (issue 21, row 1): TLS strangers without
a front-proxy certificate, each holding half a request line, cannot crowd out the aggregator,
and what was closed is counted on /metrics."""

from __future__ import annotations

import asyncio

import aiohttp

from runtime.limits import ConnectionLimits
from tests.autoscaler.helpers import (
    Certs,
    FakePrometheus,
    controller_settings,
    run_controller,
    wait_until,
)
from tests.support.kube_standin import KubeStandIn

DISCOVERY = "/apis/external.metrics.k8s.io/v1beta1"


async def test_tls_strangers_cannot_crowd_out_the_aggregator(
    kube: KubeStandIn, fake_prometheus: FakePrometheus, certs: Certs
) -> None:
    assert kube.kubeconfig_path is not None
    limits = ConnectionLimits(max_connections=64, max_unproven=4, head_timeout=60)
    settings = controller_settings(fake_prometheus.url, kube.kubeconfig_path, certs, limits=limits)
    async with run_controller(settings) as rc:
        port = rc.running.secure_port
        assert port is not None
        strangers = []
        for _ in range(16):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=certs.client_context(with_cert=False)
            )
            writer.write(b"GET /apis/external.metrics.k8s")
            strangers.append((reader, writer))

        async with aiohttp.ClientSession() as http:

            async def evictions() -> float:
                async with http.get(f"http://127.0.0.1:{rc.running.ops_port}/metrics") as r:
                    for line in (await r.text()).splitlines():
                        if line.startswith(
                            'gpuscale_connections_closed_total{listener="secure",'
                            'reason="unproven_evicted"}'
                        ):
                            return float(line.split()[-1])
                return 0.0

            assert await wait_until(lambda: evictions(), within=20) and await evictions() >= 12
            async with http.get(
                f"https://127.0.0.1:{port}{DISCOVERY}",
                headers={"X-Remote-User": "hpa"},
                ssl=certs.client_context(),
            ) as resp:
                assert resp.status == 200
            async with http.get(
                f"https://127.0.0.1:{port}{DISCOVERY}",
                ssl=certs.client_context(with_cert=False),
            ) as resp:
                assert resp.status == 401  # answered, as kube-apiserver would, then cut soon
        for _r, w in strangers:
            w.close()
