"""``gpuscale node-agent``: read each GPU's memory through NVML and publish it on the Node.

Every interval it reads total and used memory per device (``nvmlDeviceGetMemoryInfo``, bytes →
MiB) and merge-patches the node annotation ``gpuscale.io/gpus`` with a JSON list of
``{index, uuid, model, totalMiB, usedMiB, time}`` (see :func:`extender.inventory.gpus_annotation`).
The NVML module is injected so tests run without a GPU; without a driver the agent stops with a
clear message (:class:`NoNvml`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from extender.inventory import gpus_annotation
from extender.model import GPUS_ANNOTATION, GpuDevice

log = logging.getLogger("gpuscale.node_agent")

MIB = 2**20


class NoNvml(RuntimeError):
    """NVML cannot be used here (no NVIDIA driver or library); the message says what failed."""


def load_nvml() -> Any:
    """The ``pynvml`` module from ``nvidia-ml-py``, initialised."""
    try:
        import pynvml
    except ImportError as exc:
        raise NoNvml(f"nvidia-ml-py is not installed ({exc}); install gpuscale[gpu]") from None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # pynvml raises NVMLError subclasses or OSError-like library errors
        raise NoNvml(
            f"cannot initialise NVML: {exc}. Is the NVIDIA driver installed and is "
            "libnvidia-ml.so visible in this container (nvidia runtime / device plugin)?"
        ) from None
    return pynvml


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_devices(nvml: Any) -> list[GpuDevice]:
    """Per-device memory, from an initialised NVML module (or a stand-in with the same API)."""
    try:
        count = nvml.nvmlDeviceGetCount()
        devices = []
        for i in range(count):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            devices.append(
                GpuDevice(
                    index=i,
                    uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                    model=_text(nvml.nvmlDeviceGetName(handle)),
                    total_mib=int(mem.total) // MIB,
                    used_mib=-(-int(mem.used) // MIB),
                )
            )
    except Exception as exc:
        raise NoNvml(f"NVML query failed: {exc}") from None
    return devices


class NodePatcher(Protocol):
    async def __call__(self, node: str, annotations: dict[str, str]) -> None: ...


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def publish_once(
    nvml: Any, node: str, patch: NodePatcher, clock: Callable[[], float]
) -> list[GpuDevice]:
    devices = read_devices(nvml)
    await patch(node, {GPUS_ANNOTATION: gpus_annotation(devices, rfc3339(clock()))})
    return devices


async def run(
    nvml: Any,
    node: str,
    patch: NodePatcher,
    *,
    interval: float,
    clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    max_failures: int | None = None,
) -> None:
    """Publish every ``interval`` seconds until cancelled. NVML failures end the agent
    (:class:`NoNvml`); API failures are logged and retried at the next tick, and after
    ``max_failures`` in a row (when set) the last one is raised."""
    failures = 0
    while True:
        try:
            devices = await publish_once(nvml, node, patch, clock)
        except NoNvml:
            raise
        except Exception as exc:
            failures += 1
            log.warning("patching the node failed", extra={"node": node, "error": repr(exc)})
            if max_failures is not None and failures >= max_failures:
                raise
        else:
            failures = 0
            log.debug(
                "published",
                extra={"node": node, "gpus": [[d.index, d.used_mib, d.total_mib] for d in devices]},
            )
        await sleep(interval)


def kube_patcher(api_client: Any) -> NodePatcher:
    """Merge-patch node annotations through ``kubernetes.aio``."""
    from kubernetes.aio import client

    core = client.CoreV1Api(api_client)

    async def patch(node: str, annotations: dict[str, str]) -> None:
        await core.patch_node(
            node,
            {"metadata": {"annotations": annotations}},
            _content_type="application/merge-patch+json",
        )

    return patch
