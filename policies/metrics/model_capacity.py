"""``modelCapacity``: the replicas a step-time profile says keep TTFT and TPOT within bounds at
the observed request rate and token mix.

Proposes the smallest count whose modelled mean TTFT and TPOT at the observed request rate and
token mix meet the bounds (:func:`policies.stepmodel.replicas_for_slo`, the same step-time
profile the simulator runs); the reason shows the arithmetic at that count and why one replica
fewer would not do. A bound that no count meets (a prompt whose prefill alone exceeds the TTFT
bound) is sized just above what an idle replica achieves instead of at ``max``, and the
proposal says so (``unreachable``, :mod:`policies.reachable`). The token mix comes from two
more queries (token rates over the request rate) or from fixed means per request; a missing
token query makes the metric missing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from policies.decide_types import Proposal
from policies.declare import (
    NON_EMPTY,
    Custom,
    Duration,
    Field,
    Fraction,
    Integer,
    Positive,
    Section,
    Text,
)
from policies.durations import format_duration
from policies.metrics.base import MetricKind, QueryField, input_key
from policies.profiles import (
    ProfileError,
    load_profile,
    parse_bytes,
    parse_profile,
    profile_document,
)
from policies.reading import Reader
from policies.stepmodel import (
    GPU_MEMORY_UTILIZATION,
    MAX_NUM_BATCHED_TOKENS,
    MAX_NUM_SEQS,
    EngineLimits,
    StepProfile,
    TokenMix,
    kv_blocks_for_tokens,
    kv_cache_blocks,
    replicas_for_slo,
    steady_state,
)

PROMPT_TOKENS = "promptTokens"
GENERATION_TOKENS = "generationTokens"

_isfinite = math.isfinite


@dataclass(frozen=True, slots=True)
class ServingSlo:
    """Bounds on the modelled mean time to first token and time per output token (seconds)."""

    ttft: float | None = None
    tpot: float | None = None


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


def model_capacity(
    metric: ModelCapacityMetric,
    rate: float,
    mix: TokenMix,
    max_replicas: int,
    sized_for: float | None = None,
) -> Proposal:
    """Size for ``sized_for`` (a forecast) or ``rate`` requests/s of ``mix``."""
    rate = max(rate, 0.0)
    lam = rate if sized_for is None else max(sized_for, rate)
    mixed = f"{lam:.3g} req/s × ({mix.prompt:.0f} prompt + {mix.generated:.0f} generated tokens)"
    if sized_for is not None and lam > rate:
        mixed = f"{rate:.3g} req/s now, {mixed} forecast by coldStart"
    if lam <= 0:
        return Proposal(metric.name, "modelCapacity", rate, 0, "no load → 0", False, sized_for)
    slo = metric.slo
    s = replicas_for_slo(metric.profile, metric.limits, lam, mix, slo.ttft, slo.tpot, max_replicas)
    p = metric.profile
    model = (
        f"{p.name}: step = {p.beta0 * 1e3:.3g}ms + {p.beta1 * 1e6:.3g}µs·prefill"
        f" + {p.beta2 * 1e6:.3g}µs·decoding"
    )
    why = f"{mixed}; {model}; {s.why}"
    if s.unreachable is not None:
        why = f"{mixed}; {model}; unreachable: {s.unreachable}; {s.why}"
    st = s.state
    if st is not None and st.limit is None and s.replicas > 0:
        d = mix.decode_steps
        budget = metric.limits.max_num_batched_tokens
        chunks = math.ceil(mix.prompt / max(budget - st.decoding, 1.0)) if mix.prompt > 0 else 1
        why += (
            f"; rho (share of each step spent on the load) = {st.rate:.3g} req/s per replica"
            f" × ({p.beta1 * 1e6:.3g}µs × {mix.prompt:.0f} prompt"
            f" + {p.beta2 * 1e6:.3g}µs × {d:.0f} decode steps) = {st.utilization:.2f};"
            f" step = beta0 / (1 − rho) = {p.beta0 * 1e3:.3g}ms / (1 − {st.utilization:.2f})"
            f" = {st.step * 1e3:.1f}ms = TPOT;"
            f" u (share of maxNumBatchedTokens {budget} in use per step) = {st.budget_use:.2f};"
            f" TTFT ≈ wait for the step in progress, step / (2(1 − u))"
            f" + {chunks} prompt chunk{'s' if chunks != 1 else ''} × step"
            f" + prefill {p.beta1 * 1e6:.3g}µs × {mix.prompt:.0f} = {st.ttft * 1e3:.0f}ms"
        )
    if s.saturated:
        why += f": saturated → max {s.replicas}"
    else:
        if s.replicas > 1:
            fewer = steady_state(p, metric.limits, lam / (s.replicas - 1), mix)
            if fewer.limit is not None:
                why += f"; with {s.replicas - 1}: over {fewer.limit}"
            else:
                why += (
                    f"; with {s.replicas - 1}: TTFT {fewer.ttft * 1e3:.0f}ms,"
                    f" TPOT {fewer.tpot * 1e3:.1f}ms"
                )
        why += f"; → {s.replicas}"
    return Proposal(
        metric.name,
        "modelCapacity",
        rate,
        s.replicas,
        why,
        s.saturated,
        sized_for,
        unreachable=s.unreachable,
    )


def token_mix(
    m: ModelCapacityMetric, rate: float, values: Mapping[str, float | None]
) -> TokenMix | None:
    """Mean tokens per request: token rates over the request rate, or the policy's fixed means.

    ``None`` when a token-rate query is missing (the metric then counts as missing). With no
    requests the mix does not matter (the proposal is 0), so it is the fixed means or 1 token.
    """
    parts = []
    for part, query, fixed in (
        (PROMPT_TOKENS, m.prompt_tokens_query, m.prompt_tokens),
        (GENERATION_TOKENS, m.generation_tokens_query, m.generated_tokens),
    ):
        if query is None:
            parts.append(fixed if fixed is not None else 1.0)
            continue
        tokens = values.get(input_key(m.name, part))
        if tokens is None or not _isfinite(tokens):
            return None
        parts.append(max(tokens, 0.0) / rate if rate > 0 else 1.0)
    return TokenMix(max(parts[0], 1.0), max(parts[1], 1.0))


def _propose(
    metric: ModelCapacityMetric,
    value: float,
    mix: TokenMix,
    current: int,
    max_replicas: int,
    sized_for: float | None,
) -> Proposal:
    return model_capacity(metric, value, mix, max_replicas, sized_for)


# -- reading ---------------------------------------------------------------------------------


def _read_profile(r: Reader, value: Any, path: str) -> tuple[StepProfile, str] | None:
    """A shipped profile's name or a file (loaded now), or an inline profile; with how the
    policy names it (``inline`` for a mapping), so a policy writes back as it was read."""
    try:
        if isinstance(value, str):
            return load_profile(value), value
        if isinstance(value, Mapping):
            return parse_profile(dict(value), path), "inline"
    except ProfileError as exc:
        for message in exc.messages:
            r.error(path, message)
        return None
    r.error(path, f"expected a profile name or mapping, got {r.kind_of(value)}")
    return None


def _read_bytes(r: Reader, value: Any, path: str) -> float | None:
    memory = parse_bytes(value)
    if memory is None:
        r.error(path, f'expected bytes or a quantity like "80Gi", got {r.kind_of(value)}')
    return memory


def _some_bound(
    r: Reader, obj: Mapping[str, Any], values: dict[str, Any], path: str
) -> dict[str, Any] | None:
    if values["ttft"] is None and values["tpot"] is None:
        r.error(path, "expected ttft and/or tpot bounds")
        return None
    return values


_TOKENS = (("promptTokensQuery", "promptTokens"), ("generationTokensQuery", "generatedTokens"))


def _check(
    r: Reader, obj: Mapping[str, Any], values: dict[str, Any], path: str
) -> dict[str, Any] | None:
    """Exactly one of a token query and a fixed mean; the engine's KV cache from the profile."""
    ok = True
    for query_key, mean_key in _TOKENS:
        if (query_key in obj) == (mean_key in obj):
            r.error(f"{path}.{query_key}", f"give exactly one of {query_key} and {mean_key}")
            ok = False
    profile = values.pop("profile")
    limits = _engine_limits(r, values.pop("engine"), f"{path}.engine", profile)
    if not ok or profile is None or limits is None:
        return None
    return values | {"profile": profile[0], "profile_ref": profile[1], "limits": limits}


def _engine_limits(
    r: Reader, engine: dict[str, Any] | None, path: str, profile: tuple[StepProfile, str] | None
) -> EngineLimits | None:
    if engine is None or profile is None:
        return None
    seqs, budget = engine["max_num_seqs"], engine["max_num_batched_tokens"]
    if engine["kv_cache_tokens"] is not None:
        return EngineLimits(kv_blocks_for_tokens(engine["kv_cache_tokens"]), seqs, budget)
    p = profile[0]
    memory = engine["gpu_memory"] or p.gpu_memory_bytes
    if not memory or not p.kv_bytes_per_token:
        r.error(
            f"{path}.kvCacheTokens",
            f"profile {p.name} has no memory figures: give kvCacheTokens or gpuMemory",
        )
        return None
    try:
        blocks = kv_cache_blocks(
            memory,
            p.weights_bytes,
            p.kv_bytes_per_token,
            utilization=engine["gpu_memory_utilization"],
        )
    except ValueError as exc:
        r.error(f"{path}.gpuMemory", str(exc))
        return None
    return EngineLimits(blocks, seqs, budget)


_ENGINE: Section[dict[str, Any]] = Section(
    (
        Field("maxNumSeqs", Integer(1), default=MAX_NUM_SEQS),
        Field("maxNumBatchedTokens", Integer(1), default=MAX_NUM_BATCHED_TOKENS),
        Field("gpuMemoryUtilization", Fraction(), default=GPU_MEMORY_UTILIZATION),
        Field(
            "gpuMemory",
            Custom(
                _read_bytes,
                lambda _: {
                    "anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string"}]
                },
            ),
        ),
        Field("kvCacheTokens", Integer(1)),
    ),
    dict,
)
_ENGINE_DEFAULTS = {f.key: f.default for f in _ENGINE.fields}

_SLO = Section(
    (Field("ttft", Duration(positive=True)), Field("tpot", Duration(positive=True))),
    ServingSlo,
    check=_some_bound,
    extra={"minProperties": 1},
)

_FIELDS = (
    Field(
        "profile",
        Custom(
            _read_profile,
            lambda _: {"anyOf": [{"type": "string", "pattern": NON_EMPTY}, {"type": "object"}]},
        ),
        required=True,
        description="A shipped step-time profile's name, a file, or an inline profile.",
    ),
    Field("slo", _SLO, required=True, description="Bounds on the modelled mean TTFT and/or TPOT."),
    Field("promptTokensQuery", Text(), description="Prompt tokens/s (or give promptTokens)."),
    Field(
        "generationTokensQuery",
        Text(),
        description="Generated tokens/s (or give generatedTokens).",
    ),
    Field("promptTokens", Positive(), description="Mean prompt tokens per request."),
    Field("generatedTokens", Positive(), description="Mean generated tokens per request."),
    Field(
        "engine",
        _ENGINE,
        default=_ENGINE_DEFAULTS,
        description="vLLM engine limits (defaults: vLLM's).",
    ),
)


def _document(m: ModelCapacityMetric) -> dict[str, Any]:
    item: dict[str, Any] = {
        "profile": m.profile_ref if m.profile_ref != "inline" else profile_document(m.profile),
        "slo": {
            k: format_duration(v) for k, v in (("ttft", m.slo.ttft), ("tpot", m.slo.tpot)) if v
        },
    }
    for key, value in (
        ("promptTokensQuery", m.prompt_tokens_query),
        ("generationTokensQuery", m.generation_tokens_query),
        ("promptTokens", m.prompt_tokens),
        ("generatedTokens", m.generated_tokens),
    ):
        if value is not None:
            item[key] = value
    item["engine"] = {
        "maxNumSeqs": m.limits.max_num_seqs,
        "maxNumBatchedTokens": m.limits.max_num_batched_tokens,
        "kvCacheTokens": m.limits.kv_tokens,
    }
    return item


def _target(m: ModelCapacityMetric) -> float:
    """The TTFT bound, or the TPOT bound where there is none."""
    return m.slo.ttft if m.slo.ttft is not None else m.slo.tpot or 0.0


KIND: MetricKind[ModelCapacityMetric, TokenMix] = MetricKind(
    type="modelCapacity",
    cls=ModelCapacityMetric,
    description="The fewest replicas whose modelled TTFT and TPOT meet slo at the observed rate.",
    fields=_FIELDS,
    to_document=_document,
    propose=_propose,
    target=_target,
    measures="requestRate",
    wakes=True,
    rate_sized=True,
    queries=(
        QueryField(PROMPT_TOKENS, "prompt_tokens_query", "promptTokensQuery"),
        QueryField(GENERATION_TOKENS, "generation_tokens_query", "generationTokensQuery"),
    ),
    prepare=token_mix,
    check=_check,
    constraints={
        "allOf": [
            {"oneOf": [{"required": ["promptTokensQuery"]}, {"required": ["promptTokens"]}]},
            {
                "oneOf": [
                    {"required": ["generationTokensQuery"]},
                    {"required": ["generatedTokens"]},
                ]
            },
        ]
    },
    parser_only=(
        (
            "modelCapacity: the step-time profile exists (a shipped name or a file) or is a valid "
            "inline profile, and has memory figures unless engine.kvCacheTokens is given",
            re.compile(r"\.profile(\.[^:]*)?: |\.engine\.kvCacheTokens: profile .* has no memory"),
        ),
        (
            "modelCapacity: engine.gpuMemory is bytes or a byte quantity that holds the weights",
            re.compile(r"\.engine\.gpuMemory: "),
        ),
    ),
)

# A variants policy (:mod:`policies.parse`) reads each variant's profile and engine the same way.
read_profile = _read_profile
ENGINE = _ENGINE
engine_limits = _engine_limits
