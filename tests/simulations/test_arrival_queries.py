"""The simulator reads an arrivalRate query as what it measures: completions plus the growth of
the engines' queues (the arrivals query of deploy/examples/llama-chat.yaml) estimates arrivals,
which the simulated gateway counts; a completions query stays completions."""

from __future__ import annotations

import pytest

from policies.parse import load_policy_file
from policies.schema import ArrivalRateMetric, LatencyTarget
from simulations.serving.contenders import metric_value
from simulations.serving.metrics import MetricStore
from tests.deploy.manifests import DEPLOY

BOUNDS = (0.1, 1.0, 10.0)


def _store_with_arrivals(per_second: float) -> MetricStore:
    """Only the gateway has series: requests arrive, no replica has finished any."""
    store = MetricStore(BOUNDS)
    for t in range(0, 121, 15):
        store.scrape_gateway(float(t), int(t * per_second))
    return store


def _arrival_metric(query: str) -> ArrivalRateMetric:
    return ArrivalRateMetric("load", query, 3.5, LatencyTarget(0.95, 2.0))


def test_the_example_arrivals_query_reads_the_arrivals() -> None:
    (policy,) = load_policy_file(DEPLOY / "examples" / "llama-chat.yaml")
    (load,) = [m for m in policy.metrics if isinstance(m, ArrivalRateMetric)]
    assert "deriv(" in load.query
    value = metric_value(_store_with_arrivals(4.0), load, 120.0)
    assert value == pytest.approx(4.0, rel=0.05)


def test_a_completions_query_reads_completions() -> None:
    completions = _arrival_metric('sum(rate(vllm:request_success_total{model_name="x"}[1m]))')
    assert metric_value(_store_with_arrivals(4.0), completions, 120.0) is None  # none finished
