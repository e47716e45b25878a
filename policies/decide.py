"""The decision core: ``decide(policy, snapshot, state, now) -> (Decision, State)``.

One tick, pure and synchronous, in the order the HPA itself works (``reconcileAutoscaler``):

1. Each metric proposes a replica count (its type's module in :mod:`policies.metrics`; the
   entry's ``rate_sized`` marks the demand types named here); ``arrivalRate`` metrics
   with ``forecast: holt`` are sized for the rate expected ``coldStart`` seconds ahead
   (:mod:`policies.forecast`), never for less than the rate observed now. The Holt state holds
   only the policy's arrivalRate metrics (a renamed metric's state is dropped), survives a
   missing sample, and restarts after a gap of more than 10 intervals, where extrapolating the
   old trend over the gap would be a guess. With ``burst: {window, quantile}``, ``arrivalRate``
   and ``modelCapacity`` proposals are then raised to the ``quantile`` of their own sizes over
   the last ``window`` (:mod:`policies.envelope`); that state, too, holds only the policy's
   metrics of those types and survives a missing sample.
2. The target's current count is checked first, as upstream does: ``current == 0`` with
   ``replicas.min >= 1`` means someone scaled the target to zero on purpose; we leave it at 0
   and say so (the HPA's "scaling is disabled"), until it has replicas again. With
   ``replicas.min == 0`` a target at 0 is scaled normally (from zero when there is load).
   ``current > max`` goes straight to ``max``, ``current < min`` straight to ``min``.
3. Otherwise the largest proposal wins and :mod:`policies.behavior` applies the stabilization
   windows, the rate policies and ``replicas.min/max``.
4. While some of the target's pods are unschedulable (``snapshot.unschedulable``: the cluster
   has no room for them), the count may not grow beyond ``current``, the count already asked
   for: more pods would only wait beside them, and a metric sized on the replicas that do run
   (latency, queue per replica) would ratchet the count up to ``max`` (ai-dynamo/dynamo#14251).
   Scale-down is unaffected, and the recommendation is still recorded, so the count grows again
   on the first tick after the pods are placed.

Missing metrics (absent, ``None`` or not finite):

- ``onMetricsUnavailable: hold``: as the HPA, a tick with any metric missing may only scale up:
  if the largest valid proposal is below ``current``, or no metric is valid, the count is held
  (and, as upstream, nothing is recorded in the stabilization history).
- ``fallbackReplicas: N``: the same until some metric has been missing for 3 intervals
  (``State.missing_since``); from then on the recommendation is ``max(N, valid proposals)`` (a
  missing metric votes ``N``, as KEDA's per-trigger fallback does), and the behavior rules still
  apply to it, so the move to ``N`` is as smooth as any other.

Scale events are recorded when the decision differs from ``snapshot.current_replicas``
(upstream records after it writes the scale). The controller should therefore pass the target's
``spec.replicas`` as ``current_replicas``, and decide no faster than the HPA applies the result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace

from policies import envelope
from policies import forecast as holt
from policies.behavior import limit_rate, record_scale_event, stabilize
from policies.decide_types import BurstSample, Decision, HoltState, Proposal, Snapshot, State
from policies.durations import format_duration
from policies.metrics import KINDS
from policies.schema import Burst, ScalingPolicy

FALLBACK_AFTER_INTERVALS = 3
"""With ``fallbackReplicas``, a metric missing this many intervals triggers the fallback."""

HOLT_RESTART_AFTER_INTERVALS = 10
"""A forecast whose last sample is older than this many intervals starts afresh."""

_isfinite = math.isfinite


def decide(
    policy: ScalingPolicy, snapshot: Snapshot, state: State, now: float
) -> tuple[Decision, State]:
    """The replica count to run at ``now``, why, and the state for the next tick."""
    current = snapshot.current_replicas
    pending = snapshot.unschedulable
    bounds = policy.replicas
    lo, hi = bounds.min, bounds.max
    # Scale events are the moves of the target's count seen tick to tick (upstream's HPA records
    # the moves it makes): a decision the HPA has not carried out yet is no event, so a lagging
    # HPA neither eats into the rate budget nor makes the decision flap. A move seen now was made
    # after the previous tick, on that tick's decision: it is dated then.
    seen_at, previous = state.last_seen if state.last_seen is not None else (now, current)
    ups, downs = record_scale_event(
        state.scale_up_events, state.scale_down_events, previous, current, policy.behavior, seen_at
    )
    values = snapshot.values

    proposals: list[Proposal] = []
    missing: list[str] = []
    steps: list[str] = []
    holt_state: Mapping[str, HoltState] = state.holt
    use_holt = policy.forecast.method == "holt"
    new_holt: dict[str, HoltState] | None = {} if use_holt else None
    max_gap = HOLT_RESTART_AFTER_INTERVALS * policy.interval
    burst = policy.burst
    burst_state: Mapping[str, tuple[BurstSample, ...]] = state.burst
    new_burst: dict[str, tuple[BurstSample, ...]] | None = {} if burst is not None else None
    winner: str | None = None
    best = -1

    kinds = KINDS
    for m in policy.metrics:
        kind = kinds[m.type]
        v = values.get(m.name)
        extra = None
        if kind.prepare is not None and v is not None and _isfinite(v):
            extra = kind.prepare(m, v, values)
            if extra is None:
                v = None
        if v is None or not _isfinite(v):
            missing.append(m.name)
            p = Proposal(m.name, m.type, None, None, "metric missing")
            if new_holt is not None and m.name in holt_state:
                new_holt[m.name] = holt_state[m.name]
            if new_burst is not None and m.name in burst_state:
                new_burst[m.name] = burst_state[m.name]
        elif not kind.rate_sized:
            p = kind.propose(m, v, extra, current, hi, None)
        else:
            sized_for = None
            if new_holt is not None:
                fc = policy.forecast
                hs = holt.update(holt_state.get(m.name), v, now, fc.alpha, fc.beta, max_gap)
                new_holt[m.name] = hs
                sized_for = holt.ahead(hs, v, policy.cold_start)
            p = kind.propose(m, v, extra, current, hi, sized_for)
            if burst is not None and new_burst is not None and p.replicas is not None:
                samples = envelope.update(burst_state.get(m.name), now, p.replicas, burst.window)
                new_burst[m.name] = samples
                p = _with_envelope(p, envelope.level(samples, burst.quantile), len(samples), burst)
        proposals.append(p)
        steps.append(f"{p.metric} ({p.type}): {p.reason}")
        n = p.replicas
        if n is not None and n > best:
            best, winner = n, p.metric

    missing_since: float | None = None
    if missing:
        missing_since = state.missing_since if state.missing_since is not None else now

    recommendations = state.recommendations
    recommended = best if winner is not None else current
    limited_by: str | None = None

    if current == 0 and lo != 0:
        desired = 0
        limited_by = "replicas: target scaled to zero"
        steps.append("the target has 0 replicas and replicas.min >= 1: scaling is disabled")
        summary = "keep 0 replicas: scaling is disabled while the target is scaled to zero"
    elif current > hi:
        desired = hi
        limited_by = "replicas.max"
        steps.append(f"current {current} is above replicas.max {hi}")
        summary = f"scale down {current} → {hi}: current count above replicas.max"
    elif current < lo:
        desired = lo
        limited_by = "replicas.min"
        steps.append(f"current {current} is below replicas.min {lo}")
        summary = f"scale up {current} → {lo}: current count below replicas.min"
    else:
        fallback = policy.on_metrics_unavailable.fallback_replicas
        missing_for = now - missing_since if missing_since is not None else 0.0
        fallback_on = (
            fallback is not None
            and missing_since is not None
            and missing_for >= FALLBACK_AFTER_INTERVALS * policy.interval
        )
        if winner is not None:
            steps.append(f"largest proposal: {winner} → {recommended}")
        if fallback_on and fallback is not None:
            if winner is None or fallback >= recommended:
                recommended = fallback
                winner = None
            steps.append(
                f"metrics missing for {missing_for:g}s ({', '.join(missing)}):"
                f" fallbackReplicas {fallback} → {recommended}"
            )
        if not fallback_on and missing and (winner is None or recommended < current):
            desired = current
            limited_by = "onMetricsUnavailable: hold"
            if winner is None:
                steps.append(f"all metrics missing ({', '.join(missing)}): hold {current}")
            else:
                steps.append(
                    f"metrics missing ({', '.join(missing)}): no scale-down on partial data,"
                    f" hold {current}"
                )
            summary = f"keep {current} replicas: metrics missing ({', '.join(missing)})"
        else:
            stabilized, recommendations, window = stabilize(
                recommendations, recommended, current, policy.behavior, now
            )
            if window is not None:
                limited_by = window
                steps.append(f"{window}: {recommended} → {stabilized}")
            desired, rate_rule = limit_rate(
                stabilized,
                current,
                lo,
                hi,
                ups,
                downs,
                policy.behavior,
                now,
            )
            if rate_rule is not None:
                limited_by = rate_rule
                steps.append(f"{rate_rule}: {stabilized} → {desired}")
            if pending > 0 and desired > current:
                limited_by = f"capacity ({pending} unschedulable)"
                steps.append(
                    f"{_pods(pending)} of the target cannot be scheduled: no more than the"
                    f" {current} already asked for ({desired} wanted)"
                )
                desired = current
            summary = _summary(current, desired, winner, recommended, limited_by, fallback_on)

    steps.append(summary)
    decision = Decision(
        desired,
        current,
        tuple(proposals),
        winner,
        recommended,
        limited_by,
        tuple(steps),
        tuple(missing),
        pending,
    )
    new_state = State(
        recommendations,
        ups,
        downs,
        new_holt if new_holt is not None else holt_state,
        missing_since,
        (now, current),
        new_burst if new_burst is not None else burst_state,
    )
    return decision, new_state


def _pods(n: int) -> str:
    return f"{n} pod{'s' if n != 1 else ''}"


def _with_envelope(p: Proposal, level: int, n: int, burst: Burst) -> Proposal:
    """``p`` raised to the burst envelope ``level`` of its last ``n`` sizes, if that is more."""
    assert p.replicas is not None
    q = f"p{burst.quantile * 100:g}" if burst.quantile < 1 else "max"
    head = f"burst envelope ({q} of {n} sizes over {format_duration(burst.window)}) {level}"
    if level > p.replicas:
        return replace(p, replicas=level, reason=f"{p.reason}; {head} → {level}", burst=level)
    return replace(p, reason=f"{p.reason}; {head}, no more", burst=level)


def _summary(
    current: int,
    desired: int,
    winner: str | None,
    recommended: int,
    limited_by: str | None,
    fallback: bool,
) -> str:
    if desired > current:
        head = f"scale up {current} → {desired}"
    elif desired < current:
        head = f"scale down {current} → {desired}"
    else:
        head = f"keep {current} replicas"
    if winner is not None:
        why = f"{winner} proposes {recommended}"
    elif fallback:
        why = f"fallbackReplicas {recommended}"
    else:
        why = f"recommended {recommended}"
    if limited_by is not None:
        why += f", limited by {limited_by}"
    return f"{head}: {why}"
