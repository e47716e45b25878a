"""The step-time model, the capacity formulas built on it, and the shipped profiles."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.profiles import (
    ProfileError,
    load_profile,
    parse_profile,
    profile_document,
    shipped_profiles,
)
from policies.reachable import NEAR_FLOOR
from policies.stepmodel import (
    EngineLimits,
    StepProfile,
    TokenMix,
    kv_cache_blocks,
    replicas_for_slo,
    saturation_rate,
    steady_state,
    step_time,
)

P = StepProfile("t", 5e-3, 2e-5, 1e-5, 1e-7)


def test_step_time_is_the_linear_model() -> None:
    assert step_time(P, 100, 10, 1000) == pytest.approx(5e-3 + 2e-3 + 1e-4 + 1e-4)


def test_kv_cache_blocks_from_memory() -> None:
    # 80 GiB × 0.9 − 16 GB of weights, 128 KiB per token, 16 tokens per block
    blocks = kv_cache_blocks(80 * 2**30, 16_060_522_496, 131072)
    assert blocks == int((80 * 2**30 * 0.9 - 16_060_522_496) // (131072 * 16))
    with pytest.raises(ValueError, match="no room for a KV cache"):
        kv_cache_blocks(16 * 2**30, 16_060_522_496, 131072)


def test_light_load_approaches_the_single_request_figures() -> None:
    limits = EngineLimits(100_000)
    s = steady_state(P, limits, 1e-6, TokenMix(1000, 11))
    assert s.tpot == pytest.approx(P.beta0, rel=1e-4)
    assert s.ttft == pytest.approx(1.5 * P.beta0 + P.beta1 * 1000, rel=1e-4)


def test_saturation_rate_caps() -> None:
    h100 = load_profile("llama-3.1-8b-h100-tp1")
    mix = TokenMix(100, 201)
    # 32 sequences: y = 32 / 200 = 0.16 requests per step-second
    c = h100.beta1 * 100 + h100.beta2 * 200
    expect = 0.16 / (h100.beta0 + c * 0.16)
    assert saturation_rate(h100, EngineLimits(100_000, max_num_seqs=32), mix) == pytest.approx(
        expect
    )
    # past the saturation rate no steady state exists
    rate = saturation_rate(h100, EngineLimits(100_000, max_num_seqs=32), mix)
    assert steady_state(h100, EngineLimits(100_000, 32), rate * 1.05, mix).limit is not None


@settings(max_examples=200)
@given(
    st.floats(0.01, 500),
    st.floats(1, 8000),
    st.floats(1, 2000),
    st.floats(0.05, 5),
    st.floats(0.01, 0.5),
    st.integers(1, 64),
)
def test_replicas_for_slo_is_the_smallest_count_that_meets_it(
    rate: float, prompt: float, gen: float, ttft: float, tpot: float, most: int
) -> None:
    limits = EngineLimits(50_000)
    mix = TokenMix(prompt, gen)
    sizing = replicas_for_slo(P, limits, rate, mix, ttft, tpot, most)
    # A bound below an idle replica's latency is sized for just above that floor instead.
    idle = steady_state(P, limits, 0.0, mix)
    unreachable = idle.ttft > ttft or idle.tpot > tpot
    assert (sizing.unreachable is not None) == unreachable
    ttft = idle.ttft * (1 + NEAR_FLOOR) if idle.ttft > ttft else ttft
    tpot = idle.tpot * (1 + NEAR_FLOOR) if idle.tpot > tpot else tpot

    def meets(n: int) -> bool:
        s = steady_state(P, limits, rate / n, mix)
        return s.limit is None and s.ttft <= ttft and s.tpot <= tpot

    if sizing.saturated:
        assert sizing.replicas == most and not meets(most)
    else:
        assert meets(sizing.replicas)
        assert sizing.replicas == 1 or not meets(sizing.replicas - 1)


@settings(max_examples=200)
@given(st.floats(0.01, 200), st.floats(2000, 60_000), st.floats(1, 500), st.integers(2, 64))
def test_an_unreachable_ttft_caps_where_more_replicas_stop_helping(
    rate: float, prompt: float, gen: float, most: int
) -> None:
    """A prompt whose prefill alone exceeds the TTFT bound: no count meets it, so the count is
    the fewest within NEAR_FLOOR of the idle replica's TTFT (or the load's), not ``max``."""
    limits = EngineLimits(500_000, max_num_batched_tokens=8192)
    mix = TokenMix(prompt, gen)
    bound = 0.03  # below the prefill of 2000 tokens at 20 µs each (40 ms)
    sizing = replicas_for_slo(P, limits, rate, mix, bound, None, most)
    idle = steady_state(P, limits, 0.0, mix)
    assert idle.ttft > bound and sizing.unreachable is not None
    assert "TTFT bound 30ms" in sizing.unreachable
    near = idle.ttft * (1 + NEAR_FLOOR)

    def helps(n: int) -> bool:
        s = steady_state(P, limits, rate / n, mix)
        return s.limit is None and s.ttft <= near

    if sizing.saturated:
        assert sizing.replicas == most and not helps(most)
    else:
        assert helps(sizing.replicas) and (sizing.replicas == 1 or not helps(sizing.replicas - 1))
        assert sizing.replicas < most or not helps(most - 1)


def test_no_load_needs_no_replicas() -> None:
    assert replicas_for_slo(P, EngineLimits(100), 0.0, TokenMix(1, 1), 1.0, 1.0, 8).replicas == 0


def test_shipped_profiles_load_with_their_sources() -> None:
    names = shipped_profiles()
    assert {"llama-3.1-8b-h100-tp1", "llama-3.1-8b-a100-80gb-tp1"} <= set(names)
    a100 = load_profile("llama-3.1-8b-a100-80gb-tp1")
    assert (a100.beta0, a100.beta1, a100.beta2) == pytest.approx((16.44e-3, 47.8e-6, 18.2e-6))
    h100 = load_profile("llama-3.1-8b-h100-tp1")
    assert (h100.beta0, h100.beta1, h100.beta2) == pytest.approx((5.753e-3, 17.25e-6, 6.0e-6))
    for name in names:
        assert load_profile(name).source


def test_a_profile_round_trips_through_its_document() -> None:
    h100 = load_profile("llama-3.1-8b-h100-tp1")
    again = parse_profile(profile_document(h100), "x.yaml")
    assert again == h100


def test_profile_errors_name_file_and_field(tmp_path: Path) -> None:
    bad = {"name": "X", "stepTime": {"beta0": "fast", "beta2": 1e-5, "beta9": 1}, "weights": "lots"}
    with pytest.raises(ProfileError) as info:
        parse_profile(bad, "p.yaml")
    text = str(info.value)
    assert "p.yaml: name: expected lower-case" in text
    assert 'p.yaml: stepTime.beta0: expected a duration like "6us"' in text
    assert "p.yaml: stepTime.beta1: required" in text
    assert "p.yaml: stepTime.beta9: unknown field" in text
    assert "p.yaml: weights: expected bytes" in text
    with pytest.raises(ProfileError, match="no such profile"):
        load_profile("no-such-profile", tmp_path)
    with pytest.raises(ProfileError, match="no such profile"):  # the OS refuses the name
        load_profile("x" * 5000, tmp_path)
    f = tmp_path / "mine.yaml"
    f.write_text("name: mine\nstepTime: {beta0: 1ms, beta1: 1us, beta2: 2us}\n")
    assert load_profile("mine.yaml", tmp_path).beta2 == pytest.approx(2e-6)
    assert math.isclose(load_profile(str(f)).beta0, 1e-3)


def test_shipped_profiles_carry_blis_alphas() -> None:
    h100 = load_profile("llama-3.1-8b-h100-tp1")
    assert (h100.alpha0, h100.alpha1, h100.alpha2) == pytest.approx((232.5e-6, 1.752e-6, 3357.4e-6))
    a100 = load_profile("llama-3.1-8b-a100-80gb-tp1")
    assert (a100.alpha0, a100.alpha1, a100.alpha2) == pytest.approx(
        (7739.7e-6, 2.309e-6, 6276.2e-6)
    )
    assert "3d79c654c2037299de0d656d57bbbf693edde7df" in h100.source


def test_a_profile_without_alpha_has_none(tmp_path: Path) -> None:
    f = tmp_path / "plain.yaml"
    f.write_text("name: plain\nstepTime: {beta0: 1ms, beta1: 1us, beta2: 2us}\n")
    plain = load_profile(str(f))
    assert (plain.alpha0, plain.alpha1, plain.alpha2) == (0.0, 0.0, 0.0)
    assert "alpha" not in profile_document(plain)


def test_alpha_errors_name_the_field() -> None:
    steps = {"beta0": "1ms", "beta1": "1us", "beta2": "1us"}
    with pytest.raises(ProfileError) as info:
        bad = {"perToken": 1, "perRequest": "x"}
        parse_profile({"name": "a", "stepTime": steps, "alpha": bad}, "a.yaml")
    assert "a.yaml: alpha.perToken: unknown field" in str(info.value)
    assert 'a.yaml: alpha.perRequest: expected a duration like "3.4ms"' in str(info.value)
    with pytest.raises(ProfileError, match=r"a\.yaml: alpha: expected"):
        parse_profile({"name": "a", "stepTime": steps, "alpha": 3}, "a.yaml")


@settings(max_examples=200)
@given(
    st.floats(0.01, 30),
    st.floats(1, 4000),
    st.floats(1, 500),
    st.tuples(st.floats(0, 0.01), st.floats(0, 1e-5), st.floats(0, 0.01)),
)
def test_alphas_add_to_the_fluid_latencies_and_nothing_else(
    rate: float, prompt: float, gen: float, a: tuple[float, float, float]
) -> None:
    with_alpha = StepProfile(
        "a", P.beta0, P.beta1, P.beta2, P.beta3, alpha0=a[0], alpha1=a[1], alpha2=a[2]
    )
    limits = EngineLimits(100_000)
    mix = TokenMix(prompt, gen)
    plain, slow = steady_state(P, limits, rate, mix), steady_state(with_alpha, limits, rate, mix)
    assert slow.limit == plain.limit and slow.step == plain.step
    if plain.limit is None:
        assert slow.ttft == pytest.approx(plain.ttft + a[0] + a[1] * prompt + a[2])
        assert slow.tpot == pytest.approx(plain.tpot + a[2])
    assert saturation_rate(with_alpha, limits, mix) == saturation_rate(P, limits, mix)


def test_modelcapacity_sizes_for_the_alphas_too() -> None:
    a100 = load_profile("llama-3.1-8b-a100-80gb-tp1")
    plain = StepProfile("b", a100.beta0, a100.beta1, a100.beta2)
    limits = EngineLimits(29_205)
    mix = TokenMix(2048, 28)

    def size(p: StepProfile) -> int:
        return replicas_for_slo(p, limits, 30.0, mix, 0.5, 0.025, 64).replicas

    # a mean TPOT of 25 ms leaves the steps 25 - 6.3 ms with the alphas: more replicas
    assert size(a100) > size(plain)
