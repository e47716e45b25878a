"""Scenario files: the cluster, its background load, the service, the workload and the policies
to compare, parsed and validated in one place.

Every error names the file and the field path (``scenario.yaml: service.gpuMemory: expected a
memory quantity like "40Gi" or MiB as a number, got "lots"``); all errors of a file are reported
at once. Unknown fields are errors, so a typo never silently falls back to a default.
``simulations/README.md`` documents every field.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import yaml

import policies
from extender.objects import Taint, Toleration
from extender.quantity import QuantityError, gpu_memory_mib
from policies.parse import PolicyFileError, load_policy_file
from policies.profiles import ProfileError, load_profile
from policies.reading import SCENARIO, Reader, show, yaml_problem
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
from simulations.config.variants import VariantsSpec, read_variants

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
    memory quantities, label maps, file paths (relative to ``base_dir``), random durations,
    token counts, taints and tolerations."""

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

    def taints(self, value: Any, path: str) -> tuple[Taint, ...] | None:
        if not isinstance(value, list):
            self.error(path, f"expected a list, got {show(value)}")
            return None
        out = []
        for i, item in enumerate(value):
            p = f"{path}[{i}]"
            obj = self.mapping(item, p, optional=("key", "value", "effect"))
            if obj is None:
                continue
            key = self.field(obj, p, "key", self.string, "")
            if not key:
                self.error(f"{p}.key", "required")
                continue
            val = self.field(
                obj, p, "value", lambda v, q: v if isinstance(v, str) else self.string(v, q), ""
            )
            effect = self.field(
                obj,
                p,
                "effect",
                lambda v, q: self.choice(v, q, ("NoSchedule", "PreferNoSchedule", "NoExecute")),
                "NoSchedule",
            )
            out.append(Taint(key, val, effect))
        return tuple(out)

    def tolerations(self, value: Any, path: str) -> tuple[Toleration, ...] | None:
        if not isinstance(value, list):
            self.error(path, f"expected a list, got {show(value)}")
            return None
        out = []
        for i, item in enumerate(value):
            p = f"{path}[{i}]"
            obj = self.mapping(item, p, optional=("key", "operator", "value", "effect"))
            if obj is None:
                continue
            key = self.field(
                obj, p, "key", lambda v, q: v if isinstance(v, str) else self.string(v, q), ""
            )
            op = self.field(
                obj, p, "operator", lambda v, q: self.choice(v, q, ("Equal", "Exists")), "Equal"
            )
            val = self.field(
                obj, p, "value", lambda v, q: v if isinstance(v, str) else self.string(v, q), ""
            )
            effect = self.field(
                obj,
                p,
                "effect",
                lambda v, q: self.choice(v, q, ("", "NoSchedule", "PreferNoSchedule", "NoExecute")),
                "",
            )
            out.append(Toleration(key, op, val, effect))
        return tuple(out)


def _cluster(r: ScenarioReader, value: Any) -> ClusterSpec:
    obj = r.mapping(value, "cluster", optional=("pools", "openb", "scoring"))
    if obj is None:
        return ClusterSpec(())
    scoring = r.field(
        obj,
        "cluster",
        "scoring",
        lambda v, p: r.choice(v, p, ("binpack", "spread", "fragmentation")),
        "binpack",
    )
    pools: list[PoolSpec] = []
    raw = obj.get("pools", [])
    if not isinstance(raw, list):
        r.error("cluster.pools", f"expected a list, got {show(raw)}")
        raw = []
    for i, item in enumerate(raw):
        p = f"cluster.pools[{i}]"
        o = r.mapping(
            item, p, optional=("name", "count", "gpus", "gpuMemory", "model", "labels", "taints")
        )
        if o is None:
            continue
        missing = [k for k in ("count", "gpus", "gpuMemory") if k not in o]
        for k in missing:
            r.error(f"{p}.{k}", "required")
        if missing:
            continue
        pools.append(
            PoolSpec(
                name=r.field(o, p, "name", r.string, f"pool{i}"),
                count=r.field(o, p, "count", lambda v, q: r.integer(v, q, minimum=1), 1),
                gpus=r.field(o, p, "gpus", lambda v, q: r.integer(v, q, minimum=1), 1),
                gpu_memory_mib=r.field(o, p, "gpuMemory", r.memory, 1),
                model=r.field(o, p, "model", r.string, ""),
                labels=r.field(o, p, "labels", r.labels, {}),
                taints=r.field(o, p, "taints", r.taints, ()),
            )
        )
    openb: OpenbClusterSpec | None = None
    if "openb" in obj:
        o = r.mapping(obj["openb"], "cluster.openb", optional=("nodes", "count", "gpuMemory"))
        if o is not None:
            path = r.field(
                o, "cluster.openb", "nodes", r.path, DATA_DIR / "openb_node_list_gpu_node.csv"
            )
            count = (
                r.field(o, "cluster.openb", "count", lambda v, q: r.integer(v, q, minimum=1), 0)
                or None
            )
            mem: dict[str, int] = {
                "V100M16": 16384,
                "V100M32": 32768,
                "T4": 16384,
                "P100": 16384,
                "A10": 24576,
                "G2": 16384,
                "G3": 32768,
            }
            if "gpuMemory" in o:
                m = r.mapping(o["gpuMemory"], "cluster.openb.gpuMemory", optional=(*mem, "default"))
                for k, v in (m or {}).items():
                    got = r.memory(v, f"cluster.openb.gpuMemory.{k}")
                    if got is not None:
                        mem[str(k)] = got
            openb = OpenbClusterSpec(path, count, mem)
    if not pools and openb is None:
        r.error("cluster", "needs pools or openb (a cluster without nodes cannot run replicas)")
    return ClusterSpec(tuple(pools), openb, scoring)


def _background(r: ScenarioReader, value: Any) -> BackgroundSpec:
    obj = r.mapping(value, "background", optional=("pods", "podList", "gpuMemory"))
    if obj is None:
        return BackgroundSpec()
    return BackgroundSpec(
        pods=r.field(obj, "background", "pods", r.integer, 0),
        path=r.field(obj, "background", "podList", r.path, BackgroundSpec().path),
        gpu_memory_mib=r.field(obj, "background", "gpuMemory", r.memory, 0) or None,
    )


def _service(r: ScenarioReader, value: Any) -> ServiceSpec:
    keys = (
        "name",
        "gpus",
        "gpuMemory",
        "tolerations",
        "nodeSelector",
        "maxBatch",
        "serviceTime",
        "routing",
        "slo",
        "replicas",
        "initialReplicas",
        "startup",
        "terminationGracePeriod",
        "drainOnTermination",
        "deletionCost",
        "latencyBuckets",
        "engine",
        *_VLLM_KEYS,
    )
    obj = r.mapping(value, "service", optional=keys)
    d = ServiceSpec()
    if obj is None:
        obj = {}
    engine = r.field(
        obj, "service", "engine", lambda v, q: r.choice(v, q, ("vllm", "per-request")), "vllm"
    )
    own = _VLLM_KEYS if engine == "per-request" else ("maxBatch", "serviceTime")
    other = "vllm" if engine == "per-request" else "per-request"
    for key in own:
        if key in obj:
            r.error(
                f"service.{key}", f"applies only to engine: {other} (this service has {engine})"
            )
    st = d.service_time
    if "serviceTime" in obj:
        o = r.mapping(
            obj["serviceTime"],
            "service.serviceTime",
            optional=("model", "seconds", "mean", "sigma", "prefillRate", "decodeRate", "overhead"),
        )
        if o is not None:
            p = "service.serviceTime"
            pos = lambda v, q: r.number(v, q, positive=True)  # noqa: E731
            st = ServiceTimeSpec(
                model=r.field(
                    o,
                    p,
                    "model",
                    lambda v, q: r.choice(v, q, ("fixed", "exponential", "lognormal", "tokens")),
                    st.model,
                ),
                seconds=r.field(
                    o, p, "seconds", lambda v, q: r.duration(v, q, positive=True), st.seconds
                ),
                mean=r.field(o, p, "mean", lambda v, q: r.duration(v, q, positive=True), st.mean),
                sigma=r.field(o, p, "sigma", pos, st.sigma),
                prefill_rate=r.field(o, p, "prefillRate", pos, st.prefill_rate),
                decode_rate=r.field(o, p, "decodeRate", pos, st.decode_rate),
                overhead=r.field(o, p, "overhead", r.duration, st.overhead),
            )
    su = d.startup
    if "startup" in obj:
        o = r.mapping(
            obj["startup"],
            "service.startup",
            optional=("scheduling", "imagePull", "imagePullCached", "modelLoad", "retry"),
        )
        if o is not None:
            p = "service.startup"
            su = StartupSpec(
                scheduling=r.field(o, p, "scheduling", r.dist, su.scheduling),
                image_pull=r.field(o, p, "imagePull", r.dist, su.image_pull),
                image_pull_cached=r.field(o, p, "imagePullCached", r.dist, su.image_pull_cached),
                model_load=r.field(o, p, "modelLoad", r.dist, su.model_load),
                retry=r.field(
                    o, p, "retry", lambda v, q: r.duration(v, q, positive=True), su.retry
                ),
            )
    lo, hi = d.min_replicas, d.max_replicas
    if "replicas" in obj:
        o = r.mapping(obj["replicas"], "service.replicas", optional=("min", "max"))
        if o is not None:
            lo = r.field(o, "service.replicas", "min", r.integer, lo)
            hi = r.field(o, "service.replicas", "max", lambda v, q: r.integer(v, q, minimum=1), hi)
            if hi < lo:
                r.error("service.replicas.max", f"must be at least min ({lo}), got {hi}")
    buckets: tuple[float, ...] | None = None
    if "latencyBuckets" in obj:
        raw = obj["latencyBuckets"]
        if not isinstance(raw, list) or not raw:
            r.error(
                "service.latencyBuckets", f"expected a non-empty list of seconds, got {show(raw)}"
            )
        else:
            vals = [
                r.duration(v, f"service.latencyBuckets[{i}]", positive=True)
                for i, v in enumerate(raw)
            ]
            if all(v is not None for v in vals):
                fl = [v for v in vals if v is not None]
                if fl != sorted(set(fl)):
                    r.error("service.latencyBuckets", "must be strictly increasing")
                else:
                    buckets = tuple(fl)
    gpu_mem: int | None = d.gpu_memory_mib
    if "gpuMemory" in obj:
        gpu_mem = (
            None if obj["gpuMemory"] == "whole" else r.memory(obj["gpuMemory"], "service.gpuMemory")
        )
    vllm = _engine(r, obj) if engine == "vllm" else None
    slo = _slo(r, obj["slo"]) if "slo" in obj else d.slo
    spec = ServiceSpec(
        name=r.field(obj, "service", "name", r.string, d.name),
        gpus=r.field(obj, "service", "gpus", lambda v, q: r.integer(v, q, minimum=1), d.gpus),
        gpu_memory_mib=gpu_mem,
        tolerations=r.field(obj, "service", "tolerations", r.tolerations, ()),
        node_selector=r.field(obj, "service", "nodeSelector", r.labels, {}),
        max_batch=r.field(
            obj, "service", "maxBatch", lambda v, q: r.integer(v, q, minimum=1), d.max_batch
        ),
        service_time=st,
        routing=r.field(
            obj,
            "service",
            "routing",
            lambda v, q: r.choice(v, q, ("least-outstanding", "round-robin")),
            d.routing,
        ),
        min_replicas=lo,
        max_replicas=hi,
        initial_replicas=r.field(obj, "service", "initialReplicas", r.integer, d.initial_replicas),
        startup=su,
        termination_grace=r.field(
            obj, "service", "terminationGracePeriod", r.duration, d.termination_grace
        ),
        drain=r.field(obj, "service", "drainOnTermination", r.boolean, d.drain),
        deletion_cost=r.field(obj, "service", "deletionCost", r.boolean, d.deletion_cost),
        latency_buckets=buckets,
        engine=cast(EngineKind, engine),
        vllm=vllm,
        slo=slo,
    )
    if vllm is not None:
        try:
            spec.engine_limits()
        except ValueError as exc:
            r.error("service.gpuMemory", f"{exc} (profile {vllm.profile.name})")
    return spec


_VLLM_KEYS = (
    "profile",
    "maxNumSeqs",
    "maxNumBatchedTokens",
    "gpuMemoryUtilization",
    "kvCacheTokens",
    "blockSize",
)


def _engine(r: ScenarioReader, obj: Mapping[str, Any]) -> EngineSpec | None:
    ref = r.field(obj, "service", "profile", r.string, DEFAULT_PROFILE)
    try:
        profile = load_profile(ref, r.base_dir)
    except ProfileError as exc:
        for m in exc.messages:
            r.error("service.profile", m)
        return None
    p = "service"
    util = r.field(obj, p, "gpuMemoryUtilization", lambda v, q: r.number(v, q, positive=True), 0.9)
    if util > 1:
        r.error(f"{p}.gpuMemoryUtilization", f"must be at most 1, got {util!r}")
    kv = r.field(obj, p, "kvCacheTokens", lambda v, q: r.integer(v, q, minimum=1), 0)
    block = r.field(obj, p, "blockSize", lambda v, q: r.integer(v, q, minimum=1), BLOCK_SIZE)
    if kv and kv < block:
        r.error(f"{p}.kvCacheTokens", f"must hold at least one block ({block} tokens), got {kv}")
    return EngineSpec(
        profile=profile,
        max_num_seqs=r.field(
            obj, p, "maxNumSeqs", lambda v, q: r.integer(v, q, minimum=1), MAX_NUM_SEQS
        ),
        max_num_batched_tokens=r.field(
            obj,
            p,
            "maxNumBatchedTokens",
            lambda v, q: r.integer(v, q, minimum=1),
            MAX_NUM_BATCHED_TOKENS,
        ),
        gpu_memory_utilization=min(util, 1.0),
        kv_cache_tokens=kv or None,
        block_size=block,
    )


def _slo(r: ScenarioReader, value: Any) -> Slo:
    """``slo: 2s`` (end-to-end only) or ``{ttft, tpot, e2e, attainment}``."""
    if not isinstance(value, Mapping):
        seconds = r.duration(value, "service.slo", positive=True)
        return DEFAULT_SLO if seconds is None else Slo(e2e=seconds)
    obj = r.mapping(value, "service.slo", optional=("ttft", "tpot", "e2e", "attainment"))
    if obj is None:
        return DEFAULT_SLO
    bounds = {}
    for key in ("ttft", "tpot", "e2e"):
        if key in obj:
            bounds[key] = r.duration(obj[key], f"service.slo.{key}", positive=True)
    if not any(v is not None for v in bounds.values()):
        r.error("service.slo", "give at least one of ttft, tpot, e2e")
    attainment = r.field(
        obj, "service.slo", "attainment", lambda v, q: r.number(v, q, positive=True), 0.99
    )
    if attainment > 1:
        r.error("service.slo.attainment", f"must be at most 1, got {attainment!r}")
    return Slo(
        ttft=bounds.get("ttft"),
        tpot=bounds.get("tpot"),
        e2e=bounds.get("e2e"),
        attainment=min(attainment, 1.0),
    )


_WORKLOAD_KEYS: dict[str, tuple[str, ...]] = {
    "trace": ("path", "speedup", "scale", "jitter"),
    "poisson": ("rate",),
    "diurnal": ("mean", "amplitude", "period", "phase", "noise"),
    "bursts": ("base", "burst", "on", "off", "start"),
    "prometheus": ("url", "query", "start", "end", "step", "speedup", "scale"),
}


def _workload(r: ScenarioReader, value: Any) -> WorkloadSpec:
    if not isinstance(value, Mapping):
        r.error("workload", f"expected a mapping, got {show(value)}")
        return WorkloadSpec()
    kind: Any = r.choice(value.get("type"), "workload.type", tuple(_WORKLOAD_KEYS)) or "trace"
    allowed = (
        "type",
        *_WORKLOAD_KEYS[kind],
        *(("promptTokens", "generatedTokens") if kind != "trace" else ()),
    )
    obj = r.mapping(value, "workload", optional=allowed)
    if obj is None:
        return WorkloadSpec()
    d = WorkloadSpec()
    p = "workload"
    pos = lambda v, q: r.number(v, q, positive=True)  # noqa: E731
    nonneg = lambda v, q: r.number(v, q, minimum=0.0)  # noqa: E731
    dur = lambda v, q: r.duration(v, q, positive=True)  # noqa: E731
    required = {
        "poisson": ("rate",),
        "diurnal": ("mean",),
        "bursts": ("base", "burst"),
        "prometheus": ("url", "query", "start", "end"),
    }.get(kind, ())
    for key in required:
        if key not in obj:
            r.error(f"{p}.{key}", f"required for type: {kind}")
    return WorkloadSpec(
        type=kind,
        path=r.field(obj, p, "path", r.path, d.path),
        speedup=r.field(obj, p, "speedup", pos, d.speedup),
        scale=r.field(obj, p, "scale", pos, d.scale),
        jitter=r.field(obj, p, "jitter", r.duration, d.jitter),
        rate=r.field(obj, p, "rate", pos, d.rate),
        mean=r.field(obj, p, "mean", pos, d.mean),
        amplitude=r.field(obj, p, "amplitude", nonneg, d.amplitude),
        period=r.field(obj, p, "period", dur, d.period),
        phase=r.field(obj, p, "phase", r.number, d.phase),
        noise=r.field(obj, p, "noise", nonneg, d.noise),
        base=r.field(obj, p, "base", nonneg, d.base),
        burst=r.field(obj, p, "burst", nonneg, d.burst),
        on=r.field(obj, p, "on", dur, d.on),
        off=r.field(obj, p, "off", dur, d.off),
        start=r.field(obj, p, "start", r.duration, None)
        if "start" in obj and kind == "bursts"
        else None,
        url=r.field(obj, p, "url", r.string, d.url),
        query=r.field(obj, p, "query", r.string, d.query),
        range_start=r.field(obj, p, "start", r.number, 0.0) if kind == "prometheus" else 0.0,
        range_end=r.field(obj, p, "end", r.number, 0.0) if kind == "prometheus" else 0.0,
        step=r.field(obj, p, "step", dur, d.step),
        prompt=r.field(obj, p, "promptTokens", lambda v, q: r.tokens(v, q, d.prompt), d.prompt),
        generated=r.field(
            obj, p, "generatedTokens", lambda v, q: r.tokens(v, q, d.generated), d.generated
        ),
    )


def _bounds(r: ScenarioReader, o: Mapping[str, Any], p: str) -> tuple[int | None, int | None]:
    lo = r.field(o, p, "minReplicas", r.integer, -1)
    hi = r.field(o, p, "maxReplicas", lambda v, q: r.integer(v, q, minimum=1), -1)
    return (None if lo < 0 else lo), (None if hi < 0 else hi)


def read_contender(r: ScenarioReader, item: Any, p: str) -> list[Contender]:
    """The contenders of one ``policies:`` entry at path ``p`` (a policy file may hold several);
    problems go to ``r``. The sweep spec reads its baseline points through this too."""
    if not isinstance(item, Mapping):
        r.error(p, f"expected a mapping with file: or baseline:, got {show(item)}")
        return []
    if "file" in item:
        o = r.mapping(item, p, optional=("file", "name"))
        if o is None:
            return []
        path = r.path(o.get("file"), f"{p}.file")
        if path is None:
            return []
        try:
            policies = load_policy_file(path)
        except PolicyFileError as exc:
            for m in exc.messages:
                r.error(f"{p}.file", m)
            return []
        if not policies:
            r.error(f"{p}.file", f"{path}: no ScalingPolicy in the file")
        out: list[Contender] = []
        for pol in policies:
            label = str(o.get("name")) if "name" in o and len(policies) == 1 else pol.name
            out.append(GpuscaleContender(label, pol, str(path)))
        return out
    kind = r.choice(item.get("baseline"), f"{p}.baseline", (*BASELINES, "fixed"))
    if kind is None:
        return []
    label = str(item.get("name", kind))
    metrics = ("queue", "concurrency", "latency", "rate")
    pos = lambda v, q: r.number(v, q, positive=True)  # noqa: E731
    if kind == "hpa":
        o = r.mapping(
            item,
            p,
            optional=(
                "baseline",
                "name",
                "metric",
                "target",
                "quantile",
                "window",
                "minReplicas",
                "maxReplicas",
            ),
        )
        if o is None:
            return []
        d = HpaContender(label)
        lo, hi = _bounds(r, o, p)
        return [
            HpaContender(
                label,
                metric=r.field(o, p, "metric", lambda v, q: r.choice(v, q, metrics), d.metric),
                target=r.field(o, p, "target", pos, d.target),
                quantile=r.field(o, p, "quantile", pos, d.quantile),
                window=r.field(
                    o, p, "window", lambda v, q: r.duration(v, q, positive=True), d.window
                ),
                min_replicas=lo,
                max_replicas=hi,
            )
        ]
    if kind == "keda":
        o = r.mapping(
            item,
            p,
            optional=(
                "baseline",
                "name",
                "metric",
                "threshold",
                "activationThreshold",
                "quantile",
                "window",
                "pollingInterval",
                "cooldownPeriod",
                "minReplicas",
                "maxReplicas",
            ),
        )
        if o is None:
            return []
        k = KedaContender(label)
        lo, hi = _bounds(r, o, p)
        return [
            KedaContender(
                label,
                metric=r.field(o, p, "metric", lambda v, q: r.choice(v, q, metrics), k.metric),
                threshold=r.field(o, p, "threshold", pos, k.threshold),
                activation_threshold=r.field(
                    o, p, "activationThreshold", r.number, k.activation_threshold
                ),
                quantile=r.field(o, p, "quantile", pos, k.quantile),
                window=r.field(
                    o, p, "window", lambda v, q: r.duration(v, q, positive=True), k.window
                ),
                polling_interval=r.field(
                    o,
                    p,
                    "pollingInterval",
                    lambda v, q: r.duration(v, q, positive=True),
                    k.polling_interval,
                ),
                cooldown_period=r.field(o, p, "cooldownPeriod", r.duration, k.cooldown_period),
                min_replicas=lo,
                max_replicas=hi,
            )
        ]
    if kind == "kpa":
        o = r.mapping(
            item,
            p,
            optional=(
                "baseline",
                "name",
                "target",
                "targetUtilization",
                "stableWindow",
                "panicWindowPercentage",
                "panicThreshold",
                "maxScaleUpRate",
                "maxScaleDownRate",
                "minReplicas",
                "maxReplicas",
            ),
        )
        if o is None:
            return []
        a = KpaContender(label)
        lo, hi = _bounds(r, o, p)
        up = r.field(o, p, "maxScaleUpRate", pos, a.max_scale_up_rate)
        down = r.field(o, p, "maxScaleDownRate", pos, a.max_scale_down_rate)
        for key, v in (("maxScaleUpRate", up), ("maxScaleDownRate", down)):
            if v <= 1.0:
                r.error(f"{p}.{key}", f"{key} = {v:g}, must be greater than 1.0")
        return [
            KpaContender(
                label,
                target=r.field(o, p, "target", pos, a.target),
                target_utilization=r.field(o, p, "targetUtilization", pos, a.target_utilization),
                stable_window=r.field(
                    o,
                    p,
                    "stableWindow",
                    lambda v, q: r.duration(v, q, positive=True),
                    a.stable_window,
                ),
                panic_window_percentage=r.field(
                    o, p, "panicWindowPercentage", pos, a.panic_window_percentage
                ),
                panic_threshold=r.field(o, p, "panicThreshold", pos, a.panic_threshold),
                max_scale_up_rate=up,
                max_scale_down_rate=down,
                min_replicas=lo,
                max_replicas=hi,
            )
        ]
    o = r.mapping(item, p, optional=("baseline", "name", "replicas"))
    if o is None:
        return []
    if "replicas" not in o:
        r.error(f"{p}.replicas", "required for baseline: fixed")
        return []
    n = r.field(o, p, "replicas", lambda v, q: r.integer(v, q, minimum=1), 1)
    return [FixedContender(label if "name" in item else f"fixed-{n}", n)]


def parse_scenario(document: Any, file: str, base_dir: Path) -> Scenario:
    """Build a scenario from a parsed YAML document; :class:`ScenarioError` lists every error."""
    r = ScenarioReader(base_dir)
    top = (
        "name",
        "seed",
        "duration",
        "timelineInterval",
        "cluster",
        "background",
        "service",
        "workload",
        "metrics",
        "hpa",
        "policies",
        "variants",
    )
    obj = r.mapping(document, "", optional=top)
    if obj is None or not obj:
        if obj is not None:
            r.error("(top)", "empty scenario")
        raise ScenarioError(r.messages(file))
    for key in ("cluster", "service", "workload"):
        if key not in obj:
            r.error(key, "required")
    metrics = MetricsSpec()
    if "metrics" in obj:
        o = r.mapping(obj["metrics"], "metrics", optional=("scrapeInterval",))
        if o is not None:
            metrics = MetricsSpec(
                r.field(
                    o,
                    "metrics",
                    "scrapeInterval",
                    lambda v, q: r.duration(v, q, positive=True),
                    15.0,
                )
            )
    hpa = HpaSettings()
    if "hpa" in obj:
        o = r.mapping(
            obj["hpa"],
            "hpa",
            optional=("syncPeriod", "tolerance", "gpuscaleTolerance", "staleAfter"),
        )
        if o is not None:
            frac = lambda v, q: r.number(v, q, minimum=0.0)  # noqa: E731
            hpa = HpaSettings(
                sync_period=r.field(
                    o,
                    "hpa",
                    "syncPeriod",
                    lambda v, q: r.duration(v, q, positive=True),
                    hpa.sync_period,
                ),
                tolerance=r.field(o, "hpa", "tolerance", frac, hpa.tolerance),
                gpuscale_tolerance=r.field(
                    o, "hpa", "gpuscaleTolerance", frac, hpa.gpuscale_tolerance
                ),
                stale_after=r.field(
                    o,
                    "hpa",
                    "staleAfter",
                    lambda v, q: r.duration(v, q, positive=True),
                    hpa.stale_after,
                ),
            )
    contenders: list[Contender] = []
    raw = obj.get("policies", [])
    if not isinstance(raw, list):
        r.error("policies", f"expected a list, got {show(raw)}")
        raw = []
    used: set[str] = set()
    for i, item in enumerate(raw):
        for c in read_contender(r, item, f"policies[{i}]"):
            if c.label in used:
                r.error(
                    f"policies[{i}]",
                    f"duplicate policy name {c.label!r} (set name: to tell them apart)",
                )
            used.add(c.label)
            contenders.append(c)
    duration = None
    if "duration" in obj:
        duration = r.duration(obj["duration"], "duration", positive=True)
    scenario = Scenario(
        name=r.field(obj, "", "name", r.string, Path(file).stem),
        file=file,
        seed=r.field(obj, "", "seed", r.integer, 1),
        duration=duration,
        timeline_interval=r.field(
            obj, "", "timelineInterval", lambda v, q: r.duration(v, q, positive=True), 10.0
        ),
        cluster=_cluster(r, obj.get("cluster")) if "cluster" in obj else ClusterSpec(()),
        background=_background(r, obj.get("background")),
        service=_service(r, obj.get("service")),
        workload=_workload(r, obj.get("workload")) if "workload" in obj else WorkloadSpec(),
        metrics=metrics,
        hpa=hpa,
        contenders=tuple(contenders),
    )
    if "variants" in obj:
        variants = read_variants(r, obj["variants"], scenario.service)
        scenario = dataclasses.replace(scenario, variants=variants)
    if r.errors:
        raise ScenarioError(r.messages(file))
    return scenario


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
