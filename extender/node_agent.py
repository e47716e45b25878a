"""``gpuscale node-agent``: read each GPU's memory through NVML and publish it on the Node.

Every interval it reads total and used memory per device (``nvmlDeviceGetMemoryInfo``, bytes →
MiB) and merge-patches the node annotation ``gpuscale.io/gpus`` with a JSON list of
``{index, uuid, model, totalMiB, usedMiB, time}`` (see :func:`extender.inventory.gpus_annotation`).
The NVML module is injected so tests run without a GPU; without a driver the agent stops with a
clear message (:class:`NoNvml`).

Each tick leaves an :class:`AgentHealth`; ``/livez`` asks whether the loop still completes ticks,
``/readyz`` whether the last NVML read and the last annotation publish both succeeded within a
bound (the extender's ``--stale-after``: past it, the extender distrusts the annotation anyway),
and ``/metrics`` exports the counters and the last success time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from extender.inventory import gpus_annotation
from extender.objects import GPUS_ANNOTATION, GpuDevice
from runtime.ops import add_ops_routes

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


@dataclass(frozen=True, slots=True)
class AgentHealth:
    """What the publishing loop has done so far; times are epoch seconds, None for never."""

    started: float
    last_tick: float | None = None
    """End of the last tick, whatever its outcome: the loop is alive."""
    last_read: float | None = None
    """Last successful NVML read."""
    last_publish: float | None = None
    """Last successful annotation patch."""
    reads: int = 0
    publishes: int = 0
    publish_errors: int = 0
    gpus: int = 0
    last_error: str = ""


def live_problem(health: AgentHealth, now: float, bound: float) -> str | None:
    """Why the loop looks stuck (no tick ended within ``bound`` seconds), or None."""
    since = now - (health.last_tick if health.last_tick is not None else health.started)
    if since > bound:
        return f"no publishing tick has ended for {since:.0f}s (bound {bound:.0f}s)"
    return None


def ready_problem(health: AgentHealth, now: float, bound: float) -> str | None:
    """Why the node's annotation cannot be trusted now, or None when both the last NVML read
    and the last publish succeeded within ``bound`` seconds."""
    for what, at in (("NVML read", health.last_read), ("annotation publish", health.last_publish)):
        if at is None:
            reason = f"no successful {what} yet"
        elif now - at > bound:
            reason = f"last successful {what} was {now - at:.0f}s ago (bound {bound:.0f}s)"
        else:
            continue
        return f"{reason}; last error: {health.last_error}" if health.last_error else reason
    return None


async def run(
    nvml: Any,
    node: str,
    patch: NodePatcher,
    *,
    interval: float,
    clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    max_failures: int | None = None,
    report: Callable[[AgentHealth], None] | None = None,
) -> None:
    """Publish every ``interval`` seconds until cancelled. NVML failures end the agent
    (:class:`NoNvml`); API failures are logged and retried at the next tick, and after
    ``max_failures`` in a row (when set) the last one is raised. ``report`` gets the
    :class:`AgentHealth` after every tick."""
    failures = 0
    health = AgentHealth(started=clock())
    while True:
        try:
            devices = read_devices(nvml)
        except NoNvml as exc:
            health = replace(health, last_tick=clock(), last_error=str(exc))
            if report is not None:
                report(health)
            raise
        health = replace(health, last_read=clock(), reads=health.reads + 1, gpus=len(devices))
        try:
            await patch(node, {GPUS_ANNOTATION: gpus_annotation(devices, rfc3339(clock()))})
        except Exception as exc:
            failures += 1
            health = replace(
                health,
                last_tick=clock(),
                publish_errors=health.publish_errors + 1,
                last_error=f"patching node {node}: {exc!r}",
            )
            if report is not None:
                report(health)
            log.warning("patching the node failed", extra={"node": node, "error": repr(exc)})
            if max_failures is not None and failures >= max_failures:
                raise
        else:
            failures = 0
            now = clock()
            health = replace(
                health,
                last_tick=now,
                last_publish=now,
                publishes=health.publishes + 1,
                last_error="",
            )
            if report is not None:
                report(health)
            log.debug(
                "published",
                extra={"node": node, "gpus": [[d.index, d.used_mib, d.total_mib] for d in devices]},
            )
        await sleep(interval)


class _HealthCollector(Collector):
    def __init__(self, current: Callable[[], AgentHealth]) -> None:
        self.current = current

    def collect(self) -> Iterator[Any]:
        h = self.current()
        yield CounterMetricFamily(
            "gpuscale_node_agent_nvml_reads", "Successful NVML reads.", value=h.reads
        )
        yield CounterMetricFamily(
            "gpuscale_node_agent_publishes", "Successful annotation patches.", value=h.publishes
        )
        yield CounterMetricFamily(
            "gpuscale_node_agent_publish_errors",
            "Annotation patches that failed (retried at the next tick).",
            value=h.publish_errors,
        )
        yield GaugeMetricFamily(
            "gpuscale_node_agent_last_success_timestamp_seconds",
            "When the annotation was last published (epoch seconds; 0 for never).",
            value=h.last_publish or 0.0,
        )
        yield GaugeMetricFamily(
            "gpuscale_node_agent_last_read_timestamp_seconds",
            "When NVML was last read successfully (epoch seconds; 0 for never).",
            value=h.last_read or 0.0,
        )
        yield GaugeMetricFamily("gpuscale_node_agent_gpus", "GPUs seen by NVML.", value=h.gpus)


def agent_registry(current: Callable[[], AgentHealth]) -> CollectorRegistry:
    """The agent's metrics, read from ``current()`` at scrape time."""
    registry = CollectorRegistry()
    registry.register(_HealthCollector(current))
    return registry


def make_health_app(
    current: Callable[[], AgentHealth],
    *,
    clock: Callable[[], float],
    bound: float,
    stopping: Callable[[], bool] = lambda: False,
    registry: CollectorRegistry | None = None,
) -> web.Application:
    """``/livez``, ``/readyz`` and ``/metrics`` for the agent; ``bound`` is the staleness bound
    in seconds. ``/readyz`` fails as soon as ``stopping()`` is true. ``/metrics`` serves
    ``registry`` (made here when not given) with the agent's health added."""
    registry = registry or CollectorRegistry()
    registry.register(_HealthCollector(current))

    def live() -> tuple[bool, str]:
        problem = live_problem(current(), clock(), bound)
        return problem is None, problem or "ok"

    def ready() -> tuple[bool, str]:
        problem = "stopping" if stopping() else ready_problem(current(), clock(), bound)
        return problem is None, problem or "ok"

    app = web.Application()
    add_ops_routes(app, live=live, ready=ready, scrape=lambda: generate_latest(registry))
    return app


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
