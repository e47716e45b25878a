"""Holt's linear trend on a metric's history, for scaling ahead of load by ``coldStart``.

The state is a level, a trend *per second* and the time of the last update, so samples may come
at irregular intervals (a missed scrape, a controller restart): the trend is projected over the
real gap ``dt`` before it is blended with the new sample::

    predicted = level + trend * dt
    level'    = alpha * x + (1 - alpha) * predicted
    trend'    = beta * (level' - level) / dt + (1 - beta) * trend

The forecast ``h`` seconds ahead is ``level + trend * h``. :func:`ahead` never returns less than
the rate observed now: a falling trend must not scale down before the load has actually fallen
(scale-down is left to the stabilization window), and a forecast is never negative.
"""

from __future__ import annotations

import math

from policies.decide_types import HoltState


def update(
    prev: HoltState | None,
    value: float,
    now: float,
    alpha: float,
    beta: float,
    max_gap: float = math.inf,
) -> HoltState:
    """Blend the sample ``value`` taken at ``now`` into ``prev``.

    ``None``, or a ``prev`` older than ``max_gap`` seconds, starts afresh at ``value``.
    """
    if prev is None:
        return HoltState(value, 0.0, now)
    dt = now - prev.time
    if dt > max_gap:
        return HoltState(value, 0.0, now)
    if dt <= 0:
        # Same tick again (or a clock step back): refresh the level, keep the trend.
        return HoltState(alpha * value + (1.0 - alpha) * prev.level, prev.trend, prev.time)
    predicted = prev.level + prev.trend * dt
    level = alpha * value + (1.0 - alpha) * predicted
    trend = beta * (level - prev.level) / dt + (1.0 - beta) * prev.trend
    return HoltState(level, trend, now)


def forecast(state: HoltState, horizon: float) -> float:
    """The smoothed value expected ``horizon`` seconds after the last update (may be < 0)."""
    return state.level + state.trend * horizon


def ahead(state: HoltState, observed: float, horizon: float) -> float:
    """The value to size for: the forecast, but never below what is observed now (nor 0)."""
    f = state.level + state.trend * horizon
    return f if f > observed else observed
