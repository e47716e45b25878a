"""Per-node, per-device GPU memory: what is there, what is used, what is free for the next pod.

Sources (DESIGN §4), tried in the configured order:

- ``annotation``: the ``gpuscale.io/gpus`` node annotation written by ``gpuscale node-agent``;
- ``dcgm``: DCGM exporter series ``DCGM_FI_DEV_FB_FREE``/``_USED`` (MiB) from Prometheus;
- ``gfd``: GPU Feature Discovery labels (``nvidia.com/gpu.count``, ``nvidia.com/gpu.memory``),
  static, so only request accounting says what is used;
- ``dra``: the node's devices in complete ResourceSlice pools (:mod:`extender.dra`), static
  like GFD, and the ResourceClaims allocated on them as accounting.

With ``dra`` on, claims are counted on the devices they hold whichever source measured the node:
a DRA device is the measured device of the same ``uuid``. Measurement wins where the two
disagree: the total is NVML's (DRA publishes what the driver read at start), and used memory is
``max(measured, accounted)`` as for pods, so neither source can make a device look freer than
the other says it is. Device-plugin pods without recorded indices are placed only on devices no
ResourceSlice publishes (the device plugin cannot hand those out), so no device is counted free
for both mechanisms.

The first measurement that is fresh (not older than ``stale_after``) wins. A node whose only
measurements are stale fails with ``GPU inventory stale``, unless ``stale_mode="accounting"``:
then its GFD labels (or the stale measurement's totals) are used with request accounting.

Used memory per device is ``max(measured, accounted)`` plus the reservations the pod list and
measurements do not show yet; accounting counts each running pod's request on the devices named by
its ``gpuscale.io/gpu-indices`` annotation (pods bound without one are placed best-fit).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

import orjson

from extender.dra import DraNode, device_indices, static_devices
from extender.fit import DeviceState, NodeGpus
from extender.objects import GfdInfo, GpuDevice, GpuReport, NodeInfo, PodRequest
from extender.reservations import Reservation

RUNNING: Final = "Running"
"""The pod phase from which a pod's GPU memory can show in a measurement."""

SOURCES: Final = ("annotation", "dcgm", "gfd", "dra")
STALE_REASON: Final = "GPU inventory stale"
NO_INVENTORY_REASON: Final = "node(s) had no GPU inventory"


@dataclass(frozen=True, slots=True)
class InventoryConfig:
    sources: tuple[str, ...] = ("annotation", "gfd")
    """Which sources to use, in order of preference."""
    stale_after: float = 60.0
    """A measurement older than this many seconds is not trusted."""
    stale_mode: Literal["fail", "accounting"] = "fail"
    """What to do with a node whose measurements are all stale."""
    idle_used_mib: int = 512
    """A device no pod holds counts as idle (whole-GPU pods may take it) while its measured use
    stays at or below this (driver and monitoring contexts use a little memory)."""

    def __post_init__(self) -> None:
        bad = [s for s in self.sources if s not in SOURCES]
        if bad or not self.sources:
            raise ValueError(
                f"inventory sources must be a non-empty list of {', '.join(SOURCES)}; got "
                f"{','.join(self.sources) or 'nothing'}"
            )
        if not self.stale_after > 0:
            raise ValueError(f"stale_after must be positive, got {self.stale_after}")


class InventoryError(ValueError):
    """A ``gpuscale.io/gpus`` annotation or a DCGM series that cannot be read."""


def _parse_time(value: object) -> float:
    if isinstance(value, bool):
        raise InventoryError(f"time: expected RFC 3339 or Unix seconds, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise InventoryError(f"time: not finite: {value!r}")
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise InventoryError(f"time: expected RFC 3339, got {value!r}") from None
        if parsed.tzinfo is None:
            raise InventoryError(f"time: needs a time zone, got {value!r}")
        return parsed.timestamp()
    raise InventoryError(f"time: expected RFC 3339 or Unix seconds, got {type(value).__name__}")


def count_field(
    item: Mapping[str, Any],
    key: str,
    where: str,
    default: int | None = None,
    error: type[InventoryError] = InventoryError,
) -> int:
    """``item[key]`` as a non-negative integer (``default`` when absent, if one is given)."""
    v = item.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise error(f"{where}.{key}: expected a non-negative integer, got {v!r}")
    return v


def device_objects(
    text: str | bytes, error: type[InventoryError] = InventoryError
) -> list[tuple[str, dict[str, Any]]]:
    """The entries of a JSON list of device objects, each with its path (``[i]``): the shape of
    the ``gpuscale.io/gpus`` annotation and of the node agent's fake inventory file."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise error(f"not JSON: {exc}") from None
    if not isinstance(data, list):
        raise error(f"expected a JSON list, got {type(data).__name__}")
    out: list[tuple[str, dict[str, Any]]] = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise error(f"[{i}]: expected an object, got {type(item).__name__}")
        out.append((f"[{i}]", item))
    return out


def parse_gpus_annotation(text: str) -> GpuReport:
    """Parse ``gpuscale.io/gpus``: a JSON list of ``{index, uuid, model, totalMiB, usedMiB,
    time}``. The report's time is the oldest device reading."""
    devices: list[GpuDevice] = []
    times: list[float] = []
    for where, item in device_objects(text):
        total = count_field(item, "totalMiB", where)
        used = count_field(item, "usedMiB", where)
        uuid = item.get("uuid", "")
        model = item.get("model", "")
        if not isinstance(uuid, str) or not isinstance(model, str):
            raise InventoryError(f"{where}: uuid and model must be strings")
        devices.append(GpuDevice(count_field(item, "index", where), uuid, model, total, used))
        if "time" not in item:
            raise InventoryError(f"{where}.time: missing")
        try:
            times.append(_parse_time(item["time"]))
        except InventoryError as exc:
            raise InventoryError(f"{where}.{exc}") from None
    if len({d.index for d in devices}) != len(devices):
        raise InventoryError("device indices repeat")
    return GpuReport(
        tuple(sorted(devices, key=lambda d: d.index)), min(times, default=0.0), "annotation"
    )


def gpus_annotation(devices: Iterable[GpuDevice], time: str) -> str:
    """The annotation text for ``devices`` read at ``time`` (RFC 3339), as the node agent writes
    it."""
    return orjson.dumps(
        [
            {
                "index": d.index,
                "uuid": d.uuid,
                "model": d.model,
                "totalMiB": d.total_mib,
                "usedMiB": d.used_mib,
                "time": time,
            }
            for d in devices
        ]
    ).decode()


def parse_gfd(labels: Mapping[str, str]) -> GfdInfo | None:
    """GFD labels, or ``None`` when absent or unusable (GFD writes plain integers)."""
    count, memory = labels.get("nvidia.com/gpu.count"), labels.get("nvidia.com/gpu.memory")
    if count is None or memory is None or not count.isdigit() or not memory.isdigit():
        return None
    return GfdInfo(int(count), int(memory), labels.get("nvidia.com/gpu.product", ""))


def reports_from_dcgm(
    free: Sequence[Mapping[str, Any]],
    used: Sequence[Mapping[str, Any]],
    node_label: str = "Hostname",
) -> dict[str, GpuReport]:
    """Build per-node reports from Prometheus instant-vector results (``data.result``) of
    ``DCGM_FI_DEV_FB_FREE`` and ``DCGM_FI_DEV_FB_USED``. Series without the node label or a
    ``gpu`` index, or with non-numeric values, are skipped. A report's time is its oldest sample.
    """

    def index(
        series: Sequence[Mapping[str, Any]],
    ) -> dict[tuple[str, int], tuple[float, float, dict[str, Any]]]:
        out: dict[tuple[str, int], tuple[float, float, dict[str, Any]]] = {}
        for s in series:
            metric = s.get("metric")
            value = s.get("value")
            if not isinstance(metric, dict) or not isinstance(value, list) or len(value) != 2:
                continue
            node, gpu = metric.get(node_label), metric.get("gpu")
            if not isinstance(node, str) or not isinstance(gpu, str) or not gpu.isdigit():
                continue
            try:
                t, v = float(value[0]), float(value[1])
            except (TypeError, ValueError):
                continue
            if math.isfinite(t) and math.isfinite(v) and v >= 0:
                out[(node, int(gpu))] = (t, v, metric)
        return out

    f, u = index(free), index(used)
    devices: dict[str, list[GpuDevice]] = {}
    times: dict[str, float] = {}
    for key in sorted(f.keys() & u.keys()):
        node, gpu = key
        (tf, vf, metric), (tu, vu, _) = f[key], u[key]
        devices.setdefault(node, []).append(
            GpuDevice(
                gpu,
                str(metric.get("UUID", "")),
                str(metric.get("modelName", "")),
                int(vf + vu),
                int(vu),
            )
        )
        times[node] = min(times.get(node, math.inf), tf, tu)
    return {n: GpuReport(tuple(d), times[n], "dcgm") for n, d in devices.items()}


def _base_devices(
    node: NodeInfo,
    dcgm: GpuReport | None,
    config: InventoryConfig,
    now: float,
    dra: DraNode | None = None,
) -> tuple[list[GpuDevice], str] | str:
    """Devices with measured use (zero use for static sources) and the source's name, or the
    reason there are none. GFD labels only count when no measurement is fresh, and a stale
    measurement overrides them unless ``stale_mode`` is ``accounting``."""
    stale: GpuReport | None = None
    invalid: str | None = None
    for source in config.sources:
        report = None
        if source == "annotation":
            report = node.gpu_report
            if report is None and node.gpu_report_error is not None:
                invalid = node.gpu_report_error
        elif source == "dcgm":
            report = dcgm
        if report is None:
            continue
        if now - report.time <= config.stale_after:
            return list(report.devices), report.source
        stale = stale or report
    use_gfd = "gfd" in config.sources and node.gfd is not None
    published = static_devices(dra.devices) if dra is not None and "dra" in config.sources else []
    if stale is not None:
        if config.stale_mode == "fail":
            return STALE_REASON
        if published:
            return published, "accounting"
        if node.gfd is not None:
            return _gfd_devices(node.gfd), "accounting"
        zeroed = [GpuDevice(d.index, d.uuid, d.model, d.total_mib, 0) for d in stale.devices]
        return zeroed, "accounting"
    if published and (not use_gfd or config.sources.index("dra") < config.sources.index("gfd")):
        return published, "dra"
    if use_gfd and node.gfd is not None:
        return _gfd_devices(node.gfd), "gfd"
    if invalid is not None:
        return f"GPU inventory invalid: {invalid}"
    return NO_INVENTORY_REASON


def _gfd_devices(gfd: GfdInfo) -> list[GpuDevice]:
    return [GpuDevice(i, "", gfd.product, gfd.memory_mib, 0) for i in range(gfd.count)]


def node_gpus(
    node: NodeInfo,
    *,
    config: InventoryConfig,
    now: float,
    dcgm: GpuReport | None = None,
    pods: Iterable[PodRequest] = (),
    reservations: Iterable[Reservation] = (),
    dra: DraNode | None = None,
) -> NodeGpus | str:
    """Effective GPU state of ``node``, or the reason it cannot take GPU pods.

    ``pods`` are the pods bound to this node (finished ones are ignored); ``reservations`` those
    held on it; ``dra`` its published devices and the claims allocated on them.
    """
    base = _base_devices(node, dcgm, config, now, dra)
    if isinstance(base, str):
        return base
    devices, source = base
    use_dra = dra is not None and "dra" in config.sources and bool(dra.devices)
    rows = (
        device_indices(dra.devices, None if source in ("dra", "accounting") else devices)
        if use_dra and dra is not None
        else {}
    )
    total = {d.index: d.total_mib for d in devices}
    measured = {d.index: d.used_mib for d in devices}
    accounted = dict.fromkeys(total, 0)
    waiting = dict.fromkeys(total, 0)
    holders = dict.fromkeys(total, 0)
    for key, row in rows.items():
        assert dra is not None
        taken = dra.taken.get(key)
        if taken is None or row not in total:
            continue
        # As for pods: a claim whose pod runs can show in the measurement, the others cannot.
        accounted[row] += total[row] if taken.whole_running else taken.running_mib
        waiting[row] += total[row] if taken.whole_waiting else taken.waiting_mib
        holders[row] += taken.holders
    published = set(rows.values())
    unplaced: list[PodRequest] = []
    for pod in sorted(pods, key=lambda p: p.key):
        if pod.gpu is None or pod.terminated:
            continue
        idx = [i for i in pod.gpu_indices or () if i in total]
        if not idx:
            unplaced.append(pod)
            continue
        # A pod that is not running yet has no memory in the measurement: it counts on top of
        # it, else its memory and what else the device holds would be booked twice.
        into = accounted if pod.phase == RUNNING else waiting
        for i in idx:
            into[i] += total[i] if pod.gpu.mib_per_gpu is None else pod.gpu.mib_per_gpu
            holders[i] += 1
    for pod in unplaced:
        assert pod.gpu is not None
        want = pod.gpu.mib_per_gpu
        free_now = sorted(
            (total[i] - max(measured[i], accounted[i]) - waiting[i], i)
            for i in total
            if i not in published and (holders[i] == 0 if want is None else True)
        )
        fitting = [i for f, i in free_now if want is None or f >= want]
        chosen = (fitting or [i for _, i in reversed(free_now)])[: pod.gpu.count]
        into = accounted if pod.phase == RUNNING else waiting
        for i in chosen:
            into[i] += total[i] if want is None else want
            holders[i] += 1
    reserved = dict.fromkeys(total, 0)
    for r in reservations:
        for i in r.indices:
            if i in total:
                reserved[i] += total[i] if r.mib_per_gpu is None else r.mib_per_gpu
                holders[i] += 1
    states = tuple(
        DeviceState(
            index=i,
            total_mib=total[i],
            free_mib=max(0, total[i] - max(measured[i], accounted[i]) - waiting[i] - reserved[i]),
            idle=holders[i] == 0 and measured[i] <= config.idle_used_mib,
        )
        for i in sorted(total)
    )
    return NodeGpus(states, source)


def baseline_used(
    node: NodeInfo,
    dcgm: GpuReport | None,
    indices: Sequence[int],
    config: InventoryConfig,
    now: float,
) -> tuple[int, ...] | None:
    """Measured use of ``indices`` now, for a new reservation; ``None`` without a fresh
    measurement."""
    base = _base_devices(node, dcgm, config, now)
    if isinstance(base, str) or base[1] not in ("annotation", "dcgm"):
        return None
    used = {d.index: d.used_mib for d in base[0]}
    return tuple(used.get(i, 0) for i in indices)
