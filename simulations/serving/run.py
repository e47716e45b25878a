"""One run: a contender (a gpuscale policy or a baseline) against a scenario's workload.

The run owns the modelled world: the Deployment's ``spec.replicas``, its pods and their life
(Pending → scheduled onto GPUs → image pull → model load → Ready → draining → gone), the router,
the metrics pipeline and the clock. Autoscalers (:mod:`simulations.serving.contenders`) read what
they would read in a cluster (scraped metrics, pod phases, counts) and write ``spec.replicas``.

Pod life follows Kubernetes: a pod is ``Pending`` until scheduled and while its image is pulled
(the first pull on a node is slow, later ones use the cached image), ``Running`` but not Ready
while the model loads, and Ready when it can serve. Pods that cannot be placed stay Pending and
are retried whenever GPU memory is released and every ``startup.retry`` seconds. Scale-down picks
pods in the ReplicaSet controller's order (unscheduled, then scheduled but not running, then not
Ready, then, with ``service.deletionCost``, the lowest pod-deletion-cost, then the most recently
Ready); a Ready pod stops getting requests, finishes what it holds within
``terminationGracePeriod`` (what it still holds then is cut) and frees its GPU; without
``service.drainOnTermination`` what it holds is cut at once. Cut requests count as dropped and
as ``cut_by_scale_down``.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from extender.affinity import compile_required
from extender.objects import GpuNeed, Toleration
from policies.deletion_cost import cost as deletion_cost
from simulations.config.scenario import Scenario, ServiceSpec, ServiceTimeSpec, WorkloadSpec
from simulations.placement import openb
from simulations.serving import arrivals
from simulations.serving.arrivals import Workload
from simulations.serving.clock import LATE, Engine
from simulations.serving.cluster import Cluster, Device, Node, Placement, PodSpec
from simulations.serving.metrics import MetricStore
from simulations.serving.replicas import (
    DEFAULT_LATENCY_BUCKETS,
    ExponentialService,
    FixedService,
    LognormalService,
    Replica,
    RequestLog,
    Router,
    ServiceModel,
    TokenService,
)
from simulations.serving.vllm import BatchingReplica, EngineConfig, ServingLog

UNSCHEDULED, PULLING, LOADING, READY, DRAINING, GONE = range(6)
STATE_NAMES = ("Pending", "ContainerCreating", "Loading", "Ready", "Terminating", "Gone")


@dataclass(slots=True)
class Pod:
    id: int
    created: float
    state: int = UNSCHEDULED
    placement: Placement | None = None
    replica: Replica | BatchingReplica | None = None
    ready_at: float = math.nan
    scheduled_at: float = math.nan
    deletion_cost: int = 0
    """``controller.kubernetes.io/pod-deletion-cost`` as the controller writes it
    (:func:`policies.deletion_cost.cost`) from the requests the pod held at the last scrape
    (``service.deletionCost``)."""


class Controller(Protocol):
    """An autoscaler: schedules its own ticks on the run's engine and writes the scale.

    What it may use of the :class:`Run`: ``engine`` (the clock), ``metrics`` (scraped series),
    ``spec_replicas``, ``status_replicas``, ``ready_replicas``, ``unschedulable`` (the pods that
    found no room), :meth:`Run.pod_phases` and :meth:`Run.concurrency_area`; it writes the scale
    with :meth:`Run.scale_to`. The run asks it only for :meth:`desired`, for the timeline.
    """

    needs_concurrency: bool
    """Whether it reads :meth:`Run.concurrency_area` (tracking it costs every request a call)."""

    def start(self, run: Run) -> None: ...

    def desired(self) -> int | None:
        """The count it wants now, where that differs from what it wrote (``None``: as written)."""


# --------------------------------------------------------------------------- inputs


def service_model(service: ServiceSpec) -> ServiceModel:
    return service_model_of(service.service_time)


def service_model_of(st: ServiceTimeSpec) -> ServiceModel:
    if st.model == "fixed":
        return FixedService(st.seconds)
    if st.model == "exponential":
        return ExponentialService(st.mean)
    if st.model == "lognormal":
        return LognormalService(st.mean, st.sigma)
    return TokenService(st.prefill_rate, st.decode_rate, st.overhead)


def make_workload(
    spec: WorkloadSpec,
    duration: float | None,
    rng: np.random.Generator,
    range_query: arrivals.RangeQuery | None = None,
) -> Workload:
    """The request stream of a scenario for one seed."""
    prompt = arrivals.TokenDist(spec.prompt.dist, spec.prompt.mean, spec.prompt.sigma)
    generated = arrivals.TokenDist(spec.generated.dist, spec.generated.mean, spec.generated.sigma)
    horizon = duration if duration is not None else 3600.0
    if spec.type == "trace":
        trace = arrivals.read_trace(spec.path)
        w = arrivals.replay(trace, rng, speedup=spec.speedup, scale=spec.scale, jitter=spec.jitter)
    elif spec.type == "poisson":
        w = arrivals.poisson(spec.rate, horizon, rng, prompt, generated)
    elif spec.type == "diurnal":
        w = arrivals.diurnal(
            spec.mean,
            spec.amplitude,
            spec.period,
            horizon,
            rng,
            phase=spec.phase,
            noise=spec.noise,
            prompt=prompt,
            generated=generated,
        )
    elif spec.type == "bursts":
        w = arrivals.bursts(
            spec.base,
            spec.burst,
            spec.on,
            spec.off,
            horizon,
            rng,
            start=spec.start,
            prompt=prompt,
            generated=generated,
        )
    else:
        query = range_query or arrivals.prometheus_range_query(spec.url)
        points = query(spec.query, spec.range_start, spec.range_end, spec.step)
        w = arrivals.from_rate_series(
            points,
            spec.step,
            rng,
            speedup=spec.speedup,
            scale=spec.scale,
            prompt=prompt,
            generated=generated,
        )
    return w.until(duration) if duration is not None else w


_ALL_TOLERATED = (Toleration(operator="Exists"),)


def build_cluster(scenario: Scenario, rng: np.random.Generator) -> tuple[Cluster, int]:
    """The scenario's nodes with its background pods placed; also how many did not fit."""
    spec = scenario.cluster
    nodes: list[Node] = []
    for pool in spec.pools:
        for i in range(pool.count):
            labels = {"gpuscale.io/pool": pool.name, **pool.labels}
            if pool.model:
                labels["nvidia.com/gpu.product"] = pool.model
            nodes.append(
                Node(
                    f"{pool.name}-{i}",
                    pool.name,
                    pool.model,
                    [Device(k, pool.gpu_memory_mib) for k in range(pool.gpus)],
                    labels,
                    pool.taints,
                )
            )
    if spec.openb is not None:
        listed = openb.read_nodes(spec.openb.path)
        if spec.openb.count is not None:
            listed = listed[: spec.openb.count]
        default = spec.openb.gpu_memory_mib.get("default", 16384)
        for on in listed:
            if on.gpus <= 0:
                continue
            mem = spec.openb.gpu_memory_mib.get(on.model, default)
            labels = {"gpuscale.io/pool": "openb", "nvidia.com/gpu.product": on.model}
            nodes.append(
                Node(on.name, "openb", on.model, [Device(k, mem) for k in range(on.gpus)], labels)
            )
    cluster = Cluster(nodes, spec.scoring)
    bg = scenario.background
    unplaced = 0
    if bg.pods > 0:
        pods = [p for p in openb.read_pods(bg.path) if p.num_gpu > 0]
        whole = bg.gpu_memory_mib or max(
            (d.total_mib for n in nodes for d in n.devices), default=16384
        )
        picks = rng.choice(len(pods), size=min(bg.pods, len(pods)), replace=False)
        for k in sorted(int(x) for x in picks):
            p = pods[k]
            if p.num_gpu == 1 and p.gpu_milli < 1000:
                need = GpuNeed(1, max(1, p.gpu_milli * whole // 1000))
            else:
                need = GpuNeed(p.num_gpu, None)
            if not isinstance(cluster.schedule(PodSpec(need, _ALL_TOLERATED), rng), Placement):
                unplaced += 1
    return cluster, unplaced


# --------------------------------------------------------------------------- the run


@dataclass(slots=True)
class Timeline:
    time: list[float] = field(default_factory=list)
    desired: list[int] = field(default_factory=list)
    replicas: list[int] = field(default_factory=list)
    ready: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    gpus: list[int] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)
    """Requests waiting in the engines' queues and the gateway."""
    running: list[int] = field(default_factory=list)
    kv_usage: list[float] = field(default_factory=list)
    """Mean ``kv_cache_usage_perc`` over Ready replicas (NaN with none)."""
    preemptions: list[int] = field(default_factory=list)
    """Preemptions so far, all replicas."""


class Run:
    """The world of one contender. Autoscalers use the attributes documented below."""

    def __init__(
        self,
        scenario: Scenario,
        workload: Workload,
        service_times: np.ndarray,
        cluster: Cluster,
        rng: np.random.Generator,
        duration: float,
    ) -> None:
        svc = scenario.service
        self.scenario = scenario
        self.service = svc
        self.duration = duration
        self.engine = Engine()
        self.rng = rng
        self.cluster = cluster
        self.engine_config: EngineConfig | None = None
        self.log: RequestLog | ServingLog
        if svc.engine == "vllm":
            assert svc.vllm is not None
            self.engine_config = EngineConfig(svc.vllm.profile, svc.engine_limits())
            self.log = ServingLog(workload.times, workload.prompt, workload.generated)
        else:
            self.log = RequestLog(workload.times, service_times)
        self.replicas: list[Replica | BatchingReplica] = []
        """Every replica that ever served (for per-run engine totals)."""
        self.dropped: list[int] = []
        self.dropped_at: list[float] = []
        self.cut_by_scale_down = 0
        """Requests a removed replica still held when it went away (also in ``dropped``)."""
        self.bounds = svc.latency_buckets or DEFAULT_LATENCY_BUCKETS
        self.metrics = MetricStore(self.bounds)
        self.router = Router(svc.routing)
        self.pod_spec = PodSpec(
            GpuNeed(svc.gpus, svc.gpu_memory_mib),
            svc.tolerations,
            svc.node_selector,
            compile_required(svc.node_selector, None),
        )
        self.pods: list[Pod] = []
        self.unschedulable: list[Pod] = []
        self.unschedulable_reasons: dict[str, int] = {}
        self.spec_replicas = 0
        """The Deployment's ``spec.replicas``: what autoscalers read as current and write."""
        self.scale_ups = 0
        self.scale_downs = 0
        self.track_concurrency = False
        """Keep ``in_system``/``inflight_area`` up to date (Knative's concurrency); costs time."""
        self.in_system = 0
        self.inflight_area = 0.0
        self._area_t = 0.0
        # time integrals
        self._acc_t = 0.0
        self.gpu_seconds = 0.0
        self.pending_seconds = 0.0
        self.replica_seconds = 0.0
        self.ready_seconds = 0.0
        self.max_replicas_seen = 0
        self.max_pending = 0
        self.n_unscheduled = 0
        self.n_active = 0
        self.n_ready = 0
        self.n_gpu_pods = 0
        self.timeline = Timeline()
        self.controller: Controller | None = None
        self._retry_pending = False
        self._retry_timer = False
        self.pod_id_base = 0
        """Added to pod ids, so that the Deployments of one model's variants, which share a
        router, have distinct replica ids (:mod:`simulations.serving.variants`)."""

    # ------------------------------------------------------------------ counts

    @property
    def status_replicas(self) -> int:
        """``status.replicas``: pods of the Deployment that are not being deleted."""
        return self.n_active

    @property
    def ready_replicas(self) -> int:
        return self.n_ready

    def _account(self) -> None:
        now = self.engine.now
        dt = now - self._acc_t
        if dt > 0:
            self.gpu_seconds += dt * self.n_gpu_pods * self.service.gpus
            self.pending_seconds += dt * self.n_unscheduled
            self.replica_seconds += dt * self.n_active
            self.ready_seconds += dt * self.n_ready
            self._acc_t = now

    def _area(self) -> None:
        now = self.engine.now
        self.inflight_area += self.in_system * (now - self._area_t)
        self._area_t = now

    def concurrency_area(self) -> float:
        """Request-seconds spent in the system from the start until now (tracked only for a
        controller that ``needs_concurrency``): its growth over a window is the window's mean
        concurrency times its length, what Knative's activator reports."""
        self._area()
        return self.inflight_area

    # ------------------------------------------------------------------ requests

    def _arrive_tracked(self, i: int) -> None:
        self._area()
        self.in_system += 1
        self.router.route(i)

    def _complete(self, i: int) -> None:
        self._area()
        self.in_system -= 1

    # ------------------------------------------------------------------ scaling

    def scale_to(self, replicas: int) -> None:
        """Write ``spec.replicas``; the ReplicaSet controller creates or deletes pods at once."""
        replicas = max(0, replicas)
        if replicas == self.spec_replicas:
            return
        if replicas > self.spec_replicas:
            self.scale_ups += 1
        else:
            self.scale_downs += 1
        self.spec_replicas = replicas
        self._reconcile()

    def _reconcile(self) -> None:
        self._account()
        active = [p for p in self.pods if p.state < DRAINING]
        if len(active) < self.spec_replicas:
            for _ in range(self.spec_replicas - len(active)):
                self._create_pod()
        elif len(active) > self.spec_replicas:
            rank = _cost_rank if self.service.deletion_cost else _deletion_rank
            for pod in sorted(active, key=rank)[: len(active) - self.spec_replicas]:
                self._delete_pod(pod)
        self.max_replicas_seen = max(self.max_replicas_seen, self.n_active)
        self.max_pending = max(self.max_pending, self.n_unscheduled)

    def _create_pod(self, *, warm: bool = False) -> Pod:
        pod = Pod(self.pod_id_base + len(self.pods), self.engine.now)
        self.pods.append(pod)
        self.n_active += 1
        self.n_unscheduled += 1
        if warm:
            self._try_schedule(pod, warm=True)
        else:
            delay = self.service.startup.scheduling.sample(self.rng)
            self.engine.schedule(delay, self._try_schedule, pod)
        return pod

    def _try_schedule(self, pod: Pod, warm: bool = False) -> None:
        if pod.state != UNSCHEDULED:
            return
        result = self.cluster.schedule(self.pod_spec, self.rng)
        if not isinstance(result, Placement):
            if pod not in self.unschedulable:
                self.unschedulable.append(pod)
                summary = _summarise(result)
                self.unschedulable_reasons[summary] = self.unschedulable_reasons.get(summary, 0) + 1
            self._arm_retry()
            return
        self._account()
        if pod in self.unschedulable:
            self.unschedulable.remove(pod)
        self.n_unscheduled -= 1
        self.n_gpu_pods += 1
        pod.placement = result
        pod.scheduled_at = self.engine.now
        if warm:
            result.node.has_image = True
            pod.state = LOADING
            self._loaded(pod)
            return
        pod.state = PULLING
        startup = self.service.startup
        pull = startup.image_pull_cached if result.node.has_image else startup.image_pull
        self.engine.schedule(pull.sample(self.rng), self._pulled, pod)

    def _arm_retry(self) -> None:
        if not self._retry_timer:
            self._retry_timer = True
            self.engine.schedule(self.service.startup.retry, self._retry_tick, None, LATE)

    def _retry_tick(self, _: None) -> None:
        self._retry_timer = False
        self._retry_unschedulable(None)

    def _retry_unschedulable(self, _: None) -> None:
        self._retry_pending = False
        for pod in list(self.unschedulable):
            self._try_schedule(pod)

    def _released(self) -> None:
        if self.unschedulable and not self._retry_pending:
            self._retry_pending = True
            self.engine.schedule(0.0, self._retry_unschedulable, None, LATE)

    def _pulled(self, pod: Pod) -> None:
        if pod.state != PULLING:
            return
        assert pod.placement is not None
        pod.placement.node.has_image = True
        pod.state = LOADING
        self.engine.schedule(self.service.startup.model_load.sample(self.rng), self._loaded, pod)

    def _loaded(self, pod: Pod) -> None:
        if pod.state not in (PULLING, LOADING):
            return
        self._account()
        pod.state = READY
        pod.ready_at = self.engine.now
        self.n_ready += 1
        on_complete = self._complete if self.track_concurrency else None
        replica: Replica | BatchingReplica
        if self.engine_config is not None:
            assert isinstance(self.log, ServingLog)
            replica = BatchingReplica(
                pod.id,
                self.engine,
                self.log,
                self.engine_config,
                on_complete,
                self._reject,
                self.bounds,
            )
        else:
            assert isinstance(self.log, RequestLog)
            replica = Replica(
                pod.id, self.engine, self.log, self.service.max_batch, self.bounds, on_complete
            )
        self.replicas.append(replica)
        pod.replica = replica
        self.router.add(replica)

    def _delete_pod(self, pod: Pod) -> None:
        self._account()
        self.n_active -= 1
        if pod.state == UNSCHEDULED:
            pod.state = GONE
            self.n_unscheduled -= 1
            if pod in self.unschedulable:
                self.unschedulable.remove(pod)
            return
        if pod.state in (PULLING, LOADING):
            pod.state = GONE
            self._free(pod)
            return
        assert pod.replica is not None
        self.n_ready -= 1
        pod.state = DRAINING
        replica = pod.replica
        self.router.remove(replica)
        if replica.outstanding == 0 or not self.service.drain:
            self._cut(pod)
            return
        replica.on_idle = lambda _r: self._finish_drain(pod)
        self.engine.schedule(self.service.termination_grace, self._grace_over, pod)

    def _grace_over(self, pod: Pod) -> None:
        if pod.state == DRAINING:
            self._cut(pod)

    def _cut(self, pod: Pod) -> None:
        """The replica goes now: what it still holds is lost."""
        assert pod.replica is not None
        for i in pod.replica.evict():
            self._reject(i)
            self.cut_by_scale_down += 1
        self._finish_drain(pod)

    def _reject(self, i: int) -> None:
        """Request ``i`` is lost: still queued when its pod went away, or never servable."""
        self.dropped.append(i)
        self.dropped_at.append(self.engine.now)
        if self.track_concurrency:
            self._complete(i)

    def _finish_drain(self, pod: Pod) -> None:
        if pod.state != DRAINING:
            return
        pod.state = GONE
        assert pod.replica is not None
        pod.replica.on_idle = None
        self.metrics.end(pod.id, self.engine.now)
        self._account()
        self._free(pod)

    def _free(self, pod: Pod) -> None:
        assert pod.placement is not None
        self.cluster.release(pod.placement, self.pod_spec.gpu)
        self.n_gpu_pods -= 1
        self._released()

    # ------------------------------------------------------------------ observers

    def pod_phases(self) -> list[tuple[Pod, str, bool]]:
        """``(pod, phase, deleting)`` as the HPA lists them (Pending, Running; Terminating)."""
        out = []
        for p in self.pods:
            if p.state == GONE:
                continue
            phase = "Pending" if p.state in (UNSCHEDULED, PULLING) else "Running"
            out.append((p, phase, p.state == DRAINING))
        return out

    def scraped_replicas(self) -> list[Replica | BatchingReplica]:
        return [p.replica for p in self.pods if p.state in (READY, DRAINING) and p.replica]

    def _scrape(self, _: None) -> None:
        now = self.engine.now
        if self.service.deletion_cost:
            for pod in self.pods:
                if pod.state == READY and pod.replica is not None:
                    pod.deletion_cost = deletion_cost(pod.replica.outstanding)
        self.metrics.scrape(now, self.scraped_replicas())
        self.metrics.scrape_gateway(now, bisect_right(self.log.arrival, now))
        self.engine.schedule(self.scenario.metrics.scrape_interval, self._scrape, None, LATE)

    def _sample(self, _: None) -> None:
        tl = self.timeline
        tl.time.append(self.engine.now)
        wanted = self.controller.desired() if self.controller is not None else None
        tl.desired.append(self.spec_replicas if wanted is None else wanted)
        tl.replicas.append(self.n_active)
        tl.ready.append(self.n_ready)
        tl.pending.append(self.n_unscheduled)
        tl.gpus.append(self.n_gpu_pods * self.service.gpus)
        serving = self.scraped_replicas()
        for r in serving:
            if isinstance(r, BatchingReplica):
                r.sync()
        tl.waiting.append(len(self.router.held) + sum(len(r.queue) for r in serving))
        tl.running.append(sum(r.running for r in serving))
        kv = [r.kv_usage for r in serving if isinstance(r, BatchingReplica)]
        tl.kv_usage.append(sum(kv) / len(kv) if kv else math.nan)
        tl.preemptions.append(
            sum(r.preemptions for r in self.replicas if isinstance(r, BatchingReplica))
        )
        self.engine.schedule(self.scenario.timeline_interval, self._sample, None, LATE)

    # ------------------------------------------------------------------ running

    def start(self, controller: Controller, *, feed: bool = True) -> None:
        """Create the initial pods and start the clocked parts; ``feed=False`` for a Deployment
        whose requests another run's router (shared) receives."""
        self.controller = controller
        self.track_concurrency = controller.needs_concurrency
        initial = self.service.initial_replicas
        self.spec_replicas = initial
        for _ in range(initial):
            self._create_pod(warm=True)
        self.max_replicas_seen = self.n_active
        if feed:
            self.engine.feed(
                self.log.arrival,
                self._arrive_tracked if self.track_concurrency else self.router.route,
            )
        self.engine.schedule(0.0, self._scrape, None, LATE)
        self.engine.schedule(0.0, self._sample, None, LATE)
        controller.start(self)

    def run(self) -> None:
        self.engine.run(until=self.duration)
        self.finish()

    def finish(self) -> None:
        """Bring the time integrals up to the clock (a run sharing another's clock calls it)."""
        self._account()
        self._area()


def _deletion_rank(pod: Pod) -> tuple[int, float]:
    """ReplicaSet's order: not scheduled, then not running, then not ready; newest first."""
    order = {UNSCHEDULED: 0, PULLING: 1, LOADING: 2, READY: 3}[pod.state]
    newest = -(pod.ready_at if pod.state == READY else pod.created)
    return order, newest


def _cost_rank(pod: Pod) -> tuple[int, int, float]:
    """ReplicaSet's order with pod-deletion-cost: after readiness, the lowest cost first."""
    order, newest = _deletion_rank(pod)
    return order, pod.deletion_cost, newest


def _summarise(failed: dict[str, str]) -> str:
    """``0/7 nodes are available: 4 insufficient GPU memory, 3 untolerated taint``-style."""
    kinds: dict[str, int] = {}
    for reason in failed.values():
        key = reason if "{" in reason else reason.split(": ")[0]
        kinds[key] = kinds.get(key, 0) + 1
    parts = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    return f"0/{len(failed)} nodes are available: {parts}"
