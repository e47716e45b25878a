"""GPU inventory from the node annotation, DCGM and GFD; staleness; accounting; reservations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from extender.fit import NodeGpus
from extender.inventory import (
    STALE_REASON,
    InventoryConfig,
    InventoryError,
    gpus_annotation,
    node_gpus,
    parse_gpus_annotation,
    reports_from_dcgm,
)
from extender.objects import GfdInfo, GpuDevice, GpuNeed, GpuReport, NodeInfo, PodRequest
from extender.reservations import (
    EMPTY,
    Reservation,
    expire,
    measured,
    on_node,
    release,
    reserve,
    settle,
)

T0 = 1_800_000_000.0


def report(*used: int, time: float = T0, total: int = 81920) -> GpuReport:
    return GpuReport(
        tuple(GpuDevice(i, f"GPU-{i}", "A100", total, u) for i, u in enumerate(used)),
        time,
        "annotation",
    )


def gpus_of(result: NodeGpus | str) -> NodeGpus:
    assert isinstance(result, NodeGpus), result
    return result


def test_annotation_round_trip() -> None:
    devices = [GpuDevice(1, "GPU-b", "H100", 81559, 1024), GpuDevice(0, "GPU-a", "H100", 81559, 0)]
    parsed = parse_gpus_annotation(gpus_annotation(devices, "2027-01-15T08:00:00Z"))
    assert [d.index for d in parsed.devices] == [0, 1]
    assert parsed.devices[1] == devices[0]
    assert parsed.time == datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{", "not JSON"),
        ("{}", "expected a JSON list"),
        ("[1]", r"\[0\]: expected an object"),
        ('[{"index": 0, "totalMiB": -1, "usedMiB": 0, "time": 0}]', "totalMiB"),
        ('[{"index": 0, "totalMiB": 1, "usedMiB": 0}]', "time: missing"),
        ('[{"index": 0, "totalMiB": 1, "usedMiB": 0, "time": "yesterday"}]', "RFC 3339"),
        ('[{"index": 0, "totalMiB": 1, "usedMiB": 0, "time": "2026-01-01T00:00:00"}]', "time zone"),
        (
            '[{"index": 0, "totalMiB": 1, "usedMiB": 0, "time": 1},'
            ' {"index": 0, "totalMiB": 1, "usedMiB": 0, "time": 1}]',
            "repeat",
        ),
    ],
)
def test_bad_annotations(text: str, match: str) -> None:
    with pytest.raises(InventoryError, match=match):
        parse_gpus_annotation(text)


def test_fresh_measurement() -> None:
    n = NodeInfo("n", gpu_report=report(1000, 60000))
    g = gpus_of(node_gpus(n, config=InventoryConfig(), now=T0 + 10))
    assert [d.free_mib for d in g.devices] == [80920, 21920]
    assert [d.idle for d in g.devices] == [False, False]
    idle = gpus_of(
        node_gpus(NodeInfo("n", gpu_report=report(100)), config=InventoryConfig(), now=T0)
    )
    assert idle.devices[0].idle


def test_stale_fails_unless_accounting() -> None:
    n = NodeInfo("n", gpu_report=report(1000, 60000), gfd=GfdInfo(2, 81920))
    cfg = InventoryConfig(stale_after=60)
    assert node_gpus(n, config=cfg, now=T0 + 61) == STALE_REASON
    acc = gpus_of(
        node_gpus(n, config=InventoryConfig(stale_after=60, stale_mode="accounting"), now=T0 + 61)
    )
    assert acc.source == "accounting"
    assert [d.free_mib for d in acc.devices] == [81920, 81920]


def test_gfd_with_accounting() -> None:
    n = NodeInfo("n", gfd=GfdInfo(2, 40960))
    pods = [
        PodRequest("ns", "a", gpu=GpuNeed(1, 10000), node_name="n", gpu_indices=(1,)),
        PodRequest("ns", "b", gpu=GpuNeed(1, 5000), node_name="n"),  # no indices: placed best-fit
        PodRequest("ns", "c", gpu=GpuNeed(1, 40960), node_name="n", phase="Succeeded"),
    ]
    g = gpus_of(node_gpus(n, config=InventoryConfig(), now=T0, pods=pods))
    assert g.source == "gfd"
    assert [d.free_mib for d in g.devices] == [40960, 25960]
    assert [d.idle for d in g.devices] == [True, False]


def test_running_pods_and_measurement_take_the_max() -> None:
    """A running pod's memory is (or soon will be) in the measurement: the larger of the two."""
    n = NodeInfo("n", gpu_report=report(30000))
    pod = PodRequest(
        "ns", "a", gpu=GpuNeed(1, 50000), node_name="n", gpu_indices=(0,), phase="Running"
    )
    g = gpus_of(node_gpus(n, config=InventoryConfig(), now=T0, pods=[pod]))
    assert g.devices[0].free_mib == 81920 - 50000


def test_bound_pods_not_running_count_on_top_of_the_measurement() -> None:
    """Found by the bind interleavings test (#24): a pod bound but not started has nothing in
    the measurement, so taking the max booked its memory and the 30000 MiB the device already
    holds twice (free 31920 instead of 1920). The same pod's reservation, a moment earlier,
    counted on top; the watch showing it bound must not free memory."""
    n = NodeInfo("n", gpu_report=report(30000))
    for phase in ("", "Pending"):
        pod = PodRequest(
            "ns", "a", gpu=GpuNeed(1, 50000), node_name="n", gpu_indices=(0,), phase=phase
        )
        g = gpus_of(node_gpus(n, config=InventoryConfig(), now=T0, pods=[pod]))
        assert g.devices[0].free_mib == 81920 - 30000 - 50000
    reserved = Reservation("ns/a", "u", "n", (0,), 50000, T0, T0 + 300, (30000,))
    g = gpus_of(node_gpus(n, config=InventoryConfig(), now=T0, reservations=[reserved]))
    assert g.devices[0].free_mib == 81920 - 30000 - 50000


def test_reservations_subtract_and_hold_devices() -> None:
    n = NodeInfo("n", gpu_report=report(0, 0))
    r = Reservation("ns/p", "u", "n", (1,), 30000, T0, T0 + 300, (0,))
    whole = Reservation("ns/w", "u", "n", (0,), None, T0, T0 + 300, (0,))
    g = gpus_of(node_gpus(n, config=InventoryConfig(), now=T0, reservations=[r, whole]))
    assert [d.free_mib for d in g.devices] == [0, 51920]
    assert [d.idle for d in g.devices] == [False, False]


def test_no_inventory_and_invalid_annotation() -> None:
    assert "no GPU inventory" in str(node_gpus(NodeInfo("n"), config=InventoryConfig(), now=T0))
    bad = NodeInfo("n", gpu_report_error="gpuscale.io/gpus: not JSON")
    assert str(node_gpus(bad, config=InventoryConfig(), now=T0)).startswith("GPU inventory invalid")


def test_source_order() -> None:
    n = NodeInfo("n", gpu_report=report(1000))
    dcgm = GpuReport((GpuDevice(0, "", "", 81920, 5000),), T0, "dcgm")
    both = InventoryConfig(sources=("dcgm", "annotation"))
    assert gpus_of(node_gpus(n, config=both, now=T0, dcgm=dcgm)).source == "dcgm"
    stale_dcgm = GpuReport(dcgm.devices, T0 - 1000, "dcgm")
    assert gpus_of(node_gpus(n, config=both, now=T0, dcgm=stale_dcgm)).source == "annotation"
    with pytest.raises(ValueError, match="inventory sources"):
        InventoryConfig(sources=("nvml",))


def test_dcgm_series() -> None:
    def s(metric: str, node: str, gpu: str, v: str) -> dict[str, Any]:
        return {
            "metric": {"__name__": metric, "Hostname": node, "gpu": gpu, "UUID": f"U{gpu}"},
            "value": [T0, v],
        }

    free = [
        s("F", "n1", "0", "1000"),
        s("F", "n1", "1", "2000"),
        s("F", "n2", "0", "5"),
        {"metric": {}, "value": [0, "1"]},
    ]
    used = [s("U", "n1", "0", "79000"), s("U", "n1", "1", "78000"), s("U", "n2", "0", "NaN")]
    reports = reports_from_dcgm(free, used)
    assert set(reports) == {"n1"}
    assert [(d.index, d.total_mib, d.used_mib) for d in reports["n1"].devices] == [
        (0, 80000, 79000),
        (1, 80000, 78000),
    ]


def test_reservation_book() -> None:
    r1 = Reservation("ns/a", "u1", "n1", (0,), 1000, T0, T0 + 300, (500,))
    r2 = Reservation("ns/b", "u2", "n2", (0,), 1000, T0, T0 + 10, None)
    book = reserve(reserve(EMPTY, r1), r2)
    assert on_node(book, "n1") == (r1,)
    assert set(expire(book, T0 + 11)) == {"ns/a"}
    assert set(release(book, "ns/a")) == {"ns/b"}
    assert set(settle(book, node="n1", pods_on_node=["ns/a"])) == {"ns/b"}
    # measured: a later report shows the memory in use on the device
    later = report(1500, time=T0 + 5)
    assert measured(r1, later)
    assert not measured(r1, report(1400, time=T0 + 5))
    assert not measured(r1, report(1500, time=T0 - 1))
    assert set(settle(book, node="n1", report=later)) == {"ns/b"}
