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

from policies import jsonschema_parts as js
from policies.decide_types import Proposal
from policies.durations import format_duration
from policies.metrics.base import FieldReader, MetricKind, QueryField, input_key
from policies.profiles import (
    ProfileError,
    load_profile,
    parse_bytes,
    parse_profile,
    profile_document,
)
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

_OPTIONAL = (
    "promptTokensQuery",
    "generationTokensQuery",
    "promptTokens",
    "generatedTokens",
    "engine",
)


def _parse(
    r: FieldReader, obj: Mapping[str, Any], path: str, name: str | None, query: str | None
) -> ModelCapacityMetric | None:
    ref = obj.get("profile")
    profile: StepProfile | None = None
    profile_ref = "inline"
    try:
        if isinstance(ref, str):
            profile, profile_ref = load_profile(ref), ref
        elif isinstance(ref, Mapping):
            profile = parse_profile(dict(ref), f"{path}.profile")
        else:
            r.error(f"{path}.profile", f"expected a profile name or mapping, got {r.kind_of(ref)}")
    except ProfileError as exc:
        for message in exc.messages:
            r.error(f"{path}.profile", message)
    slo = r.get(obj, path, "slo", lambda v, p: _serving_slo(r, v, p))
    tokens: dict[str, Any] = {}
    for query_key, mean_key in (
        ("promptTokensQuery", "promptTokens"),
        ("generationTokensQuery", "generatedTokens"),
    ):
        if (query_key in obj) == (mean_key in obj):
            r.error(f"{path}.{query_key}", f"give exactly one of {query_key} and {mean_key}")
            continue
        if query_key in obj:
            tokens[query_key] = r.get(obj, path, query_key, r.string)
        else:
            tokens[mean_key] = r.get(obj, path, mean_key, r.positive)
    limits = _engine_limits(r, obj.get("engine", {}), f"{path}.engine", profile)
    if not (name and query and profile and slo and limits) or len(tokens) != 2:
        return None
    if any(v is None for v in tokens.values()):
        return None
    return ModelCapacityMetric(
        name,
        query,
        profile,
        profile_ref,
        limits,
        slo,
        prompt_tokens_query=tokens.get("promptTokensQuery"),
        generation_tokens_query=tokens.get("generationTokensQuery"),
        prompt_tokens=tokens.get("promptTokens"),
        generated_tokens=tokens.get("generatedTokens"),
    )


def _serving_slo(r: FieldReader, value: Any, path: str) -> ServingSlo | None:
    obj = r.mapping(value, path, optional=("ttft", "tpot"))
    if obj is None:
        return None
    ttft = r.get(obj, path, "ttft", lambda v, p: r.duration(v, p, positive=True))
    tpot = r.get(obj, path, "tpot", lambda v, p: r.duration(v, p, positive=True))
    if ttft is None and tpot is None:
        r.error(path, "expected ttft and/or tpot bounds")
        return None
    return ServingSlo(ttft, tpot)


def _engine_limits(
    r: FieldReader, value: Any, path: str, profile: StepProfile | None
) -> EngineLimits | None:
    obj = r.mapping(
        value,
        path,
        optional=(
            "maxNumSeqs",
            "maxNumBatchedTokens",
            "gpuMemoryUtilization",
            "gpuMemory",
            "kvCacheTokens",
        ),
    )
    if obj is None:
        return None

    def at_least_1(v: Any, p: str) -> int | None:
        return r.integer(v, p, minimum=1)

    seqs = r.get(obj, path, "maxNumSeqs", at_least_1, MAX_NUM_SEQS)
    budget = r.get(obj, path, "maxNumBatchedTokens", at_least_1, MAX_NUM_BATCHED_TOKENS)
    util = r.get(
        obj,
        path,
        "gpuMemoryUtilization",
        lambda v, p: r.fraction(v, p, closed_top=True),
        GPU_MEMORY_UTILIZATION,
    )
    tokens = r.get(obj, path, "kvCacheTokens", at_least_1)
    memory: float | None = None
    if "gpuMemory" in obj:
        memory = parse_bytes(obj["gpuMemory"])
        if memory is None:
            r.error(
                f"{path}.gpuMemory",
                f'expected bytes or a quantity like "80Gi", got {r.kind_of(obj["gpuMemory"])}',
            )
            return None
    if seqs is None or budget is None or util is None or profile is None:
        return None
    if tokens is not None:
        return EngineLimits(kv_blocks_for_tokens(tokens), seqs, budget)
    memory = memory or profile.gpu_memory_bytes
    if not memory or not profile.kv_bytes_per_token:
        r.error(
            f"{path}.kvCacheTokens",
            f"profile {profile.name} has no memory figures: give kvCacheTokens or gpuMemory",
        )
        return None
    try:
        blocks = kv_cache_blocks(
            memory, profile.weights_bytes, profile.kv_bytes_per_token, utilization=util
        )
    except ValueError as exc:
        r.error(f"{path}.gpuMemory", str(exc))
        return None
    return EngineLimits(blocks, seqs, budget)


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


_SCHEMA: dict[str, Any] = {
    "profile": {
        "description": "A shipped step-time profile's name, a file, or an inline profile.",
        "anyOf": [{"type": "string", "pattern": js.NON_EMPTY}, {"type": "object"}],
    },
    "slo": {
        "type": "object",
        "minProperties": 1,
        "additionalProperties": False,
        "properties": {
            "ttft": {"type": "string", "pattern": js.POSITIVE_DURATION},
            "tpot": {"type": "string", "pattern": js.POSITIVE_DURATION},
        },
        "description": "Bounds on the modelled mean TTFT and/or TPOT.",
    },
    "promptTokensQuery": js.string("Prompt tokens/s (or give promptTokens)."),
    "generationTokensQuery": js.string("Generated tokens/s (or give generatedTokens)."),
    "promptTokens": js.positive("Mean prompt tokens per request."),
    "generatedTokens": js.positive("Mean generated tokens per request."),
    "engine": js.closed_object(
        {
            "maxNumSeqs": {"type": "integer", "minimum": 1},
            "maxNumBatchedTokens": {"type": "integer", "minimum": 1},
            "gpuMemoryUtilization": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": 1,
            },
            "gpuMemory": {"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string"}]},
            "kvCacheTokens": {"type": "integer", "minimum": 1},
        },
        description="vLLM engine limits (defaults: vLLM's).",
    ),
}

KIND: MetricKind[ModelCapacityMetric, TokenMix] = MetricKind(
    type="modelCapacity",
    cls=ModelCapacityMetric,
    description="The fewest replicas whose modelled TTFT and TPOT meet slo at the observed rate.",
    required=("profile", "slo"),
    optional=_OPTIONAL,
    parse=_parse,
    to_document=_document,
    schema=_SCHEMA,
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
    schema_constraints={
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
