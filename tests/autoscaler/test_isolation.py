"""Policies never share decision state: N tenants ticked together decide as each would alone.

The controller is driven directly (no scheduler, no API server): a fake source holds the
entries, a fake Prometheus answers each query from a table, and the clock is a number the test
sets. So each tick's decision is a pure function of that policy's own history, which is what
the metamorphic property compares.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoscaler.controller import Controller
from autoscaler.ops import ControllerMetrics
from autoscaler.policy_source import PolicyEntry
from autoscaler.prometheus import Missing, QueryResult
from autoscaler.store import DecisionStore, Published
from policies.schema import (
    ArrivalRateMetric,
    Behavior,
    Burst,
    Forecast,
    LatencyMetric,
    LatencyTarget,
    Metric,
    QueueDepthMetric,
    ReplicaBounds,
    ScalingPolicy,
    TargetRef,
)
from tests.policies.test_parse import scaling_rules


class _Source:
    def __init__(self) -> None:
        self.entries: dict[str, PolicyEntry] = {}


class _Targets:
    def __init__(self) -> None:
        self.current: dict[tuple[str, str], int] = {}

    async def replicas(self, api_version: str, kind: str, namespace: str, name: str) -> int:
        return self.current[(namespace, name)]


class _Prometheus:
    """Answers each query from ``values``; a query with no value is missing."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    async def query(self, promql: str, tenant: str = "") -> QueryResult:
        value = self.values.get(promql)
        return Missing("no series") if value is None else value


class _Follower:
    is_leader = False


class _Feedback:
    def forget(self, key: str) -> None:
        pass


class _NoTimer:
    """The test calls ``tick`` itself; the controller's own timer stays idle."""

    def schedule(self, key: str, interval: float) -> None:
        pass

    def cancel(self, key: str) -> None:
        pass


@dataclass
class Harness:
    clock: list[float] = field(default_factory=lambda: [1000.0])
    source: _Source = field(default_factory=_Source)
    targets: _Targets = field(default_factory=_Targets)
    prometheus: _Prometheus = field(default_factory=_Prometheus)
    controller: Controller = field(init=False)

    def __post_init__(self) -> None:
        now: Callable[[], float] = lambda: self.clock[0]  # noqa: E731
        self.controller = Controller(
            core_api=None,
            targets=self.targets,  # type: ignore[arg-type]
            querier=self.prometheus,
            source=self.source,  # type: ignore[arg-type]
            store=DecisionStore(),
            metrics=ControllerMetrics(),
            leadership=_Follower(),
            feedback=_Feedback(),  # type: ignore[arg-type]
            hpas=None,
            monotonic=now,
            wall=now,
        )
        self.controller.scheduler = _NoTimer()  # type: ignore[assignment]

    def put(self, policy: ScalingPolicy) -> None:
        entry = _entry(policy)
        self.source.entries[policy.key] = entry
        self.controller.on_policy_change(policy.key, entry)

    def delete(self, key: str) -> None:
        del self.source.entries[key]
        self.controller.on_policy_change(key, None)

    async def tick(
        self, policy: ScalingPolicy, now: float, load: Mapping[str, float], current: int
    ) -> Published:
        self.clock[0] = now
        self.targets.current[(policy.namespace, policy.target.name)] = current
        self.prometheus.values.update(load)
        await self.controller.tick(policy.key)
        published = self.controller.store.get(policy.namespace, policy.name)
        assert published is not None
        return published


def _entry(policy: ScalingPolicy) -> PolicyEntry:
    return PolicyEntry(
        key=policy.key,
        namespace=policy.namespace,
        name=policy.name,
        uid=f"uid-{policy.key}",
        resource_version="1",
        configmap={},
        policy=policy,
    )


def _policy(namespace: str, *metrics: Metric, **overrides: Any) -> ScalingPolicy:
    return replace(
        ScalingPolicy(
            namespace=namespace,
            name="chat",
            target=TargetRef("apps/v1", "Deployment", "chat"),
            replicas=ReplicaBounds(1, 32),
            metrics=metrics,
        ),
        **overrides,
    )


async def test_a_quiet_tenant_is_not_scaled_by_a_bursting_one() -> None:
    """Regression: the tick loop rebound ``key`` to the last metric's name, so every policy
    whose last metric was called ``queue`` shared one stabilization window; a team at 0.5
    requests waiting was served the other team's burst."""
    quiet = _policy("team-a", QueueDepthMetric("queue", 'sum(q{namespace="team-a"})', 4.0))
    busy = _policy("team-b", QueueDepthMetric("queue", 'sum(q{namespace="team-b"})', 4.0))
    h = Harness()
    h.put(quiet)
    h.put(busy)
    b = await h.tick(busy, 1000.0, {'sum(q{namespace="team-b"})': 72.0}, current=16)
    a = await h.tick(quiet, 1001.0, {'sum(q{namespace="team-a"})': 0.5}, current=2)
    assert b.replicas == 18
    assert a.replicas == 1
    runtime = h.controller.runtime
    assert set(runtime) == {quiet.key, busy.key}
    assert runtime[quiet.key].last_desired == 1 and runtime[busy.key].last_desired == 18
    assert h.controller.policy_states()["Active"] == 2
    h.delete(busy.key)
    assert set(runtime) == {quiet.key}


# --- the metamorphic property -------------------------------------------------------------------

NAMESPACES = ("a", "b", "c")
METRIC_NAMES = ("queue", "latency", "load")
seconds = st.integers(1, 600).map(float)


@st.composite
def tenant_policies(draw: st.DrawFn, namespace: str) -> ScalingPolicy:
    """A policy whose metric names overlap other tenants' (they copy the same examples) and
    whose queries are its own (the namespace is in the text)."""
    names = draw(st.lists(st.sampled_from(METRIC_NAMES), min_size=1, max_size=3, unique=True))
    metrics: list[Metric] = []
    for name in names:
        query = f'{name}{{namespace="{namespace}"}}'
        kind = draw(st.sampled_from(("queueDepth", "latency", "arrivalRate")))
        if kind == "queueDepth":
            metrics.append(QueueDepthMetric(name, query, draw(st.floats(0.5, 10))))
        elif kind == "latency":
            metrics.append(LatencyMetric(name, query, draw(st.floats(0.1, 5))))
        else:
            target = LatencyTarget(draw(st.floats(0.5, 0.99)), draw(st.floats(0.5, 5)))
            metrics.append(ArrivalRateMetric(name, query, draw(st.floats(0.5, 10)), target))
    low = draw(st.integers(1, 3))
    holt = draw(st.booleans())
    return _policy(
        namespace,
        *metrics,
        replicas=ReplicaBounds(low, draw(st.integers(low, 40))),
        interval=draw(st.sampled_from((5.0, 15.0, 30.0))),
        behavior=Behavior(draw(scaling_rules), draw(scaling_rules)),
        forecast=Forecast("holt", draw(st.floats(0.05, 1)), draw(st.floats(0.05, 1)))
        if holt
        else Forecast(),
        burst=draw(st.none() | st.builds(Burst, seconds, st.floats(0.5, 1.0))),
    )


@dataclass(frozen=True)
class Step:
    kind: str  # "tick", "edit", "delete"
    namespace: str
    dt: float = 0.0
    loads: tuple[tuple[str, float | None], ...] = ()
    current: int = 1
    policy: ScalingPolicy | None = None


@st.composite
def histories(draw: st.DrawFn) -> tuple[dict[str, ScalingPolicy], list[Step]]:
    tenants = draw(st.lists(st.sampled_from(NAMESPACES), min_size=2, max_size=3, unique=True))
    first = {ns: draw(tenant_policies(ns)) for ns in tenants}
    steps: list[Step] = []
    for _ in range(draw(st.integers(4, 30))):
        ns = draw(st.sampled_from(tenants))
        kind = draw(st.sampled_from(("tick",) * 6 + ("edit", "delete")))
        if kind == "tick":
            loads = tuple((name, draw(st.none() | st.floats(0, 200))) for name in METRIC_NAMES)
            steps.append(Step("tick", ns, draw(st.floats(0, 45)), loads, draw(st.integers(1, 40))))
        elif kind == "edit":
            steps.append(Step("edit", ns, policy=draw(tenant_policies(ns))))
        else:
            steps.append(Step("delete", ns))
    return first, steps


def _queries(namespace: str, loads: tuple[tuple[str, float | None], ...]) -> dict[str, float]:
    return {f'{name}{{namespace="{namespace}"}}': v for name, v in loads if v is not None}


async def _replay(
    first: Mapping[str, ScalingPolicy], steps: list[Step], only: str | None
) -> dict[str, list[tuple[Published, Any]]]:
    """Run ``steps`` (those of tenant ``only`` when given) on one controller; per tenant, what
    each of its ticks published and the state it kept."""
    h = Harness()
    live: dict[str, ScalingPolicy] = {}
    for ns, policy in first.items():
        if only in (None, ns):
            live[ns] = policy
            h.put(policy)
    seen: dict[str, list[tuple[Published, Any]]] = {ns: [] for ns in first}
    now = 1000.0
    for step in steps:
        now += step.dt  # every replay advances the clock the same way
        if only not in (None, step.namespace):
            continue
        ns = step.namespace
        if step.kind == "delete":
            if ns in live:
                h.delete(live.pop(ns).key)
        elif step.kind == "edit":
            assert step.policy is not None
            live[ns] = step.policy
            h.put(step.policy)
        elif ns in live:
            # Missing queries stay missing: clear the tenant's previous answers first.
            for name in METRIC_NAMES:
                h.prometheus.values.pop(f'{name}{{namespace="{ns}"}}', None)
            published = await h.tick(live[ns], now, _queries(ns, step.loads), step.current)
            seen[ns].append((published, h.controller.runtime[live[ns].key].state))
    return seen


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(histories())
async def test_tenants_decide_exactly_as_they_would_alone(
    history: tuple[dict[str, ScalingPolicy], list[Step]],
) -> None:
    first, steps = history
    together = await _replay(first, steps, only=None)
    for ns in first:
        alone = await _replay(first, steps, only=ns)
        assert together[ns] == alone[ns], ns


@pytest.mark.parametrize("deleted_last", [False, True])
async def test_deleting_a_policy_drops_its_state_and_series(deleted_last: bool) -> None:
    a = _policy("a", QueueDepthMetric("queue", 'q{namespace="a"}', 4.0))
    b = _policy("b", QueueDepthMetric("queue", 'q{namespace="b"}', 4.0))
    h = Harness()
    h.put(a)
    h.put(b)
    await h.tick(a, 1000.0, {'q{namespace="a"}': 40.0}, current=1)
    await h.tick(b, 1000.0, {'q{namespace="b"}': 4.0}, current=1)
    gone, kept = (b, a) if deleted_last else (a, b)
    h.delete(gone.key)
    assert set(h.controller.runtime) == {kept.key}
    assert h.controller.store.get(gone.namespace, gone.name) is None
    assert h.controller.store.get(kept.namespace, kept.name) is not None
    samples = {
        s.labels["namespace"]
        for family in h.controller.metrics.registry.collect()
        for s in family.samples
        if "namespace" in s.labels
    }
    assert gone.namespace not in samples and kept.namespace in samples


class _HeldPrometheus(_Prometheus):
    """Holds every query until ``release`` is set, so a test can act while a tick awaits it."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = asyncio.Event()
        self.release = asyncio.Event()

    async def query(self, promql: str, tenant: str = "") -> QueryResult:
        self.asked.set()
        await self.release.wait()
        return await super().query(promql, tenant)


@pytest.mark.parametrize("recreated", [False, True])
async def test_a_policy_deleted_while_its_tick_reads_metrics_stays_unpublished(
    recreated: bool,
) -> None:
    """The deletion removes the served value and the HPA; a tick already waiting on Prometheus
    must not publish after it, or the stale value is served with no later tick to remove it. A
    new ConfigMap of the same name (another uid) is another policy: its own tick decides."""
    a = _policy("a", QueueDepthMetric("queue", 'q{namespace="a"}', 4.0))
    h = Harness(prometheus=_HeldPrometheus())
    held = h.prometheus
    assert isinstance(held, _HeldPrometheus)
    h.put(a)
    h.targets.current[(a.namespace, a.target.name)] = 1
    held.values['q{namespace="a"}'] = 40.0
    tick = asyncio.create_task(h.controller.tick(a.key))
    await held.asked.wait()
    h.delete(a.key)
    if recreated:
        h.source.entries[a.key] = replace(_entry(a), uid="uid-of-the-new-configmap")
    held.release.set()
    await tick
    assert h.controller.store.get(a.namespace, a.name) is None
    assert a.key not in h.controller.runtime
    samples = {
        s.labels["namespace"]
        for family in h.controller.metrics.registry.collect()
        for s in family.samples
        if "namespace" in s.labels
    }
    assert a.namespace not in samples
