"""The vLLM V1 engine model against closed forms, and its invariants under random load."""

from __future__ import annotations

import math
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.stepmodel import EngineLimits, StepProfile, TokenMix, saturation_rate, step_time
from simulations.serving import vllm
from simulations.serving.clock import Engine
from simulations.serving.vllm import BatchingReplica, EngineConfig, ServingLog

H100 = StepProfile("h100", 5.753e-3, 17.25e-6, 6.0e-6)
"""The shipped H100 fit's coefficients."""


class Checked(BatchingReplica):
    """Checks the KV accounting before every step it plans."""

    def _next(self) -> None:
        log = self._log
        held = sum(log.blocks[i] for i in self.batch)
        assert 0 <= self.free <= self.blocks_total
        assert held + self.free == self.blocks_total
        assert self.running == len(self.batch) <= self.max_batch
        super()._next()


def serve(
    arrival: list[float],
    prompt: list[int],
    generated: list[int],
    limits: EngineLimits,
    profile: StepProfile = H100,
    scrape_every: float | None = None,
) -> tuple[ServingLog, BatchingReplica, list[int], list[int]]:
    log = ServingLog(
        np.asarray(arrival, float), np.asarray(prompt, float), np.asarray(generated, float)
    )
    engine = Engine()
    done: list[int] = []
    dropped: list[int] = []
    replica = Checked(0, engine, log, EngineConfig(profile, limits), done.append, dropped.append)
    engine.feed(log.arrival, replica.admit)
    if scrape_every is not None:
        horizon = (max(arrival) if arrival else 0.0) + 60.0

        def scrape(_: None) -> None:
            replica.sample()  # brings a decode run's counters up to date mid-run
            if engine.now < horizon:
                engine.schedule(scrape_every, scrape, None)

        engine.schedule(0.0, scrape, None)
    engine.run()
    return log, replica, done, dropped


def test_one_request_alone() -> None:
    log, r, _, _ = serve([0.0], [1000], [11], EngineLimits(10_000))
    assert log.first_token[0] == pytest.approx(step_time(H100, 1000, 0))  # one prefill step
    tpot = (log.finish[0] - log.first_token[0]) / 10
    assert tpot == pytest.approx(H100.beta0 + H100.beta2)
    assert r.steps == 11 and r.itl.count == 10 and r.ttft.count == 1


def test_a_long_prompt_is_chunked_under_the_token_budget() -> None:
    log, r, _, _ = serve([0.0], [5000], [2], EngineLimits(10_000, max_num_batched_tokens=2048))
    chunks = step_time(H100, 2048, 0) * 2 + step_time(H100, 5000 - 4096, 0)
    assert log.first_token[0] == pytest.approx(chunks)
    assert r.prompt_tokens == 5000 and r.generation_tokens == 2


def test_n_concurrent_decodes() -> None:
    n, gen = 8, 101
    log, r, _, _ = serve([0.0] * n, [10] * n, [gen] * n, EngineLimits(10_000))
    for i in range(n):
        assert log.first_token[i] == pytest.approx(step_time(H100, 10 * n, 0))
        tpot = (log.finish[i] - log.first_token[i]) / (gen - 1)
        assert tpot == pytest.approx(H100.beta0 + n * H100.beta2)
    assert r.itl.count == n * (gen - 1)
    assert r.itl.sum == pytest.approx(n * (gen - 1) * (H100.beta0 + n * H100.beta2))


def test_context_term_grows_every_decode_step() -> None:
    profile = StepProfile("ctx", 5e-3, 1e-5, 1e-5, 1e-6)
    log, _, _, _ = serve([0.0], [100], [4], EngineLimits(10_000), profile)
    steps = [step_time(profile, 0, 1, 100 + k) for k in range(3)]
    assert log.finish[0] - log.first_token[0] == pytest.approx(sum(steps))


def test_kv_exhaustion_preempts_the_newest_and_recomputes() -> None:
    # 4 requests need 5 blocks each at the end (16 + 63 tokens); the cache holds 12.
    log, r, done, _ = serve([0.0, 0.0, 0.0, 0.0], [16] * 4, [64] * 4, EngineLimits(12))
    assert r.preemptions == sum(log.preempted) > 0
    assert sorted(done) == [0, 1, 2, 3]
    assert log.preempted[0] == 0  # the oldest is never the one preempted
    victims = [i for i in range(4) if log.preempted[i]]
    assert victims and min(victims) > 0
    # a preempted request recomputed its prompt and its tokens, so it finished later than
    # it would have alone with the others
    assert max(log.finish[i] for i in victims) > max(
        log.finish[i] for i in range(4) if i not in victims
    )
    assert r.generation_tokens == 4 * 64 and r.free == r.blocks_total


def test_a_request_that_can_never_fit_is_rejected() -> None:
    log, _, done, dropped = serve([0.0, 1.0], [10, 500], [5, 5], EngineLimits(8))
    assert done == [0] and dropped == [1] and math.isnan(log.finish[1])


def test_saturation_throughput_matches_the_analytic_capacity() -> None:
    n = 3000
    limits = EngineLimits(100_000, max_num_seqs=32)
    log, _, done, _ = serve(list(np.linspace(0.0, 1.0, n)), [100] * n, [201] * n, limits)
    assert len(done) == n
    finish = np.sort(np.asarray(log.finish))
    # steady state: the middle half of completions, all with a full queue behind them
    mid = finish[n // 4 : 3 * n // 4]
    measured = (len(mid) - 1) / (mid[-1] - mid[0])
    assert measured == pytest.approx(saturation_rate(H100, limits, TokenMix(100, 201)), rel=0.05)


workloads = st.integers(1, 40).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(0, 5, allow_nan=False), min_size=n, max_size=n),
        st.lists(st.integers(1, 600), min_size=n, max_size=n),
        st.lists(st.integers(1, 200), min_size=n, max_size=n),
        st.integers(20, 400),
        st.sampled_from([4, 16, 256]),
        st.sampled_from([64, 512, 2048]),
    )
)


@settings(max_examples=60, deadline=None)
@given(workloads)
def test_every_request_is_served_once_and_metrics_agree(w: tuple[Any, ...]) -> None:
    arrival, prompt, gen, kv_blocks, seqs, budget = w
    arrival = sorted(arrival)
    limits = EngineLimits(kv_blocks, max_num_seqs=seqs, max_num_batched_tokens=budget)
    log, r, done, dropped = serve(arrival, prompt, gen, limits)
    n = len(arrival)
    assert len(done) == len(set(done)) and len(dropped) == len(set(dropped))
    assert sorted(done + dropped) == list(range(n))
    too_big = {i for i in range(n) if -(-(prompt[i] + gen[i] - 1) // 16) > kv_blocks}
    assert set(dropped) == too_big
    assert r.free == r.blocks_total and not r.batch and not r.queue
    assert r.completed == r.e2e.count == r.ttft.count == len(done)
    assert r.e2e.sum == pytest.approx(sum(log.finish[i] - log.arrival[i] for i in done))
    assert r.ttft.sum == pytest.approx(sum(log.first_token[i] - log.arrival[i] for i in done))
    assert r.generation_tokens == sum(gen[i] for i in done)
    assert r.prompt_tokens == sum(prompt[i] for i in done)
    assert r.itl.count == sum(gen[i] - 1 for i in done)
    assert r.itl.sum == pytest.approx(sum(log.finish[i] - log.first_token[i] for i in done))
    assert r.preemptions == sum(log.preempted)
    for i in done:
        assert log.arrival[i] <= log.start[i] <= log.first_token[i] <= log.finish[i]


@settings(max_examples=40, deadline=None)
@given(workloads)
def test_decode_runs_give_the_same_results_as_single_steps(w: tuple[Any, ...]) -> None:
    arrival, prompt, gen, kv_blocks, seqs, budget = w
    arrival = sorted(arrival)
    limits = EngineLimits(kv_blocks, max_num_seqs=seqs, max_num_batched_tokens=budget)
    fast, rf, _, _ = serve(arrival, prompt, gen, limits)
    with mock.patch.object(vllm, "MAX_RUN", 1):
        slow, rs, _, _ = serve(arrival, prompt, gen, limits)
    assert rf.steps == rs.steps and rf.preemptions == rs.preemptions
    np.testing.assert_allclose(fast.first_token, slow.first_token, rtol=0, atol=1e-9)
    np.testing.assert_allclose(fast.finish, slow.finish, rtol=0, atol=1e-9)
    assert rf.itl.counts == rs.itl.counts and rf.ttft.counts == rs.ttft.counts
    assert rf.itl.sum == pytest.approx(rs.itl.sum)


@settings(max_examples=30, deadline=None)
@given(workloads, st.sampled_from([0.003, 0.02, 0.1]))
def test_scrapes_during_decode_runs_change_nothing(w: tuple[Any, ...], every: float) -> None:
    arrival, prompt, gen, kv_blocks, seqs, budget = w
    arrival = sorted(arrival)
    limits = EngineLimits(kv_blocks, max_num_seqs=seqs, max_num_batched_tokens=budget)
    quiet, rq, _, _ = serve(arrival, prompt, gen, limits)
    watched, rw, _, _ = serve(arrival, prompt, gen, limits, scrape_every=every)
    np.testing.assert_allclose(quiet.finish, watched.finish, rtol=0, atol=1e-9)
    np.testing.assert_allclose(quiet.first_token, watched.first_token, rtol=0, atol=1e-9)
    assert rq.steps == rw.steps and rq.itl.counts == rw.itl.counts
    assert rq.generation_tokens == rw.generation_tokens
