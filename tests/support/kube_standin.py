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
    /apis/apiregistration.k8s.io/v1/apiservices[/{name}]   (cluster-scoped; proxying: see
                                                       tests/support/kube_aggregator.py)
    /api, /api/v1, /apis, /apis/{group}, /apis/{group}/{version}   discovery documents
    /version (settable `git_version`), /openapi/v3 and /openapi/v3/apis/autoscaling/v2
    /healthz, /livez, /readyz; more via `add_route`.

Semantics: one global, monotonically increasing `resourceVersion`; uid, creationTimestamp,
generation (objects with a spec); 409 AlreadyExists on create, 409 Conflict on a stale
resourceVersion (PUT, or a PATCH that carries one), 404 NotFound, 422 Invalid for the validation
rules listed in `kube_store._validate`; no-op writes keep the resourceVersion; status and scale

subresources (writes to the main resource keep the old status; creates reset it as the real
strategies do); label and field selectors; LIST with limit/continue; WATCH from a resourceVersion
out of a bounded event history, with bookmarks, `sendInitialEvents`, `timeoutSeconds`, and an
`ERROR` event carrying a 410 Expired Status for a compacted resourceVersion; finalizers;
background garbage collection through ownerReferences; list items without kind/apiVersion.

Simplifications (documented, deliberate): no authentication or admission; a continue token lists
the current state after its key rather than a snapshot; core/v1 and events.k8s.io/v1 Events are
stored apart; with `simulate_controllers` a Deployment's status follows its spec at once (there is
no kubelet, so pods never start by themselves).

Test controls on `KubeStandIn`: `store` (seed/read objects directly; writes reach watchers;
see tests/support/kube_store.py), `faults` (fail or delay matching requests), `requests` (log of
every request; `log_requests = False` for benchmarks), `drop_watches()`, `compact()`,
`wait_for(...)` helpers, `stop()`/`start()` on the same port, `internal_errors` (bugs of the
stand-in itself, answered as 500 InternalError).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import fnmatch
import json
import re
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
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
from tests.support.kube_store import (
    GENERIC_REASONS,
    RESOURCES,
    VERBS,
    ApiError,
    Obj,
    ResourceType,
    Store,
    Watcher,
    WatchEvent,
    bad_request,
    conflict,
    invalid,
    now_rfc3339,
    object_key,
    status_details,
)

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
        self.log_requests = True
        self.internal_errors: list[Exception] = []
        self.git_version = git_version
        self.bookmark_interval = bookmark_interval
        self.port = 0
        self.kubeconfig_path: Path | None = None
        self._runner: web.AppRunner | None = None
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._changed = asyncio.Event()
        self._open_watches: dict[Watcher, web.Request] = {}
        self.aggregator: Any = None
        """The aggregation layer (tests/support/kube_aggregator.py) when one is installed."""

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
        if self.log_requests:
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
        except (SelectorError, ValueError, TypeError, KeyError, AttributeError) as e:
            return _error(bad_request(f"{type(e).__name__}: {e}"))
        except Exception as e:
            self.internal_errors.append(e)
            return _error(ApiError(500, "InternalError", f"stand-in error: {e!r}", details={}))

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
                    self.store.remove(rt, ns, object_key(o)[1])
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
            details = status_details(rt, name)
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
            items = [o for o in items if "/".join(object_key(o)) > start]
        extra: Obj = {}
        limit = int(q.get("limit") or 0)
        if limit > 0 and len(items) > limit:
            last = "/".join(object_key(items[limit - 1]))
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
        if send_initial and q.get("resourceVersionMatch") != "NotOlderThan":
            raise ApiError(
                422,
                "Invalid",
                "resourceVersionMatch: Forbidden: sendInitialEvents requires setting "
                "resourceVersionMatch to NotOlderThan",
                details={},
            )
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
                    mine = namespace is None or object_key(ev.obj)[0] == namespace
                    if ev.rv > since and ev.resource == rt.key and mine:
                        backlog.extend(_translate(ev, predicate))
        watcher = Watcher(rt.key, namespace, predicate)
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
        watcher: Watcher,
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
    return ["/".join(p for p in object_key(o) if p) for o in objs]


def new_watch() -> Any:
    """A `kubernetes.aio.watch.Watch` (the class is untyped; this keeps mypy --strict quiet)."""
    from kubernetes.aio import watch

    return watch.Watch()  # type: ignore[no-untyped-call]
