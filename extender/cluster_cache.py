"""Keeps :class:`~extender.state.ClusterState` in step with Kubernetes, and binds pods.

Nodes and pods are listed, then watched from the list's ``resourceVersion``; an expired version
(410) or a broken stream means a fresh list (and the state is replaced by it, so nothing deleted
meanwhile lingers). Raw JSON is decoded with orjson and the extender's own decoders rather than the
client's model classes: it is much faster for 100,000 pods and keeps only the fields placement uses.

Binding follows kube-scheduler: a ``Binding`` subresource with the pod's UID as a precondition.
The chosen devices travel as the Binding's ``gpuscale.io/gpu-indices`` annotation, which the
apiserver copies onto the pod in the same write: one API call per pod, and no pod is ever
annotated but unbound (or bound without its devices).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import orjson

from extender.decode import BadRequest, node_from_json, pod_from_json
from extender.model import GPU_INDICES_ANNOTATION
from extender.server import BindError
from extender.state import ClusterState

log = logging.getLogger("gpuscale.extender.cache")

POD_FIELD_SELECTOR: Final = "status.phase!=Succeeded,status.phase!=Failed"
"""Finished pods hold no GPU memory; kube-scheduler's informer uses the same selector."""


def _message(body: bytes) -> str:
    """The ``message`` of a Kubernetes ``Status`` body, else the start of the body."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode(errors="replace")
    message = data.get("message") if isinstance(data, dict) else None
    if isinstance(message, str):
        return message
    return body[:200].decode(errors="replace")


class _Expired(Exception):
    """The watch's resourceVersion is too old (HTTP 410): list again."""


class KubeCluster:
    """List+watch of nodes and pods into ``state``, plus the :class:`~extender.server.Binder`
    calls. ``api_client`` is a ``kubernetes.aio.client.ApiClient``."""

    def __init__(
        self,
        api_client: Any,
        state: ClusterState,
        *,
        watch_timeout: int = 300,
        max_backoff: float = 30.0,
        page_size: int = 500,
    ) -> None:
        from kubernetes.aio import client

        self.core = client.CoreV1Api(api_client)
        self.state = state
        self.watch_timeout = watch_timeout
        self.max_backoff = max_backoff
        self.page_size = page_size
        self.synced = {"nodes": asyncio.Event(), "pods": asyncio.Event()}
        self.relists = {"nodes": 0, "pods": 0}
        self.changed = asyncio.Event()
        """Set whenever a list or watch event has been applied (for waiters; never cleared here)."""

    @property
    def ready(self) -> bool:
        return all(e.is_set() for e in self.synced.values())

    async def run(self) -> None:
        """Watch nodes and pods until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._loop("nodes"))
            tg.create_task(self._loop("pods"))

    def _list_call(self, kind: str) -> Callable[..., Awaitable[Any]]:
        if kind == "nodes":
            return self.core.list_node_without_preload_content
        fn = self.core.list_pod_for_all_namespaces_without_preload_content

        async def pods(**kwargs: Any) -> Any:
            return await fn(field_selector=POD_FIELD_SELECTOR, **kwargs)

        return pods

    async def _loop(self, kind: str) -> None:
        backoff = 0.5
        while True:
            try:
                rv = await self._relist(kind)
                backoff = 0.5
                while True:
                    rv = await self._watch(kind, rv)
            except _Expired:
                log.info("watch expired; listing again", extra={"resource": kind})
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "list/watch failed; retrying",
                    extra={"resource": kind, "error": repr(exc), "retry_in_s": backoff},
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)

    async def _relist(self, kind: str) -> str:
        """List in pages (as client-go's reflector does), so that decoding 100,000 pods never
        holds more than one page of raw JSON; then replace the state's objects."""
        decoded: list[Any] = []
        token: str | None = None
        rv = ""
        while True:
            resp = await self._list_call(kind)(limit=self.page_size, _continue=token)
            try:
                body = await resp.read()
                if resp.status == 410:
                    raise _Expired
                if resp.status != 200:
                    raise RuntimeError(f"list {kind}: HTTP {resp.status}: {body[:200]!r}")
            finally:
                resp.release()
            data = orjson.loads(body)
            del body
            decode = self._node if kind == "nodes" else self._pod
            decoded.extend(x for x in map(decode, data.get("items") or []) if x is not None)
            meta = data.get("metadata") or {}
            rv = str(meta.get("resourceVersion") or rv)
            token = meta.get("continue") or None
            if not token:
                break
        if kind == "nodes":
            self.state.replace_nodes(decoded)
        else:
            self.state.replace_pods(decoded)
        self.relists[kind] += 1
        self.synced[kind].set()
        self.changed.set()
        log.info("listed", extra={"resource": kind, "items": len(decoded), "resourceVersion": rv})
        return rv

    def _node(self, raw: Any) -> Any:
        try:
            return node_from_json(raw)
        except BadRequest as exc:
            log.warning("node skipped", extra={"error": str(exc)})
            return None

    def _pod(self, raw: Any) -> Any:
        try:
            return pod_from_json(raw)
        except BadRequest as exc:
            log.warning("pod skipped", extra={"error": str(exc)})
            return None

    async def _watch(self, kind: str, rv: str) -> str:
        """Apply events until the server ends the stream; returns the last resourceVersion."""
        resp = await self._list_call(kind)(
            watch=True,
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=self.watch_timeout,
        )
        try:
            if resp.status == 410:
                raise _Expired
            if resp.status != 200:
                body = await resp.read()
                raise RuntimeError(f"watch {kind}: HTTP {resp.status}: {body[:200]!r}")
            async for line in resp.content:
                if not line.strip():
                    continue
                event = orjson.loads(line)
                rv = self._apply(kind, event, rv)
                self.changed.set()
        finally:
            resp.release()
        return rv

    def _apply(self, kind: str, event: Mapping[str, Any], rv: str) -> str:
        etype, obj = event.get("type"), event.get("object") or {}
        if etype == "ERROR":
            if obj.get("code") == 410:
                raise _Expired
            raise RuntimeError(f"watch {kind}: {obj.get('message', obj)}")
        meta = obj.get("metadata") or {}
        new_rv = str(meta.get("resourceVersion") or rv)
        if etype == "BOOKMARK":
            return new_rv
        if kind == "nodes":
            name = meta.get("name")
            if etype == "DELETED":
                if isinstance(name, str):
                    self.state.delete_node(name)
            elif (node := self._node(obj)) is not None:
                self.state.upsert_node(node)
        else:
            key = f"{meta.get('namespace', 'default')}/{meta.get('name')}"
            if etype == "DELETED":
                self.state.delete_pod(key)
            elif (pod := self._pod(obj)) is not None:
                self.state.upsert_pod(pod)
        return new_rv

    # ---- Binder --------------------------------------------------------------------------
    async def bind(
        self, *, namespace: str, name: str, uid: str, node: str, gpu_indices: tuple[int, ...]
    ) -> None:
        from kubernetes.aio import client
        from kubernetes.aio.client.exceptions import ApiException

        annotations = (
            {GPU_INDICES_ANNOTATION: ",".join(map(str, gpu_indices))} if gpu_indices else None
        )
        try:
            binding = client.V1Binding(
                api_version="v1",
                kind="Binding",
                metadata=client.V1ObjectMeta(
                    name=name, namespace=namespace, uid=uid or None, annotations=annotations
                ),
                target=client.V1ObjectReference(api_version="v1", kind="Node", name=node),
            )
            resp = await self.core.create_namespaced_pod_binding_without_preload_content(
                name, namespace, binding
            )
            try:
                if resp.status >= 300:
                    body = await resp.read()
                    raise BindError(f"HTTP {resp.status}: {_message(body)}")
            finally:
                resp.release()
        except ApiException as exc:
            raise BindError(f"HTTP {exc.status}: {exc.reason}") from None
        except (OSError, TimeoutError) as exc:
            raise BindError(f"API unreachable: {exc!r}") from None

    async def get_pod(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        from kubernetes.aio.client.exceptions import ApiException

        try:
            resp = await self.core.read_namespaced_pod_without_preload_content(name, namespace)
        except (ApiException, OSError, TimeoutError):
            return None
        try:
            if resp.status != 200:
                return None
            data = orjson.loads(await resp.read())
        finally:
            resp.release()
        return data if isinstance(data, dict) else None
