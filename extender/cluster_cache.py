"""Keeps :class:`~extender.cluster_state.ClusterState` in step with Kubernetes, and binds pods.

Nodes and pods are listed, then watched, by the reflector every gpuscale server uses
(:mod:`runtime.reflector`): paged lists decoded page by page, watches resumed from the last
``resourceVersion``, and a fresh list after 410 Gone or a failed watch (the state is then
replaced by it, so nothing deleted meanwhile lingers). Raw JSON is decoded with orjson and the
extender's own decoders rather than the client's model classes: it is much faster for 100,000
pods and keeps only the fields placement uses.

Binding follows kube-scheduler: a ``Binding`` subresource with the pod's UID as a precondition.
The chosen devices travel as the Binding's ``gpuscale.io/gpu-indices`` annotation, which the
apiserver copies onto the pod in the same write: one API call per pod, and no pod is ever
annotated but unbound (or bound without its devices).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import orjson

from extender.cluster_state import ClusterState
from extender.decode import BadRequest, node_from_json, pod_from_json
from extender.dra import (
    DraError,
    ResourceClaim,
    ResourceSlice,
    claim_from_json,
    device_class_from_json,
    slice_from_json,
)
from extender.objects import GPU_INDICES_ANNOTATION, NodeInfo, PodRequest
from extender.server import BindError
from runtime.reflector import Reflector, ReflectorSettings

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
        dra: bool = False,
    ) -> None:
        """``dra`` adds ResourceSlices, ResourceClaims and DeviceClasses
        (``resource.k8s.io/v1``, read-only) to what is watched."""
        from kubernetes.aio import client

        self.core = client.CoreV1Api(api_client)
        self.state = state
        self.synced = {"nodes": asyncio.Event(), "pods": asyncio.Event()}
        self.changed = asyncio.Event()
        """Set whenever a list or watch event has been applied (for waiters; never cleared here)."""

        def settings(what: str, fields: str | None = None) -> ReflectorSettings:
            # A failed watch lists again at once (relist_after_failures=1): the state must
            # never miss a deletion, and a list of what the extender keeps is cheap.
            return ReflectorSettings(
                what,
                field_selector=fields,
                watch_timeout=watch_timeout,
                backoff_max=max_backoff,
                relist_after_failures=1,
                page_size=page_size,
            )

        self._reflectors = {
            "nodes": Reflector(
                self.core.list_node,
                (),
                settings("nodes"),
                on_relist=self._nodes_listed,
                on_event=self._node_event,
                decode=self._node,
            ),
            "pods": Reflector(
                self.core.list_pod_for_all_namespaces,
                (),
                settings("pods", POD_FIELD_SELECTOR),
                on_relist=self._pods_listed,
                on_event=self._pod_event,
                decode=self._pod,
            ),
        }
        if dra:
            self._watch_dra(client.ResourceV1Api(api_client), settings)

    def _watch_dra(self, api: Any, settings: Callable[[str], ReflectorSettings]) -> None:
        """Slices and claims go into the state (they change GPU accounting); classes are kept
        by name for the needs of pods' claims. A claim's spec is the template's copy, and the
        request's pod names its generated claim in ``status.resourceClaimStatuses`` (the DRA
        plugin schedules a pod only once that claim exists), so templates are not watched."""
        state = self.state
        for kind in ("resourceslices", "resourceclaims", "deviceclasses"):
            self.synced[kind] = asyncio.Event()

        def listed(
            kind: str, apply: Callable[[Sequence[Any]], None]
        ) -> Callable[[Sequence[Any]], None]:
            def on_relist(items: Sequence[Any]) -> None:
                apply(items)
                self.synced[kind].set()
                self.changed.set()

            return on_relist

        def event(
            upsert: Callable[[Any], None],
            delete: Callable[[str, str], None],
            decode: Callable[[Any], Any],
        ) -> Callable[[str, Mapping[str, Any]], None]:
            def on_event(etype: str, obj: Mapping[str, Any]) -> None:
                meta = obj.get("metadata") or {}
                if etype == "DELETED":
                    delete(str(meta.get("namespace") or "default"), str(meta.get("name")))
                elif (item := decode(obj)) is not None:
                    upsert(item)
                self.changed.set()

            return on_event

        def classes(items: Sequence[Any]) -> None:
            state.dra.classes = {c.name: c for c in items}

        def upsert_class(c: Any) -> None:
            state.dra.classes[c.name] = c

        def delete_class(_ns: str, name: str) -> None:
            state.dra.classes.pop(name, None)

        self._reflectors["resourceslices"] = Reflector(
            api.list_resource_slice,
            (),
            settings("resourceslices"),
            on_relist=listed("resourceslices", state.replace_slices),
            on_event=event(
                state.upsert_slice, lambda _ns, name: state.delete_slice(name), self._slice
            ),
            decode=self._slice,
        )
        self._reflectors["resourceclaims"] = Reflector(
            api.list_resource_claim_for_all_namespaces,
            (),
            settings("resourceclaims"),
            on_relist=listed("resourceclaims", state.replace_claims),
            on_event=event(
                state.upsert_claim, lambda ns, name: state.delete_claim(f"{ns}/{name}"), self._claim
            ),
            decode=self._claim,
        )
        self._reflectors["deviceclasses"] = Reflector(
            api.list_device_class,
            (),
            settings("deviceclasses"),
            on_relist=listed("deviceclasses", classes),
            on_event=event(upsert_class, delete_class, self._class),
            decode=self._class,
        )

    @staticmethod
    def _dra_decode(decode: Callable[[Any], Any], raw: Any, what: str) -> Any:
        try:
            return decode(raw)
        except DraError as exc:
            log.warning(f"{what} skipped", extra={"error": str(exc)})
            return None

    def _slice(self, raw: Any) -> ResourceSlice | None:
        out: ResourceSlice | None = self._dra_decode(slice_from_json, raw, "resourceslice")
        return out

    def _claim(self, raw: Any) -> ResourceClaim | None:
        out: ResourceClaim | None = self._dra_decode(claim_from_json, raw, "resourceclaim")
        return out

    def _class(self, raw: Any) -> Any:
        return self._dra_decode(device_class_from_json, raw, "deviceclass")

    @property
    def ready(self) -> bool:
        return all(e.is_set() for e in self.synced.values())

    @property
    def relists(self) -> dict[str, int]:
        return {kind: r.relists for kind, r in self._reflectors.items()}

    async def run(self) -> None:
        """Watch nodes and pods until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for reflector in self._reflectors.values():
                tg.create_task(reflector.run())

    def _nodes_listed(self, nodes: Sequence[NodeInfo]) -> None:
        self.state.replace_nodes(nodes)
        self.synced["nodes"].set()
        self.changed.set()

    def _pods_listed(self, pods: Sequence[PodRequest]) -> None:
        self.state.replace_pods(pods)
        self.synced["pods"].set()
        self.changed.set()

    def _node_event(self, etype: str, obj: Mapping[str, Any]) -> None:
        if etype == "DELETED":
            name = (obj.get("metadata") or {}).get("name")
            if isinstance(name, str):
                self.state.delete_node(name)
        elif (node := self._node(obj)) is not None:
            self.state.upsert_node(node)
        self.changed.set()

    def _pod_event(self, etype: str, obj: Mapping[str, Any]) -> None:
        if etype == "DELETED":
            meta = obj.get("metadata") or {}
            self.state.delete_pod(f"{meta.get('namespace', 'default')}/{meta.get('name')}")
        elif (pod := self._pod(obj)) is not None:
            self.state.upsert_pod(pod)
        self.changed.set()

    def _node(self, raw: Any) -> NodeInfo | None:
        try:
            return node_from_json(raw)
        except BadRequest as exc:
            log.warning("node skipped", extra={"error": str(exc)})
            return None

    def _pod(self, raw: Any) -> PodRequest | None:
        try:
            return pod_from_json(raw)
        except BadRequest as exc:
            log.warning("pod skipped", extra={"error": str(exc)})
            return None

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

    async def get_claim(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        from kubernetes.aio import client

        api = client.ResourceV1Api(self.core.api_client)
        return await _object_or_none(
            api.read_namespaced_resource_claim_without_preload_content(name, namespace)
        )

    async def get_pod(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return await _object_or_none(
            self.core.read_namespaced_pod_without_preload_content(name, namespace)
        )


async def _object_or_none(call: Awaitable[Any]) -> Mapping[str, Any] | None:
    """The object a GET returns, or ``None`` when it fails or finds nothing (callers decide
    without it: a bind check, a fresh read of a pod)."""
    from kubernetes.aio.client.exceptions import ApiException

    try:
        resp = await call
    except (ApiException, OSError, TimeoutError):
        return None
    try:
        if resp.status != 200:
            return None
        data = orjson.loads(await resp.read())
    finally:
        resp.release()
    return data if isinstance(data, dict) else None
