"""HTTP-level fuzzing of the extender and the external metrics API against the OpenAPI
descriptions the project publishes (extender/openapi.yaml, autoscaler/openapi.yaml).

schemathesis generates requests from the descriptions (valid ones and, in negative mode, ones
that break them) and sends them over loopback to the real aiohttp applications; every answer
must conform to the description (status code, content type, body schema) and none may be a 5xx
other than the documented 503. Seeded (derandomized); ``make fuzz`` raises the example count
through GPUSCALE_FUZZ_EXAMPLES.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    missing_required_header,
    negative_data_rejection,
    positive_data_acceptance,
    unsupported_method,
)
from schemathesis.core.failures import FailureGroup

from autoscaler.external_metrics import ExternalMetricsSettings, build_app
from autoscaler.store import DecisionStore, Published
from extender.server import Extender, ExtenderSettings, Metrics, make_app
from tests.extender.support import FakeBinder, make_state

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("GPUSCALE_FUZZ_EXAMPLES", "60"))
NOW = 1_800_000_010.0

# The servers read only the fields they need and, like the API server, ignore the rest (a node
# of a full-mode request keeps its own fields; NodeNames wins over Nodes), and they judge
# values the schema cannot (a quantity string that is not a quantity is a 400): so "invalid data
# must be rejected" and "valid data must be accepted" do not apply. What must hold: no 5xx, and
# status codes, content types and bodies as described.
NOT_APPLICABLE = [
    negative_data_rejection,
    positive_data_acceptance,
    missing_required_header,
    unsupported_method,
]

FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


def _serve(make: Callable[[], web.Application]) -> Iterator[str]:
    """Run the app on 127.0.0.1 in a thread with its own event loop; yields the base URL."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    port: list[int] = []
    runner: list[web.AppRunner] = []

    async def start() -> None:
        r = web.AppRunner(make(), access_log=None)
        await r.setup()
        site = web.TCPSite(r, "127.0.0.1", 0)
        await site.start()
        runner.append(r)
        port.append(next(a for a in r.addresses if isinstance(a, tuple))[1])

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield f"http://127.0.0.1:{port[0]}"
    finally:
        asyncio.run_coroutine_threadsafe(runner[0].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _extender_app() -> web.Application:
    state = make_state()
    metrics = Metrics(state, lambda: NOW)
    binder = FakeBinder()
    ext = Extender(state, ExtenderSettings(), binder=binder, metrics=metrics)
    return make_app(ext, metrics=metrics, clock=lambda: NOW, ready=lambda: True)


def _metrics_app() -> web.Application:
    store = DecisionStore()
    store.put(Published("inference", "llama", 3, NOW - 5, NOW - 5))
    store.put(Published("inference", "old", 2, NOW - 900, NOW - 900, note="prometheus down"))
    return build_app(store, ExternalMetricsSettings(stale_after=120), wall=lambda: NOW)


@pytest.fixture(scope="module")
def extender_url() -> Iterator[str]:
    yield from _serve(_extender_app)


@pytest.fixture(scope="module")
def metrics_url() -> Iterator[str]:
    yield from _serve(_metrics_app)


def _schema(path: str) -> Any:
    schema = schemathesis.openapi.from_path(REPO / path)
    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
    return schema


EXTENDER = _schema("extender/openapi.yaml")
EXTERNAL_METRICS = _schema("autoscaler/openapi.yaml")


@EXTENDER.parametrize()  # type: ignore[untyped-decorator]
@FUZZ
def test_extender_api(case: Any, extender_url: str) -> None:
    response = case.call(base_url=extender_url, timeout=10)
    assert response.status_code < 500 or (case.path == "/readyz" and response.status_code == 503), (
        response.status_code,
        response.text[:300],
        case.as_curl_command(),
    )
    case.validate_response(response, excluded_checks=NOT_APPLICABLE)


@EXTERNAL_METRICS.parametrize()  # type: ignore[untyped-decorator]
@FUZZ
def test_external_metrics_api(case: Any, metrics_url: str) -> None:
    response = case.call(base_url=metrics_url, timeout=10)
    assert response.status_code in (200, 400, 404, 503), (
        response.status_code,
        response.text[:300],
        case.as_curl_command(),
    )
    case.validate_response(response, excluded_checks=NOT_APPLICABLE)


def _broken_app() -> web.Application:
    async def prioritize(_: web.Request) -> web.Response:
        return web.json_response([{"Host": "a", "Score": 11}])

    async def filter_(_: web.Request) -> web.Response:
        return web.json_response({"Error": "boom"}, status=500)

    app = web.Application()
    app.router.add_post("/prioritize", prioritize)
    app.router.add_post("/filter", filter_)
    return app


def test_the_checks_catch_a_broken_server() -> None:
    """Guard the guard: a score outside 0..10 and a 500 must both fail validation."""
    body = {"Pod": {}, "NodeNames": ["a"]}
    for url in _serve(_broken_app):
        for path in ("/prioritize", "/filter"):
            case = EXTENDER[path]["POST"].Case(body=body, media_type="application/json")
            response = case.call(base_url=url, timeout=10)
            with pytest.raises(FailureGroup):
                case.validate_response(response, excluded_checks=NOT_APPLICABLE)
