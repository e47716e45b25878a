"""A minimal aggregation layer for the API stand-in, as kube-aggregator does it.

- `FrontProxyPki`: the front-proxy CA and its client certificate (CN `front-proxy-client`), and
  the `kube-system/extension-apiserver-authentication` ConfigMap that publishes them.
- `Aggregator.install(standin)`: APIService objects (`apiregistration.k8s.io/v1`, stored by the
  stand-in like any resource) and a proxy for `/apis/<group>/...` of the groups given: the
  request goes to the APIService's `spec.service` over HTTPS, presenting the front-proxy client
  certificate with `X-Remote-User` / `X-Remote-Group` (the caller; the stand-in has no
  authentication, so the caller is `user`/`groups`), verifying the backend against
  `spec.caBundle` for the name `<service>.<namespace>.svc`. An unreachable or unverifiable
  backend is a 503 `ServiceUnavailable` Status; a group without an APIService is a 404.

There is no cluster DNS: `endpoints[(namespace, service)] = (host, port)` says where a Service
answers (the test hook that stands in for the Service's endpoints).
"""

from __future__ import annotations

import base64
import copy
import json
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import trustme
from aiohttp import web

from tests.support.kube_standin import KubeStandIn

AUTH_NAMESPACE = "kube-system"
AUTH_CONFIGMAP = "extension-apiserver-authentication"
FRONT_PROXY_CN = "front-proxy-client"
HPA_USER = "system:serviceaccount:kube-system:horizontal-pod-autoscaler"
HPA_GROUPS = (
    "system:serviceaccounts",
    "system:serviceaccounts:kube-system",
    "system:authenticated",
)
# Hop-by-hop and identity headers the aggregator never forwards from the caller.
_DROP = {
    "authorization",
    "connection",
    "host",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "x-remote-user",
    "x-remote-group",
    "content-length",
}


@dataclass(frozen=True, slots=True)
class FrontProxyPki:
    ca: trustme.CA
    client_cert: trustme.LeafCert

    @classmethod
    def make(cls, common_name: str = FRONT_PROXY_CN) -> FrontProxyPki:
        ca = trustme.CA()
        return cls(ca, ca.issue_cert(common_name, common_name=common_name))

    @property
    def ca_pem(self) -> str:
        return self.ca.cert_pem.bytes().decode()

    def configmap(self, allowed_names: tuple[str, ...] = (FRONT_PROXY_CN,)) -> dict[str, Any]:
        """The ConfigMap kube-apiserver keeps in kube-system (the client-ca-file part omitted)."""
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": AUTH_CONFIGMAP, "namespace": AUTH_NAMESPACE},
            "data": {
                "requestheader-client-ca-file": self.ca_pem,
                "requestheader-allowed-names": json.dumps(list(allowed_names)),
                "requestheader-username-headers": json.dumps(["X-Remote-User"]),
                "requestheader-group-headers": json.dumps(["X-Remote-Group"]),
                "requestheader-extra-headers-prefix": json.dumps(["X-Remote-Extra-"]),
            },
        }


_PKI: list[FrontProxyPki] = []


def front_proxy_pki() -> FrontProxyPki:
    """One front-proxy CA per test session (making one costs a key generation)."""
    if not _PKI:
        _PKI.append(FrontProxyPki.make())
    return _PKI[0]


def api_service(
    group: str,
    version: str,
    service: tuple[str, str, int] | None,
    ca_pem: str | None,
) -> dict[str, Any]:
    """An APIService object; ``service`` is (namespace, name, port), None for a local group."""
    spec: dict[str, Any] = {
        "group": group,
        "version": version,
        "groupPriorityMinimum": 100,
        "versionPriority": 100,
    }
    if service is not None:
        spec["service"] = {"namespace": service[0], "name": service[1], "port": service[2]}
    if ca_pem is not None:
        spec["caBundle"] = base64.b64encode(ca_pem.encode()).decode()
    return {
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": f"{version}.{group}"},
        "spec": spec,
    }


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return web.json_response(body, status=code)


@dataclass
class Aggregator:
    """Proxies the given API groups to their APIService's backend (see the module docstring)."""

    pki: FrontProxyPki
    groups: tuple[str, ...] = ("external.metrics.k8s.io",)
    user: str = HPA_USER
    user_groups: tuple[str, ...] = HPA_GROUPS
    endpoints: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)
    forwarded: list[Mapping[str, str]] = field(default_factory=list)
    """Headers of each request sent to a backend (for assertions)."""
    standin: KubeStandIn | None = None
    session: aiohttp.ClientSession | None = None

    def install(self, standin: KubeStandIn) -> None:
        self.standin = standin
        standin.add_route(
            "GET",
            rf"/api/v1/namespaces/{AUTH_NAMESPACE}/configmaps/{AUTH_CONFIGMAP}",
            self._auth_configmap,
        )
        for group in self.groups:
            standin.add_route("*", rf"/apis/{re.escape(group)}(/.*)?", self._proxy)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def _auth_configmap(self, request: web.Request) -> web.StreamResponse:
        """The published ConfigMap, unless a test stored its own version of it."""
        assert self.standin is not None
        stored = self.standin.store.get("configmaps", AUTH_NAMESPACE, AUTH_CONFIGMAP)
        if stored is not None:
            return web.json_response(copy.deepcopy(stored))
        obj = self.pki.configmap()
        obj["metadata"].update(resourceVersion="1", uid="front-proxy-configmap")
        return web.json_response(obj)

    def _service_for(self, path: str) -> dict[str, Any] | None:
        assert self.standin is not None
        parts = [p for p in path.split("/") if p]
        group = parts[1]
        services = [
            s
            for s in self.standin.store.list("apiservices")
            if s["spec"].get("group") == group
            and (len(parts) < 3 or s["spec"].get("version") == parts[2])
        ]
        return services[0] if services else None

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        service = self._service_for(request.path)
        if service is None:
            return _status(404, "NotFound", "the server could not find the requested resource")
        name = service["metadata"]["name"]
        ref = service["spec"].get("service")
        if ref is None:
            return _status(503, "ServiceUnavailable", f"APIService {name} has no service")
        where = self.endpoints.get((ref["namespace"], ref["name"]))
        if where is None:
            return _status(
                503,
                "ServiceUnavailable",
                f'no endpoints available for service "{ref["namespace"]}/{ref["name"]}"',
            )
        context = self._client_context(service["spec"])
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP}
        forwarded: list[tuple[str, str]] = [*headers.items(), ("X-Remote-User", self.user)]
        forwarded += [("X-Remote-Group", g) for g in self.user_groups]
        self.forwarded.append(dict(forwarded))
        url = f"https://{where[0]}:{where[1]}{request.path_qs}"
        if self.session is None:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        try:
            async with self.session.request(
                request.method,
                url,
                headers=forwarded,
                data=await request.read() or None,
                ssl=context,
                server_hostname=f"{ref['name']}.{ref['namespace']}.svc",
            ) as resp:
                body = await resp.read()
                return web.Response(
                    body=body,
                    status=resp.status,
                    headers={"Content-Type": resp.headers.get("Content-Type", "application/json")},
                )
        except (aiohttp.ClientError, ssl.SSLError, OSError) as exc:
            return _status(
                503,
                "ServiceUnavailable",
                f"error trying to reach service {ref['namespace']}/{ref['name']}: {exc}",
            )

    def _client_context(self, spec: Mapping[str, Any]) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if spec.get("insecureSkipTLSVerify"):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            bundle = spec.get("caBundle")
            context.load_default_certs() if not bundle else context.load_verify_locations(
                cadata=base64.b64decode(bundle).decode()
            )
        self.pki.client_cert.configure_cert(context)
        return context
