"""Fixtures for the controller tests (the shared ones live in tests/support)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.autoscaler.helpers import Certs, FakePrometheus, make_certs


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
async def fake_prometheus() -> AsyncIterator[FakePrometheus]:
    server = FakePrometheus()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
