"""One ``autoscaling/v2`` HPA per policy, which follows our external metric exactly.

The HPA target is ``AverageValue: "1"`` on ``gpuscale_desired_replicas``, so the HPA's own
computation ``ceil(value / 1)`` reproduces our count. Our behavior rules already ran in
:mod:`policies`, so the HPA's behavior is made permissive (no stabilization, large rate limits)
lest the same window apply twice.

Tolerance: the HPA ignores ratios within 10 % by default, which at 10+ replicas swallows a ±1
change. ``behavior.*.tolerance: 0`` turns that off on servers with HPAConfigurableTolerance
(beta and on by default from Kubernetes 1.35). We detect support from the server's version
(``/version`` ≥ 1.35); on older servers we leave the field out (it would be dropped anyway),
and a change of under 10 % of the current count then waits until the error grows.

Ownership: we create HPAs with the label ``app.kubernetes.io/managed-by: gpuscale`` and an
owner reference (``controller: true``) to the policy ConfigMap. An existing HPA of the same name
without both is left alone and reported. When a policy goes away, Kubernetes' garbage collector
deletes its HPA through the owner reference; the controller also deletes it at once, guarded by
a UID precondition, so a rename does not leave a stale HPA running for minutes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from autoscaler.external_metrics import METRIC, POLICY_LABEL, VARIANT_LABEL
from policies.schema import ReplicaBounds, ScalingPolicy, TargetRef
from runtime.kube import KubeError, call, metadata

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "gpuscale"
NAME_PREFIX = "gpuscale-"
PERMISSIVE_PERIOD = 15
PERMISSIVE_PERCENT = 1000
PERMISSIVE_PODS = 1000
TOLERANCE_MIN_VERSION = (1, 35)

log = logging.getLogger(__name__)


def hpa_name(policy_name: str, variant: str = "") -> str:
    """``gpuscale-<policy>``, or ``gpuscale-<policy>-<variant>`` for each variant's own HPA."""
    return f"{NAME_PREFIX}{policy_name}-{variant}" if variant else f"{NAME_PREFIX}{policy_name}"


def _permissive_rules(tolerance: bool) -> dict[str, Any]:
    rules: dict[str, Any] = {
        "stabilizationWindowSeconds": 0,
        "selectPolicy": "Max",
        "policies": [
            {"type": "Percent", "value": PERMISSIVE_PERCENT, "periodSeconds": PERMISSIVE_PERIOD},
            {"type": "Pods", "value": PERMISSIVE_PODS, "periodSeconds": PERMISSIVE_PERIOD},
        ],
    }
    if tolerance:
        rules["tolerance"] = "0"
    return rules


def build_hpa(policy: ScalingPolicy, configmap_uid: str, *, tolerance: bool) -> dict[str, Any]:
    """The HPA object we want for a one-target ``policy``, owned by its ConfigMap."""
    return _hpa(policy, "", policy.target, policy.replicas, configmap_uid, tolerance)


def build_hpas(
    policy: ScalingPolicy, configmap_uid: str, *, tolerance: bool
) -> list[dict[str, Any]]:
    """Every HPA ``policy`` needs: its one, or one per variant, each reading its variant's count
    (the External metric pinned by both the policy and the variant label)."""
    if policy.variants is None:
        return [build_hpa(policy, configmap_uid, tolerance=tolerance)]
    return [
        _hpa(policy, t.name, t.target, t.replicas, configmap_uid, tolerance)
        for t in policy.variants.targets
    ]


def _hpa(
    policy: ScalingPolicy,
    variant: str,
    target: TargetRef,
    bounds: ReplicaBounds,
    configmap_uid: str,
    tolerance: bool,
) -> dict[str, Any]:
    labels = {POLICY_LABEL: policy.name}
    if variant:
        labels[VARIANT_LABEL] = variant
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            "name": hpa_name(policy.name, variant),
            "namespace": policy.namespace,
            "labels": {MANAGED_BY: MANAGER, **labels},
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "name": policy.name,
                    "uid": configmap_uid,
                    "controller": True,
                    "blockOwnerDeletion": False,
                }
            ],
        },
        "spec": {
            "scaleTargetRef": {
                "apiVersion": target.api_version,
                "kind": target.kind,
                "name": target.name,
            },
            "minReplicas": bounds.min,
            "maxReplicas": bounds.max,
            "metrics": [
                {
                    "type": "External",
                    "external": {
                        "metric": {"name": METRIC, "selector": {"matchLabels": labels}},
                        "target": {"type": "AverageValue", "averageValue": "1"},
                    },
                }
            ],
            "behavior": {
                "scaleUp": _permissive_rules(tolerance),
                "scaleDown": _permissive_rules(tolerance),
            },
        },
    }


def owned_by(obj: Mapping[str, Any], configmap_uid: str | None = None) -> bool:
    """True when ``obj`` carries our label and a controller reference to a ConfigMap (``uid``)."""
    meta = metadata(obj)
    labels = meta.get("labels") or {}
    if labels.get(MANAGED_BY) != MANAGER:
        return False
    for ref in meta.get("ownerReferences") or ():
        if ref.get("kind") == "ConfigMap" and ref.get("controller"):
            return configmap_uid is None or ref.get("uid") == configmap_uid
    return False


def covers(actual: Any, wanted: Any) -> bool:
    """True when every field we set in ``wanted`` has the same value in ``actual``.

    The server adds defaults and status; those do not count as a difference.
    """
    if isinstance(wanted, Mapping):
        return isinstance(actual, Mapping) and all(
            k in actual and covers(actual[k], v) for k, v in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(wanted)
            and all(covers(a, w) for a, w in zip(actual, wanted, strict=True))
        )
    if isinstance(wanted, str) or isinstance(actual, str):
        return str(actual) == str(wanted)
    return bool(actual == wanted)


def without_tolerance(body: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` minus the tolerance fields, to compare with a server that dropped them."""
    copy = dict(body)
    spec = dict(copy["spec"])
    behavior = {
        k: {f: v for f, v in r.items() if f != "tolerance"} for k, r in spec["behavior"].items()
    }
    spec["behavior"] = behavior
    copy["spec"] = spec
    return copy


_VERSION = re.compile(r"v?(\d+)\.(\d+)")


def supports_tolerance(version: Mapping[str, Any]) -> bool:
    """From a ``/version`` answer: ``major``/``minor`` (``"35+"`` on some distributions)."""
    try:
        major = int(str(version.get("major", "")).rstrip("+"))
        minor = int(str(version.get("minor", "")).rstrip("+"))
    except ValueError:
        match = _VERSION.match(str(version.get("gitVersion", "")))
        if match is None:
            return False
        major, minor = int(match[1]), int(match[2])
    return (major, minor) >= TOLERANCE_MIN_VERSION


class NotOurs(Exception):
    """An HPA with our name exists and someone else owns it; we leave it alone."""


@dataclass(frozen=True, slots=True)
class Outcome:
    action: str
    """``created``, ``replaced``, ``unchanged`` or ``deleted``/``absent``."""
    resource_version: str


class HpaReconciler:
    """Create, replace and delete our HPAs through ``AutoscalingV2Api`` (``kubernetes.aio``)."""

    def __init__(self, api: Any, *, tolerance: bool, attempts: int = 5) -> None:
        self._api = api
        self.tolerance = tolerance
        self._attempts = attempts

    async def ensure(self, policy: ScalingPolicy, configmap_uid: str) -> Outcome:
        """Make a one-target policy's HPA match it (see :meth:`ensure_all`)."""
        return await self._ensure(
            policy, build_hpa(policy, configmap_uid, tolerance=self.tolerance)
        )

    async def ensure_all(self, policy: ScalingPolicy, configmap_uid: str) -> list[Outcome]:
        """Every HPA the policy needs (one, or one per variant), then delete the ones of ours
        it no longer needs (a variant removed, or a switch to or from variants)."""
        wanted = build_hpas(policy, configmap_uid, tolerance=self.tolerance)
        outcomes = [await self._ensure(policy, body) for body in wanted]
        names = {body["metadata"]["name"] for body in wanted}
        outcomes += await self._delete_others(policy.namespace, policy.name, names, configmap_uid)
        return outcomes

    async def _delete_others(
        self, namespace: str, policy_name: str, keep: set[str], configmap_uid: str | None
    ) -> list[Outcome]:
        """Delete our HPAs of ``policy_name`` (found by its label) not named in ``keep``."""
        found = await call(
            self._api.list_namespaced_horizontal_pod_autoscaler,
            namespace,
            label_selector=f"{MANAGED_BY}={MANAGER},{POLICY_LABEL}={policy_name}",
        )
        outcomes = []
        for obj in found.get("items") or ():
            name = str(metadata(obj).get("name", ""))
            if name in keep or not owned_by(obj, configmap_uid):
                continue
            outcomes.append(await self._delete_named(namespace, name, configmap_uid))
        return outcomes

    async def _ensure(self, policy: ScalingPolicy, wanted: dict[str, Any]) -> Outcome:
        """Make one HPA match ``wanted``; re-read and retry when an update hits 409 Conflict."""
        name, namespace = wanted["metadata"]["name"], policy.namespace
        for _ in range(self._attempts):
            try:
                current = await call(
                    self._api.read_namespaced_horizontal_pod_autoscaler, name, namespace
                )
            except KubeError as exc:
                if not exc.not_found:
                    raise
                try:
                    created = await call(
                        self._api.create_namespaced_horizontal_pod_autoscaler, namespace, wanted
                    )
                except KubeError as exc2:
                    if exc2.conflict:
                        continue
                    raise
                return Outcome("created", str(metadata(created).get("resourceVersion", "")))
            if not owned_by(current):
                raise NotOurs(
                    f"HorizontalPodAutoscaler {namespace}/{name} exists and is not managed by"
                    f" gpuscale (no {MANAGED_BY}={MANAGER} label and ConfigMap owner); left alone"
                )
            rv = str(metadata(current).get("resourceVersion", ""))
            if self._matches(current, wanted):
                return Outcome("unchanged", rv)
            body = dict(wanted)
            body["metadata"] = dict(wanted["metadata"], resourceVersion=rv)
            try:
                replaced = await call(
                    self._api.replace_namespaced_horizontal_pod_autoscaler, name, namespace, body
                )
            except KubeError as exc:
                if exc.conflict:
                    log.info(
                        "hpa update conflict; re-reading",
                        extra={"policy": policy.key, "hpa": name},
                    )
                    continue
                raise
            return Outcome("replaced", str(metadata(replaced).get("resourceVersion", "")))
        raise KubeError(
            409, "Conflict", {"message": f"gave up on {namespace}/{name} after conflicts"}
        )

    def _matches(self, current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
        if covers(current, wanted):
            return True
        if self.tolerance and covers(current, without_tolerance(wanted)):
            self.tolerance = False
            log.warning("server dropped behavior tolerance; HPA keeps its default 10% tolerance")
            return True
        return False

    async def delete(self, namespace: str, policy_name: str, configmap_uid: str | None) -> Outcome:
        """Delete our HPA for a policy that went away; never one we do not own."""
        return await self._delete_named(namespace, hpa_name(policy_name), configmap_uid)

    async def delete_all(
        self, namespace: str, policy_name: str, configmap_uid: str | None
    ) -> list[Outcome]:
        """Delete every HPA of ours for a policy that went away (its variants' too)."""
        return await self._delete_others(namespace, policy_name, set(), configmap_uid)

    async def _delete_named(self, namespace: str, name: str, configmap_uid: str | None) -> Outcome:
        try:
            current = await call(
                self._api.read_namespaced_horizontal_pod_autoscaler, name, namespace
            )
        except KubeError as exc:
            if exc.not_found:
                return Outcome("absent", "")
            raise
        if not owned_by(current, configmap_uid):
            return Outcome("absent", "")
        uid = metadata(current).get("uid")
        body = {"preconditions": {"uid": uid}} if uid else None
        try:
            await call(
                self._api.delete_namespaced_horizontal_pod_autoscaler, name, namespace, body=body
            )
        except KubeError as exc:
            if exc.not_found:
                return Outcome("absent", "")
            raise
        return Outcome("deleted", "")
