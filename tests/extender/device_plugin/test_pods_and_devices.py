"""Reading pods and fake inventories, device health, and the coexistence check."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from extender.device_plugin.devices import (
    FakeNvml,
    InventoryFileError,
    checkpoint_holders,
    conflicts,
    parse_fake_inventory,
    plugin_devices,
)
from extender.device_plugin.matching import Device, GpuContainer
from extender.device_plugin.pods import PodError, pending_pod
from extender.node_agent import NoNvml, read_devices
from extender.objects import GpuDevice


def pod_json(
    *,
    indices: str | None = "1,2",
    containers: list[dict[str, Any]] | None = None,
    init: list[dict[str, Any]] | None = None,
    phase: str = "Pending",
    statuses: list[dict[str, Any]] | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    ann = {"gpuscale.io/gpu-indices": indices} if indices is not None else {}
    meta: dict[str, Any] = {
        "namespace": "ns",
        "name": "p",
        "uid": "u1",
        "creationTimestamp": "2026-01-02T03:04:05Z",
        "annotations": ann,
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-02T03:05:00Z"
    limits = {"nvidia.com/gpu": "2", "gpuscale.io/gpu-memory": "20Gi"}
    return {
        "metadata": meta,
        "spec": {
            "nodeName": "n1",
            "containers": containers or [{"name": "vllm", "resources": {"limits": limits}}],
            "initContainers": init or [],
        },
        "status": {"phase": phase, "containerStatuses": statuses or []},
    }


def test_a_pending_annotated_pod_is_read_with_its_memory_and_containers() -> None:
    p = pending_pod(pod_json())
    assert p is not None
    assert (p.namespace, p.name, p.uid, p.indices) == ("ns", "p", "u1", (1, 2))
    assert p.mib_per_gpu == 20480
    assert p.containers == (GpuContainer("vllm", 2),)
    assert p.created == 1767323045.0 and not p.started


def test_init_containers_come_first_and_sidecars_are_not_plain_init() -> None:
    one = {"limits": {"nvidia.com/gpu": "1"}}
    p = pending_pod(
        pod_json(
            indices="0,1",
            init=[
                {"name": "warm", "resources": one},
                {"name": "side", "resources": one, "restartPolicy": "Always"},
                {"name": "nogpu"},
            ],
            containers=[{"name": "app", "resources": one}],
        )
    )
    assert p is not None
    assert p.containers == (
        GpuContainer("warm", 1, init=True),
        GpuContainer("side", 1, init=False),
        GpuContainer("app", 1, init=False),
    )


@pytest.mark.parametrize(
    "obj",
    [
        pod_json(phase="Succeeded"),
        pod_json(deleting=True),
        pod_json(containers=[{"name": "cpu"}]),
    ],
)
def test_pods_that_are_not_the_plugins_business(obj: dict[str, Any]) -> None:
    assert pending_pod(obj) is None


@pytest.mark.parametrize("indices", [None, "x", ""])
def test_pods_without_a_readable_annotation_are_read_as_not_placed(indices: str | None) -> None:
    p = pending_pod(pod_json(indices=indices))
    assert p is not None and not p.placed and p.indices == ()
    assert p.containers == (GpuContainer("vllm", 2),)


def test_started_pods_are_marked() -> None:
    p = pending_pod(pod_json(statuses=[{"name": "vllm"}]))
    assert p is not None and p.started
    p = pending_pod(pod_json(phase="Running"))
    assert p is not None and p.started


def test_an_unreadable_pod_names_the_field() -> None:
    bad = pod_json(containers=[{"name": "x", "resources": {"limits": {"nvidia.com/gpu": "a"}}}])
    with pytest.raises(PodError, match=r"nvidia.com/gpu"):
        pending_pod(bad)


# -- fake inventory ------------------------------------------------------------------------


gpu_entry = st.fixed_dictionaries(
    {
        "totalMiB": st.integers(0, 2**20),
        "usedMiB": st.integers(0, 2**20),
        "model": st.text(max_size=10),
        "healthy": st.booleans(),
    }
)


@given(st.lists(gpu_entry, max_size=8))
def test_fake_inventory_round_trips_through_the_nvml_calls(entries: list[dict[str, Any]]) -> None:
    items = [{**e, "index": i, "uuid": f"GPU-{i}"} for i, e in enumerate(entries)]
    parsed = parse_fake_inventory(orjson.dumps(items))
    assert [g.index for g in parsed] == list(range(len(items)))
    assert [g.healthy for g in parsed] == [e["healthy"] for e in entries]


def test_fake_nvml_fails_lost_gpus_and_rereads_the_file(tmp_path: Any) -> None:
    f = tmp_path / "gpus.json"
    items = [
        {"index": 0, "uuid": "GPU-a", "model": "H100", "totalMiB": 81559},
        {"index": 1, "uuid": "GPU-b", "model": "H100", "totalMiB": 81559},
    ]
    f.write_bytes(orjson.dumps(items))
    nvml = FakeNvml(str(f))
    assert read_devices(nvml) == [
        GpuDevice(0, "GPU-a", "H100", 81559, 0),
        GpuDevice(1, "GPU-b", "H100", 81559, 0),
    ]
    first = plugin_devices(nvml, ())
    assert first == (Device(0, "GPU-a", 81559), Device(1, "GPU-b", 81559))
    # GPU 1 is lost: NVML still enumerates it, its queries fail.
    items[1]["healthy"] = False
    f.write_bytes(orjson.dumps(items))
    with pytest.raises(NoNvml):
        read_devices(nvml)
    lost = plugin_devices(nvml, first)
    assert lost == (Device(0, "GPU-a", 81559), Device(1, "GPU-b", 81559, healthy=False))
    assert plugin_devices(nvml, ()) == (Device(0, "GPU-a", 81559),)  # never read: left out
    # Gone from the enumeration altogether (driver reloaded without it): still listed, unhealthy.
    f.write_bytes(orjson.dumps(items[:1]))
    assert plugin_devices(nvml, first)[1] == Device(1, "GPU-b", 81559, healthy=False)
    items[1]["healthy"] = True
    f.write_bytes(orjson.dumps(items))
    assert plugin_devices(nvml, lost) == first


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not JSON"),
        ("{}", "expected a JSON list"),
        ("[1]", r"\[0\]: expected an object"),
        ('[{"index": -1, "uuid": "a", "totalMiB": 1}]', r"\[0\].index"),
        ('[{"index": 0, "uuid": "a::1", "totalMiB": 1}]', r"\[0\].uuid"),
        ('[{"index": 0, "uuid": "a", "totalMiB": true}]', r"\[0\].totalMiB"),
        ('[{"index": 0, "uuid": "a", "totalMiB": 1, "healthy": "yes"}]', "healthy a boolean"),
        (
            '[{"index": 0, "uuid": "a", "totalMiB": 1}, {"index": 0, "uuid": "b", "totalMiB": 1}]',
            "must not repeat",
        ),
    ],
)
def test_bad_fake_inventories_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(InventoryFileError, match=message):
        parse_fake_inventory(text)


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_fail_cleanly(data: bytes) -> None:
    try:
        parsed = parse_fake_inventory(data)
    except InventoryFileError as exc:
        assert str(exc)
    else:
        assert len({g.uuid for g in parsed}) == len(parsed)


# -- the kubelet's checkpoint ---------------------------------------------------------------


def checkpoint(registered: dict[str, list[str]], entries: list[Any] | None = None) -> Any:
    return {"Data": {"RegisteredDevices": registered, "PodDeviceEntries": entries or []}}


def test_our_own_earlier_registration_is_no_conflict() -> None:
    cp = checkpoint({"nvidia.com/gpu": ["GPU-a::0", "GPU-a::1"], "example.com/nic": ["n0"]})
    assert conflicts(cp, "nvidia.com/gpu", ["GPU-a"]) == []
    assert conflicts({}, "nvidia.com/gpu", ["GPU-a"]) == []


def test_nvidias_plugin_on_the_same_resource_or_the_same_gpus_is_a_conflict() -> None:
    cp = checkpoint({"nvidia.com/gpu": ["GPU-a"]})
    (problem,) = conflicts(cp, "nvidia.com/gpu", ["GPU-a"])
    assert "another device plugin" in problem and "GPU-a" in problem
    cp = checkpoint({"nvidia.com/gpu.shared": ["GPU-a::0"], "nvidia.com/gpu": ["GPU-a::0"]})
    (problem,) = conflicts(cp, "nvidia.com/gpu", ["GPU-a"])
    assert "nvidia.com/gpu.shared" in problem


def test_checkpoint_holders_are_the_containers_with_devices_by_pod_uid() -> None:
    entry = {"PodUID": "u1", "ContainerName": "c0", "ResourceName": "nvidia.com/gpu"}
    cp = checkpoint(
        {},
        [
            {**entry, "DeviceIDs": {"-1": ["GPU-a::0"]}},
            {**entry, "ContainerName": "c1", "DeviceIDs": {"-1": ["GPU-a::1"]}},
            {**entry, "ResourceName": "other", "ContainerName": "c2", "DeviceIDs": {"0": ["x"]}},
            {**entry, "PodUID": "u2", "DeviceIDs": {}},
            "junk",
        ],
    )
    assert checkpoint_holders(cp, "nvidia.com/gpu") == {"u1": frozenset({"c0", "c1"})}
