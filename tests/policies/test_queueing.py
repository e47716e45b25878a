"""Erlang C and the M/M/c response time against closed forms, exact arithmetic and quadrature."""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate

from policies.queueing import (
    erlang_b,
    erlang_c,
    mean_wait,
    replicas_for_latency,
    response_time_cdf,
    response_time_quantile,
    response_time_tail,
)
from policies.reachable import NEAR_FLOOR


def exact_erlang_c(c: int, a: Fraction) -> Fraction:
    """Textbook Erlang C with factorials, in exact rational arithmetic."""
    top = a**c / math.factorial(c) * Fraction(c) / (c - a)
    bottom = sum((a**k / math.factorial(k) for k in range(c)), Fraction(0)) + top
    return top / bottom


@pytest.mark.parametrize("c", range(1, 11))
@pytest.mark.parametrize("rho", ["0.5", "0.8", "0.9"])
def test_erlang_c_and_mean_wait_match_the_closed_form(c: int, rho: str) -> None:
    a = Fraction(rho) * c
    mu = Fraction(3, 2)
    lam = a * mu
    want_c = exact_erlang_c(c, a)
    want_w = want_c / (c * mu - lam)
    assert erlang_c(c, float(a)) == pytest.approx(float(want_c), rel=1e-9, abs=1e-12)
    assert mean_wait(c, float(lam), float(mu)) == pytest.approx(float(want_w), rel=1e-9)


def test_erlang_b_known_value() -> None:
    # B(2, 1) = (1/2) / (1 + 1 + 1/2) = 0.2
    assert erlang_b(2, 1.0) == pytest.approx(0.2, rel=1e-15)
    assert erlang_b(0, 5.0) == 1.0


def test_erlang_c_is_stable_at_large_loads() -> None:
    # a**c / c! overflows a float here; the recursion does not.
    values = [erlang_c(c, 500.0) for c in (501, 510, 530, 560)]
    assert all(0.0 < v < 1.0 for v in values)
    assert values == sorted(values, reverse=True)
    assert erlang_c(500, 500.0) == 1.0
    assert erlang_c(3, 0.0) == 0.0


def test_mean_wait_unstable_queue_is_infinite() -> None:
    assert mean_wait(2, 4.0, 2.0) == math.inf


def test_mm1_response_time_is_exponential() -> None:
    lam, mu = 3.0, 5.0
    for t in (0.01, 0.3, 1.0, 4.0):
        assert response_time_tail(1, lam, mu, t) == pytest.approx(
            math.exp(-(mu - lam) * t), rel=1e-12
        )


def test_theta_equal_mu_special_case_is_erlang_2_mixture() -> None:
    # c*mu - lam == mu when lam == (c-1)*mu: the waiting branch is Erlang-2(mu).
    c, mu = 4, 2.0
    lam = (c - 1) * mu
    pc = erlang_c(c, lam / mu)
    for t in (0.1, 0.5, 2.0):
        want = (1 - pc) * math.exp(-mu * t) + pc * (1 + mu * t) * math.exp(-mu * t)
        assert response_time_tail(c, lam, mu, t) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize(
    ("c", "lam", "mu"),
    [(1, 0.5, 1.0), (3, 2.0, 1.0), (4, 6.0 - 1e-7, 2.0), (8, 20.0, 3.5), (10, 1.0, 0.5)],
)
def test_response_time_tail_matches_quadrature(c: int, lam: float, mu: float) -> None:
    pc = erlang_c(c, lam / mu)
    theta = c * mu - lam
    for t in (0.05, 0.5, 2.0, 6.0):
        # P(T > t) = P(no wait) e^{-mu t} + P(wait) [P(W > t) + ∫_0^t f_W(w) P(S > t - w) dw]
        conv, _ = integrate.quad(
            lambda w, t=t: theta * math.exp(-theta * w) * math.exp(-mu * (t - w)), 0, t
        )
        want = (1 - pc) * math.exp(-mu * t) + pc * (math.exp(-theta * t) + conv)
        assert response_time_tail(c, lam, mu, t) == pytest.approx(want, rel=1e-7, abs=1e-12)


def test_quantile_inverts_the_cdf() -> None:
    for c, lam, mu, q in [(1, 0.5, 1.0, 0.95), (5, 12.0, 3.5, 0.99), (16, 50.0, 3.5, 0.5)]:
        t = response_time_quantile(c, lam, mu, q)
        assert response_time_cdf(c, lam, mu, t) == pytest.approx(q, abs=1e-9)
    assert response_time_quantile(2, 5.0, 2.0, 0.9) == math.inf


def test_replicas_for_latency_known_answer() -> None:
    # 21 req/s at 3.5/s per replica: offered load 6, so at least 7 replicas for a stable queue.
    # p95 of the response time is 1.22s at 7 replicas and 0.94s at 8.
    assert replicas_for_latency(21.0, 3.5, 0.95, 2.0, 32).replicas == 7
    assert replicas_for_latency(21.0, 3.5, 0.95, 1.0, 32).replicas == 8
    assert response_time_quantile(7, 21.0, 3.5, 0.95) == pytest.approx(1.2243, abs=1e-4)
    assert response_time_quantile(8, 21.0, 3.5, 0.95) == pytest.approx(0.9403, abs=1e-4)


def test_replicas_for_latency_zero_load_is_zero() -> None:
    assert replicas_for_latency(0.0, 3.5, 0.95, 2.0, 32).replicas == 0


def test_saturated_when_capacity_is_short() -> None:
    s = replicas_for_latency(200.0, 3.5, 0.95, 2.0, 32)
    assert s.saturated and s.replicas == 32
    assert "capacity" in s.why


def test_a_target_service_time_alone_misses_is_sized_near_its_floor_not_max() -> None:
    # p99 of an Exp(1) service time is 4.6s > 1s, whatever the replica count: no count meets
    # it, so the count is the fewest whose p99 is within NEAR_FLOOR of 4.6s, not max.
    floor = -math.log(0.01)
    s = replicas_for_latency(0.1, 1.0, 0.99, 1.0, 10)
    assert not s.saturated and s.replicas < 10
    assert s.unreachable is not None and "no count meets it" in s.unreachable
    assert response_time_quantile(s.replicas, 0.1, 1.0, 0.99) <= floor * (1 + NEAR_FLOOR)
    assert s.replicas == 1 or response_time_quantile(s.replicas - 1, 0.1, 1.0, 0.99) > floor * (
        1 + NEAR_FLOOR
    )
    heavy = replicas_for_latency(30.0, 1.0, 0.99, 1.0, 200)
    assert heavy.replicas > 30 and not heavy.saturated  # the load still counts


def test_saturated_when_stable_but_too_slow_at_max() -> None:
    # Offered load 9.5 with 10 replicas is stable but queues far too long for p99 <= 5s.
    s = replicas_for_latency(9.5, 1.0, 0.99, 5.0, 10)
    assert s.saturated and s.replicas == 10
    assert "even at 10" in s.why


rates = st.floats(0.01, 200.0, allow_nan=False)
service = st.floats(0.2, 20.0, allow_nan=False)
quantiles = st.sampled_from([0.5, 0.9, 0.95, 0.99])
slos = st.floats(0.2, 30.0, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(lam=rates, mu=service, q=quantiles, slo=slos, max_c=st.integers(1, 200))
def test_replicas_for_latency_is_the_smallest_that_meets_the_target(
    lam: float, mu: float, q: float, slo: float, max_c: int
) -> None:
    s = replicas_for_latency(lam, mu, q, slo, max_c)
    assert 1 <= s.replicas <= max_c
    eps = 1 - q
    floor = -math.log(eps) / mu  # the quantile of service alone, the best any count does
    assert (s.unreachable is not None) == (floor > slo)
    if floor > slo:
        slo = floor * (1 + NEAR_FLOOR)
    if not s.saturated:
        assert response_time_tail(s.replicas, lam, mu, slo) <= eps + 1e-12
    else:
        assert s.replicas == max_c
        assert response_time_tail(max_c, lam, mu, slo) > eps - 1e-12
    if s.replicas > 1 and not s.saturated:
        assert response_time_tail(s.replicas - 1, lam, mu, slo) > eps - 1e-12


@settings(max_examples=150, deadline=None)
@given(lam=rates, extra=st.floats(0.0, 100.0), mu=service, q=quantiles, slo=slos)
def test_more_arrivals_never_need_fewer_replicas(
    lam: float, extra: float, mu: float, q: float, slo: float
) -> None:
    a = replicas_for_latency(lam, mu, q, slo, 500)
    b = replicas_for_latency(lam + extra, mu, q, slo, 500)
    assert b.replicas >= a.replicas


@pytest.mark.parametrize(
    "call",
    [
        lambda: erlang_c(0, 1.0),
        lambda: erlang_b(-1, 1.0),
        lambda: erlang_b(2, math.nan),
        lambda: mean_wait(2, -1.0, 1.0),
        lambda: mean_wait(2, 1.0, 0.0),
        lambda: response_time_quantile(2, 1.0, 1.0, 1.0),
        lambda: replicas_for_latency(1.0, 1.0, 0.9, 1.0, 0),
    ],
)
def test_bad_arguments_raise_value_error(call: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        call()
