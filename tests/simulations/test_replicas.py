"""Service-time models, replica slots and queue, routing."""

from __future__ import annotations

import numpy as np
import pytest

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
