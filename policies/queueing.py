"""M/M/c queueing: Erlang C and the response-time distribution, exact and numerically stable.

An ``arrivalRate`` metric is sized with this model: requests arrive as a Poisson stream of rate
``lam`` (req/s), each of ``c`` replicas serves one request at a time with exponential service of
rate ``mu`` (req/s), and requests wait in one shared FIFO queue. The SLO is on the *response time*
``T = W + S`` (wait plus service), because that is what a user feels.

Response-time distribution (exact). With probability ``1 - C`` a request does not wait and
``T = S ~ Exp(mu)``; with probability ``C`` (Erlang C) it waits ``W ~ Exp(theta)``,
``theta = c*mu - lam``, so ``T`` is the sum of two exponentials. Together::

    P(T > t) = exp(-mu t) + C * mu * t * exp(-min(theta, mu) t) * phi(|theta - mu| t)

with ``phi(x) = (1 - exp(-x)) / x`` and ``phi(0) = 1``. This one form covers ``theta > mu``,
``theta < mu`` and the special case ``theta == mu`` (where the sum is Erlang-2 and the tail is
``(1 + C mu t) exp(-mu t)``) without cancellation, because ``phi`` is computed with ``expm1``.

Erlang C is computed from the Erlang B recursion ``B(k) = a B(k-1) / (k + a B(k-1))``, which
never forms ``a**c`` or ``c!`` and so neither overflows nor loses precision at large loads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from policies.reachable import effective_bound

_exp = math.exp
_expm1 = math.expm1


def erlang_b(c: int, a: float) -> float:
    """Blocking probability of an M/M/c/c loss system with offered load ``a`` (Erlangs)."""
    if c < 0:
        raise ValueError(f"c must be >= 0, got {c}")
    if a < 0 or not math.isfinite(a):
        raise ValueError(f"offered load must be finite and >= 0, got {a}")
    b = 1.0
    for k in range(1, c + 1):
        ab = a * b
        b = ab / (k + ab)
    return b


def erlang_c(c: int, a: float) -> float:
    """P(an arrival waits) in M/M/c with offered load ``a = lam/mu``; 1.0 when ``a >= c``."""
    if c < 1:
        raise ValueError(f"c must be >= 1, got {c}")
    if a >= c:
        return 1.0
    if a == 0:
        return 0.0
    b = erlang_b(c, a)
    return b / (1.0 - (a / c) * (1.0 - b))


def mean_wait(c: int, lam: float, mu: float) -> float:
    """Mean time in queue ``E[W] = C / (c mu - lam)``; ``inf`` when the queue is unstable."""
    _check_rates(lam, mu)
    if lam >= c * mu:
        return math.inf
    return erlang_c(c, lam / mu) / (c * mu - lam)


def _tail(c_wait: float, theta: float, mu: float, t: float) -> float:
    """P(T > t) given Erlang C ``c_wait`` and queue drain rate ``theta = c mu - lam``."""
    if t <= 0:
        return 1.0
    d = abs(theta - mu) * t
    phi = 1.0 if d == 0 else -_expm1(-d) / d
    slow = theta if theta < mu else mu
    return _exp(-mu * t) + c_wait * mu * t * _exp(-slow * t) * phi


def response_time_tail(c: int, lam: float, mu: float, t: float) -> float:
    """P(T > t) for the response time (wait + service); 1.0 when the queue is unstable."""
    _check_rates(lam, mu)
    if lam >= c * mu:
        return 1.0
    return _tail(erlang_c(c, lam / mu), c * mu - lam, mu, t)


def response_time_cdf(c: int, lam: float, mu: float, t: float) -> float:
    """P(T <= t) for the response time (wait + service)."""
    return 1.0 - response_time_tail(c, lam, mu, t)


def response_time_quantile(c: int, lam: float, mu: float, q: float) -> float:
    """The ``q`` quantile of the response time, by bisection on the (monotone) tail."""
    if not 0 < q < 1:
        raise ValueError(f"quantile must lie in (0, 1), got {q}")
    _check_rates(lam, mu)
    if lam >= c * mu:
        return math.inf
    c_wait = erlang_c(c, lam / mu)
    theta = c * mu - lam
    target = 1.0 - q
    lo, hi = 0.0, 1.0 / mu
    while _tail(c_wait, theta, mu, hi) > target:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _tail(c_wait, theta, mu, mid) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return hi


@dataclass(frozen=True, slots=True)
class Sizing:
    """The answer of :func:`replicas_for_latency`.

    ``saturated`` is set when even ``max_c`` replicas cannot meet the target; ``why`` then says
    whether the queue is unstable at ``max_c`` or merely too slow.
    """

    replicas: int
    saturated: bool = False
    why: str = ""
    unreachable: str | None = None
    """Set when service time alone misses the target: the target sized for instead."""


def replicas_for_latency(lam: float, mu: float, quantile: float, slo: float, max_c: int) -> Sizing:
    """Smallest ``c`` in ``[1, max_c]`` whose response-time ``quantile`` is at most ``slo``.

    ``lam == 0`` needs no replica (0). When no ``c <= max_c`` meets the target the answer is
    ``max_c`` with ``saturated=True``. The result is memoised: it is a pure function of numbers.
    """
    if lam <= 0:
        return Sizing(0)
    return _replicas_for_latency(lam, mu, quantile, slo, max_c)


@lru_cache(maxsize=8192)
def _replicas_for_latency(lam: float, mu: float, quantile: float, slo: float, max_c: int) -> Sizing:
    _check_rates(lam, mu)
    if max_c < 1:
        raise ValueError(f"max_c must be >= 1, got {max_c}")
    eps = 1.0 - quantile
    # With many replicas nobody waits: the quantile falls to the service time's own.
    bound = effective_bound(f"p{quantile * 100:g}", slo, -math.log(eps) / mu)
    slo = bound.value
    unreachable = bound.unreachable
    a = lam / mu
    b = 1.0
    exp_mu = _exp(-mu * slo)
    for k in range(1, max_c + 1):
        ab = a * b
        b = ab / (k + ab)
        if k <= a:
            continue
        c_wait = b / (1.0 - (a / k) * (1.0 - b))
        theta = k * mu - lam
        d = abs(theta - mu) * slo
        phi = 1.0 if d == 0 else -_expm1(-d) / d
        slow = theta if theta < mu else mu
        if exp_mu + c_wait * mu * slo * _exp(-slow * slo) * phi <= eps:
            return Sizing(k, unreachable=unreachable)
    if a >= max_c:
        why = f"arrivals {lam:g}/s >= capacity {max_c * mu:g}/s at max"
        return Sizing(max_c, True, why, unreachable)
    why = f"p{quantile * 100:g} > {slo:.4g}s even at {max_c} replicas"
    return Sizing(max_c, True, why, unreachable)


def _check_rates(lam: float, mu: float) -> None:
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"arrival rate must be finite and >= 0, got {lam}")
    if not (math.isfinite(mu) and mu > 0):
        raise ValueError(f"service rate must be finite and > 0, got {mu}")
