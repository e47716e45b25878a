"""Request streams: when requests arrive and how many tokens each carries.

Every generator returns a :class:`Workload` (sorted arrival times in seconds from 0, prompt and
generated tokens per request), drawn from the given ``numpy`` generator so a seed fixes it. The
same workload is replayed against every policy of a run (common random numbers), which makes
their differences the policies' doing and not the dice's.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


class TraceError(ValueError):
    """A trace that cannot be read; the message names the file, line and column."""


@dataclass(frozen=True, slots=True)
class Workload:
    times: FloatArray
    prompt: FloatArray
    generated: FloatArray

    def __len__(self) -> int:
        return len(self.times)

    @property
    def duration(self) -> float:
        return float(self.times[-1]) if len(self.times) else 0.0

    def until(self, end: float) -> Workload:
        """The requests that arrive before ``end``."""
        k = int(np.searchsorted(self.times, end, side="left"))
        return Workload(self.times[:k], self.prompt[:k], self.generated[:k])


# --------------------------------------------------------------------------- token sizes


@dataclass(frozen=True, slots=True)
class TokenDist:
    """Tokens per request: ``fixed`` (``mean``), ``exponential`` or ``lognormal`` (``sigma``)."""

    dist: str
    mean: float
    sigma: float = 1.0

    def sample(self, rng: np.random.Generator, n: int) -> FloatArray:
        if self.dist == "fixed":
            return np.full(n, self.mean)
        if self.dist == "exponential":
            return np.ceil(rng.exponential(self.mean, n))
        mu = math.log(self.mean) - self.sigma**2 / 2
        return np.ceil(rng.lognormal(mu, self.sigma, n))


DEFAULT_PROMPT = TokenDist("lognormal", 2048.0, 1.0)
DEFAULT_GENERATED = TokenDist("lognormal", 28.0, 1.0)
"""Means of the Azure code trace (2,048 context and 28 generated tokens per request)."""


def _with_tokens(
    times: FloatArray, rng: np.random.Generator, prompt: TokenDist, generated: TokenDist
) -> Workload:
    n = len(times)
    return Workload(times, prompt.sample(rng, n), generated.sample(rng, n))


# --------------------------------------------------------------------------- rate-driven


def piecewise_poisson(
    rates: Sequence[float] | FloatArray, step: float, rng: np.random.Generator
) -> FloatArray:
    """Arrival times of a Poisson process whose rate is ``rates[k]`` on ``[k*step, (k+1)*step)``."""
    r = np.clip(np.asarray(rates, dtype=np.float64), 0.0, None)
    counts = rng.poisson(r * step)
    starts = np.repeat(np.arange(len(r), dtype=np.float64) * step, counts)
    times = starts + rng.uniform(0.0, step, int(counts.sum()))
    times.sort()
    return times


def poisson(
    rate: float,
    duration: float,
    rng: np.random.Generator,
    prompt: TokenDist = DEFAULT_PROMPT,
    generated: TokenDist = DEFAULT_GENERATED,
) -> Workload:
    """A homogeneous Poisson stream of ``rate`` requests/s (exponential gaps, exactly)."""
    expected = rate * duration
    n = int(expected + 10 * math.sqrt(expected) + 10)
    gaps = rng.exponential(1.0 / rate, n)
    times = np.cumsum(gaps)
    while times[-1] < duration:  # pragma: no cover - 10 sigma of headroom
        times = np.concatenate([times, times[-1] + np.cumsum(rng.exponential(1.0 / rate, n))])
    times = times[times < duration]
    return _with_tokens(times, rng, prompt, generated)


def diurnal(
    mean: float,
    amplitude: float,
    period: float,
    duration: float,
    rng: np.random.Generator,
    *,
    phase: float = 0.0,
    noise: float = 0.0,
    step: float = 10.0,
    prompt: TokenDist = DEFAULT_PROMPT,
    generated: TokenDist = DEFAULT_GENERATED,
) -> Workload:
    """``mean * (1 + amplitude * sin(2π (t/period + phase)))``, times lognormal noise of spread
    ``noise`` drawn every ``step`` seconds."""
    k = max(1, math.ceil(duration / step))
    t = np.arange(k, dtype=np.float64) * step + step / 2
    rates = mean * (1.0 + amplitude * np.sin(2 * math.pi * (t / period + phase)))
    if noise > 0:
        rates = rates * rng.lognormal(-(noise**2) / 2, noise, k)
    times = piecewise_poisson(rates, step, rng)
    return _with_tokens(times[times < duration], rng, prompt, generated)


def bursts(
    base: float,
    burst: float,
    on: float,
    off: float,
    duration: float,
    rng: np.random.Generator,
    *,
    start: float | None = None,
    prompt: TokenDist = DEFAULT_PROMPT,
    generated: TokenDist = DEFAULT_GENERATED,
) -> Workload:
    """``base`` requests/s, with ``burst`` requests/s for ``on`` seconds every ``on + off``;
    the first burst starts after ``off`` seconds unless ``start`` says otherwise."""
    first = off if start is None else start
    step = 1.0
    k = max(1, math.ceil(duration / step))
    t = np.arange(k, dtype=np.float64) * step
    in_burst = (t >= first) & (np.mod(t - first, on + off) < on)
    rates = np.where(in_burst, burst, base)
    times = piecewise_poisson(rates, step, rng)
    return _with_tokens(times[times < duration], rng, prompt, generated)


def burst_starts(on: float, off: float, duration: float, start: float | None = None) -> list[float]:
    """When the bursts of :func:`bursts` begin (for recovery times in the report)."""
    first = off if start is None else start
    out = []
    t = first
    while t < duration:
        out.append(t)
        t += on + off
    return out


# --------------------------------------------------------------------------- trace replay


def _parse_timestamp(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    date, _, clock = text.strip().replace("T", " ").partition(" ")
    hms, _, frac = clock.partition(".")
    base = datetime.fromisoformat(f"{date} {hms}").replace(tzinfo=UTC)
    return base.timestamp() + (float(f"0.{frac}") if frac else 0.0)


@dataclass(frozen=True, slots=True)
class Trace:
    """A request trace as published: times from 0, tokens per request."""

    times: FloatArray
    prompt: FloatArray
    generated: FloatArray


def read_trace(path: Path | str) -> Trace:
    """Read ``TIMESTAMP,ContextTokens,GeneratedTokens`` (times ISO or seconds, any order)."""
    p = Path(path)
    try:
        handle = p.open(newline="")
    except OSError as exc:
        raise TraceError(f"{p}: cannot read: {exc.strerror or exc}") from None
    times: list[float] = []
    prompt: list[float] = []
    gen: list[float] = []
    with handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        for column in ("TIMESTAMP", "ContextTokens", "GeneratedTokens"):
            if column not in fields:
                raise TraceError(f"{p}: missing column {column} (have: {', '.join(fields)})")
        for line, row in enumerate(reader, start=2):
            try:
                t = _parse_timestamp(row["TIMESTAMP"] or "")
            except ValueError:
                raise TraceError(
                    f"{p}:{line}: TIMESTAMP: expected a time, got {row['TIMESTAMP']!r}"
                ) from None
            values = []
            for column in ("ContextTokens", "GeneratedTokens"):
                raw = row[column] or ""
                try:
                    v = float(raw)
                except ValueError:
                    v = math.nan
                if not (math.isfinite(v) and v >= 0):
                    raise TraceError(
                        f"{p}:{line}: {column}: expected a token count >= 0, got {raw!r}"
                    )
                values.append(v)
            times.append(t)
            prompt.append(values[0])
            gen.append(values[1])
    if not times:
        raise TraceError(f"{p}: no requests in the trace")
    order = np.argsort(np.asarray(times), kind="stable")
    t_arr = np.asarray(times)[order]
    return Trace(t_arr - t_arr[0], np.asarray(prompt)[order], np.asarray(gen)[order])


def replay(
    trace: Trace,
    rng: np.random.Generator,
    *,
    speedup: float = 1.0,
    scale: float = 1.0,
    jitter: float = 1.0,
) -> Workload:
    """The trace with times divided by ``speedup`` and each request kept ``scale`` times on
    average: ``floor(scale)`` copies plus one more with probability ``scale - floor(scale)``
    (so ``scale < 1`` thins). Copies after the first arrive up to ``jitter`` seconds later."""
    times = trace.times / speedup
    whole = math.floor(scale)
    copies = np.full(len(times), whole, dtype=np.int64)
    copies += rng.random(len(times)) < (scale - whole)
    index = np.repeat(np.arange(len(times)), copies)
    first = np.ones(len(index), dtype=bool)
    if len(index):
        first[1:] = index[1:] != index[:-1]
    offsets = np.where(first, 0.0, rng.uniform(0.0, jitter, len(index)))
    out_times = times[index] + offsets
    order = np.argsort(out_times, kind="stable")
    return Workload(out_times[order], trace.prompt[index][order], trace.generated[index][order])


# --------------------------------------------------------------------------- Prometheus replay


RangeQuery = Callable[[str, float, float, float], list[tuple[float, float]]]
"""``(query, start, end, step) -> [(unix time, value)]`` for a single-series range query."""


def prometheus_range_query(url: str) -> RangeQuery:
    """A :data:`RangeQuery` backed by ``prometheus-api-client``."""
    from prometheus_api_client import PrometheusConnect

    client = PrometheusConnect(url=url, disable_ssl=True)

    def run(query: str, start: float, end: float, step: float) -> list[tuple[float, float]]:
        result = client.custom_query_range(
            query,
            start_time=datetime.fromtimestamp(start).astimezone(),
            end_time=datetime.fromtimestamp(end).astimezone(),
            step=f"{step:g}s",
        )
        if not result:
            return []
        if len(result) > 1:
            raise ValueError(
                f"query returned {len(result)} series; wrap it in sum(...) to get one rate series"
            )
        return [(float(t), float(v)) for t, v in result[0]["values"]]

    return run


def from_rate_series(
    points: Sequence[tuple[float, float]],
    step: float,
    rng: np.random.Generator,
    *,
    speedup: float = 1.0,
    scale: float = 1.0,
    prompt: TokenDist = DEFAULT_PROMPT,
    generated: TokenDist = DEFAULT_GENERATED,
) -> Workload:
    """A Poisson stream that follows a sampled request-rate series (requests/s per point,
    held for ``step`` seconds; missing points count as zero)."""
    if not points:
        raise ValueError("the rate series is empty")
    t0 = points[0][0]
    k = round((points[-1][0] - t0) / step) + 1
    rates = np.zeros(k)
    for t, v in points:
        if math.isfinite(v):
            rates[round((t - t0) / step)] = v
    times = piecewise_poisson(rates * scale * speedup, step / speedup, rng)
    return _with_tokens(times, rng, prompt, generated)
