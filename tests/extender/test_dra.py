"""DRA decoding, pools, claim accounting and claim needs (extender/dra.py), and the inventory
with ``--inventory dra``."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.dra import (
    Check,
    DraError,
    DraNeed,
    DraNode,
    allocator_choice,
    claim_from_json,
    claim_need,
    device_class_from_json,
    device_indices,
    device_misfit,
    matches,
    parse_selector,
    pool_devices,
    slice_from_json,
    taken_by_claims,
    template_from_json,
)
from extender.inventory import InventoryConfig, node_gpus
from extender.objects import GpuDevice, GpuNeed, GpuReport, NodeInfo, PodRequest
from tests.support.dra_objects import (
    DRIVER,
    allocated_claim,
    claim_template,
    device_class,
    gpu_device,
    resource_slice,
)

T0 = 1_800_000_000.0
A100 = "NVIDIA A100-SXM4-80GB"


def two_gpus(node: str = "n1", *, shared: bool = True, **kw: Any) -> dict[str, Any]:
    return resource_slice(
        node,
        [
            gpu_device(i, uuid=f"GPU-{node}-{i}", product=A100, memory_mib=81920, shared=shared)
            for i in range(2)
        ],
        **kw,
    )


# ---- decoding ------------------------------------------------------------------------------


def test_slice_decodes_nvidia_devices() -> None:
    s = slice_from_json(two_gpus())
    assert (s.driver, s.pool, s.node, s.generation, s.slice_count) == (DRIVER, "n1", "n1", 1, 1)
    d = s.devices[1]
    assert (d.name, d.uuid, d.model, d.minor, d.memory_mib, d.shared) == (
        "gpu-1",
        "GPU-n1-1",
        A100,
        1,
        81920,
        True,
    )
    assert d.attributes[f"{DRIVER}/cudaComputeCapability"] == "8.0.0"


def test_memory_rounding_bytes_down_requests_up() -> None:
    raw = two_gpus()
    raw["spec"]["devices"][0]["capacity"]["memory"]["value"] = str(80 * 2**30 + 5)
    assert slice_from_json(raw).devices[0].memory_mib == 80 * 1024
    c = claim_from_json(allocated_claim("ns", "c", "n1", [("gpu-0", "1025")], memory="1025"))
    assert c.results[0].consumed_mib == 1
    assert c.spec.requests[0].memory_mib == 1


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s["spec"].pop("driver"), "spec.driver"),
        (lambda s: s["spec"]["pool"].update(generation=-1), "spec.pool.generation"),
        (lambda s: s["spec"]["pool"].update(resourceSliceCount=0), "resourceSliceCount"),
        (lambda s: s["spec"]["devices"][0].update(name=3), "devices[0].name"),
        (
            lambda s: s["spec"]["devices"][0]["capacity"]["memory"].update(value="lots"),
            "devices[0].capacity[memory].value",
        ),
        (
            lambda s: s["spec"]["devices"][1]["attributes"].update(uuid={"int": "x"}),
            "devices[1].attributes[uuid].int",
        ),
        (lambda s: s["spec"]["devices"][0].update(allowMultipleAllocations="yes"), "allowMulti"),
    ],
)
def test_bad_slice_names_the_field(mutate: Any, message: str) -> None:
    raw = two_gpus()
    mutate(raw)
    with pytest.raises(DraError, match=message.replace("[", r"\[").replace("]", r"\]")):
        slice_from_json(raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


def _mutations(base: dict[str, Any]) -> st.SearchStrategy[Any]:
    """``base`` with one value somewhere replaced by arbitrary JSON."""

    def paths(v: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        out = [prefix]
        if isinstance(v, dict):
            for k, x in v.items():
                out += paths(x, (*prefix, k))
        elif isinstance(v, list):
            for i, x in enumerate(v):
                out += paths(x, (*prefix, i))
        return out

    import copy

    def put(path: tuple[Any, ...], value: Any) -> Any:
        if not path:
            return value
        doc = copy.deepcopy(base)
        cur = doc
        for k in path[:-1]:
            cur = cur[k]
        cur[path[-1]] = value
        return doc

    return st.builds(put, st.sampled_from(paths(base)), json_values)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        _mutations(two_gpus()).map(lambda d: (slice_from_json, d)),
        _mutations(device_class()).map(lambda d: (device_class_from_json, d)),
        _mutations(
            claim_template("ns", "t", memory="10Gi", selectors=["device.driver == 'x'"])
        ).map(lambda d: (template_from_json, d)),
        _mutations(allocated_claim("ns", "c", "n1", [("gpu-0", "10Gi")], reserved_for=("p",))).map(
            lambda d: (claim_from_json, d)
        ),
    )
)
def test_decoders_reject_any_bad_value_with_a_clear_error(case: Any) -> None:
    decode, doc = case
    try:
        decode(doc)
    except DraError as exc:
        assert str(exc)  # names a field; anything else (TypeError, KeyError...) fails the test


# ---- pools ---------------------------------------------------------------------------------


def test_only_the_newest_complete_generation_counts() -> None:
    old = slice_from_json(two_gpus(generation=1))
    half = slice_from_json(two_gpus(generation=2, count=2, part=0))
    pools = pool_devices([old, half])
    assert pools.by_node == {}  # generation 2 replaces 1, but only 1 of its 2 slices is here
    assert pools.incomplete == {(DRIVER, "n1"): "1 of 2 slices of generation 2"}
    other = resource_slice(
        "n1",
        [gpu_device(2, uuid="GPU-n1-2", product=A100, memory_mib=81920)],
        generation=2,
        count=2,
        part=1,
    )
    pools = pool_devices([old, half, slice_from_json(other)])
    assert [d.name for d in pools.by_node["n1"]] == ["gpu-0", "gpu-1", "gpu-2"]
    assert pools.incomplete == {}
    assert [d.name for d in pool_devices([old]).by_node["n1"]] == ["gpu-0", "gpu-1"]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 3), st.integers(0, 2)), max_size=8))
def test_pool_counts_only_when_its_newest_generation_is_complete(
    parts: list[tuple[int, int, int]],
) -> None:
    slices = [
        slice_from_json(
            resource_slice(
                "n1",
                [gpu_device(10 * g + p, uuid=f"u{g}{p}", product=A100, memory_mib=1024)],
                generation=g,
                count=c,
                part=p,
            )
        )
        for g, c, p in parts
    ]
    pools = pool_devices(slices)
    if not slices:
        assert pools.by_node == {}
        return
    newest = max(g for g, _, _ in parts)
    group = [s for s in slices if s.generation == newest]
    complete = len(group) >= max(s.slice_count for s in group)
    got = pools.by_node.get("n1", ())
    assert bool(got) == complete
    assert all(d.minor is not None and d.minor // 10 == newest for d in got)


# ---- selectors and needs -------------------------------------------------------------------


def test_parse_selector_equalities_only() -> None:
    assert parse_selector("device.driver == 'gpu.nvidia.com'") == (Check("", "gpu.nvidia.com"),)
    assert parse_selector(
        'device.attributes["gpu.nvidia.com"].productName == "A100" && '
        "device.attributes['gpu.nvidia.com']['minor'] == 3"
    ) == (Check("gpu.nvidia.com/productName", "A100"), Check("gpu.nvidia.com/minor", 3))
    for other in (
        "device.capacity['gpu.nvidia.com'].memory.compareTo(quantity('40Gi')) >= 0",
        "device.attributes['gpu.nvidia.com'].productName != 'A100'",
        "device.driver == 'a' || device.driver == 'b'",
        "true",
    ):
        assert parse_selector(other) is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_parse_selector_never_crashes(text: str) -> None:
    parse_selector(text)


def test_claim_need_whole_share_and_mixed() -> None:
    classes = {DRIVER: device_class_from_json(device_class())}
    whole = template_from_json(claim_template("ns", "w", count=2)).spec
    share = template_from_json(claim_template("ns", "s", memory="20Gi")).spec
    assert claim_need([whole], classes).gpu == GpuNeed(2, None)  # type: ignore[union-attr]
    assert claim_need([share, share], classes).gpu == GpuNeed(2, 20480)  # type: ignore[union-attr]
    assert claim_need([whole, share], classes).gpu == GpuNeed(3, None)  # type: ignore[union-attr]
    assert claim_need([whole], {}) is None  # class unknown: not a GPU need we can state


def test_selectors_filter_devices_and_other_cel_is_left_to_the_plugin() -> None:
    classes = {DRIVER: device_class_from_json(device_class())}
    spec = template_from_json(
        claim_template(
            "ns",
            "t",
            memory="10Gi",
            selectors=[
                f"device.attributes['{DRIVER}'].uuid == 'GPU-n1-1'",
                "device.attributes['x'].y.startsWith('z')",
            ],
        )
    ).spec
    need = claim_need([spec], classes)
    assert need is not None and need.left_to_plugin == ("device.attributes['x'].y.startsWith('z')",)
    devices = slice_from_json(two_gpus()).devices
    assert [matches(need.checks[0], d) for d in devices] == [False, True]
    free = {d.key: (81920, True) for d in devices}
    assert device_misfit(need, devices, free) is None
    free[devices[1].key] = (5000, False)
    reason = device_misfit(need, devices, free)
    assert reason is not None and "GPU-n1-1" in reason and "left to the DRA plugin" in reason


# ---- accounting ----------------------------------------------------------------------------


def _node(name: str = "n1", report: GpuReport | None = None) -> NodeInfo:
    return NodeInfo(name, gpu_report=report)


def test_dra_alone_is_a_static_source_with_claims_as_accounting() -> None:
    devices = slice_from_json(two_gpus()).devices
    claims = [
        claim_from_json(allocated_claim("ns", "a", "n1", [("gpu-0", "30Gi")], reserved_for=("p",))),
        claim_from_json(allocated_claim("ns", "b", "n1", [("gpu-1", None)])),
    ]
    dra = DraNode(devices, taken_by_claims(devices, claims, running=["ns/p"]))
    gpus = node_gpus(_node(), config=InventoryConfig(("dra",)), now=T0, dra=dra)
    assert not isinstance(gpus, str)
    assert gpus.source == "dra"
    assert [(d.index, d.free_mib, d.idle) for d in gpus.devices] == [
        (0, 81920 - 30720, False),
        (1, 0, False),
    ]
    assert node_gpus(_node(), config=InventoryConfig(("gfd",)), now=T0, dra=dra) == (
        "node(s) had no GPU inventory"
    )


def test_mixed_node_matched_by_uuid_never_counts_a_device_free_twice() -> None:
    """NVML measures three GPUs: 0 belongs to the device plugin, 1 and 2 are the DRA driver's
    gpu-1 and gpu-0. Claims count on the DRA devices (by uuid, whatever NVML's index order);
    a device-plugin pod without recorded indices lands only on a device-plugin GPU, though
    best fit alone would have chosen GPU 1 (a little less free)."""
    measured = GpuReport(
        (
            GpuDevice(0, "GPU-dp-a", A100, 81920, 0),
            GpuDevice(1, "GPU-n1-1", A100, 81920, 1000),
            GpuDevice(2, "GPU-n1-0", A100, 81920, 0),
        ),
        T0,
        "annotation",
    )
    devices = slice_from_json(two_gpus()).devices
    claims = [claim_from_json(allocated_claim("ns", "a", "n1", [("gpu-0", None)]))]
    dra = DraNode(devices, taken_by_claims(devices, claims, running=()))
    assert device_indices(devices, measured.devices) == {
        devices[0].key: 2,
        devices[1].key: 1,
    }
    pod = PodRequest("ns", "dp", gpu=GpuNeed(1, None), node_name="n1", phase="Running")
    gpus = node_gpus(
        _node(report=measured),
        config=InventoryConfig(("annotation", "dra")),
        now=T0,
        pods=[pod],
        dra=dra,
    )
    assert not isinstance(gpus, str)
    # GPU 2 (DRA gpu-0) is held by the claim; the whole-GPU pod is on GPU 0, the device
    # plugin's; GPU 1 (DRA gpu-1) stays free for claims.
    assert [(d.index, d.free_mib, d.idle) for d in gpus.devices] == [
        (0, 0, False),
        (1, 80920, False),
        (2, 0, False),
    ]


def test_measurement_wins_when_it_sees_more_use_than_claims() -> None:
    measured = GpuReport((GpuDevice(0, "GPU-n1-0", A100, 81000, 50000),), T0, "annotation")
    devices = slice_from_json(two_gpus()).devices[:1]
    claims = [
        claim_from_json(allocated_claim("ns", "a", "n1", [("gpu-0", "10Gi")], reserved_for=("p",)))
    ]
    dra = DraNode(devices, taken_by_claims(devices, claims, running=["ns/p"]))
    gpus = node_gpus(
        _node(report=measured), config=InventoryConfig(("annotation", "dra")), now=T0, dra=dra
    )
    assert not isinstance(gpus, str)
    assert gpus.devices[0].total_mib == 81000  # NVML's total, not the slice's 81920
    assert gpus.devices[0].free_mib == 81000 - 50000  # max(measured, claims)
    # A claim whose pod is not running yet adds on top of the measurement.
    dra = DraNode(devices, taken_by_claims(devices, claims, running=()))
    gpus = node_gpus(
        _node(report=measured), config=InventoryConfig(("annotation", "dra")), now=T0, dra=dra
    )
    assert not isinstance(gpus, str) and gpus.devices[0].free_mib == 81000 - 50000 - 10240


def test_a_claim_reserved_for_no_pod_holds_nothing_here() -> None:
    """Left over after a refused bind (kube-scheduler's Unreserve keeps the allocation) or after
    its pods finished: no workload uses its memory."""
    devices = slice_from_json(two_gpus()).devices
    left = claim_from_json(allocated_claim("ns", "a", "n1", [("gpu-0", None)], reserved_for=()))
    held = claim_from_json(allocated_claim("ns", "b", "n1", [("gpu-1", "10Gi")]))
    assert set(taken_by_claims(devices, [left, held], running=())) == {devices[1].key}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("AB"), st.integers(0, 3)), min_size=1, max_size=5),
    st.lists(st.lists(st.sampled_from(["A", "B", "0", "1"]), max_size=2), min_size=1, max_size=4),
    st.integers(1, 4),
)
def test_device_misfit_is_exact_matching(
    devices_spec: list[tuple[str, int]], requests: list[list[str]], mib: int
) -> None:
    """Refuses exactly when no assignment of distinct devices (passing checks, with room) to
    the requests exists, as a brute force over all assignments finds."""
    import itertools

    devices = [
        slice_from_json(
            resource_slice(
                "n1",
                [
                    {
                        "name": f"gpu-{i}",
                        "attributes": {"kind": {"string": k}, "slot": {"int": slot}},
                        "capacity": {"memory": {"value": "4Mi"}},
                    }
                    for i, (k, slot) in enumerate(devices_spec)
                ],
            )
        ).devices
    ][0]
    free = {d.key: (int(d.attributes[f"{DRIVER}/slot"]), False) for d in devices}

    def check(token: str) -> Check:
        if token.isdigit():
            return Check(f"{DRIVER}/slot", int(token))
        return Check(f"{DRIVER}/kind", token)

    checks = tuple(tuple(check(t) for t in r) for r in requests)
    need = DraNeed(GpuNeed(len(checks), mib), checks)
    fits = any(
        all(matches(c, d) and free[d.key][0] >= mib for c, d in zip(checks, perm, strict=True))
        for perm in itertools.permutations(devices, len(checks))
    )
    assert (device_misfit(need, devices, free) is None) == fits


def test_allocator_takes_the_first_device_with_room_not_the_best() -> None:
    """gpu-0 has 30 GiB free, gpu-1 has 12 GiB: a best fit for 10 GiB is gpu-1, the allocator
    takes gpu-0 (first in slice order), leaving the 30 GiB hole fragmented."""
    classes = {DRIVER: device_class_from_json(device_class())}
    need = claim_need([template_from_json(claim_template("ns", "t", memory="10Gi")).spec], classes)
    assert need is not None
    devices = slice_from_json(two_gpus()).devices
    free = {devices[0].key: (30720, False), devices[1].key: (12288, False)}
    assert allocator_choice(need, devices, free) == (devices[0].key,)
    whole = claim_need([template_from_json(claim_template("ns", "w", count=2)).spec], classes)
    assert whole is not None
    assert allocator_choice(whole, devices, free) is None  # neither is idle
    idle = {devices[0].key: (81920, True), devices[1].key: (81920, True)}
    assert allocator_choice(whole, devices, idle) == (devices[0].key, devices[1].key)
