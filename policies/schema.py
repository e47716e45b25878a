"""The ScalingPolicy as plain frozen data: what an SRE wrote, parsed, defaulted and validated.

Field names mirror ``autoscaling/v2`` where the concept is the same (see DESIGN §2). Durations are
float seconds. Nothing here does I/O; :mod:`policies.parse` builds these from ConfigMaps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NewType

from policies.stepmodel import EngineLimits, StepProfile

PolicyKey = NewType("PolicyKey", str)
"""``namespace/name`` of the ConfigMap that holds a policy."""

API_VERSION = "gpuscale.io/v1alpha1"
KIND = "ScalingPolicy"
POLICY_LABEL = "gpuscale.io/scaling-policy"
POLICY_DATA_KEY = "policy.yaml"

MetricType = Literal["queueDepth", "latency", "arrivalRate", "kvCacheUsage", "modelCapacity"]
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
class LatencyTarget:
    """``quantile`` of request latency (0 < q < 1) must stay within ``slo`` seconds."""

    quantile: float
    slo: float


@dataclass(frozen=True, slots=True)
class QueueDepthMetric:
    """Requests waiting, summed over replicas; each replica should hold ``target_per_replica``."""

    name: str
    query: str
    target_per_replica: float
    type: Literal["queueDepth"] = "queueDepth"


@dataclass(frozen=True, slots=True)
class LatencyMetric:
    """An observed latency quantile (seconds) compared with ``slo`` (seconds)."""

    name: str
    query: str
    slo: float
    type: Literal["latency"] = "latency"


@dataclass(frozen=True, slots=True)
class ArrivalRateMetric:
    """Requests/s, turned into replicas by an M/M/c model of ``service_rate_per_replica``."""

    name: str
    query: str
    service_rate_per_replica: float
    latency_target: LatencyTarget
    type: Literal["arrivalRate"] = "arrivalRate"


@dataclass(frozen=True, slots=True)
class KvCacheMetric:
    """KV-cache saturation: ``kv_cache_usage_perc`` (0..1, averaged over replicas) against
    ``target``, scaled in proportion as the llm-d Workload Variant Autoscaler scales on
    saturation."""

    name: str
    query: str
    target: float
    type: Literal["kvCacheUsage"] = "kvCacheUsage"


@dataclass(frozen=True, slots=True)
class ServingSlo:
    """Bounds on the modelled mean time to first token and time per output token (seconds)."""

    ttft: float | None = None
    tpot: float | None = None


PROMPT_TOKENS = "promptTokens"
GENERATION_TOKENS = "generationTokens"


@dataclass(frozen=True, slots=True)
class ModelCapacityMetric:
    """The replicas a step-time profile says keep TTFT and TPOT within ``slo`` at the observed
    request rate (``query``) and token mix (token-rate queries, or fixed means per request)."""

    name: str
    query: str
    profile: StepProfile
    profile_ref: str
    """The profile as the policy names it (a shipped name, a path, or ``inline``)."""
    limits: EngineLimits
    slo: ServingSlo
    prompt_tokens_query: str | None = None
    generation_tokens_query: str | None = None
    prompt_tokens: float | None = None
    """Mean prompt tokens per request, when there is no ``prompt_tokens_query``."""
    generated_tokens: float | None = None
    type: Literal["modelCapacity"] = "modelCapacity"


Metric = QueueDepthMetric | LatencyMetric | ArrivalRateMetric | KvCacheMetric | ModelCapacityMetric


def input_key(metric: str, part: str) -> str:
    """Snapshot key of a metric's extra input (``capacity:promptTokens``)."""
    return f"{metric}:{part}"


def metric_inputs(metric: Metric) -> tuple[tuple[str, str], ...]:
    """``(snapshot key, PromQL)`` of every query a metric needs; the first key is its name."""
    out = [(metric.name, metric.query)]
    if isinstance(metric, ModelCapacityMetric):
        if metric.prompt_tokens_query is not None:
            out.append((input_key(metric.name, PROMPT_TOKENS), metric.prompt_tokens_query))
        if metric.generation_tokens_query is not None:
            out.append((input_key(metric.name, GENERATION_TOKENS), metric.generation_tokens_query))
    return tuple(out)


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

    @property
    def key(self) -> PolicyKey:
        return PolicyKey(f"{self.namespace}/{self.name}")
