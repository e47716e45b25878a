"""The pods the scheduler could not place, per namespace, from one watch of Pending pods.

A scale-up whose new pods find no free GPU leaves them ``Pending`` with the condition
``PodScheduled=False, reason Unschedulable``. The decision needs their count per target
(``Snapshot.unschedulable``) so that it does not ask for more of them. One list + watch serves
every policy: pods with ``status.phase=Pending`` (a server-side field selector), cluster-wide or
in ``--namespace``, started with the controller (or by the first count). Only the unschedulable
ones are kept (namespace, name, labels); a pod that gets placed changes its condition
(``MODIFIED``) and then leaves the selection when it runs (``DELETED``), so both drop it.

Cost: the API server sends an event for each change of a Pending pod, i.e. a few per pod start
anywhere in the cluster (created, bound, containers starting, Running); memory is one small
record per unschedulable pod. A tick counts the records of its namespace that the target's
selector matches (no API call). Without RBAC to list pods the watch retries in the background
and every count is 0, which is the behaviour before this existed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autoscaler.selectors import Selector
from runtime.kube import metadata
from runtime.reflector import Reflector, ReflectorSettings

PAGE_SIZE = 500
"""Pods per list request: a relist in a cluster full of Pending pods holds one page at a time."""


def is_unschedulable(pod: Mapping[str, Any]) -> bool:
    """``PodScheduled=False`` with reason ``Unschedulable``: the scheduler found no node for it.

    Not a pod that merely waits its turn (no condition yet) or waits for its scheduling gates
    (reason ``SchedulingGated``): only a pod the cluster has no room for.
    """
    for c in (pod.get("status") or {}).get("conditions") or ():
        if isinstance(c, Mapping) and c.get("type") == "PodScheduled":
            return c.get("status") == "False" and c.get("reason") == "Unschedulable"
    return False


@dataclass(frozen=True, slots=True)
class _Pod:
    namespace: str
    name: str
    labels: Mapping[str, str]


def _decode(pod: Mapping[str, Any]) -> _Pod | None:
    if not is_unschedulable(pod):
        return None
    meta = metadata(pod)
    labels = meta.get("labels") or {}
    return _Pod(
        str(meta.get("namespace") or "default"),
        str(meta.get("name", "")),
        {str(k): str(v) for k, v in labels.items()},
    )


class _Index:
    """Unschedulable pods by namespace, then name."""

    def __init__(self) -> None:
        self.pods: dict[str, dict[str, _Pod]] = {}

    def relisted(self, items: Sequence[_Pod]) -> None:
        self.pods = {}
        for pod in items:
            self.pods.setdefault(pod.namespace, {})[pod.name] = pod

    def event(self, kind: str, obj: Mapping[str, Any]) -> None:
        pod = _decode(obj) if kind != "DELETED" else None
        meta = metadata(obj)
        namespace = str(meta.get("namespace") or "default")
        if pod is not None:
            self.pods.setdefault(namespace, {})[pod.name] = pod
            return
        names = self.pods.get(namespace)
        if names is not None:
            names.pop(str(meta.get("name", "")), None)
            if not names:
                del self.pods[namespace]

    def count(self, namespace: str, selector: Selector) -> int:
        names = self.pods.get(namespace)
        if not names:
            return 0
        return sum(1 for pod in names.values() if selector.matches(pod.labels))


class UnschedulablePods:
    """``count(namespace, selector)``: the unschedulable pods a target's selector matches."""

    def __init__(self, core_api: Any, *, namespace: str | None = None) -> None:
        self._api = core_api
        self._namespace = namespace
        self._index = _Index()
        self._reflector: Reflector | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def listed(self) -> asyncio.Event | None:
        """Set once the first list is in (``None`` before the watch starts)."""
        return self._reflector.listed if self._reflector is not None else None

    def count(self, namespace: str, selector: Selector | None) -> int:
        """0 with no selector (the target's pods are unknown) or before the first list."""
        if self._reflector is None:
            self.start()
        if selector is None or self._reflector is None or not self._reflector.listed.is_set():
            return 0
        return self._index.count(namespace, selector)

    def start(self) -> None:
        """Start the watch (at start-up, so that the first ticks already see the pods)."""
        if self._reflector is not None:
            return
        args: tuple[str, ...] = ()
        if self._namespace:
            method, args = self._api.list_namespaced_pod, (self._namespace,)
        else:
            method = self._api.list_pod_for_all_namespaces
        self._reflector = Reflector(
            method,
            args,
            ReflectorSettings(
                "unschedulable pods", field_selector="status.phase=Pending", page_size=PAGE_SIZE
            ),
            on_relist=self._index.relisted,
            on_event=self._index.event,
            decode=_decode,
        )
        self._task = asyncio.create_task(self._reflector.run(), name="watch pending pods")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
