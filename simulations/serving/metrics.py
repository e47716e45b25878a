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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from simulations.serving.vllm import ITL_BUCKETS, TTFT_BUCKETS

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


GAUGES = ("num_requests_waiting", "num_requests_running", "kv_cache_usage_perc")
"""vLLM's gauges, without the ``vllm:`` prefix."""
COUNTERS = (
    "request_success_total",
    "arrived",
    "prompt_tokens_total",
    "generation_tokens_total",
    "num_preemptions_total",
)
"""vLLM's counters (``arrived``: requests received, what a gateway would count per pod)."""
HISTOGRAMS = (
    "e2e_request_latency_seconds",
    "time_to_first_token_seconds",
    "inter_token_latency_seconds",
)
E2E = HISTOGRAMS[0]
_ALIASES = {
    "waiting": "num_requests_waiting",
    "running": "num_requests_running",
    "completed": "request_success_total",
}


class Scrapable(Protocol):
    """What a serving replica exposes on its ``/metrics``."""

    id: int

    def sample(self) -> tuple[tuple[float, ...], tuple[float, ...], tuple[list[float], ...]]:
        """Gauges, counters (in :data:`GAUGES`/:data:`COUNTERS` order) and cumulative bucket
        counts (``+Inf`` last) with sum appended, per histogram of :data:`HISTOGRAMS`."""
        ...


@dataclass(slots=True)
class PodSeries:
    """One pod's scraped samples: one list per gauge and counter, and per histogram one row of
    cumulative bucket counts (``+Inf`` last, then the sum) per sample."""

    pod: int
    times: list[float] = field(default_factory=list)
    values: dict[str, list[float]] = field(
        default_factory=lambda: {k: [] for k in (*GAUGES, *COUNTERS)}
    )
    hists: dict[str, list[list[float]]] = field(default_factory=lambda: {k: [] for k in HISTOGRAMS})
    ended: float = math.inf

    def window(self, start: float, end: float) -> tuple[int, int]:
        """Index range of samples inside ``(start, end]``."""
        return bisect_right(self.times, start), bisect_right(self.times, end)

    @property
    def buckets(self) -> list[list[float]]:
        return self.hists[E2E]


class MetricStore:
    """Scraped series of every pod that ever served, and the queries policies run on them.

    ``bounds`` are the e2e latency histogram's; the TTFT and inter-token ones are vLLM's.
    """

    def __init__(
        self,
        bounds: Sequence[float],
        retention: float = 900.0,
        histogram_bounds: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        self.bounds = tuple(bounds)
        self.hist_bounds: dict[str, tuple[float, ...]] = {
            E2E: self.bounds,
            "time_to_first_token_seconds": TTFT_BUCKETS,
            "inter_token_latency_seconds": ITL_BUCKETS,
        }
        for k, v in (histogram_bounds or {}).items():
            self.hist_bounds[k] = tuple(v)
        self.retention = retention
        self.series: dict[int, PodSeries] = {}
        self.gateway = PodSeries(-1)
        """Requests that reached the service's gateway (ingress), with or without Ready pods."""
        self.last_scrape = -math.inf

    def scrape_gateway(self, now: float, arrived: int) -> None:
        g = self.gateway
        g.times.append(now)
        arr = g.values["arrived"]
        arr.append(float(arrived))
        horizon = now - self.retention
        if g.times[0] < horizon:
            k = bisect_right(g.times, horizon)
            del g.times[:k], arr[:k]

    def gateway_rate(self, now: float, window: float) -> float | None:
        """``rate(gateway_requests_total[window])``: the arrival rate at the ingress."""
        g = self.gateway
        lo, hi = g.window(now - window, now)
        arr = g.values["arrived"]
        return extrapolated_rate(g.times[lo:hi], arr[lo:hi], now - window, now)

    def scrape(self, now: float, replicas: Iterable[Scrapable]) -> None:
        """Record one sample of every scraped replica (those whose server is up)."""
        self.last_scrape = now
        for r in replicas:
            s = self.series.get(r.id)
            if s is None:
                s = self.series[r.id] = PodSeries(r.id)
            s.times.append(now)
            gauges, counters, hists = r.sample()
            values = s.values
            for name, v in zip(GAUGES, gauges, strict=True):
                values[name].append(v)
            for name, v in zip(COUNTERS, counters, strict=True):
                values[name].append(v)
            for name, row in zip(HISTOGRAMS, hists, strict=True):
                s.hists[name].append(row)
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
        """Latest value of gauge ``name`` (one of :data:`GAUGES`, or "waiting"/"running") per
        live pod."""
        name = _ALIASES.get(name, name)
        out: dict[int, float] = {}
        for pod, s in self.series.items():
            if s.ended <= now:
                continue
            k = bisect_right(s.times, now)
            if k and s.times[k - 1] > now - LOOKBACK:
                out[pod] = s.values[name][k - 1]
        return out

    def pod_rate(self, now: float, name: str, window: float) -> dict[int, float]:
        """``rate(name[window])`` per pod; ``name`` is one of :data:`COUNTERS` (or "completed"),
        or ``HIST_sum``/``HIST_count`` of a histogram."""
        out: dict[int, float] = {}
        if name.endswith(("_sum", "_count")) and name.rsplit("_", 1)[0] in self.hist_bounds:
            hist, part = name.rsplit("_", 1)
            col = -1 if part == "sum" else -2
            for pod, s in self.series.items():
                lo, hi = s.window(now - window, min(now, s.ended))
                if hi - lo < 2:
                    continue
                rows = s.hists[hist][lo:hi]
                r = extrapolated_rate(s.times[lo:hi], [row[col] for row in rows], now - window, now)
                if r is not None:
                    out[pod] = r
            return out
        name = _ALIASES.get(name, name)
        for pod, s in self.series.items():
            lo, hi = s.window(now - window, min(now, s.ended))
            if hi - lo < 2:
                continue
            values = s.values[name]
            r = extrapolated_rate(s.times[lo:hi], values[lo:hi], now - window, now)
            if r is not None:
                out[pod] = r
        return out

    def pod_bucket_rates(
        self, now: float, window: float, hist: str = E2E
    ) -> dict[int, list[float]]:
        """``rate(HIST_bucket[window])`` per pod, one rate per ``le`` (``+Inf`` last)."""
        out: dict[int, list[float]] = {}
        nb = len(self.hist_bounds[hist]) + 1
        for pod, s in self.series.items():
            lo, hi = s.window(now - window, min(now, s.ended))
            if hi - lo < 2:
                continue
            times = s.times[lo:hi]
            rows = s.hists[hist][lo:hi]
            rates = []
            for b in range(nb):
                r = extrapolated_rate(times, [row[b] for row in rows], now - window, now)
                rates.append(0.0 if r is None else r)
            out[pod] = rates
        return out

    # ------------------------------------------------------------------ aggregated queries

    def gauge_agg(self, now: float, name: str, op: str) -> float | None:
        """``op(name)`` over live pods (``sum``, ``avg``, ``max``, ``min``); ``None`` if empty."""
        values = list(self.pod_gauge(now, name).values())
        if not values:
            return None
        if op == "avg":
            return sum(values) / len(values)
        if op == "max":
            return max(values)
        if op == "min":
            return min(values)
        return sum(values)

    def gauge_sum(self, now: float, name: str) -> float | None:
        """``sum(name)`` over live pods; ``None`` when no pod reports (an empty result)."""
        values = self.pod_gauge(now, name)
        return sum(values.values()) if values else None

    def rate_sum(self, now: float, name: str, window: float) -> float | None:
        """``sum(rate(name[window]))``; ``None`` when no series has two samples in range."""
        values = self.pod_rate(now, name, window)
        return sum(values.values()) if values else None

    def quantile(self, now: float, q: float, window: float, hist: str = E2E) -> float | None:
        """``histogram_quantile(q, sum by (le) (rate(HIST_bucket[window])))``; ``None`` if
        NaN/empty."""
        per_pod = self.pod_bucket_rates(now, window, hist)
        if not per_pod:
            return None
        summed = [sum(col) for col in zip(*per_pod.values(), strict=True)]
        value = bucket_quantile(q, self.hist_bounds[hist], summed)
        return None if math.isnan(value) else value

    def pod_quantile(
        self, now: float, q: float, window: float, hist: str = E2E
    ) -> dict[int, float]:
        """The same quantile per pod (what an adapter would serve as a Pods metric)."""
        out: dict[int, float] = {}
        bounds = self.hist_bounds[hist]
        for pod, rates in self.pod_bucket_rates(now, window, hist).items():
            value = bucket_quantile(q, bounds, rates)
            if not math.isnan(value):
                out[pod] = value
        return out
