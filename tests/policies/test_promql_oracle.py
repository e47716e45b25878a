"""The parser and the scoping held against the real thing: Debian's Prometheus 2.42.

Prometheus answers a query it cannot parse with ``errorType: bad_data``; ours must refuse
exactly those. And a scoped query must, on real data, see only its own namespace's series.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.promql import PromQLError, format_expr, parse
from policies.promql.syntax import Expr, Subquery
from policies.tenancy import ScopeError, scope_query
from tests.policies.promql_strategies import exprs
from tests.policies.test_tenancy import REWRITES
from tests.support.prometheus import PrometheusServer, find_prometheus

EXPOSITION = b"""# TYPE gpuscale_tenant_waiting gauge
gpuscale_tenant_waiting{namespace="a",model="m"} 3
gpuscale_tenant_waiting{namespace="b",model="m"} 5
gpuscale_tenant_waiting{namespace="b",model="n"} 7
# TYPE gpuscale_tenant_capacity gauge
gpuscale_tenant_capacity{namespace="a",model="m"} 2
gpuscale_tenant_capacity{namespace="b",model="m"} 11
"""


class _Metrics(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(EXPOSITION)))
        self.end_headers()
        self.wfile.write(EXPOSITION)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """Prometheus scraping two namespaces' series every second, up for the whole module."""
    if find_prometheus() is None:
        pytest.skip("prometheus binary not found; `make test` installs Debian's prometheus")
    metrics = ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    thread = threading.Thread(target=metrics.serve_forever, daemon=True)
    thread.start()
    server = PrometheusServer(
        Path(tmp_path_factory.mktemp("prometheus")), [f"127.0.0.1:{metrics.server_port}"]
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()
        metrics.shutdown()
        metrics.server_close()


def prometheus_verdict(server: PrometheusServer, query: str) -> tuple[bool, str]:
    """(accepted, error): refused means ``bad_data``, Prometheus' answer to a parse error."""
    data = urllib.parse.urlencode({"query": query, "time": "1700000000"}).encode()
    request = urllib.request.Request(f"{server.url}/api/v1/query", data=data)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        body = json.load(exc)
    if body["status"] == "success":
        return True, ""
    return body.get("errorType") != "bad_data", str(body.get("error"))


def ours(query: str) -> tuple[bool, str]:
    try:
        parse(query)
    except PromQLError as exc:
        return False, str(exc)
    return True, ""


def assert_same_verdict(server: PrometheusServer, query: str) -> None:
    theirs, why = prometheus_verdict(server, query)
    mine, reason = ours(query)
    assert mine == theirs, f"{query!r}: prometheus {theirs} ({why}), ours {mine} ({reason})"


HAND_WRITTEN = [
    # accepted
    "sum", "and and and", "offset offset 5m", "sum by (bool, on, start, atan2) (foo)",
    "foo[5m x]", "foo offset 5m [10m:1m]", "foo[5m] @ 1 offset 5m", "foo @ -10", "- -1",
    "0x7fffffffffffffff", "99999999999999999999", "1e-400", "010", "09", "1.", ".5", "Inf",
    "foo{a=~'a)|(b|c'}" "", "'\\101'", "`a\nb`", "foo # comment", "foo {# c\na='b'}",
    "label_join(foo, 'a', ',', 'b', 'c')", "1 + on() foo", "days_in_month()", "SUM(foo)",
    'foo{a=~"[[:alpha:]]"}', 'foo{a=~"\\\\pL"}', 'foo{a=~"(x{10}){100}"}', '{a=~"(?)"}',
    'foo{a=~"(?P<n>x)"}', "foo[106751d]", "round(foo, 1)", "foo atan2 bar",
    # refused
    "{}", '{a=~".*"}', 'foo{__name__="foo"}', "sum by (without) (foo)", "sum by (inf) (foo)",
    "foo[5m:1m:]", "foo[1.5m]", "foo[106752d]", "foo[0s]", "0x8000000000000000", "1e400",
    "0x", "1e", "1_000", "foo @ 9.3e18", "foo @ nan", "foo offset 5m offset 5m",
    "foo offset 5m [5m]", "(foo)[5m]", "foo @ 1 [5m]", "1 > 1", "foo + bool 1",
    "foo and on(a) group_left bar", "foo * on(a) group_left (b)", '"\\8"', '"\\uD800"',
    '"\\U00110000"', "foo{a=~'a)|(b'}", 'foo{a=~"(?<n>x)"}', 'foo{a=~"x**"}',
    'foo{a=~"x{1001}"}', 'foo{a=~"(x{100}){100}"}', 'foo{a=~"\\\\1"}', 'foo{a=~"\\\\Z"}',
    "time(1)", "round(foo, 1, 2)", "rate(foo[5m],)", "foo:bar(x)", "foo{a:b='c'}", "()",
    "atan2", "on", "bool", "group_left", "foo BY", "rate(foo[5m])[5m:][5m:]",
]  # fmt: skip


@pytest.mark.parametrize("query", HAND_WRITTEN)
def test_hand_written_queries_get_prometheus_verdict(
    prometheus: PrometheusServer, query: str
) -> None:
    assert_same_verdict(prometheus, query)


_FRAGMENTS = (
    "sum", "rate", "(", ")", "{", "}", "[", "]", "5m", ":", ",", "=", "=~", "!=", '"a"', "'b'",
    "foo", " offset ", "@", "start()", " by ", "(x)", " on", " group_left", " bool ", "+", "-",
    "^", " and ", "1", "0x1", "1e", "#", "\n", " ", "inf", ".5", "topk", "__name__", "a", "1h",
    "[5m]", "[5m:]", " / ", " > ", "-5m", "1.5", "count_values", "vector", "time()",
)  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_FRAGMENTS), min_size=1, max_size=12).map("".join))
def test_token_soup_gets_prometheus_verdict(prometheus: PrometheusServer, query: str) -> None:
    assert_same_verdict(prometheus, query)


MAX_EVALUATION_STEPS = 100_000
"""Prometheus evaluates every query it accepts, and a subquery of years at a millisecond step
holds it for minutes, whatever the query's ``timeout`` (seen on 2.42): the verdict only needs
the parse, so generated trees that would ask for more steps than this are not sent."""
EVALUATION_INTERVAL_MS = 1000
"""A subquery without a step takes the global evaluation interval (``PrometheusServer``: 1 s)."""


def evaluation_steps(expr: object) -> int:
    """An upper bound of the evaluations ``expr`` asks for: subqueries multiply their inner
    expression's by their range over their step."""
    inner = 1
    if dataclasses.is_dataclass(expr):
        for f in dataclasses.fields(expr):
            value = getattr(expr, f.name)
            children = value if isinstance(value, tuple) else (value,)
            for child in children:
                if dataclasses.is_dataclass(child):
                    inner = max(inner, evaluation_steps(child))
    if isinstance(expr, Subquery):
        step = expr.step or EVALUATION_INTERVAL_MS
        return (expr.range // step + 1) * inner
    return inner


def _cheap(expr: Expr) -> bool:
    return evaluation_steps(expr) <= MAX_EVALUATION_STEPS


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(exprs("V"), exprs("S"), exprs("M"), exprs("T")).filter(_cheap).map(format_expr),
    st.data(),
)
def test_generated_and_mutated_queries_get_prometheus_verdict(
    prometheus: PrometheusServer, query: str, data: st.DataObject
) -> None:
    assert_same_verdict(prometheus, query)
    at = data.draw(st.integers(0, len(query)))
    cut = data.draw(st.integers(0, 3))
    extra = data.draw(st.sampled_from(("", "(", ")", ",", "[1m]", " offset 1m", "{", "-", " bool")))
    assert_same_verdict(prometheus, query[:at] + extra + query[at + cut :])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(exprs("V").map(format_expr))
def test_scoped_queries_are_accepted_by_prometheus(
    prometheus: PrometheusServer, query: str
) -> None:
    try:
        scoped = scope_query(query, label="namespace", namespace="team-a")
    except ScopeError:
        return
    accepted, why = prometheus_verdict(prometheus, scoped)
    assert accepted, f"{scoped!r}: {why}"


_REGEX_PIECES = (
    *"a.()|*+?{}[]^$-:,0129", "\\\\d", "\\\\b", "\\\\pL", "\\\\p{Greek}", "[:alpha:]",
    "(?i)", "(?:", "(?P<n>", "\\\\Q", "\\\\E", "{2,3}", "{,2}", "\\\\x{41}",
    "\\\\z", "\\\\1", "\\\\0", "\\\\_", "\\\\Qab\\\\E", "{1,99999999999}", "{0}", "[^]",
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.sampled_from(_REGEX_PIECES), max_size=8).map("".join),
    st.sampled_from(("=~", "!~")),
    st.sampled_from(("foo", "")),
)
def test_regex_matchers_get_prometheus_verdict(
    prometheus: PrometheusServer, regex: str, op: str, name: str
) -> None:
    """Go's RE2 syntax, and whether the pattern matches "" (a selector of only such matchers
    is refused), as Prometheus decides them."""
    assert_same_verdict(prometheus, f'{name}{{a{op}"{regex}"}}')


@pytest.mark.parametrize(("query", "scoped"), REWRITES)
def test_rewritten_queries_are_accepted_by_prometheus(
    prometheus: PrometheusServer, query: str, scoped: str
) -> None:
    for text in (query, scoped):
        accepted, why = prometheus_verdict(prometheus, text)
        assert accepted, f"{text!r}: {why}"


# -- the point of it all: a scoped query reads its own namespace only ---------------------------


def _query(server: PrometheusServer, query: str, at: float | None = None) -> list[dict[str, Any]]:
    params = {"query": query} if at is None else {"query": query, "time": f"{at:.3f}"}
    data = urllib.parse.urlencode(params).encode()
    request = urllib.request.Request(f"{server.url}/api/v1/query", data=data)
    with urllib.request.urlopen(request, timeout=10) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


@pytest.fixture(scope="module")
def scraped(prometheus: PrometheusServer) -> PrometheusServer:
    """``prometheus`` once every series has three scrapes behind it (so that a subquery's
    whole-second steps find samples)."""
    deadline = time.monotonic() + 30
    counts = "count_over_time(gpuscale_tenant_waiting[1m]) >= 3"
    while len(_query(prometheus, counts)) < 3:
        assert time.monotonic() < deadline, "series not scraped three times within 30 s"
        time.sleep(0.1)
    return prometheus


@pytest.mark.parametrize(
    ("query", "hand_scoped"),
    [
        ("sum(gpuscale_tenant_waiting)", 'sum(gpuscale_tenant_waiting{namespace="a"})'),
        (
            "sum(gpuscale_tenant_waiting) / sum(gpuscale_tenant_capacity)",
            'sum(gpuscale_tenant_waiting{namespace="a"}) / '
            'sum(gpuscale_tenant_capacity{namespace="a"})',
        ),
        (
            "max_over_time(sum by (model) (gpuscale_tenant_waiting)[1m:1s])",
            'max_over_time(sum by (model) (gpuscale_tenant_waiting{namespace="a"})[1m:1s])',
        ),
        (
            "sum(gpuscale_tenant_waiting / on(namespace, model) "
            '{__name__="gpuscale_tenant_capacity"})',
            'sum(gpuscale_tenant_waiting{namespace="a"} / on(namespace, model) '
            '{__name__="gpuscale_tenant_capacity",namespace="a"})',
        ),
    ],
)
def test_scoped_query_sees_only_its_namespace(
    scraped: PrometheusServer, query: str, hand_scoped: str
) -> None:
    scoped = scope_query(query, label="namespace", namespace="a")
    at = time.time()
    ours_result, theirs = _query(scraped, scoped, at), _query(scraped, hand_scoped, at)
    assert ours_result == theirs
    assert len(ours_result) == 1
    unscoped = _query(scraped, query, at)
    assert ours_result[0]["value"][1] != unscoped[0]["value"][1], "the fixture has no b series"


def test_scoped_selector_returns_only_namespace_a_series(scraped: PrometheusServer) -> None:
    series = _query(
        scraped, scope_query("gpuscale_tenant_waiting", label="namespace", namespace="a")
    )
    assert [s["metric"]["namespace"] for s in series] == ["a"]
    assert series[0]["value"][1] == "3"
    everything = _query(scraped, "gpuscale_tenant_waiting")
    assert sorted(s["metric"]["namespace"] for s in everything) == ["a", "b", "b"]
