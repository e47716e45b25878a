"""Scenario files: the built-in default, and file:field errors for everything else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.metrics.model_capacity import ModelCapacityMetric
from policies.parse import load_policy_file
from policies.stepmodel import BLOCK_SIZE, kv_blocks_for_tokens
from simulations.config.scenario import (
    EXAMPLES_DIR,
    GpuscaleContender,
    HpaContender,
    KedaContender,
    KpaContender,
    ScenarioError,
    Slo,
    load_scenario,
    parse_scenario,
)
from simulations.config.sweep_spec import apply_policy_knobs

MINIMAL: dict[str, Any] = {
    "cluster": {"pools": [{"name": "a", "count": 1, "gpus": 2, "gpuMemory": "80Gi"}]},
    "service": {},
    "workload": {"type": "poisson", "rate": 3},
    "policies": [{"baseline": "hpa"}],
}


def errors_of(doc: Any) -> list[str]:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(doc, "s.yaml", Path("."))
    return info.value.messages


def test_default_scenario_compares_examples_with_all_baselines() -> None:
    sc = load_scenario()
    kinds = [type(c) for c in sc.contenders]
    ours = [c for c in sc.contenders if isinstance(c, GpuscaleContender)]
    assert [c.label for c in ours] == ["llama-serving", "llama-burst"]
    # Written for this service: sized by its engine's profile against its own SLO.
    for contender in ours:
        [capacity] = [m for m in contender.policy.metrics if m.type == "modelCapacity"]
        assert capacity.profile.name == sc.service.vllm.profile.name  # type: ignore[union-attr]
        assert capacity.slo.ttft == 0.5
    assert {HpaContender, KedaContender, KpaContender} <= set(kinds)
    assert sc.service.engine == "vllm" and sc.service.slo == Slo(ttft=0.5, tpot=0.05)
    assert sc.workload.type == "trace" and sc.workload.path.is_file()
    assert sc.service.max_replicas >= 20 and sc.background.pods > 0


def test_minimal_scenario_takes_defaults() -> None:
    sc = parse_scenario(MINIMAL, "s.yaml", Path("."))
    assert sc.cluster.pools[0].gpu_memory_mib == 80 * 1024
    assert sc.service.slo == Slo(ttft=1.0, tpot=0.1) and sc.metrics.scrape_interval == 15.0
    assert sc.service.engine == "vllm" and sc.service.vllm is not None
    assert sc.service.vllm.profile.name == "llama-3.1-8b-a100-80gb-tp1"
    assert sc.contenders == (HpaContender("hpa"),)


def test_every_error_names_file_and_field() -> None:
    doc = {
        **MINIMAL,
        "sevice": {},
        "duration": "ten minutes",
        "service": {"gpuMemory": "lots", "slo": -1, "startup": {"modelLoad": {"dist": "gamma"}}},
        "workload": {"type": "poisson"},
        "policies": [{"baseline": "kpa", "maxScaleUpRate": 0.5}, {"baseline": "nope"}],
    }
    msgs = errors_of(doc)
    expected = [
        "s.yaml: sevice: unknown field",
        "s.yaml: duration: expected a duration like \"2s\", got 'ten minutes'",
        "s.yaml: service.gpuMemory: expected a memory quantity",
        "s.yaml: service.slo: must be greater than 0",
        "s.yaml: service.startup.modelLoad.dist: expected one of fixed, uniform",
        "s.yaml: workload.rate: required for type: poisson",
        "s.yaml: policies[0].maxScaleUpRate: maxScaleUpRate = 0.5, must be greater than 1.0",
        "s.yaml: policies[1].baseline: expected one of hpa, keda, kpa, fixed",
    ]
    for e in expected:
        assert any(m.startswith(e) for m in msgs), (e, msgs)


def test_policy_file_errors_are_reported_with_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: ns, labels: "
        '{gpuscale.io/scaling-policy: "true"}}\ndata:\n  policy.yaml: "replicas: 3"\n'
    )
    msgs = errors_of({**MINIMAL, "policies": [{"file": str(bad)}, {"file": "missing.yaml"}]})
    assert any(m.startswith("s.yaml: policies[0].file: ") and "ns/x" in m for m in msgs), msgs
    assert any(m.startswith("s.yaml: policies[1].file: no such file") for m in msgs), msgs


def test_duplicate_names_and_missing_sections() -> None:
    msgs = errors_of({"policies": [{"baseline": "hpa"}, {"baseline": "hpa"}]})
    assert "s.yaml: cluster: required" in msgs
    assert "s.yaml: workload: required" in msgs
    assert any("duplicate policy name 'hpa'" in m for m in msgs)


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    p = tmp_path / "broken.yaml"
    p.write_text("cluster: {pools: [\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(p)
    assert info.value.messages[0].startswith(f"{p}: line ")


scalars = st.none() | st.booleans() | st.integers(-5, 50) | st.floats() | st.text(max_size=8)
yaml_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(
        st.sampled_from(
            ["cluster", "pools", "service", "workload", "type", "rate", "count", "gpus",
             "gpuMemory", "policies", "baseline", "slo", "startup", "x"]
        ),
        inner,
        max_size=4,
    ),
    max_leaves=12,
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(yaml_values)
def test_garbage_gives_scenario_errors_only(doc: Any) -> None:
    try:
        parse_scenario(doc, "s.yaml", Path("."))
    except ScenarioError as exc:
        assert all(m.startswith("s.yaml: ") for m in exc.messages)


_CAPACITY_POLICY = load_policy_file(EXAMPLES_DIR / "llm-serving-model.yaml")[0]


@settings(max_examples=30, deadline=None)
@given(tokens=st.integers(1, 2_000_000), block=st.sampled_from([1, 8, 16, 32]))
def test_kv_cache_tokens_become_blocks_by_the_policy_s_rule(tokens: int, block: int) -> None:
    """A scenario's ``service.kvCacheTokens`` and a policy's ``engine.kvCacheTokens`` give the
    same KV blocks (one rule, ``kv_blocks_for_tokens``); a scenario refuses less than a block."""
    doc = {**MINIMAL, "service": {"kvCacheTokens": tokens, "blockSize": block}}
    if tokens < block:
        assert any("must hold at least one block" in m for m in errors_of(doc))
        return
    limits = parse_scenario(doc, "s.yaml", Path(".")).service.engine_limits()
    assert limits.kv_blocks == tokens // block == kv_blocks_for_tokens(tokens, block)
    if block == BLOCK_SIZE:
        engine = {"maxNumSeqs": 256, "kvCacheTokens": tokens}
        policy = apply_policy_knobs(_CAPACITY_POLICY, (("metrics[capacity].engine", engine),))
        [capacity] = [m for m in policy.metrics if isinstance(m, ModelCapacityMetric)]
        assert capacity.limits.kv_blocks == limits.kv_blocks


@given(tokens=st.integers(1, 10**7), block=st.integers(1, 64))
def test_a_kv_cache_in_tokens_has_at_least_one_block(tokens: int, block: int) -> None:
    blocks = kv_blocks_for_tokens(tokens, block)
    assert blocks >= 1
    assert blocks == tokens // block or (tokens < block and blocks == 1)
