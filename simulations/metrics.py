"""The metrics pipeline: replicas are scraped every ``scrape_interval`` into per-pod series, and
queries are evaluated from those samples the way Prometheus evaluates them.

``rate()`` follows Prometheus' ``extrapolatedRate`` (counter resets, extrapolation to the range
boundaries limited to half a sample interval, never below zero), ``histogram_quantile`` follows
its ``bucketQuantile`` (linear interpolation inside the bucket, the lower bound of the first
bucket is 0, a rank in the ``+Inf`` bucket returns the highest finite bound). Range selectors are
left-open ``(t - range, t]`` as in Prometheus 3; instant selectors look back 5 minutes and a pod
that went away stops reporting at once (a staleness marker). So a policy in the simulator sees the
same lag and the same quantisation it would see in production.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from simulations.serving import Replica

LOOKBACK = 300.0
"""Prometheus' default lookback delta for instant vector selectors (seconds)."""


def extrapolated_rate(
    times: Sequence[float],
    values: Sequence[float],
    range_start: float,
    range_end: float,
    *,
    is_counter: bool = True,
    is_rate: bool = True,
) -> float | None:
    """Prometheus' ``rate``/``increase`` of the samples inside ``(range_start, range_end]``.

    ``times``/``values`` are exactly the samples in range. ``None`` with fewer than two samples
    (Prometheus returns no series then).
    """
    n = len(times)
    if n < 2:
        return None
    result = values[-1] - values[0]
    if is_counter:
        last = 0.0
        for v in values:
            if v < last:
                result += last
            last = v
    first_t, last_t = times[0], times[-1]
    sampled = last_t - first_t
    if sampled <= 0:
        return None
    average = sampled / (n - 1)
    threshold = average * 1.1
    to_start = first_t - range_start
    to_end = range_end - last_t
    if to_start >= threshold:
        to_start = average / 2
    if is_counter and result > 0 and values[0] >= 0:
        to_zero = sampled * (values[0] / result)
        if to_zero < to_start:
            to_start = to_zero
    if to_end >= threshold:
        to_end = average / 2
    factor = (sampled + to_start + to_end) / sampled
    if is_rate:
        factor /= range_end - range_start
    return result * factor


def bucket_quantile(q: float, bounds: Sequence[float], cumulative: Sequence[float]) -> float:
    """Prometheus' ``histogram_quantile`` over classic buckets.

    ``bounds`` are the finite upper bounds in increasing order; ``cumulative`` has one more entry,
    the ``+Inf`` bucket. Returns NaN when there are no observations.
    """
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    counts = list(cumulative)
    for k in range(1, len(counts)):  # ensureMonotonic: rates of sums can wobble by rounding
        if counts[k] < counts[k - 1]:
            counts[k] = counts[k - 1]
    uppers = [*bounds, math.inf]
    if len(uppers) < 2:
        return math.nan
    total = counts[-1]
    if total == 0 or math.isnan(total):
        return math.nan
    rank = q * total
    b = len(uppers) - 1
    for k in range(len(uppers) - 1):
        if counts[k] >= rank:
            b = k
            break
    if b == len(uppers) - 1:
        return uppers[-2]
    if b == 0 and uppers[0] <= 0:
        return uppers[0]
    start = 0.0
    end = uppers[b]
    count = counts[b]
    if b > 0:
        start = uppers[b - 1]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    if count == 0:  # only with rank 0 in an empty first bucket; Go's 0/0 is NaN
        return math.nan
    return start + (end - start) * (rank / count)


@dataclass(slots=True)
class PodSeries:
    """One pod's scraped samples. Bucket counts are cumulative, ``+Inf`` last."""

    pod: int
    times: list[float] = field(default_factory=list)
    completed: list[float] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)
    latency_sum: list[float] = field(default_factory=list)
    buckets: list[list[float]] = field(default_factory=list)
    waiting: list[float] = field(default_factory=list)
    running: list[float] = field(default_factory=list)
    ended: float = math.inf

    def window(self, start: float, end: float) -> tuple[int, int]:
        """Index range of samples inside ``(start, end]``."""
        return bisect_right(self.times, start), bisect_right(self.times, end)


class MetricStore:
    """Scraped series of every pod that ever served, and the queries policies run on them."""

    def __init__(self, bounds: Sequence[float], retention: float = 900.0) -> None:
        self.bounds = tuple(bounds)
        self.retention = retention
        self.series: dict[int, PodSeries] = {}
        self.gateway = PodSeries(-1)
        """Requests that reached the service's gateway (ingress), with or without Ready pods."""
        self.last_scrape = -math.inf

    def scrape_gateway(self, now: float, arrived: int) -> None:
        g = self.gateway
        g.times.append(now)
        g.arrived.append(float(arrived))
        horizon = now - self.retention
        if g.times[0] < horizon:
            k = bisect_right(g.times, horizon)
            del g.times[:k], g.arrived[:k]

    def gateway_rate(self, now: float, window: float) -> float | None:
        """``rate(gateway_requests_total[window])``: the arrival rate at the ingress."""
        g = self.gateway
        lo, hi = g.window(now - window, now)
        return extrapolated_rate(g.times[lo:hi], g.arrived[lo:hi], now - window, now)

    def scrape(self, now: float, replicas: Iterable[Replica]) -> None:
        """Record one sample of every scraped replica (those whose server is up)."""
        self.last_scrape = now
        for r in replicas:
            s = self.series.get(r.id)
            if s is None:
                s = self.series[r.id] = PodSeries(r.id)
            s.times.append(now)
            s.completed.append(float(r.completed))
            s.arrived.append(float(r.arrived))
            s.latency_sum.append(r.latency_sum)
            acc = 0.0
            cumulative = []
            for c in r.bucket_counts:
                acc += c
                cumulative.append(acc)
            s.buckets.append(cumulative)
            s.waiting.append(float(len(r.queue)))
            s.running.append(float(r.running))
        horizon = now - self.retention
        for pod in [p for p, s in self.series.items() if s.ended < horizon]:
            del self.series[pod]

    def end(self, pod: int, now: float) -> None:
        """The pod went away: its series gets a staleness marker at ``now``."""
        s = self.series.get(pod)
        if s is not None:
            s.ended = now

    # ------------------------------------------------------------------ per-pod queries

    def pod_gauge(self, now: float, name: str) -> dict[int, float]:
        """Latest value of gauge ``name`` ("waiting" or "running") per live pod."""
        out: dict[int, float] = {}
        for pod, s in self.series.items():
            if s.ended <= now:
                continue
            k = bisect_right(s.times, now)
            if k and s.times[k - 1] > now - LOOKBACK:
                out[pod] = getattr(s, name)[k - 1]
        return out

    def pod_rate(self, now: float, name: str, window: float) -> dict[int, float]:
        """``rate(name[window])`` per pod; ``name`` is "completed" or "arrived"."""
        out: dict[int, float] = {}
        for pod, s in self.series.items():
            lo, hi = s.window(now - window, min(now, s.ended))
            if hi - lo < 2:
                continue
            values: list[float] = getattr(s, name)
            r = extrapolated_rate(s.times[lo:hi], values[lo:hi], now - window, now)
            if r is not None:
                out[pod] = r
        return out

    def pod_bucket_rates(self, now: float, window: float) -> dict[int, list[float]]:
        """``rate(bucket[window])`` per pod, one rate per ``le`` (``+Inf`` last)."""
        out: dict[int, list[float]] = {}
        nb = len(self.bounds) + 1
        for pod, s in self.series.items():
            lo, hi = s.window(now - window, min(now, s.ended))
            if hi - lo < 2:
                continue
            times = s.times[lo:hi]
            rows = s.buckets[lo:hi]
            rates = []
            for b in range(nb):
                r = extrapolated_rate(times, [row[b] for row in rows], now - window, now)
                rates.append(0.0 if r is None else r)
            out[pod] = rates
        return out

    # ------------------------------------------------------------------ aggregated queries

    def gauge_sum(self, now: float, name: str) -> float | None:
        """``sum(name)`` over live pods; ``None`` when no pod reports (an empty result)."""
        values = self.pod_gauge(now, name)
        return sum(values.values()) if values else None

    def rate_sum(self, now: float, name: str, window: float) -> float | None:
        """``sum(rate(name[window]))``; ``None`` when no series has two samples in range."""
        values = self.pod_rate(now, name, window)
        return sum(values.values()) if values else None

    def quantile(self, now: float, q: float, window: float) -> float | None:
        """``histogram_quantile(q, sum by (le) (rate(bucket[window])))``; ``None`` if NaN/empty."""
        per_pod = self.pod_bucket_rates(now, window)
        if not per_pod:
            return None
        summed = [sum(col) for col in zip(*per_pod.values(), strict=True)]
        value = bucket_quantile(q, self.bounds, summed)
        return None if math.isnan(value) else value

    def pod_quantile(self, now: float, q: float, window: float) -> dict[int, float]:
        """The same quantile per pod (what an adapter would serve as a Pods metric)."""
        out: dict[int, float] = {}
        for pod, rates in self.pod_bucket_rates(now, window).items():
            value = bucket_quantile(q, self.bounds, rates)
            if not math.isnan(value):
                out[pod] = value
        return out
