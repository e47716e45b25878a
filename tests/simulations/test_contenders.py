"""Contenders on the simulated clock: query interpretation, KEDA activation and scale to zero,
gpuscale decisions reaching the Deployment through its HPA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simulations.config.scenario import parse_scenario
from simulations.experiments.compare import run_one
from simulations.serving.contenders import query_quantile, query_window

EXAMPLES = Path(__file__).resolve().parents[2] / "policies" / "examples"


def test_quantile_and_window_come_from_the_query() -> None:
    q = 'histogram_quantile(0.99, sum by (le) (rate(x_bucket{a="b"}[2m])))'
    assert query_quantile(q) == 0.99 and query_window(q) == 120.0
    assert query_quantile("sum(rate(x[30s]))") == 0.95
    assert query_window("sum(rate(x[30s]))") == 30.0
    assert query_window("sum(x)") == 60.0


def bursty(
    policies: list[dict[str, Any]], cluster: dict[str, Any] | None = None, **service: Any
) -> Any:
    doc = {
        "cluster": cluster
        or {"pools": [{"name": "a", "count": 4, "gpus": 4, "gpuMemory": "80Gi"}]},
        "service": {
            "serviceTime": {"model": "fixed", "seconds": 0.5},
            "engine": "per-request",
            "maxBatch": 2,
            "initialReplicas": 1,
            "replicas": {"min": 0, "max": 16},
            "startup": {"imagePull": "20s", "modelLoad": "10s"},
            **service,
        },
        "workload": {"type": "bursts", "base": 0, "burst": 20, "on": "2m", "off": "10m"},
        "duration": "30m",
        "timelineInterval": "10s",
        "policies": policies,
    }
    return parse_scenario(doc, "b.yaml", Path("."))


def test_keda_scales_to_zero_after_cooldown_and_activates_again() -> None:
    """On the gateway's request rate, which exists with no pods (a per-pod metric would not,
    and KEDA could not activate from zero on it)."""
    sc = bursty(
        [{"baseline": "keda", "metric": "rate", "threshold": 2, "cooldownPeriod": "2m",
          "minReplicas": 0}]
    )  # fmt: skip
    r = run_one(sc, 0, 1)
    t, desired = r.timeline["time"], r.timeline["desired"]
    zero = [x for x, d in zip(t, desired, strict=True) if d == 0]
    assert zero, "never scaled to zero"
    # bursts start at 600 s and 1320 s: idle before, activated again in the second one
    assert any(x < 600 for x in zero)
    assert max(d for x, d in zip(t, desired, strict=True) if 1320 <= x < 1440) >= 2
    assert r.summary["completed"] > 0.95 * r.summary["requests"]


def test_gpuscale_policy_scales_up_for_a_burst_and_back_down() -> None:
    sc = bursty([{"file": str(EXAMPLES / "llm-chat-vllm.yaml")}], replicas={"min": 1, "max": 16})
    r = run_one(sc, 0, 1)
    s = r.summary
    assert s["decisions"] == 30 * 60 // 15
    assert s["replicas_max"] > 4  # 20 requests/s of 0.5 s each need about 5 replicas
    t, desired = r.timeline["time"], r.timeline["desired"]
    before = [d for x, d in zip(t, desired, strict=True) if x < 590]
    assert max(before) <= 2  # nothing to do before the first burst
    assert desired[-1] < s["replicas_max"]  # came back down after the last burst


def test_gpuscale_holds_its_count_while_pods_cannot_be_scheduled() -> None:
    """Room for four replicas, a burst that wants more: the policy's count stops at the five its
    first scale-up asked for (4 pods per 15 s) once one of them is Pending, while the HPA on the
    same queue climbs to max."""
    small = {"pools": [{"name": "a", "count": 1, "gpus": 2, "gpuMemory": "80Gi"}]}
    sc = bursty(
        [{"file": str(EXAMPLES / "llm-chat-vllm.yaml")},
         {"baseline": "hpa", "metric": "queue", "target": 1}],
        cluster=small,
        replicas={"min": 1, "max": 16},
    )  # fmt: skip
    gpuscale, hpa = run_one(sc, 0, 1), run_one(sc, 1, 1)
    limited = gpuscale.summary["limited_by"]
    assert sum(n for why, n in limited.items() if why.startswith("capacity (")) > 0
    assert gpuscale.summary["replicas_max"] == 5
    assert hpa.summary["replicas_max"] == 16
    assert gpuscale.summary["pending_pod_seconds"] < hpa.summary["pending_pod_seconds"] / 5


def test_hpa_on_per_pod_latency_and_kpa_on_concurrency_scale_for_bursts() -> None:
    sc = bursty(
        [
            {"baseline": "hpa", "metric": "latency", "target": 1.0, "quantile": 0.9},
            {"baseline": "kpa", "target": 2},
        ],
        replicas={"min": 1, "max": 16},
    )
    hpa = run_one(sc, 0, 1).summary
    kpa = run_one(sc, 1, 1).summary
    assert hpa["replicas_max"] > 2 and hpa["scale_ups"] >= 1
    assert kpa["replicas_max"] > 2 and kpa["panic_seconds"] > 0
    # both came back down to the minimum between bursts at some point
    assert hpa["scale_downs"] >= 1 and kpa["scale_downs"] >= 1
