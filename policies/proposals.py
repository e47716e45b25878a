"""What each metric type proposes: one replica count per metric, the largest wins in ``decide``.

- ``queueDepth``: ``ceil(waiting / targetPerReplica)``; nothing waiting proposes 0 (the
  ``replicas.min`` clamp decides the floor).
- ``latency``: proportional control, ``ceil(current * observed / slo)``. Dead band: while the
  observed quantile lies within ±10% of the SLO (``0.9 <= observed/slo <= 1.1``) the proposal is
  ``current``, so measurement noise around the target does not make the count flap. It only ever
  competes in the max, so it cannot pull the count below what the other metrics need. With
  ``current == 0`` there is nothing to scale proportionally: it proposes 1 when the observed
  latency is above the SLO (someone is being served badly, a replica is needed), else 0.
- ``arrivalRate``: the smallest ``c`` whose M/M/c response-time quantile meets the target
  (:func:`policies.queueing.replicas_for_latency`); 0 req/s proposes 0; when even ``max``
  replicas cannot meet it, ``max`` with ``saturated=True``.
- ``kvCacheUsage``: proportional control on saturation, ``ceil(current * usage / target)``,
  with the latency rule's ±10% dead band; with no replicas, 1 when the cache is in use.
- ``modelCapacity``: the smallest count whose modelled mean TTFT and TPOT at the observed request
  rate and token mix meet the bounds (:func:`policies.stepmodel.replicas_for_slo`, the same
  step-time profile the simulator runs); the reason shows the arithmetic at that count and why
  one replica fewer would not do.

Ceilings subtract 1e-9 first, so that float noise (``12.000000000000002``) does not add a replica.
Negative values (a ``rate()`` glitch) count as 0.
"""

from __future__ import annotations

import math

from policies.decision import Proposal
from policies.queueing import replicas_for_latency
from policies.schema import (
    ArrivalRateMetric,
    KvCacheMetric,
    LatencyMetric,
    ModelCapacityMetric,
    QueueDepthMetric,
)
from policies.stepmodel import TokenMix, replicas_for_slo, steady_state

LATENCY_DEAD_BAND = 0.1
"""Relative distance from the SLO within which the latency rule proposes no change."""

_EPS = 1e-9
_ceil = math.ceil

_TEXT: dict[int, tuple[object, str]] = {}


def _fixed_text(metric: QueueDepthMetric | LatencyMetric | ArrivalRateMetric) -> str:
    """The part of a metric's reason that only depends on the policy, formatted once.

    Keyed by identity (the entry holds the metric, so the id cannot be reused while cached).
    """
    hit = _TEXT.get(id(metric))
    if hit is not None and hit[0] is metric:
        return hit[1]
    if isinstance(metric, QueueDepthMetric):
        text = f" waiting / {metric.target_per_replica:g} per replica → "
    elif isinstance(metric, LatencyMetric):
        text = f"s vs SLO {metric.slo:g}s (×"
    else:
        t, mu = metric.latency_target, metric.service_rate_per_replica
        text = f"p{t.quantile * 100:g} ≤ {t.slo:g}s at {mu:g}/s per replica"
    if len(_TEXT) >= 4096:
        _TEXT.clear()
    _TEXT[id(metric)] = (metric, text)
    return text


def ceil_div(x: float, y: float) -> int:
    """``ceil(x / y)`` forgiving float noise just above an integer."""
    return int(_ceil(x / y - _EPS))


def queue_depth(metric: QueueDepthMetric, waiting: float) -> Proposal:
    if waiting < 0:
        waiting = 0.0
    n = int(_ceil(waiting / metric.target_per_replica - _EPS))
    if n < 0:
        n = 0
    return Proposal(metric.name, "queueDepth", waiting, n, f"{waiting:g}{_fixed_text(metric)}{n}")


def latency(metric: LatencyMetric, observed: float, current: int) -> Proposal:
    if observed < 0:
        observed = 0.0
    slo = metric.slo
    ratio = observed / slo
    r = f"{ratio:.2f}"
    head = f"{observed:.3g}{_fixed_text(metric)}{r})"
    if current <= 0:
        n = 1 if observed > slo else 0
        why = f"{head}, no replicas running → {n}"
    elif 1.0 - LATENCY_DEAD_BAND <= ratio <= 1.0 + LATENCY_DEAD_BAND:
        n = current
        why = f"{head}, within ±10% of the SLO → keep {n}"
    else:
        n = int(_ceil(current * ratio - _EPS))
        if n < 0:
            n = 0
        why = f"{head} → ceil({current} × {r}) = {n}"
    return Proposal(metric.name, "latency", observed, n, why)


def arrival_rate(
    metric: ArrivalRateMetric, observed: float, max_replicas: int, sized_for: float | None = None
) -> Proposal:
    """Size for ``sized_for`` (a forecast, already >= ``observed``) or else for ``observed``."""
    if observed < 0:
        observed = 0.0
    lam = observed if sized_for is None else max(sized_for, observed)
    target = metric.latency_target
    mu = metric.service_rate_per_replica
    goal = _fixed_text(metric)
    if sized_for is None:
        rate = f"{observed:g} req/s"
    elif lam > observed:
        rate = f"{observed:g} req/s, {lam:.4g} forecast by coldStart"
    else:
        rate = f"{observed:g} req/s (forecast no higher)"
    if lam <= 0:
        return Proposal(
            metric.name, "arrivalRate", observed, 0, f"{rate}: no load → 0", False, sized_for
        )
    s = replicas_for_latency(lam, mu, target.quantile, target.slo, max_replicas)
    if s.saturated:
        why = f"{rate}, {goal}: saturated, {s.why} → max {s.replicas}"
    else:
        why = f"{rate}, {goal} → M/M/c needs {s.replicas}"
    return Proposal(metric.name, "arrivalRate", observed, s.replicas, why, s.saturated, sized_for)


def kv_cache_usage(metric: KvCacheMetric, usage: float, current: int) -> Proposal:
    """Scale in proportion to KV-cache saturation (``usage`` in 0..1)."""
    usage = min(max(usage, 0.0), 1.0)
    ratio = usage / metric.target
    head = f"KV cache {usage * 100:.1f}% vs target {metric.target * 100:g}% (×{ratio:.2f})"
    if current <= 0:
        n = 1 if usage > 0 else 0
        why = f"{head}, no replicas running → {n}"
    elif 1.0 - LATENCY_DEAD_BAND <= ratio <= 1.0 + LATENCY_DEAD_BAND:
        n = current
        why = f"{head}, within ±10% of the target → keep {n}"
    else:
        n = max(int(_ceil(current * ratio - _EPS)), 0)
        why = f"{head} → ceil({current} × {ratio:.2f}) = {n}"
    return Proposal(metric.name, "kvCacheUsage", usage, n, why)


def model_capacity(
    metric: ModelCapacityMetric,
    rate: float,
    mix: TokenMix,
    max_replicas: int,
    sized_for: float | None = None,
) -> Proposal:
    """Size for ``sized_for`` (a forecast) or ``rate`` requests/s of ``mix``."""
    rate = max(rate, 0.0)
    lam = rate if sized_for is None else max(sized_for, rate)
    mixed = f"{lam:.3g} req/s × ({mix.prompt:.0f} prompt + {mix.generated:.0f} generated tokens)"
    if sized_for is not None and lam > rate:
        mixed = f"{rate:.3g} req/s now, {mixed} forecast by coldStart"
    if lam <= 0:
        return Proposal(metric.name, "modelCapacity", rate, 0, "no load → 0", False, sized_for)
    slo = metric.slo
    s = replicas_for_slo(metric.profile, metric.limits, lam, mix, slo.ttft, slo.tpot, max_replicas)
    p = metric.profile
    model = (
        f"{p.name}: step = {p.beta0 * 1e3:.3g}ms + {p.beta1 * 1e6:.3g}µs·prefill"
        f" + {p.beta2 * 1e6:.3g}µs·decoding"
    )
    why = f"{mixed}; {model}; {s.why}"
    st = s.state
    if st is not None and st.limit is None and s.replicas > 0:
        d = mix.decode_steps
        budget = metric.limits.max_num_batched_tokens
        chunks = math.ceil(mix.prompt / max(budget - st.decoding, 1.0)) if mix.prompt > 0 else 1
        why += (
            f"; rho (share of each step spent on the load) = {st.rate:.3g} req/s per replica"
            f" × ({p.beta1 * 1e6:.3g}µs × {mix.prompt:.0f} prompt"
            f" + {p.beta2 * 1e6:.3g}µs × {d:.0f} decode steps) = {st.utilization:.2f};"
            f" step = beta0 / (1 − rho) = {p.beta0 * 1e3:.3g}ms / (1 − {st.utilization:.2f})"
            f" = {st.step * 1e3:.1f}ms = TPOT;"
            f" u (share of maxNumBatchedTokens {budget} in use per step) = {st.budget_use:.2f};"
            f" TTFT ≈ wait for the step in progress, step / (2(1 − u))"
            f" + {chunks} prompt chunk{'s' if chunks != 1 else ''} × step"
            f" + prefill {p.beta1 * 1e6:.3g}µs × {mix.prompt:.0f} = {st.ttft * 1e3:.0f}ms"
        )
    if s.saturated:
        why += f": saturated → max {s.replicas}"
    else:
        if s.replicas > 1:
            fewer = steady_state(p, metric.limits, lam / (s.replicas - 1), mix)
            if fewer.limit is not None:
                why += f"; with {s.replicas - 1}: over {fewer.limit}"
            else:
                why += (
                    f"; with {s.replicas - 1}: TTFT {fewer.ttft * 1e3:.0f}ms,"
                    f" TPOT {fewer.tpot * 1e3:.1f}ms"
                )
        why += f"; → {s.replicas}"
    return Proposal(metric.name, "modelCapacity", rate, s.replicas, why, s.saturated, sized_for)
