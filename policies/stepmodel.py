"""How long one vLLM engine step takes, and what that means for capacity: the one copy.

A vLLM V1 engine runs in steps (iterations). Each step processes the prefill chunks scheduled in
it and one token of every decoding sequence. The step-time model is linear in the batch's
composition, as in inference-sim (BLIS) and Vidur::

    step = beta0 + beta1 * prefill_tokens + beta2 * decoding_seqs + beta3 * context_tokens

(``context_tokens``: the KV tokens the decoding sequences attend to; ``beta3`` is optional and 0
in the published fits). BLIS fits a second half on the same real vLLM runs, the *alpha* terms,
work outside the engine step that every request pays but that never delays a step:

- ``alpha0 + alpha1 * prompt_tokens`` before the request reaches the engine's waiting queue
  (API server, tokenization): :func:`arrival_overhead`;
- ``alpha2`` on every emitted token, the first included (detokenization, output processing):
  each inter-token latency is the step gap plus ``alpha2``, so a request's ``k``-th token leaves
  ``k * alpha2`` after the step that made it, as BLIS's ``FirstTokenTime`` and ``ITL`` add it.

A profile without alphas has them at 0 and behaves as the steps alone. The simulator's replicas
call :func:`step_time` for every step, runs of decode-only steps included; the ``modelCapacity``
policy metric sizes a service with :func:`replicas_for_slo` from the same coefficients. No other
module has the formula.

Capacity model (fluid, per replica). Requests arrive at ``lam``/s with ``P`` prompt tokens and
``G`` generated tokens on average; the first token comes out of the last prefill step, so a
request spends ``D = G - 1`` decode steps. In steady state a step carries ``lam·P·tau`` prefill
tokens and ``N = lam·D·tau`` decoding sequences (Little's law), whose contexts average ``P + D/2``
tokens. Solving ``tau = beta0 + beta1·lam·P·tau + beta2·N + beta3·N·(P + D/2)`` gives::

    tau = beta0 / (1 - rho),   rho = lam · c,   c = beta1·P + beta2·D + beta3·D·(P + D/2)

``tau`` is the mean step time, so the mean time per output token (TPOT) is ``tau + alpha2``. A
new request reaches the engine ``alpha0 + alpha1·P`` after it arrives, waits for the step in
progress (``tau/2`` on average, stretched by ``1/(1 - u)`` when the token budget is a fraction
``u`` full), then its prompt goes through in ``k = ceil(P / (budget - N))`` chunks, each step
carrying its own chunk besides the background load::

    TTFT ≈ alpha0 + alpha1·P + tau / (2 (1 - u)) + k·tau + beta1·P + alpha2,
    u = (lam·P·tau + N) / maxNumBatchedTokens

Under overload the engine keeps a full batch: ``y = lam·tau`` is capped by ``maxNumSeqs / D``, by
the token budget ``B / (P + D)`` and by the KV cache ``kv_tokens / (D·(P + D/2))``; the throughput
is then ``y_cap / (beta0 + c·y_cap)`` requests/s (:func:`saturation_rate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from policies.reachable import effective_bound

BLOCK_SIZE = 16
"""vLLM's default KV-cache block size on CUDA (tokens per block)."""
MAX_NUM_SEQS = 256
"""vLLM V1's default ``--max-num-seqs``."""
MAX_NUM_BATCHED_TOKENS = 2048
"""vLLM V1's default ``--max-num-batched-tokens`` for online serving (8192 on large GPUs)."""
GPU_MEMORY_UTILIZATION = 0.9
"""vLLM's default ``--gpu-memory-utilization``."""


@dataclass(frozen=True, slots=True)
class StepProfile:
    """Step-time coefficients (seconds, seconds per token, seconds per sequence) of one model on
    one GPU type at one tensor-parallel degree, with where they come from."""

    name: str
    beta0: float
    beta1: float
    beta2: float
    beta3: float = 0.0
    model: str = ""
    gpu: str = ""
    tensor_parallelism: int = 1
    weights_bytes: float = 0.0
    """Model weights held by each GPU."""
    kv_bytes_per_token: float = 0.0
    """KV-cache bytes one token takes on each GPU (all layers, K and V)."""
    gpu_memory_bytes: float = 0.0
    """Memory of one GPU of this type (the default when a service does not say)."""
    source: str = ""
    alpha0: float = 0.0
    """Seconds of processing before each request is queued (BLIS ``alpha_coeffs[0]``)."""
    alpha1: float = 0.0
    """Seconds per prompt token of that processing (tokenization; ``alpha_coeffs[1]``)."""
    alpha2: float = 0.0
    """Seconds added to every emitted token's latency (``alpha_coeffs[2]``)."""


@dataclass(frozen=True, slots=True)
class EngineLimits:
    """The scheduler budgets of one vLLM engine (replica)."""

    kv_blocks: int
    max_num_seqs: int = MAX_NUM_SEQS
    max_num_batched_tokens: int = MAX_NUM_BATCHED_TOKENS
    block_size: int = BLOCK_SIZE

    @property
    def kv_tokens(self) -> int:
        return self.kv_blocks * self.block_size


def step_time(
    profile: StepProfile, prefill_tokens: float, decode_seqs: float, context_tokens: float = 0.0
) -> float:
    """Seconds one engine step takes for this batch composition."""
    return (
        profile.beta0
        + profile.beta1 * prefill_tokens
        + profile.beta2 * decode_seqs
        + profile.beta3 * context_tokens
    )


def arrival_overhead(profile: StepProfile, prompt_tokens: float) -> float:
    """Seconds between a request's arrival and its entry in the engine's waiting queue."""
    return profile.alpha0 + profile.alpha1 * prompt_tokens


def kv_blocks_for_tokens(tokens: int, block_size: int = BLOCK_SIZE) -> int:
    """KV blocks holding ``tokens`` tokens of cache, at least one.

    The one rule for a KV cache given in tokens (a policy's ``modelCapacity.kvCacheTokens``, a
    scenario's ``service.kvCacheTokens``): an engine with no block could never run a request.
    """
    return max(tokens // block_size, 1)


def kv_cache_blocks(
    gpu_memory_bytes: float,
    weights_bytes: float,
    kv_bytes_per_token: float,
    *,
    utilization: float = GPU_MEMORY_UTILIZATION,
    block_size: int = BLOCK_SIZE,
) -> int:
    """KV blocks vLLM allocates: ``(memory × utilization − weights) / (bytes per token × block)``.

    Activation and CUDA-graph memory, which vLLM also subtracts, are not modelled. Raises
    ``ValueError`` when the weights alone do not fit.
    """
    if kv_bytes_per_token <= 0:
        raise ValueError(f"KV bytes per token must be positive, got {kv_bytes_per_token!r}")
    free = gpu_memory_bytes * utilization - weights_bytes
    blocks = int(free // (kv_bytes_per_token * block_size))
    if blocks <= 0:
        raise ValueError(
            f"no room for a KV cache: {gpu_memory_bytes / 2**30:.1f} GiB × {utilization:g}"
            f" leaves {free / 2**30:.2f} GiB after {weights_bytes / 2**30:.1f} GiB of weights"
        )
    return blocks


# --------------------------------------------------------------------------- capacity


@dataclass(frozen=True, slots=True)
class TokenMix:
    """Mean prompt and generated tokens per request."""

    prompt: float
    generated: float

    @property
    def decode_steps(self) -> float:
        """Decode steps per request: the first token comes out of the prefill."""
        return max(self.generated - 1.0, 0.0)


def _cost(profile: StepProfile, mix: TokenMix) -> float:
    """``c``: step seconds per request/s of load (the model docstring's ``rho / lam``)."""
    p, d = mix.prompt, mix.decode_steps
    return profile.beta1 * p + profile.beta2 * d + profile.beta3 * d * (p + d / 2)


def saturation_rate(profile: StepProfile, limits: EngineLimits, mix: TokenMix) -> float:
    """Requests/s one replica completes when it always has work waiting."""
    p, d = mix.prompt, mix.decode_steps
    caps = [limits.max_num_batched_tokens / max(p + d, 1.0)]
    if d > 0:
        caps.append(limits.max_num_seqs / d)
        caps.append(limits.kv_tokens / (d * (p + d / 2)))
    y = min(caps)
    return y / (profile.beta0 + _cost(profile, mix) * y)


@dataclass(frozen=True, slots=True)
class SteadyState:
    """The fluid model of one replica at ``rate`` requests/s."""

    rate: float
    utilization: float
    """``rho``: the share of step time spent on the load (1 would need infinitely long steps)."""
    step: float
    """Mean step time, seconds (= mean TPOT)."""
    decoding: float
    """Mean decoding sequences per step."""
    budget_use: float
    """Tokens per step over ``maxNumBatchedTokens``."""
    kv_use: float
    """KV tokens in use over the cache's capacity."""
    ttft: float
    tpot: float
    """Mean time per output token: the step plus ``alpha2``."""
    limit: str | None
    """Why this load cannot be carried at all (``None`` when it can)."""


def steady_state(
    profile: StepProfile, limits: EngineLimits, rate: float, mix: TokenMix
) -> SteadyState:
    """What one replica looks like in the long run at ``rate`` requests/s (see the docstring)."""
    p, d = mix.prompt, mix.decode_steps
    rho = rate * _cost(profile, mix)
    if rho >= 1.0:
        inf = math.inf
        return SteadyState(rate, rho, inf, inf, inf, inf, inf, inf, "step time (utilization ≥ 1)")
    tau = profile.beta0 / (1.0 - rho)
    n = rate * d * tau
    budget = limits.max_num_batched_tokens
    u = (rate * p * tau + n) / budget
    kv = n * (p + d / 2) / limits.kv_tokens if limits.kv_tokens else math.inf
    limit: str | None = None
    if n > limits.max_num_seqs:
        limit = f"maxNumSeqs ({n:.0f} decoding > {limits.max_num_seqs})"
    elif u >= 1.0:
        limit = f"maxNumBatchedTokens ({u * budget:.0f} tokens/step > {budget})"
    elif kv >= 1.0:
        limit = f"KV cache ({kv * 100:.0f}% of {limits.kv_tokens} tokens)"
    if limit is not None:
        inf = math.inf
        return SteadyState(rate, rho, tau, n, u, kv, inf, inf, limit)
    chunks = math.ceil(p / max(budget - n, 1.0)) if p > 0 else 1
    ttft = tau / (2 * (1 - u)) + chunks * tau + profile.beta1 * p
    ttft += arrival_overhead(profile, p) + profile.alpha2
    return SteadyState(rate, rho, tau, n, u, kv, ttft, tau + profile.alpha2, None)


@dataclass(frozen=True, slots=True)
class Sizing:
    replicas: int
    saturated: bool
    state: SteadyState | None
    """The per-replica steady state at ``replicas`` (``None`` with no load)."""
    why: str
    unreachable: str | None = None
    """Set when no count meets a bound: which one, and the bound sized for instead."""


def replicas_for_slo(
    profile: StepProfile,
    limits: EngineLimits,
    rate: float,
    mix: TokenMix,
    ttft: float | None,
    tpot: float | None,
    max_replicas: int,
) -> Sizing:
    """The fewest replicas whose modelled mean TTFT and TPOT stay within the bounds given.

    Both estimates fall as replicas are added, so a bisection over ``1..max_replicas`` finds the
    smallest count; when even ``max_replicas`` misses, the answer is ``max_replicas`` and
    ``saturated``. A bound below the latency of an idle replica (no count meets it) is replaced
    by one just above that floor (:mod:`policies.reachable`), and ``unreachable`` says so.
    """
    if rate <= 0:
        return Sizing(0, False, None, "no load → 0")
    floor = steady_state(profile, limits, 0.0, mix)
    notes: list[str] = []
    if floor.limit is None and ttft is not None:
        b = effective_bound("TTFT", ttft, floor.ttft)
        ttft = b.value
        notes += [b.unreachable] if b.unreachable else []
    if floor.limit is None and tpot is not None:
        b = effective_bound("TPOT", tpot, floor.tpot)
        tpot = b.value
        notes += [b.unreachable] if b.unreachable else []
    unreachable = "; ".join(notes) or None

    def ok(n: int) -> tuple[bool, SteadyState]:
        s = steady_state(profile, limits, rate / n, mix)
        good = s.limit is None
        good = good and (ttft is None or s.ttft <= ttft) and (tpot is None or s.tpot <= tpot)
        return good, s

    good, state = ok(max_replicas)
    if not good:
        why = _explain(max_replicas, state, ttft, tpot)
        return Sizing(max_replicas, True, state, why, unreachable)
    lo, hi = 0, max_replicas  # ok(hi) holds; ok(lo) does not (or lo == 0)
    best = state
    while hi - lo > 1:
        mid = (lo + hi) // 2
        good, s = ok(mid)
        if good:
            hi, best = mid, s
        else:
            lo = mid
    return Sizing(hi, False, best, _explain(hi, best, ttft, tpot), unreachable)


def _explain(n: int, s: SteadyState, ttft: float | None, tpot: float | None) -> str:
    head = f"{n} × {s.rate:.3g} req/s: rho {s.utilization:.2f}"
    if s.limit is not None:
        return f"{head}, over {s.limit}"
    parts = [f"step {s.step * 1000:.1f}ms", f"{s.decoding:.0f} decoding"]
    if ttft is not None:
        parts.append(f"TTFT {s.ttft * 1000:.0f}ms ≤ {ttft * 1000:g}ms")
    if tpot is not None:
        parts.append(f"TPOT {s.tpot * 1000:.1f}ms ≤ {tpot * 1000:g}ms")
    if ttft is not None and s.ttft > ttft:
        parts[-2 if tpot is not None else -1] = f"TTFT {s.ttft * 1000:.0f}ms > {ttft * 1000:g}ms"
    if tpot is not None and s.tpot > tpot:
        parts[-1] = f"TPOT {s.tpot * 1000:.1f}ms > {tpot * 1000:g}ms"
    return f"{head}, " + ", ".join(parts)
