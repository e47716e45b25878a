"""The controller's own health and metrics: ``/livez``, ``/readyz``, ``/metrics`` (plain HTTP).

Metric names are a contract with ``deploy/`` (alerts, dashboard) and are listed in
``autoscaler/README.md``. With ``--actuation=prometheus`` the gauge ``gpuscale_desired_replicas``
is the output another adapter serves to the HPA.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from autoscaler import states
from autoscaler.states import PolicyState, gauge_label
from runtime.ops import add_ops_routes

POLICY_STATES = tuple(gauge_label(s) for s in states.POLICY_STATES)
"""``state`` label values of ``gpuscale_policies``: the shared vocabulary, snake_cased."""


class ControllerMetrics:
    """All metrics in one registry of their own (tests and benchmarks run several controllers)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ns_policy = ("namespace", "policy")
        self.decisions = Counter(
            "gpuscale_decisions", "Decisions made, per policy.", ns_policy, registry=r
        )
        self.desired = Gauge(
            "gpuscale_desired_replicas",
            "Replicas the policy wants now (after behavior rules and bounds).",
            ns_policy,
            registry=r,
        )
        self.recommended = Gauge(
            "gpuscale_recommended_replicas",
            "Replicas the winning metric proposed, before behavior rules.",
            ns_policy,
            registry=r,
        )
        self.current = Gauge(
            "gpuscale_current_replicas",
            "Replicas the target had at the decision.",
            ns_policy,
            registry=r,
        )
        self.decision_time = Gauge(
            "gpuscale_decision_timestamp_seconds",
            "Unix time of the latest decision.",
            ns_policy,
            registry=r,
        )
        self.metric_value = Gauge(
            "gpuscale_metric_value",
            "Latest value of each policy metric (absent while missing).",
            (*ns_policy, "metric"),
            registry=r,
        )
        self.metric_target = Gauge(
            "gpuscale_metric_target",
            "Each metric's target: queueDepth per replica, latency SLO (s), arrivalRate"
            " service rate per replica (requests/s).",
            (*ns_policy, "metric", "type"),
            registry=r,
        )
        self.winning = Gauge(
            "gpuscale_winning_metric_info",
            "1 for the metric whose proposal won the latest decision.",
            (*ns_policy, "metric"),
            registry=r,
        )
        self.query_duration = Histogram(
            "gpuscale_prometheus_query_duration_seconds",
            "Time per Prometheus instant query, retries included.",
            ("outcome",),
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.errors = Counter("gpuscale_errors", "Errors by kind.", ("kind",), registry=r)
        self.policy_states: Callable[[], Mapping[PolicyState, int]] = lambda: dict.fromkeys(
            states.POLICY_STATES, 0
        )
        """Counted when scraped (the controller sets it), not on every change."""
        r.register(_PolicyStates(self))
        self.is_leader = Gauge(
            "gpuscale_is_leader", "1 while this replica holds the leader lease.", registry=r
        )
        self.cycle_duration = Histogram(
            "gpuscale_decision_duration_seconds",
            "Time for one policy's tick: queries, scale read, decide.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.tick_lateness = Histogram(
            "gpuscale_tick_lateness_seconds",
            "How long after its due time a policy's tick started (0 when on time); one tenant's"
            " slow queries must not make others late.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.ticks_skipped = Counter(
            "gpuscale_ticks_skipped",
            "Ticks not started because the policy's previous tick was still running.",
            registry=r,
        )
        self.is_leader.set(0)
        # Looked up once: ``labels()`` costs ~10 µs, and this runs for every query.
        self._query_children = {
            o: self.query_duration.labels(o) for o in ("ok", "missing", "error")
        }
        self._query_errors = self.errors.labels("prometheus")
        self._missing_metrics = self.errors.labels("metric_missing")

    def observe_query(self, seconds: float, outcome: str) -> None:
        self._query_children[outcome].observe(seconds)
        if outcome == "error":
            self._query_errors.inc()
        elif outcome == "missing":
            self._missing_metrics.inc()

    def forget(self, namespace: str, policy: str, metrics: tuple[tuple[str, str], ...]) -> None:
        """Drop a deleted policy's series so dashboards do not show ghosts."""
        for gauge in (self.desired, self.recommended, self.current, self.decision_time):
            _remove(gauge, namespace, policy)
        _remove(self.decisions, namespace, policy)
        self.forget_metrics(namespace, policy, metrics)

    def forget_metrics(
        self, namespace: str, policy: str, metrics: tuple[tuple[str, str], ...]
    ) -> None:
        """Drop the series of metrics a policy no longer has."""
        for metric, type_ in metrics:
            _remove(self.metric_value, namespace, policy, metric)
            _remove(self.winning, namespace, policy, metric)
            _remove(self.metric_target, namespace, policy, metric, type_)


class _PolicyStates(Collector):
    """``gpuscale_policies{state}``, computed at scrape time from the controller's view."""

    def __init__(self, metrics: ControllerMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("gpuscale_policies", "Policies by state.", labels=["state"])
        for state, count in self._metrics.policy_states().items():
            family.add_metric([gauge_label(state)], count)
        yield family

    def describe(self) -> Iterable[Metric]:
        yield GaugeMetricFamily("gpuscale_policies", "Policies by state.", labels=["state"])


def _remove(metric: Counter | Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)


def build_app(
    metrics: ControllerMetrics, *, ready: Callable[[], tuple[bool, str]]
) -> web.Application:
    """``ready()`` returns ``(ready, why not)``; ``/readyz`` answers 503 with the reason."""

    def live() -> tuple[bool, str]:
        return True, "ok\n"

    def readiness() -> tuple[bool, str]:
        ok, why = ready()
        return (True, "ok\n") if ok else (False, f"not ready: {why}\n")

    app = web.Application()
    add_ops_routes(
        app,
        live=live,
        ready=readiness,
        scrape=lambda: generate_latest(metrics.registry),
        healthz=True,
    )
    return app
