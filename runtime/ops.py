"""The operators' endpoints every gpuscale server has: ``/livez``, ``/readyz``, ``/metrics``.

Each server says what healthy and ready mean to it (a :data:`Probe` returns whether it passes
and the text to answer); the routes, status codes and the exposition's content type are here
once. The content type is the 0.0.4 text format's, which is what ``generate_latest`` writes and
what every Prometheus version reads.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

Probe = Callable[[], tuple[bool, str]]
"""``(passes, text)``: 200 with the text when it passes, else 503 with it."""
Scrape = Callable[[], bytes | Awaitable[bytes]]
"""The ``/metrics`` body."""

EXPOSITION: Final = "text/plain; version=0.0.4; charset=utf-8"


def add_ops_routes(
    app: web.Application, *, live: Probe, ready: Probe, scrape: Scrape, healthz: bool = False
) -> None:
    """Route ``/livez``, ``/readyz`` and ``/metrics`` (and ``/healthz`` as ``/livez``, for the
    older probes) on ``app``."""

    def answer(probe: Probe) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(_: web.Request) -> web.Response:
            passes, text = probe()
            return web.Response(text=text, status=200 if passes else 503)

        return handler

    async def metrics(_: web.Request) -> web.Response:
        body = scrape()
        if inspect.isawaitable(body):
            body = await body
        return web.Response(body=body, headers={"Content-Type": EXPOSITION})

    app.router.add_get("/livez", answer(live))
    if healthz:
        app.router.add_get("/healthz", answer(live))
    app.router.add_get("/readyz", answer(ready))
    app.router.add_get("/metrics", metrics)
