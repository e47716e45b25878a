"""The contenders as controllers on the simulated clock: gpuscale (``policies.decide`` behind an
HPA, as deployed), the upstream HPA, KEDA, Knative's KPA, and a fixed replica count.

Ticks are phased so that each controller sees the scrape of the same instant: scrapes at
``t ≡ 0``, gpuscale decisions at ``t ≡ 1 s``, HPA syncs at ``t ≡ 2 s``, KEDA polls at ``t ≡ 3 s``
(modulo their periods).
"""

from __future__ import annotations

import math
import re

from policies.decide import decide
from policies.decide_types import Snapshot, State
from policies.durations import DurationError, parse_duration
from policies.metrics import Metric, kind_of, metric_inputs
from simulations.config.scenario import (
    BaselineMetric,
    Contender,
    FixedContender,
    GpuscaleContender,
    HpaContender,
    HpaSettings,
    KedaContender,
    KpaContender,
)
from simulations.serving import promql
from simulations.serving.baselines.hpa import (
    HpaController,
    NoMetrics,
    PodSample,
    Tolerance,
    external_per_pod_replicas,
    permissive_behavior,
    pods_metric_replicas,
)
from simulations.serving.baselines.kpa import TICK, ConcurrencyWindows, KpaDecider, KpaSpec
from simulations.serving.clock import LATE
from simulations.serving.metrics import MetricStore
from simulations.serving.run import Controller, Run

DECIDE_PHASE = 1.0
HPA_PHASE = 2.0
KEDA_PHASE = 3.0

_QUANTILE = re.compile(r"histogram_quantile\(\s*([0-9.eE+-]+)")
_RANGE = re.compile(r"\[([0-9][0-9a-z.]*)\]")


def query_quantile(query: str, default: float = 0.95) -> float:
    m = _QUANTILE.search(query)
    try:
        return float(m.group(1)) if m else default
    except ValueError:
        return default


def query_window(query: str, default: float = 60.0) -> float:
    m = _RANGE.search(query)
    if m is None:
        return default
    try:
        return parse_duration(m.group(1))
    except DurationError:
        return default


_PLANS: dict[str, promql.Plan | None] = {}


def query_value(store: MetricStore, query: str, now: float) -> tuple[bool, float | None]:
    """``(understood, value)`` of a PromQL query on the scraped series (:mod:`promql`)."""
    if query not in _PLANS:
        _PLANS[query] = promql.parse(query)
    plan = _PLANS[query]
    if plan is None:
        return False, None
    return True, promql.evaluate(store, plan, now)


def metric_value(store: MetricStore, metric: Metric, now: float) -> float | None:
    """What the metric's PromQL would return in the simulated cluster.

    Queries of the shapes :mod:`~simulations.serving.promql` knows are evaluated by the metric they
    name (vLLM V1 names). Others fall back on what the metric type measures (its registry entry's
    ``measures``): a queue is the waiting requests, a latency the e2e latency quantile of the
    query's ``histogram_quantile(q, …)`` over its ``[window]``, a request rate the pods' success
    counter when the query names one (``…success…``) and nothing more, else the gateway's
    request counter: completions plus the growth of the engines' queues
    (``deriv(…num_requests_waiting…)``, the arrivals query of
    ``deploy/examples/llama-chat.yaml``) is an estimate of arrivals, which the gateway counts.
    """
    understood, value = query_value(store, metric.query, now)
    if understood:
        return value
    measure = kind_of(metric).measures
    if measure == "queue":
        return store.gauge_sum(now, "waiting")
    if measure == "kvCacheUsage":
        return store.gauge_agg(now, "kv_cache_usage_perc", "avg")
    window = query_window(metric.query)
    if measure == "latency":
        return store.quantile(now, query_quantile(metric.query), window)
    if "success" in metric.query and "deriv" not in metric.query:
        return store.rate_sum(now, "completed", window)
    return store.gateway_rate(now, window)


def _sum_value(
    store: MetricStore, kind: BaselineMetric, now: float, quantile: float, window: float
) -> float | None:
    if kind == "queue":
        return store.gauge_sum(now, "waiting")
    if kind == "concurrency":
        waiting = store.gauge_sum(now, "waiting")
        running = store.gauge_sum(now, "running")
        return None if waiting is None or running is None else waiting + running
    if kind == "latency":
        return store.quantile(now, quantile, window)
    return store.gateway_rate(now, window)


def _pod_values(
    store: MetricStore, kind: BaselineMetric, now: float, quantile: float, window: float
) -> dict[int, float]:
    if kind == "queue":
        return store.pod_gauge(now, "waiting")
    if kind == "concurrency":
        waiting = store.pod_gauge(now, "waiting")
        running = store.pod_gauge(now, "running")
        return {p: waiting[p] + running.get(p, 0.0) for p in waiting}
    if kind == "latency":
        return store.pod_quantile(now, quantile, window)
    return store.pod_rate(now, "arrived", window)


def _periodic(run: Run, first: float, period: float, fn: object) -> None:
    """Call ``fn()`` at ``first``, ``first + period``, … on the run's engine."""
    engine = run.engine

    def tick(_: None) -> None:
        fn()  # type: ignore[operator]
        engine.schedule(period, tick, None, LATE)

    engine.schedule_at(first, tick, None, LATE)


class ControllerDefaults:
    """What :class:`~simulations.serving.run.Controller` asks that most contenders answer alike."""

    needs_concurrency = False

    def desired(self) -> int | None:
        return None


class GpuscaleController(ControllerDefaults):
    """``decide()`` every ``policy.interval``; the HPA it owns turns the served
    ``gpuscale_desired_replicas`` (External, ``AverageValue: 1``) into the scale every sync."""

    def __init__(self, contender: GpuscaleContender, hpa: HpaSettings) -> None:
        self.policy = contender.policy
        self.settings = hpa
        self.state = State()
        self.value: float | None = None
        self.value_time = -math.inf
        self.decisions = 0
        self.limited: dict[str, int] = {}
        tol = hpa.gpuscale_tolerance
        self.tolerance = Tolerance(tol, tol)
        self.hpa = HpaController(
            self.policy.replicas.min, self.policy.replicas.max, permissive_behavior()
        )

    def start(self, run: Run) -> None:
        self.run = run
        _periodic(run, DECIDE_PHASE, self.policy.interval, self._decide)
        _periodic(run, HPA_PHASE, self.settings.sync_period, self._sync)

    def desired(self) -> int | None:
        """What the last decision served (the HPA turns it into the scale at its next sync)."""
        return None if self.value is None else int(self.value)

    def _decide(self) -> None:
        run = self.run
        now = run.engine.now
        store = run.metrics
        values: dict[str, float | None] = {}
        for m in self.policy.metrics:
            values[m.name] = metric_value(store, m, now)
            for key, query in metric_inputs(m)[1:]:
                values[key] = query_value(store, query, now)[1]
        snapshot = Snapshot(
            values, run.spec_replicas, run.ready_replicas, unschedulable=len(run.unschedulable)
        )
        decision, self.state = decide(self.policy, snapshot, self.state, now)
        self.decisions += 1
        if decision.limited_by:
            self.limited[decision.limited_by] = self.limited.get(decision.limited_by, 0) + 1
        self.value = float(decision.desired_replicas)
        self.value_time = now

    def _sync(self) -> None:
        run = self.run
        now = run.engine.now
        proposal: int | None = None
        if self.value is not None and now - self.value_time <= self.settings.stale_after:
            proposal = external_per_pod_replicas(
                run.status_replicas, self.value, 1.0, self.tolerance
            )
        run.scale_to(self.hpa.reconcile(run.spec_replicas, proposal, now))


class HpaBaseline(ControllerDefaults):
    """Upstream HPA with a ``Pods`` metric (``AverageValue: target``) and default behavior."""

    def __init__(self, contender: HpaContender, hpa: HpaSettings, lo: int, hi: int) -> None:
        self.c = contender
        self.settings = hpa
        self.tolerance = Tolerance(hpa.tolerance, hpa.tolerance)
        self.hpa = HpaController(lo, hi)

    def start(self, run: Run) -> None:
        self.run = run
        _periodic(run, HPA_PHASE, self.settings.sync_period, self._sync)

    def _sync(self) -> None:
        run = self.run
        now = run.engine.now
        c = self.c
        values = _pod_values(run.metrics, c.metric, now, c.quantile, c.window)
        pods = [
            PodSample(phase, values.get(pod.id), deleting)  # type: ignore[arg-type]
            for pod, phase, deleting in run.pod_phases()
        ]
        try:
            proposal: int | None = pods_metric_replicas(
                run.spec_replicas, pods, c.target, self.tolerance
            )
        except NoMetrics:
            proposal = None
        run.scale_to(self.hpa.reconcile(run.spec_replicas, proposal, now))


class KedaBaseline(ControllerDefaults):
    """KEDA: the HPA on an External ``AverageValue: threshold`` metric (the query's value), and
    the operator's loop every ``pollingInterval`` that activates from zero and, with
    ``minReplicaCount: 0``, scales to zero ``cooldownPeriod`` after the last active poll."""

    def __init__(self, contender: KedaContender, hpa: HpaSettings, lo: int, hi: int) -> None:
        self.c = contender
        self.settings = hpa
        self.min_count = lo
        self.tolerance = Tolerance(hpa.tolerance, hpa.tolerance)
        self.hpa = HpaController(max(1, lo), hi)
        self.last_active: float | None = None

    def start(self, run: Run) -> None:
        self.run = run
        _periodic(run, HPA_PHASE, self.settings.sync_period, self._sync)
        _periodic(run, KEDA_PHASE, self.c.polling_interval, self._poll)

    def _value(self) -> float | None:
        c = self.c
        return _sum_value(self.run.metrics, c.metric, self.run.engine.now, c.quantile, c.window)

    def _sync(self) -> None:
        run = self.run
        value = self._value()
        proposal = None
        if value is not None:
            proposal = external_per_pod_replicas(
                run.status_replicas, value, self.c.threshold, self.tolerance
            )
        run.scale_to(self.hpa.reconcile(run.spec_replicas, proposal, run.engine.now))

    def _poll(self) -> None:
        run = self.run
        now = run.engine.now
        value = self._value()
        active = value is not None and value > self.c.activation_threshold
        if active:
            if run.spec_replicas == 0:
                run.scale_to(max(1, self.min_count))
            self.last_active = now
        elif run.spec_replicas > 0 and self.min_count == 0:
            last = self.last_active
            if last is None or last + self.c.cooldown_period < now:
                run.scale_to(0)


class KpaBaseline(ControllerDefaults):
    """Knative KPA: per-second concurrency buckets, a decision every 2 s, written directly."""

    needs_concurrency = True

    def __init__(self, contender: KpaContender, lo: int, hi: int) -> None:
        self.spec = KpaSpec(
            target=contender.target,
            target_utilization=contender.target_utilization,
            panic_threshold=contender.panic_threshold,
            max_scale_up_rate=contender.max_scale_up_rate,
            max_scale_down_rate=contender.max_scale_down_rate,
            stable_window=contender.stable_window,
            panic_window_percentage=contender.panic_window_percentage,
        )
        self.lo, self.hi = lo, hi
        self.windows = ConcurrencyWindows(self.spec.stable_window)
        self.panic_seconds = 0.0
        self._last_area = 0.0

    def start(self, run: Run) -> None:
        self.run = run
        self.decider = KpaDecider(self.spec, run.ready_replicas, run.engine.now)
        _periodic(run, 1.0, 1.0, self._collect)
        _periodic(run, TICK, TICK, self._tick)

    def _collect(self) -> None:
        run = self.run
        area = run.concurrency_area()
        self.windows.record(area - self._last_area)
        self._last_area = area

    def _tick(self) -> None:
        run = self.run
        now = run.engine.now
        averages = self.windows.averages(self.spec.panic_window)
        if averages is None:
            return
        was = self.decider.panicking
        desired = self.decider.scale(averages[0], averages[1], run.ready_replicas, now)
        if was or self.decider.panicking:
            self.panic_seconds += TICK
        run.scale_to(min(max(desired, self.lo), self.hi))


class FixedReplicas(ControllerDefaults):
    def __init__(self, replicas: int) -> None:
        self.replicas = replicas

    def start(self, run: Run) -> None:
        run.scale_to(self.replicas)


def controller_for(
    contender: Contender, hpa: HpaSettings, service_min: int, service_max: int
) -> Controller:
    if isinstance(contender, GpuscaleContender):
        return GpuscaleController(contender, hpa)
    if isinstance(contender, FixedContender):
        return FixedReplicas(contender.replicas)
    lo = service_min if contender.min_replicas is None else contender.min_replicas
    hi = service_max if contender.max_replicas is None else contender.max_replicas
    if isinstance(contender, HpaContender):
        return HpaBaseline(contender, hpa, lo, hi)
    if isinstance(contender, KedaContender):
        return KedaBaseline(contender, hpa, lo, hi)
    return KpaBaseline(contender, lo, hi)
