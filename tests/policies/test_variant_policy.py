"""The ScalingPolicy's ``variants:``: read from the one declaration, errors that name the field,
and the pure core's view of it (policies/variants.py)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.parse import (
    PolicyError,
    PolicyFileError,
    load_policy_file,
    parse_policy_document,
    policy_to_document,
)
from policies.variants import decide_mix, observe, variant_policy

EXAMPLE = Path(__file__).parents[2] / "policies" / "examples" / "llm-serving-variants.yaml"


def document() -> dict[str, Any]:
    (policy,) = load_policy_file(EXAMPLE)
    return policy_to_document(policy)


def errors(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy_document(doc, namespace="ns", name="p")
    return [f"{e.path}: {e.message}" for e in info.value.errors]


def test_example_reads_with_target_and_bounds_from_the_variants() -> None:
    (p,) = load_policy_file(EXAMPLE)
    assert p.variants is not None
    assert [t.name for t in p.variants.targets] == ["h100", "a100"]
    assert p.target.name == "llama-h100"  # the most preferred variant's
    assert (p.replicas.min, p.replicas.max) == (1, 24)
    h100, a100 = p.variants.targets
    assert h100.profile is not None and h100.profile.name == "llama-3.1-8b-h100-tp1"
    assert a100.profile is None  # the metric's
    assert (h100.replica_price, a100.replica_price) == (4.0, 2.0)


def test_round_trip() -> None:
    doc = document()
    assert "target" not in doc and "replicas" not in doc
    (p,) = load_policy_file(EXAMPLE)
    assert parse_policy_document(doc, namespace=p.namespace, name=p.name) == p


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda d: d.update(target={"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"}),
            "target: leave out with variants: each variant names its own",
        ),
        (lambda d: d.pop("variants"), "target: required field is missing"),
        (
            lambda d: d["variants"].update(prefer=["h100", "l4"]),
            "variants.prefer[1]: unknown variant 'l4' (known: ['h100', 'a100'])",
        ),
        (
            lambda d: d["variants"].update(prefer=["a100", "a100"]),
            "variants.prefer[1]: 'a100' is listed twice",
        ),
        (
            lambda d: d["variants"]["targets"][1].update(price=3.0),
            "variants.targets[1].price: give exactly one of price and pricePerGpuHour with gpus",
        ),
        (
            lambda d: d["variants"]["targets"][1].pop("gpus"),
            "variants.targets[1].gpus: pricePerGpuHour and gpus go together",
        ),
        (
            lambda d: d["variants"]["targets"][1].update(engine={"maxNumSeqs": 64}),
            "variants.targets[1].engine: give profile too (without one the metric's engine"
            " applies)",
        ),
        (
            lambda d: d["variants"]["targets"][1].update(name="h100"),
            "variants.targets[1].name: duplicate variant name 'h100' (also variants.targets[0])",
        ),
        (
            lambda d: d["variants"]["targets"][1].update(
                target=d["variants"]["targets"][0]["target"]
            ),
            "variants.targets[1].target: Deployment/llama-h100 is also"
            " variants.targets[0]'s target",
        ),
        (
            lambda d: d["variants"].update(metric="nope"),
            "variants.metric: expected the name of a modelCapacity metric (['capacity']),"
            " got 'nope'",
        ),
        (
            lambda d: d["variants"]["targets"][0].update(replicas={"min": 3, "max": 2}),
            "variants.targets[0].replicas.min: must not exceed replicas.max (2), got 3",
        ),
        (
            lambda d: d["variants"].update(preferWithin=-0.1),
            "variants.preferWithin: ",
        ),
        (
            lambda d: d.update(onMetricsUnavailable={"fallbackReplicas": 2}),
            "onMetricsUnavailable: a variants policy holds every variant while its metric is"
            " missing",
        ),
        (
            lambda d: d.update(deletionCost={"query": "q"}),
            "deletionCost: not supported with variants yet (it follows one target)",
        ),
        (
            lambda d: d.update(behavior={"scaleUp": {"stabilizationWindow": "1m"}}),
            "behavior.scaleUp: not supported with variants yet (only"
            " scaleDown.stabilizationWindow applies, to each variant's count)",
        ),
        (
            lambda d: d.update(behavior={"scaleDown": {"select": "Min"}}),
            "behavior.scaleDown.select: not supported with variants yet",
        ),
        (
            lambda d: d.update(burst={"window": "5m"}),
            "burst: not supported with variants yet (the mix is sized for the rate observed)",
        ),
    ],
)
def test_errors_name_the_field(edit: Any, expected: str) -> None:
    doc = document()
    edit(doc)
    found = errors(doc)
    assert any(e.startswith(expected) for e in found), found


def test_variants_need_a_model_capacity_metric() -> None:
    doc = document()
    doc["variants"].pop("metric")
    doc["metrics"] = [{"name": "q", "type": "queueDepth", "query": "x", "targetPerReplica": 4}]
    assert (
        "variants.metric: variants need a modelCapacity metric (its request rate, token mix"
        " and SLO)" in errors(doc)
    )


def test_a_file_error_names_the_file(tmp_path: Path) -> None:
    doc = document()
    doc["variants"]["prefer"] = ["l4"]
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(PolicyFileError) as info:
        load_policy_file(path)
    assert info.value.messages == [
        f"{path}: default/mixed: variants.prefer[0]: unknown variant 'l4' (known: ['h100', 'a100'])"
    ]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),
            st.integers(0, 5),
            st.floats(0.1, 10, allow_nan=False),
            st.booleans(),
        ),
        min_size=1,
        max_size=3,
    ),
    st.floats(0, 2, allow_nan=False),
    st.permutations(range(3)),
)
def test_any_valid_variants_round_trip_and_decide_within_bounds(
    rows: list[tuple[int, int, float, bool]], within: float, order: list[int]
) -> None:
    """Whatever the variants' bounds and prices, the policy reads back as written, and the
    decision's counts lie within each variant's bounds."""
    base = document()
    template = base["variants"]["targets"][1]
    targets = []
    for i, (low, extra, price, per_gpu) in enumerate(rows):
        t = copy.deepcopy(template)
        t["name"] = f"v{i}"
        t["target"] = dict(t["target"], name=f"d{i}")
        t["replicas"] = {"min": low, "max": max(low + extra, 1)}
        t.pop("pricePerGpuHour")
        t.pop("gpus")
        t |= {"pricePerGpuHour": price, "gpus": 2} if per_gpu else {"price": price}
        targets.append(t)
    prefer = [f"v{i}" for i in order if i < len(rows)]
    base["variants"] = {"metric": "capacity", "prefer": prefer, "preferWithin": within}
    base["variants"]["targets"] = targets
    p = parse_policy_document(base, namespace="ns", name="p")
    assert parse_policy_document(policy_to_document(p), namespace="ns", name="p") == p
    obs = observe(
        p, {"capacity": 20.0, "capacity:promptTokens": 8000.0, "capacity:generationTokens": 2000.0}
    )
    assert obs is not None
    d = decide_mix(variant_policy(p), obs)
    for t, row in zip(targets, d.variants, strict=True):
        assert t["replicas"]["min"] <= row.replicas <= t["replicas"]["max"]


def test_other_metrics_are_refused_rather_than_ignored() -> None:
    doc = document()
    doc["metrics"].append({"name": "kv", "type": "kvCacheUsage", "query": "x", "target": 0.8})
    assert errors(doc) == [
        "metrics[1]: a variants policy is sized by its modelCapacity metric alone; other"
        " metrics are not used with variants yet, so leave them out"
    ]


def test_unschedulable_pods_bound_a_variant_for_cold_start_then_it_is_tried_again() -> None:
    from policies.variants import HeldLimit, capacity_limits

    room, held = capacity_limits({"h100": 5, "a100": 1}, {"h100": 3}, {}, 100.0, 120.0)
    assert room == {"h100": 2} and held == {"h100": HeldLimit(2, 100.0)}
    # the pending pods are gone (scaled away): the bound stays while coldStart lasts
    room, held = capacity_limits({"h100": 2, "a100": 4}, {}, held, 219.0, 120.0)
    assert room == {"h100": 2}
    room, held = capacity_limits({"h100": 2, "a100": 4}, {}, held, 220.0, 120.0)
    assert room == {} and held == {}


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(0, 20)),
    st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(0, 20)),
    st.floats(0, 1000),
)
def test_a_limit_never_exceeds_what_runs(
    current: dict[str, int], pending: dict[str, int], now: float
) -> None:
    from policies.variants import capacity_limits

    room, _ = capacity_limits(current, pending, {}, now, 60.0)
    for name, bound in room.items():
        assert pending.get(name, 0) > 0
        assert bound == max(current[name] - pending[name], 0)


def test_the_scale_down_window_holds_each_variant_but_never_above_its_room() -> None:
    from policies.variants import stabilize_mix

    counts, history = stabilize_mix({"h100": 4, "a100": 1}, {}, (), 0.0, 300.0)
    assert counts == {"h100": 4, "a100": 1}
    counts, history = stabilize_mix({"h100": 2, "a100": 2}, {}, history, 100.0, 300.0)
    assert counts == {"h100": 4, "a100": 2}  # down waits, up at once
    counts, history = stabilize_mix({"h100": 2, "a100": 7}, {"h100": 2}, history, 150.0, 300.0)
    assert counts == {"h100": 2, "a100": 7}  # no room: cut to what runs at once
    counts, history = stabilize_mix({"h100": 4, "a100": 1}, {}, history, 300.0, 300.0)
    assert counts == {"h100": 4, "a100": 7}  # the A100s stay for the window
    counts, _ = stabilize_mix({"h100": 4, "a100": 1}, {}, history, 451.0, 300.0)
    assert counts == {"h100": 4, "a100": 1}
    counts, history = stabilize_mix({"h100": 1}, {}, (), 0.0, 0.0)
    assert history == ((0.0, (("h100", 1),)),)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9)), min_size=1, max_size=12),
    st.floats(0, 60),
)
def test_stabilized_counts_are_the_window_maximum(
    rows: list[tuple[int, int]], window: float
) -> None:
    from policies.variants import MixHistory, stabilize_mix

    history: MixHistory = ()
    for t, (a, b) in enumerate(rows):
        counts, history = stabilize_mix({"a": a, "b": b}, {}, history, 10.0 * t, window)
        recent = [r for s, r in enumerate(rows[: t + 1]) if 10.0 * (t - s) < window or s == t]
        assert counts == {"a": max(r[0] for r in recent), "b": max(r[1] for r in recent)}
