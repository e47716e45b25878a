"""The cluster state as Prometheus text, rendered a slice of nodes at a time.

One series per device (``gpuscale_extender_gpu_free_mib{node, gpu}``) was 40,000 series and
2.6 MB at 5,000 nodes × 8 GPUs, rendered in one synchronous pass that held verbs for up to
600 ms. By default the devices are summed per GPU model instead (a handful of series at any
cluster size); the per-device family is opt-in (``--per-device-metrics``). Either way the nodes
are visited ``slice_nodes`` at a time with the event loop let run in between, so a scrape
delays a verb by one slice at most.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from extender.fit import NodeGpus
from extender.model import NodeInfo
from extender.state import ClusterState

SLICE_NODES: Final = 200
"""Nodes visited between two returns to the event loop (~1 ms of work)."""
SLICE_PODS: Final = 20_000
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


@dataclass(slots=True)
class _Model:
    gpus: int = 0
    idle: int = 0
    free_mib: int = 0
    total_mib: int = 0


@dataclass(slots=True)
class _Totals:
    models: dict[str, _Model] = field(default_factory=dict)
    nodes_known: int = 0
    nodes_unknown: int = 0
    device_lines: list[str] = field(default_factory=list)

    def add(self, name: str, node: NodeInfo, gpus: NodeGpus | str, per_device: bool) -> None:
        if not isinstance(gpus, NodeGpus):
            self.nodes_unknown += 1
            return
        self.nodes_known += 1
        model = node_model(node)
        if model not in self.models and len(self.models) >= MAX_MODELS:
            model = OTHER_MODEL
        m = self.models.setdefault(model, _Model())
        for d in gpus.devices:
            m.gpus += 1
            m.idle += d.idle
            m.free_mib += d.free_mib
            m.total_mib += d.total_mib
        if per_device:
            prefix = f'gpuscale_extender_gpu_free_mib{{node="{_escape(name)}",gpu="'
            self.device_lines.extend(f'{prefix}{d.index}"}} {d.free_mib}' for d in gpus.devices)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(name: str, help_: str, samples: Iterable[str]) -> list[str]:
    return [f"# HELP {name} {help_}", f"# TYPE {name} gauge", *samples]


async def render(
    state: ClusterState,
    now: float,
    *,
    per_device: bool = False,
    slice_nodes: int = SLICE_NODES,
    slice_pods: int = SLICE_PODS,
) -> bytes:
    """Prometheus text (format 0.0.4) for the state gauges; yields to the event loop after every
    ``slice_nodes`` nodes and ``slice_pods`` pods. A node deleted meanwhile is skipped."""
    totals = _Totals()
    names = sorted(state.nodes)
    for k, name in enumerate(names):
        if k and k % slice_nodes == 0:
            await asyncio.sleep(0)
        node = state.nodes.get(name)
        if node is not None:
            totals.add(name, node, state.gpus(name, now), per_device)
    pending = 0
    pods = list(state.pods.values())
    for k in range(0, len(pods), slice_pods):
        if k:
            await asyncio.sleep(0)
        pending += sum(1 for p in pods[k : k + slice_pods] if p.gpu is not None and not p.node_name)
    models = sorted(totals.models.items())

    def by_model(attr: str) -> list[str]:
        return [f'{{model="{_escape(m)}"}} {getattr(v, attr)}' for m, v in models]

    lines: list[str] = []
    for name, attr, help_ in (
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
        lines += _family(name, help_, (name + s for s in by_model(attr)))
    lines += _family(
        "gpuscale_extender_nodes",
        "Nodes by whether their GPU state is known (unknown: no or stale inventory).",
        [
            f'gpuscale_extender_nodes{{gpu_state="known"}} {totals.nodes_known}',
            f'gpuscale_extender_nodes{{gpu_state="unknown"}} {totals.nodes_unknown}',
        ],
    )
    if per_device:
        lines += _family(
            "gpuscale_extender_gpu_free_mib",
            "GPU memory free for new pods (after use, running pods and reservations), MiB.",
            totals.device_lines,
        )
    lines += _family(
        "gpuscale_extender_reservations",
        "Reservations holding GPU memory for pods not yet visible.",
        [f"gpuscale_extender_reservations {len(state.reservations)}"],
    )
    lines += _family(
        "gpuscale_extender_pending_gpu_pods",
        "Pods asking for GPUs that are not bound to a node yet (nodeCacheCapable mode).",
        [f"gpuscale_extender_pending_gpu_pods {pending}"],
    )
    return ("\n".join(lines) + "\n").encode()
