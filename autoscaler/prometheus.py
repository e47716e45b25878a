"""An async Prometheus instant-query client that never turns a bad answer into zero.

A queue-depth query that silently returns 0 when Prometheus is down would scale a busy service
to its minimum. Every answer is either a finite float or :class:`Missing` with a reason that the
controller puts into the decision and the policy's status.
"""

from __future__ import annotations

import asyncio
import functools
import math
import random
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import orjson

from autoscaler.fair_queue import FairQueue


@dataclass(frozen=True, slots=True)
class Missing:
    """No usable value; ``reason`` says why, for people."""

    reason: str


QueryResult = float | Missing
_T = TypeVar("_T")
ByLabel = dict[str, float]
"""One finite value per value of a label (``pod`` → requests in flight)."""


@dataclass(frozen=True, slots=True)
class PrometheusSettings:
    url: str
    """Base URL, e.g. ``http://prometheus:9090``; ``/api/v1/query`` is appended."""
    timeout: float = 5.0
    """Seconds one query may take, the wait for a slot and retries included."""
    concurrency: int = 32
    """Queries in flight at once across all policies."""
    concurrency_per_tenant: int = 8
    """Queries one tenant (namespace) may have in flight: a tenant whose queries hang or flood
    fills its own share, never the others' (:class:`~autoscaler.fair_queue.FairQueue`)."""
    max_answer_bytes: int = 256 * 1024
    """Largest answer read. A usable answer is one series (a few hundred bytes); a query that
    selects a million series would otherwise be read and decoded whole (~150 MB, 1.4 GiB RSS)."""
    attempts: int = 3
    """Tries per query on connection errors and 5xx answers."""
    backoff: float = 0.1
    """First retry delay in seconds; doubles each try, with full jitter."""


def interpret(body: Any) -> QueryResult:
    """Turn a ``/api/v1/query`` JSON body into one finite value or :class:`Missing`."""
    if not isinstance(body, Mapping):
        return Missing("Prometheus answered with something other than a JSON object")
    if body.get("status") != "success":
        error = body.get("error") or "unknown error"
        return Missing(f"Prometheus query failed: {body.get('errorType', 'error')}: {error}")
    data = body.get("data")
    if not isinstance(data, Mapping):
        return Missing("Prometheus answer has no data")
    kind = data.get("resultType")
    result = data.get("result")
    if kind == "scalar":
        return _sample(result)
    if kind == "vector":
        if not isinstance(result, list):
            return Missing("Prometheus vector result is not a list")
        if not result:
            return Missing("query returned no series")
        if len(result) > 1:
            return Missing(f"query returned {len(result)} series, expected one (aggregate it)")
        series = result[0]
        if not isinstance(series, Mapping):
            return Missing("Prometheus series is not an object")
        return _sample(series.get("value"))
    return Missing(f"query returned a {kind!r} result, expected an instant vector or scalar")


def interpret_by(body: Any, label: str) -> ByLabel | Missing:
    """A vector answer as ``{series[label]: value}``; series without ``label``, or with a value
    that is not finite, are left out. Two series with the same ``label`` make it Missing (the
    query must aggregate by it)."""
    if not isinstance(body, Mapping) or body.get("status") != "success":
        failed = interpret(body)
        return failed if isinstance(failed, Missing) else Missing("Prometheus query failed")
    data = body.get("data")
    result = data.get("result") if isinstance(data, Mapping) else None
    if not isinstance(data, Mapping) or data.get("resultType") != "vector":
        return Missing("query must return an instant vector, one series per " + label)
    if not isinstance(result, list):
        return Missing("Prometheus vector result is not a list")
    out: ByLabel = {}
    for series in result:
        metric = series.get("metric") if isinstance(series, Mapping) else None
        key = metric.get(label) if isinstance(metric, Mapping) else None
        if not isinstance(key, str) or not isinstance(series, Mapping):
            continue
        value = _sample(series.get("value"))
        if isinstance(value, Missing):
            continue
        if key in out:
            return Missing(f"query returned several series for {label}={key!r} (sum by ({label}))")
        out[key] = value
    return out


def _sample(pair: Any) -> QueryResult:
    if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[1], str):
        return Missing("Prometheus sample is not a [time, value] pair")
    try:
        value = float(pair[1])
    except ValueError:
        return Missing(f"Prometheus sample {pair[1]!r} is not a number")
    if not math.isfinite(value):
        return Missing(f"query returned {pair[1]}")
    return value


_FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded"}


@functools.lru_cache(maxsize=16384)
def _form(promql: str) -> bytes:
    """The POST body, encoded once per query: aiohttp's form machinery cost ~15% of the
    controller's CPU per query (the same queries run every interval)."""
    return urllib.parse.urlencode({"query": promql}).encode()


class _Retryable(Exception):
    pass


class _TooLarge(Exception):
    pass


class PrometheusClient:
    """Instant queries with a per-query deadline, bounded concurrency and jittered retries.

    ``observe(seconds, outcome)`` is called once per query (outcome ``ok``, ``missing`` or
    ``error``), so the caller can feed its latency histogram and error counters.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: PrometheusSettings,
        *,
        observe: Callable[[float, str], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._session = session
        self._settings = settings
        self._url = settings.url.rstrip("/") + "/api/v1/query"
        self.slots = FairQueue(settings.concurrency, settings.concurrency_per_tenant)
        self._observe = observe
        self._rng = rng or random.Random()

    async def query(self, promql: str, tenant: str = "") -> QueryResult:
        """One instant query on behalf of ``tenant``, within ``timeout`` from the call."""
        return await self._run(promql, tenant, interpret)

    async def query_by(self, promql: str, label: str, tenant: str = "") -> ByLabel | Missing:
        """One instant query whose series are told apart by ``label`` (:func:`interpret_by`)."""
        return await self._run(promql, tenant, functools.partial(interpret_by, label=label))

    async def _run(
        self, promql: str, tenant: str, decode: Callable[[Any], _T | Missing]
    ) -> _T | Missing:
        start = time.perf_counter()
        outcome = "error"
        started = False
        try:
            async with asyncio.timeout(self._settings.timeout):
                async with self.slots.slot(tenant):
                    started = True
                    result = await self._with_retries(promql, decode)
            outcome = "missing" if isinstance(result, Missing) else "ok"
            return result
        except TimeoutError:
            if not started:
                slots = self.slots
                return Missing(
                    f"no Prometheus query slot within {self._settings.timeout:g}s (in flight:"
                    f" {slots.held_by(tenant)} of namespace {tenant!r}'s {slots.per_tenant},"
                    f" {slots.held} of {slots.total} in all)"
                )
            return Missing(f"Prometheus did not answer within {self._settings.timeout:g}s")
        except _TooLarge:
            return Missing(
                f"Prometheus answer is larger than {self._settings.max_answer_bytes} bytes;"
                " the query must return one series (aggregate it, e.g. with sum())"
            )
        except _Retryable as exc:
            return Missing(str(exc))
        finally:
            if self._observe is not None:
                self._observe(time.perf_counter() - start, outcome)

    async def _with_retries(
        self, promql: str, decode: Callable[[Any], _T | Missing]
    ) -> _T | Missing:
        delay = self._settings.backoff
        for attempt in range(1, self._settings.attempts + 1):
            try:
                return await self._once(promql, decode)
            except _Retryable:
                if attempt == self._settings.attempts:
                    raise
            await asyncio.sleep(self._rng.uniform(0, delay))
            delay *= 2
        raise AssertionError("unreachable")

    async def _once(self, promql: str, decode: Callable[[Any], _T | Missing]) -> _T | Missing:
        try:
            async with self._session.post(
                self._url, data=_form(promql), headers=_FORM_HEADERS
            ) as resp:
                payload = await self._read(resp)
                status = resp.status
        except aiohttp.ClientError as exc:
            raise _Retryable(f"Prometheus unreachable: {exc.__class__.__name__}: {exc}") from exc
        if status >= 500 or status == 429:
            raise _Retryable(f"Prometheus answered HTTP {status}")
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return Missing(f"Prometheus answered HTTP {status} with a body that is not JSON")
        return decode(body)

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        """The body, or :class:`_TooLarge` as soon as it passes the limit (never read whole)."""
        limit = self._settings.max_answer_bytes
        if resp.content_length is not None and resp.content_length > limit:
            raise _TooLarge
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise _TooLarge
            chunks.append(chunk)
        return b"".join(chunks)
