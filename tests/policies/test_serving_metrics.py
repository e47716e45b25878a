"""The two serving metric types: KV-cache saturation and model-based TTFT/TPOT capacity."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from policies.decide import decide
from policies.decide_types import Snapshot, State
from policies.metrics.kv_cache_usage import kv_cache_usage
from policies.parse import PolicyError, parse_policy_document, policy_to_document
from policies.profiles import load_profile
from policies.schema import KvCacheMetric, ModelCapacityMetric, metric_inputs
from policies.stepmodel import TokenMix, replicas_for_slo

BASE: dict[str, Any] = {
    "apiVersion": "gpuscale.io/v1alpha1",
    "kind": "ScalingPolicy",
    "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llm"},
    "replicas": {"min": 1, "max": 40},
    "metrics": [
        {
            "name": "capacity",
            "type": "modelCapacity",
            "query": "sum(rate(vllm:request_success_total[1m]))",
            "promptTokensQuery": "sum(rate(vllm:prompt_tokens_total[1m]))",
            "generationTokensQuery": "sum(rate(vllm:generation_tokens_total[1m]))",
            "profile": "llama-3.1-8b-h100-tp1",
            "slo": {"ttft": "500ms", "tpot": "50ms"},
        },
        {
            "name": "kv",
            "type": "kvCacheUsage",
            "query": "avg(vllm:kv_cache_usage_perc)",
            "target": 0.8,
        },
    ],
}


def policy(**changes: Any) -> Any:
    doc = copy.deepcopy(BASE)
    doc["metrics"][0].update(changes)
    return parse_policy_document(doc, namespace="ns", name="llm")


def test_model_capacity_parses_with_its_profile_and_inputs() -> None:
    p = policy()
    m = p.metrics[0]
    assert isinstance(m, ModelCapacityMetric)
    assert m.profile == load_profile("llama-3.1-8b-h100-tp1")
    assert m.limits.max_num_seqs == 256 and m.limits.kv_blocks > 1000
    assert [k for k, _ in metric_inputs(m)] == [
        "capacity",
        "capacity:promptTokens",
        "capacity:generationTokens",
    ]
    again = parse_policy_document(
        yaml.safe_load(yaml.safe_dump(policy_to_document(p))), namespace="ns", name="llm"
    )
    assert again.metrics[0] == m and again.metrics[1] == p.metrics[1]


def test_model_capacity_sizes_from_the_observed_token_mix() -> None:
    p = policy()
    m = p.metrics[0]
    assert isinstance(m, ModelCapacityMetric)
    values = {
        "capacity": 40.0,
        "capacity:promptTokens": 80_000.0,
        "capacity:generationTokens": 8000.0,
        "kv": 0.3,
    }
    decision, _ = decide(p, Snapshot(values, 3), State(), 0.0)
    expect = replicas_for_slo(m.profile, m.limits, 40.0, TokenMix(2000, 200), 0.5, 0.05, 40)
    [capacity, kv] = decision.proposals
    assert capacity.replicas == expect.replicas == decision.desired_replicas
    assert "= 20 req/s per replica × (17.2µs × 2000 prompt + 6µs × 199 decode steps) = 0.71" in (
        capacity.reason
    )
    # Every number of the TTFT line is named: u is the token budget's use, not a constant.
    assert "u (share of maxNumBatchedTokens 2048 in use per step) = " in capacity.reason
    assert "TTFT ≈ wait for the step in progress, step / (2(1 − u)) + " in capacity.reason
    assert kv.replicas == 2  # ceil(3 × 0.3 / 0.8)


def test_a_missing_token_rate_makes_the_metric_missing() -> None:
    p = policy()
    decision, _ = decide(p, Snapshot({"capacity": 40.0, "kv": 0.9}, 3), State(), 0.0)
    assert decision.metrics_missing == ("capacity",)
    assert decision.proposals[0].replicas is None


def test_fixed_token_means_replace_the_token_queries() -> None:
    doc = copy.deepcopy(BASE)
    metric = doc["metrics"][0]
    del metric["promptTokensQuery"], metric["generationTokensQuery"]
    metric.update(promptTokens=2000, generatedTokens=200)
    p = parse_policy_document(doc, namespace="ns", name="llm")
    assert metric_inputs(p.metrics[0]) == (("capacity", metric["query"]),)
    decision, _ = decide(p, Snapshot({"capacity": 40.0, "kv": 0.5}, 3), State(), 0.0)
    assert decision.proposals[0].replicas == 2


def test_model_capacity_errors_name_the_field() -> None:
    doc = copy.deepcopy(BASE)
    metric = doc["metrics"][0]
    metric["profile"] = "no-such"
    metric["slo"] = {"ttft": "soon"}
    del metric["generationTokensQuery"]
    metric["engine"] = {"maxNumSeqs": 0, "typo": 1}
    doc["metrics"][1]["target"] = 1.5
    with pytest.raises(PolicyError) as info:
        parse_policy_document(doc, namespace="ns", name="llm")
    text = str(info.value)
    assert "ns/llm: metrics[0].profile: no-such: no such profile" in text
    assert 'metrics[0].slo.ttft: expected a duration like "2s", got "soon"' in text
    assert (
        "metrics[0].generationTokensQuery: give exactly one of generationTokensQuery"
        " and generatedTokens"
    ) in text
    assert "metrics[0].engine.typo: unknown field" in text
    assert "metrics[0].engine.maxNumSeqs: must be at least 1" in text
    assert "metrics[1].target: expected a number in (0, 1]" in text


@given(st.floats(0, 1), st.floats(0.05, 1), st.integers(0, 50))
def test_kv_cache_usage_is_proportional_with_a_dead_band(
    usage: float, target: float, current: int
) -> None:
    p = kv_cache_usage(KvCacheMetric("kv", "q", target), usage, current)
    assert p.replicas is not None
    if current == 0:
        assert p.replicas == (1 if usage > 0 else 0)
    elif abs(usage / target - 1) <= 0.1:
        assert p.replicas == current
    elif usage > target:
        assert p.replicas > current
    else:
        assert p.replicas <= current
