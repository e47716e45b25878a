"""Keep ``controller.kubernetes.io/pod-deletion-cost`` on the pods of policies that opt in.

For a policy with ``deletionCost``, each of the leader's ticks runs its query (requests in flight
per ``pod``, scoped to the policy's namespace like every query), asks
:func:`policies.deletion_cost.plan` which costs changed, and merge-patches at most
``maxWritesPerTick`` pods in the policy's namespace. What was written is remembered per policy,
so an unchanged cost is never rewritten (after a restart or a leader change each pod is written
once more). A pod that is gone (404) is not patched again while its series lasts; any other API
error ends the tick's writes, and they are retried on the next tick. Patching pods needs RBAC
that the default install does not grant (``deploy/components/pod-deletion-cost``, or the
chart's ``controller.podDeletionCost: true``); without it the patches fail with 403, which is
logged, and nothing else changes.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from autoscaler.prometheus import ByLabel, Missing
from policies.deletion_cost import ANNOTATION, plan
from policies.schema import DeletionCost
from runtime.kube import KubeError, call

log = logging.getLogger(__name__)


class VectorQuerier(Protocol):
    async def query_by(self, promql: str, label: str, tenant: str = "") -> ByLabel | Missing: ...


class DeletionCosts:
    """``await update(key, namespace, spec)`` once per tick of a policy with ``deletionCost``."""

    def __init__(self, core_api: Any, querier: VectorQuerier) -> None:
        self._api = core_api
        self._querier = querier
        self._written: dict[str, dict[str, int]] = {}
        self.patches = 0
        """Pod patches sent (for tests and the log)."""

    def forget(self, key: str) -> None:
        self._written.pop(key, None)

    async def update(self, key: str, namespace: str, spec: DeletionCost) -> str | None:
        """Write this tick's changed costs; the error that stopped it, if any."""
        observed = await self._querier.query_by(spec.query, "pod", namespace)
        if isinstance(observed, Missing):
            return self._failed(key, f"deletionCost.query: {observed.reason}")
        written = self._written.setdefault(key, {})
        for pod in [p for p in written if p not in observed]:
            del written[pod]  # gone from the query: the pod went away
        for w in plan(observed, written, spec.max_writes_per_tick):
            patch = {"metadata": {"annotations": {ANNOTATION: str(w.cost)}}}
            try:
                await call(
                    self._api.patch_namespaced_pod,
                    w.pod,
                    namespace,
                    patch,
                    _content_type="application/merge-patch+json",
                )
            except KubeError as exc:
                if exc.not_found:  # a series outlives its pod briefly: do not retry each tick
                    written[w.pod] = w.cost
                    continue
                return self._failed(key, f"pod {namespace}/{w.pod}: {exc}")
            except (OSError, TimeoutError) as exc:
                return self._failed(key, f"pod {namespace}/{w.pod}: {exc}")
            self.patches += 1
            written[w.pod] = w.cost
        return None

    def _failed(self, key: str, error: str) -> str:
        log.warning("pod deletion costs not written", extra={"policy": key, "error": error})
        return error
