"""Run every contender of a scenario for one or more seeds and summarise each run.

Each seed fixes four independent random streams (workload, service times, background pods,
start-up delays and scheduling ties); every contender of a seed replays the same workload on the
same cluster, so differences between contenders come from the contenders. Seeds run in parallel
processes; results are assembled in a fixed order, so the output does not depend on timing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

import numpy as np

from simulations.config.scenario import (
    Contender,
    GpuscaleContender,
    Scenario,
    ServiceSpec,
    ServiceTimeSpec,
    WorkloadSpec,
)
from simulations.experiments.pool import run_in_order
from simulations.serving import arrivals
from simulations.serving.contenders import GpuscaleController, KpaBaseline, controller_for
from simulations.serving.replicas import RequestLog
from simulations.serving.run import Run, Timeline, build_cluster, make_workload, service_model_of
from simulations.serving.vllm import ServingLog

BURST_BIN = 60.0
BURST_FACTOR = 1.5
HEALTHY_FOR = 60.0
HEALTHY_SHARE = 0.95
"""A timeline bin is healthy when this share of the requests arriving in it meet the SLO."""
_NEVER = 1e18


class FinishedRun(Protocol):
    """What the report reads of a finished run: a :class:`Run`, or the variants of one model
    summed up (:class:`simulations.serving.variants.MergedRun`)."""

    @property
    def log(self) -> RequestLog | ServingLog: ...
    @property
    def service(self) -> ServiceSpec: ...
    @property
    def scenario(self) -> Scenario: ...
    @property
    def duration(self) -> float: ...
    @property
    def dropped(self) -> list[int]: ...
    @property
    def dropped_at(self) -> list[float]: ...
    @property
    def cut_by_scale_down(self) -> int: ...
    @property
    def timeline(self) -> Timeline: ...
    @property
    def gpu_seconds(self) -> float: ...
    @property
    def replica_seconds(self) -> float: ...
    @property
    def ready_seconds(self) -> float: ...
    @property
    def pending_seconds(self) -> float: ...
    @property
    def max_replicas_seen(self) -> int: ...
    @property
    def max_pending(self) -> int: ...
    @property
    def scale_ups(self) -> int: ...
    @property
    def scale_downs(self) -> int: ...
    @property
    def unschedulable_reasons(self) -> dict[str, int]: ...


@dataclass(frozen=True, slots=True)
class RunResult:
    label: str
    kind: str
    seed: int
    summary: dict[str, Any]
    timeline: dict[str, list[float]]


@dataclass(frozen=True, slots=True)
class Comparison:
    scenario: Scenario
    seeds: tuple[int, ...]
    results: tuple[RunResult, ...]
    requests: int
    duration: float
    bursts: tuple[float, ...]
    extras: dict[str, Any] = field(default_factory=dict)


def contender_kind(c: Contender) -> str:
    if isinstance(c, GpuscaleContender):
        return "gpuscale"
    return type(c).__name__.removesuffix("Contender").lower()


def random_streams(seed: int) -> list[np.random.Generator]:
    return [np.random.default_rng([seed, k]) for k in range(4)]


def prepare(scenario: Scenario, seed: int) -> tuple[arrivals.Workload, np.ndarray, float]:
    """The workload, service times and duration for one seed (the same for every contender).

    Remembered for the last few inputs (a sweep runs many contenders on the same seeds); the
    arrays are read-only.
    """
    svc = scenario.service
    timed = svc.service_time if svc.engine != "vllm" else None
    return _prepare(scenario.workload, scenario.duration, timed, seed)


@lru_cache(maxsize=4)
def _prepare(
    spec: WorkloadSpec, duration: float | None, service_time: ServiceTimeSpec | None, seed: int
) -> tuple[arrivals.Workload, np.ndarray, float]:
    """``service_time`` is ``None`` for the vLLM engine, which times every step itself."""
    w_rng, s_rng, _, _ = random_streams(seed)
    workload = make_workload(spec, duration, w_rng)
    if service_time is None:
        times = np.zeros(len(workload))
    else:
        times = service_model_of(service_time).sample(s_rng, workload.prompt, workload.generated)
    for array in (workload.times, workload.prompt, workload.generated, times):
        array.setflags(write=False)
    if duration is None:
        duration = math.ceil(workload.duration) + 60.0
    return workload, times, duration


def detect_bursts(times: np.ndarray, duration: float, scenario: Scenario) -> tuple[float, ...]:
    """Burst starts: the configured ones for ``bursts`` workloads; otherwise the minutes whose
    arrival rate crosses 1.5× the run's mean rate from below."""
    w = scenario.workload
    if w.type == "bursts":
        return tuple(arrivals.burst_starts(w.on, w.off, duration, w.start))
    if len(times) == 0:
        return ()
    edges = np.arange(0.0, duration + BURST_BIN, BURST_BIN)
    counts, _ = np.histogram(times, bins=edges)
    threshold = BURST_FACTOR * len(times) / duration * BURST_BIN
    out = []
    for k in range(1, len(counts)):
        if counts[k] > threshold >= counts[k - 1]:
            out.append(float(edges[k]))
    return tuple(out)


def _quantiles(x: np.ndarray, qs: Sequence[float] = (0.5, 0.95, 0.99)) -> list[float]:
    if len(x) == 0:
        return [math.nan] * len(qs)
    return [float(v) for v in np.quantile(x, list(qs))]


@dataclass(frozen=True, slots=True)
class RequestTimes:
    """Per-request figures of one run (NaN where not defined)."""

    arrival: np.ndarray
    done: np.ndarray
    """Completed (not dropped)."""
    dropped: np.ndarray
    ttft: np.ndarray
    tpot: np.ndarray
    """``(e2e - ttft) / (generated - 1)``; 0 for one-token replies."""
    e2e: np.ndarray
    meets: np.ndarray
    """Completed within every bound of the SLO."""
    counted: np.ndarray
    """Counted in attainment: completed, dropped, or still open but already past a bound."""


def request_times(run: FinishedRun) -> RequestTimes:
    """TTFT, TPOT, e2e latency and SLO verdict of every request of a finished run.

    Attainment follows DistServe: the share of requests that meet every bound given. Dropped
    requests miss; a request still in flight at the end misses if it has already exceeded its
    TTFT bound without a first token, or its e2e bound; otherwise it is not counted.
    """
    log = run.log
    slo = run.service.slo
    end = run.duration
    arrival = np.asarray(log.arrival)
    finish = np.asarray(log.finish)
    dropped = np.zeros(log.n, dtype=bool)
    dropped[run.dropped] = True
    finish[dropped] = np.nan
    done = ~np.isnan(finish)
    e2e = finish - arrival
    if isinstance(log, ServingLog):
        first = np.asarray(log.first_token)
        first[dropped] = np.nan
        gen = np.asarray(log.generated, dtype=np.float64)
        ttft = first - arrival
        with np.errstate(invalid="ignore", divide="ignore"):
            tpot = np.where(gen > 1, (finish - first) / np.maximum(gen - 1, 1), 0.0)
    else:  # the per-request model returns the whole reply at once
        first = finish
        ttft = e2e.copy()
        tpot = np.where(done, 0.0, np.nan)
    meets = done.copy()
    late_open = np.zeros(log.n, dtype=bool)
    open_ = ~done & ~dropped
    waited = end - arrival
    if slo.ttft is not None:
        meets &= ttft <= slo.ttft
        late_open |= open_ & np.isnan(first) & (waited > slo.ttft)
    if slo.tpot is not None:
        meets &= tpot <= slo.tpot
    if slo.e2e is not None:
        meets &= e2e <= slo.e2e
        late_open |= open_ & (waited > slo.e2e)
    counted = done | dropped | late_open
    return RequestTimes(arrival, done, dropped, ttft, tpot, e2e, meets, counted)


def summarise(
    run: FinishedRun, label: str, kind: str, seed: int, bursts: Sequence[float]
) -> RunResult:
    """The report's per-run figures and timeline."""
    log = run.log
    end = run.duration
    slo = run.service.slo
    rt = request_times(run)
    arrival, done, dropped = rt.arrival, rt.done, rt.dropped
    latency = rt.e2e
    n_counted = int(rt.counted.sum())
    attainment = float(rt.meets.sum() / n_counted) if n_counted else math.nan
    p50, p95, p99 = _quantiles(latency[done])
    t50, t90, t99 = _quantiles(rt.ttft[done], (0.5, 0.9, 0.99))
    o50, o90, o99 = _quantiles(rt.tpot[done], (0.5, 0.9, 0.99))
    start = np.asarray(log.start)
    waits = (start - arrival)[~np.isnan(start)]
    open_ = ~done & ~dropped

    interval = run.scenario.timeline_interval
    tl = run.timeline
    t = np.asarray(tl.time)
    k = np.floor(arrival / interval).astype(np.int64)
    nbins = len(t)
    k = np.clip(k, 0, max(nbins - 1, 0))
    arrivals_per = np.bincount(k, minlength=nbins)[:nbins] / interval if nbins else np.array([])
    p95_bin = np.full(nbins, np.nan)
    ttft_bin = np.full(nbins, np.nan)
    tpot_bin = np.full(nbins, np.nan)
    attain_bin = np.full(nbins, np.nan)
    order = np.argsort(k, kind="stable")
    ks = k[order]
    counted_s = rt.counted[order]
    meets_s = rt.meets[order]
    done_s = done[order]
    # requests that never finished count as slower than any that did
    lat_s = np.where(done, latency, np.inf)[order]
    ttft_s = np.where(done, rt.ttft, np.inf)[order]
    tpot_s = np.where(done, rt.tpot, np.inf)[order]
    bounds = np.searchsorted(ks, np.arange(nbins + 1))
    for b in range(nbins):
        lo, hi = bounds[b], bounds[b + 1]
        c = counted_s[lo:hi]
        if not c.any():
            continue
        attain_bin[b] = float(meets_s[lo:hi][c].mean())
        for src, dst in ((lat_s, p95_bin), (ttft_s, ttft_bin), (tpot_s, tpot_bin)):
            seg = np.minimum(src[lo:hi][c], _NEVER)
            q = float(np.quantile(seg, 0.95))
            dst[b] = math.inf if q >= _NEVER / 2 else q
    del done_s

    ended = np.sort(
        np.concatenate([np.asarray(log.finish)[done], np.asarray(run.dropped_at, dtype=np.float64)])
    )
    in_system = (
        np.searchsorted(np.sort(arrival), t, side="right") - np.searchsorted(ended, t, side="right")
    ).astype(np.float64)

    recoveries: list[dict[str, float | None]] = []
    healthy = ~(attain_bin < HEALTHY_SHARE)  # NaN (no arrivals) counts as healthy
    need = max(1, math.ceil(HEALTHY_FOR / interval))
    for s in bursts:
        b0 = int(s // interval)
        rec: float | None = None
        for b in range(b0, nbins - need + 1):
            if healthy[b : b + need].all():
                rec = max(0.0, float(t[b]) - s) if b > b0 else 0.0
                break
        recoveries.append({"start": s, "recovery_s": rec})
    recovered = [r["recovery_s"] for r in recoveries if r["recovery_s"] is not None]
    kv = np.asarray(tl.kv_usage, dtype=np.float64)
    kv_ok = kv[np.isfinite(kv)]

    summary: dict[str, Any] = {
        "requests": int(log.n),
        "completed": int(done.sum()),
        "dropped": int(dropped.sum()),
        "cut_by_scale_down": run.cut_by_scale_down,
        "unfinished": int(open_.sum()),
        "slo": {
            "ttft_s": slo.ttft,
            "tpot_s": slo.tpot,
            "e2e_s": slo.e2e,
            "attainment": slo.attainment,
        },
        "slo_attainment": attainment,
        "slo_met": bool(attainment >= slo.attainment) if n_counted else False,
        "ttft_p50": t50,
        "ttft_p90": t90,
        "ttft_p99": t99,
        "tpot_p50": o50,
        "tpot_p90": o90,
        "tpot_p99": o99,
        "latency_p50": p50,
        "latency_p95": p95,
        "latency_p99": p99,
        "latency_mean": float(latency[done].mean()) if done.any() else math.nan,
        "wait_mean": float(waits.mean()) if len(waits) else math.nan,
        "preemptions": int(tl.preemptions[-1]) if tl.preemptions else 0,
        "kv_cache_usage_mean": float(kv_ok.mean()) if len(kv_ok) else math.nan,
        "kv_cache_usage_max": float(kv_ok.max()) if len(kv_ok) else math.nan,
        "waiting_max": int(max(tl.waiting)) if tl.waiting else 0,
        "gpu_hours": run.gpu_seconds / 3600.0,
        "replicas_mean": run.replica_seconds / end,
        "replicas_max": run.max_replicas_seen,
        "ready_mean": run.ready_seconds / end,
        "scale_events": run.scale_ups + run.scale_downs,
        "scale_ups": run.scale_ups,
        "scale_downs": run.scale_downs,
        "pending_pod_seconds": run.pending_seconds,
        "pending_max": run.max_pending,
        "unschedulable": dict(sorted(run.unschedulable_reasons.items())),
        "bursts": recoveries,
        "recovery_mean_s": float(np.mean(recovered)) if recovered else math.nan,
        "bursts_unrecovered": len(recoveries) - len(recovered),
    }
    timeline = {
        "time": t.tolist(),
        "arrivals_per_s": arrivals_per.tolist(),
        "desired": [float(x) for x in tl.desired],
        "replicas": [float(x) for x in tl.replicas],
        "ready": [float(x) for x in tl.ready],
        "pending": [float(x) for x in tl.pending],
        "gpus": [float(x) for x in tl.gpus],
        "in_system": in_system.tolist(),
        "waiting": [float(x) for x in tl.waiting],
        "running": [float(x) for x in tl.running],
        "kv_cache_usage": kv.tolist(),
        "preemptions": [float(x) for x in tl.preemptions],
        "latency_p95": p95_bin.tolist(),
        "ttft_p95": ttft_bin.tolist(),
        "tpot_p95": tpot_bin.tolist(),
        "slo_attainment": attain_bin.tolist(),
    }
    return RunResult(label, kind, seed, summary, timeline)


def run_one(scenario: Scenario, index: int, seed: int) -> RunResult:
    """Simulate contender ``index`` of ``scenario`` with ``seed``."""
    contender = scenario.contenders[index]
    workload, service_times, duration = prepare(scenario, seed)
    _, _, c_rng, r_rng = random_streams(seed)
    cluster, _ = build_cluster(scenario, c_rng)
    run = Run(scenario, workload, service_times, cluster, r_rng, duration)
    svc = scenario.service
    controller = controller_for(contender, scenario.hpa, svc.min_replicas, svc.max_replicas)
    run.start(controller)
    run.run()
    kind = contender_kind(contender)
    bursts = detect_bursts(workload.times, duration, scenario)
    result = summarise(run, contender.label, kind, seed, bursts)
    if isinstance(controller, GpuscaleController):
        result.summary["decisions"] = controller.decisions
        result.summary["limited_by"] = dict(sorted(controller.limited.items()))
    if isinstance(controller, KpaBaseline):
        result.summary["panic_seconds"] = controller.panic_seconds
    return result


def _task(args: tuple[Scenario, int, int]) -> RunResult:
    """Contender ``index`` of ``scenario.contenders``, then of ``variants.contenders`` (indices
    past the first list)."""
    scenario, index, seed = args
    if index < len(scenario.contenders):
        return run_one(scenario, index, seed)
    from simulations.experiments.variants import run_variant_contender  # it imports this module

    return run_variant_contender(scenario, index - len(scenario.contenders), seed)


def contender_count(scenario: Scenario) -> int:
    """The scenario's contenders, its variant contenders included."""
    variants = scenario.variants
    return len(scenario.contenders) + (len(variants.contenders) if variants else 0)


def compare(
    scenario: Scenario,
    seeds: Sequence[int],
    *,
    workers: int | None = None,
    on_done: Callable[[RunResult], None] | None = None,
) -> Comparison:
    """Every contender × seed (the variant contenders too), in ``workers`` processes.

    The default is one process per seed up to the CPU count: one seed's runs take about a second
    each, less than starting a process pool costs.
    """
    tasks = [(scenario, i, s) for s in seeds for i in range(contender_count(scenario))]
    if workers is None:
        workers = min(len(seeds), os.cpu_count() or 1)
    results = run_in_order(_task, tasks, workers, on_done)
    workload, _, duration = prepare(scenario, seeds[0])
    bursts = detect_bursts(workload.times, duration, scenario)
    done = tuple(r for r in results if r is not None)
    return Comparison(scenario, tuple(seeds), done, len(workload), duration, bursts)
