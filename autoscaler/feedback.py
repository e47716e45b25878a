"""What the operator sees: Events on the policy ConfigMap and its ``gpuscale.io/status``.

Both are written by the leader only, and only when their content changes: an Event when the
desired count changes or a policy turns invalid, the annotation when state, count, reason or
errors change. A decision repeated every tick writes nothing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from autoscaler.states import POLICY_STATES, PolicyState
from runtime.kube import KubeError, call, metadata

STATUS_ANNOTATION = "gpuscale.io/status"
COMPONENT = "gpuscale-controller"

StatusState = PolicyState
"""Written by the controller; never ``Pending`` (that is the absence of a status)."""

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class VariantStatus:
    """One variant's share of the mix (a policy with ``variants:``)."""

    name: str
    desired_replicas: int
    current_replicas: int
    unschedulable: int = 0

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name,
            "desiredReplicas": self.desired_replicas,
            "currentReplicas": self.current_replicas,
        }
        if self.unschedulable:
            body["unschedulablePods"] = self.unschedulable
        return body


@dataclass(frozen=True, slots=True)
class PolicyStatus:
    """The annotation's content, minus its ``since`` time (which must not force a write)."""

    state: StatusState
    reason: str
    desired_replicas: int | None = None
    current_replicas: int | None = None
    winner: str | None = None
    metrics_missing: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    running_resource_version: str | None = None
    """With ``Invalid``: the ConfigMap version whose policy still runs (the last good one)."""
    unschedulable: int = 0
    """The target's pods the scheduler has no room for (``CapacityLimited`` while above 0)."""
    slo_unreachable: tuple[str, ...] = ()
    """Metrics whose latency bound no replica count meets (sized near their floor instead)."""
    variants: tuple[VariantStatus, ...] = ()
    """The mix, per variant; the counts above are then its sums."""

    def signature(self) -> tuple[object, ...]:
        """What must change for a rewrite: everything but ``reason``.

        Reasons carry live numbers (``latency 1.73s``); rewriting the annotation for each would
        cost one API write per policy per tick. The reason kept is the one of the last change.
        """
        return (
            self.state,
            self.desired_replicas,
            self.current_replicas,
            self.winner,
            self.metrics_missing,
            self.errors,
            self.running_resource_version,
            self.unschedulable,
            self.slo_unreachable,
            self.variants,
        )

    def to_json(self, since: float) -> str:
        body: dict[str, Any] = {"state": self.state, "reason": self.reason}
        if self.desired_replicas is not None:
            body["desiredReplicas"] = self.desired_replicas
        if self.current_replicas is not None:
            body["currentReplicas"] = self.current_replicas
        if self.winner is not None:
            body["winner"] = self.winner
        if self.metrics_missing:
            body["metricsMissing"] = list(self.metrics_missing)
        if self.errors:
            body["errors"] = list(self.errors)
        if self.running_resource_version is not None:
            body["runningResourceVersion"] = self.running_resource_version
        if self.unschedulable:
            body["unschedulablePods"] = self.unschedulable
        if self.slo_unreachable:
            body["sloUnreachable"] = list(self.slo_unreachable)
        if self.variants:
            body["variants"] = [v.to_json() for v in self.variants]
        body["since"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since))
        return json.dumps(body, sort_keys=True, separators=(",", ":"))


def status_from_annotation(text: str | None) -> PolicyStatus | None:
    """Read back what we wrote, so a new leader does not rewrite an unchanged status."""
    if not text:
        return None
    try:
        body = json.loads(text)
        if body["state"] not in POLICY_STATES:
            return None
        return PolicyStatus(
            state=body["state"],
            reason=body["reason"],
            desired_replicas=body.get("desiredReplicas"),
            current_replicas=body.get("currentReplicas"),
            winner=body.get("winner"),
            metrics_missing=tuple(body.get("metricsMissing", ())),
            errors=tuple(body.get("errors", ())),
            running_resource_version=body.get("runningResourceVersion"),
            unschedulable=int(body.get("unschedulablePods", 0)),
            slo_unreachable=tuple(body.get("sloUnreachable", ())),
            variants=tuple(
                VariantStatus(
                    v["name"],
                    int(v["desiredReplicas"]),
                    int(v["currentReplicas"]),
                    int(v.get("unschedulablePods", 0)),
                )
                for v in body.get("variants", ())
            ),
        )
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True, slots=True)
class ConfigMapRef:
    namespace: str
    name: str
    uid: str

    @staticmethod
    def of(obj: Mapping[str, Any]) -> ConfigMapRef:
        meta = metadata(obj)
        return ConfigMapRef(
            str(meta.get("namespace") or "default"),
            str(meta.get("name", "")),
            str(meta.get("uid", "")),
        )


class Feedback:
    """Writes Events (``core/v1``) and the status annotation, deduplicated per policy."""

    def __init__(self, core_api: Any, *, identity: str, wall: Any = time.time) -> None:
        self._api = core_api
        self._identity = identity
        self._wall = wall
        self._status: dict[str, PolicyStatus] = {}
        self._events: dict[tuple[str, str], str] = {}

    def forget(self, key: str) -> None:
        self._status.pop(key, None)
        for k in [k for k in self._events if k[0] == key]:
            del self._events[k]

    def last(self, ref: ConfigMapRef, kind: str) -> str | None:
        """The dedup signature of the last Event of ``kind`` for the policy, if any."""
        return self._events.get((f"{ref.namespace}/{ref.name}", kind))

    async def status(
        self, ref: ConfigMapRef, status: PolicyStatus, current_annotation: str | None
    ) -> bool:
        """Write the annotation when its signature differs from what is there; True when written."""
        key = f"{ref.namespace}/{ref.name}"
        known = self._status.get(key)
        if known is None:
            known = status_from_annotation(current_annotation)
        if known is not None and known.signature() == status.signature():
            return False
        patch = {"metadata": {"annotations": {STATUS_ANNOTATION: status.to_json(self._wall())}}}
        await call(
            self._api.patch_namespaced_config_map,
            ref.name,
            ref.namespace,
            patch,
            _content_type="application/merge-patch+json",
        )
        self._status[key] = status
        return True

    async def event(
        self,
        ref: ConfigMapRef,
        *,
        kind: str,
        type_: Literal["Normal", "Warning"],
        reason: str,
        message: str,
        dedup: str | None = None,
    ) -> bool:
        """Record an Event unless the last one of this ``kind`` for the policy said the same.

        ``dedup`` is what must change for a new Event (defaults to the message).
        """
        key = (f"{ref.namespace}/{ref.name}", kind)
        signature = dedup if dedup is not None else message
        if self._events.get(key) == signature:
            return False
        now = self._wall()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{ref.name}.{int(now * 1e9):x}", "namespace": ref.namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "name": ref.name,
                "namespace": ref.namespace,
                "uid": ref.uid,
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": COMPONENT, "host": self._identity},
            "reportingComponent": f"gpuscale.io/{COMPONENT}",
            "reportingInstance": self._identity,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            await call(self._api.create_namespaced_event, ref.namespace, body)
        except KubeError as exc:
            log.warning(
                "event not recorded",
                extra={"policy": key[0], "reason": reason, "error": str(exc)},
            )
            return False
        self._events[key] = signature
        return True
