"""The extender's HTTP app over loopback, with small body limits, for the server tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from extender.server import Extender, ExtenderSettings, Metrics, make_app
from tests.extender.support import NOW, READY, SMALL, FakeBinder, make_state


@pytest.fixture
async def env() -> AsyncIterator[tuple[TestClient[Any, Any], Extender, FakeBinder]]:
    state = make_state()
    metrics = Metrics(state, lambda: NOW)
    binder = FakeBinder()
    ext = Extender(state, ExtenderSettings(limits=SMALL), binder=binder, metrics=metrics)
    ready = {"ok": False}
    app = make_app(ext, metrics=metrics, clock=lambda: NOW, ready=lambda: ready["ok"])
    app[READY] = ready
    async with TestClient(TestServer(app)) as client:
        yield client, ext, binder
