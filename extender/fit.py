"""Does a pod fit on a node's GPUs (and CPU/memory), and which devices would it take?

A node's GPUs are described by :class:`NodeGpus` (built by :mod:`extender.inventory`): per device,
the total, the memory free after measured use, running pods and reservations, and whether the
device is idle (no pod holds it), which whole-GPU pods require.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from extender.objects import GpuNeed


@dataclass(frozen=True, slots=True)
class DeviceState:
    index: int
    total_mib: int
    free_mib: int
    idle: bool


@dataclass(frozen=True, slots=True)
class NodeGpus:
    """Effective GPU state of one node. ``source`` says where the numbers came from
    (``annotation``, ``dcgm``, ``gfd`` or ``accounting`` for a stale measurement's fallback)."""

    devices: tuple[DeviceState, ...]
    source: str
    free_desc: tuple[int, ...] = field(init=False, repr=False, compare=False)
    idle_count: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "free_desc", tuple(sorted((d.free_mib for d in self.devices), reverse=True))
        )
        object.__setattr__(self, "idle_count", sum(1 for d in self.devices if d.idle))


def fits(gpus: NodeGpus, need: GpuNeed) -> bool:
    """True when ``need`` fits: enough idle devices, or the ``count``-th freest device has room."""
    if need.mib_per_gpu is None:
        return gpus.idle_count >= need.count
    free = gpus.free_desc
    return len(free) >= need.count and free[need.count - 1] >= need.mib_per_gpu


def gpu_fit_reason(gpus: NodeGpus, need: GpuNeed) -> str | None:
    """``None`` when the need fits, else a reason for ``FailedNodes``."""
    if fits(gpus, need):
        return None
    if need.mib_per_gpu is None:
        return shortage_reason(need, len(gpus.devices), gpus.idle_count, 0, 0)
    enough = sum(1 for f in gpus.free_desc if f >= need.mib_per_gpu)
    nxt = gpus.free_desc[enough] if enough < len(gpus.free_desc) else 0
    return shortage_reason(need, len(gpus.devices), gpus.idle_count, enough, nxt)


def shortage_reason(need: GpuNeed, devices: int, idle: int, enough: int, next_free: int) -> str:
    """The ``FailedNodes`` reason for a need that does not fit: ``enough`` devices have room for
    one of its GPUs, the next freest has ``next_free`` MiB (both unused for whole-GPU needs)."""
    if need.count > devices:
        return f"insufficient GPUs: need {need.count}, node has {devices}"
    if need.mib_per_gpu is None:
        return f"insufficient GPUs: need {need.describe()}, node has {idle} idle"
    if enough == 0:
        return (
            f"insufficient GPU memory: need {need.describe()}, best device has {next_free} MiB free"
        )
    return (
        f"insufficient GPU memory: need {need.describe()}, {enough} device(s) have enough, "
        f"next best has {next_free} MiB free"
    )


def _candidates(devices: Sequence[DeviceState], need: GpuNeed) -> list[DeviceState]:
    if need.mib_per_gpu is None:
        return [d for d in devices if d.idle]
    return [d for d in devices if d.free_mib >= need.mib_per_gpu]


def choose_best_fit(devices: Sequence[DeviceState], need: GpuNeed) -> tuple[int, ...] | None:
    """Binpack: the devices with the least free memory that still fit (ties: lowest index)."""
    c = _candidates(devices, need)
    if len(c) < need.count:
        return None
    c.sort(key=lambda d: (d.free_mib, d.index))
    return tuple(sorted(d.index for d in c[: need.count]))


def choose_worst_fit(devices: Sequence[DeviceState], need: GpuNeed) -> tuple[int, ...] | None:
    """Spread: the devices with the most free memory (ties: lowest index)."""
    c = _candidates(devices, need)
    if len(c) < need.count:
        return None
    c.sort(key=lambda d: (-d.free_mib, d.index))
    return tuple(sorted(d.index for d in c[: need.count]))


def resource_fit_reasons(
    milli_cpu: int,
    memory: int,
    *,
    allocatable_milli_cpu: int | None,
    allocatable_memory: int | None,
    requested_milli_cpu: int = 0,
    requested_memory: int = 0,
) -> tuple[str, ...]:
    """NodeResourcesFit's ``Insufficient cpu`` / ``Insufficient memory``; unknown allocatable
    (``None``) is not checked. A pod requesting zero of a resource always fits it, as upstream."""
    reasons: list[str] = []
    if (
        milli_cpu > 0
        and allocatable_milli_cpu is not None
        and milli_cpu > allocatable_milli_cpu - requested_milli_cpu
    ):
        reasons.append("Insufficient cpu")
    if (
        memory > 0
        and allocatable_memory is not None
        and memory > allocatable_memory - requested_memory
    ):
        reasons.append("Insufficient memory")
    return tuple(reasons)
