"""The devices the plugin advertises, their health, and who else hands them out (pure).

Devices come from NVML (:func:`plugin_devices` reads device by device, so that one lost GPU is
marked unhealthy instead of failing the read); for tests and nodes without an NVIDIA runtime,
:class:`FakeNvml` answers the same calls from a JSON file (re-read on every call, so a test can
make a GPU fail).

Coexistence with NVIDIA's device plugin: the kubelet keeps one plugin per resource name (the last
to register wins), and two plugins under different names that both list a GPU would each hand it
out. :func:`conflicts` reads the kubelet's own record of registered devices (the device manager's
checkpoint file beside ``kubelet.sock``) and names either case, so the plugin refuses to register
rather than share a GPU with a plugin that does not know the extender's choice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from extender.device_plugin.matching import Device, uuid_of
from extender.inventory import InventoryError, count_field, device_objects

CHECKPOINT_FILE = "kubelet_internal_checkpoint"
"""The kubelet device manager's checkpoint, in the device plugin directory."""


class InventoryFileError(InventoryError):
    """A fake inventory file that cannot be read; the message names the entry and field."""


@dataclass(frozen=True, slots=True)
class FakeGpu:
    index: int
    uuid: str
    model: str
    total_mib: int
    used_mib: int = 0
    healthy: bool = True


def parse_fake_inventory(text: str | bytes) -> tuple[FakeGpu, ...]:
    """``[{"index": 0, "uuid": "GPU-…", "model": "…", "totalMiB": 81920, "usedMiB": 0,
    "healthy": true}, …]``; ``usedMiB`` and ``healthy`` are optional. An unhealthy entry is
    left out of what NVML would report (the GPU fell off the bus)."""
    out: list[FakeGpu] = []
    error = InventoryFileError
    for where, item in device_objects(text, error):
        fields = {
            key: count_field(item, key, where, default, error)
            for key, default in (("index", None), ("totalMiB", None), ("usedMiB", 0))
        }
        uuid, model, healthy = item.get("uuid"), item.get("model", ""), item.get("healthy", True)
        if not isinstance(uuid, str) or not uuid or "::" in uuid or "," in uuid:
            raise InventoryFileError(f"{where}.uuid: expected a non-empty string without :: or ,")
        if not isinstance(model, str) or not isinstance(healthy, bool):
            raise InventoryFileError(f"{where}: model must be a string, healthy a boolean")
        out.append(
            FakeGpu(fields["index"], uuid, model, fields["totalMiB"], fields["usedMiB"], healthy)
        )
    if len({g.index for g in out}) != len(out) or len({g.uuid for g in out}) != len(out):
        raise InventoryFileError("device indices and uuids must not repeat")
    return tuple(sorted(out, key=lambda g: g.index))


class _Memory:
    def __init__(self, total: int, used: int) -> None:
        self.total, self.used, self.free = total, used, total - used


class GpuLost(RuntimeError):
    """What NVML says of a GPU that fell off the bus (``NVML_ERROR_GPU_IS_LOST``)."""


class FakeNvml:
    """The ``pynvml`` calls the node agent makes, answered from a fake inventory file. Every
    entry is enumerated (NVML keeps a lost GPU's index); an unhealthy one fails its queries as a
    lost GPU does. ``nvmlDeviceGetCount`` re-reads the file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._gpus: tuple[FakeGpu, ...] = ()

    def nvmlInit(self) -> None:
        self.nvmlDeviceGetCount()

    def nvmlShutdown(self) -> None:
        return None

    def nvmlDeviceGetCount(self) -> int:
        with open(self.path, "rb") as f:
            self._gpus = parse_fake_inventory(f.read())
        return len(self._gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> FakeGpu:
        return self._gpus[i]

    def _alive(self, gpu: FakeGpu) -> FakeGpu:
        if not gpu.healthy:
            raise GpuLost(f"GPU {gpu.index} is lost")
        return gpu

    def nvmlDeviceGetMemoryInfo(self, gpu: FakeGpu) -> _Memory:
        g = self._alive(gpu)
        return _Memory(g.total_mib * 2**20, g.used_mib * 2**20)

    def nvmlDeviceGetUUID(self, gpu: FakeGpu) -> str:
        return self._alive(gpu).uuid

    def nvmlDeviceGetName(self, gpu: FakeGpu) -> str:
        return self._alive(gpu).model


def plugin_devices(nvml: Any, previous: Sequence[Device]) -> tuple[Device, ...]:
    """Read every GPU NVML enumerates; one whose queries fail is listed unhealthy under what was
    known of it before (a GPU never read is left out), one known before and no longer enumerated
    too. Fails (with NVML's error) only when the count itself cannot be read."""
    known = {d.index: d for d in previous}
    seen: dict[int, Device] = {}
    for i in range(nvml.nvmlDeviceGetCount()):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            uuid = nvml.nvmlDeviceGetUUID(handle)
            total = int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // 2**20
        except Exception:
            if i in known:
                seen[i] = Device(i, known[i].uuid, known[i].total_mib, healthy=False)
            continue
        uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
        seen[i] = Device(i, uuid, total, healthy=True)
    gone = [Device(d.index, d.uuid, d.total_mib, False) for d in previous if d.index not in seen]
    return tuple(sorted([*seen.values(), *gone], key=lambda d: d.index))


def conflicts(checkpoint: Mapping[str, Any], resource: str, uuids: Iterable[str]) -> list[str]:
    """Problems in the kubelet's checkpoint (``{"Data": {"RegisteredDevices": {resource:
    [ids]}}}``) that mean another device plugin hands out the same GPUs: ``resource`` registered
    with IDs this plugin does not make, or one of ``uuids`` listed under another resource."""
    data = checkpoint.get("Data")
    registered = data.get("RegisteredDevices") if isinstance(data, Mapping) else None
    if not isinstance(registered, Mapping):
        return []
    ours = set(uuids)
    problems = []
    for name, ids in sorted(registered.items()):
        if not isinstance(ids, list):
            continue
        ids = [i for i in ids if isinstance(i, str)]
        if name == resource:
            foreign = [i for i in ids if uuid_of(i) not in ours]
            if foreign:
                problems.append(
                    f"{resource} is registered on this node with devices gpuscale does not"
                    f" advertise ({', '.join(sorted(foreign)[:3])}): another device plugin"
                    " (NVIDIA's?) serves it here"
                )
            continue
        shared = sorted({u for u in ours for i in ids if u in i})
        if shared:
            problems.append(
                f"resource {name} is registered with GPU(s) {', '.join(shared[:3])} that gpuscale"
                " would hand out too"
            )
    return problems


def checkpoint_holders(checkpoint: Mapping[str, Any], resource: str) -> dict[str, frozenset[str]]:
    """Per pod uid, the containers the kubelet's checkpoint records as holding devices of
    ``resource`` (``Data.PodDeviceEntries``; written by the kubelet after every allocation)."""
    data = checkpoint.get("Data")
    entries = data.get("PodDeviceEntries") if isinstance(data, Mapping) else None
    out: dict[str, set[str]] = {}
    for e in entries if isinstance(entries, list) else []:
        if not isinstance(e, Mapping) or e.get("ResourceName") != resource:
            continue
        uid, name, ids = e.get("PodUID"), e.get("ContainerName"), e.get("DeviceIDs")
        if isinstance(uid, str) and isinstance(name, str) and ids:
            out.setdefault(uid, set()).add(name)
    return {uid: frozenset(names) for uid, names in out.items()}
