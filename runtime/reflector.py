"""List + watch one resource through ``kubernetes.aio``, as client-go's reflector does; the
controller's policies and targets and the extender's nodes and pods all follow it.

Lists are paged (``limit``/``continue``) when ``page_size`` is set, and each page can be decoded
before the next is read, so listing 100,000 pods never holds more than one page of raw JSON. The
watch resumes from the last ``resourceVersion`` seen (events and bookmarks). A failed watch is
retried from the same version with jittered backoff; only 410 Gone (as an HTTP status or an
``ERROR`` event), or ``relist_after_failures`` failures in a row, cost a relist. The owner gets
the full list on each (re)list and every event in between, and keeps its own state.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from runtime.kube import KubeError, call, metadata, raw

log = logging.getLogger(__name__)

Relisted = Callable[[Sequence[Any]], None]
"""Called with every item of a fresh list (items carry no ``kind``), decoded when the reflector
has a ``decode``."""
Event = Callable[[str, Mapping[str, Any]], None]
"""Called with ``ADDED``/``MODIFIED``/``DELETED`` and the object."""


@dataclass(frozen=True, slots=True)
class ReflectorSettings:
    what: str
    """For logs: ``policies``, ``deployments``…"""
    label_selector: str | None = None
    field_selector: str | None = None
    watch_timeout: int = 300
    """Server-side timeout of one watch request, seconds; the watch then resumes."""
    backoff_max: float = 10.0
    relist_after_failures: int = 5
    page_size: int | None = None
    """Items per list request (``None``: one request)."""


class Reflector:
    """``run()`` until cancelled; ``listed`` is set after the first successful list."""

    def __init__(
        self,
        list_method: Any,
        args: tuple[Any, ...],
        settings: ReflectorSettings,
        *,
        on_relist: Relisted,
        on_event: Event,
        decode: Callable[[Mapping[str, Any]], Any] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """``decode`` turns each listed item into what ``on_relist`` gets, page by page (an item
        it maps to ``None`` is left out)."""
        self._list = list_method
        self._args = args
        self._settings = settings
        self._on_relist = on_relist
        self._on_event = on_event
        self._decode = decode
        self._rng = rng or random.Random()
        self.listed = asyncio.Event()
        self.resource_version = ""
        self.relists = 0

    async def run(self) -> None:
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
                if failures >= self._settings.relist_after_failures:
                    need_list = True
                delay = min(self._settings.backoff_max, 0.1 * 2**failures)
                log.warning(
                    f"{self._settings.what} list/watch failed; retrying",
                    extra={"error": str(exc), "retry_in_s": round(delay, 2), "relist": need_list},
                )
                await asyncio.sleep(self._rng.uniform(delay / 2, delay))

    def _selector(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self._settings.label_selector:
            out["label_selector"] = self._settings.label_selector
        if self._settings.field_selector:
            out["field_selector"] = self._settings.field_selector
        return out

    async def _relist(self) -> None:
        items: list[Any] = []
        token: str | None = None
        version = ""
        while True:
            paging: dict[str, Any] = {}
            if self._settings.page_size is not None:
                paging["limit"] = self._settings.page_size
                if token:
                    paging["_continue"] = token
            body = await call(self._list, *self._args, **self._selector(), **paging)
            page = body.pop("items", None) or []
            if self._decode is None:
                items.extend(page)
            else:
                items.extend(x for x in map(self._decode, page) if x is not None)
            meta = metadata(body)
            version = str(meta.get("resourceVersion", "") or version)
            token = str(meta.get("continue") or "") or None
            if not token:
                break
        self._on_relist(items)
        self.resource_version = version
        self.relists += 1
        self.listed.set()
        log.info(
            f"{self._settings.what} listed",
            extra={"items": len(items), "resource_version": self.resource_version},
        )

    async def _watch_once(self) -> bool:
        """Follow one watch request; True when a relist is needed (410 Gone)."""
        timeout = self._settings.watch_timeout
        resp: aiohttp.ClientResponse = await raw(self._list)(
            *self._args,
            **self._selector(),
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
                if line.strip() and self._handle(orjson.loads(line)):
                    return True
                # A read can hold hundreds of events (kwok starting a batch of pods); each
                # yields, so a request waiting on the same loop (kube-scheduler's filter) is
                # served after one event's work, not after the whole burst.
                await asyncio.sleep(0)
            return False
        finally:
            resp.release()

    def _handle(self, event: Mapping[str, Any]) -> bool:
        kind = str(event.get("type"))
        obj = event.get("object") or {}
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                log.info(f"{self._settings.what} watch expired (410 Gone); relisting")
                return True
            raise KubeError(int(code or 500), str(obj.get("reason", "")), obj)
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self._on_event(kind, obj)
        rv = str(metadata(obj).get("resourceVersion", ""))
        if rv:
            self.resource_version = rv
        return False


def _status_of(data: bytes) -> dict[str, Any] | None:
    try:
        decoded = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return decoded if isinstance(decoded, dict) else None
