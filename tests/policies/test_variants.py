"""Variants: capacity at the SLO, the cheapest mix with preference, and its explanation."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.metrics.model_capacity import ServingSlo
from policies.profiles import load_profile
from policies.stepmodel import EngineLimits, TokenMix, replicas_for_slo, steady_state
from policies.variants import (
    Observed,
    Variant,
    VariantPolicy,
    capacity_at_slo,
    choose_mix,
    decide_mix,
)

A100 = load_profile("llama-3.1-8b-a100-80gb-tp1")
H100 = load_profile("llama-3.1-8b-h100-tp1")
LIMITS = EngineLimits(29_000)
MIX = TokenMix(2000, 30)
SLO = ServingSlo(ttft=0.5, tpot=0.05)


def brute_force(
    caps: list[float],
    prices: list[float],
    lows: list[int],
    highs: list[int],
    rate: float,
    order: list[int],
    within: float,
) -> tuple[int, ...] | None:
    """The rule as written: every mix in bounds, the cheapest cost, then the reverse
    lexicographic minimum over the preference order among those within the allowance."""
    mixes = list(
        itertools.product(*(range(lo, hi + 1) for lo, hi in zip(lows, highs, strict=True)))
    )

    def cost(ns: tuple[int, ...]) -> float:
        return sum(n * p for n, p in zip(ns, prices, strict=True))

    feasible = [ns for ns in mixes if sum(n * c for n, c in zip(ns, caps, strict=True)) >= rate]
    if not feasible:
        return None
    best = min(cost(ns) for ns in feasible)
    admissible = [ns for ns in feasible if cost(ns) <= best * (1 + within)]
    return min(admissible, key=lambda ns: tuple(ns[i] for i in reversed(order)))


@st.composite
def problems(draw: st.DrawFn) -> tuple[list[float], list[float], list[int], list[int], float]:
    k = draw(st.integers(1, 3))
    caps = [draw(st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.5, 4.0, 7.25])) for _ in range(k)]
    prices = [float(draw(st.integers(1, 12))) for _ in range(k)]
    lows = [draw(st.integers(0, 2)) for _ in range(k)]
    highs = [lo + draw(st.integers(0, 6)) for lo in lows]
    rate = draw(st.floats(0, 40, allow_nan=False))
    return caps, prices, lows, highs, rate


@settings(max_examples=400, deadline=None)
@given(problems(), st.data(), st.sampled_from([0.0, 0.1, 0.5, 100.0]))
def test_choose_mix_is_the_rule_as_written(
    problem: tuple[list[float], list[float], list[int], list[int], float],
    data: st.DataObject,
    within: float,
) -> None:
    caps, prices, lows, highs, rate = problem
    order = data.draw(st.permutations(range(len(caps))))
    got = choose_mix(caps, prices, lows, highs, rate, order, within)
    assert got == brute_force(caps, prices, lows, highs, rate, list(order), within)
    if got is None:
        return
    # the properties the rule promises, checked on their own
    assert all(lo <= n <= hi for n, lo, hi in zip(got, lows, highs, strict=True))
    assert sum(n * c for n, c in zip(got, caps, strict=True)) >= rate
    cost = sum(n * p for n, p in zip(got, prices, strict=True))
    cheapest = brute_force(caps, prices, lows, highs, rate, list(order), 0.0)
    assert cheapest is not None
    assert cost <= sum(n * p for n, p in zip(cheapest, prices, strict=True)) * (1 + within)


def test_spill_over_fills_the_preferred_variant_first() -> None:
    # h100 costs more per unit of capacity; strict preference still fills it up to its bound
    caps, prices = [3.0, 1.0], [4.0, 1.0]
    assert choose_mix(caps, prices, [0, 0], [2, 20], 10.0, [0, 1], 100.0) == (2, 4)
    # by price alone the cheaper-per-capacity variant takes everything
    assert choose_mix(caps, prices, [0, 0], [2, 20], 10.0, [0, 1], 0.0) == (0, 10)
    # equal cost: preference breaks the tie (3 × 1.0 = 1 × 3.0 capacity, same price)
    assert choose_mix([3.0, 1.0], [3.0, 1.0], [0, 0], [5, 5], 3.0, [0, 1]) == (1, 0)
    assert choose_mix([3.0, 1.0], [3.0, 1.0], [0, 0], [5, 5], 3.0, [1, 0]) == (0, 3)


def test_nothing_covers_gives_none() -> None:
    assert choose_mix([1.0], [1.0], [0], [3], 3.5, [0]) is None
    assert choose_mix([0.0], [1.0], [1], [3], 0.1, [0]) is None
    assert choose_mix([0.0], [1.0], [1], [3], 0.0, [0]) == (1,)


@settings(max_examples=150, deadline=None)
@given(
    st.floats(0.05, 60),
    st.floats(10, 4000),
    st.floats(2, 400),
    st.floats(0.05, 3),
    st.floats(0.01, 0.2),
)
def test_one_variant_agrees_with_replicas_for_slo(
    rate: float, prompt: float, gen: float, ttft: float, tpot: float
) -> None:
    """With one variant the mix is the single-target sizing of ``modelCapacity``."""
    mix = TokenMix(prompt, gen)
    slo = ServingSlo(ttft, tpot)
    single = replicas_for_slo(A100, LIMITS, rate, mix, ttft, tpot, 10_000)
    policy = VariantPolicy((Variant("a100", A100, LIMITS, 2.0, 10_000),), slo)
    got = decide_mix(policy, Observed(rate, mix)).replicas()["a100"]
    if single.saturated:
        assert got == 10_000
        return
    # the capacity search stops a hair below the exact boundary: at most one more, and then
    # only where the single-target count is on that boundary
    assert got in (single.replicas, single.replicas + 1)
    if got != single.replicas:
        assert math.isclose(
            rate / single.replicas, capacity_at_slo(A100, LIMITS, mix, slo).rate, rel_tol=1e-9
        )


def test_capacity_meets_the_slo_and_a_bit_more_does_not() -> None:
    c = capacity_at_slo(H100, LIMITS, MIX, SLO)
    s = steady_state(H100, LIMITS, c.rate, MIX)
    assert s.ttft <= SLO.ttft and s.tpot <= SLO.tpot  # type: ignore[operator]
    s = steady_state(H100, LIMITS, c.rate * 1.001, MIX)
    assert s.limit is not None or s.ttft > SLO.ttft or s.tpot > SLO.tpot  # type: ignore[operator]
    assert (
        capacity_at_slo(H100, LIMITS, MIX, SLO).rate > capacity_at_slo(A100, LIMITS, MIX, SLO).rate
    )


def test_a_small_kv_cache_lowers_the_capacity() -> None:
    small = capacity_at_slo(A100, EngineLimits(200), MIX, SLO)
    assert 0 < small.rate < capacity_at_slo(A100, LIMITS, MIX, SLO).rate


def test_unreachable_bound_is_moved_not_held_at_max() -> None:
    c = capacity_at_slo(A100, LIMITS, TokenMix(8000, 30), ServingSlo(ttft=0.01))
    assert c.unreachable is not None and "TTFT" in c.unreachable and c.rate > 0


def _policy(prefer: tuple[str, ...] = (), within: float = 0.0) -> VariantPolicy:
    return VariantPolicy(
        (
            Variant("a100", A100, LIMITS, price=2.0, max_replicas=16, min_replicas=1),
            Variant("h100", H100, LIMITS, price=4.0, max_replicas=8),
        ),
        SLO,
        prefer,
        within,
    )


def test_decide_mix_explains_why_one_fewer_would_not_do() -> None:
    d = decide_mix(_policy(), Observed(30.0, MIX))
    assert not d.saturated
    total = sum(v.replicas * v.capacity for v in d.variants)
    assert total >= 30.0
    for v in d.variants:
        if v.replicas > (1 if v.name == "a100" else 0):
            assert any(line.startswith(f"one {v.name} fewer") for line in d.why)
            assert total - v.capacity < 30.0
    assert d.cost == sum(v.cost for v in d.variants)
    # every replica runs at the same fraction of its capacity
    fractions = {round(v.share / v.capacity, 9) for v in d.variants if v.replicas}
    assert len(fractions) == 1


def test_placeable_bounds_the_mix_and_spills_to_the_next() -> None:
    full = decide_mix(_policy(("h100",), 10.0), Observed(80.0, MIX))
    assert full.replicas()["h100"] > 1
    squeezed = decide_mix(_policy(("h100",), 10.0), Observed(80.0, MIX, {"h100": 1}))
    assert squeezed.replicas()["h100"] <= 1
    assert squeezed.replicas()["a100"] > full.replicas()["a100"]
    assert any("free GPUs" in line for line in squeezed.why)


def test_saturated_takes_every_bound() -> None:
    d = decide_mix(_policy(), Observed(10_000.0, MIX, {"a100": 3}))
    assert d.saturated and d.replicas() == {"a100": 3, "h100": 8}


def test_no_load_keeps_the_minimums() -> None:
    d = decide_mix(_policy(), Observed(0.0, MIX))
    assert d.replicas() == {"a100": 1, "h100": 0} and not d.saturated


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Variant("x", A100, LIMITS, 0.0, 1), "price must be positive"),
        (lambda: Variant("x", A100, LIMITS, 1.0, 1, 2), "min"),
        (lambda: VariantPolicy((), SLO), "at least one"),
        (lambda: _policy(("v100",)), "unknown variants"),
        (lambda: _policy(("h100", "h100")), "twice"),
        (lambda: _policy((), -1.0), "preferWithin"),
        (lambda: Observed(math.nan, MIX), "rate"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(build: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()  # type: ignore[operator]
