"""Kubernetes access shared by the three servers: one client, and calls as plain JSON.

The client (:func:`kube_client`) has ``trust_env`` off. With it on (the client's default),
aiohttp looks up ``~/.netrc`` and the proxy variables in a worker thread on every request: two
thread hand-offs per API call, which doubled the controller's CPU per call and added the same to
every bind of the extender (0.7 ms of client CPU per Binding, measured against a local server; a
raw aiohttp call costs 0.18 ms). A kubeconfig's ``proxy-url`` still applies: the client passes
it with each request.

The generated client turns every response into model objects, which costs CPU at 1,000 policies
and hides the raw fields (``resourceVersion``, unknown fields) we compare. :func:`call` uses the
generated method's ``*_without_preload_content`` twin, checks the status itself and decodes the
body once with orjson.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import orjson


class KubeAccessError(Exception):
    """No usable Kubernetes credentials; the message names where they were looked for."""


async def kube_client(kubeconfig: str | None) -> Any:
    """A ``kubernetes.aio`` ApiClient from a kubeconfig file, else from the pod's service
    account."""
    from kubernetes.aio import client, config

    configuration = client.Configuration()
    configuration.client_session_kwargs = {"trust_env": False}
    try:
        if kubeconfig:
            await config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig,
                client_configuration=configuration,
                persist_config=False,
            )
        else:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except Exception as exc:
        where = kubeconfig or "in-cluster service account"
        raise KubeAccessError(f"cannot load Kubernetes configuration from {where}: {exc}") from None
    return client.ApiClient(configuration)


class KubeError(Exception):
    """A non-2xx answer from the API server, with its ``Status`` body when it sent one."""

    def __init__(self, status: int, reason: str, body: Mapping[str, Any] | None = None) -> None:
        self.status = status
        self.reason = reason
        self.body: Mapping[str, Any] = body or {}
        super().__init__(f"{status} {reason}: {self.message}")

    @property
    def message(self) -> str:
        return str(self.body.get("message", ""))

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def gone(self) -> bool:
        return self.status == 410


def raw(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """The ``*_without_preload_content`` twin of a bound generated API method."""
    owner = method.__self__  # type: ignore[attr-defined]
    name = method.__name__
    twin = getattr(owner, f"{name}_without_preload_content", None)
    if twin is None:
        raise TypeError(f"{name} has no _without_preload_content variant")
    return twin  # type: ignore[no-any-return]


CALL_TIMEOUT = 30.0
"""Seconds one (non-watch) API call may take. The client's own default is five minutes: a call
caught by an API server restart could hold the HPA worker that long (seen in the e2e)."""


async def call(method: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run one API call and return the decoded JSON body; raise :class:`KubeError` on non-2xx
    and on a broken connection (status 0), so that callers retry it like any failed call."""
    kwargs.setdefault("_request_timeout", CALL_TIMEOUT)
    try:
        resp: aiohttp.ClientResponse = await raw(method)(*args, **kwargs)
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        if isinstance(exc, OSError):
            raise
        raise KubeError(0, type(exc).__name__, {"message": str(exc)}) from exc
    try:
        try:
            data = await resp.read()
        except aiohttp.ClientPayloadError as exc:
            raise KubeError(0, type(exc).__name__, {"message": str(exc)}) from exc
        if resp.status >= 400:
            raise KubeError(resp.status, resp.reason or "", _decode_status(data))
        if not data:
            return {}
        decoded = orjson.loads(data)
        return decoded if isinstance(decoded, dict) else {"value": decoded}
    finally:
        resp.release()


def _decode_status(data: bytes) -> dict[str, Any] | None:
    try:
        decoded = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {"message": data[:200].decode("utf-8", "replace")}
    return decoded if isinstance(decoded, dict) else None


def metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}
