"""The Prometheus client: bad answers become Missing (never zero); retries, timeouts, limits."""

from __future__ import annotations

import asyncio
import math
import random
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoscaler.prometheus import (
    Missing,
    PrometheusClient,
    PrometheusSettings,
    interpret,
    interpret_by,
)
from tests.autoscaler.helpers import FakePrometheus
from tests.support.inference_server import InferenceServer
from tests.support.prometheus import PrometheusServer


def _vector(*values: str) -> dict[str, Any]:
    result = [{"metric": {"i": str(i)}, "value": [1.0, v]} for i, v in enumerate(values)]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_one_finite_sample_is_its_value(value: float) -> None:
    assert interpret(_vector(repr(value))) == value


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (_vector(), "no series"),
        (_vector("NaN"), "NaN"),
        (_vector("+Inf"), "+Inf"),
        (_vector("-Inf"), "-Inf"),
        (_vector("1", "2"), "2 series"),
        (_vector("abc"), "not a number"),
        ({"status": "error", "errorType": "bad_data", "error": "parse error"}, "parse error"),
        ({"status": "success", "data": {"resultType": "matrix", "result": []}}, "matrix"),
        ({"status": "success"}, "no data"),
        ([], "JSON object"),
    ],
)
def test_bad_answers_are_missing_with_a_reason(body: Any, reason: str) -> None:
    result = interpret(body)
    assert isinstance(result, Missing)
    assert reason in result.reason


def test_scalar_results_are_accepted() -> None:
    body = {"status": "success", "data": {"resultType": "scalar", "result": [1.0, "2.5"]}}
    assert interpret(body) == 2.5


@given(
    st.recursive(
        st.none() | st.booleans() | st.text() | st.floats(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
    )
)
def test_arbitrary_json_never_yields_a_made_up_number(body: Any) -> None:
    result = interpret(body)
    assert isinstance(result, Missing) or math.isfinite(result)


async def _client(
    url: str, **options: Any
) -> tuple[aiohttp.ClientSession, PrometheusClient, list[str]]:
    outcomes: list[str] = []
    session = aiohttp.ClientSession()
    settings = PrometheusSettings(url, **{"backoff": 0.01, **options})
    client = PrometheusClient(
        session, settings, observe=lambda _s, o: outcomes.append(o), rng=random.Random(1)
    )
    return session, client, outcomes


async def test_retries_5xx_then_succeeds(fake_prometheus: FakePrometheus) -> None:
    fake_prometheus.answers["q"] = 3.0
    fake_prometheus.status = 503
    fake_prometheus.fail_first = 2
    session, client, outcomes = await _client(fake_prometheus.url, attempts=3)
    async with session:
        assert await client.query("q") == 3.0
    assert len(fake_prometheus.calls) == 3
    assert outcomes == ["ok"]


async def test_gives_up_after_the_attempts_with_a_reason(fake_prometheus: FakePrometheus) -> None:
    fake_prometheus.status = 500
    session, client, outcomes = await _client(fake_prometheus.url, attempts=3)
    async with session:
        result = await client.query("q")
    assert isinstance(result, Missing) and "HTTP 500" in result.reason
    assert len(fake_prometheus.calls) == 3
    assert outcomes == ["error"]


async def test_bad_query_is_not_retried(fake_prometheus: FakePrometheus) -> None:
    fake_prometheus.answers["q"] = {"status": "error", "errorType": "bad_data", "error": "nope"}
    session, client, outcomes = await _client(fake_prometheus.url)
    async with session:
        result = await client.query("q")
    assert isinstance(result, Missing) and "nope" in result.reason
    assert len(fake_prometheus.calls) == 1
    assert outcomes == ["missing"]


async def test_unreachable_prometheus_is_missing_not_zero() -> None:
    session, client, outcomes = await _client("http://127.0.0.1:9", attempts=2)
    async with session:
        result = await client.query("q")
    assert isinstance(result, Missing) and "unreachable" in result.reason
    assert outcomes == ["error"]


async def test_slow_prometheus_hits_the_per_query_timeout(fake_prometheus: FakePrometheus) -> None:
    fake_prometheus.answers["q"] = 1.0
    fake_prometheus.delay = 1.0
    session, client, outcomes = await _client(fake_prometheus.url, timeout=0.2, attempts=3)
    async with session:
        result = await client.query("q")
    assert isinstance(result, Missing) and "within 0.2s" in result.reason
    assert outcomes == ["error"]


async def test_hung_queries_of_one_namespace_leave_slots_for_the_others(
    fake_prometheus: FakePrometheus,
) -> None:
    """Regression: the slot was awaited outside the timeout, so 200 hung queries of one tenant
    held all 32 slots and a healthy policy elsewhere went 30 s without a decision."""
    fake_prometheus.answers.update({"hung": 1.0, "healthy": 7.0})
    fake_prometheus.hanging.add("hung")
    session, client, outcomes = await _client(
        fake_prometheus.url, concurrency=4, concurrency_per_tenant=2, timeout=30.0
    )
    async with session:
        hung = [asyncio.create_task(client.query("hung", "noisy")) for _ in range(200)]
        await fake_prometheus.wait_for_calls("hung", 2)
        assert await client.query("healthy", "quiet") == 7.0
        assert not any(t.done() for t in hung)
        assert client.slots.held_by("noisy") == 2 and client.slots.waiting("noisy") == 198
        fake_prometheus.release.set()
        assert await asyncio.gather(*hung) == [1.0] * 200
    assert fake_prometheus.calls.count("hung") == 200 and outcomes.count("ok") == 201


async def test_the_timeout_covers_the_wait_for_a_slot(fake_prometheus: FakePrometheus) -> None:
    fake_prometheus.answers["q"] = 1.0
    session, client, _ = await _client(
        fake_prometheus.url, concurrency=4, concurrency_per_tenant=1, timeout=0.3
    )
    async with session:
        async with client.slots.slot("noisy"):  # the namespace's one slot, held by a hung query
            result = await client.query("q", "noisy")
        assert isinstance(result, Missing)
        assert "no Prometheus query slot within 0.3s" in result.reason
        assert "1 of namespace 'noisy'" in result.reason
        assert await client.query("q", "noisy") == 1.0
    assert fake_prometheus.calls == ["q"]  # the first never reached Prometheus
    assert client.slots.held == 0


@pytest.mark.parametrize("chunked", [False, True])
async def test_an_answer_over_the_size_limit_is_missing_and_not_read_whole(
    fake_prometheus: FakePrometheus, chunked: bool
) -> None:
    many = [{"metric": {"pod": f"p{i}"}, "value": [1.0, "1"]} for i in range(20_000)]
    fake_prometheus.answers["everything"] = {
        "status": "success",
        "data": {"resultType": "vector", "result": many},
    }
    fake_prometheus.answers["one"] = 2.0
    fake_prometheus.chunked = chunked
    session, client, outcomes = await _client(fake_prometheus.url, max_answer_bytes=64 * 1024)
    async with session:
        result = await client.query("everything", "a")
        assert isinstance(result, Missing)
        assert "larger than 65536 bytes" in result.reason and "one series" in result.reason
        assert await client.query("one", "a") == 2.0
    assert outcomes == ["error", "ok"]
    assert fake_prometheus.calls == ["everything", "one"]  # refused, not retried


async def test_concurrency_is_bounded(fake_prometheus: FakePrometheus) -> None:
    fake_prometheus.answers.update({f"q{i}": float(i) for i in range(20)})
    session, client, _ = await _client(fake_prometheus.url, concurrency=3)
    in_flight = 0
    peak = 0
    original = client._once

    async def counting(promql: str, decode: Any) -> Any:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(0.01)
            return await original(promql, decode)
        finally:
            in_flight -= 1

    client._once = counting  # type: ignore[method-assign]
    async with session:
        results = await asyncio.gather(*(client.query(f"q{i}") for i in range(20)))
    assert results == [float(i) for i in range(20)]
    assert peak == 3


async def test_real_prometheus_answers_for_vllm_series(
    inference_server: InferenceServer, prometheus: PrometheusServer
) -> None:
    inference_server.set_waiting(12)
    query = 'sum(vllm:num_requests_waiting{model_name="llama"})'
    await prometheus.wait_for_value(query, lambda v: v == 12)
    session, client, _ = await _client(prometheus.url)
    async with session:
        assert await client.query(query) == 12.0
        empty = await client.query('vllm:num_requests_waiting{model_name="nobody"}')
        assert isinstance(empty, Missing) and "no series" in empty.reason
        nan = await client.query("0/0")
        assert isinstance(nan, Missing) and "NaN" in nan.reason
        several = await client.query('{__name__=~"vllm:num_requests_(waiting|running)"}')
        assert isinstance(several, Missing) and "series" in several.reason
        bad = await client.query("sum(")
        assert isinstance(bad, Missing) and "bad_data" in bad.reason


def _by_pod(*series: tuple[dict[str, str], str]) -> dict[str, Any]:
    result = [{"metric": m, "value": [1.0, v]} for m, v in series]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


def test_interpret_by_keys_series_by_the_label_and_drops_what_it_cannot_use() -> None:
    body = _by_pod(({"pod": "a"}, "3"), ({"pod": "b"}, "0"), ({}, "7"), ({"pod": "c"}, "NaN"))
    assert interpret_by(body, "pod") == {"a": 3.0, "b": 0.0}
    assert interpret_by(_by_pod(), "pod") == {}
    twice = interpret_by(_by_pod(({"pod": "a"}, "1"), ({"pod": "a"}, "2")), "pod")
    assert isinstance(twice, Missing) and "sum by (pod)" in twice.reason
    scalar = {"status": "success", "data": {"resultType": "scalar", "result": [1.0, "2"]}}
    assert isinstance(interpret_by(scalar, "pod"), Missing)
    failed = interpret_by({"status": "error", "errorType": "bad_data", "error": "x"}, "pod")
    assert isinstance(failed, Missing) and "bad_data" in failed.reason


async def test_query_by_reads_a_by_pod(fake_prometheus: FakePrometheus) -> None:
    fake_prometheus.answers["q"] = _by_pod(({"pod": "a"}, "2"), ({"pod": "b"}, "5"))
    async with aiohttp.ClientSession() as session:
        client = PrometheusClient(session, PrometheusSettings(fake_prometheus.url))
        assert await client.query_by("q", "pod") == {"a": 2.0, "b": 5.0}
        assert isinstance(await client.query("q"), Missing)  # two series: not one value
