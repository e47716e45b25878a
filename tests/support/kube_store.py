"""Objects, resourceVersions, validation and the watch event history of the API stand-in.

`Store` is the state behind `KubeStandIn` (tests/support/kube_standin.py) and the place where the
real server's write semantics live: uid/creationTimestamp/generation, one global monotonically
increasing resourceVersion, 409 AlreadyExists/Conflict, 404 NotFound, 422 Invalid, status
subresource rules, no-op writes that keep the resourceVersion, finalizers, background garbage
collection through ownerReferences, and the bounded history watches resume from (410 once
compacted). Errors are `ApiError`s carrying the exact `Status` body kube-apiserver sends.
"""

from __future__ import annotations

import asyncio
import copy
import re
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.support.kube_patch import PatchError, apply_patch
from tests.support.kube_selectors import make_filter

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ResourceType:
    """One REST resource: where it lives and which subresources it has."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    subresources: frozenset[str] = frozenset()
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        """`plural` for core, `plural.group` otherwise (kubectl's resource.group form)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


RESOURCES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "configmaps", "ConfigMap", True, short_names=("cm",)),
    ResourceType("", "v1", "events", "Event", True, short_names=("ev",)),
    ResourceType("", "v1", "nodes", "Node", False, frozenset({"status"}), ("no",)),
    ResourceType("", "v1", "pods", "Pod", True, frozenset({"status", "binding"}), ("po",)),
    ResourceType("events.k8s.io", "v1", "events", "Event", True, short_names=("ev",)),
    ResourceType(
        "autoscaling",
        "v2",
        "horizontalpodautoscalers",
        "HorizontalPodAutoscaler",
        True,
        frozenset({"status"}),
        ("hpa",),
    ),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease", True),
    ResourceType("apps", "v1", "deployments", "Deployment", True, frozenset({"status", "scale"})),
    ResourceType("apiregistration.k8s.io", "v1", "apiservices", "APIService", False),
    ResourceType("resource.k8s.io", "v1", "resourceslices", "ResourceSlice", False),
    ResourceType(
        "resource.k8s.io", "v1", "resourceclaims", "ResourceClaim", True, frozenset({"status"})
    ),
    ResourceType("resource.k8s.io", "v1", "deviceclasses", "DeviceClass", False),
)
VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUALIFIED_NAME = re.compile(
    r"^([a-z0-9.-]{1,253}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    """Becomes a `Status` response with exactly the fields kube-apiserver sends."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: Obj | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.details = details
        self.headers = dict(headers or {})

    def status(self) -> Obj:
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details is not None:
            body["details"] = self.details
        body["code"] = self.code
        return body


def _qualified(rt: ResourceType) -> str:
    return rt.key


def status_details(rt: ResourceType, name: str) -> Obj:
    d: Obj = {"name": name}
    if rt.group:
        d["group"] = rt.group
    d["kind"] = rt.plural
    return d


def not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(
        404, "NotFound", f'{_qualified(rt)} "{name}" not found', details=status_details(rt, name)
    )


def conflict(rt: ResourceType, name: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {_qualified(rt)} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again",
        details=status_details(rt, name),
    )


def invalid(rt: ResourceType, name: str, causes: list[tuple[str, str]]) -> ApiError:
    text = ", ".join(f"{f}: {m}" for f, m in causes)
    details = status_details(rt, name)
    details["kind"] = rt.kind
    details["causes"] = [
        {"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in causes
    ]
    return ApiError(422, "Invalid", f'{rt.kind} "{name}" is invalid: {text}', details=details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


GENERIC_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


@dataclass(frozen=True, slots=True)
class WatchEvent:
    rv: int
    resource: str
    type: str  # ADDED, MODIFIED, DELETED
    obj: Obj
    prev: Obj | None


@dataclass(eq=False)
class Watcher:
    resource: str
    namespace: str | None
    predicate: Callable[[Mapping[str, Any]], bool]
    queue: asyncio.Queue[WatchEvent | str] = field(default_factory=asyncio.Queue)


def object_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _content(obj: Mapping[str, Any]) -> Obj:
    """Everything a no-op check compares: the object without its resourceVersion."""
    out = copy.deepcopy(dict(obj))
    out.get("metadata", {}).pop("resourceVersion", None)
    out.get("metadata", {}).pop("managedFields", None)
    return out


class Store:
    """Objects, the resourceVersion counter, the event history and the open watches.

    Direct helpers (`create`, `put`, `get`, `list`, `patch`, `delete`) take a resource as its
    plural (`configmaps`), `plural.group` (`horizontalpodautoscalers.autoscaling`) or kind
    (`ConfigMap`), and act exactly as the HTTP API does (watchers see the changes), except `put`,
    which writes an object as given (status included) without concurrency checks.
    """

    def __init__(self, *, history_size: int = 1000, first_rv: int = 100) -> None:
        self.objects: dict[str, dict[tuple[str, str], Obj]] = {rt.key: {} for rt in RESOURCES}
        self.rv = first_rv
        self.history: deque[WatchEvent] = deque(maxlen=history_size)
        self._compacted_rv = first_rv
        self.watchers: set[Watcher] = set()
        self.simulate_controllers = True
        self.hpa_tolerance_supported = True
        self.garbage_collect = True
        self.on_change: Callable[[], None] = lambda: None

    # -- lookups ----------------------------------------------------------------------------
    def resource(self, name: str) -> ResourceType:
        for rt in RESOURCES:
            if name in (rt.key, rt.kind, rt.plural, *rt.short_names):
                return rt
        raise KeyError(f"unknown resource {name!r}")

    def resource_for(self, obj: Mapping[str, Any]) -> ResourceType:
        for rt in RESOURCES:
            if rt.api_version == obj.get("apiVersion") and rt.kind == obj.get("kind"):
                return rt
        raise KeyError(f"no resource for apiVersion={obj.get('apiVersion')} kind={obj.get('kind')}")

    @property
    def oldest_watchable_rv(self) -> int:
        """Watches from a resourceVersion older than this get 410 Gone."""
        if self.history:
            return max(self._compacted_rv, self.history[0].rv - 1)
        return max(self._compacted_rv, self.rv)

    def compact(self) -> None:
        """Forget all history, as etcd compaction does: older watches now get 410."""
        self.history.clear()
        self._compacted_rv = self.rv

    # -- the write path ---------------------------------------------------------------------
    def _bump(self, obj: Obj) -> int:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        return self.rv

    def _emit(self, rt: ResourceType, kind: str, obj: Obj, prev: Obj | None) -> None:
        event = WatchEvent(self.rv, rt.key, kind, copy.deepcopy(obj), prev)
        self.history.append(event)
        for w in list(self.watchers):
            if w.resource == rt.key and (w.namespace is None or w.namespace == object_key(obj)[0]):
                w.queue.put_nowait(event)
        self.on_change()

    def _with_type(self, rt: ResourceType, obj: Obj) -> Obj:
        out = copy.deepcopy(obj)
        out["apiVersion"], out["kind"] = rt.api_version, rt.kind
        return out

    def _finish(self, rt: ResourceType, obj: Obj, old: Obj | None) -> None:
        """Server-side effects that belong to the same write (generation, controllers)."""
        meta = obj["metadata"]
        if "spec" in obj:
            if old is None:
                meta["generation"] = 1
            else:
                gen = int(old["metadata"].get("generation", 1))
                changed = obj.get("spec") != old.get("spec")
                meta["generation"] = gen + 1 if changed else gen
        if rt.kind == "HorizontalPodAutoscaler" and not self.hpa_tolerance_supported:
            for rules in ((obj.get("spec") or {}).get("behavior") or {}).values():
                if isinstance(rules, dict):
                    rules.pop("tolerance", None)
        replicas = (obj.get("spec") or {}).get("replicas", 1)
        rescaled = old is None and not obj.get("status")
        rescaled = rescaled or (
            old is not None and (old.get("spec") or {}).get("replicas", 1) != replicas
        )
        if rt.kind == "Deployment" and self.simulate_controllers and rescaled:
            n = replicas

            obj["status"] = {
                **(obj.get("status") or {}),
                "observedGeneration": meta.get("generation", 1),
                "replicas": n,
                "updatedReplicas": n,
                "readyReplicas": n,
                "availableReplicas": n,
            }

    def insert(self, rt: ResourceType, namespace: str, body: Obj, *, api: bool = True) -> Obj:
        """Create; `api=False` keeps the given status (seeding) instead of resetting it."""
        if not isinstance(body, dict):
            raise bad_request("the body of a create must be a JSON object")
        obj = self._with_type(rt, body)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = str(meta.get("name") or "")
        if rt.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent on "
                    "the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if not name:
            raise invalid(
                rt, name, [("metadata.name", "Required value: name or generateName is required")]
            )
        if (namespace if rt.namespaced else "", name) in self.objects[rt.key]:
            raise ApiError(
                409,
                "AlreadyExists",
                f'{_qualified(rt)} "{name}" already exists',
                details=status_details(rt, name),
            )
        if api and "status" in rt.subresources and rt.kind != "Node":
            obj.pop("status", None)
            if rt.kind == "Pod":
                obj["status"] = {"phase": "Pending"}
        for drop in ("resourceVersion", "deletionTimestamp", "selfLink"):
            meta.pop(drop, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        self._finish(rt, obj, None)
        _validate(rt, obj)
        self._bump(obj)
        self.objects[rt.key][object_key(obj)] = obj
        self._emit(rt, "ADDED", obj, None)
        return copy.deepcopy(obj)

    def lookup(self, rt: ResourceType, namespace: str, name: str) -> Obj:
        obj = self.objects[rt.key].get((namespace if rt.namespaced else "", name))
        if obj is None:
            raise not_found(rt, name)
        return obj

    def update(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        body: Obj,
        *,
        subresource: str | None = None,
        seed: bool = False,
    ) -> Obj:
        """Replace an object (PUT semantics); the status subresource changes only status.

        `seed=True` (tests) skips the resourceVersion check and keeps the given status.
        """
        if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
            raise bad_request("the body of an update must be a JSON object")
        old = self.lookup(rt, namespace, name)
        meta_in = body.get("metadata") or {}
        if meta_in.get("name") not in (None, name):
            raise bad_request(
                f"the name of the object ({meta_in.get('name')}) does not match the name on the "
                f"URL ({name})"
            )
        wanted_rv = meta_in.get("resourceVersion")
        if (
            not seed
            and wanted_rv not in (None, "")
            and str(wanted_rv) != old["metadata"]["resourceVersion"]
        ):
            raise conflict(rt, name)
        if subresource == "status":
            new = copy.deepcopy(old)
            new["status"] = copy.deepcopy(body.get("status"))
        else:
            new = self._with_type(rt, body)
            new.setdefault("metadata", {})
            for keep in (
                "uid",
                "creationTimestamp",
                "namespace",
                "deletionTimestamp",
                "generation",
            ):
                if keep in old["metadata"]:
                    new["metadata"][keep] = old["metadata"][keep]
                else:
                    new["metadata"].pop(keep, None)
            new["metadata"]["name"] = name
            if "status" in rt.subresources and not seed:
                new.pop("status", None)
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
        return self._commit(rt, old, new)

    def _commit(self, rt: ResourceType, old: Obj, new: Obj) -> Obj:
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        self._finish(rt, new, old)
        _validate(rt, new)
        if _content(new) == _content(old):
            return copy.deepcopy(old)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            return self._remove(rt, new)
        self._bump(new)
        self.objects[rt.key][object_key(new)] = new
        self._emit(rt, "MODIFIED", new, copy.deepcopy(old))
        return copy.deepcopy(new)

    def patch_object(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        patch: Any,
        content_type: str,
        *,
        subresource: str | None = None,
    ) -> Obj:
        old = self.lookup(rt, namespace, name)
        try:
            patched = apply_patch(old, patch, content_type)
        except PatchError as e:
            raise ApiError(422, "Invalid", str(e)) from e
        if not isinstance(patched, dict):
            raise bad_request("the patched object is not a JSON object")
        wanted_rv = (patched.get("metadata") or {}).get("resourceVersion")
        if wanted_rv not in (None, "") and str(wanted_rv) != old["metadata"]["resourceVersion"]:
            raise conflict(rt, name)
        if subresource == "status":
            new = copy.deepcopy(old)
            new["status"] = patched.get("status")
            return self._commit(rt, old, new)
        return self.update(rt, namespace, name, patched)

    def remove(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        *,
        options: Mapping[str, Any] | None = None,
    ) -> Obj:
        """DELETE: honours finalizers, preconditions and propagationPolicy."""
        obj = self.lookup(rt, namespace, name)
        pre = (options or {}).get("preconditions") or {}
        if pre.get("uid") not in (None, obj["metadata"]["uid"]):
            raise ApiError(
                409,
                "Conflict",
                f"Precondition failed: UID in precondition: {pre['uid']}, "
                f"UID in object meta: {obj['metadata']['uid']}",
                details=status_details(rt, name),
            )
        if pre.get("resourceVersion") not in (None, obj["metadata"]["resourceVersion"]):
            raise conflict(rt, name)
        if obj["metadata"].get("finalizers"):
            if obj["metadata"].get("deletionTimestamp"):
                return copy.deepcopy(obj)
            new = copy.deepcopy(obj)
            new["metadata"]["deletionTimestamp"] = now_rfc3339()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            return self._commit(rt, obj, new)
        orphan = (options or {}).get("propagationPolicy") == "Orphan"
        return self._remove(rt, obj, orphan=orphan)

    def _remove(self, rt: ResourceType, obj: Obj, *, orphan: bool = False) -> Obj:
        prev = self.objects[rt.key].pop(object_key(obj))
        gone = copy.deepcopy(obj)
        self._bump(gone)
        self._emit(rt, "DELETED", gone, prev)
        self._collect(gone["metadata"]["uid"], orphan=orphan)
        return gone

    def _collect(self, owner_uid: str, *, orphan: bool) -> None:
        """Background GC: dependents whose owners are all gone are deleted (or orphaned)."""
        if not self.garbage_collect:
            return
        live = {o["metadata"]["uid"] for objs in self.objects.values() for o in objs.values()}
        for rt in RESOURCES:
            for obj in list(self.objects[rt.key].values()):
                refs = obj["metadata"].get("ownerReferences") or []
                if not any(r.get("uid") == owner_uid for r in refs):
                    continue
                if orphan:
                    new = copy.deepcopy(obj)
                    new["metadata"]["ownerReferences"] = [
                        r for r in refs if r.get("uid") != owner_uid
                    ]
                    self._commit(rt, obj, new)
                elif not any(r.get("uid") in live for r in refs):
                    ns, name = object_key(obj)
                    self.remove(rt, ns, name)

    def select(
        self,
        rt: ResourceType,
        namespace: str | None,
        predicate: Callable[[Mapping[str, Any]], bool] = lambda _: True,
    ) -> list[Obj]:
        items = sorted(self.objects[rt.key].items())
        return [
            o for (ns, _), o in items if (namespace is None or ns == namespace) and predicate(o)
        ]

    # -- direct helpers for tests ----------------------------------------------------------
    def create(self, obj: Obj) -> Obj:
        """Create as the API would (status reset); `obj` needs apiVersion, kind, metadata."""
        rt = self.resource_for(obj)
        return self.insert(rt, (obj.get("metadata") or {}).get("namespace") or "default", obj)

    def put(self, obj: Obj) -> Obj:
        """Create or overwrite `obj` as given (status kept, no resourceVersion check)."""
        rt = self.resource_for(obj)
        meta = obj.get("metadata") or {}
        ns = meta.get("namespace") or "default"
        if (ns if rt.namespaced else "", meta.get("name", "")) in self.objects[rt.key]:
            return self.update(rt, ns, meta["name"], obj, seed=True)
        return self.insert(rt, ns, obj, api=False)

    def get(self, resource: str, namespace: str | None, name: str) -> Obj | None:
        rt = self.resource(resource)
        obj = self.objects[rt.key].get((namespace or "" if rt.namespaced else "", name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(
        self, resource: str, namespace: str | None = None, label_selector: str | None = None
    ) -> list[Obj]:
        rt = self.resource(resource)
        pred = make_filter(label_selector, None, rt.key)
        return [copy.deepcopy(o) for o in self.select(rt, namespace, pred)]

    def patch(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        patch: Any,
        content_type: str = "application/merge-patch+json",
    ) -> Obj:
        """Patch the object and its status alike (a test acting as a controller)."""
        rt = self.resource(resource)
        old = self.lookup(rt, namespace or "", name)
        try:
            new = apply_patch(old, patch, content_type)
        except PatchError as e:
            raise ApiError(422, "Invalid", str(e)) from e
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        return self._commit(rt, old, new)

    def delete(self, resource: str, namespace: str | None, name: str) -> Obj:
        rt = self.resource(resource)
        return self.remove(rt, namespace or "", name)


def _validate(rt: ResourceType, obj: Obj) -> None:
    """The validation rules of the real server that gpuscale's writes can trip over."""
    meta = obj["metadata"]
    name = str(meta.get("name", ""))
    causes: list[tuple[str, str]] = []
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        causes.append(
            (
                "metadata.name",
                f'Invalid value: "{name}": a lowercase RFC 1123 subdomain '
                "must consist of lower case alphanumeric characters, '-' or '.'",
            )
        )
    for k, v in (meta.get("labels") or {}).items():
        if not _QUALIFIED_NAME.match(str(k)):
            causes.append(("metadata.labels", f'Invalid value: "{k}": name part must be valid'))
        if not isinstance(v, str) or len(v) > 63 or not _LABEL_VALUE.match(v):
            causes.append(
                (f"metadata.labels.{k}", f'Invalid value: "{v}": must be 63 characters or less')
            )
    annotations = meta.get("annotations") or {}
    if sum(len(k) + len(str(v)) for k, v in annotations.items()) > 256 * 1024:
        causes.append(("metadata.annotations", "Too long: must have at most 262144 bytes"))
    for k, v in annotations.items():
        if not isinstance(v, str):
            causes.append((f"metadata.annotations.{k}", "Invalid value: must be a string"))
    if rt.kind == "ConfigMap":
        for k, v in (obj.get("data") or {}).items():
            if not isinstance(v, str) or not re.match(r"^[-._a-zA-Z0-9]+$", k):
                causes.append(
                    (f"data[{k}]", "Invalid value: keys must be [-._a-zA-Z0-9]+ and values strings")
                )
    if rt.kind == "HorizontalPodAutoscaler":
        causes.extend(_validate_hpa(obj.get("spec") or {}))
    if rt.kind == "Deployment":
        causes.extend(_validate_deployment(obj.get("spec") or {}))
    if rt.kind == "Pod":
        containers = (obj.get("spec") or {}).get("containers") or []
        if not containers or not all(c.get("name") and c.get("image") for c in containers):
            causes.append(("spec.containers", "Required value: containers with name and image"))
    if rt.key == "events.events.k8s.io":
        for f in ("eventTime", "reportingController", "reportingInstance", "action", "reason"):
            if not obj.get(f):
                causes.append((f, "Required value"))
        if obj.get("type") not in ("Normal", "Warning"):
            causes.append(("type", 'Unsupported value: supported values: "Normal", "Warning"'))
        if len(str(obj.get("note") or "")) > 1024:
            causes.append(("note", "Too long: may not be more than 1024 bytes"))
    if causes:
        raise invalid(rt, name, causes)


def _validate_hpa(spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    causes: list[tuple[str, str]] = []
    ref = spec.get("scaleTargetRef") or {}
    if not ref.get("kind") or not ref.get("name"):
        causes.append(("spec.scaleTargetRef", "Required value: kind and name are required"))
    max_r, min_r = spec.get("maxReplicas"), spec.get("minReplicas", 1)
    if not isinstance(max_r, int) or max_r < 1:
        causes.append(("spec.maxReplicas", "Invalid value: must be greater than or equal to 1"))
    if not isinstance(min_r, int) or min_r < 1:
        causes.append(("spec.minReplicas", "Invalid value: must be greater than or equal to 1"))
    elif isinstance(max_r, int) and min_r > max_r:
        causes.append(
            ("spec.maxReplicas", "Invalid value: must be greater than or equal to `minReplicas`")
        )
    for i, m in enumerate(spec.get("metrics") or []):
        if m.get("type") not in ("Object", "Pods", "Resource", "ContainerResource", "External"):
            causes.append((f"spec.metrics[{i}].type", "Unsupported value"))
    for direction, rules in (spec.get("behavior") or {}).items():
        path = f"spec.behavior.{direction}"
        if not isinstance(rules, dict):
            continue
        window = rules.get("stabilizationWindowSeconds", 0)
        if not isinstance(window, int) or not 0 <= window <= 3600:
            causes.append(
                (f"{path}.stabilizationWindowSeconds", "Invalid value: must be in [0, 3600]")
            )
        if rules.get("selectPolicy", "Max") not in ("Max", "Min", "Disabled"):
            causes.append((f"{path}.selectPolicy", "Unsupported value"))
        tolerance = rules.get("tolerance")
        if tolerance is not None and not _quantity_non_negative(tolerance):
            causes.append(
                (f"{path}.tolerance", "Invalid value: must be greater than or equal to 0")
            )
        for j, p in enumerate(rules.get("policies") or []):
            if p.get("type") not in ("Pods", "Percent"):
                causes.append((f"{path}.policies[{j}].type", "Unsupported value"))
            if not isinstance(p.get("value"), int) or p["value"] <= 0:
                causes.append(
                    (f"{path}.policies[{j}].value", "Invalid value: must be greater than 0")
                )
            period = p.get("periodSeconds")
            if not isinstance(period, int) or not 0 < period <= 1800:
                causes.append(
                    (f"{path}.policies[{j}].periodSeconds", "Invalid value: must be in (0, 1800]")
                )
    return causes


def _validate_deployment(spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    match = (spec.get("selector") or {}).get("matchLabels") or {}
    template = spec.get("template")
    if not match:
        return [("spec.selector", "Required value")]
    if not isinstance(template, dict):
        return [("spec.template", "Required value")]
    labels = (template.get("metadata") or {}).get("labels") or {}
    if any(labels.get(k) != v for k, v in match.items()):
        return [("spec.template.metadata.labels", "Invalid value: `selector` does not match")]
    containers = (template.get("spec") or {}).get("containers") or []
    if not containers:
        return [("spec.template.spec.containers", "Required value")]
    return []


def _quantity_non_negative(q: Any) -> bool:

    text = str(q).strip()
    return bool(re.match(r"^\+?[0-9.]+([eE][-+]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$", text))
