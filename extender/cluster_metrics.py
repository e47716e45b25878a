"""The cluster state as Prometheus text, rendered a slice of nodes at a time.

One series per device (``gpuscale_extender_gpu_free_mib{node, gpu}``) was 40,000 series and
2.6 MB at 5,000 nodes × 8 GPUs, rendered in one synchronous pass that held verbs for up to
600 ms. By default the devices are summed per GPU model instead (a handful of series at any
cluster size), in one vectorised step over the index's device rows; the per-device family is
opt-in (``--per-device-metrics``). The Python passes over the nodes (their models, the
per-device lines) take ``slice_nodes`` at a time with the event loop let run in between, so a
scrape delays a verb by one slice, not by the whole page.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Final

import numpy as np

from extender.cluster_state import ClusterState
from extender.fit import NodeGpus
from extender.objects import NodeInfo

SLICE_NODES: Final = 200
"""Nodes visited between two returns to the event loop (~1 ms of work)."""
MAX_MODELS: Final = 32
"""Distinct ``model`` label values; more (a node annotation can say anything) count as
``other``."""
FAMILIES: Final = (
    "gpuscale_extender_gpus",
    "gpuscale_extender_gpus_idle",
    "gpuscale_extender_gpu_memory_free_mib",
    "gpuscale_extender_gpu_memory_total_mib",
    "gpuscale_extender_nodes",
    "gpuscale_extender_gpu_free_mib",
    "gpuscale_extender_reservations",
    "gpuscale_extender_pending_gpu_pods",
)
"""Every gauge :func:`render` can write (``gpuscale_extender_gpu_free_mib``: per device only)."""
UNKNOWN_MODEL: Final = "unknown"
OTHER_MODEL: Final = "other"


def node_model(node: NodeInfo) -> str:
    """The GPU model of a node: from its measured devices, else the GFD product label."""
    if node.gpu_report is not None and node.gpu_report.devices:
        return node.gpu_report.devices[0].model or UNKNOWN_MODEL
    return node.labels.get("nvidia.com/gpu.product") or UNKNOWN_MODEL


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(name: str, help_: str, samples: Iterable[str]) -> list[str]:
    return [f"# HELP {name} {help_}", f"# TYPE {name} gauge", *samples]


async def _models(state: ClusterState, slice_nodes: int) -> dict[str, str]:
    """The GPU model of every node, a slice at a time; at most ``MAX_MODELS`` distinct."""
    out: dict[str, str] = {}
    seen: set[str] = set()
    for k, (name, node) in enumerate(list(state.nodes.items())):
        if k and k % slice_nodes == 0:
            await asyncio.sleep(0)
        model = node_model(node)
        if model not in seen:
            if len(seen) >= MAX_MODELS:
                model = OTHER_MODEL
            seen.add(model)
        out[name] = model
    return out


async def _device_lines(state: ClusterState, now: float, slice_nodes: int) -> list[str]:
    lines: list[str] = []
    for k, name in enumerate(sorted(state.nodes)):
        if k and k % slice_nodes == 0:
            await asyncio.sleep(0)
        if name not in state.nodes:  # deleted meanwhile
            continue
        gpus = state.gpus(name, now)
        if isinstance(gpus, NodeGpus):
            prefix = f'gpuscale_extender_gpu_free_mib{{node="{_escape(name)}",gpu="'
            lines.extend(f'{prefix}{d.index}"}} {d.free_mib}' for d in gpus.devices)
    return lines


async def render(
    state: ClusterState,
    now: float,
    *,
    per_device: bool = False,
    slice_nodes: int = SLICE_NODES,
) -> bytes:
    """Prometheus text (format 0.0.4) for the state gauges. The per-model sums are taken in one
    vectorised step over the index the verbs answer from (brought up to date as a verb would);
    what needs a Python pass per node (models, per-device lines) yields to the event loop every
    ``slice_nodes`` nodes."""
    model_of = await _models(state, slice_nodes)
    device_lines = await _device_lines(state, now, slice_nodes) if per_device else []
    index = state.index(now)
    index.refresh_stale(now)  # rows whose measurement turned stale, as a verb would
    labels = sorted({*model_of.values()})
    number = {m: i for i, m in enumerate(labels)}
    ids = np.fromiter(
        (number.get(model_of.get(n, ""), -1) for n in index.names),
        dtype=np.int64,
        count=len(index.names),
    )
    known = ~index.gpu_problem & (ids >= 0)
    ids, n_known = ids[known], int(known.sum())
    sums = {
        "gpus": index.count[known],
        "idle": index.idle[known],
        "free_mib": np.where(index.free_desc >= 0, index.free_desc, 0)[known].sum(axis=1),
        "total_mib": index.total_desc[known].sum(axis=1),
    }
    per_model = {
        key: np.bincount(ids, weights=values, minlength=len(labels)).astype(np.int64).tolist()
        for key, values in sums.items()
    }
    present = np.bincount(ids, minlength=len(labels)).tolist()  # nodes with known GPU state

    lines: list[str] = []
    for name, key, help_ in (
        ("gpuscale_extender_gpus", "gpus", "GPUs known, by model."),
        ("gpuscale_extender_gpus_idle", "idle", "GPUs with nothing on them, by model."),
        (
            "gpuscale_extender_gpu_memory_free_mib",
            "free_mib",
            "GPU memory free for new pods (after use, running pods and reservations), MiB,"
            " summed by model.",
        ),
        ("gpuscale_extender_gpu_memory_total_mib", "total_mib", "GPU memory, MiB, by model."),
    ):
        lines += _family(
            name,
            help_,
            (
                f'{name}{{model="{_escape(m)}"}} {v}'
                for m, v, nodes in zip(labels, per_model[key], present, strict=True)
                if nodes
            ),
        )
    lines += _family(
        "gpuscale_extender_nodes",
        "Nodes by whether their GPU state is known (unknown: no or stale inventory).",
        [
            f'gpuscale_extender_nodes{{gpu_state="known"}} {n_known}',
            f'gpuscale_extender_nodes{{gpu_state="unknown"}} {len(index.names) - n_known}',
        ],
    )
    if per_device:
        lines += _family(
            "gpuscale_extender_gpu_free_mib",
            "GPU memory free for new pods (after use, running pods and reservations), MiB.",
            device_lines,
        )
    lines += _family(
        "gpuscale_extender_reservations",
        "Reservations holding GPU memory for pods not yet visible.",
        [f"gpuscale_extender_reservations {len(state.reservations)}"],
    )
    lines += _family(
        "gpuscale_extender_pending_gpu_pods",
        "Pods asking for GPUs that are not bound to a node yet (nodeCacheCapable mode).",
        [f"gpuscale_extender_pending_gpu_pods {state.pending_gpu_pods()}"],
    )
    return ("\n".join(lines) + "\n").encode()
