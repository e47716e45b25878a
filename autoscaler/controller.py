"""The per-policy work: read metrics and the target's scale, ``decide()``, publish, report.

Every replica runs ticks and publishes the same counts (the external metrics API may be served
by any of them). Only the leader writes to the API server: HPAs, Events, status annotations.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from autoscaler.deletion_costs import DeletionCosts
from autoscaler.feedback import (
    STATUS_ANNOTATION,
    ConfigMapRef,
    Feedback,
    PolicyStatus,
    VariantStatus,
)
from autoscaler.hpa import HpaReconciler, NotOurs
from autoscaler.ops import ControllerMetrics
from autoscaler.pending import UnschedulablePods
from autoscaler.policy_source import PolicyEntry, PolicySource
from autoscaler.prometheus import Missing, QueryResult
from autoscaler.states import POLICY_STATES, PolicyState
from autoscaler.store import DecisionStore, Published
from autoscaler.targets import TargetError, TargetReplicas
from autoscaler.ticks import Ticker
from policies.decide import decide
from policies.decide_types import Decision, Snapshot, State
from policies.metrics import metric_inputs, metric_target
from policies.schema import ScalingPolicy
from policies.variants import (
    HeldLimit,
    MixDecision,
    MixHistory,
    capacity_limits,
    decide_mix,
    observe,
    shared_metric,
    stabilize_mix,
    variant_policy,
)
from runtime.kube import KubeError, metadata

log = logging.getLogger(__name__)


class Querier(Protocol):
    async def query(self, promql: str, tenant: str = "") -> QueryResult: ...


class Leadership(Protocol):
    @property
    def is_leader(self) -> bool: ...


def status_for(
    entry: PolicyEntry, decision: Decision | None, missing: Mapping[str, str]
) -> PolicyStatus:
    """The annotation content for the latest tick (or for an invalid policy with none)."""
    errors = tuple(f"{e.path}: {e.message}" for e in entry.error.errors) if entry.error else ()
    if decision is None:
        return PolicyStatus(
            state="Invalid",
            reason="policy is invalid and no earlier version was valid; nothing runs",
            errors=errors,
        )
    reason = decision.reason
    unreachable = [p for p in decision.proposals if p.unreachable is not None]
    if unreachable:
        notes = "; ".join(f"{p.metric}: {p.unreachable}" for p in unreachable)
        reason += f"; SLO unreachable: {notes}"
    pending = decision.unschedulable
    base = PolicyStatus(
        state="CapacityLimited" if pending > 0 else "Active",
        reason=f"{_pods(pending)} of the target unschedulable: {reason}" if pending else reason,
        desired_replicas=decision.desired_replicas,
        current_replicas=decision.current_replicas,
        winner=decision.winner,
        metrics_missing=decision.metrics_missing,
        unschedulable=pending,
        slo_unreachable=tuple(p.metric for p in unreachable),
    )
    if entry.error is not None:
        return replace(
            base,
            state="Invalid",
            reason=(
                f"latest version is invalid; version {entry.good_resource_version} keeps running:"
                f" {decision.reason}"
            ),
            errors=errors,
            running_resource_version=entry.good_resource_version,
        )
    if decision.metrics_missing and decision.winner is None:
        why = "; ".join(f"{name}: {reason}" for name, reason in missing.items())
        reason = f"{decision.reason} ({why})" if why else decision.reason
        return replace(base, state="MetricsUnavailable", reason=reason)
    return base


def variants_status(
    policy: ScalingPolicy,
    mix: MixDecision | None,
    desired: Mapping[str, int],
    current: Mapping[str, int],
    pending: Mapping[str, int],
    room: Mapping[str, int],
    missing: Mapping[str, str],
) -> PolicyStatus:
    """The annotation for a variants policy: the mix, and what bounds it."""
    rows = tuple(VariantStatus(v, desired[v], current[v], pending.get(v, 0)) for v in desired)
    head = ", ".join(f"{v} {n}" for v, n in desired.items())
    base = PolicyStatus(
        state="Active",
        reason="",
        desired_replicas=sum(desired.values()),
        current_replicas=sum(current.values()),
        winner=None if mix is None else shared_metric(policy).name,
        metrics_missing=tuple(missing),
        unschedulable=sum(pending.values()),
        variants=rows,
    )
    if mix is None:
        why = "; ".join(f"{k}: {v}" for k, v in missing.items())
        return replace(base, state="MetricsUnavailable", reason=f"holding the mix {head} ({why})")
    lines = [w for w in mix.why if "split by capacity" in w or w.startswith("saturated")]
    held = [
        f"{v.name} held at {desired[v.name]} by the scale-down window (the mix says {v.replicas})"
        for v in mix.variants
        if desired[v.name] > v.replicas
    ]
    reason = f"mix {head}: " + "; ".join(lines + held)
    if room:
        bounded = ", ".join(
            f"{v} at most {n}" + (f" ({pending[v]} unschedulable)" if pending.get(v) else "")
            for v, n in room.items()
        )
        return replace(
            base, state="CapacityLimited", reason=f"no room for more: {bounded}; {reason}"
        )
    return replace(base, reason=reason)


def _pods(n: int) -> str:
    return f"{n} pod{'s' if n != 1 else ''}"


@dataclass(slots=True)
class PolicyRuntime:
    """What one policy carries between ticks, in memory."""

    state: State = field(default_factory=State)
    last_desired: int | None = None
    target_error: bool = False
    """The last tick could not read the target's replicas (state ``TargetUnavailable``)."""
    metrics: tuple[tuple[str, str], ...] = ()
    """``(name, type)`` of the policy's metrics, to drop their series when it goes away."""
    series: _Series | None = None
    """The policy's metric children, looked up once (``labels()`` costs ~10 µs a call)."""
    unschedulable: int = 0
    """The target's unschedulable pods at the last tick (state ``CapacityLimited``)."""
    limits: dict[str, HeldLimit] = field(default_factory=dict)
    """With variants: the bounds learnt from unschedulable pods (``CapacityLimited`` too)."""
    mixes: MixHistory = ()
    """With variants: the recent mixes, for the scale-down stabilization window."""


@dataclass(frozen=True, slots=True)
class _Series:
    """Per policy version: its metric children and its query plan, built once, not per tick."""

    decisions: Any
    desired: Any
    recommended: Any
    current: Any
    decision_time: Any
    winning: dict[str, Any]
    inputs: tuple[tuple[str, str], ...]
    """``(input name, PromQL)`` of every query the policy runs."""
    names: frozenset[str]
    """The metric names (an input of a multi-query metric is not one)."""
    values: dict[str, Any]
    """``gpuscale_metric_value`` children, dropped while their metric is missing."""

    @staticmethod
    def of(m: ControllerMetrics, namespace: str, name: str, policy: ScalingPolicy) -> _Series:
        return _Series(
            m.decisions.labels(namespace, name),
            m.desired.labels(namespace, name),
            m.recommended.labels(namespace, name),
            m.current.labels(namespace, name),
            m.decision_time.labels(namespace, name),
            {x.name: m.winning.labels(namespace, name, x.name) for x in policy.metrics},
            tuple(kq for x in policy.metrics for kq in metric_inputs(x)),
            frozenset(x.name for x in policy.metrics),
            {},
        )


class Controller:
    """The context object: every collaborator, injected, and the per-policy runtime."""

    def __init__(
        self,
        *,
        core_api: Any,
        targets: TargetReplicas,
        querier: Querier,
        source: PolicySource,
        store: DecisionStore,
        metrics: ControllerMetrics,
        leadership: Leadership,
        feedback: Feedback,
        hpas: HpaReconciler | None,
        monotonic: Callable[[], float],
        wall: Callable[[], float],
        hpa_resync: float = 300.0,
        pods: UnschedulablePods | None = None,
        costs: DeletionCosts | None = None,
    ) -> None:
        """``pods``: the unschedulable pods (``None``: never counted, as before #26);
        ``costs``: writes pod deletion costs for policies with ``deletionCost``."""
        self.core_api = core_api
        self.targets = targets
        self.querier = querier
        self.source = source
        self.store = store
        self.metrics = metrics
        self.leadership = leadership
        self.feedback = feedback
        self.hpas = hpas
        self.monotonic = monotonic
        self.wall = wall
        self.hpa_resync = hpa_resync
        self.pods = pods
        self.costs = costs
        self.runtime: dict[str, PolicyRuntime] = {}
        self.scheduler = Ticker(
            self.tick,
            on_start=metrics.tick_lateness.observe,
            on_skip=metrics.ticks_skipped.inc,
        )
        self._hpa_queue: asyncio.Queue[str] = asyncio.Queue()
        self._hpa_pending: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()

    # --- policy changes -------------------------------------------------------------------

    def on_policy_change(self, key: str, entry: PolicyEntry | None) -> None:
        """Called by the policy source on add/update/delete; takes effect within one interval."""
        if entry is None:
            self.scheduler.cancel(key)
            runtime = self.runtime.pop(key, None)
            namespace, name = key.split("/", 1)
            self.store.remove(namespace, name)
            self.metrics.forget(namespace, name, runtime.metrics if runtime else ())
            self.feedback.forget(key)
            if self.costs is not None:
                self.costs.forget(key)
            self._enqueue_hpa(key)
            return
        if entry.policy is not None:
            runtime = self.runtime.setdefault(key, PolicyRuntime())
            wanted = tuple((m.name, m.type) for m in entry.policy.metrics)
            gone = tuple(m for m in runtime.metrics if m not in wanted)
            self.metrics.forget_metrics(entry.namespace, entry.name, gone)
            runtime.metrics, runtime.series = wanted, None
            variants = entry.policy.variants
            names = frozenset(t.name for t in variants.targets) if variants else frozenset({""})
            self.store.retain(entry.namespace, entry.name, names)
            runtime.limits = {k: v for k, v in runtime.limits.items() if k in names}
            for m in entry.policy.metrics:
                self.metrics.metric_target.labels(entry.namespace, entry.name, m.name, m.type).set(
                    metric_target(m)
                )
            self.scheduler.schedule(key, entry.policy.interval)
            self._enqueue_hpa(key)
        if entry.error is not None:
            self.metrics.errors.labels("policy_invalid").inc()
            if entry.policy is None:
                self._spawn(self._report_invalid(entry))

    def on_leadership_change(self, leading: bool) -> None:
        self.metrics.is_leader.set(1 if leading else 0)
        if leading:
            for key in list(self.source.entries):
                self._enqueue_hpa(key)
                entry = self.source.entries[key]
                if entry.policy is None:
                    self._spawn(self._report_invalid(entry))

    def policy_states(self) -> dict[PolicyState, int]:
        """Policies by state, for ``gpuscale_policies`` (counted when scraped).

        The same states, by the same rules, as :func:`status_for` writes to the annotation.
        """
        counts: dict[PolicyState, int] = dict.fromkeys(POLICY_STATES, 0)
        for entry in self.source.entries.values():
            runtime = self.runtime.get(entry.key)
            if entry.error is not None:
                counts["Invalid"] += 1
            elif runtime is not None and runtime.target_error:
                counts["TargetUnavailable"] += 1
            elif runtime is None or runtime.last_desired is None:
                counts["Pending"] += 1
            elif self._unavailable(entry.key):
                counts["MetricsUnavailable"] += 1
            elif runtime.unschedulable > 0 or runtime.limits:
                counts["CapacityLimited"] += 1
            else:
                counts["Active"] += 1
        return counts

    def _unavailable(self, key: str) -> bool:
        namespace, name = key.split("/", 1)
        return any(p.note for p in self.store.of_policy(namespace, name))

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- ticks ----------------------------------------------------------------------------

    async def tick(self, key: str) -> None:
        entry = self.source.entries.get(key)
        if entry is None or entry.policy is None:
            return
        policy = entry.policy
        if policy.variants is not None:
            await self._tick_variants(entry, policy)
            return
        start = self.monotonic()
        ref = ConfigMapRef(entry.namespace, entry.name, entry.uid)
        try:
            current = await self._current_replicas(policy)  # a dict lookup, mostly
        except TargetError as exc:
            await self._target_failed(entry, ref, exc)
            return
        read = await self._read_policy_metrics(entry, policy)
        if read is None:
            return
        runtime, series, values, missing = read
        pending = 0
        if self.pods is not None:
            t = policy.target
            selector = self.targets.selector(t.kind, entry.namespace, t.name)
            pending = self.pods.count(entry.namespace, selector)
        runtime.unschedulable = pending
        snapshot = Snapshot(values, current, unschedulable=pending)
        decision, runtime.state = decide(policy, snapshot, runtime.state, self.monotonic())
        self._publish(entry, policy, series, decision, missing)
        self.metrics.cycle_duration.observe(self.monotonic() - start)
        runtime.last_desired = decision.desired_replicas
        if self.leadership.is_leader:
            await self._report(entry, ref, decision, missing)
            if policy.deletion_cost is not None and self.costs is not None:
                await self.costs.update(key, entry.namespace, policy.deletion_cost)

    def _still_current(self, entry: PolicyEntry) -> bool:
        """Whether ``entry``'s ConfigMap still exists (the same object: same uid) after a tick
        awaited the API or Prometheus. A tick of a policy deleted meanwhile must publish
        nothing: the deletion already removed its served value and its HPA, and no later tick
        would remove a value published after it."""
        now = self.source.entries.get(entry.key)
        return now is not None and now.uid == entry.uid

    async def _target_failed(self, entry: PolicyEntry, ref: ConfigMapRef, exc: TargetError) -> None:
        """Reading the target failed: mark and report it, unless the policy went meanwhile."""
        if self._still_current(entry):
            self.runtime.setdefault(entry.key, PolicyRuntime()).target_error = True
            await self._target_unavailable(entry, ref, exc)

    async def _read_policy_metrics(
        self, entry: PolicyEntry, policy: ScalingPolicy
    ) -> tuple[PolicyRuntime, _Series, dict[str, float | None], dict[str, str]] | None:
        """The policy's runtime, its series (resolved once per policy version) and metric
        values; the target was read, so a past target error is cleared. ``None`` when the
        policy was deleted while its target or its metrics were read: the tick ends there."""
        if not self._still_current(entry):
            return None
        runtime = self.runtime.setdefault(entry.key, PolicyRuntime())
        series = runtime.series
        if series is None:
            series = runtime.series = _Series.of(self.metrics, entry.namespace, entry.name, policy)
        read = await self._read_metrics(entry, series)
        if read is None:
            return None
        runtime.target_error = False
        return runtime, series, *read

    async def _read_metrics(
        self, entry: PolicyEntry, series: _Series
    ) -> tuple[dict[str, float | None], dict[str, str]] | None:
        """Run the policy's queries; values (``None``: missing) and why each missing one is.
        ``None`` when the policy was deleted while they ran (its series were forgotten: none is
        set again)."""
        inputs = series.inputs
        tenant = entry.namespace
        if len(inputs) == 1:
            results: list[QueryResult] = [await self.querier.query(inputs[0][1], tenant)]
        else:
            queries = (self.querier.query(q, tenant) for _, q in inputs)
            results = list(await asyncio.gather(*queries))
        if not self._still_current(entry):
            return None
        values: dict[str, float | None] = {}
        missing: dict[str, str] = {}
        gauge = self.metrics.metric_value
        for (input_name, _), result in zip(inputs, results, strict=True):
            if isinstance(result, Missing):
                values[input_name] = None
                missing[input_name] = result.reason
                if input_name in series.names:
                    series.values.pop(input_name, None)
                    _remove_label(gauge, entry.namespace, entry.name, input_name)
            else:
                values[input_name] = result
                if input_name in series.names:
                    child = series.values.get(input_name)
                    if child is None:
                        child = gauge.labels(entry.namespace, entry.name, input_name)
                        series.values[input_name] = child
                    child.set(result)
        return values, missing

    # --- variants -------------------------------------------------------------------------

    async def _tick_variants(self, entry: PolicyEntry, policy: ScalingPolicy) -> None:
        """One decision for all variants (:func:`policies.variants.decide_mix`), one record each.

        Room on the cluster: what the scheduler says (:func:`capacity_limits` from each
        variant's unschedulable pods); a missing metric holds every variant's count.
        """
        assert policy.variants is not None
        start = self.monotonic()
        ref = ConfigMapRef(entry.namespace, entry.name, entry.uid)
        current: dict[str, int] = {}
        try:
            for t in policy.variants.targets:
                r = t.target
                current[t.name] = await self.targets.replicas(
                    r.api_version, r.kind, policy.namespace, r.name
                )
        except TargetError as exc:
            await self._target_failed(entry, ref, exc)
            return
        read = await self._read_policy_metrics(entry, policy)
        if read is None:
            return
        runtime, series, values, missing = read
        pending = dict.fromkeys(current, 0)
        if self.pods is not None:
            for t in policy.variants.targets:
                selector = self.targets.selector(t.target.kind, entry.namespace, t.target.name)
                pending[t.name] = self.pods.count(entry.namespace, selector)
        runtime.unschedulable = sum(pending.values())
        room, runtime.limits = capacity_limits(
            current, pending, runtime.limits, self.monotonic(), policy.cold_start
        )
        observed = observe(policy, values, room or None)
        mix = decide_mix(variant_policy(policy), observed) if observed is not None else None
        counts = None
        if mix is not None:
            window = policy.behavior.scale_down.stabilization_window
            counts, runtime.mixes = stabilize_mix(
                mix.replicas(), room, runtime.mixes, self.monotonic(), window
            )
        desired = self._publish_variants(entry, series, counts, current, missing)
        self.metrics.cycle_duration.observe(self.monotonic() - start)
        runtime.last_desired = sum(desired.values())
        if self.leadership.is_leader:
            status = variants_status(policy, mix, desired, current, pending, room, missing)
            await self._report_variants(entry, ref, status, current, desired)

    def _publish_variants(
        self,
        entry: PolicyEntry,
        series: _Series,
        counts: Mapping[str, int] | None,
        current: Mapping[str, int],
        missing: Mapping[str, str],
    ) -> dict[str, int]:
        """One record per variant; without a mix (a metric missing) each holds its count and
        stops being fresh, so the HPAs hold after ``--stale-after``."""
        now = self.wall()
        ns, name = entry.namespace, entry.name
        note = "; ".join(f"{k}: {v}" for k, v in missing.items())
        desired: dict[str, int] = {}
        for variant, running in current.items():
            old = self.store.get(ns, name, variant)
            if counts is not None:
                n, fresh_at, why = counts[variant], now, ""
            else:
                n = old.replicas if old is not None else running
                fresh_at, why = (old.fresh_at if old is not None else now), note
            desired[variant] = n
            self.store.put(Published(ns, name, n, now, fresh_at, why, variant=variant))
        total = sum(desired.values())
        series.decisions.inc()
        series.desired.set(total)
        series.recommended.set(total)
        series.current.set(sum(current.values()))
        series.decision_time.set(now)
        for child in series.winning.values():
            child.set(1 if counts is not None else 0)  # its only metric (the parser refuses others)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "decision",
                extra={"policy": entry.key, "desired": desired, "current": dict(current)},
            )
        return desired

    async def _report_variants(
        self,
        entry: PolicyEntry,
        ref: ConfigMapRef,
        status: PolicyStatus,
        current: Mapping[str, int],
        desired: Mapping[str, int],
    ) -> None:
        try:
            await self._write_status(entry, ref, status)
            if dict(current) != dict(desired):
                moves = ", ".join(f"{v} {current[v]} → {desired[v]}" for v in desired)
                await self.feedback.event(
                    ref,
                    kind="scale",
                    type_="Normal",
                    reason="DesiredReplicas",
                    message=f"desired replicas {moves}: {status.reason}",
                    dedup=",".join(f"{v}={n}" for v, n in desired.items()),
                )
            await self._capacity_event(
                ref,
                status.state == "CapacityLimited",
                status.reason,
                f"every variant may grow again: {status.reason}",
            )
        except KubeError as exc:
            self.metrics.errors.labels("kube_api").inc()
            log.warning("status not written", extra={"policy": entry.key, "error": str(exc)})

    async def _current_replicas(self, policy: ScalingPolicy) -> int:
        t = policy.target
        return await self.targets.replicas(t.api_version, t.kind, policy.namespace, t.name)

    def _publish(
        self,
        entry: PolicyEntry,
        policy: ScalingPolicy,
        series: _Series,
        decision: Decision,
        missing: Mapping[str, str],
    ) -> None:
        now = self.wall()
        blind = bool(decision.metrics_missing) and decision.winner is None
        fallback = not policy.on_metrics_unavailable.hold
        old = self.store.get(entry.namespace, entry.name)
        fresh_at = old.fresh_at if (blind and not fallback and old is not None) else now
        note = "; ".join(f"{k}: {v}" for k, v in missing.items()) if blind else ""
        self.store.put(
            Published(entry.namespace, entry.name, decision.desired_replicas, now, fresh_at, note)
        )
        series.decisions.inc()
        series.desired.set(decision.desired_replicas)
        series.recommended.set(decision.recommended)
        series.current.set(decision.current_replicas)
        series.decision_time.set(now)
        for name, child in series.winning.items():
            child.set(1 if name == decision.winner else 0)
        if not log.isEnabledFor(logging.DEBUG):
            return
        log.debug(
            "decision",
            extra={
                "policy": entry.key,
                "desired": decision.desired_replicas,
                "current": decision.current_replicas,
                "winner": decision.winner,
                "reason": decision.reason,
            },
        )

    async def _report(
        self,
        entry: PolicyEntry,
        ref: ConfigMapRef,
        decision: Decision,
        missing: Mapping[str, str],
    ) -> None:
        status = status_for(entry, decision, missing)
        try:
            await self._write_status(entry, ref, status)
            if decision.desired_replicas != decision.current_replicas:
                await self.feedback.event(
                    ref,
                    kind="scale",
                    type_="Normal",
                    reason="DesiredReplicas",
                    message=(
                        f"desired replicas {decision.current_replicas} → "
                        f"{decision.desired_replicas}: {decision.reason}"
                    ),
                    dedup=str(decision.desired_replicas),
                )
            if status.state == "MetricsUnavailable":
                await self.feedback.event(
                    ref,
                    kind="metrics",
                    type_="Warning",
                    reason="MetricsUnavailable",
                    message=status.reason,
                    dedup="missing:" + ",".join(sorted(missing)),
                )
            elif self.feedback.last(ref, "metrics") not in (None, "ok"):
                await self.feedback.event(
                    ref,
                    kind="metrics",
                    type_="Normal",
                    reason="MetricsAvailable",
                    message=f"metrics are back: {decision.reason}",
                    dedup="ok",
                )
            await self._capacity_event(
                ref,
                decision.unschedulable > 0,
                status.reason,
                f"no pod of the target is unschedulable any more: {decision.reason}",
            )
            if entry.error is not None:
                await self._invalid_event(entry, ref)
        except KubeError as exc:
            self.metrics.errors.labels("kube_api").inc()
            log.warning("status not written", extra={"policy": entry.key, "error": str(exc)})

    async def _capacity_event(
        self, ref: ConfigMapRef, limited: bool, limited_message: str, recovered_message: str
    ) -> None:
        """One Event when pods become unschedulable and one when none are left, not per tick."""
        if limited:
            await self.feedback.event(
                ref,
                kind="capacity",
                type_="Warning",
                reason="CapacityLimited",
                message=limited_message,
                dedup="limited",
            )
        elif self.feedback.last(ref, "capacity") not in (None, "ok"):
            await self.feedback.event(
                ref,
                kind="capacity",
                type_="Normal",
                reason="CapacityAvailable",
                message=recovered_message,
                dedup="ok",
            )

    async def _write_status(
        self, entry: PolicyEntry, ref: ConfigMapRef, status: PolicyStatus
    ) -> None:
        annotations = metadata(entry.configmap).get("annotations") or {}
        if await self.feedback.status(ref, status, annotations.get(STATUS_ANNOTATION)):
            log.info(
                "status written",
                extra={"policy": entry.key, "state": status.state, "reason": status.reason},
            )

    async def _invalid_event(self, entry: PolicyEntry, ref: ConfigMapRef) -> None:
        assert entry.error is not None
        keeps = (
            f"; version {entry.good_resource_version} keeps running"
            if entry.policy is not None
            else "; no valid version to run"
        )
        await self.feedback.event(
            ref,
            kind="invalid",
            type_="Warning",
            reason="InvalidPolicy",
            message=str(entry.error) + keeps,
            dedup=str(entry.error),
        )

    async def _report_invalid(self, entry: PolicyEntry) -> None:
        """An invalid policy with no good version has no ticks; report it once, now."""
        if not self.leadership.is_leader or entry.error is None:
            return
        ref = ConfigMapRef(entry.namespace, entry.name, entry.uid)
        try:
            await self._write_status(entry, ref, status_for(entry, None, {}))
            await self._invalid_event(entry, ref)
        except KubeError as exc:
            self.metrics.errors.labels("kube_api").inc()
            log.warning("status not written", extra={"policy": entry.key, "error": str(exc)})

    async def _target_unavailable(
        self, entry: PolicyEntry, ref: ConfigMapRef, error: BaseException
    ) -> None:
        self.metrics.errors.labels("target").inc()
        log.warning("target unavailable", extra={"policy": entry.key, "error": str(error)})
        if not self.leadership.is_leader:
            return
        status = PolicyStatus(state="TargetUnavailable", reason=str(error))
        try:
            await self._write_status(entry, ref, status)
            await self.feedback.event(
                ref, kind="target", type_="Warning", reason="TargetUnavailable", message=str(error)
            )
        except KubeError as exc:
            self.metrics.errors.labels("kube_api").inc()
            log.warning("status not written", extra={"policy": entry.key, "error": str(exc)})

    # --- HPAs -----------------------------------------------------------------------------

    def _enqueue_hpa(self, key: str) -> None:
        if self.hpas is None or key in self._hpa_pending:
            return
        self._hpa_pending.add(key)
        self._hpa_queue.put_nowait(key)

    async def run_hpa_worker(self) -> None:
        """Reconcile HPAs one policy at a time, while leading; resync all periodically."""
        if self.hpas is None:
            await asyncio.Event().wait()
            return
        resync_at = self.monotonic() + self.hpa_resync
        while True:
            try:
                async with asyncio.timeout(max(0.0, resync_at - self.monotonic())):
                    key = await self._hpa_queue.get()
            except TimeoutError:
                resync_at = self.monotonic() + self.hpa_resync
                for k in list(self.source.entries):
                    self._enqueue_hpa(k)
                continue
            self._hpa_pending.discard(key)
            if not self.leadership.is_leader:
                log.debug("hpa reconcile skipped: not leading", extra={"policy": key})
                continue
            log.debug("hpa reconcile", extra={"policy": key})
            await self._reconcile_hpa(key)

    async def _reconcile_hpa(self, key: str) -> None:
        assert self.hpas is not None
        entry = self.source.entries.get(key)
        namespace, name = key.split("/", 1)
        try:
            if entry is None:
                outcomes = await self.hpas.delete_all(namespace, name, None)
            elif entry.policy is None:
                return
            else:
                outcomes = await self.hpas.ensure_all(entry.policy, entry.uid)
            for outcome in outcomes:
                if outcome.action not in ("unchanged", "absent"):
                    log.info("hpa " + outcome.action, extra={"policy": key})
        except NotOurs as exc:
            self.metrics.errors.labels("hpa").inc()
            log.warning("hpa not ours", extra={"policy": key, "error": str(exc)})
            if entry is not None:
                ref = ConfigMapRef(entry.namespace, entry.name, entry.uid)
                await self.feedback.event(
                    ref, kind="hpa", type_="Warning", reason="HPANotOwned", message=str(exc)
                )
        except (KubeError, OSError, TimeoutError) as exc:
            self.metrics.errors.labels("hpa").inc()
            log.warning(
                "hpa reconcile failed; will retry", extra={"policy": key, "error": str(exc)}
            )
            self._spawn(self._retry_hpa(key))

    async def _retry_hpa(self, key: str) -> None:
        await asyncio.sleep(2.0)
        self._enqueue_hpa(key)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)


def _remove_label(gauge: Any, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        gauge.remove(*labels)
