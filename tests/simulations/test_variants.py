"""Variants in the simulator: the scenario's ``variants:``, one gateway over several
Deployments, the gpuscale mix and the per-variant HPAs, cost, and the variants sweep."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from simulations.config.scenario import Scenario, ScenarioError, parse_scenario
from simulations.config.variants import VariantContender
from simulations.experiments.compare import prepare, random_streams
from simulations.experiments.variants import (
    load_variant_sweep,
    run_variants,
    variant_sweep_report,
)
from simulations.experiments.variants_bound import bound, candidate_mixes, caps, mix_curves
from simulations.serving.run import build_cluster
from simulations.serving.variants import VariantWorld
from simulations.serving.vllm import BatchingReplica

REPO = Path(__file__).resolve().parents[2]
SCENARIO = REPO / "simulations" / "scenarios" / "variants.yaml"
BASE = SCENARIO.parent
DOC: dict[str, Any] = yaml.safe_load(SCENARIO.read_text())


def scenario_of(doc: dict[str, Any], minutes: float = 4) -> Scenario:
    s = parse_scenario(doc, "v.yaml", BASE)
    return dataclasses.replace(s, duration=minutes * 60.0)


def errors_of(change: Any) -> list[str]:
    doc = copy.deepcopy(DOC)
    change(doc["variants"])
    with pytest.raises(ScenarioError) as info:
        parse_scenario(doc, "v.yaml", BASE)
    return [m.removeprefix("v.yaml: ") for m in info.value.messages]


def test_the_shipped_scenario_reads() -> None:
    s = parse_scenario(DOC, "v.yaml", BASE)
    assert s.variants is not None
    a100, h100 = s.variants.deployments
    assert a100.service.vllm is not None and h100.service.vllm is not None
    assert "a100" in a100.service.vllm.profile.name and "h100" in h100.service.vllm.profile.name
    assert h100.service.node_selector == {"gpuscale.io/pool": "h100"}
    assert (h100.service.min_replicas, h100.service.max_replicas) == (0, 4)
    assert s.variants.prefer == ("h100", "a100")
    # the SLO and start-up stay the service's
    assert a100.service.slo == s.service.slo and h100.service.startup == s.service.startup
    kinds = [c.kind for c in s.variants.contenders]
    assert kinds == ["gpuscale", "hpa", "hpa"]
    assert s.variants.contenders[2].bounds["a100"] == (0, 0)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda v: v["deployments"][1].update(price=0),
            "variants.deployments[1].price: ",
        ),
        (
            lambda v: v["deployments"][1].update(name="a100"),
            "variants.deployments[1].name: duplicate variant 'a100'",
        ),
        (lambda v: v.update(prefer=["v100"]), "variants.prefer: unknown variant 'v100'"),
        (
            lambda v: v["deployments"][0].update(profile="no-such-gpu"),
            "variants.deployments[0].profile: no-such-gpu: no such profile",
        ),
        (
            lambda v: v["contenders"][0].update(metric="queue"),
            "variants.contenders[0].metric: does not apply to kind: gpuscale",
        ),
        (
            lambda v: v["contenders"][1].update(replicas={"a100": {"max": 0}, "h100": {"max": 0}}),
            "variants.contenders[1].replicas: every variant has max 0",
        ),
        (
            lambda v: v["contenders"][1].update(replicas={"l4": {"max": 1}}),
            "variants.contenders[1].replicas.l4: unknown field",
        ),
        (lambda v: v.update(deployments=[]), "variants.deployments: expected a non-empty list"),
        (
            lambda v: v["contenders"][1].update(kind="fixed"),
            "variants.contenders[1].metric: does not apply to kind: fixed",
        ),
    ],
)
def test_bad_variants_name_the_field(change: Any, expected: str) -> None:
    errors = errors_of(change)
    assert any(e.startswith(expected) for e in errors), errors


def _contender(s: Scenario, name: str) -> VariantContender:
    assert s.variants is not None
    return next(c for c in s.variants.contenders if c.label == name)


def test_one_gateway_serves_every_variant_and_costs_add_up() -> None:
    s = scenario_of(DOC)
    result = run_variants(s, _contender(s, "hpa-per-variant"), 1)
    summary = result.summary
    per = summary["variants"]
    assert set(per) == {"a100", "h100"}
    # every request is accounted for once, over both Deployments
    assert summary["completed"] + summary["dropped"] + summary["unfinished"] == summary["requests"]
    assert summary["completed"] > 0
    prices = {"a100": 1.79, "h100": 2.99}
    for name, v in per.items():
        assert v["replica_hours"] > 0, name  # both variants held GPUs
        assert v["cost"] == pytest.approx(v["replica_hours"] * prices[name])
    assert summary["cost"] == pytest.approx(sum(v["cost"] for v in per.values()))
    assert summary["gpu_hours"] == pytest.approx(sum(v["gpu_hours"] for v in per.values()))


def test_both_variants_serve_requests_through_the_shared_router() -> None:
    s = scenario_of(DOC, minutes=3)
    assert s.variants is not None
    workload, _, duration = prepare(s, 1)
    _, _, c_rng, r_rng = random_streams(1)
    cluster, _ = build_cluster(s, c_rng)
    world = VariantWorld(s, _contender(s, "hpa-per-variant"), workload, cluster, r_rng, duration)
    world.start(s.hpa)
    world.run()
    ids = [{p.id for p in run.pods} for run in world.runs]
    assert not ids[0] & ids[1]  # distinct replica ids on the one router
    finished = [
        sum(rep.completed for rep in run.replicas if isinstance(rep, BatchingReplica))
        for run in world.runs
    ]
    assert all(n > 0 for n in finished), finished


def test_a_fixed_mix_holds_every_variant_at_its_min() -> None:
    doc = copy.deepcopy(DOC)
    doc["variants"]["contenders"] = [
        {"name": "static", "kind": "fixed", "replicas": {"a100": {"min": 3}, "h100": {"min": 1}}}
    ]
    s = scenario_of(doc, minutes=2)
    per = run_variants(s, _contender(s, "static"), 1).summary["variants"]
    assert per["a100"]["replicas_max"] == 3 and per["h100"]["replicas_max"] == 1


def test_preferred_only_keeps_the_other_variant_at_zero() -> None:
    s = scenario_of(DOC)
    per = run_variants(s, _contender(s, "hpa-h100-only"), 1).summary["variants"]
    assert per["a100"]["replica_hours"] == 0 and per["h100"]["replica_hours"] > 0


def test_gpuscale_spills_to_the_next_variant_when_the_preferred_is_full() -> None:
    doc = copy.deepcopy(DOC)
    doc["variants"]["contenders"] = [
        {
            "name": "tight",
            "kind": "gpuscale",
            "slo": {"ttft": "500ms", "tpot": "26ms"},
            "replicas": {"h100": {"min": 1, "max": 1}},
        }
    ]
    s = scenario_of(doc, minutes=6)
    result = run_variants(s, _contender(s, "tight"), 1)
    per = result.summary["variants"]
    assert per["h100"]["replicas_max"] <= 1
    assert per["a100"]["replicas_max"] > 0  # the load past one H100 went to the A100s
    assert result.summary["decisions"] > 0


def test_gpuscale_spills_over_when_the_preferred_gpus_are_taken() -> None:
    """Free GPUs bound the preferred variant: no H100 pod is left Pending, the rest spills."""
    doc = copy.deepcopy(DOC)
    doc["background"] = {"pods": 0}
    for pool in doc["cluster"]["pools"]:
        if pool["name"] == "h100":
            pool["gpus"] = 1
    doc["variants"]["deployments"][1]["initialReplicas"] = 1
    doc["variants"]["contenders"] = [
        {"name": "free", "kind": "gpuscale", "slo": {"ttft": "500ms", "tpot": "26ms"}}
    ]
    s = scenario_of(doc, minutes=10)
    per = run_variants(s, _contender(s, "free"), 1).summary["variants"]
    assert per["h100"]["replicas_max"] == 1
    # only the 1 s scheduling delay of each new pod, never a pod waiting for a GPU
    assert per["h100"]["pending_pod_seconds"] < 10
    assert per["a100"]["replica_hours"] > 0


def test_the_variants_sweep_reads_and_reports(tmp_path: Path) -> None:
    _, spec = load_variant_sweep(REPO / "simulations" / "sweeps" / "variants.yaml")
    names = [name for name, _ in spec.families]
    assert names[:4] == ["gpuscale-variants", "hpa-per-variant", "hpa-h100-only", "hpa-a100-only"]
    points = dict(spec.families)["hpa-h100-only"]
    assert len(points) == 9  # target x replicas.h100.min: 3 x 3
    assert all(p.contender.bounds["a100"] == (0, 0) for p in points)
    # the report picks the cheapest point that reaches the target
    fam = [("f", points[:2])]
    spec2 = dataclasses.replace(spec, families=tuple(fam), seeds=(1,))
    records: list[dict[str, Any]] = [
        {
            "family": "f",
            "label": p.contender.label,
            "knobs": dict(p.knobs),
            "seed": 1,
            "summary": {
                "slo_attainment": att,
                "cost": cost,
                "gpu_hours": cost,
                "cut_by_scale_down": 0,
                "pending_pod_seconds": 0.0,
                "variants": {"h100": {"replicas_mean": 1.0, "cost": cost}},
            },
        }
        for p, att, cost in zip(points[:2], (0.995, 0.999), (5.0, 3.0), strict=True)
    ]
    report = variant_sweep_report(spec2, records)
    assert report["families"][0]["best"]["cost"] == 3.0
    records[1]["summary"]["slo_attainment"] = 0.5
    assert variant_sweep_report(spec2, records)["families"][0]["best"]["cost"] == 5.0


def test_a_bad_sweep_knob_names_the_point(tmp_path: Path) -> None:
    bad = tmp_path / "s.yaml"
    bad.write_text(
        f"scenario: {SCENARIO}\n"
        "families:\n  f:\n    base: {kind: hpa}\n    grid: {target: [1, -2]}\n"
    )
    with pytest.raises(ScenarioError) as info:
        load_variant_sweep(bad)
    assert any("families.f[f target=-2].target" in m for m in info.value.messages)


def test_routing_is_declared_and_defaults_to_least_outstanding() -> None:
    s = parse_scenario(DOC, "v.yaml", BASE)
    assert s.variants is not None and s.variants.routing == "least-outstanding"
    errors = errors_of(lambda v: v.update(routing="random"))
    assert any(e.startswith("variants.routing: ") for e in errors), errors
    errors = errors_of(lambda v: v["deployments"][0].update(routingWeight=0))
    assert any(e.startswith("variants.deployments[0].routingWeight: ") for e in errors), errors


def _requests_per_replica_hour(routing: str) -> dict[str, float]:
    doc = copy.deepcopy(DOC)
    doc["variants"]["routing"] = routing
    doc["variants"]["contenders"] = [
        {"name": "static", "kind": "fixed", "replicas": {"a100": {"min": 3}, "h100": {"min": 2}}}
    ]
    s = scenario_of(doc, minutes=3)
    workload, _, duration = prepare(s, 1)
    _, _, c_rng, r_rng = random_streams(1)
    cluster, _ = build_cluster(s, c_rng)
    world = VariantWorld(s, _contender(s, "static"), workload, cluster, r_rng, duration)
    if routing == "capacity-weighted":
        a100, h100 = world.weights
        assert h100 > 2 * a100  # the H100's modelled capacity at the SLO, several A100s'
    world.start(s.hpa)
    world.run()
    out = {}
    for d, run in zip(s.variants.deployments if s.variants else (), world.runs, strict=True):
        done = sum(rep.completed for rep in run.replicas if isinstance(rep, BatchingReplica))
        out[d.name] = done / max(run.ready_seconds, 1e-9)
    return out


def test_capacity_weighted_routing_gives_the_faster_variant_more_per_replica() -> None:
    even = _requests_per_replica_hour("least-outstanding")
    weighted = _requests_per_replica_hour("capacity-weighted")
    assert weighted["h100"] / weighted["a100"] > 1.5 * (even["h100"] / even["a100"])


def test_mixes_walk_the_roomiest_variant_and_skip_mixes_that_contain_enough() -> None:
    enough: list[tuple[int, ...]] = []
    seen = []
    for mix in candidate_mixes((3, 1), enough):
        seen.append(mix)
        if mix in {(2, 0), (0, 1)}:
            enough.append(mix)
    assert seen == [(1, 0), (2, 0), (0, 1)]  # (3, 0) and (1, 1) contain a mix that missed nothing


def test_the_variants_hindsight_bound_is_below_holding_every_variant_full() -> None:
    doc = copy.deepcopy(DOC)
    doc["variants"]["routing"] = "capacity-weighted"
    s = scenario_of(doc, minutes=3)
    assert s.variants is not None
    cap = caps(s, 1)
    assert cap[1] == 3  # the background pod on the H100 node: 3 of 4 fit
    curves = mix_curves(s, 1, 60.0, cap)
    assert len(curves.options) == 3
    got = bound(s, curves, 0.99)
    assert got["feasible"] and got["modelled_attainment"] >= 0.99
    prices = [d.price for d in s.variants.deployments]
    full = sum(c * p for c, p in zip(cap, prices, strict=True)) * 3 / 60
    assert 0 < got["cost"] < full
    for mix in got["mixes"]:
        assert all(0 <= n <= c for n, c in zip(mix, cap, strict=True))


def test_a_variants_sweep_lists_every_top_level_problem_with_its_field(tmp_path: Path) -> None:
    plain = REPO / "simulations" / "scenarios" / "default.yaml"
    bad = tmp_path / "s.yaml"
    bad.write_text(f"scenario: {SCENARIO}\nseeds: 0\ntarget: 1.5\ncolour: red\n")
    with pytest.raises(ScenarioError) as info:
        load_variant_sweep(bad)
    text = "\n".join(info.value.messages)
    for field in ("seeds", "target", "families", "colour"):
        assert f"{bad}: {field}:" in text, text
    bad.write_text(f"scenario: {plain}\nfamilies: {{f: {{base: {{kind: hpa}}}}}}\n")
    with pytest.raises(ScenarioError) as info:
        load_variant_sweep(bad)
    assert info.value.messages == [f"{bad}: scenario: {plain}: the scenario has no variants"]
