"""Policies from ConfigMaps labelled ``gpuscale.io/scaling-policy=true``, by list + watch.

The watch resumes from the last ``resourceVersion`` it saw (events and bookmarks); when the
server says that version is too old (410 Gone, as an HTTP status or an ERROR event) we relist
and diff the list against what we hold, so no policy is lost or duplicated. A policy that turns
invalid keeps its last good version running; the error is reported beside it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import orjson

from autoscaler.kube import KubeError, call, metadata, raw
from policies.parse import NotAPolicy, PolicyError, is_policy_configmap, parse_configmap
from policies.schema import POLICY_LABEL, ScalingPolicy

log = logging.getLogger(__name__)

SELECTOR = f"{POLICY_LABEL}=true"


@dataclass(frozen=True, slots=True)
class PolicyEntry:
    key: str
    namespace: str
    name: str
    uid: str
    resource_version: str
    configmap: Mapping[str, Any]
    """The latest ConfigMap object seen (annotations included)."""
    policy: ScalingPolicy | None
    """The policy that runs: the latest valid version, else the last good one, else None."""
    error: PolicyError | None = None
    """Why the latest version is invalid; None when it is valid."""
    good_resource_version: str | None = None
    """The ConfigMap version ``policy`` was parsed from."""


ChangeHandler = Callable[[str, PolicyEntry | None], None]


@dataclass(frozen=True, slots=True)
class SourceSettings:
    namespace: str | None = None
    """Watch one namespace; None watches all."""
    watch_timeout: int = 300
    """Server-side timeout of one watch request, seconds; the watch then resumes."""
    backoff_max: float = 10.0


def _as_configmap(obj: Mapping[str, Any]) -> dict[str, Any]:
    """List items come without ``kind``/``apiVersion``; the parser wants them."""
    full = dict(obj)
    full.setdefault("kind", "ConfigMap")
    full.setdefault("apiVersion", "v1")
    return full


def interpret(obj: Mapping[str, Any], previous: PolicyEntry | None) -> PolicyEntry | None:
    """The entry for a ConfigMap version, given what we held before; None if not a policy."""
    cm = _as_configmap(obj)
    meta = metadata(cm)
    namespace = str(meta.get("namespace") or "default")
    name = str(meta.get("name", ""))
    uid = str(meta.get("uid", ""))
    rv = str(meta.get("resourceVersion", ""))
    if previous is not None and previous.uid != uid:
        previous = None  # deleted and recreated: the old policy is not this one's last good
    same_data = previous is not None and previous.configmap.get("data") == cm.get("data")
    if previous is not None and same_data and is_policy_configmap(cm):
        # Only metadata changed (our own status annotation, most often): no need to re-parse.
        return replace(previous, configmap=cm, resource_version=rv)
    try:
        policy = parse_configmap(cm)
    except NotAPolicy:
        return None
    except PolicyError as exc:
        return PolicyEntry(
            key=f"{namespace}/{name}",
            namespace=namespace,
            name=name,
            uid=uid,
            resource_version=rv,
            configmap=cm,
            policy=previous.policy if previous else None,
            error=exc,
            good_resource_version=previous.good_resource_version if previous else None,
        )
    return PolicyEntry(f"{namespace}/{name}", namespace, name, uid, rv, cm, policy, None, rv)


def meaningful_change(old: PolicyEntry | None, new: PolicyEntry | None) -> bool:
    """True unless only the object's bookkeeping (annotations, resourceVersion) changed."""
    if old is None or new is None:
        return old is not new
    return (
        old.uid != new.uid
        or old.policy != new.policy
        or str(old.error) != str(new.error)
        or (old.error is None) != (new.error is None)
    )


class PolicySource:
    """Holds ``entries`` (key → :class:`PolicyEntry`) in step with the API server."""

    def __init__(
        self,
        core_api: Any,
        settings: SourceSettings,
        *,
        on_change: ChangeHandler | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._api = core_api
        self._settings = settings
        self._on_change = on_change
        self._rng = rng or random.Random()
        self.entries: dict[str, PolicyEntry] = {}
        self.listed = asyncio.Event()
        self.resource_version = ""
        self.relists = 0

    async def run(self) -> None:
        """List, then watch, until cancelled.

        A failed watch is retried from the same resourceVersion (with backoff), as client-go's
        reflector does; only 410 Gone, or repeated failures, cost a relist.
        """
        failures = 0
        need_list = True
        while True:
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                need_list = await self._watch_once()
                failures = 0
            except (KubeError, aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                failures += 1
                if failures >= 5:
                    need_list = True
                delay = min(self._settings.backoff_max, 0.1 * 2**failures)
                log.warning(
                    "policy list/watch failed; retrying",
                    extra={"error": str(exc), "retry_in_s": round(delay, 2), "relist": need_list},
                )
                await asyncio.sleep(self._rng.uniform(delay / 2, delay))

    def _list_method(self) -> Any:
        if self._settings.namespace:
            return self._api.list_namespaced_config_map
        return self._api.list_config_map_for_all_namespaces

    def _args(self) -> tuple[Any, ...]:
        return (self._settings.namespace,) if self._settings.namespace else ()

    async def _relist(self) -> None:
        body = await call(self._list_method(), *self._args(), label_selector=SELECTOR)
        items = body.get("items") or []
        seen: set[str] = set()
        for item in items:
            entry = self._upsert(item)
            if entry is not None:
                seen.add(entry.key)
        for key in [k for k in self.entries if k not in seen]:
            self._delete(key)
        self.resource_version = str(metadata(body).get("resourceVersion", ""))
        self.relists += 1
        self.listed.set()
        log.info(
            "policies listed",
            extra={"policies": len(self.entries), "resource_version": self.resource_version},
        )

    async def _watch_once(self) -> bool:
        """Follow one watch request; True when a relist is needed (410 Gone)."""
        timeout = self._settings.watch_timeout
        resp: aiohttp.ClientResponse = await raw(self._list_method())(
            *self._args(),
            label_selector=SELECTOR,
            watch=True,
            allow_watch_bookmarks=True,
            resource_version=self.resource_version,
            timeout_seconds=timeout,
            _request_timeout=float(timeout + 30),
        )
        try:
            if resp.status == 410:
                return True
            if resp.status >= 400:
                data = await resp.read()
                raise KubeError(resp.status, resp.reason or "", _status_of(data))
            async for line in resp.content:
                if not line.strip():
                    continue
                if self._handle(orjson.loads(line)):
                    return True
            return False
        finally:
            resp.release()

    def _handle(self, event: Mapping[str, Any]) -> bool:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                log.info("watch expired (410 Gone); relisting")
                return True
            raise KubeError(int(code or 500), str(obj.get("reason", "")), obj)
        rv = str(metadata(obj).get("resourceVersion", ""))
        if kind in ("ADDED", "MODIFIED"):
            self._upsert(obj)
        elif kind == "DELETED":
            key = f"{metadata(obj).get('namespace') or 'default'}/{metadata(obj).get('name')}"
            self._delete(key)
        if rv:
            self.resource_version = rv
        return False

    def _upsert(self, obj: Mapping[str, Any]) -> PolicyEntry | None:
        meta = metadata(obj)
        key = f"{meta.get('namespace') or 'default'}/{meta.get('name')}"
        old = self.entries.get(key)
        new = interpret(obj, old)
        if new is None:
            if old is not None:
                self._delete(key)
            return None
        self.entries[key] = new
        if meaningful_change(old, new):
            self._notify(key, new)
        return new

    def _delete(self, key: str) -> None:
        if self.entries.pop(key, None) is not None:
            self._notify(key, None)

    def _notify(self, key: str, entry: PolicyEntry | None) -> None:
        if entry is not None and entry.error is not None:
            log.warning("invalid policy", extra={"policy": key, "error": str(entry.error)})
        if self._on_change is not None:
            self._on_change(key, entry)

    def refresh(self, key: str, configmap: Mapping[str, Any]) -> None:
        """Remember our own write to a ConfigMap (its new annotations and version)."""
        entry = self.entries.get(key)
        if entry is not None:
            rv = str(metadata(configmap).get("resourceVersion", entry.resource_version))
            self.entries[key] = replace(
                entry, configmap=_as_configmap(configmap), resource_version=rv
            )


def _status_of(data: bytes) -> dict[str, Any] | None:
    try:
        decoded = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return decoded if isinstance(decoded, dict) else None
