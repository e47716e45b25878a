"""Real Prometheus scraping the synthetic inference server: the queries gpuscale runs work."""

from __future__ import annotations

import aiohttp
import pytest

from tests.support.inference_server import CLASSIC_TEXT, InferenceServer
from tests.support.prometheus import PrometheusError, PrometheusServer

P95 = (
    "histogram_quantile(0.95, sum by (le) "
    '(rate(vllm:e2e_request_latency_seconds_bucket{model_name="llama"}[5s])))'
)


async def test_metrics_keep_vllm_names_even_when_openmetrics_is_asked_for(
    inference_server: InferenceServer,
) -> None:
    inference_server.set_waiting(7)
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    async with (
        aiohttp.ClientSession() as session,
        session.get(inference_server.url, headers={"Accept": accept}) as resp,
    ):
        text = await resp.text()
        assert resp.headers["Content-Type"] == CLASSIC_TEXT
    assert 'vllm:num_requests_waiting{model_name="llama"} 7.0' in text
    assert "vllm_num_requests_waiting" not in text


async def test_prometheus_follows_the_queue_gauge_per_model(
    inference_server: InferenceServer, prometheus: PrometheusServer
) -> None:
    query = 'sum(vllm:num_requests_waiting{model_name="llama"})'
    inference_server.set_waiting(12)
    assert await prometheus.wait_for_value(query, lambda v: v == 12) == 12
    inference_server.set_waiting(3)
    inference_server.set_waiting(2, model="other")
    assert await prometheus.wait_for_value(query, lambda v: v == 3) == 3
    await prometheus.wait_for_value('vllm:num_requests_waiting{model_name="other"}')
    with pytest.raises(PrometheusError, match="2 series"):
        await prometheus.query_value("vllm:num_requests_waiting")
    assert await prometheus.query_value('vllm:num_requests_waiting{model_name="none"}') is None
    triton = await prometheus.query_value('nv_inference_pending_request_count{model="llama"}')
    assert triton == 3


async def test_latency_quantile_over_rate_has_the_right_magnitude(
    inference_server: InferenceServer, prometheus: PrometheusServer
) -> None:
    inference_server.observe_latency(0.1)
    await inference_server.wait_for_scrapes(2)
    # 1.2 s requests fall in the (1.0, 1.5] bucket: p95 interpolates inside it.
    for _ in range(4):
        inference_server.observe_latency(1.2, count=50)
        inference_server.add_success(50)
        await inference_server.wait_for_scrapes(1)
    p95 = await prometheus.wait_for_value(P95, lambda v: 1.0 < v <= 1.5)
    assert 1.0 < p95 <= 1.5
    rate = await prometheus.wait_for_value(
        'sum(rate(vllm:request_success_total{model_name="llama"}[5s]))', lambda v: v > 0
    )
    assert rate > 0


async def test_prometheus_stopped_and_restarted_keeps_port_and_data(
    inference_server: InferenceServer, prometheus: PrometheusServer
) -> None:
    inference_server.set_waiting(5)
    query = "vllm:num_requests_waiting"
    await prometheus.wait_for_value(query, lambda v: v == 5)
    url = prometheus.url
    await prometheus.astop()
    assert not prometheus.running
    with pytest.raises(aiohttp.ClientConnectionError):
        await prometheus.query(query)
    await prometheus.astart()
    assert prometheus.url == url
    inference_server.set_waiting(9)
    assert await prometheus.wait_for_value(query, lambda v: v == 9) == 9
    assert "vllm:num_requests_waiting" in {
        s["metric"]["__name__"] for s in await prometheus.query("{__name__=~'vllm:.*waiting'}")
    }
