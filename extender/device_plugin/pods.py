"""Read the pods bound to a node into :class:`PendingPod` (pure: JSON in, data out).

The GPU need comes from :func:`extender.decode.pod_from_json` (the extender's own reading, so the
plugin hands out the memory the extender accounted); per-container device counts are counted the
way the kubelet allocates them, container by container.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from extender.decode import BadRequest, pod_from_json
from extender.device_plugin.matching import GpuContainer, PendingPod
from extender.need import ContainerResources, NeedError, pod_total
from extender.objects import GPU_RESOURCE


class PodError(ValueError):
    """A pod that carries the annotation but cannot be read; the message names the field."""


def _containers(spec: Mapping[str, Any], key: str, *, init: bool) -> list[GpuContainer]:
    out = []
    items = spec.get(key) or []
    if not isinstance(items, list):
        raise PodError(f"spec.{key}: expected a list")
    for i, c in enumerate(items):
        if not isinstance(c, dict):
            raise PodError(f"spec.{key}[{i}]: expected an object")
        res = c.get("resources") or {}
        requests = res.get("requests") or {} if isinstance(res, dict) else {}
        limits = res.get("limits") or {} if isinstance(res, dict) else {}
        if not isinstance(requests, dict) or not isinstance(limits, dict):
            raise PodError(f"spec.{key}[{i}].resources: expected objects")
        sidecar = init and c.get("restartPolicy") == "Always"
        try:
            n = pod_total(GPU_RESOURCE, [ContainerResources(str(c.get("name")), requests, limits)])
        except NeedError as exc:
            raise PodError(f"spec.{key}[{i}]: {exc}") from None
        if n > 0:
            out.append(GpuContainer(str(c.get("name", "")), n, init=init and not sidecar))
    return out


def _created(meta: Mapping[str, Any]) -> float:
    text = meta.get("creationTimestamp")
    if not isinstance(text, str):
        return 0.0
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def pending_pod(obj: Mapping[str, Any]) -> PendingPod | None:
    """The pod as the matching sees it (``placed`` when it carries the annotation); ``None``
    for pods that are not the plugin's business (no GPU container, finished or being deleted).
    Raises :class:`PodError`."""
    try:
        req = pod_from_json(obj)
    except BadRequest as exc:
        raise PodError(str(exc)) from None
    meta = obj.get("metadata") or {}
    if req.gpu is None or req.terminated:
        return None
    if meta.get("deletionTimestamp"):
        return None
    spec = obj.get("spec") or {}
    containers = _containers(spec, "initContainers", init=True) + _containers(
        spec, "containers", init=False
    )
    if not containers:
        return None
    status = obj.get("status") or {}
    started = bool(status.get("containerStatuses") or status.get("initContainerStatuses")) or (
        req.phase not in ("", "Pending")
    )
    return PendingPod(
        namespace=req.namespace,
        name=req.name,
        uid=req.uid,
        created=_created(meta),
        indices=req.gpu_indices or (),
        mib_per_gpu=req.gpu.mib_per_gpu,
        containers=tuple(containers),
        started=started,
        placed=req.gpu_indices is not None,
    )
