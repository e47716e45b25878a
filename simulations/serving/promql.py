"""The PromQL shapes a policy query takes, evaluated on the simulated replicas' scraped series.

A query written for a real vLLM deployment works unchanged: the metric name in it (``vllm:`` and
labels ignored; the simulated service is the only one) picks the series, the outer function picks
the evaluation, as Prometheus would do it (:mod:`simulations.serving.metrics`). Recognised shapes::

    sum|avg|max|min(GAUGE{…})               GAUGE{…}
    sum(rate(COUNTER{…}[w]))                 rate(COUNTER[w])
    histogram_quantile(q, sum by (le) (rate(HIST_bucket{…}[w])))
    sum(rate(HIST_sum[w])) / sum(rate(HIST_count[w]))          (a mean)

with the gauges, counters and histograms of :mod:`simulations.serving.metrics` (vLLM V1 names:
``num_requests_waiting``, ``kv_cache_usage_perc``, ``request_success_total``,
``prompt_tokens_total``, ``time_to_first_token_seconds``, …). ``gateway_requests_total`` is the
request counter at the service's ingress, which exists with no pods. :func:`parse` returns
``None`` for anything else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from policies.durations import DurationError, parse_duration
from simulations.serving.metrics import COUNTERS, GAUGES, HISTOGRAMS, MetricStore

_NAME = r"(?:vllm:)?([a-zA-Z_][a-zA-Z0-9_]*)"
_LABELS = r"(?:\{[^}]*\})?"
_RANGE = r"\[([0-9][0-9a-z.]*)\]"
_GAUGE = re.compile(rf"^(?:(sum|avg|max|min)\s*\(\s*)?{_NAME}\s*{_LABELS}\s*\)?$")
_RATE = re.compile(rf"^(?:sum\s*\(\s*)?rate\s*\(\s*{_NAME}\s*{_LABELS}\s*{_RANGE}\s*\)\s*\)?$")
_QUANTILE = re.compile(
    rf"^histogram_quantile\s*\(\s*([0-9.eE+-]+)\s*,\s*sum\s*(?:by\s*\(\s*le\s*\)\s*)?\(\s*rate\s*\("
    rf"\s*{_NAME}_bucket\s*{_LABELS}\s*{_RANGE}\s*\)\s*\)\s*(?:by\s*\(\s*le\s*\)\s*)?\)$"
)
_SPACE = re.compile(r"\s+")

Kind = Literal["gauge", "rate", "quantile", "mean"]


@dataclass(frozen=True, slots=True)
class Plan:
    """How to evaluate one query: ``kind`` on series ``name``."""

    kind: Kind
    name: str
    op: str = "sum"
    window: float = 60.0
    quantile: float = 0.5


def _window(text: str) -> float | None:
    try:
        return parse_duration(text)
    except DurationError:
        return None


def parse(query: str) -> Plan | None:
    """The evaluation plan of ``query``, or ``None`` when the simulator cannot answer it."""
    q = _SPACE.sub(" ", query.strip())
    if "/" in q:
        num, _, den = q.partition("/")
        a, b = parse(num.strip()), parse(den.strip())
        if (
            a is not None
            and b is not None
            and a.kind == b.kind == "rate"
            and a.name.endswith("_sum")
            and b.name == a.name[: -len("_sum")] + "_count"
        ):
            return Plan("mean", a.name[: -len("_sum")], window=a.window)
        return None
    m = _QUANTILE.match(q)
    if m:
        w = _window(m.group(3))
        if m.group(2) in HISTOGRAMS and w is not None:
            return Plan("quantile", m.group(2), window=w, quantile=float(m.group(1)))
        return None
    m = _RATE.match(q)
    if m:
        name, w = m.group(1), _window(m.group(2))
        hist = name.rsplit("_", 1)[0]
        known = name in COUNTERS or name == "gateway_requests_total" or hist in HISTOGRAMS
        if known and w is not None:
            return Plan("rate", name, window=w)
        return None
    m = _GAUGE.match(q)
    if m and m.group(2) in GAUGES:
        return Plan("gauge", m.group(2), op=m.group(1) or "sum")
    return None


def evaluate(store: MetricStore, plan: Plan, now: float) -> float | None:
    """The query's value at ``now`` (``None`` for an empty result, as Prometheus gives none)."""
    if plan.kind == "gauge":
        return store.gauge_agg(now, plan.name, plan.op)
    if plan.kind == "quantile":
        return store.quantile(now, plan.quantile, plan.window, plan.name)
    if plan.kind == "mean":
        total = store.rate_sum(now, f"{plan.name}_sum", plan.window)
        count = store.rate_sum(now, f"{plan.name}_count", plan.window)
        if total is None or not count:
            return None
        return total / count
    if plan.name == "gateway_requests_total":
        return store.gateway_rate(now, plan.window)
    return store.rate_sum(now, plan.name, plan.window)
