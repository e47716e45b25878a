"""Policies from ConfigMaps labelled ``gpuscale.io/scaling-policy=true``, by list + watch.

Each (re)list is diffed against what we hold, so no policy is lost or duplicated across a
410 Gone. A policy that turns invalid keeps its last good version running; the error is
reported beside it. Metadata-only updates (our own status annotation) are not re-parsed.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from policies.parse import NotAPolicy, PolicyError, is_policy_configmap, parse_configmap
from policies.schema import POLICY_LABEL, ScalingPolicy
from policies.tenancy import scope_policy
from runtime.kube import metadata
from runtime.reflector import Reflector, ReflectorSettings

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
    tenancy_label: str | None = None
    """Confine every query to its policy's namespace through this label
    (:func:`policies.tenancy.scope_policy`); None lets queries read any namespace."""


def _as_configmap(obj: Mapping[str, Any]) -> dict[str, Any]:
    """List items come without ``kind``/``apiVersion``; the parser wants them."""
    full = dict(obj)
    full.setdefault("kind", "ConfigMap")
    full.setdefault("apiVersion", "v1")
    return full


def interpret(
    obj: Mapping[str, Any], previous: PolicyEntry | None, tenancy_label: str | None = None
) -> PolicyEntry | None:
    """The entry for a ConfigMap version, given what we held before; None if not a policy.

    With ``tenancy_label``, the policy that runs is the scoped one, and a query that cannot be
    confined to the namespace makes the version invalid (the last good version keeps running).
    """
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
        if tenancy_label is not None:
            policy = scope_policy(policy, label=tenancy_label)
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
        self._on_change = on_change
        self._tenancy_label = settings.tenancy_label
        self.entries: dict[str, PolicyEntry] = {}
        args: tuple[str, ...] = ()
        if settings.namespace:
            method, args = core_api.list_namespaced_config_map, (settings.namespace,)
        else:
            method = core_api.list_config_map_for_all_namespaces
        self._reflector = Reflector(
            method,
            args,
            ReflectorSettings(
                "policies",
                label_selector=SELECTOR,
                watch_timeout=settings.watch_timeout,
                backoff_max=settings.backoff_max,
            ),
            on_relist=self._relisted,
            on_event=self._event,
            rng=rng,
        )
        self.listed = self._reflector.listed

    @property
    def relists(self) -> int:
        return self._reflector.relists

    @property
    def resource_version(self) -> str:
        return self._reflector.resource_version

    @resource_version.setter
    def resource_version(self, value: str) -> None:
        self._reflector.resource_version = value

    async def run(self) -> None:
        """List, then watch, until cancelled (see :class:`~runtime.reflector.Reflector`)."""
        await self._reflector.run()

    def _relisted(self, items: Sequence[Mapping[str, Any]]) -> None:
        seen: set[str] = set()
        for item in items:
            entry = self._upsert(item)
            if entry is not None:
                seen.add(entry.key)
        for key in [k for k in self.entries if k not in seen]:
            self._delete(key)

    def _event(self, kind: str, obj: Mapping[str, Any]) -> None:
        if kind == "DELETED":
            meta = metadata(obj)
            self._delete(f"{meta.get('namespace') or 'default'}/{meta.get('name')}")
        else:
            self._upsert(obj)

    def _upsert(self, obj: Mapping[str, Any]) -> PolicyEntry | None:
        meta = metadata(obj)
        key = f"{meta.get('namespace') or 'default'}/{meta.get('name')}"
        old = self.entries.get(key)
        new = interpret(obj, old, self._tenancy_label)
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
