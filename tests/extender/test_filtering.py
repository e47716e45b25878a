"""filter_nodes / prioritize / choose_devices over a ClusterSnapshot; Kubernetes JSON decoding."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extender.decode import BadRequest, node_from_json, pod_from_json
from extender.filtering import ClusterSnapshot, choose_devices, filter_nodes, prioritize
from extender.inventory import gpus_annotation
from extender.objects import GpuDevice, GpuNeed

STAMP = "2027-01-15T08:00:00Z"


def node_json(
    name: str,
    used: list[int],
    *,
    labels: dict[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
    total: int = 81920,
) -> dict[str, Any]:
    devices = [GpuDevice(i, f"GPU-{name}-{i}", "A100", total, u) for i, u in enumerate(used)]
    return {
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name, **(labels or {})},
            "annotations": {"gpuscale.io/gpus": gpus_annotation(devices, STAMP)},
        },
        "spec": {"taints": taints or []},
        "status": {"allocatable": {"cpu": "32", "memory": "256Gi"}},
    }


def pod_json(
    mib: int | None = None,
    count: int | None = None,
    *,
    tolerations: list[dict[str, str]] | None = None,
    affinity: dict[str, Any] | None = None,
    node_selector: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    cpu: str = "1",
) -> dict[str, Any]:
    limits: dict[str, str] = {}
    if mib is not None:
        limits["gpuscale.io/gpu-memory"] = str(mib)
    if count is not None:
        limits["nvidia.com/gpu"] = str(count)
    spec: dict[str, Any] = {
        "containers": [{"name": "m", "resources": {"limits": limits, "requests": {"cpu": cpu}}}],
        "tolerations": tolerations or [],
    }
    if affinity:
        spec["affinity"] = affinity
    if node_selector:
        spec["nodeSelector"] = node_selector
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "annotations": annotations or {}},
        "spec": spec,
    }


NOW = datetime(2027, 1, 15, 8, 0, 10, tzinfo=UTC).timestamp()


def cluster() -> ClusterSnapshot:
    return ClusterSnapshot(
        [
            node_from_json(node_json("tight", [60000, 81000])),
            node_from_json(node_json("roomy", [0, 0])),
            node_from_json(node_json("full", [80000, 80000])),
            node_from_json(
                node_json(
                    "tainted",
                    [0, 0],
                    taints=[{"key": "gpu", "value": "dedicated", "effect": "NoSchedule"}],
                )
            ),
            node_from_json(node_json("h100", [0, 0], labels={"pool": "h100"})),
        ]
    )


def test_filter_buckets_and_reasons() -> None:
    view = cluster()
    names = ["tight", "roomy", "full", "tainted", "h100", "ghost"]
    result = filter_nodes(pod_from_json(pod_json(20000)), names, view, NOW)
    assert result.passed == ("tight", "roomy", "h100")
    assert result.failed == {
        "full": "insufficient GPU memory: need 1×20000 MiB, best device has 1920 MiB free"
    }
    assert result.unresolvable["tainted"] == "node(s) had untolerated taint {gpu: dedicated}"
    assert "ghost" in result.unresolvable
    assert set(result.passed) | set(result.failed) | set(result.unresolvable) == set(names)


def test_filter_affinity_and_selector() -> None:
    view = cluster()
    names = ["tight", "roomy", "h100"]
    by_selector = filter_nodes(
        pod_from_json(pod_json(1, node_selector={"pool": "h100"})), names, view, NOW
    )
    assert by_selector.passed == ("h100",)
    assert by_selector.unresolvable["roomy"] == "node(s) didn't match Pod's node affinity/selector"
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "pool", "operator": "DoesNotExist"}]}
                ]
            }
        }
    }
    assert filter_nodes(pod_from_json(pod_json(1, affinity=affinity)), names, view, NOW).passed == (
        "tight",
        "roomy",
    )


def test_filter_with_toleration_and_cpu() -> None:
    view = cluster()
    tol = [{"key": "gpu", "operator": "Equal", "value": "dedicated", "effect": "NoSchedule"}]
    assert filter_nodes(
        pod_from_json(pod_json(1, tolerations=tol)), ["tainted"], view, NOW
    ).passed == ("tainted",)
    big = filter_nodes(pod_from_json(pod_json(1, cpu="64")), ["roomy"], view, NOW)
    assert big.failed == {"roomy": "Insufficient cpu"}


def test_binpack_and_spread_rank_opposite() -> None:
    view = cluster()
    pod = pod_from_json(pod_json(20000))
    binpack = dict(prioritize(pod, ["tight", "roomy"], view, NOW))
    assert binpack["tight"] > binpack["roomy"]
    spread = dict(prioritize(pod, ["tight", "roomy"], view, NOW, strategy="spread"))
    assert spread["tight"] < spread["roomy"]
    per_pod = pod_from_json(pod_json(20000, annotations={"gpuscale.io/scoring": "spread"}))
    assert dict(prioritize(per_pod, ["tight", "roomy"], view, NOW)) == spread
    assert all(0 <= s <= 10 for s in binpack.values())


def test_preferred_affinity_counts() -> None:
    view = cluster()
    affinity = {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 50,
                    "preference": {
                        "matchExpressions": [{"key": "pool", "operator": "In", "values": ["h100"]}]
                    },
                }
            ]
        }
    }
    scores = dict(
        prioritize(pod_from_json(pod_json(20000, affinity=affinity)), ["roomy", "h100"], view, NOW)
    )
    assert scores["h100"] > scores["roomy"]


def test_choose_devices() -> None:
    view = cluster()
    assert choose_devices(pod_from_json(pod_json(20000)), "tight", view, NOW) == (0,)
    assert choose_devices(pod_from_json(pod_json(20000, 2)), "roomy", view, NOW) == (0, 1)
    assert isinstance(choose_devices(pod_from_json(pod_json(20000)), "full", view, NOW), str)
    assert choose_devices(pod_from_json(pod_json()), "full", view, NOW) == ()


def test_decode_pod() -> None:
    pod = pod_from_json(pod_json(20000, 2, annotations={"gpuscale.io/gpu-indices": "0, 3"}))
    assert pod.gpu == GpuNeed(2, 20000)
    assert pod.gpu_indices == (0, 3)
    assert pod.key == "ns/p"


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda p: p["spec"].update(tolerations="x"), r"Pod\.spec\.tolerations: expected a list"),
        (
            lambda p: p["spec"].update(tolerations=[{"key": 1}]),
            r"tolerations\[0\].key: expected a string",
        ),
        (lambda p: p["metadata"].update(annotations={"a": 1}), r"annotations\[a\]"),
        (
            lambda p: p["spec"]["containers"][0]["resources"]["limits"].update(
                {"nvidia.com/gpu": "x"}
            ),
            "nvidia.com/gpu",
        ),
        (lambda p: p.update(spec=[]), "Pod.spec: expected an object"),
        (
            lambda p: p["spec"].update(
                affinity={
                    "nodeAffinity": {
                        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": "5"}]
                    }
                }
            ),
            "weight: expected an integer",
        ),
    ],
)
def test_decode_pod_errors(mutate: Any, match: str) -> None:
    p = pod_json(1000)
    mutate(p)
    with pytest.raises(BadRequest, match=match):
        pod_from_json(p)


def test_decode_node_errors_and_bad_annotation() -> None:
    with pytest.raises(BadRequest, match="labels"):
        node_from_json({"metadata": {"name": "n", "labels": {"a": 1}}})
    with pytest.raises(BadRequest, match=r"allocatable\.cpu"):
        node_from_json({"metadata": {"name": "n"}, "status": {"allocatable": {"cpu": "lots"}}})
    n = node_from_json({"metadata": {"name": "n", "annotations": {"gpuscale.io/gpus": "nope"}}})
    assert n.gpu_report is None and n.gpu_report_error is not None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


@given(json_values)
def test_decoders_only_raise_bad_request(value: object) -> None:
    for decode in (pod_from_json, node_from_json):
        with contextlib.suppress(BadRequest):
            decode(value)


@given(st.dictionaries(st.sampled_from(["metadata", "spec", "status"]), json_values, max_size=3))
def test_decoders_only_raise_bad_request_on_near_misses(value: dict[str, Any]) -> None:
    for decode in (pod_from_json, node_from_json):
        with contextlib.suppress(BadRequest):
            decode(value)
