"""The alpha terms (BLIS's overheads outside the engine step) in the vLLM engine model."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.stepmodel import EngineLimits, step_time
from simulations.serving.clock import Engine
from simulations.serving.vllm import BatchingReplica, EngineConfig, ServingLog
from tests.simulations.test_vllm import H100, serve

A0, A1, A2 = 232.5e-6, 1.752e-6, 3357.4e-6
"""The shipped H100 profile's alphas (BLIS defaults.yaml, Llama-3.1-8B TP1, vLLM 0.8.4)."""
H100_ALPHA = dataclasses.replace(H100, alpha0=A0, alpha1=A1, alpha2=A2)


def test_one_request_alone_pays_every_alpha_once_per_token() -> None:
    n, gen = 1000, 11
    log, r, _, _ = serve([0.0], [n], [gen], EngineLimits(10_000), H100_ALPHA)
    prefill = step_time(H100, n, 0)
    decode = step_time(H100, 0, 1)
    ttft = A0 + A1 * n + prefill + A2
    assert log.first_token[0] == pytest.approx(ttft, rel=1e-12)
    assert r.ttft.sum == pytest.approx(ttft, rel=1e-12)
    assert r.itl.count == gen - 1
    assert r.itl.sum / r.itl.count == pytest.approx(decode + A2, rel=1e-12)
    e2e = ttft + (gen - 1) * (decode + A2)
    assert log.finish[0] == pytest.approx(e2e, rel=1e-12)
    assert r.e2e.sum == pytest.approx(e2e, rel=1e-12)
    assert log.start[0] == pytest.approx(A0 + A1 * n, rel=1e-12)  # queued after the overhead


def test_alpha2_never_delays_a_step() -> None:
    only_a2 = dataclasses.replace(H100, alpha2=A2)
    plain, rp, _, _ = serve([0.0, 0.0], [100, 300], [20, 5], EngineLimits(10_000))
    slow, rs, _, _ = serve([0.0, 0.0], [100, 300], [20, 5], EngineLimits(10_000), only_a2)
    assert rs.steps == rp.steps
    assert slow.last_token == plain.last_token  # the engine's own timeline is the same


def test_a_request_in_preprocessing_is_outstanding_and_lost_with_its_pod() -> None:
    log = ServingLog(np.zeros(1), np.full(1, 100.0), np.full(1, 3.0))
    engine = Engine()
    replica = BatchingReplica(0, engine, log, EngineConfig(H100_ALPHA, EngineLimits(1000)))
    replica.admit(0)
    assert replica.outstanding == 1 and not replica.queue
    assert replica.evict() == [0]
    engine.run()
    assert replica.outstanding == 0 and np.isnan(log.first_token[0])


def _alpha_free_and_with(
    w: tuple[Any, ...], alpha0: float, alpha1: float, alpha2: float
) -> tuple[
    ServingLog, BatchingReplica, list[int], ServingLog, BatchingReplica, list[int], list[int]
]:
    arrival, prompt, gen, kv_blocks, seqs, budget = w
    arrival = sorted(arrival)
    limits = EngineLimits(kv_blocks, max_num_seqs=seqs, max_num_batched_tokens=budget)
    with_alpha = dataclasses.replace(H100, alpha0=alpha0, alpha1=alpha1, alpha2=alpha2)
    base, rb, done_b, _ = serve(arrival, prompt, gen, limits)
    slow, rs, done_s, _ = serve(arrival, prompt, gen, limits, with_alpha)
    return base, rb, done_b, slow, rs, done_s, gen


workloads = st.integers(1, 40).flatmap(
    lambda n: st.tuples(
        # arrivals and alpha0 on a grid of 1/1024 s, so that shifting by alpha0 is exact and
        # cannot merge two distinct arrival instants by rounding
        st.lists(st.integers(0, 5 * 1024).map(lambda k: k / 1024), min_size=n, max_size=n),
        st.lists(st.integers(1, 600), min_size=n, max_size=n),
        st.lists(st.integers(1, 200), min_size=n, max_size=n),
        st.integers(20, 400),
        st.sampled_from([4, 16, 256]),
        st.sampled_from([64, 512, 2048]),
    )
)
alphas = st.tuples(st.integers(0, 50).map(lambda k: k / 1024), st.floats(0, 0.05))


@settings(max_examples=60, deadline=None)
@given(workloads, alphas)
def test_alpha_only_adds_latency_and_keeps_the_finishing_order(
    w: tuple[Any, ...], a: tuple[float, float]
) -> None:
    # alpha1 is left at 0 here: with it, a short prompt arriving just after a long one can
    # reach the queue first, as in vLLM; the test below covers alpha1 with equal prompts
    alpha0, alpha2 = a
    base, rb, done_b, slow, rs, done_s, gen = _alpha_free_and_with(w, alpha0, 0.0, alpha2)
    assert done_s == done_b  # the engine retires requests in the same order
    assert rs.steps == rb.steps and rs.preemptions == rb.preemptions
    for i in done_b:
        ttft_b = base.first_token[i] - base.arrival[i]
        ttft_s = slow.first_token[i] - slow.arrival[i]
        assert ttft_s == pytest.approx(ttft_b + alpha0 + alpha2, abs=1e-9)
        e2e_b = base.finish[i] - base.arrival[i]
        e2e_s = slow.finish[i] - slow.arrival[i]
        assert e2e_s == pytest.approx(e2e_b + alpha0 + gen[i] * alpha2, abs=1e-9)
        assert ttft_s >= ttft_b - 1e-12 and e2e_s >= e2e_b - 1e-12
    assert rs.itl.count == rb.itl.count
    assert rs.itl.sum == pytest.approx(rb.itl.sum + rb.itl.count * alpha2, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(workloads, st.integers(1, 600), st.floats(0, 2e-5))
def test_with_equal_prompts_alpha1_is_a_constant_shift(
    w: tuple[Any, ...], prompt: int, alpha1: float
) -> None:
    arrival, _, gen, kv_blocks, seqs, budget = w
    w = (arrival, [prompt] * len(arrival), gen, kv_blocks, seqs, budget)
    base, _, done_b, slow, _, done_s, _ = _alpha_free_and_with(w, 1 / 1024, alpha1, 0.0)
    assert done_s == done_b
    for i in done_b:
        assert slow.finish[i] - base.finish[i] == pytest.approx(
            1 / 1024 + alpha1 * prompt, abs=1e-9
        )
