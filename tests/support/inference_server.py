"""A synthetic inference server exposing vLLM-style (and a few Triton-style) metrics.

The test drives the load by hand (`set_waiting`, `observe_latency`, `add_success`) and a real
Prometheus scrapes `/metrics`. The body is always the classic text format (0.0.4): Prometheus
2.42 asks for OpenMetrics first, and prometheus-client 0.26 rewrites `vllm:` names in its
OpenMetrics output, so honouring the Accept header would lose the names gpuscale queries.

Series (label `model_name`, Triton's `model`):
    vllm:num_requests_waiting         gauge
    vllm:num_requests_running         gauge
    vllm:e2e_request_latency_seconds  histogram (vLLM's buckets)
    vllm:request_success_total        counter
    nv_inference_pending_request_count{model}  gauge (Triton)
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CLASSIC_TEXT = "text/plain; version=0.0.4; charset=utf-8"
VLLM_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip


class InferenceServer:
    """Start with `await start()`; `target` is what a Prometheus scrape config names."""

    def __init__(self, model_name: str = "llama", *, host: str = "127.0.0.1") -> None:
        self.model_name = model_name
        self.host = host
        self.port = 0
        self.registry = CollectorRegistry()
        self.waiting = Gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            ["model_name"],
            registry=self.registry,
        )
        self.running = Gauge(
            "vllm:num_requests_running",
            "Number of requests currently running on GPU.",
            ["model_name"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of end to end request latency in seconds.",
            ["model_name"],
            buckets=VLLM_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            ["model_name"],
            registry=self.registry,
        )
        self.triton_pending = Gauge(
            "nv_inference_pending_request_count",
            "Instantaneous number of pending requests awaiting execution per-model.",
            ["model"],
            registry=self.registry,
        )
        self.scrapes = 0
        self._scraped = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.set_waiting(0)
        self.running.labels(model_name).set(0)
        self.success.labels(model_name)
        self.latency.labels(model_name)

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.target}/metrics"

    # -- load the test drives ----------------------------------------------------------------
    def set_waiting(self, n: float, model: str | None = None) -> None:
        """Requests waiting in the queue (vLLM gauge and its Triton counterpart)."""
        name = model or self.model_name
        self.waiting.labels(name).set(n)
        self.triton_pending.labels(name).set(n)

    def set_running(self, n: float, model: str | None = None) -> None:
        self.running.labels(model or self.model_name).set(n)

    def observe_latency(self, seconds: float, count: int = 1, model: str | None = None) -> None:
        """Record `count` finished requests that each took `seconds` end to end."""
        child = self.latency.labels(model or self.model_name)
        for _ in range(count):
            child.observe(seconds)

    def add_success(self, n: float = 1, model: str | None = None) -> None:
        self.success.labels(model or self.model_name).inc(n)

    # -- serving --------------------------------------------------------------------------------
    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        self.scrapes += 1
        self._scraped.set()
        self._scraped = asyncio.Event()
        return web.Response(body=body, headers={"Content-Type": CLASSIC_TEXT})

    async def wait_for_scrapes(self, count: int = 1, within: float = 10.0) -> None:
        """Wait until `count` more scrapes have happened (so new values reached Prometheus)."""
        goal = self.scrapes + count
        async with asyncio.timeout(within):
            while self.scrapes < goal:
                await self._scraped.wait()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            addresses = [a for a in self._runner.addresses if isinstance(a, tuple)]
            self.port = int(addresses[0][1])

    async def stop(self) -> None:
        """Stop serving (the target goes down); `start()` again reuses the port."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
