"""``resource.k8s.io/v1`` objects as NVIDIA's DRA driver (``gpu.nvidia.com``) writes them, for
the unit tests and the e2e's fake publisher.

Shapes follow ``k8s.io/api/resource/v1`` (ResourceSlice, DeviceClass, ResourceClaim[Template]);
the device names (``gpu-<minor>``), attribute names (``productName``, ``uuid``, ``minor``, ...)
and the ``memory`` capacity in bytes follow the driver's published slices (facts from
NVIDIA/k8s-dra-driver-gpu's README examples; no code copied).
"""

from __future__ import annotations

from typing import Any

DRIVER = "gpu.nvidia.com"
API = "resource.k8s.io/v1"


def gpu_device(
    minor: int, *, uuid: str, product: str, memory_mib: int, shared: bool = False
) -> dict[str, Any]:
    device: dict[str, Any] = {
        "name": f"gpu-{minor}",
        "attributes": {
            "type": {"string": "gpu"},
            "minor": {"int": minor},
            "index": {"int": minor},
            "uuid": {"string": uuid},
            "productName": {"string": product},
            "brand": {"string": "Nvidia"},
            "architecture": {"string": "Ampere"},
            "cudaComputeCapability": {"version": "8.0.0"},
        },
        "capacity": {"memory": {"value": f"{memory_mib}Mi"}},
    }
    if shared:
        device["allowMultipleAllocations"] = True
    return device


def resource_slice(
    node: str,
    devices: list[dict[str, Any]],
    *,
    generation: int = 1,
    count: int = 1,
    part: int = 0,
    pool: str | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "ResourceSlice",
        "metadata": {"name": f"{node}-{DRIVER}-{part}"},
        "spec": {
            "driver": DRIVER,
            "nodeName": node,
            "pool": {"name": pool or node, "generation": generation, "resourceSliceCount": count},
            "devices": devices,
        },
    }


def device_class(name: str = DRIVER) -> dict[str, Any]:
    """NVIDIA's ``gpu.nvidia.com`` class: driver and type pinned."""
    return {
        "apiVersion": API,
        "kind": "DeviceClass",
        "metadata": {"name": name},
        "spec": {
            "selectors": [
                {
                    "cel": {
                        "expression": f"device.driver == '{DRIVER}' && "
                        f"device.attributes['{DRIVER}'].type == 'gpu'"
                    }
                }
            ]
        },
    }


def claim_spec(
    *, count: int = 1, memory: str | None = None, selectors: list[str] | None = None
) -> dict[str, Any]:
    exactly: dict[str, Any] = {"deviceClassName": DRIVER, "count": count}
    if memory is not None:
        exactly["capacity"] = {"requests": {"memory": memory}}
    if selectors:
        exactly["selectors"] = [{"cel": {"expression": e}} for e in selectors]
    return {"devices": {"requests": [{"name": "gpu", "exactly": exactly}]}}


def claim_template(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "ResourceClaimTemplate",
        "metadata": {"namespace": namespace, "name": name},
        "spec": {"spec": claim_spec(**spec)},
    }


def allocated_claim(
    namespace: str,
    name: str,
    node: str,
    devices: list[tuple[str, str | None]],
    *,
    reserved_for: tuple[str, ...] = ("holder",),
    **spec: Any,
) -> dict[str, Any]:
    """A claim allocated on ``node``'s pool and reserved for ``reserved_for`` (pod names):
    ``devices`` are (device name, consumed memory or ``None`` for the whole device)."""
    results = []
    for device, consumed in devices:
        r: dict[str, Any] = {"request": "gpu", "driver": DRIVER, "pool": node, "device": device}
        if consumed is not None:
            r["consumedCapacity"] = {"memory": consumed}
        results.append(r)
    return {
        "apiVersion": API,
        "kind": "ResourceClaim",
        "metadata": {"namespace": namespace, "name": name},
        "spec": claim_spec(**spec),
        "status": {
            "allocation": {"devices": {"results": results}},
            "reservedFor": [{"resource": "pods", "name": p, "uid": p} for p in reserved_for],
        },
    }
