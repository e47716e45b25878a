"""Quantities and pod GPU need."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extender.need import ContainerResources, NeedError, pod_need, pod_total
from extender.objects import GpuNeed
from extender.quantity import QuantityError, gpu_memory_mib, milli_cpu, parse_quantity


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", Fraction(1)),
        ("100m", Fraction(1, 10)),
        ("1.5", Fraction(3, 2)),
        (".5", Fraction(1, 2)),
        ("2Ki", Fraction(2048)),
        ("1Gi", Fraction(2**30)),
        ("1k", Fraction(1000)),
        ("1M", Fraction(10**6)),
        ("1e3", Fraction(1000)),
        ("1E-3", Fraction(1, 1000)),
        ("-1", Fraction(-1)),
    ],
)
def test_parse_quantity(text: str, value: Fraction) -> None:
    assert parse_quantity(text)[0] == value


@pytest.mark.parametrize("text", ["", "Gi", "1 Gi", "1gi", "1KiB", "0x10", "1e", "--1", "1e999"])
def test_bad_quantities(text: str) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(text)


@pytest.mark.parametrize(
    ("text", "mib"),
    [
        ("40960", 40960),
        (40960, 40960),
        ("40Gi", 40960),
        ("512Mi", 512),
        # kube-apiserver writes 50000 back as "50k": decimal suffixes are a count of MiB.
        ("50k", 50000),
        ("2M", 2_000_000),
        ("4e4", 40000),
        ("1Ki", 1),
    ],
)
def test_gpu_memory_unit_rule(text: object, mib: int) -> None:
    assert gpu_memory_mib(text) == mib


def test_gpu_memory_survives_the_api_servers_canonical_form() -> None:
    # Found against the real API server: "50000" came back as "50k" and was read as 50,000
    # bytes (1 MiB), so a 50 GB pod was placed into 40 GB. Every MiB count must read back as
    # itself in the form kube-apiserver gives it (DecimalSI: k, M, G… when divisible).
    for mib in (1, 999, 1000, 20000, 40960, 50000, 81920, 2_000_000, 3_000_000_000):
        digits = str(mib)
        zeros = len(digits) - len(digits.rstrip("0"))
        exp = min(zeros // 3, 6)
        canonical = digits[: len(digits) - 3 * exp] + ("", "k", "M", "G", "T", "P", "E")[exp]
        assert gpu_memory_mib(canonical) == mib, canonical


@pytest.mark.parametrize("text", ["100m", "-5", "1u", True, 1.5])
def test_gpu_memory_rejects(text: object) -> None:
    with pytest.raises(QuantityError):
        gpu_memory_mib(text)


def test_cpu_rounds_up() -> None:
    assert milli_cpu("0.0001") == 1


def c(
    requests: dict[str, object] | None = None,
    limits: dict[str, object] | None = None,
    restartable: bool = False,
) -> ContainerResources:
    return ContainerResources("c", requests or {}, limits or {}, restartable)


def test_memory_without_count_means_one_gpu() -> None:
    need = pod_need([c(limits={"gpuscale.io/gpu-memory": "20000"})])
    assert need.gpu == GpuNeed(1, 20000)


def test_count_without_memory_means_whole_gpus() -> None:
    assert pod_need([c(limits={"nvidia.com/gpu": "2"})]).gpu == GpuNeed(2, None)


def test_no_gpu() -> None:
    assert pod_need([c(requests={"cpu": "1"})]).gpu is None


def test_summed_over_containers() -> None:
    need = pod_need(
        [
            c(limits={"nvidia.com/gpu": "1", "gpuscale.io/gpu-memory": "10Gi"}),
            c(requests={"gpuscale.io/gpu-memory": "2048"}),
        ]
    )
    assert need.gpu == GpuNeed(1, 12288)


def test_requests_win_over_limits() -> None:
    assert pod_total("cpu", [c(requests={"cpu": "1"}, limits={"cpu": "4"})]) == 1000


def test_annotation_when_no_container_declares_memory() -> None:
    need = pod_need(
        [c(limits={"nvidia.com/gpu": "2"})], annotations={"gpuscale.io/gpu-memory": "30Gi"}
    )
    assert need.gpu == GpuNeed(2, 30720)
    declared = pod_need(
        [c(limits={"gpuscale.io/gpu-memory": "100"})], annotations={"gpuscale.io/gpu-memory": "999"}
    )
    assert declared.gpu == GpuNeed(1, 100)


def test_init_containers_max_against_sum() -> None:
    """Upstream PodRequests: max(sum of app containers, largest init container)."""
    apps = [c(requests={"cpu": "1"}), c(requests={"cpu": "1"})]
    assert pod_total("cpu", apps, [c(requests={"cpu": "3"})]) == 3000
    assert pod_total("cpu", apps, [c(requests={"cpu": "1500m"})]) == 2000


def test_sidecars_add_to_both_sides() -> None:
    """Restartable init containers run alongside later init containers and the app."""
    apps = [c(requests={"cpu": "1"})]
    inits = [c(requests={"cpu": "500m"}, restartable=True), c(requests={"cpu": "2"})]
    # app side: 1 + 0.5; init side: 2 + 0.5 (sidecar already running)
    assert pod_total("cpu", apps, inits) == 2500


def test_overhead_is_added() -> None:
    assert (
        pod_total("memory", [c(requests={"memory": "1Gi"})], [], {"memory": "1Mi"}) == 2**30 + 2**20
    )


def test_bad_quantity_names_the_field() -> None:
    with pytest.raises(NeedError, match=r"spec.containers\[1\].resources.limits\[nvidia.com/gpu\]"):
        pod_need([c(), c(limits={"nvidia.com/gpu": "lots"})])


@given(st.lists(st.integers(0, 10_000), max_size=4), st.lists(st.integers(0, 10_000), max_size=4))
def test_init_rule_property(apps: list[int], inits: list[int]) -> None:
    total = pod_total(
        "gpuscale.io/gpu-memory",
        [c(requests={"gpuscale.io/gpu-memory": v}) for v in apps],
        [c(requests={"gpuscale.io/gpu-memory": v}) for v in inits],
    )
    assert total == max(sum(apps), max(inits, default=0))
