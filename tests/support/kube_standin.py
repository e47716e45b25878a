"""A Kubernetes API server stand-in for tests, driven through the official `kubernetes.aio` client.

No kube-apiserver can run here, so this aiohttp server implements the paths gpuscale uses with
the real server's semantics (checked against kube-apiserver's behaviour, not invented):

Paths (every resource supports GET, LIST, WATCH, POST, PUT, PATCH, DELETE, DELETE-collection):
    /api/v1/namespaces/{ns}/configmaps[/{name}]        /api/v1/configmaps         (all namespaces)
    /api/v1/namespaces/{ns}/events[/{name}]            /api/v1/events
    /api/v1/namespaces/{ns}/pods[/{name}[/status]]     /api/v1/pods
    /api/v1/namespaces/{ns}/pods/{name}/binding        POST: sets spec.nodeName (409 if bound)
    /api/v1/namespaces/{ns}/bindings                   POST: the same, pod named in metadata.name
    /api/v1/nodes[/{name}[/status]]                    (cluster-scoped)
    /apis/events.k8s.io/v1/namespaces/{ns}/events[/{name}]
    /apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers[/{name}[/status]]
    /apis/coordination.k8s.io/v1/namespaces/{ns}/leases[/{name}]
    /apis/apps/v1/namespaces/{ns}/deployments[/{name}[/status|/scale]]
    /api, /api/v1, /apis, /apis/{group}, /apis/{group}/{version}   discovery documents
    /version (settable `git_version`), /openapi/v3 and /openapi/v3/apis/autoscaling/v2
    /healthz, /livez, /readyz; more via `add_route`.

Semantics: one global, monotonically increasing `resourceVersion`; uid, creationTimestamp,
generation (objects with a spec); 409 AlreadyExists on create, 409 Conflict on a stale
resourceVersion (PUT, or a PATCH that carries one), 404 NotFound, 422 Invalid for the validation
rules listed in `_validate`; no-op writes do not bump the resourceVersion; status and scale
subresources (writes to the main resource keep the old status; creates reset it as the real
strategies do); label and field selectors; LIST with limit/continue; WATCH from a resourceVersion
out of a bounded event history, with bookmarks, `sendInitialEvents`, `timeoutSeconds`, and an
`ERROR` event carrying a 410 Expired Status for a compacted resourceVersion; finalizers;
background garbage collection through ownerReferences; list items without kind/apiVersion.

Simplifications (documented, deliberate): no authentication or admission; a continue token lists
the current state after its key rather than a snapshot; core/v1 and events.k8s.io/v1 Events are
stored apart; with `simulate_controllers` a Deployment's status follows its spec at once (there is
no kubelet, so pods never start by themselves).

Test controls on `KubeStandIn`: `store` (seed/read objects directly; writes reach watchers),
`faults` (fail or delay matching requests), `requests` (log of every request), `drop_watches()`,
`compact()`, `wait_for(...)` helpers, `stop()`/`start()` on the same port.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import fnmatch
import json
import re
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from tests.support.kube_patch import (
    APPLY_PATCH,
    SUPPORTED_PATCH_TYPES,
    PatchError,
    apply_patch,
)
from tests.support.kube_selectors import SelectorError, make_filter

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


def _details(rt: ResourceType, name: str) -> Obj:
    d: Obj = {"name": name}
    if rt.group:
        d["group"] = rt.group
    d["kind"] = rt.plural
    return d


def not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(
        404, "NotFound", f'{_qualified(rt)} "{name}" not found', details=_details(rt, name)
    )


def conflict(rt: ResourceType, name: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {_qualified(rt)} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again",
        details=_details(rt, name),
    )


def invalid(rt: ResourceType, name: str, causes: list[tuple[str, str]]) -> ApiError:
    text = ", ".join(f"{f}: {m}" for f, m in causes)
    details = _details(rt, name)
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
class _Watcher:
    resource: str
    namespace: str | None
    predicate: Callable[[Mapping[str, Any]], bool]
    queue: asyncio.Queue[WatchEvent | str] = field(default_factory=asyncio.Queue)


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
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
        self.watchers: set[_Watcher] = set()
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
            if w.resource == rt.key and (w.namespace is None or w.namespace == _key(obj)[0]):
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
        if rt.kind == "Deployment" and self.simulate_controllers:
            n = (obj.get("spec") or {}).get("replicas", 1)
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
                details=_details(rt, name),
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
        self.objects[rt.key][_key(obj)] = obj
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
        self.objects[rt.key][_key(new)] = new
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
                details=_details(rt, name),
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
        prev = self.objects[rt.key].pop(_key(obj))
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
                    ns, name = _key(obj)
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


# ------------------------------------------------------------------------------------------------
# Faults and the request log
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the stand-in saw it (the body parsed as JSON where it was JSON)."""

    method: str
    path: str
    query: Mapping[str, str]
    body: Any
    content_type: str
    watch: bool
    user_agent: str


def _path_matches(pattern: str | re.Pattern[str], path: str) -> bool:
    if isinstance(pattern, re.Pattern):
        return pattern.search(path) is not None
    return fnmatch.fnmatchcase(path, pattern)


@dataclass(eq=False)
class Rule:
    """A fault rule; `times=None` applies until cleared. `path` is a glob or a compiled regex."""

    method: str | None
    path: str | re.Pattern[str]
    watch: bool | None
    times: int | None
    status: int = 500
    delay: float = 0.0
    message: str | None = None
    retry_after: int | None = None
    hits: int = 0

    def matches(self, record: RequestRecord) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method is not None and self.method.upper() != record.method:
            return False
        if self.watch is not None and self.watch != record.watch:
            return False
        return _path_matches(self.path, record.path)


class Faults:
    """Injected failures: `fail(...)` answers with an error Status, `delay(...)` adds latency."""

    def __init__(self) -> None:
        self.failures: list[Rule] = []
        self.delays: list[Rule] = []

    def fail(
        self,
        method: str | None,
        path: str | re.Pattern[str],
        *,
        status: int = 500,
        times: int | None = 1,
        watch: bool | None = None,
        message: str | None = None,
        retry_after: int | None = None,
    ) -> Rule:
        """Fail the next `times` matching requests (None: all of them until `clear`)."""
        rule = Rule(
            method, path, watch, times, status=status, message=message, retry_after=retry_after
        )
        self.failures.append(rule)
        return rule

    def delay(
        self,
        method: str | None,
        path: str | re.Pattern[str],
        seconds: float,
        *,
        times: int | None = None,
        watch: bool | None = None,
    ) -> Rule:
        rule = Rule(method, path, watch, times, delay=seconds)
        self.delays.append(rule)
        return rule

    def clear(self) -> None:
        self.failures.clear()
        self.delays.clear()

    def _take(self, rules: list[Rule], record: RequestRecord) -> Rule | None:
        for rule in rules:
            if rule.matches(record):
                rule.hits += 1
                return rule
        return None


# ------------------------------------------------------------------------------------------------
# The HTTP server
# ------------------------------------------------------------------------------------------------

_END, _ABORT = "end", "abort"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(body).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _error(err: ApiError) -> web.Response:
    return _json(err.status(), err.code, err.headers)


class KubeStandIn:
    """The server plus test controls. `await start()`, then point a client at `url`."""

    def __init__(
        self,
        *,
        git_version: str = "v1.35.0",
        history_size: int = 1000,
        bookmark_interval: float = 1.0,
    ) -> None:
        self.store = Store(history_size=history_size)
        self.store.on_change = self._notify
        self.faults = Faults()
        self.requests: list[RequestRecord] = []
        self.git_version = git_version
        self.bookmark_interval = bookmark_interval
        self.port = 0
        self.kubeconfig_path: Path | None = None
        self._runner: web.AppRunner | None = None
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._changed = asyncio.Event()
        self._open_watches: dict[_Watcher, web.Request] = {}

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def git_version(self) -> str:
        return self._git_version

    @git_version.setter
    def git_version(self, value: str) -> None:
        """Also decides whether HPA `tolerance` is kept (beta and on by default from v1.35)."""
        m = re.match(r"^v(\d+)\.(\d+)", value)
        if not m:
            raise ValueError(f"git_version must look like v1.35.0, got {value!r}")
        self._git_version = value
        self.store.hpa_tolerance_supported = (int(m[1]), int(m[2])) >= (1, 35)

    async def start(self) -> None:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        if self.port == 0:
            sockets = [s for s in self._runner.addresses if isinstance(s, tuple)]
            self.port = int(sockets[0][1])

    async def stop(self) -> None:
        """Stop serving (an API server outage); `start()` again reuses the port and the data."""
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "standin", "user": {"token": "standin"}}],
            "contexts": [
                {
                    "name": "standin",
                    "context": {"cluster": "standin", "user": "standin", "namespace": namespace},
                }
            ],
            "current-context": "standin",
        }
        path.write_text(yaml.safe_dump(config))
        self.kubeconfig_path = path
        return path

    def add_route(self, method: str, path_regex: str, handler: Handler) -> None:
        """Serve an extra path (fullmatch of `path_regex`) before the built-in routes."""
        self._routes.append((method.upper(), re.compile(path_regex), handler))

    # -- test controls ------------------------------------------------------------------------
    def compact(self) -> None:
        self.store.compact()

    def drop_watches(self, *, abort: bool = False) -> int:
        """End every open watch: cleanly (the stream ends) or by aborting the connection."""
        watchers = list(self._open_watches)
        for w in watchers:
            w.queue.put_nowait(_ABORT if abort else _END)
        return len(watchers)

    def watch_count(self, resource: str | None = None) -> int:
        key = None if resource is None else self.store.resource(resource).key
        return sum(1 for w in self._open_watches if key is None or w.resource == key)

    def requests_matching(
        self,
        method: str | None = None,
        path: str | re.Pattern[str] = "*",
        *,
        watch: bool | None = None,
    ) -> list[RequestRecord]:
        return [
            r
            for r in self.requests
            if (method is None or r.method == method.upper())
            and (watch is None or r.watch == watch)
            and _path_matches(path, r.path)
        ]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], Any], within: float = 10.0) -> Any:
        """Wait until `predicate()` is truthy (re-checked on every request and write)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not (result := predicate()):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"condition not met within {within} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))
        return result

    async def wait_for_object(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        predicate: Callable[[Obj], bool] = lambda _: True,
        within: float = 10.0,
    ) -> Obj:
        def check() -> Obj | None:
            obj = self.store.get(resource, namespace, name)
            return obj if obj is not None and predicate(obj) else None

        result: Obj = await self.wait_for(check, within)
        return result

    async def wait_for_watch(self, resource: str, count: int = 1, within: float = 10.0) -> None:
        """Wait until `count` watches on `resource` are open (then writes will reach them)."""
        await self.wait_for(lambda: self.watch_count(resource) >= count, within)

    # -- request handling -----------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        content_type = request.headers.get("Content-Type", "")
        body: Any = None
        if raw:
            try:
                body = (
                    yaml.safe_load(raw) if content_type.startswith(APPLY_PATCH) else json.loads(raw)
                )
            except (ValueError, yaml.YAMLError):
                body = raw.decode(errors="replace")
        query = dict(request.query)
        record = RequestRecord(
            request.method,
            request.path,
            query,
            body,
            content_type,
            query.get("watch") in ("1", "true"),
            request.headers.get("User-Agent", ""),
        )
        self.requests.append(record)
        self._notify()
        if (slow := self.faults._take(self.faults.delays, record)) is not None:
            await asyncio.sleep(slow.delay)
        if (rule := self.faults._take(self.faults.failures, record)) is not None:
            reason = GENERIC_REASONS.get(rule.status, "Unknown")
            headers = {"Retry-After": str(rule.retry_after)} if rule.retry_after else None
            message = rule.message or f"injected fault: {rule.status} {reason}"
            return _error(ApiError(rule.status, reason, message, details={}, headers=headers))
        for method, pattern, handler in self._routes:
            if method in (request.method, "*") and pattern.fullmatch(request.path):
                return await handler(request)
        try:
            if raw and isinstance(body, str):
                raise bad_request(f"the request body is not valid JSON: {body[:80]!r}")
            return await self._route(request, record)
        except ApiError as e:
            return _error(e)
        except SelectorError as e:
            return _error(bad_request(str(e)))

    async def _route(self, request: web.Request, rec: RequestRecord) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if request.method == "GET":
            doc = self._discovery(parts)
            if doc is not None:
                return _json(doc)
            if parts and parts[0] in ("healthz", "livez", "readyz") and len(parts) == 1:
                return web.Response(text="ok")
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise _path_not_found()
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise _path_not_found()
        rt = next(
            (r for r in RESOURCES if (r.group, r.version, r.plural) == (group, version, rest[0])),
            None,
        )
        if rt is None and rest[0] == "bindings" and group == "" and namespace is not None:
            if request.method != "POST" or len(rest) != 1 or not isinstance(rec.body, dict):
                raise _path_not_found()
            return self._bind(namespace, (rec.body.get("metadata") or {}).get("name", ""), rec.body)
        if rt is None or (namespace is not None and not rt.namespaced):
            raise _path_not_found()
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and sub not in rt.subresources:
            raise _path_not_found()
        if rt.namespaced and namespace is None and (name is not None or request.method != "GET"):
            raise _path_not_found()
        ns = namespace or ""
        return await self._verb(request, rec, rt, namespace, ns, name, sub)

    async def _verb(
        self,
        request: web.Request,
        rec: RequestRecord,
        rt: ResourceType,
        namespace: str | None,
        ns: str,
        name: str | None,
        sub: str | None,
    ) -> web.StreamResponse:
        method, body, q = request.method, rec.body, rec.query
        dry_run = "dryRun" in q
        if method == "GET" and name is None:
            if rec.watch:
                return await self._watch(request, rt, namespace, q)
            return _json(self._list(rt, namespace, q))
        if name is None:
            if method == "POST":
                if dry_run:
                    return _json(self._dry(lambda s: s.insert(rt, ns, body)), 201)
                return _json(self.store.insert(rt, ns, body), 201)
            if method == "DELETE":
                pred = make_filter(q.get("labelSelector"), q.get("fieldSelector"), rt.key)
                deleted = [
                    self.store.remove(rt, ns, _key(o)[1])
                    for o in self.store.select(rt, namespace, pred)
                ]
                return _json(self._list_doc(rt, [_strip_type(o) for o in deleted]))
            raise _method_not_allowed(method)
        if sub == "scale":
            return await self._scale(request, rt, ns, name, body)
        if sub == "binding":
            if method != "POST":
                raise _method_not_allowed(method)
            return self._bind(ns, name, body)
        if method == "GET":
            return _json(copy.deepcopy(self.store.lookup(rt, ns, name)))
        if method == "PUT":
            if dry_run:
                return _json(self._dry(lambda s: s.update(rt, ns, name, body, subresource=sub)))
            return _json(self.store.update(rt, ns, name, body, subresource=sub))
        if method == "PATCH":
            media = rec.content_type.split(";")[0].strip().lower()
            if media not in SUPPORTED_PATCH_TYPES:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types "
                    f"include: {', '.join(sorted(SUPPORTED_PATCH_TYPES))}",
                )
            if (
                media == APPLY_PATCH
                and self.store.objects[rt.key].get((ns if rt.namespaced else "", name)) is None
            ):
                created = dict(body or {})
                created.setdefault("metadata", {})["name"] = name
                return _json(self.store.insert(rt, ns, created), 201)
            return _json(self.store.patch_object(rt, ns, name, body, media, subresource=sub))
        if method == "DELETE":
            options = dict(body) if isinstance(body, dict) else {}
            if "propagationPolicy" in q:
                options["propagationPolicy"] = q["propagationPolicy"]
            gone = self.store.remove(rt, ns, name, options=options)
            still_there = (ns if rt.namespaced else "", name) in self.store.objects[rt.key]
            if rt.kind == "Pod" or still_there:
                return _json(gone)
            details = _details(rt, name)
            details["uid"] = gone["metadata"]["uid"]
            return _json(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": details,
                }
            )
        raise _method_not_allowed(method)

    def _dry(self, action: Callable[[Store], Obj]) -> Obj:
        """Run a write on a throwaway copy of the store (dryRun=All)."""
        shadow = copy.copy(self.store)
        shadow.objects = copy.deepcopy(self.store.objects)
        shadow.history = deque(maxlen=1)
        shadow.watchers = set()
        shadow.on_change = lambda: None
        return action(shadow)

    # -- LIST and WATCH -------------------------------------------------------------------------
    def _list_doc(self, rt: ResourceType, items: list[Obj], extra: Obj | None = None) -> Obj:
        meta: Obj = {"resourceVersion": str(self.store.rv), **(extra or {})}
        return {
            "kind": f"{rt.kind}List",
            "apiVersion": rt.api_version,
            "metadata": meta,
            "items": items,
        }

    def _list(self, rt: ResourceType, namespace: str | None, q: Mapping[str, str]) -> Obj:
        pred = make_filter(q.get("labelSelector"), q.get("fieldSelector"), rt.key)
        rv = q.get("resourceVersion")
        exact = q.get("resourceVersionMatch") == "Exact"
        oldest = self.store.oldest_watchable_rv
        if exact and rv not in (None, "", "0") and _parse_rv(rv or "") < oldest:
            raise _expired(f"too old resource version: {rv} ({oldest})")
        items = self.store.select(rt, namespace, pred)
        token_rv = self.store.rv
        if token := q.get("continue"):
            try:
                state = json.loads(base64.urlsafe_b64decode(token.encode()))
                token_rv, start = int(state["rv"]), str(state["start"])
            except (ValueError, KeyError, TypeError) as e:
                raise bad_request(f"continue key is not valid: {e}") from e
            if token_rv < self.store.oldest_watchable_rv:
                raise _expired(
                    "The provided continue parameter is too old to display a consistent list "
                    "result. You can start a new list without the continue parameter, or use the "
                    "continue token in this response to retrieve the remainder of the results. "
                    "Continuing with the provided token results in an inconsistent list - objects "
                    "that were created, modified, or deleted between the time the first chunk was "
                    "returned and now may show up in the list."
                )
            items = [o for o in items if "/".join(_key(o)) > start]
        extra: Obj = {}
        limit = int(q.get("limit") or 0)
        if limit > 0 and len(items) > limit:
            last = "/".join(_key(items[limit - 1]))
            state = {"rv": token_rv, "start": last}
            extra["continue"] = base64.urlsafe_b64encode(json.dumps(state).encode()).decode()
            extra["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        return self._list_doc(rt, [_strip_type(o) for o in items], extra)

    async def _watch(
        self, request: web.Request, rt: ResourceType, namespace: str | None, q: Mapping[str, str]
    ) -> web.StreamResponse:
        predicate = make_filter(q.get("labelSelector"), q.get("fieldSelector"), rt.key)
        bookmarks = q.get("allowWatchBookmarks") in ("1", "true")
        send_initial = q.get("sendInitialEvents") == "true"
        timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None
        rv = q.get("resourceVersion")
        backlog: list[tuple[str, Obj]] = []
        gone: str | None = None
        if send_initial or rv in (None, "", "0"):
            backlog = [
                ("ADDED", copy.deepcopy(o)) for o in self.store.select(rt, namespace, predicate)
            ]
        else:
            since = _parse_rv(rv)
            oldest = self.store.oldest_watchable_rv
            if since < oldest:
                gone = f"too old resource version: {since} ({oldest})"
            else:
                for ev in self.store.history:
                    mine = namespace is None or _key(ev.obj)[0] == namespace
                    if ev.rv > since and ev.resource == rt.key and mine:
                        backlog.extend(_translate(ev, predicate))
        watcher = _Watcher(rt.key, namespace, predicate)
        if gone is None:
            self.store.watchers.add(watcher)
            self._open_watches[watcher] = request
            self._notify()
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        try:
            await resp.prepare(request)
            if gone is not None:
                await _write(resp, {"type": "ERROR", "object": _expired(gone).status()})
                await resp.write_eof()
                return resp
            for kind, obj in backlog:
                await _write(resp, {"type": kind, "object": obj})
            if send_initial and bookmarks:
                await _write(resp, self._bookmark(rt, initial_end=True))
            await self._pump(request, resp, watcher, rt, bookmarks, timeout)
        except ConnectionError:
            return resp
        finally:
            self.store.watchers.discard(watcher)
            self._open_watches.pop(watcher, None)
            self._notify()
        return resp

    async def _pump(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        watcher: _Watcher,
        rt: ResourceType,
        bookmarks: bool,
        lifetime: float | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = None if lifetime is None else loop.time() + lifetime
        while True:
            wait = self.bookmark_interval if bookmarks else 3600.0
            if deadline is not None:
                wait = min(wait, deadline - loop.time())
                if wait <= 0:
                    break
            try:
                item = await asyncio.wait_for(watcher.queue.get(), wait)
            except TimeoutError:
                if bookmarks and (deadline is None or loop.time() < deadline):
                    await _write(resp, self._bookmark(rt))
                continue
            if item == _END:
                break
            if item == _ABORT:
                if request.transport is not None:
                    request.transport.abort()
                return
            assert isinstance(item, WatchEvent)
            for kind, obj in _translate(item, watcher.predicate):
                await _write(resp, {"type": kind, "object": obj})
        await resp.write_eof()

    def _bookmark(self, rt: ResourceType, *, initial_end: bool = False) -> Obj:
        meta: Obj = {"resourceVersion": str(self.store.rv)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {
            "type": "BOOKMARK",
            "object": {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta},
        }

    # -- subresources ---------------------------------------------------------------------------
    async def _scale(
        self, request: web.Request, rt: ResourceType, ns: str, name: str, body: Any
    ) -> web.Response:
        obj = self.store.lookup(rt, ns, name)
        if request.method in ("PUT", "PATCH"):
            current = _scale_of(obj)
            if request.method == "PATCH":
                try:
                    wanted = apply_patch(current, body, request.headers.get("Content-Type", ""))
                except PatchError as e:
                    raise ApiError(422, "Invalid", str(e)) from e
            else:
                wanted = body if isinstance(body, dict) else {}
            rv = (wanted.get("metadata") or {}).get("resourceVersion")
            if rv not in (None, "") and str(rv) != obj["metadata"]["resourceVersion"]:
                raise conflict(rt, name)
            replicas = (wanted.get("spec") or {}).get("replicas")
            if not isinstance(replicas, int) or replicas < 0:
                raise invalid(
                    rt,
                    name,
                    [("spec.replicas", "Invalid value: must be greater than or equal to 0")],
                )
            new = copy.deepcopy(obj)
            new.setdefault("spec", {})["replicas"] = replicas
            obj = self.store._commit(rt, obj, new)
        elif request.method != "GET":
            raise _method_not_allowed(request.method)
        return _json(_scale_of(obj))

    def _bind(self, ns: str, name: str, body: Any) -> web.Response:
        rt = self.store.resource("pods")
        pod = self.store.lookup(rt, ns, name)
        if not isinstance(body, dict):
            raise bad_request("the body of a binding must be a JSON object")
        node = (body.get("target") or {}).get("name")
        if not node:
            raise invalid(rt, name, [("target.name", "Required value")])
        if (body.get("metadata") or {}).get("uid") not in (None, pod["metadata"]["uid"]):
            raise conflict(rt, name)
        bound = (pod.get("spec") or {}).get("nodeName")
        if bound:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on pods/binding "{name}": pod {name} is already '
                f'assigned to node "{bound}"',
                details={"name": name, "kind": "pods/binding"},
            )
        new = copy.deepcopy(pod)
        new.setdefault("spec", {})["nodeName"] = node
        conditions = [
            c
            for c in new.setdefault("status", {}).get("conditions", [])
            if c.get("type") != "PodScheduled"
        ]
        conditions.append(
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now_rfc3339()}
        )
        new["status"]["conditions"] = conditions
        annotations = ((body.get("metadata") or {}).get("annotations")) or {}
        if annotations:
            new["metadata"].setdefault("annotations", {}).update(annotations)
        self.store._commit(rt, pod, new)
        return _json(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "code": 201,
            },
            201,
        )

    # -- discovery ------------------------------------------------------------------------------
    def _discovery(self, parts: list[str]) -> Obj | None:
        groups: dict[str, list[str]] = {}
        for rt in RESOURCES:
            if rt.group and rt.version not in groups.setdefault(rt.group, []):
                groups[rt.group].append(rt.version)
        if parts == ["version"]:
            m = re.match(r"^v(\d+)\.(\d+)", self.git_version)
            assert m is not None
            return {
                "major": m[1],
                "minor": m[2],
                "gitVersion": self.git_version,
                "gitCommit": "0" * 40,
                "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z",
                "goVersion": "go1.25.0",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        if parts == ["api"]:
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}
                ],
            }
        if parts == ["apis"]:
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [_group_doc(g, vs) for g, vs in groups.items()],
            }
        if len(parts) == 2 and parts[0] == "apis" and parts[1] in groups:
            return {
                "kind": "APIGroup",
                "apiVersion": "v1",
                **_group_doc(parts[1], groups[parts[1]]),
            }
        if parts == ["api", "v1"]:
            return _resource_list("", "v1")
        if len(parts) == 3 and parts[0] == "apis" and parts[2] in groups.get(parts[1], []):
            return _resource_list(parts[1], parts[2])
        if parts[:2] == ["openapi", "v3"]:
            return self._openapi(parts[2:])
        return None

    def _openapi(self, rest: list[str]) -> Obj | None:
        if not rest:
            paths: dict[str, Obj] = {
                "api/v1": {},
                **{f"apis/{rt.group}/{rt.version}": {} for rt in RESOURCES if rt.group},
            }
            return {
                "paths": {p: {"serverRelativeURL": f"/openapi/v3/{p}?hash=standin"} for p in paths}
            }
        if rest == ["apis", "autoscaling", "v2"]:
            rules: Obj = {
                "policies": {
                    "type": "array",
                    "items": {
                        "$ref": "#/components/schemas/io.k8s.api.autoscaling.v2.HPAScalingPolicy"
                    },
                },
                "selectPolicy": {"type": "string"},
                "stabilizationWindowSeconds": {"type": "integer", "format": "int32"},
            }
            if self.store.hpa_tolerance_supported:
                rules["tolerance"] = {
                    "$ref": "#/components/schemas/io.k8s.apimachinery.pkg.api.resource.Quantity"
                }
            schemas = {
                "io.k8s.api.autoscaling.v2.HPAScalingRules": {"type": "object", "properties": rules}
            }
            return {
                "openapi": "3.0.0",
                "info": {"title": "Kubernetes", "version": self.git_version},
                "paths": {},
                "components": {"schemas": schemas},
            }
        return None


def _group_doc(group: str, versions: list[str]) -> Obj:
    gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": gvs, "preferredVersion": gvs[0]}


def _resource_list(group: str, version: str) -> Obj:
    resources: list[Obj] = []
    for rt in RESOURCES:
        if (rt.group, rt.version) != (group, version):
            continue
        resources.append(
            {
                "name": rt.plural,
                "singularName": rt.kind.lower(),
                "namespaced": rt.namespaced,
                "kind": rt.kind,
                "verbs": VERBS,
                "shortNames": list(rt.short_names),
            }
        )
        for sub in sorted(rt.subresources):
            entry: Obj = {
                "name": f"{rt.plural}/{sub}",
                "singularName": "",
                "namespaced": rt.namespaced,
            }
            if sub == "scale":
                entry.update(
                    group="autoscaling",
                    version="v1",
                    kind="Scale",
                    verbs=["get", "patch", "update"],
                )
            elif sub == "binding":
                entry.update(kind="Binding", verbs=["create"])
            else:
                entry.update(kind=rt.kind, verbs=["get", "patch", "update"])
            resources.append(entry)
    gv = f"{group}/{version}" if group else version
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }


def _scale_of(obj: Obj) -> Obj:
    meta = obj["metadata"]
    labels = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if k in meta
        },
        "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 1)},
        "status": {
            "replicas": (obj.get("status") or {}).get("replicas", 0),
            "selector": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
        },
    }


def _translate(
    ev: WatchEvent, predicate: Callable[[Mapping[str, Any]], bool]
) -> list[tuple[str, Obj]]:
    """What one watcher sees of an event, given its selector (enter = ADDED, leave = DELETED)."""
    now_ok = predicate(ev.obj)
    if ev.type != "MODIFIED" or ev.prev is None:
        return [(ev.type, copy.deepcopy(ev.obj))] if now_ok else []
    was_ok = predicate(ev.prev)
    if now_ok:
        return [("MODIFIED" if was_ok else "ADDED", copy.deepcopy(ev.obj))]
    if was_ok:
        prev = copy.deepcopy(ev.prev)
        prev["metadata"]["resourceVersion"] = str(ev.rv)
        return [("DELETED", prev)]
    return []


async def _write(resp: web.StreamResponse, event: Obj) -> None:
    await resp.write(json.dumps(event).encode() + b"\n")


def _strip_type(obj: Obj) -> Obj:
    out = copy.deepcopy(obj)
    out.pop("apiVersion", None)
    out.pop("kind", None)
    return out


def _parse_rv(rv: str) -> int:
    try:
        value = int(rv)
    except ValueError as e:
        raise bad_request(f'resourceVersion: Invalid value: "{rv}": must be an integer') from e
    return value


def _expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def _path_not_found() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", details={})


def _method_not_allowed(method: str) -> ApiError:
    return ApiError(
        405,
        "MethodNotAllowed",
        f"the server does not allow this method on the requested resource ({method})",
        details={},
    )


# ------------------------------------------------------------------------------------------------
# Client helpers
# ------------------------------------------------------------------------------------------------


async def make_api_client(kubeconfig_path: str | Path) -> Any:
    """A `kubernetes.aio.client.ApiClient` for the kubeconfig (leaves the global default alone)."""
    from kubernetes.aio import config as kube_config

    return await kube_config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig_path), persist_config=False
    )


def objects_named(objs: Iterable[Mapping[str, Any]]) -> list[str]:
    """`ns/name` of each object, a short form for assertions."""
    return ["/".join(p for p in _key(o) if p) for o in objs]


def new_watch() -> Any:
    """A `kubernetes.aio.watch.Watch` (the class is untyped; this keeps mypy --strict quiet)."""
    from kubernetes.aio import watch

    return watch.Watch()  # type: ignore[no-untyped-call]
