"""The burst envelope: size a demand metric for the recent peaks of its load, not its mean.

On a bursty service the rate a metric sees swings between idle seconds and bursts many times the
mean, faster than a replica starts (``coldStart``: image pull and model load, minutes). Sized for
the rate observed now, the count follows the load down in every lull and is caught short by the
next burst. With ``burst: {window, quantile}``, each ``arrivalRate`` and ``modelCapacity`` metric
remembers the replica count it needed at every tick of the last ``window`` seconds (each sized
for that tick's rate and token mix, and its forecast) and proposes the ``quantile`` of them
(nearest rank: the ``ceil(quantile × n)``-th smallest of ``n``; ``quantile: 1`` is the maximum),
or what it needs now if that is more.

So a burst that recurs within ``window`` finds its replicas already running; a quiet stretch
longer than ``window`` lets the count fall. ``window`` should be at least ``coldStart``: a shorter
one lets the replicas go before a replica started for the next burst could be Ready.
``quantile < 1`` ignores the rarest spikes (``0.9`` over 40 ticks ignores the 4 largest).

Why sizes and not rates: the sizing (Erlang C, or the step-time model) is monotone in the rate
at a given token mix, so for ``arrivalRate`` the quantile of the sizes is the size for the
quantile of the rates; for ``modelCapacity`` each size keeps the token mix it was computed with
(a lull's mix, with no requests, says nothing about the next burst's prompts). More demand at any
tick in the window can therefore never lower the proposal.

A sample stays in the window while a metric is missing (the proposal is missing too; nothing is
added) and is dropped once it is older than ``window``. Pure: time comes in as ``now``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from policies.decide_types import BurstSample


def update(
    samples: Sequence[BurstSample] | None, now: float, replicas: int, window: float
) -> tuple[BurstSample, ...]:
    """``samples`` younger than ``window`` seconds at ``now``, plus ``(now, replicas)``.

    A sample from the same instant (or a clock step back) is replaced, not added twice.
    """
    horizon = now - window
    kept = tuple(s for s in samples or () if horizon <= s.time < now)
    return (*kept, BurstSample(now, replicas))


def level(samples: Sequence[BurstSample], quantile: float) -> int:
    """The ``quantile`` of the samples' replica counts, nearest rank; 0 with no samples."""
    if not samples:
        return 0
    counts = sorted(s.replicas for s in samples)
    rank = max(math.ceil(quantile * len(counts) - 1e-9), 1)
    return counts[min(rank, len(counts)) - 1]
