"""Scenario files: the cluster, its background load, the service, the workload and the policies
to compare, parsed and validated in one place.

Every error names the file and the field path (``scenario.yaml: service.gpuMemory: expected a
memory quantity like "40Gi" or MiB as a number, got "lots"``); all errors of a file are reported
at once. Unknown fields are errors, so a typo never silently falls back to a default.
``simulations/README.md`` documents every field.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

import policies
from extender.objects import Taint, Toleration
from extender.quantity import QuantityError, gpu_memory_mib
from policies.declare import (
    NON_EMPTY,
    Boolean,
    Choice,
    Const,
    Context,
    Custom,
    Duration,
    Field,
    Integer,
    Label,
    ListOf,
    Number,
    Section,
    Tagged,
    Text,
)
from policies.parse import PolicyFileError, load_policy_file
from policies.profiles import ProfileError, load_profile
from policies.reading import ROOT, SCENARIO, Reader, show, yaml_problem
from policies.schema import ScalingPolicy
from policies.stepmodel import (
    BLOCK_SIZE,
    GPU_MEMORY_UTILIZATION,
    MAX_NUM_BATCHED_TOKENS,
    MAX_NUM_SEQS,
    EngineLimits,
    StepProfile,
    kv_blocks_for_tokens,
    kv_cache_blocks,
)
from simulations.config.variants import (
    SharedKinds,
    VariantsSpec,
    resolve_variants,
    variants_section,
)

PACKAGE_DIR = Path(__file__).resolve().parent.parent
"""``simulations/``, which holds the data, scenarios and sweeps."""
DATA_DIR = PACKAGE_DIR / "data"
EXAMPLES_DIR = Path(policies.__file__).resolve().parent / "examples"
DEFAULT_SCENARIO = PACKAGE_DIR / "scenarios" / "default.yaml"


class ScenarioError(ValueError):
    """A scenario that cannot be used; ``messages`` are ``file: path: message`` lines."""

    def __init__(self, messages: list[str]) -> None:
        self.messages = messages
        super().__init__("\n".join(messages))


# --------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class Dist:
    """A random duration (seconds): ``fixed`` (a), ``uniform`` (a..b), ``exponential`` (mean a),
    ``lognormal`` (mean a, shape b)."""

    kind: Literal["fixed", "uniform", "exponential", "lognormal"]
    a: float
    b: float = 0.0

    def sample(self, rng: Any) -> float:
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return float(rng.uniform(self.a, self.b))
        if self.kind == "exponential":
            return float(rng.exponential(self.a))
        mu = math.log(self.a) - self.b**2 / 2
        return float(rng.lognormal(mu, self.b))

    @property
    def mean(self) -> float:
        return (self.a + self.b) / 2 if self.kind == "uniform" else self.a


@dataclass(frozen=True, slots=True)
class PoolSpec:
    name: str
    count: int
    gpus: int
    gpu_memory_mib: int
    model: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()


@dataclass(frozen=True, slots=True)
class OpenbClusterSpec:
    """Nodes from an openb node list: the first ``count`` nodes (all when ``None``)."""

    path: Path
    count: int | None
    gpu_memory_mib: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    pools: tuple[PoolSpec, ...]
    openb: OpenbClusterSpec | None = None
    scoring: str = "binpack"


@dataclass(frozen=True, slots=True)
class BackgroundSpec:
    """``pods`` pods drawn from an openb pod list, placed before the run (GPU users only)."""

    pods: int = 0
    path: Path = DATA_DIR / "openb_pod_list_default.csv"
    gpu_memory_mib: int | None = None
    """Memory of one whole GPU for converting ``gpu_milli``; default: each device's own."""


@dataclass(frozen=True, slots=True)
class StartupSpec:
    scheduling: Dist = Dist("fixed", 1.0)
    image_pull: Dist = Dist("lognormal", 60.0, 0.3)
    image_pull_cached: Dist = Dist("fixed", 2.0)
    model_load: Dist = Dist("uniform", 30.0, 60.0)
    retry: float = 30.0
    """Seconds between scheduling retries of a pod that did not fit (plus every GPU release)."""


ServiceTimeKind = Literal["fixed", "exponential", "lognormal", "tokens"]


@dataclass(frozen=True, slots=True)
class ServiceTimeSpec:
    model: ServiceTimeKind = "tokens"
    seconds: float = 1.0
    mean: float = 1.0
    sigma: float = 0.5
    prefill_rate: float = 10000.0
    decode_rate: float = 100.0
    overhead: float = 0.02


@dataclass(frozen=True, slots=True)
class Slo:
    """A service's SLO, the way LLM serving is judged (DistServe): a request meets it when it
    meets every bound given; ``attainment`` is the share of requests that should."""

    ttft: float | None = None
    """Time to first token, seconds."""
    tpot: float | None = None
    """Time per output token after the first, ``(e2e - ttft) / (generated - 1)``, seconds."""
    e2e: float | None = None
    """End-to-end latency, seconds."""
    attainment: float = 0.99

    def describe(self) -> str:
        parts = [
            f"{label} ≤ {_ms(v)}"
            for label, v in (("TTFT", self.ttft), ("TPOT", self.tpot), ("e2e", self.e2e))
            if v is not None
        ]
        return f"{', '.join(parts)} for {self.attainment * 100:g}% of requests"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:g} ms" if seconds < 1 else f"{seconds:g} s"


DEFAULT_SLO = Slo(ttft=1.0, tpot=0.1)
"""Chat-style bounds (TTFT 1 s, TPOT 100 ms), the upper end of published practice for chat."""
DEFAULT_PROFILE = "llama-3.1-8b-a100-80gb-tp1"

EngineKind = Literal["vllm", "per-request"]


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """The vLLM engine of every replica (``engine: vllm``)."""

    profile: StepProfile
    max_num_seqs: int = MAX_NUM_SEQS
    max_num_batched_tokens: int = MAX_NUM_BATCHED_TOKENS
    gpu_memory_utilization: float = GPU_MEMORY_UTILIZATION
    kv_cache_tokens: int | None = None
    """Given directly; otherwise from GPU memory, weights and KV bytes per token."""
    block_size: int = BLOCK_SIZE


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str = "llm"
    gpus: int = 1
    gpu_memory_mib: int | None = 36 * 1024
    tolerations: tuple[Toleration, ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    max_batch: int = 2
    service_time: ServiceTimeSpec = field(default_factory=ServiceTimeSpec)
    routing: Literal["least-outstanding", "round-robin"] = "least-outstanding"
    slo: Slo = DEFAULT_SLO
    min_replicas: int = 1
    max_replicas: int = 32
    initial_replicas: int = 2
    startup: StartupSpec = field(default_factory=StartupSpec)
    termination_grace: float = 30.0
    drain: bool = True
    """A removed replica finishes what it holds within ``termination_grace`` (a ``preStop``
    drain); without one, what it holds is cut when it is deleted."""
    deletion_cost: bool = False
    """Scale-down removes the Ready replicas that held the fewest requests at the last scrape
    first (``controller.kubernetes.io/pod-deletion-cost`` kept up to date from
    ``vllm:num_requests_running + waiting``), instead of the newest."""
    latency_buckets: tuple[float, ...] | None = None
    engine: EngineKind = "vllm"
    vllm: EngineSpec | None = None
    """Set when ``engine`` is ``vllm`` (the parser always sets it then)."""

    def engine_limits(self) -> EngineLimits:
        """The scheduler budgets and KV blocks of one replica's engine."""
        spec = self.vllm
        if spec is None:
            raise ValueError("engine: per-request has no vLLM engine limits")
        if spec.kv_cache_tokens is not None:
            blocks = kv_blocks_for_tokens(spec.kv_cache_tokens, spec.block_size)
        else:
            p = spec.profile
            if not p.kv_bytes_per_token:
                raise ValueError(
                    f"profile {p.name} has no kvBytesPerToken: give service.kvCacheTokens"
                )
            memory = (
                self.gpu_memory_mib * 2**20
                if self.gpu_memory_mib is not None
                else p.gpu_memory_bytes
            )
            blocks = kv_cache_blocks(
                memory,
                p.weights_bytes,
                p.kv_bytes_per_token,
                utilization=spec.gpu_memory_utilization,
                block_size=spec.block_size,
            )
        return EngineLimits(blocks, spec.max_num_seqs, spec.max_num_batched_tokens, spec.block_size)


WorkloadKind = Literal["trace", "poisson", "diurnal", "bursts", "prometheus"]


@dataclass(frozen=True, slots=True)
class TokensSpec:
    dist: str = "lognormal"
    mean: float = 0.0
    sigma: float = 1.0


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    type: WorkloadKind = "trace"
    path: Path = DATA_DIR / "azure_llm_2023_code.csv"
    speedup: float = 1.0
    scale: float = 1.0
    jitter: float = 1.0
    rate: float = 1.0
    mean: float = 1.0
    amplitude: float = 0.5
    period: float = 3600.0
    phase: float = 0.0
    noise: float = 0.0
    base: float = 1.0
    burst: float = 10.0
    on: float = 60.0
    off: float = 300.0
    start: float | None = None
    url: str = ""
    query: str = ""
    range_start: float = 0.0
    range_end: float = 0.0
    step: float = 15.0
    prompt: TokensSpec = TokensSpec("lognormal", 2048.0, 1.0)
    generated: TokensSpec = TokensSpec("lognormal", 28.0, 1.0)


@dataclass(frozen=True, slots=True)
class MetricsSpec:
    scrape_interval: float = 15.0


@dataclass(frozen=True, slots=True)
class HpaSettings:
    sync_period: float = 15.0
    tolerance: float = 0.1
    gpuscale_tolerance: float = 0.0
    """Tolerance of the HPA gpuscale drives: 0 on servers with HPAConfigurableTolerance."""
    stale_after: float = 120.0
    """The controller's ``--stale-after``: older decisions are not served."""


# --------------------------------------------------------------------------- contenders


@dataclass(frozen=True, slots=True)
class GpuscaleContender:
    label: str
    policy: ScalingPolicy
    file: str


BaselineMetric = Literal["queue", "concurrency", "latency", "rate"]


@dataclass(frozen=True, slots=True)
class HpaContender:
    """Upstream HPA on a ``Pods`` metric (as prometheus-adapter serves it) with ``AverageValue``."""

    label: str
    metric: BaselineMetric = "queue"
    target: float = 2.0
    quantile: float = 0.95
    window: float = 60.0
    min_replicas: int | None = None
    max_replicas: int | None = None


@dataclass(frozen=True, slots=True)
class KedaContender:
    """KEDA's Prometheus scaler: a ``sum(...)`` query with ``threshold`` as ``AverageValue``."""

    label: str
    metric: BaselineMetric = "queue"
    threshold: float = 2.0
    activation_threshold: float = 0.0
    quantile: float = 0.95
    window: float = 60.0
    polling_interval: float = 30.0
    cooldown_period: float = 300.0
    min_replicas: int | None = None
    max_replicas: int | None = None


@dataclass(frozen=True, slots=True)
class KpaContender:
    """Knative's KPA on concurrency (in-flight requests per pod)."""

    label: str
    target: float = 2.0
    target_utilization: float = 0.7
    stable_window: float = 60.0
    panic_window_percentage: float = 10.0
    panic_threshold: float = 2.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    min_replicas: int | None = None
    max_replicas: int | None = None


@dataclass(frozen=True, slots=True)
class FixedContender:
    label: str
    replicas: int


Contender = GpuscaleContender | HpaContender | KedaContender | KpaContender | FixedContender
BASELINES = ("hpa", "keda", "kpa")


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    file: str
    seed: int = 1
    duration: float | None = None
    """Seconds simulated; ``None``: until the workload's last arrival."""
    timeline_interval: float = 10.0
    cluster: ClusterSpec = field(default_factory=lambda: ClusterSpec(()))
    background: BackgroundSpec = field(default_factory=BackgroundSpec)
    service: ServiceSpec = field(default_factory=ServiceSpec)
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    metrics: MetricsSpec = field(default_factory=MetricsSpec)
    hpa: HpaSettings = field(default_factory=HpaSettings)
    contenders: tuple[Contender, ...] = ()
    variants: VariantsSpec | None = None
    """One model on several Deployments (GPU types): :mod:`simulations.config.variants`."""


# --------------------------------------------------------------------------- reading


class ScenarioReader(Reader):
    """The shared field readers in the scenario style, plus what only experiment files hold:
    memory quantities, label maps, file paths (relative to ``base_dir``), random durations and
    token counts. The declared fields (:data:`SCENARIO_DOCUMENT`) read through it."""

    def __init__(self, base_dir: Path) -> None:
        super().__init__(SCENARIO)
        self.base_dir = base_dir

    def memory(self, value: Any, path: str) -> int | None:
        try:
            mib = gpu_memory_mib(value)
        except (QuantityError, ValueError):
            mib = -1
        if mib <= 0:
            self.error(
                path,
                f'expected a memory quantity like "40Gi" or MiB as a number, got {show(value)}',
            )
            return None
        return mib

    def labels(self, value: Any, path: str) -> dict[str, str] | None:
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            self.error(path, f"expected a mapping of strings to strings, got {show(value)}")
            return None
        return dict(value)

    def path(self, value: Any, path: str) -> Path | None:
        text = self.string(value, path)
        if text is None:
            return None
        if text.startswith("data:"):
            p = DATA_DIR / text[len("data:") :]
        elif text.startswith("examples:"):
            p = EXAMPLES_DIR / text[len("examples:") :]
        else:
            p = Path(text)
            if not p.is_absolute():
                p = self.base_dir / p
        if not p.is_file():
            self.error(path, f"no such file: {p}")
            return None
        return p

    def dist(self, value: Any, path: str) -> Dist | None:
        if not isinstance(value, Mapping):
            seconds = self.duration(value, path)
            return None if seconds is None else Dist("fixed", seconds)
        obj = self.mapping(value, path, optional=("dist", "value", "low", "high", "mean", "sigma"))
        if obj is None:
            return None
        kind = self.field(
            obj,
            path,
            "dist",
            lambda v, p: self.choice(v, p, ("fixed", "uniform", "exponential", "lognormal")),
            "",
        )
        if not kind:
            self.error(f"{path}.dist", "required: one of fixed, uniform, exponential, lognormal")
            return None
        need = {
            "fixed": ("value",),
            "uniform": ("low", "high"),
            "exponential": ("mean",),
            "lognormal": ("mean", "sigma"),
        }[kind]
        values = []
        for key in need:
            if key not in obj:
                self.error(f"{path}.{key}", f"required for dist: {kind}")
                return None
            conv: Callable[[Any, str], float | None]
            if key == "sigma":
                conv = lambda v, p: self.number(v, p, positive=True)  # noqa: E731
            else:
                conv = self.duration
            v = conv(obj[key], f"{path}.{key}")
            if v is None:
                return None
            values.append(v)
        if kind == "uniform" and values[1] < values[0]:
            self.error(f"{path}.high", "must be at least low")
            return None
        if kind in ("exponential", "lognormal") and values[0] <= 0:
            self.error(f"{path}.mean", "must be greater than 0")
            return None
        return Dist(kind, *values)  # type: ignore[arg-type]

    def tokens(self, value: Any, path: str, default: TokensSpec) -> TokensSpec | None:
        if isinstance(value, int | float) and not isinstance(value, bool):
            n = self.number(value, path, positive=True)
            return None if n is None else TokensSpec("fixed", n)
        obj = self.mapping(value, path, optional=("dist", "mean", "sigma"))
        if obj is None:
            return None
        kind = self.field(
            obj,
            path,
            "dist",
            lambda v, p: self.choice(v, p, ("fixed", "exponential", "lognormal")),
            default.dist,
        )
        mean = self.field(
            obj, path, "mean", lambda v, p: self.number(v, p, positive=True), default.mean
        )
        sigma = self.field(
            obj, path, "sigma", lambda v, p: self.number(v, p, positive=True), default.sigma
        )
        return TokensSpec(kind, mean, sigma)


def _sr(r: Reader) -> ScenarioReader:
    """The scenario's own readers (memory, paths, random durations) behind a declared field."""
    assert isinstance(r, ScenarioReader)
    return r


def _duration(*, positive: bool = False) -> dict[str, Any]:
    return Duration(positive=positive).schema(Context(SCENARIO))


_MEMORY_SCHEMA = {
    "description": 'A memory quantity ("40Gi", "24576Mi") or MiB as a number.',
    "anyOf": [
        {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?([KMGTPE]i?|[kmun])?(?!\n)$"},
        {"type": "number", "exclusiveMinimum": 0},
    ],
}
MEMORY = Custom(lambda r, v, p: _sr(r).memory(v, p), lambda ctx: dict(_MEMORY_SCHEMA))
"""A GPU memory quantity (``"40Gi"``) or MiB as a number."""
LABELS = Custom(
    lambda r, v, p: _sr(r).labels(v, p),
    lambda ctx: {"type": "object", "additionalProperties": {"type": "string"}},
)
FILE = Custom(
    lambda r, v, p: _sr(r).path(v, p), lambda ctx: {"type": "string", "pattern": NON_EMPTY}
)
"""A file that must exist: ``data:…``, ``examples:…``, or a path relative to the scenario."""

DIST_REQUIRED = {
    "fixed": ("value",),
    "uniform": ("low", "high"),
    "exponential": ("mean",),
    "lognormal": ("mean", "sigma"),
}


def _dist_schema(ctx: Context) -> dict[str, Any]:
    any_duration = Duration().schema(ctx)
    dist: dict[str, Any] = {
        "type": "object",
        "properties": {
            "dist": {"enum": list(DIST_REQUIRED)},
            "value": any_duration,
            "low": any_duration,
            "high": any_duration,
            "mean": Duration(positive=True).schema(ctx),
            "sigma": Number(positive=True).schema(ctx),
        },
        "additionalProperties": False,
        "required": ["dist"],
        "allOf": [
            {"if": {"properties": {"dist": {"const": k}}}, "then": {"required": list(v)}}
            for k, v in DIST_REQUIRED.items()
        ],
    }
    return {
        "description": "A duration, or {dist: fixed|uniform|exponential|lognormal, …}.",
        "anyOf": [any_duration, dist],
    }


DIST = Custom(lambda r, v, p: _sr(r).dist(v, p), _dist_schema)
"""A random duration: a duration, or ``{dist: uniform, low: 30s, high: 60s}`` and the like."""


def _tokens(default: TokensSpec) -> Custom:
    """Tokens per request: a fixed count, or a distribution (``default`` fills what is left)."""
    mapping = Section(
        (
            Field("dist", Choice(("fixed", "exponential", "lognormal"))),
            Field("mean", Number(positive=True)),
            Field("sigma", Number(positive=True)),
        ),
        TokensSpec,
    )
    return Custom(
        lambda r, v, p: _sr(r).tokens(v, p, default),
        lambda ctx: {"anyOf": [Number(positive=True).schema(ctx), mapping.schema(ctx)]},
    )


# -- cluster and background ----------------------------------------------------------------------

_TAINT = Section(
    (
        Field("key", Text(), required=True),
        Field("value", Text(blank=True), default=""),
        Field(
            "effect", Choice(("NoSchedule", "PreferNoSchedule", "NoExecute")), default="NoSchedule"
        ),
    ),
    Taint,
    missing="required",
)
_TOLERATION = Section(
    (
        Field("key", Text(blank=True), default=""),
        Field("operator", Choice(("Equal", "Exists")), default="Equal"),
        Field("value", Text(blank=True), default=""),
        Field("effect", Choice(("", "NoSchedule", "PreferNoSchedule", "NoExecute")), default=""),
    ),
    Toleration,
)
TOLERATIONS = ListOf(_TOLERATION, "a list", allow_empty=True)
"""A pod's tolerations, as the service and each variant give them."""
_POOL = Section(
    (
        Field("name", Text(), default=""),
        Field("count", Integer(1), required=True),
        Field("gpus", Integer(1), required=True),
        Field("gpuMemory", MEMORY, required=True, attr="gpu_memory_mib"),
        Field("model", Text(), default=""),
        Field("labels", LABELS, default={}),
        Field("taints", ListOf(_TAINT, "a list", allow_empty=True), default=()),
    ),
    PoolSpec,
    missing="required",
)
OPENB_GPU_MEMORY = {
    "V100M16": 16384,
    "V100M32": 32768,
    "T4": 16384,
    "P100": 16384,
    "A10": 24576,
    "G2": 16384,
    "G3": 32768,
}
"""MiB per GPU of the openb node list's GPU models; a scenario may set these and ``default``."""
_OPENB_MEMORY = Section(
    tuple(Field(k, MEMORY, attr=k) for k in (*OPENB_GPU_MEMORY, "default")),
    lambda **mib: {k: v for k, v in mib.items() if v is not None},
)
_OPENB = Section(
    (
        Field("nodes", FILE, default=DATA_DIR / "openb_node_list_gpu_node.csv", attr="path"),
        Field("count", Integer(1)),
        Field("gpuMemory", _OPENB_MEMORY, default={}, attr="gpu_memory_mib"),
    ),
    lambda path, count, gpu_memory_mib: OpenbClusterSpec(
        path, count, OPENB_GPU_MEMORY | gpu_memory_mib
    ),
)


def _has_nodes(
    r: Reader, obj: Mapping[str, Any], values: dict[str, Any], path: str
) -> dict[str, Any] | None:
    if not obj.get("pools") and "openb" not in obj:
        r.error(path, "needs pools or openb (a cluster without nodes cannot run replicas)")
        return None
    pools = values["pools"] or ()
    named = tuple(replace(p, name=p.name or f"pool{i}") for i, p in enumerate(pools))
    return values | {"pools": named}


_CLUSTER = Section(
    (
        Field("pools", ListOf(_POOL, "a list", allow_empty=True), default=()),
        Field("openb", _OPENB),
        Field("scoring", Choice(("binpack", "spread", "fragmentation")), default="binpack"),
    ),
    ClusterSpec,
    check=_has_nodes,
    nullable=False,
    extra={
        "anyOf": [
            {"required": ["pools"], "properties": {"pools": {"minItems": 1}}},
            {"required": ["openb"]},
        ]
    },
)
_BACKGROUND = Section(
    (
        Field("pods", Integer(0), default=0),
        Field("podList", FILE, default=BackgroundSpec().path, attr="path"),
        Field("gpuMemory", MEMORY, attr="gpu_memory_mib"),
    ),
    BackgroundSpec,
)

# -- service ---------------------------------------------------------------------------------


def _some_bound(
    r: Reader, obj: Mapping[str, Any], values: dict[str, Any], path: str
) -> dict[str, Any] | None:
    if all(values[k] is None for k in ("ttft", "tpot", "e2e")):
        r.error(path, "give at least one of ttft, tpot, e2e")
        return None
    return values


_SLO = Section(
    (
        Field("ttft", Duration(positive=True)),
        Field("tpot", Duration(positive=True)),
        Field("e2e", Duration(positive=True)),
        Field("attainment", Number(positive=True, at_most=1), default=0.99),
    ),
    Slo,
    check=_some_bound,
    nullable=False,
    extra={"anyOf": [{"required": ["ttft"]}, {"required": ["tpot"]}, {"required": ["e2e"]}]},
)


def _read_slo(r: Reader, value: Any, path: str) -> Slo | None:
    """``slo: 2s`` (end-to-end only) or ``{ttft, tpot, e2e, attainment}``."""
    if isinstance(value, Mapping):
        return _SLO.read(r, value, path)
    seconds = r.duration(value, path, positive=True)
    return None if seconds is None else Slo(e2e=seconds)


def _read_gpu_memory(r: Reader, value: Any, path: str) -> int | str | None:
    """MiB, or ``"whole"``: the replica takes whole GPUs (``None`` in the spec)."""
    return value if value == "whole" else _sr(r).memory(value, path)


_GPU_MEMORY = Custom(
    _read_gpu_memory, lambda ctx: {"anyOf": [{"const": "whole"}, dict(_MEMORY_SCHEMA)]}
)


def _in_order(
    r: Reader, obj: Mapping[str, Any], values: dict[str, Any], path: str
) -> dict[str, Any] | None:
    low, high = values["min"], values["max"]
    if low is not None and high is not None and high < low:
        r.error(f"{path}.max", f"must be at least min ({low}), got {high}")
        return None
    return values


_SERVICE_DEFAULT = ServiceSpec()
_TIME_DEFAULT = ServiceTimeSpec()
_STARTUP_DEFAULT = StartupSpec()
_SERVICE_TIME = Section(
    (
        Field("model", Choice(get_args(ServiceTimeKind)), default=_TIME_DEFAULT.model),
        Field("seconds", Duration(positive=True), default=_TIME_DEFAULT.seconds),
        Field("mean", Duration(positive=True), default=_TIME_DEFAULT.mean),
        Field("sigma", Number(positive=True), default=_TIME_DEFAULT.sigma),
        Field("prefillRate", Number(positive=True), default=_TIME_DEFAULT.prefill_rate),
        Field("decodeRate", Number(positive=True), default=_TIME_DEFAULT.decode_rate),
        Field("overhead", Duration(), default=_TIME_DEFAULT.overhead),
    ),
    ServiceTimeSpec,
)
_STARTUP = Section(
    (
        Field("scheduling", DIST, default=_STARTUP_DEFAULT.scheduling),
        Field("imagePull", DIST, default=_STARTUP_DEFAULT.image_pull),
        Field("imagePullCached", DIST, default=_STARTUP_DEFAULT.image_pull_cached),
        Field("modelLoad", DIST, default=_STARTUP_DEFAULT.model_load),
        Field("retry", Duration(positive=True), default=_STARTUP_DEFAULT.retry),
    ),
    StartupSpec,
)
ENGINE_FIELDS = (
    Field("profile", Text(), default=DEFAULT_PROFILE),
    Field("maxNumSeqs", Integer(1), default=MAX_NUM_SEQS),
    Field("maxNumBatchedTokens", Integer(1), default=MAX_NUM_BATCHED_TOKENS),
    Field("gpuMemoryUtilization", Number(positive=True, at_most=1), default=GPU_MEMORY_UTILIZATION),
    Field("kvCacheTokens", Integer(1)),
    Field("blockSize", Integer(1), default=BLOCK_SIZE),
)
"""The service's fields for ``engine: vllm`` (step-time profile and vLLM's limits)."""
_VLLM_KEYS = tuple(f.name for f in ENGINE_FIELDS)
_PER_REQUEST_KEYS = ("maxBatch", "serviceTime")


def _engine_spec(r: ScenarioReader, values: dict[str, Any], path: str) -> EngineSpec | None:
    """The vLLM engine from the service's flat fields; None (recorded) when it cannot be."""
    engine = {f.key: values.pop(f.key) for f in ENGINE_FIELDS}
    ref, profile = engine.pop("profile"), None
    try:
        profile = None if ref is None else load_profile(ref, r.base_dir)
    except ProfileError as exc:
        for m in exc.messages:
            r.error(f"{path}.profile", m)
    kv, block = engine["kv_cache_tokens"], engine["block_size"]
    if kv is not None and block is not None and kv < block:
        r.error(f"{path}.kvCacheTokens", f"must hold at least one block ({block} tokens), got {kv}")
        return None
    if profile is None or any(engine[k] is None for k in engine if k != "kv_cache_tokens"):
        return None
    return EngineSpec(profile=profile, **engine)


def _service_rules(
    r: Reader, obj: Mapping[str, Any], values: dict[str, Any], path: str
) -> dict[str, Any] | None:
    """Fields of the other engine are errors; buckets increase; the vLLM engine's KV cache fits."""
    engine = values["engine"] or "vllm"
    own = _VLLM_KEYS if engine == "per-request" else _PER_REQUEST_KEYS
    other = "vllm" if engine == "per-request" else "per-request"
    ok = True
    for key in own:
        if key in obj:
            r.error(f"{path}.{key}", f"applies only to engine: {other} (this service has {engine})")
            ok = False
    buckets = values["latency_buckets"]
    if buckets is not None and list(buckets) != sorted(set(buckets)):
        r.error(f"{path}.latencyBuckets", "must be strictly increasing")
        ok = False
    all_read = _SERVICE.all_read(obj, values)
    bounds = values.pop("replicas")
    vllm = _engine_spec(_sr(r), values, path) if engine == "vllm" else None
    for f in ENGINE_FIELDS:
        values.pop(f.key, None)
    memory = values["gpu_memory_mib"]
    if not ok or bounds is None or memory is None or (engine == "vllm" and vllm is None):
        return None
    values |= {
        "gpu_memory_mib": None if memory == "whole" else memory,
        "min_replicas": bounds[0],
        "max_replicas": bounds[1],
        "vllm": vllm,
    }
    if vllm is not None and all_read:
        try:
            ServiceSpec(**values).engine_limits()
        except ValueError as exc:
            r.error(f"{path}.gpuMemory", f"{exc} (profile {vllm.profile.name})")
            return None
    return values


_SERVICE = Section(
    (
        Field("name", Text(), default=_SERVICE_DEFAULT.name),
        Field("gpus", Integer(1), default=_SERVICE_DEFAULT.gpus),
        Field(
            "gpuMemory",
            _GPU_MEMORY,
            default=_SERVICE_DEFAULT.gpu_memory_mib,
            attr="gpu_memory_mib",
        ),
        Field("tolerations", TOLERATIONS, default=()),
        Field("nodeSelector", LABELS, default={}),
        Field("maxBatch", Integer(1), default=_SERVICE_DEFAULT.max_batch),
        Field("serviceTime", _SERVICE_TIME, default=_SERVICE_DEFAULT.service_time),
        Field(
            "routing",
            Choice(("least-outstanding", "round-robin")),
            default=_SERVICE_DEFAULT.routing,
        ),
        Field(
            "slo",
            Custom(
                _read_slo,
                lambda ctx: {"anyOf": [Duration(positive=True).schema(ctx), _SLO.schema(ctx)]},
            ),
            default=_SERVICE_DEFAULT.slo,
        ),
        Field(
            "replicas",
            Section(
                (
                    Field("min", Integer(0), default=_SERVICE_DEFAULT.min_replicas),
                    Field("max", Integer(1), default=_SERVICE_DEFAULT.max_replicas),
                ),
                lambda min, max: (min, max),
                check=_in_order,
            ),
            default=(_SERVICE_DEFAULT.min_replicas, _SERVICE_DEFAULT.max_replicas),
        ),
        Field("initialReplicas", Integer(0), default=_SERVICE_DEFAULT.initial_replicas),
        Field("startup", _STARTUP, default=_SERVICE_DEFAULT.startup),
        Field(
            "terminationGracePeriod",
            Duration(),
            default=_SERVICE_DEFAULT.termination_grace,
            attr="termination_grace",
        ),
        Field("drainOnTermination", Boolean(), default=_SERVICE_DEFAULT.drain, attr="drain"),
        Field("deletionCost", Boolean(), default=_SERVICE_DEFAULT.deletion_cost),
        Field("latencyBuckets", ListOf(Duration(positive=True), "a non-empty list of seconds")),
        Field("engine", Choice(get_args(EngineKind)), default=_SERVICE_DEFAULT.engine),
        *ENGINE_FIELDS,
    ),
    ServiceSpec,
    check=_service_rules,
    extra={
        # Fields of the other engine are errors: vllm (the default) has no maxBatch/serviceTime.
        "if": {"properties": {"engine": {"const": "per-request"}}, "required": ["engine"]},
        "then": {"properties": dict.fromkeys(_VLLM_KEYS, False)},
        "else": {"properties": dict.fromkeys(_PER_REQUEST_KEYS, False)},
    },
)

# -- workload --------------------------------------------------------------------------------

_WORKLOAD_DEFAULT = WorkloadSpec()
_POSITIVE = Number(positive=True)
_NON_NEGATIVE = Number(minimum=0)
WORKLOAD_FIELDS: dict[str, tuple[Field, ...]] = {
    "trace": (
        Field("path", FILE, default=_WORKLOAD_DEFAULT.path),
        Field("speedup", _POSITIVE, default=_WORKLOAD_DEFAULT.speedup),
        Field("scale", _POSITIVE, default=_WORKLOAD_DEFAULT.scale),
        Field("jitter", Duration(), default=_WORKLOAD_DEFAULT.jitter),
    ),
    "poisson": (Field("rate", _POSITIVE, required=True),),
    "diurnal": (
        Field("mean", _POSITIVE, required=True),
        Field("amplitude", _NON_NEGATIVE, default=_WORKLOAD_DEFAULT.amplitude),
        Field("period", Duration(positive=True), default=_WORKLOAD_DEFAULT.period),
        Field("phase", Number(), default=_WORKLOAD_DEFAULT.phase),
        Field("noise", _NON_NEGATIVE, default=_WORKLOAD_DEFAULT.noise),
    ),
    "bursts": (
        Field("base", _NON_NEGATIVE, required=True),
        Field("burst", _NON_NEGATIVE, required=True),
        Field("on", Duration(positive=True), default=_WORKLOAD_DEFAULT.on),
        Field("off", Duration(positive=True), default=_WORKLOAD_DEFAULT.off),
        Field("start", Duration()),
    ),
    "prometheus": (
        Field("url", Text(), required=True),
        Field("query", Text(), required=True),
        Field("start", Number(), required=True, attr="range_start"),
        Field("end", Number(), required=True, attr="range_end"),
        Field("step", Duration(positive=True), default=_WORKLOAD_DEFAULT.step),
        Field("speedup", _POSITIVE, default=_WORKLOAD_DEFAULT.speedup),
        Field("scale", _POSITIVE, default=_WORKLOAD_DEFAULT.scale),
    ),
}
"""Each workload type's own fields (all but ``trace`` also take promptTokens and
generatedTokens)."""
_TOKEN_FIELDS = (
    Field(
        "promptTokens",
        _tokens(_WORKLOAD_DEFAULT.prompt),
        default=_WORKLOAD_DEFAULT.prompt,
        attr="prompt",
    ),
    Field(
        "generatedTokens",
        _tokens(_WORKLOAD_DEFAULT.generated),
        default=_WORKLOAD_DEFAULT.generated,
        attr="generated",
    ),
)
_WORKLOADS = {
    kind: Section(
        (
            Field("type", Const(kind), required=True),
            *fields,
            *(_TOKEN_FIELDS if kind != "trace" else ()),
        ),
        WorkloadSpec,
        missing=f"required for type: {kind}",
        nullable=False,
    )
    for kind, fields in WORKLOAD_FIELDS.items()
}
_WORKLOAD = Tagged("type", lambda: _WORKLOADS, def_name=None, missing=None)

# -- contenders ------------------------------------------------------------------------------


def _more_than_one(r: Reader, value: Any, path: str) -> float | None:
    """KPA's rates: above 1 (as Knative's config validation says it)."""
    rate = r.number(value, path, positive=True)
    if rate is not None and rate <= 1.0:
        r.error(path, f"{path.rsplit('.', 1)[-1]} = {rate:g}, must be greater than 1.0")
        return None
    return rate


_RATE = Custom(_more_than_one, lambda ctx: {"type": "number", "exclusiveMinimum": 1})
_METRIC = Choice(get_args(BaselineMetric))
_BOUNDS = (Field("minReplicas", Integer(0)), Field("maxReplicas", Integer(1)))
_hpa, _keda, _kpa = HpaContender(""), KedaContender(""), KpaContender("")
BASELINE_FIELDS: dict[str, tuple[Field, ...]] = {
    "hpa": (
        Field("metric", _METRIC, default=_hpa.metric),
        Field("target", _POSITIVE, default=_hpa.target),
        Field("quantile", _POSITIVE, default=_hpa.quantile),
        Field("window", Duration(positive=True), default=_hpa.window),
        *_BOUNDS,
    ),
    "keda": (
        Field("metric", _METRIC, default=_keda.metric),
        Field("threshold", _POSITIVE, default=_keda.threshold),
        Field("activationThreshold", Number(), default=_keda.activation_threshold),
        Field("quantile", _POSITIVE, default=_keda.quantile),
        Field("window", Duration(positive=True), default=_keda.window),
        Field("pollingInterval", Duration(positive=True), default=_keda.polling_interval),
        Field("cooldownPeriod", Duration(), default=_keda.cooldown_period),
        *_BOUNDS,
    ),
    "kpa": (
        Field("target", _POSITIVE, default=_kpa.target),
        Field("targetUtilization", _POSITIVE, default=_kpa.target_utilization),
        Field("stableWindow", Duration(positive=True), default=_kpa.stable_window),
        Field("panicWindowPercentage", _POSITIVE, default=_kpa.panic_window_percentage),
        Field("panicThreshold", _POSITIVE, default=_kpa.panic_threshold),
        Field("maxScaleUpRate", _RATE, default=_kpa.max_scale_up_rate),
        Field("maxScaleDownRate", _RATE, default=_kpa.max_scale_down_rate),
        *_BOUNDS,
    ),
    "fixed": (Field("replicas", Integer(1), required=True),),
}
"""Each baseline's knobs, beside ``baseline`` and ``name``."""
_BASELINE_CLASSES: dict[str, Callable[..., Contender]] = {
    "hpa": HpaContender,
    "keda": KedaContender,
    "kpa": KpaContender,
    "fixed": lambda label, replicas: FixedContender(label or f"fixed-{replicas}", replicas),
}


def _baseline_section(kind: str) -> Section[Contender]:
    make = _BASELINE_CLASSES[kind]
    default_label = "" if kind == "fixed" else kind

    def build(name: str | None, **knobs: Any) -> Contender:
        return make(default_label if name is None else name, **knobs)

    return Section(
        (
            Field("baseline", Const(kind), required=True, attr=""),
            Field("name", Label()),
            *BASELINE_FIELDS[kind],
        ),
        build,
        missing=f"required for baseline: {kind}",
        nullable=False,
    )


_BASELINES = {kind: _baseline_section(kind) for kind in (*BASELINES, "fixed")}
_BASELINE = Tagged("baseline", lambda: _BASELINES, def_name=None, missing=None)
_POLICY_FILE = Section(
    (Field("file", FILE, required=True), Field("name", Label())),
    lambda file, name: (file, name),
    nullable=False,
)


def read_contender(r: ScenarioReader, item: Any, p: str) -> list[Contender]:
    """The contenders of one ``policies:`` entry at path ``p`` (a policy file may hold several);
    problems go to ``r``. The sweep spec reads its baseline points through this too."""
    if not isinstance(item, Mapping):
        r.error(p, f"expected a mapping with file: or baseline:, got {show(item)}")
        return []
    if "file" not in item:
        baseline = _BASELINE.read(r, item, p)
        return [] if baseline is None else [baseline]
    got = _POLICY_FILE.read(r, item, p)
    if got is None:
        return []
    path, name = got
    try:
        policies = load_policy_file(path)
    except PolicyFileError as exc:
        for m in exc.messages:
            r.error(f"{p}.file", m)
        return []
    if not policies:
        r.error(f"{p}.file", f"{path}: no ScalingPolicy in the file")
    label = name if name is not None and len(policies) == 1 else None
    return [GpuscaleContender(label or pol.name, pol, str(path)) for pol in policies]


_CONTENDER = Custom(
    lambda r, v, p: read_contender(_sr(r), v, p),
    lambda ctx: {
        "oneOf": [_POLICY_FILE.schema(ctx), *(s.schema(ctx) for s in _BASELINES.values())]
    },
)


def _unique_labels(
    r: Reader, obj: Mapping[str, Any], values: dict[str, Any], path: str
) -> dict[str, Any] | None:
    contenders: list[Contender] = []
    used: set[str] = set()
    for i, entry in enumerate(values["contenders"] or ()):
        for c in entry:
            if c.label in used:
                r.error(
                    f"policies[{i}]",
                    f"duplicate policy name {c.label!r} (set name: to tell them apart)",
                )
            used.add(c.label)
            contenders.append(c)
    return values | {"contenders": tuple(contenders)}


_VARIANTS = variants_section(SharedKinds(LABELS, TOLERATIONS, _GPU_MEMORY))
"""``variants:`` as written (:mod:`simulations.config.variants`); the check resolves it against
the service, whose values its fields default to."""


def _scenario_check(
    r: Reader, obj: Mapping[str, Any], values: dict[str, Any], path: str
) -> dict[str, Any] | None:
    """Contender labels are unique; ``variants:`` is read against the service it varies."""
    checked = _unique_labels(r, obj, values, path)
    decl = values["variants"]
    if checked is None or decl is None or values["service"] is None:
        return checked
    resolved = resolve_variants(_sr(r), decl, values["service"])
    return None if resolved is None else checked | {"variants": resolved}


SCENARIO_DOCUMENT: Section[dict[str, Any]] = Section(
    (
        Field("name", Text()),
        Field("seed", Integer(0), default=1),
        Field("duration", Duration(positive=True)),
        Field("timelineInterval", Duration(positive=True), default=10.0),
        Field("cluster", _CLUSTER, required=True),
        Field("background", _BACKGROUND, default=BackgroundSpec()),
        Field("service", _SERVICE, required=True),
        Field("workload", _WORKLOAD, required=True),
        Field(
            "metrics",
            Section((Field("scrapeInterval", Duration(positive=True), default=15.0),), MetricsSpec),
            default=MetricsSpec(),
        ),
        Field(
            "hpa",
            Section(
                (
                    Field("syncPeriod", Duration(positive=True), default=15.0),
                    Field("tolerance", _NON_NEGATIVE, default=0.1),
                    Field("gpuscaleTolerance", _NON_NEGATIVE, default=0.0),
                    Field("staleAfter", Duration(positive=True), default=120.0),
                ),
                HpaSettings,
            ),
            default=HpaSettings(),
        ),
        Field(
            "policies",
            ListOf(_CONTENDER, "a list", allow_empty=True),
            default=(),
            attr="contenders",
        ),
        Field("variants", _VARIANTS),
    ),
    dict,
    check=_scenario_check,
    missing="required",
    nullable=False,
    extra={"minProperties": 1},
)
"""A scenario file: read into the fields of a :class:`Scenario` (all but its file, and its
name where the file gives none)."""


def parse_scenario(document: Any, file: str, base_dir: Path) -> Scenario:
    """Build a scenario from a parsed YAML document; :class:`ScenarioError` lists every error."""
    r = ScenarioReader(base_dir)
    if document is None or (isinstance(document, Mapping) and not document):
        r.error(ROOT, "empty scenario")
        raise ScenarioError(r.messages(file))
    values = SCENARIO_DOCUMENT.read(r, document, ROOT)
    if r.errors or values is None:
        raise ScenarioError(r.messages(file) or [f"{file}: invalid scenario"])
    name = values.pop("name") or Path(file).stem
    return Scenario(name=name, file=file, **values)


def read_yaml_file(p: Path, error: type[ScenarioError] = ScenarioError) -> Any:
    """The YAML document in ``p``; an unreadable file or bad YAML raises ``error`` with
    ``file: line L, column C: problem``."""
    try:
        text = p.read_text()
    except OSError as exc:
        raise error([f"{p}: cannot read: {exc.strerror or exc}"]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        bad = yaml_problem(exc)
        where = f"line {bad.line}, column {bad.column}: " if bad.line is not None else ""
        raise error([f"{p}: {where}{bad.problem}"]) from None


def load_scenario(path: Path | str | None = None) -> Scenario:
    """Read a scenario file (the built-in default when ``path`` is ``None``)."""
    p = DEFAULT_SCENARIO if path is None else Path(path)
    return parse_scenario(read_yaml_file(p), str(p), p.resolve().parent)
