"""The external metrics API: shapes, errors, staleness, TLS with front-proxy client certificates."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from autoscaler.external_metrics import (
    ExternalMetricsSettings,
    build_app,
    format_quantity,
    rfc3339,
    status_body,
)
from autoscaler.store import DecisionStore, Published

BASE = "/apis/external.metrics.k8s.io/v1beta1"
NOW = 1_800_000_000.0


def _parse_quantity(text: str) -> Decimal:
    return Decimal(text[:-1]) / 1000 if text.endswith("m") else Decimal(text)


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_whole_numbers_are_plain_integers(n: int) -> None:
    assert format_quantity(n) == str(n)
    assert format_quantity(float(n)) == str(n)


@given(st.floats(min_value=-1e9, max_value=1e9, allow_nan=False))
def test_quantities_round_up_to_milli_units_and_never_below(value: float) -> None:
    text = format_quantity(value)
    parsed = _parse_quantity(text)
    assert parsed >= Decimal(value) - Decimal("1e-6")
    assert parsed - Decimal(value) < Decimal("0.001") + Decimal("1e-6")
    if value > 0:
        assert parsed > 0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_quantities_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="quantity"):
        format_quantity(bad)


def test_status_has_kube_apiservers_field_order_and_values() -> None:
    body = status_body(404, "NotFound", "the server could not find the requested resource", {})
    assert list(body) == [
        "kind",
        "apiVersion",
        "metadata",
        "status",
        "message",
        "reason",
        "details",
        "code",
    ]
    assert body["status"] == "Failure" and body["code"] == 404 and body["metadata"] == {}


def test_rfc3339_is_utc_seconds() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert rfc3339(NOW) == "2027-01-15T08:00:00Z"


def _store() -> DecisionStore:
    store = DecisionStore()
    store.put(Published("inference", "llama", 7, NOW - 5, NOW - 5))
    store.put(Published("inference", "mistral", 3, NOW - 1, NOW - 1))
    store.put(Published("inference", "stale", 4, NOW - 1, NOW - 300, "queue: connection refused"))
    return store


@pytest.fixture
async def api() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = build_app(_store(), ExternalMetricsSettings(stale_after=120), wall=lambda: NOW)
    async with TestClient(TestServer(app)) as client:
        yield client


async def _get(
    client: TestClient[web.Request, web.Application], path: str, **params: str
) -> tuple[int, Any]:
    resp = await client.get(path, params=params)
    return resp.status, await resp.json()


async def test_discovery_lists_the_one_metric(
    api: TestClient[web.Request, web.Application],
) -> None:
    status, body = await _get(api, BASE)
    assert status == 200
    assert body["kind"] == "APIResourceList"
    assert body["groupVersion"] == "external.metrics.k8s.io/v1beta1"
    assert [(r["name"], r["namespaced"], r["verbs"]) for r in body["resources"]] == [
        ("gpuscale_desired_replicas", True, ["get"])
    ]
    status, group = await _get(api, "/apis/external.metrics.k8s.io")
    assert status == 200 and group["preferredVersion"]["version"] == "v1beta1"


async def test_value_for_the_selected_policy(api: TestClient[web.Request, web.Application]) -> None:
    status, body = await _get(
        api,
        f"{BASE}/namespaces/inference/gpuscale_desired_replicas",
        labelSelector="gpuscale.io/policy=llama",
    )
    assert status == 200
    assert body == {
        "kind": "ExternalMetricValueList",
        "apiVersion": "external.metrics.k8s.io/v1beta1",
        "metadata": {},
        "items": [
            {
                "metricName": "gpuscale_desired_replicas",
                "metricLabels": {"gpuscale.io/policy": "llama"},
                "timestamp": rfc3339(NOW - 5),
                "value": "7",
            }
        ],
    }


async def test_set_based_selector_selects_several(
    api: TestClient[web.Request, web.Application],
) -> None:
    status, body = await _get(
        api,
        f"{BASE}/namespaces/inference/gpuscale_desired_replicas",
        labelSelector="gpuscale.io/policy in (llama, mistral)",
    )
    assert status == 200
    assert sorted(i["value"] for i in body["items"]) == ["3", "7"]


@pytest.mark.parametrize(
    ("path", "selector"),
    [
        ("namespaces/inference/some_other_metric", "gpuscale.io/policy=llama"),
        ("namespaces/elsewhere/gpuscale_desired_replicas", "gpuscale.io/policy=llama"),
        ("namespaces/inference/gpuscale_desired_replicas", "gpuscale.io/policy=nope"),
    ],
)
async def test_unknown_metric_namespace_or_selector_is_a_404_status(
    api: TestClient[web.Request, web.Application], path: str, selector: str
) -> None:
    status, body = await _get(api, f"{BASE}/{path}", labelSelector=selector)
    assert status == 404
    assert {k: body[k] for k in ("kind", "apiVersion", "status", "reason", "code")} == {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": "NotFound",
        "code": 404,
    }
    assert "could not find the metric" in body["message"]


async def test_unknown_path_is_kube_apiservers_404(
    api: TestClient[web.Request, web.Application],
) -> None:
    status, body = await _get(api, "/apis/custom.metrics.k8s.io/v1beta1")
    assert status == 404
    assert body == status_body(
        404, "NotFound", "the server could not find the requested resource", {}
    )


async def test_bad_selector_is_a_400(api: TestClient[web.Request, web.Application]) -> None:
    status, body = await _get(
        api, f"{BASE}/namespaces/inference/gpuscale_desired_replicas", labelSelector="a b c"
    )
    assert status == 400
    assert body["reason"] == "BadRequest" and "label selector" in body["message"]


async def test_stale_value_turns_into_an_error_that_says_why(
    api: TestClient[web.Request, web.Application],
) -> None:
    status, body = await _get(
        api,
        f"{BASE}/namespaces/inference/gpuscale_desired_replicas",
        labelSelector="gpuscale.io/policy=stale",
    )
    assert status == 503
    assert body["reason"] == "ServiceUnavailable"
    assert "stale" in body["message"] and "connection refused" in body["message"]
