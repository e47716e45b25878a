"""The reflector's watch, through the official client, against a server that sends a burst."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer
from kubernetes.aio import client

from runtime.reflector import Reflector, ReflectorSettings

BURST = 300


def _configmap(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"cm-{i}", "namespace": "default", "resourceVersion": str(i + 2)},
        "data": {"k": "v" * 200},
    }


@contextlib.asynccontextmanager
async def _api_sending_a_burst() -> AsyncIterator[client.ApiClient]:
    """An API server whose configmap list is empty and whose watch then sends ``BURST`` ADDED
    events in one write (as kube-apiserver does when many objects change at once)."""

    async def configmaps(request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") not in ("1", "true"):
            return web.json_response({"metadata": {"resourceVersion": "1"}, "items": []})
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        events = (
            orjson.dumps({"type": "ADDED", "object": _configmap(i)}) + b"\n" for i in range(BURST)
        )
        await resp.write(b"".join(events))
        await asyncio.sleep(3600)  # the watch stays open, as a real one does
        return resp

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/default/configmaps", configmaps)
    async with TestServer(app, host="127.0.0.1") as server:
        config = client.Configuration(host=str(server.make_url("")).rstrip("/"))
        async with client.ApiClient(config) as api:
            yield api


async def test_a_burst_of_watch_events_yields_the_loop_between_events() -> None:
    """A request on the same event loop (kube-scheduler's filter at the extender) waits for one
    event's work, not for the whole burst."""
    ticks = 0
    seen: list[int] = []
    all_seen = asyncio.Event()

    def on_event(_kind: str, _obj: Mapping[str, Any]) -> None:
        seen.append(ticks)
        if len(seen) == BURST:
            all_seen.set()

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async with _api_sending_a_burst() as api:
        reflector = Reflector(
            client.CoreV1Api(api).list_namespaced_config_map,
            ("default",),
            ReflectorSettings("configmaps"),
            on_relist=lambda _items: None,
            on_event=on_event,
        )
        watching = asyncio.create_task(reflector.run())
        other = asyncio.create_task(ticker())
        try:
            async with asyncio.timeout(10):
                await all_seen.wait()
        finally:
            for task in (watching, other):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    assert reflector.resource_version == str(BURST + 1)
    stalled = sum(1 for a, b in itertools.pairwise(seen) if b == a)
    assert stalled == 0, f"{stalled} of {BURST - 1} events ran back to back: the loop was held"
