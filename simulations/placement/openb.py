"""Readers for the Alibaba openb GPU cluster trace (cluster-trace-gpu-v2023).

Node lists have the columns ``sn,cpu_milli,memory_mib,gpu,model``; pod lists have at least
``name,cpu_milli,memory_mib,num_gpu,gpu_milli``. The default list adds ``gpu_spec`` (the GPU
models a pod accepts, ``|``-separated; empty: any), QoS, and ``creation_time``/``deletion_time``
(seconds from the start of the trace), which the departures replay uses. ``gpu_milli`` is the
share of one GPU, in thousandths, that a single-GPU pod uses; pods with ``num_gpu > 1`` use whole
GPUs.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

MILLI = 1000

NODE_COLUMNS = ("sn", "cpu_milli", "memory_mib", "gpu", "model")
POD_COLUMNS = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")


class OpenbFormatError(ValueError):
    """A trace file that does not follow the openb format; the message names file, line, field."""


@dataclass(frozen=True, slots=True)
class OpenbNode:
    """One GPU node of the trace."""

    name: str
    cpu_milli: int
    memory_mib: int
    gpus: int
    model: str


@dataclass(frozen=True, slots=True)
class OpenbPod:
    """One pod of the trace: CPU, memory and its GPU share."""

    name: str
    cpu_milli: int
    memory_mib: int
    num_gpu: int
    gpu_milli: int
    gpu_spec: tuple[str, ...] = ()
    """GPU models the pod accepts (``gpu_spec``); empty: any model."""
    creation_time: int | None = None
    """Seconds from the start of the trace; ``None`` when the list has no times."""
    deletion_time: int | None = None

    @property
    def gpu_total_milli(self) -> int:
        """GPU thousandths this pod takes: ``gpu_milli`` for a shared GPU, 1000 per whole GPU."""
        if self.num_gpu == 0:
            return 0
        if self.num_gpu == 1:
            return self.gpu_milli
        return self.num_gpu * MILLI

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """Everything placement depends on; pods with equal shapes are interchangeable."""
        return (self.cpu_milli, self.memory_mib, self.num_gpu, self.gpu_milli)


def _rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise OpenbFormatError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    with handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise OpenbFormatError(
                f"{path}:1: missing column(s) {', '.join(missing)}; found {', '.join(header)}"
            )
        try:
            for row in reader:
                yield reader.line_num, row
        except (csv.Error, UnicodeDecodeError) as exc:
            raise OpenbFormatError(f"{path}:{reader.line_num}: {exc}") from exc


def _int(path: Path, line: int, row: dict[str, str], field: str, *, low: int, high: int) -> int:
    raw = (row.get(field) or "").strip()
    try:
        value = int(raw)
    except ValueError:
        try:
            as_float = float(raw)
        except ValueError:
            as_float = float("nan")
        if not as_float.is_integer():
            raise OpenbFormatError(
                f"{path}:{line}: {field}: expected an integer, got {raw!r}"
            ) from None
        value = int(as_float)
    if not low <= value <= high:
        raise OpenbFormatError(f"{path}:{line}: {field}: {value} is outside {low}..{high}")
    return value


def _name(path: Path, line: int, row: dict[str, str], field: str) -> str:
    value = (row.get(field) or "").strip()
    if not value:
        raise OpenbFormatError(f"{path}:{line}: {field}: empty")
    return value


def read_nodes(path: Path | str) -> list[OpenbNode]:
    """Read a node list; raises :class:`OpenbFormatError` on the first bad field."""
    path = Path(path)
    nodes: list[OpenbNode] = []
    seen: set[str] = set()
    for line, row in _rows(path, NODE_COLUMNS):
        name = _name(path, line, row, "sn")
        if name in seen:
            raise OpenbFormatError(f"{path}:{line}: sn: duplicate node {name!r}")
        seen.add(name)
        gpus = _int(path, line, row, "gpu", low=0, high=64)
        model = (row.get("model") or "").strip()
        if gpus > 0 and model in ("", "nan"):
            raise OpenbFormatError(f"{path}:{line}: model: empty for a node with {gpus} GPUs")
        nodes.append(
            OpenbNode(
                name=name,
                cpu_milli=_int(path, line, row, "cpu_milli", low=0, high=10**9),
                memory_mib=_int(path, line, row, "memory_mib", low=0, high=10**12),
                gpus=gpus,
                model=model,
            )
        )
    if not nodes:
        raise OpenbFormatError(f"{path}: no nodes")
    return nodes


def _spec(path: Path, line: int, row: dict[str, str]) -> tuple[str, ...]:
    raw = (row.get("gpu_spec") or "").strip()
    if raw in ("", "nan"):
        return ()
    models = tuple(m.strip() for m in raw.split("|"))
    if any(not m for m in models):
        raise OpenbFormatError(f"{path}:{line}: gpu_spec: empty model name in {raw!r}")
    return models


def _time(path: Path, line: int, row: dict[str, str], field: str) -> int | None:
    if (row.get(field) or "").strip() in ("", "nan"):
        return None
    return _int(path, line, row, field, low=0, high=10**12)


def read_pods(path: Path | str) -> list[OpenbPod]:
    """Read a pod list in trace order; raises :class:`OpenbFormatError` on the first bad field."""
    path = Path(path)
    pods: list[OpenbPod] = []
    for line, row in _rows(path, POD_COLUMNS):
        num_gpu = _int(path, line, row, "num_gpu", low=0, high=64)
        gpu_milli = _int(path, line, row, "gpu_milli", low=0, high=MILLI)
        if num_gpu == 0:
            gpu_milli = 0
        elif gpu_milli == 0:
            raise OpenbFormatError(f"{path}:{line}: gpu_milli: 0 for a pod with {num_gpu} GPU(s)")
        elif num_gpu > 1 and gpu_milli != MILLI:
            raise OpenbFormatError(
                f"{path}:{line}: gpu_milli: {gpu_milli} with num_gpu={num_gpu}; "
                "multi-GPU pods use whole GPUs (1000)"
            )
        pods.append(
            OpenbPod(
                name=_name(path, line, row, "name"),
                cpu_milli=_int(path, line, row, "cpu_milli", low=0, high=10**9),
                memory_mib=_int(path, line, row, "memory_mib", low=0, high=10**12),
                num_gpu=num_gpu,
                gpu_milli=gpu_milli,
                gpu_spec=_spec(path, line, row),
                creation_time=_time(path, line, row, "creation_time"),
                deletion_time=_time(path, line, row, "deletion_time"),
            )
        )
    if not pods:
        raise OpenbFormatError(f"{path}: no pods")
    return pods


def total_gpus(nodes: Iterable[OpenbNode]) -> int:
    """Number of GPUs in a node list."""
    return sum(n.gpus for n in nodes)
