"""HPA ``behavior``: stabilization windows and scaling-rate policies, as upstream computes them.

A port of the rules in Kubernetes ``pkg/controller/podautoscaler/horizontal.go``
(``stabilizeRecommendationWithBehaviors``, ``convertDesiredReplicasWithBehaviorRate``,
``calculateScaleUpLimitWithScalingRules``, ``calculateScaleDownLimitWithBehaviors``,
``getReplicasChangePerPeriod``, ``storeScaleEvent``), with the controller's maps replaced by
plain tuples carried in :class:`policies.decide_types.State` and ``time.Now()`` by ``now``:

- Stabilization: every raw recommendation is recorded. The result is ``current`` raised to the
  *lowest* recommendation of the scale-up window and lowered to the *highest* of the scale-down
  window (so scaling up goes to the minimum recommendation in the window, scaling down to the
  maximum). A record counts while ``time > now - window`` (strict, as ``After(cutoff)``).
- Rate limits: for each policy, the replica count at the start of its period is
  ``current - added + removed`` (scale events with ``time > now - period``); ``Pods`` adds or
  removes ``value``; ``Percent`` scales up to ``ceil(start * (1 + value/100))`` and down to
  ``int(start * (1 - value/100))`` (truncation toward zero, Go's ``int32(float64)``), both in
  IEEE doubles like Go. ``select: Max`` takes the policy allowing the largest change, ``Min`` the
  smallest, ``Disabled`` forbids the direction. A limit past ``current`` in the wrong direction
  (budget used up by recent events) becomes ``current``. Then ``replicas.min/max`` apply.
- Scale events: one per change of the replica count, magnitudes positive in both lists.

Differences, none of which changes a result: upstream reuses one obsolete slot per call where we
drop every record and event that can no longer count (older than the longest window or period).
"""

from __future__ import annotations

import math
from functools import lru_cache

from policies.decide_types import Recommendation, ScaleEvent
from policies.durations import format_duration
from policies.schema import Behavior, ScalingRule, ScalingRules

_ceil = math.ceil


def changed_within(period: float, events: tuple[ScaleEvent, ...], now: float) -> int:
    """Replicas changed by ``events`` newer than ``now - period`` (upstream's
    ``getReplicasChangePerPeriod``)."""
    cutoff = now - period
    total = 0
    for e in events:
        if e.time > cutoff:
            total += e.change
    return total


@lru_cache(maxsize=1024)
def rule_label(direction: str, index: int, rule: ScalingRule) -> str:
    """``behavior.scaleUp.policies[1] (Pods 4 per 15s)``: how people find the rule in the YAML."""
    per = format_duration(rule.period)
    return f"behavior.{direction}.policies[{index}] ({rule.type} {rule.value} per {per})"


@lru_cache(maxsize=1024)
def window_label(direction: str, rules: ScalingRules) -> str:
    return (
        f"behavior.{direction}.stabilizationWindow ({format_duration(rules.stabilization_window)})"
    )


def scale_up_limit(
    current: int,
    up_events: tuple[ScaleEvent, ...],
    down_events: tuple[ScaleEvent, ...],
    rules: ScalingRules,
    now: float,
) -> tuple[int, int | None]:
    """Most replicas the scale-up rules allow now, and the index of the deciding policy.

    ``select: Disabled`` (or no policy) allows ``current``; the index is then ``None``.
    """
    select = rules.select
    if select == "Disabled" or not rules.policies:
        return current, None
    take_min = select == "Min"
    best = 0
    best_index: int | None = None
    for i, rule in enumerate(rules.policies):
        period = rule.period
        start = current - changed_within(period, up_events, now)
        start += changed_within(period, down_events, now)
        if rule.type == "Pods":
            proposed = start + rule.value
        else:
            proposed = int(_ceil(float(start) * (1.0 + float(rule.value) / 100.0)))
        if best_index is None or (proposed < best if take_min else proposed > best):
            best, best_index = proposed, i
    return best, best_index


def scale_down_limit(
    current: int,
    up_events: tuple[ScaleEvent, ...],
    down_events: tuple[ScaleEvent, ...],
    rules: ScalingRules,
    now: float,
) -> tuple[int, int | None]:
    """Fewest replicas the scale-down rules allow now, and the index of the deciding policy."""
    select = rules.select
    if select == "Disabled" or not rules.policies:
        return current, None
    take_max = select == "Min"  # the smallest change down is the largest count
    best = 0
    best_index: int | None = None
    for i, rule in enumerate(rules.policies):
        period = rule.period
        start = current - changed_within(period, up_events, now)
        start += changed_within(period, down_events, now)
        if rule.type == "Pods":
            proposed = start - rule.value
        else:
            proposed = int(float(start) * (1.0 - float(rule.value) / 100.0))
        if best_index is None or (proposed > best if take_max else proposed < best):
            best, best_index = proposed, i
    return best, best_index


def stabilize(
    recommendations: tuple[Recommendation, ...],
    desired: int,
    current: int,
    behavior: Behavior,
    now: float,
) -> tuple[int, tuple[Recommendation, ...], str | None]:
    """Stabilized count, the updated record (``desired`` appended, dead ones dropped) and
    the window that changed ``desired`` (``None`` when none did)."""
    up_window = behavior.scale_up.stabilization_window
    down_window = behavior.scale_down.stabilization_window
    up_cutoff = now - up_window
    down_cutoff = now - down_window
    drop_cutoff = up_cutoff if up_cutoff < down_cutoff else down_cutoff
    up_rec = desired
    down_rec = desired
    dropped = False
    for rec in recommendations:
        t = rec.time
        if t <= drop_cutoff:
            dropped = True
            continue
        r = rec.replicas
        if t > up_cutoff and r < up_rec:
            up_rec = r
        if t > down_cutoff and r > down_rec:
            down_rec = r
    result = current
    if result < up_rec:
        result = up_rec
    if result > down_rec:
        result = down_rec
    if dropped:
        recommendations = tuple(r for r in recommendations if r.time > drop_cutoff)
    new = (*recommendations, Recommendation(now, desired))
    if result < desired:
        return result, new, window_label("scaleUp", behavior.scale_up)
    if result > desired:
        return result, new, window_label("scaleDown", behavior.scale_down)
    return result, new, None


def limit_rate(
    desired: int,
    current: int,
    min_replicas: int,
    max_replicas: int,
    up_events: tuple[ScaleEvent, ...],
    down_events: tuple[ScaleEvent, ...],
    behavior: Behavior,
    now: float,
) -> tuple[int, str | None]:
    """Rate policies, then ``replicas.min/max`` (``convertDesiredReplicasWithBehaviorRate``).

    Returns the allowed count and what clipped ``desired`` (``None`` when nothing did).
    """
    if desired > current:
        limit, index = scale_up_limit(current, up_events, down_events, behavior.scale_up, now)
        if limit < current:
            limit = current
        if max_replicas > limit:
            allowed = limit
            if index is None:
                why = "behavior.scaleUp.select: Disabled"
            else:
                why = rule_label("scaleUp", index, behavior.scale_up.policies[index])
        else:
            allowed = max_replicas
            why = "replicas.max"
        if desired > allowed:
            return allowed, why
    elif desired < current:
        limit, index = scale_down_limit(current, up_events, down_events, behavior.scale_down, now)
        if limit > current:
            limit = current
        if min_replicas < limit:
            allowed = limit
            if index is None:
                why = "behavior.scaleDown.select: Disabled"
            else:
                why = rule_label("scaleDown", index, behavior.scale_down.policies[index])
        else:
            allowed = min_replicas
            why = "replicas.min"
        if desired < allowed:
            return allowed, why
    return desired, None


def longest_period(rules: ScalingRules) -> float:
    longest = 0.0
    for rule in rules.policies:
        if rule.period > longest:
            longest = rule.period
    return longest


def _prune(events: tuple[ScaleEvent, ...], cutoff: float) -> tuple[ScaleEvent, ...]:
    if not events:
        return events
    for e in events:
        if e.time <= cutoff:
            return tuple(e for e in events if e.time > cutoff)
    return events


def record_scale_event(
    up_events: tuple[ScaleEvent, ...],
    down_events: tuple[ScaleEvent, ...],
    current: int,
    desired: int,
    behavior: Behavior,
    now: float,
) -> tuple[tuple[ScaleEvent, ...], tuple[ScaleEvent, ...]]:
    """Events after a decision: drop those past the longest period; add one if the count moves."""
    ups = _prune(up_events, now - longest_period(behavior.scale_up))
    downs = _prune(down_events, now - longest_period(behavior.scale_down))
    if desired > current:
        ups = (*ups, ScaleEvent(now, desired - current))
    elif desired < current:
        downs = (*downs, ScaleEvent(now, current - desired))
    return ups, downs
