"""One model on several Deployments (variants, one per GPU type) behind one gateway.

Each variant is a :class:`~simulations.serving.run.Run` of its own (its Deployment's pods, its
engine profile, the metrics scraped from its pods), and all of them share the clock, the request
log, the cluster and the gateway's router, which ``variants.routing`` picks:

- ``least-outstanding`` (the default): each request to the Ready replica with the fewest
  outstanding requests over every variant, as a Service or an InferencePool selecting all the
  Deployments with a load-only scorer does. A faster replica clears its requests sooner and so
  gets more of them, but at moderate load every replica holds about as many requests, so a
  slower GPU type gets about as many as a faster one (and misses TPOT with them).
- ``capacity-weighted``: the lowest ``(outstanding + 1) / weight``, ``weight`` one replica's
  capacity (``routingWeight``, or by default the requests/s its profile carries at the service's
  SLO for the workload's mean token mix, :func:`policies.variants.capacity_at_slo`): Envoy's
  weighted least-request balancer with ``active_request_bias: 1`` and per-backend weights, as a
  gateway with weighted backends (Gateway API ``backendRefs[].weight``) or a scorer that
  normalises queue depth by capacity would route. This is the split :mod:`policies.variants`
  assumes (each replica at the same fraction of its capacity).

Contenders (:class:`~simulations.config.variants.VariantContender`):

- *gpuscale*: every ``interval``, :func:`policies.variants.decide_mix` on the gateway's request
  rate (the largest over the last ``burstWindow``) and the token mix the pods report
  (``sum(rate(vllm:prompt_tokens_total[w])) / sum(rate(vllm:request_success_total[w]))``, over
  all variants), each variant bounded by its
  ``max`` and by what the free GPUs its pods may use hold. Each count goes to the variant's HPA
  (one External metric per variant) with the policy's default behavior (no scale-up window, 100 %
  or 4 pods per 15 s; 300 s scale-down window), which the HPA applies at each sync.
- *hpa*: one upstream HPA per variant (:class:`~simulations.serving.contenders.HpaBaseline`) on a
  per-pod metric; a variant with ``max: 0`` stays at 0;
- *fixed*: each variant held at its ``min``.

The gateway's own backlog (requests held while no replica of any variant is Ready) is counted in
every variant's ``waiting`` timeline.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace

import numpy as np

from policies.metrics.model_capacity import ServingSlo
from policies.schema import Behavior
from policies.stepmodel import TokenMix
from policies.variants import (
    MixDecision,
    Observed,
    Variant,
    VariantPolicy,
    capacity_at_slo,
    decide_mix,
)
from simulations.config.scenario import HpaContender, HpaSettings, Scenario, ServiceSpec
from simulations.config.variants import VariantContender, VariantSpec
from simulations.serving.arrivals import Workload
from simulations.serving.baselines.hpa import HpaController, Tolerance, external_per_pod_replicas
from simulations.serving.clock import LATE, Engine
from simulations.serving.cluster import Cluster
from simulations.serving.contenders import (
    DECIDE_PHASE,
    HPA_PHASE,
    ControllerDefaults,
    FixedReplicas,
    HpaBaseline,
)
from simulations.serving.replicas import RequestLog, Router
from simulations.serving.run import Controller, Run, Timeline
from simulations.serving.vllm import ServingLog

POD_ID_STRIDE = 1_000_000
"""Pod ids of variant ``k`` start at ``k × POD_ID_STRIDE`` (distinct replica ids)."""


class VariantWorld:
    """The Deployments of one model's variants, for one contender."""

    def __init__(
        self,
        scenario: Scenario,
        contender: VariantContender,
        workload: Workload,
        cluster: Cluster,
        rng: np.random.Generator,
        duration: float,
    ) -> None:
        spec = scenario.variants
        if spec is None:
            raise ValueError(f"{scenario.file}: the scenario has no variants")
        self.spec = spec
        self.contender = contender
        self.duration = duration
        no_times = np.zeros(len(workload))
        self.runs: list[Run] = []
        for k, d in enumerate(spec.deployments):
            lo, hi = contender.bounds[d.name]
            service = replace(
                d.service,
                min_replicas=lo,
                max_replicas=hi,
                initial_replicas=lo
                if contender.kind == "fixed"
                else min(max(d.service.initial_replicas, lo), hi),
            )
            run = Run(
                replace(scenario, service=service), workload, no_times, cluster, rng, duration
            )
            if not self.runs and spec.routing == "capacity-weighted":
                self.weights = routing_weights(spec.deployments, workload)
                run.router = Router("capacity-weighted", self.weight_of)
            if self.runs:
                first = self.runs[0]
                run.engine, run.log, run.router = first.engine, first.log, first.router
            run.pod_id_base = k * POD_ID_STRIDE
            self.runs.append(run)
        self.engine: Engine = self.runs[0].engine
        self.cluster = cluster

    weights: tuple[float, ...] = ()
    """Per variant, one replica's routing weight (``capacity-weighted`` routing only)."""

    def weight_of(self, replica_id: int) -> float:
        return self.weights[replica_id // POD_ID_STRIDE]

    def start(self, hpa: HpaSettings) -> VariantController | None:
        """Start every Deployment with its controller; the gpuscale controller is returned."""
        c = self.contender
        members: list[Controller]
        top: VariantController | None = None
        if c.kind == "gpuscale":
            top = VariantController(self, c)
            members = [top.member(k) for k in range(len(self.runs))]
        elif c.kind == "fixed":
            members = [FixedReplicas(c.bounds[d.name][0]) for d in self.spec.deployments]
        else:
            members = []
            for d in self.spec.deployments:
                lo, hi = c.bounds[d.name]
                if hi == 0:
                    members.append(FixedReplicas(0))
                else:
                    base = HpaContender(c.label, metric=c.metric, target=c.target)
                    members.append(HpaBaseline(base, hpa, lo, hi))
        for k, (run, member) in enumerate(zip(self.runs, members, strict=True)):
            run.start(member, feed=k == 0)
        if top is not None:
            top.start(hpa)
        return top

    def run(self) -> None:
        self.engine.run(until=self.duration)
        for run in self.runs:
            run.finish()

    def placeable(self, k: int) -> int:
        """The most replicas variant ``k`` can have now: those holding GPUs plus what the free
        whole GPUs on the nodes its pods may use hold."""
        run = self.runs[k]
        passed, _ = self.cluster.filter(run.pod_spec)
        free = sum(sum(1 for d in node.devices if d.holders == 0) for node, _ in passed)
        placed = run.status_replicas - len(run.unschedulable)
        return placed + free // max(run.service.gpus, 1)

    def merged(self) -> MergedRun:
        """The whole service as one run, for the report (the first variant's SLO and log)."""
        runs = self.runs
        first = runs[0]
        tl = _merge_timelines([r.timeline for r in runs])
        return MergedRun(
            log=first.log,
            service=first.service,
            scenario=first.scenario,
            duration=self.duration,
            dropped=[i for r in runs for i in r.dropped],
            dropped_at=[t for r in runs for t in r.dropped_at],
            cut_by_scale_down=sum(r.cut_by_scale_down for r in runs),
            timeline=tl,
            gpu_seconds=sum(r.gpu_seconds for r in runs),
            replica_seconds=sum(r.replica_seconds for r in runs),
            ready_seconds=sum(r.ready_seconds for r in runs),
            pending_seconds=sum(r.pending_seconds for r in runs),
            max_replicas_seen=max(tl.replicas, default=0),
            max_pending=max(tl.pending, default=0),
            scale_ups=sum(r.scale_ups for r in runs),
            scale_downs=sum(r.scale_downs for r in runs),
            unschedulable_reasons=_merge_counts([r.unschedulable_reasons for r in runs]),
        )

    def costs(self) -> dict[str, dict[str, float]]:
        """Per variant: GPU-hours, replica-hours holding GPUs, price × those hours, cuts."""
        out = {}
        for d, run in zip(self.spec.deployments, self.runs, strict=True):
            hours = run.gpu_seconds / max(run.service.gpus, 1) / 3600.0
            out[d.name] = {
                "gpu_hours": run.gpu_seconds / 3600.0,
                "replica_hours": hours,
                "cost": hours * d.price,
                "replicas_mean": run.replica_seconds / self.duration,
                "replicas_max": float(run.max_replicas_seen),
                "cut_by_scale_down": float(run.cut_by_scale_down),
                "pending_pod_seconds": run.pending_seconds,
            }
        return out


def routing_weights(deployments: tuple[VariantSpec, ...], workload: Workload) -> tuple[float, ...]:
    """Each variant's ``routingWeight``, or one replica's modelled capacity at the service's SLO
    for the workload's mean token mix (a static weight, as an operator would set it from the
    profiles; the decision re-sizes on the observed mix, the router does not)."""
    n = len(workload)
    mix = TokenMix(
        max(float(workload.prompt.mean()) if n else 1.0, 1.0),
        max(float(workload.generated.mean()) if n else 1.0, 1.0),
    )
    out = []
    for d in deployments:
        if d.weight is not None:
            out.append(d.weight)
            continue
        svc = d.service
        assert svc.vllm is not None
        slo = ServingSlo(svc.slo.ttft, svc.slo.tpot)
        rate = capacity_at_slo(svc.vllm.profile, svc.engine_limits(), mix, slo).rate
        out.append(max(rate, 1e-9))  # a replica that meets nothing still gets the overflow
    return tuple(out)


@dataclass(frozen=True, slots=True)
class MergedRun:
    """What the report reads of a finished run, summed over the variants."""

    log: RequestLog | ServingLog
    service: ServiceSpec
    scenario: Scenario
    duration: float
    dropped: list[int]
    dropped_at: list[float]
    cut_by_scale_down: int
    timeline: Timeline
    gpu_seconds: float
    replica_seconds: float
    ready_seconds: float
    pending_seconds: float
    max_replicas_seen: int
    max_pending: int
    scale_ups: int
    scale_downs: int
    unschedulable_reasons: dict[str, int]


def _merge_counts(counts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in counts:
        for k, n in c.items():
            out[k] = out.get(k, 0) + n
    return out


def _merge_timelines(tls: list[Timeline]) -> Timeline:
    """Samples taken at the same instants by every variant: counts add up, KV use is the mean
    over the variants that had a Ready replica."""
    n = min(len(t.time) for t in tls)
    out = Timeline(time=tls[0].time[:n])
    for name in ("desired", "replicas", "ready", "pending", "gpus", "waiting", "running"):
        setattr(out, name, [sum(getattr(t, name)[i] for t in tls) for i in range(n)])
    out.preemptions = [sum(t.preemptions[i] for t in tls) for i in range(n)]
    for i in range(n):
        kv = [t.kv_usage[i] for t in tls if not math.isnan(t.kv_usage[i])]
        out.kv_usage.append(sum(kv) / len(kv) if kv else math.nan)
    return out


class VariantController:
    """gpuscale with variants: the mix every ``interval``, one HPA per variant (see the module
    docstring)."""

    def __init__(self, world: VariantWorld, contender: VariantContender) -> None:
        self.world = world
        self.c = contender
        variants = tuple(
            Variant(
                d.name,
                d.service.vllm.profile,
                d.service.engine_limits(),
                d.price,
                max_replicas=contender.bounds[d.name][1],
                min_replicas=contender.bounds[d.name][0],
            )
            for d in world.spec.deployments
            if d.service.vllm is not None
        )
        self.policy = VariantPolicy(
            variants, contender.slo, world.spec.prefer, contender.prefer_within
        )
        self.values: list[int | None] = [None] * len(variants)
        self.value_time = -math.inf
        self.decisions = 0
        self.saturated = 0
        self.last: MixDecision | None = None
        self.rates: deque[tuple[float, float]] = deque()
        """``(time, rate)`` of the decisions within ``burst_window``."""
        self.hpas = [
            HpaController(lo, hi, Behavior())
            for lo, hi in (contender.bounds[v.name] for v in variants)
        ]

    def member(self, k: int) -> Controller:
        return _Member(self, k)

    def start(self, hpa: HpaSettings) -> None:
        self.settings = hpa
        engine = self.world.engine
        _every(engine, DECIDE_PHASE, self.c.interval, self._decide)
        _every(engine, HPA_PHASE, hpa.sync_period, self._sync)

    def observe(self) -> Observed | None:
        """The load, its token mix and the room per variant, from what is scraped now."""
        world = self.world
        now = world.engine.now
        stores = [r.metrics for r in world.runs]
        w = self.c.window
        rate = stores[0].gateway_rate(now, w)
        if rate is None:
            return None

        def total(name: str) -> float:
            return sum(s.rate_sum(now, name, w) or 0.0 for s in stores)

        done = total("completed")
        if done > 0:
            mix = TokenMix(
                max(total("prompt_tokens_total") / done, 1.0),
                max(total("generation_tokens_total") / done, 1.0),
            )
        else:
            mix = TokenMix(1.0, 1.0)
        placeable = {v.name: world.placeable(k) for k, v in enumerate(self.policy.variants)}
        rates = self.rates
        rates.append((now, max(rate, 0.0)))
        while rates and rates[0][0] < now - self.c.burst_window:
            rates.popleft()
        return Observed(max(r for _, r in rates), mix, placeable)

    def _decide(self) -> None:
        observed = self.observe()
        if observed is None:
            return
        d = decide_mix(self.policy, observed)
        self.last = d
        self.decisions += 1
        self.saturated += d.saturated
        self.values = [v.replicas for v in d.variants]
        self.value_time = self.world.engine.now

    def _sync(self) -> None:
        now = self.world.engine.now
        fresh = now - self.value_time <= self.settings.stale_after
        for run, hpa, value in zip(self.world.runs, self.hpas, self.values, strict=True):
            if hpa.max_replicas == 0:
                continue
            proposal = None
            if value is not None and fresh:
                proposal = external_per_pod_replicas(
                    run.status_replicas, float(value), 1.0, Tolerance(0.0, 0.0)
                )
            run.scale_to(hpa.reconcile(run.spec_replicas, proposal, now))


class _Member(ControllerDefaults):
    """A variant's Deployment as the run sees its controller (the decisions are the parent's)."""

    def __init__(self, parent: VariantController, k: int) -> None:
        self.parent, self.k = parent, k

    def start(self, run: Run) -> None:
        """The parent schedules the ticks, once for every variant."""

    def desired(self) -> int | None:
        return self.parent.values[self.k]


def _every(engine: Engine, first: float, period: float, fn: object) -> None:
    def tick(_: None) -> None:
        fn()  # type: ignore[operator]
        engine.schedule(period, tick, None, LATE)

    engine.schedule_at(first, tick, None, LATE)
