"""Variants: one model served by several Deployments on different GPU types, and the cheapest
replica mix that keeps the modelled TTFT and TPOT within the SLO.

Each variant has its own step-time profile and engine limits (:mod:`policies.stepmodel`), a price
per replica-hour and replica bounds. The decision takes three steps:

1. **Capacity at the SLO.** For each variant, the largest request rate one replica carries with
   its modelled mean TTFT and TPOT (:func:`policies.stepmodel.steady_state`) within the bounds, at
   the observed token mix. Bounds no replica meets are moved just above the idle replica's
   latency, as :func:`policies.stepmodel.replicas_for_slo` does (:mod:`policies.reachable`).
2. **Routing assumption: a capacity-weighted split.** The gateway sends each replica a share of
   the load proportional to its capacity at the SLO: weighted backends, or a weighted
   least-request balancer (Envoy's, bias 1) with each variant's capacity as its weight. Plain
   least-outstanding routing does not do this: in the simulator each A100 replica got about as
   many requests as an H100 one and missed TPOT (``simulations/README.md``, variants). Under
   that split every replica runs at the same fraction ``rate / C`` of its capacity, where ``C`` is
   the mix's total capacity, so a mix meets the SLO exactly when ``C >= rate`` (the latencies of
   one replica rise with its load). Sizing becomes a covering problem over integers.
3. **Cheapest mix, then preference.** Among mixes within every variant's bounds (``min`` ..
   ``min(max, placeable)``, where *placeable* is what the free GPUs allow), with ``C >= rate``,
   let ``cost*`` be the lowest price per hour. The answer is, among the mixes costing at most
   ``cost* × (1 + preferWithin)``, the one that uses the least of the *least* preferred variant,
   then the least of the next-to-least preferred, and so on (reverse lexicographic order over
   the preference list; variants not listed come after those listed, in their order).

   This is spill-over: with ``preferWithin: 0`` the cheapest mix wins and preference only breaks
   ties between equally priced mixes; with a large ``preferWithin`` the preferred variant is filled
   up to its max or its free GPUs before the next one gets a replica, and so on. In between, a
   less preferred variant is used only where prices say the saving exceeds ``preferWithin``.

When no mix within the bounds covers the load, every variant is sized at its upper bound and the
mix is ``saturated`` (the analogue of a single target held at ``max``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from policies.metrics.model_capacity import ModelCapacityMetric, ServingSlo, token_mix
from policies.reachable import effective_bound
from policies.schema import ScalingPolicy
from policies.stepmodel import EngineLimits, SteadyState, StepProfile, TokenMix, steady_state

_BISECTIONS = 60
"""Halvings of the rate interval when searching a replica's capacity (relative 1e-18)."""


@dataclass(frozen=True, slots=True)
class Variant:
    """One Deployment serving the model on one GPU type."""

    name: str
    profile: StepProfile
    limits: EngineLimits
    price: float
    """Price of one replica per hour (any currency; GPUs per replica × price per GPU-hour)."""
    max_replicas: int
    min_replicas: int = 0

    def __post_init__(self) -> None:
        if not self.price > 0 or not math.isfinite(self.price):
            raise ValueError(f"variant {self.name}: price must be positive, got {self.price!r}")
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError(
                f"variant {self.name}: need 0 <= min ({self.min_replicas})"
                f" <= max ({self.max_replicas})"
            )


@dataclass(frozen=True, slots=True)
class VariantPolicy:
    """The variants of one model, the SLO they share and the order of preference."""

    variants: tuple[Variant, ...]
    slo: ServingSlo
    prefer: tuple[str, ...] = ()
    """Most preferred first; variants left out follow, in declaration order."""
    prefer_within: float = 0.0
    """A more preferred mix may cost this fraction more than the cheapest (0: cheapest wins)."""

    def __post_init__(self) -> None:
        names = [v.name for v in self.variants]
        if not names:
            raise ValueError("expected at least one variant")
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        unknown = [n for n in self.prefer if n not in names]
        if unknown:
            raise ValueError(f"prefer names unknown variants {unknown} (known: {names})")
        if len(set(self.prefer)) != len(self.prefer):
            raise ValueError(f"prefer lists a variant twice: {list(self.prefer)}")
        if not self.prefer_within >= 0 or not math.isfinite(self.prefer_within):
            raise ValueError(f"preferWithin must be >= 0, got {self.prefer_within!r}")

    def order(self) -> tuple[int, ...]:
        """Variant indices, most preferred first."""
        names = [v.name for v in self.variants]
        listed = [names.index(n) for n in self.prefer]
        return (*listed, *(i for i in range(len(names)) if i not in listed))


@dataclass(frozen=True, slots=True)
class Observed:
    """What the decision sees: the load, its token mix and the room left on the cluster."""

    rate: float
    """Requests/s arriving at the gateway."""
    mix: TokenMix
    placeable: Mapping[str, int] | None = None
    """Per variant, the most replicas it can have now (those running plus what its free GPUs
    hold); a variant left out is bounded by its ``max`` only."""

    def __post_init__(self) -> None:
        if not math.isfinite(self.rate) or self.rate < 0:
            raise ValueError(f"rate must be finite and >= 0, got {self.rate!r}")


@dataclass(frozen=True, slots=True)
class Capacity:
    """One replica of a variant at the SLO."""

    rate: float
    """Requests/s one replica carries within the (effective) bounds; 0 when none."""
    why: str
    unreachable: str | None = None


@dataclass(frozen=True, slots=True)
class VariantReplicas:
    name: str
    replicas: int
    capacity: float
    """Requests/s per replica at the SLO."""
    share: float
    """Requests/s each replica gets under the capacity-weighted split."""
    bound: int
    """The upper bound used: ``min(max, placeable)``."""
    cost: float
    """Price per hour of this variant's replicas."""


@dataclass(frozen=True, slots=True)
class MixDecision:
    variants: tuple[VariantReplicas, ...]
    cost: float
    """Price per hour of the whole mix."""
    saturated: bool
    why: tuple[str, ...]
    """The capacity of each variant, the mix, and why one replica fewer of any would not do."""

    def replicas(self) -> dict[str, int]:
        return {v.name: v.replicas for v in self.variants}


# --------------------------------------------------------------------------- capacity


def capacity_at_slo(
    profile: StepProfile, limits: EngineLimits, mix: TokenMix, slo: ServingSlo
) -> Capacity:
    """The largest rate one replica carries with its modelled TTFT and TPOT within ``slo``.

    A bisection over the rate with :func:`steady_state`, whose latencies rise with the rate; the
    bounds are first made reachable as :func:`policies.stepmodel.replicas_for_slo` makes them.
    """
    floor = steady_state(profile, limits, 0.0, mix)  # an idle replica is never over a limit
    ttft, tpot = slo.ttft, slo.tpot
    notes: list[str] = []
    if ttft is not None:
        b = effective_bound("TTFT", ttft, floor.ttft)
        ttft, notes = b.value, notes + ([b.unreachable] if b.unreachable else [])
    if tpot is not None:
        b = effective_bound("TPOT", tpot, floor.tpot)
        tpot, notes = b.value, notes + ([b.unreachable] if b.unreachable else [])

    def ok(rate: float) -> bool:
        s = steady_state(profile, limits, rate, mix)
        return (
            s.limit is None
            and (ttft is None or s.ttft <= ttft)
            and (tpot is None or s.tpot <= tpot)
        )

    lo, hi = 0.0, 1.0
    while ok(hi):  # the step time diverges before rho = 1, so this ends
        lo, hi = hi, hi * 2
    for _ in range(_BISECTIONS):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    s = steady_state(profile, limits, lo, mix)
    why = (
        f"{profile.name}: {lo:.3g} req/s per replica"
        f" (TTFT {s.ttft * 1e3:.0f}ms, TPOT {s.tpot * 1e3:.1f}ms, rho {s.utilization:.2f})"
    )
    return Capacity(lo, why, "; ".join(notes) or None)


# --------------------------------------------------------------------------- the mix


def _covers(ns: Sequence[int], caps: Sequence[float], rate: float) -> bool:
    """The capacity-weighted split holds ``rate`` within the SLO (the one feasibility rule)."""
    return sum(n * c for n, c in zip(ns, caps, strict=True)) >= rate


def _cost(ns: Sequence[int], prices: Sequence[float]) -> float:
    return sum(n * p for n, p in zip(ns, prices, strict=True))


def _min_cost(
    caps: Sequence[float],
    prices: Sequence[float],
    lows: Sequence[int],
    highs: Sequence[int],
    rate: float,
) -> tuple[int, ...] | None:
    """The cheapest counts within ``lows..highs`` that cover ``rate`` (``None``: none do).

    Branch and bound: variants in order of price per unit of capacity; at each level, counts from
    the lowest up to what would cover the rest alone, pruned by the cost of the lows plus the rest
    at the best remaining price per capacity (a lower bound, loosened by 1e-9 against rounding).
    """
    k = len(caps)
    order = sorted(range(k), key=lambda i: prices[i] / caps[i] if caps[i] > 0 else math.inf)
    # best price per capacity among order[j:], and the lows' cost and capacity of order[j:]
    ratio = [math.inf] * (k + 1)
    low_cost = [0.0] * (k + 1)
    low_cap = [0.0] * (k + 1)
    for j in range(k - 1, -1, -1):
        i = order[j]
        r = prices[i] / caps[i] if caps[i] > 0 else math.inf
        ratio[j] = min(ratio[j + 1], r)
        low_cost[j] = low_cost[j + 1] + lows[i] * prices[i]
        low_cap[j] = low_cap[j + 1] + lows[i] * caps[i]
    ns = list(lows)
    best: list[tuple[float, tuple[int, ...]]] = []

    def visit(j: int, cap: float, cost: float) -> None:
        left = rate - cap - low_cap[j]
        bound = cost + low_cost[j] + (max(left, 0.0) * ratio[j] if left > 0 else 0.0)
        if best and bound * (1 - 1e-9) > best[0][0]:
            return
        if j == k:
            if _covers(ns, caps, rate):
                c = _cost(ns, prices)
                if not best or c < best[0][0]:
                    best[:] = [(c, tuple(ns))]
            return
        i = order[j]
        top = highs[i]
        if caps[i] > 0:
            rest = rate - cap - (low_cap[j] - lows[i] * caps[i])
            top = min(top, max(lows[i], math.ceil(rest / caps[i]) + 1))
        else:
            top = lows[i]
        for n in range(lows[i], top + 1):
            ns[i] = n
            visit(j + 1, cap + n * caps[i], cost + n * prices[i])
        ns[i] = lows[i]

    visit(0, 0.0, 0.0)
    return best[0][1] if best else None


def choose_mix(
    caps: Sequence[float],
    prices: Sequence[float],
    lows: Sequence[int],
    highs: Sequence[int],
    rate: float,
    order: Sequence[int],
    prefer_within: float = 0.0,
) -> tuple[int, ...] | None:
    """Replicas per variant under the rule of the module docstring (``None``: nothing covers).

    ``order``: variant indices, most preferred first. After the cheapest cost is known, the
    least preferred variant's count is fixed at the lowest value that still leaves a mix within
    the cost allowance, then the next least preferred, and so on: the reverse lexicographic
    minimum of the admissible mixes.
    """
    cheapest = _min_cost(caps, prices, lows, highs, rate)
    if cheapest is None:
        return None
    allowance = _cost(cheapest, prices) * (1.0 + prefer_within)
    lo, hi = list(lows), list(highs)
    for i in reversed(order):
        for n in range(lo[i], hi[i] + 1):
            lo[i] = hi[i] = n
            found = _min_cost(caps, prices, lo, hi, rate)
            if found is not None and _cost(found, prices) <= allowance:
                break
        else:  # pragma: no cover - the cheapest mix's own count always qualifies
            raise AssertionError("no count within the allowance")
    return tuple(lo)


def decide_mix(policy: VariantPolicy, observed: Observed) -> MixDecision:
    """Replicas per variant for ``observed``, with the reasons (see the module docstring)."""
    vs = policy.variants
    mix = observed.mix
    capacities = [capacity_at_slo(v.profile, v.limits, mix, policy.slo) for v in vs]
    caps = [c.rate for c in capacities]
    prices = [v.price for v in vs]
    lows = [v.min_replicas for v in vs]
    placeable = observed.placeable or {}
    highs = [
        max(v.min_replicas, min(v.max_replicas, placeable.get(v.name, v.max_replicas))) for v in vs
    ]
    rate = observed.rate
    why = [c.why + (f"; unreachable: {c.unreachable}" if c.unreachable else "") for c in capacities]
    for v, h in zip(vs, highs, strict=True):
        if h < v.max_replicas:
            why.append(f"{v.name}: at most {h} (free GPUs; max {v.max_replicas})")
    chosen = choose_mix(caps, prices, lows, highs, rate, policy.order(), policy.prefer_within)
    saturated = chosen is None
    ns = tuple(highs) if chosen is None else chosen
    total = sum(n * c for n, c in zip(ns, caps, strict=True))
    fraction = rate / total if total > 0 else math.inf
    rows = tuple(
        VariantReplicas(v.name, n, c, c * fraction if n else 0.0, h, n * v.price)
        for v, n, c, h in zip(vs, ns, caps, highs, strict=True)
    )
    head = ", ".join(f"{r.name} {r.replicas}" for r in rows)
    cost = _cost(ns, prices)
    why.append(
        f"{rate:.3g} req/s × ({mix.prompt:.0f} prompt + {mix.generated:.0f} generated tokens),"
        f" split by capacity: {head} carry {total:.3g} req/s at the SLO"
        f" ({fraction:.0%} of it), {cost:.4g}/h"
    )
    if saturated:
        why.append(f"saturated: even every variant at its bound carries only {total:.3g} req/s")
    else:
        why.extend(_one_fewer(vs, ns, caps, rate, mix))
    return MixDecision(rows, cost, saturated, tuple(why))


def _one_fewer(
    vs: Sequence[Variant], ns: Sequence[int], caps: Sequence[float], rate: float, mix: TokenMix
) -> list[str]:
    """Why each variant above its ``min`` cannot lose a replica: the load the others would then
    carry, and what this variant's replicas would see at their share of it."""
    out = []
    for i, v in enumerate(vs):
        if ns[i] <= v.min_replicas:
            continue
        fewer = list(ns)
        fewer[i] -= 1
        total = sum(n * c for n, c in zip(fewer, caps, strict=True))
        line = f"one {v.name} fewer: {total:.3g} req/s at the SLO < {rate:.3g} req/s"
        if fewer[i] > 0 and total > 0:
            s: SteadyState = steady_state(v.profile, v.limits, rate * caps[i] / total, mix)
            if s.limit is not None:
                line += f"; over {s.limit}"
            else:
                line += f"; each would see TTFT {s.ttft * 1e3:.0f}ms, TPOT {s.tpot * 1e3:.1f}ms"
        out.append(line)
    return out


# --------------------------------------------------------------------------- a policy's variants


def shared_metric(policy: ScalingPolicy) -> ModelCapacityMetric:
    """The ``modelCapacity`` metric a variants policy sizes by (the parser checked it exists)."""
    assert policy.variants is not None
    wanted = policy.variants.metric
    for m in policy.metrics:
        if isinstance(m, ModelCapacityMetric) and wanted in (None, m.name):
            return m
    raise ValueError(f"{policy.key}: no modelCapacity metric for the variants")


def variant_policy(policy: ScalingPolicy) -> VariantPolicy:
    """The pure core's view of a parsed policy's ``variants`` (profiles default to the metric's)."""
    assert policy.variants is not None
    metric = shared_metric(policy)
    return VariantPolicy(
        tuple(
            Variant(
                t.name,
                t.profile if t.profile is not None else metric.profile,
                t.limits if t.limits is not None else metric.limits,
                t.replica_price,
                t.replicas.max,
                t.replicas.min,
            )
            for t in policy.variants.targets
        ),
        metric.slo,
        policy.variants.prefer,
        policy.variants.prefer_within,
    )


def observe(
    policy: ScalingPolicy,
    values: Mapping[str, float | None],
    placeable: Mapping[str, int] | None = None,
) -> Observed | None:
    """The load the shared metric's queries measured (``None``: a query is missing)."""
    metric = shared_metric(policy)
    rate = values.get(metric.name)
    if rate is None or not math.isfinite(rate):
        return None
    mix = token_mix(metric, rate, values)
    if mix is None:
        return None
    return Observed(max(rate, 0.0), mix, placeable)


# --------------------------------------------------------------------------- room on the cluster


@dataclass(frozen=True, slots=True)
class HeldLimit:
    """A variant's bound learnt from its unschedulable pods."""

    replicas: int
    """What ran when pods of the variant last found no GPU."""
    seen: float
    """When they were last seen (monotonic seconds)."""


def capacity_limits(
    current: Mapping[str, int],
    unschedulable: Mapping[str, int],
    held: Mapping[str, HeldLimit],
    now: float,
    hold_for: float,
) -> tuple[dict[str, int], dict[str, HeldLimit]]:
    """Per variant, the most replicas the cluster is known to hold (``Observed.placeable``),
    and the limits to carry to the next tick.

    The controller sees no free GPUs directly; it sees the scheduler's verdict. A variant with
    unschedulable pods holds only the replicas that run (``current - unschedulable``), so the
    mix spills its share onto the next variant instead of waiting for pods that do not start.
    That bound is kept ``hold_for`` seconds (the policy's ``coldStart``) after such pods were
    last seen, lest the mix flap back onto a variant with no room on every tick; then it is
    lifted, the preferred variant is tried again, and the bound returns if its pods still find
    no GPU (recovery needs no one's help).
    """
    limits: dict[str, HeldLimit] = {}
    for name, n in current.items():
        pending = unschedulable.get(name, 0)
        old = held.get(name)
        if pending > 0:
            limits[name] = HeldLimit(max(n - pending, 0), now)
        elif old is not None and now - old.seen < hold_for:
            limits[name] = old
    return {name: h.replicas for name, h in limits.items()}, limits


# --------------------------------------------------------------------------- scale-down window


MixHistory = tuple[tuple[float, tuple[tuple[str, int], ...]], ...]
"""``(time, ((variant, replicas), ...))`` of the recent mixes, oldest first."""


def stabilize_mix(
    mix: Mapping[str, int],
    room: Mapping[str, int],
    history: MixHistory,
    now: float,
    window: float,
) -> tuple[dict[str, int], MixHistory]:
    """Each variant's count: the highest it was recommended over the last ``window`` seconds
    (the HPA's scale-down stabilization, per variant), but never above its room.

    A noisy rate then moves a variant up at once and down only once the window has passed, as
    a one-target policy's count does; a variant whose pods find no GPU is still cut to what runs
    (holding pending pods for the window would only keep them waiting).
    """
    entry = (now, tuple(mix.items()))
    kept = (*(h for h in history if now - h[0] < window), entry) if window > 0 else (entry,)
    out: dict[str, int] = {}
    for name, n in mix.items():
        high = max((dict(h[1]).get(name, 0) for h in kept), default=n)
        out[name] = min(high, room[name]) if name in room else high
        out[name] = max(out[name], n)
    return out, kept
