"""What ``gpuscale status`` shows: each ScalingPolicy as the controller last reported it.

Read only from what the controller writes to the API server, so it works from any laptop with a
kubeconfig: the ``gpuscale.io/status`` annotation (state, desired/current, winner, missing
metrics, errors), the HPA it owns (the replica count the HPA sees and whether it can read our
metric) and the Warning Events on the policy ConfigMap. :func:`policy_rows` is pure;
:func:`fetch_rows` does the three LIST calls.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from autoscaler.feedback import STATUS_ANNOTATION, status_from_annotation
from autoscaler.hpa import MANAGED_BY, MANAGER, hpa_name
from autoscaler.states import HOLDING, PolicyState
from policies.parse import NotAPolicy, PolicyError, parse_configmap
from policies.schema import POLICY_LABEL
from runtime.kube import call, metadata

REQUEST_TIMEOUT = 15.0


@dataclass(frozen=True, slots=True)
class PolicyRow:
    namespace: str
    name: str
    target: str
    """``Kind/name`` of the scaled workload; ``-`` when the policy cannot be read."""
    state: PolicyState
    """As the annotation says (the shared vocabulary, ``autoscaler/states.py``), or ``Pending``."""
    detail: str
    """The annotation's state, or why there is none (``no status yet``)."""
    desired: int | None
    current: int | None
    winner: str | None
    missing: tuple[str, ...]
    last_error: str | None
    reason: str
    since: str | None
    hpa: str | None
    """Name of the HPA the controller owns for this policy, when it exists."""
    unschedulable: int = 0
    """The target's pods with no room in the cluster, as the annotation says."""
    slo_unreachable: tuple[str, ...] = ()
    """Metrics whose latency bound no replica count meets, as the annotation says."""

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "target": self.target,
            "state": self.state,
            "controllerState": self.detail,
            "desiredReplicas": self.desired,
            "currentReplicas": self.current,
            "winningMetric": self.winner,
            "missingMetrics": list(self.missing),
            "lastError": self.last_error,
            "reason": self.reason,
            "since": self.since,
            "hpa": self.hpa,
            "unschedulablePods": self.unschedulable,
            "sloUnreachable": list(self.slo_unreachable),
        }


def _time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _event_time(event: Mapping[str, Any]) -> datetime | None:
    for key in ("lastTimestamp", "eventTime", "firstTimestamp"):
        t = _time(event.get(key))
        if t is not None:
            return t
    return _time(metadata(event).get("creationTimestamp"))


def _target_text(configmap: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    """``Kind/name`` and the parse errors of the policy in ``configmap``."""
    try:  # LIST items come without kind/apiVersion
        policy = parse_configmap({**configmap, "apiVersion": "v1", "kind": "ConfigMap"})
    except PolicyError as exc:
        errors = tuple(f"{e.path}: {e.message}" for e in exc.errors)
        return "-", errors
    except NotAPolicy as exc:
        return "-", (str(exc),)
    return f"{policy.target.kind}/{policy.target.name}", ()


def _hpa_problem(hpa: Mapping[str, Any]) -> str | None:
    """A false ``AbleToScale``/``ScalingActive`` condition: the HPA cannot act on our count."""
    status = hpa.get("status")
    conditions = status.get("conditions") if isinstance(status, Mapping) else None
    for c in conditions if isinstance(conditions, list) else []:
        if (
            isinstance(c, Mapping)
            and c.get("type") in ("AbleToScale", "ScalingActive")
            and c.get("status") == "False"
        ):
            return f"HPA {c.get('type')}=False: {c.get('reason', '')}: {c.get('message', '')}"
    return None


def policy_row(
    configmap: Mapping[str, Any],
    hpa: Mapping[str, Any] | None,
    warnings: Iterable[Mapping[str, Any]],
) -> PolicyRow:
    """One row from a policy ConfigMap, the HPA named for it (if any) and its Warning Events."""
    meta = metadata(configmap)
    namespace = str(meta.get("namespace") or "default")
    name = str(meta.get("name") or "")
    target, parse_errors = _target_text(configmap)
    annotations = meta.get("annotations")
    text = annotations.get(STATUS_ANNOTATION) if isinstance(annotations, Mapping) else None
    status = status_from_annotation(text) if isinstance(text, str) else None
    since = None
    if isinstance(text, str) and status is not None:
        since = str(_annotation_field(text, "since") or "") or None
    hpa_status = hpa.get("status") if hpa is not None else None
    hpa_current = hpa_status.get("currentReplicas") if isinstance(hpa_status, Mapping) else None

    if status is None:
        state: PolicyState = "Invalid" if parse_errors else "Pending"
        detail = "no status yet" if text is None else "unreadable status annotation"
        reason = (
            "the controller has not reported on this policy (is it running, and leading?)"
            if text is None
            else "the gpuscale.io/status annotation is not what the controller writes"
        )
        desired = current = None
        winner = None
        missing: tuple[str, ...] = ()
        errors = parse_errors
    else:
        state = status.state
        detail = status.state
        reason = status.reason
        desired, current = status.desired_replicas, status.current_replicas
        winner, missing = status.winner, status.metrics_missing
        errors = status.errors or parse_errors
    if isinstance(hpa_current, int) and not isinstance(hpa_current, bool):
        current = hpa_current

    last_error: str | None = None
    if errors:
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        last_error = errors[0] + more
    elif state in HOLDING or state == "CapacityLimited":
        last_error = reason
    else:
        hpa_problem = _hpa_problem(hpa) if hpa is not None else None
        if hpa_problem is not None:
            last_error = hpa_problem
        else:
            newest = _newest_warning(warnings, after=_time(since))
            if newest is not None:
                last_error = f"{newest.get('reason', '')}: {newest.get('message', '')}"
    return PolicyRow(
        namespace=namespace,
        name=name,
        target=target,
        state=state,
        detail=detail,
        desired=desired,
        current=current,
        winner=winner,
        missing=missing,
        last_error=last_error,
        reason=reason,
        since=since,
        hpa=str(metadata(hpa).get("name")) if hpa is not None else None,
        unschedulable=status.unschedulable if status is not None else 0,
        slo_unreachable=status.slo_unreachable if status is not None else (),
    )


def _annotation_field(text: str, key: str) -> Any:
    try:
        body = json.loads(text)
    except ValueError:
        return None
    return body.get(key) if isinstance(body, dict) else None


def _newest_warning(
    events: Iterable[Mapping[str, Any]], *, after: datetime | None
) -> Mapping[str, Any] | None:
    """The latest Warning Event, if it came after the status last changed (``after``)."""
    best: tuple[datetime, Mapping[str, Any]] | None = None
    for e in events:
        if e.get("type") != "Warning":
            continue
        t = _event_time(e)
        if t is None or (after is not None and t < after):
            continue
        if best is None or t > best[0]:
            best = (t, e)
    return best[1] if best is not None else None


def policy_rows(
    configmaps: Iterable[Mapping[str, Any]],
    hpas: Iterable[Mapping[str, Any]],
    events: Iterable[Mapping[str, Any]],
) -> list[PolicyRow]:
    """Rows for every policy ConfigMap, sorted by namespace and name."""
    by_hpa = {
        (str(metadata(h).get("namespace") or "default"), str(metadata(h).get("name"))): h
        for h in hpas
    }
    warnings: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for e in events:
        obj = e.get("involvedObject") or e.get("regarding")
        if isinstance(obj, Mapping) and obj.get("kind") == "ConfigMap":
            ns = str(obj.get("namespace") or metadata(e).get("namespace") or "default")
            warnings.setdefault((ns, str(obj.get("name"))), []).append(e)
    rows = []
    for cm in configmaps:
        meta = metadata(cm)
        ns, name = str(meta.get("namespace") or "default"), str(meta.get("name") or "")
        rows.append(policy_row(cm, by_hpa.get((ns, hpa_name(name))), warnings.get((ns, name), ())))
    return sorted(rows, key=lambda r: (r.namespace, r.name))


async def fetch_rows(api_client: Any, namespace: str | None) -> list[PolicyRow]:
    """LIST policy ConfigMaps, our HPAs and ConfigMap Events (in ``namespace``, or all) and
    build the rows. Raises :class:`autoscaler.kube.KubeError` or the client's network errors."""
    from kubernetes.aio import client

    core = client.CoreV1Api(api_client)
    autoscaling = client.AutoscalingV2Api(api_client)
    policies = f"{POLICY_LABEL}=true"
    ours = f"{MANAGED_BY}={MANAGER}"
    events = "involvedObject.kind=ConfigMap"
    timeout = {"_request_timeout": REQUEST_TIMEOUT}
    if namespace is None:
        calls = (
            call(core.list_config_map_for_all_namespaces, label_selector=policies, **timeout),
            call(
                autoscaling.list_horizontal_pod_autoscaler_for_all_namespaces,
                label_selector=ours,
                **timeout,
            ),
            call(core.list_event_for_all_namespaces, field_selector=events, **timeout),
        )
    else:
        calls = (
            call(core.list_namespaced_config_map, namespace, label_selector=policies, **timeout),
            call(
                autoscaling.list_namespaced_horizontal_pod_autoscaler,
                namespace,
                label_selector=ours,
                **timeout,
            ),
            call(core.list_namespaced_event, namespace, field_selector=events, **timeout),
        )
    configmaps, hpas, event_list = await asyncio.gather(*calls)
    return policy_rows(
        _items(configmaps, namespace), _items(hpas, namespace), _items(event_list, namespace)
    )


def _items(listing: Mapping[str, Any], namespace: str | None) -> list[Mapping[str, Any]]:
    """The items of a LIST answer, each with its namespace."""
    items = listing.get("items")
    out = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, Mapping):
            if namespace is not None and not metadata(item).get("namespace"):
                item = {**item, "metadata": {**metadata(item), "namespace": namespace}}
            out.append(item)
    return out
