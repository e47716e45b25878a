"""The ScalingPolicy as plain frozen data: what an SRE wrote, parsed, defaulted and validated.

Field names mirror ``autoscaling/v2`` where the concept is the same (see DESIGN §2). Durations are
float seconds. Nothing here does I/O; :mod:`policies.parse` builds these from ConfigMaps. Each
metric type lives in its own module of :mod:`policies.metrics`; they are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NewType

# The metric types live in policies.metrics, one module each; users of a policy find them here.
from policies.metrics import Metric as Metric
from policies.metrics import MetricType as MetricType
from policies.metrics import metric_inputs as metric_inputs
from policies.metrics.arrival_rate import ArrivalRateMetric as ArrivalRateMetric
from policies.metrics.arrival_rate import LatencyTarget as LatencyTarget
from policies.metrics.base import input_key as input_key
from policies.metrics.kv_cache_usage import KvCacheMetric as KvCacheMetric
from policies.metrics.latency import LatencyMetric as LatencyMetric
from policies.metrics.model_capacity import GENERATION_TOKENS as GENERATION_TOKENS
from policies.metrics.model_capacity import PROMPT_TOKENS as PROMPT_TOKENS
from policies.metrics.model_capacity import ModelCapacityMetric as ModelCapacityMetric
from policies.metrics.model_capacity import ServingSlo as ServingSlo
from policies.metrics.queue_depth import QueueDepthMetric as QueueDepthMetric
from policies.stepmodel import EngineLimits, StepProfile

PolicyKey = NewType("PolicyKey", str)
"""``namespace/name`` of the ConfigMap that holds a policy."""

API_VERSION = "gpuscale.io/v1alpha1"
KIND = "ScalingPolicy"
POLICY_LABEL = "gpuscale.io/scaling-policy"
POLICY_DATA_KEY = "policy.yaml"

RuleType = Literal["Pods", "Percent"]
Select = Literal["Max", "Min", "Disabled"]
ForecastMethod = Literal["none", "holt"]


@dataclass(frozen=True, slots=True)
class TargetRef:
    """The workload the policy scales; it lives in the ConfigMap's namespace."""

    api_version: str
    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class ReplicaBounds:
    min: int
    max: int


@dataclass(frozen=True, slots=True)
class ScalingRule:
    """At most ``value`` pods (or percent of current) of change per ``period`` seconds."""

    type: RuleType
    value: int
    period: float


@dataclass(frozen=True, slots=True)
class ScalingRules:
    """One direction of ``behavior``, as in the HPA's ``HPAScalingRules``."""

    stabilization_window: float
    select: Select
    policies: tuple[ScalingRule, ...]


def default_scale_up() -> ScalingRules:
    return ScalingRules(
        stabilization_window=0.0,
        select="Max",
        policies=(ScalingRule("Percent", 100, 15.0), ScalingRule("Pods", 4, 15.0)),
    )


def default_scale_down() -> ScalingRules:
    return ScalingRules(
        stabilization_window=300.0,
        select="Max",
        policies=(ScalingRule("Percent", 100, 15.0),),
    )


@dataclass(frozen=True, slots=True)
class Behavior:
    scale_up: ScalingRules = field(default_factory=default_scale_up)
    scale_down: ScalingRules = field(default_factory=default_scale_down)


@dataclass(frozen=True, slots=True)
class Forecast:
    """``holt``: Holt's linear trend with smoothing ``alpha`` (level) and ``beta`` (trend)."""

    method: ForecastMethod = "none"
    alpha: float = 0.5
    beta: float = 0.3


@dataclass(frozen=True, slots=True)
class Burst:
    """Size demand metrics for the ``quantile`` of their sizes over the last ``window`` seconds
    (:mod:`policies.envelope`)."""

    window: float
    quantile: float = 1.0


@dataclass(frozen=True, slots=True)
class OnMetricsUnavailable:
    """``fallback_replicas is None`` means *hold*: never scale down on missing data."""

    fallback_replicas: int | None = None

    @property
    def hold(self) -> bool:
        return self.fallback_replicas is None


@dataclass(frozen=True, slots=True)
class DeletionCost:
    """Keep ``controller.kubernetes.io/pod-deletion-cost`` on the target's pods from ``query``
    (requests in flight per pod: one series per ``pod`` label), so that when the count goes
    down the ReplicaSet removes idle replicas first (:mod:`policies.deletion_cost`)."""

    query: str
    max_writes_per_tick: int = 10
    """At most this many pod patches per tick; the rest wait for the next tick."""


@dataclass(frozen=True, slots=True)
class VariantTarget:
    """One Deployment of a variants policy: its GPU type's step profile and price, its bounds.

    ``profile is None``: the variants' ``modelCapacity`` metric's profile and engine limits
    (the metric sizes the model; a variant on another GPU type names its own profile)."""

    name: str
    target: TargetRef
    replicas: ReplicaBounds
    price: float | None = None
    """Per replica-hour; or ``price_per_gpu_hour × gpus``."""
    price_per_gpu_hour: float | None = None
    gpus: int | None = None
    profile: StepProfile | None = None
    profile_ref: str | None = None
    """The profile as the policy names it (a shipped name, a path, or ``inline``)."""
    limits: EngineLimits | None = None

    @property
    def replica_price(self) -> float:
        """Price of one replica per hour."""
        if self.price is not None:
            return self.price
        assert self.price_per_gpu_hour is not None and self.gpus is not None
        return self.price_per_gpu_hour * self.gpus


@dataclass(frozen=True, slots=True)
class Variants:
    """Several Deployments serving one model, sized together (:mod:`policies.variants`)."""

    targets: tuple[VariantTarget, ...]
    metric: str | None = None
    """The ``modelCapacity`` metric whose request rate, token mix and SLO the variants share
    (``None``: the policy's only one)."""
    prefer: tuple[str, ...] = ()
    prefer_within: float = 0.0


@dataclass(frozen=True, slots=True)
class ScalingPolicy:
    namespace: str
    name: str
    target: TargetRef
    replicas: ReplicaBounds
    metrics: tuple[Metric, ...]
    interval: float = 15.0
    behavior: Behavior = field(default_factory=Behavior)
    cold_start: float = 120.0
    forecast: Forecast = field(default_factory=Forecast)
    burst: Burst | None = None
    """``None``: size demand metrics for the load now (and its forecast) only."""
    on_metrics_unavailable: OnMetricsUnavailable = field(default_factory=OnMetricsUnavailable)
    deletion_cost: DeletionCost | None = None
    """``None``: the pods' deletion cost is left alone (patching pods needs opt-in RBAC)."""
    variants: Variants | None = None
    """``None``: one target. Otherwise ``target`` is the most preferred variant's and
    ``replicas`` spans the sum of the variants' bounds (so single-target readers still work);
    each variant gets its own count and HPA."""

    @property
    def key(self) -> PolicyKey:
        return PolicyKey(f"{self.namespace}/{self.name}")
