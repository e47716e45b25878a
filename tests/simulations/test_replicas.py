"""Service-time models, replica slots and queue, routing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulations.serving.clock import Engine
from simulations.serving.replicas import (
    ExponentialService,
    FixedService,
    LognormalService,
    Replica,
    RequestLog,
    Router,
    TokenService,
)


def test_service_models() -> None:
    rng = np.random.default_rng(1)
    prompt, gen = np.array([1000.0, 5000.0]), np.array([10.0, 200.0])
    assert TokenService(10000, 100, 0.02).sample(rng, prompt, gen) == pytest.approx([0.22, 2.52])
    assert FixedService(1.5).sample(rng, prompt, gen).tolist() == [1.5, 1.5]
    many = np.zeros(200_000)
    assert ExponentialService(2.0).sample(rng, many, many).mean() == pytest.approx(2.0, rel=0.02)
    ln = LognormalService(3.0, 0.8).sample(rng, many, many)
    assert ln.mean() == pytest.approx(3.0, rel=0.02) and (ln > 0).all()


def _world(n: int, service: float) -> tuple[Engine, RequestLog]:
    return Engine(), RequestLog(np.zeros(n), np.full(n, service))


def test_replica_runs_max_batch_at_once_and_queues_the_rest() -> None:
    engine, log = _world(5, 2.0)
    r = Replica(0, engine, log, max_batch=2, buckets=(1.0, 3.0))
    for i in range(5):
        r.admit(i)
    assert r.running == 2 and len(r.queue) == 3
    engine.run()
    assert log.start == [0.0, 0.0, 2.0, 2.0, 4.0]
    assert log.finish == [2.0, 2.0, 4.0, 4.0, 6.0]
    assert r.completed == 5 and r.bucket_counts == [0, 2, 3]  # latencies 2, 2, 4, 4, 6


def test_least_outstanding_and_round_robin() -> None:
    engine, log = _world(9, 100.0)
    router = Router()
    a, b, c = (Replica(k, engine, log, 1, (1.0,)) for k in range(3))
    for r in (a, b, c):
        router.add(r)
    for i in range(6):
        router.route(i)
    assert [r.outstanding for r in (a, b, c)] == [2, 2, 2]
    engine2, log2 = _world(6, 100.0)
    rr = Router("round-robin")
    x, y = Replica(0, engine2, log2, 1, (1.0,)), Replica(1, engine2, log2, 1, (1.0,))
    rr.add(x)
    rr.add(y)
    for i in range(6):
        rr.route(i)
    assert (x.arrived, y.arrived) == (3, 3)


def test_capacity_weighted_splits_outstanding_requests_by_weight() -> None:
    engine, log = _world(10, 100.0)
    weights = {0: 1.0, 1: 4.0}
    router = Router("capacity-weighted", weights.__getitem__)
    slow, fast = Replica(0, engine, log, 1, (1.0,)), Replica(1, engine, log, 1, (1.0,))
    router.add(slow)
    router.add(fast)
    for i in range(10):
        router.route(i)
    # (n + 1) / w levels out at 2 : 8 (least-outstanding would give 5 : 5)
    assert (slow.outstanding, fast.outstanding) == (2, 8)
    router.remove(fast)
    with pytest.raises(ValueError, match="weight_of"):
        Router("capacity-weighted")


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(0.1, 20.0), min_size=2, max_size=5),
    st.integers(1, 200),
)
def test_capacity_weighted_keeps_every_replica_within_one_request_of_its_share(
    weights: list[float], n: int
) -> None:
    """Nothing completes (long service): the scores ``(n_k + 1) / w_k`` stay within one request
    of each other, so each replica holds its weight's share of the requests, give or take one."""
    engine, log = _world(n, 1e9)
    router = Router("capacity-weighted", lambda k: weights[k])
    replicas = [Replica(k, engine, log, 1, (1.0,)) for k in range(len(weights))]
    for r in replicas:
        router.add(r)
    for i in range(n):
        router.route(i)
    counts = [r.outstanding for r in replicas]
    assert sum(counts) == n
    scores = [(c + 1) / w for c, w in zip(counts, weights, strict=True)]
    for c, w in zip(counts, weights, strict=True):
        if c:  # the last one it got was the lowest score then: c / w <= every score now
            assert c / w <= min(scores) + 1e-9


def test_gateway_holds_requests_and_shares_the_backlog() -> None:
    engine, log = _world(10, 1.0)
    router = Router()
    for i in range(8):
        router.route(i)
    assert len(router.held) == 8
    a = Replica(0, engine, log, 2, (1.0,))
    router.add(a)
    assert a.running == 2 and len(router.held) == 6
    b = Replica(1, engine, log, 2, (1.0,))
    router.add(b)
    router.route(8)  # joins the end of the backlog, not a replica's queue
    assert len(router.held) == 5 and not a.queue and not b.queue
    engine.run()
    assert not router.held and a.completed + b.completed == 9
    assert sorted(log.finish[:9]) == [1.0] * 4 + [2.0] * 4 + [3.0]
