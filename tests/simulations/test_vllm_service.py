"""A service of vLLM engines in the simulated cluster: SLO attainment, V1 metrics, queries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from simulations.config.scenario import ScenarioError, Slo, parse_scenario
from simulations.experiments.compare import prepare, random_streams, request_times, summarise
from simulations.serving import promql
from simulations.serving.contenders import FixedReplicas
from simulations.serving.run import Run, build_cluster
from simulations.serving.vllm import BatchingReplica, ServingLog


def doc(**service: Any) -> dict[str, Any]:
    return {
        "cluster": {"pools": [{"name": "a", "count": 2, "gpus": 2, "gpuMemory": "80Gi"}]},
        "service": {
            "gpuMemory": "whole",
            "profile": "llama-3.1-8b-h100-tp1",
            "initialReplicas": 2,
            "slo": {"ttft": "200ms", "tpot": "20ms", "attainment": 0.9},
            **service,
        },
        "workload": {
            "type": "poisson",
            "rate": 12,
            "promptTokens": {"dist": "lognormal", "mean": 1500, "sigma": 0.8},
            "generatedTokens": {"dist": "lognormal", "mean": 150, "sigma": 0.8},
        },
        "duration": "5m",
        "policies": [{"baseline": "fixed", "replicas": 2}],
    }


def serving_log(run: Run) -> ServingLog:
    assert isinstance(run.log, ServingLog)
    return run.log


def served(**service: Any) -> Run:
    sc = parse_scenario(doc(**service), "v.yaml", Path("."))
    workload, times, duration = prepare(sc, 1)
    _, _, c_rng, r_rng = random_streams(1)
    cluster, _ = build_cluster(sc, c_rng)
    run = Run(sc, workload, times, cluster, r_rng, duration)
    run.start(FixedReplicas(2))
    run.run()
    return run


def test_attainment_is_the_share_of_requests_within_every_bound() -> None:
    run = served()
    rt = request_times(run)
    result = summarise(run, "fixed-2", "fixed", 1, ())
    s = result.summary
    done = rt.done
    assert done.sum() > 3000
    log = serving_log(run)
    ttft = np.asarray(log.first_token) - np.asarray(log.arrival)
    gen = np.asarray(log.generated)
    tpot = np.where(gen > 1, (np.asarray(log.finish) - np.asarray(log.first_token)) / (gen - 1), 0)
    meets = done & (ttft <= 0.2) & (tpot <= 0.02)
    assert s["slo_attainment"] == pytest.approx(meets.sum() / rt.counted.sum())
    assert s["ttft_p90"] == pytest.approx(float(np.quantile(ttft[done], 0.9)))
    assert s["tpot_p50"] == pytest.approx(float(np.quantile(tpot[done], 0.5)))
    assert s["slo"] == {"ttft_s": 0.2, "tpot_s": 0.02, "e2e_s": None, "attainment": 0.9}
    assert 0 < s["kv_cache_usage_max"] <= 1 and s["preemptions"] == 0
    assert len(result.timeline["kv_cache_usage"]) == len(result.timeline["time"])


def test_an_e2e_only_slo_ignores_ttft_and_tpot() -> None:
    run = served(slo="30s")
    assert run.service.slo == Slo(e2e=30.0)
    rt = request_times(run)
    assert summarise(run, "f", "fixed", 1, ()).summary["slo_attainment"] == pytest.approx(
        (rt.done & (rt.e2e <= 30)).sum() / rt.counted.sum()
    )


def test_scraped_v1_metrics_agree_with_the_requests() -> None:
    run = served()
    replicas = [r for r in run.replicas if isinstance(r, BatchingReplica)]
    log = serving_log(run)
    done = [i for i in range(log.n) if log.finish[i] == log.finish[i]]
    assert sum(r.completed for r in replicas) == len(done)
    assert sum(r.generation_tokens for r in replicas) == sum(log.out)
    now = run.engine.now
    store = run.metrics
    for q in (
        "sum(vllm:num_requests_waiting)",
        "avg(vllm:kv_cache_usage_perc)",
        'sum(rate(vllm:generation_tokens_total{model_name="llama"}[1m]))',
        "histogram_quantile(0.9, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket[2m])))",
        "sum(rate(vllm:inter_token_latency_seconds_sum[1m]))"
        " / sum(rate(vllm:inter_token_latency_seconds_count[1m]))",
    ):
        plan = promql.parse(q)
        assert plan is not None, q
        value = promql.evaluate(store, plan, now - 1)
        assert value is not None and value >= 0, q
    # the TTFT quantile from the scraped histogram lies in the bucket of the exact quantile
    plan = promql.parse(
        "histogram_quantile(0.5, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket[5m])))"
    )
    assert plan is not None
    last = store.last_scrape
    got = promql.evaluate(store, plan, last)
    window = [
        log.first_token[i] - log.arrival[i]
        for i in range(log.n)
        if last - 300 < log.first_token[i] <= last
    ]
    exact = float(np.quantile(window, 0.5))
    bounds = store.hist_bounds["time_to_first_token_seconds"]
    k = int(np.searchsorted(bounds, exact))
    lo = bounds[k - 1] if k else 0.0
    assert got is not None and lo <= got <= bounds[k]


def test_queries_the_simulator_cannot_answer_are_recognised_as_such() -> None:
    assert promql.parse("sum(rate(vllm:num_requests_waiting[1m]))") is None
    assert promql.parse("topk(3, vllm:num_requests_waiting)") is None
    assert promql.parse("sum(vllm:no_such_metric)") is None
    p = promql.parse("max(vllm:num_requests_running{a='b'})")
    assert p is not None and (p.kind, p.name, p.op) == ("gauge", "num_requests_running", "max")


def test_engine_fields_are_validated_with_file_and_field() -> None:
    bad = doc(maxBatch=2, profile="no-such", gpuMemoryUtilization=1.5)
    with pytest.raises(ScenarioError) as info:
        parse_scenario(bad, "v.yaml", Path("."))
    text = str(info.value)
    assert "v.yaml: service.maxBatch: applies only to engine: per-request" in text
    assert "v.yaml: service.profile: no-such: no such profile" in text
    bad = doc(slo={"ttft": "fast", "attainment": 2})
    with pytest.raises(ScenarioError) as info:
        parse_scenario(bad, "v.yaml", Path("."))
    assert "service.slo.ttft" in str(info.value) and "service.slo.attainment" in str(info.value)
    small = doc(gpuMemory="16Gi")
    with pytest.raises(ScenarioError, match=r"service\.gpuMemory: no room for a KV cache"):
        parse_scenario(small, "v.yaml", Path("."))


def test_a_calibrated_profile_without_memory_figures_needs_the_kv_capacity(
    tmp_path: Path,
) -> None:
    (tmp_path / "fit.yaml").write_text(
        "name: fit\nstepTime: {beta0: 5ms, beta1: 20us, beta2: 7us}\n"
    )
    bad = doc(profile="fit.yaml")
    with pytest.raises(ScenarioError, match=r"has no kvBytesPerToken: give service\.kvCacheTokens"):
        parse_scenario(bad, "v.yaml", tmp_path)
    sc = parse_scenario(doc(profile="fit.yaml", kvCacheTokens=100_000), "v.yaml", tmp_path)
    assert sc.service.engine_limits().kv_blocks == 100_000 // 16
