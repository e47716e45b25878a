"""The extender over mTLS: kube-scheduler's certificate opens the verbs, nothing else does.

Real sockets on 127.0.0.1, the API stand-in behind the extender, certificates from trustme.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import trustme

from extender.access import AccessPolicy, refusal
from extender.app import ExtenderProcess, serve_extender
from extender.inventory import InventoryConfig
from runtime.serving import Peer
from runtime.startup import StartupError
from tests.extender.test_cluster_cache import pod_obj
from tests.support.kube_standin import KubeStandIn


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Pki:
    ca: trustme.CA
    directory: Path

    def client(self, common_name: str, ca: trustme.CA | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        (ca or self.ca).issue_cert("client.test", common_name=common_name).configure_cert(context)
        return context

    def anonymous(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = trustme.CA()
    serving = ca.issue_cert("127.0.0.1", "localhost")
    serving.private_key_pem.write_to_path(str(tmp_path / "tls.key"))
    (tmp_path / "tls.crt").write_bytes(b"".join(p.bytes() for p in serving.cert_chain_pems))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    return Pki(ca, tmp_path)


@dataclass
class Running:
    verbs: str
    ops: str


@contextlib.asynccontextmanager
async def _extender(pki: Pki, kube_client: Any) -> AsyncIterator[Running]:
    stop, ready = asyncio.Event(), asyncio.Event()
    ports: list[int] = []
    ops_port = _free_port()
    settings = ExtenderProcess(
        address="127.0.0.1:0",
        ops_address=f"127.0.0.1:{ops_port}",
        tls_cert_file=str(pki.directory / "tls.crt"),
        tls_private_key_file=str(pki.directory / "tls.key"),
        client_ca_file=str(pki.directory / "ca.crt"),
        inventory=InventoryConfig(stale_after=30),
    )
    server = asyncio.create_task(
        serve_extender(
            settings, stop=stop, api_client=kube_client, on_listening=ports.append, ready=ready
        )
    )
    try:
        await asyncio.wait_for(ready.wait(), 10)
        yield Running(f"https://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ops_port}")
    finally:
        stop.set()
        await asyncio.wait_for(server, 10)


def _bind_args(pod: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {
            "PodName": "llm",
            "PodNamespace": "default",
            "PodUID": pod["metadata"]["uid"],
            "Node": "gpu-1",
        }
    )


async def test_only_an_allowed_scheduler_certificate_may_bind(
    kube: KubeStandIn, kube_client: Any, pki: Pki
) -> None:
    kube.store.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gpu-1"}})
    kube.store.create(pod_obj("llm", 0))
    pod = kube.store.get("pods", "default", "llm")
    assert pod is not None
    other_ca = trustme.CA()
    async with _extender(pki, kube_client) as ext, aiohttp.ClientSession() as http:
        refused: list[str] = []
        for who, context in (
            ("no certificate", pki.anonymous()),
            ("another CA", pki.client("system:kube-scheduler", ca=other_ca)),
        ):
            with contextlib.suppress(aiohttp.ClientError, ssl.SSLError, ConnectionError):
                async with http.post(f"{ext.verbs}/bind", data=_bind_args(pod), ssl=context):
                    continue
            refused.append(who)
        assert refused == ["no certificate", "another CA"]

        wrong = pki.client("system:node:gpu-1")
        async with http.post(f"{ext.verbs}/bind", data=_bind_args(pod), ssl=wrong) as r:
            assert r.status == 403
            assert "may not call /bind" in orjson.loads(await r.read())["Error"]
        current = kube.store.get("pods", "default", "llm")
        assert current is not None and not current["spec"].get("nodeName")

        scheduler = pki.client("system:kube-scheduler")
        filter_args = orjson.dumps({"Pod": pod, "Nodes": None, "NodeNames": ["gpu-1"]})
        async with http.post(f"{ext.verbs}/filter", data=filter_args, ssl=scheduler) as r:
            assert r.status == 200
        async with http.post(f"{ext.verbs}/bind", data=_bind_args(pod), ssl=scheduler) as r:
            assert orjson.loads(await r.read()) == {"Error": ""}
        await kube.wait_for_object(
            "pods", "default", "llm", lambda p: p["spec"].get("nodeName") == "gpu-1"
        )


async def test_probes_and_metrics_are_plain_http_on_the_ops_port_and_verbs_are_not(
    kube: KubeStandIn, kube_client: Any, pki: Pki
) -> None:
    async with _extender(pki, kube_client) as ext, aiohttp.ClientSession() as http:
        for path in ("/livez", "/readyz", "/metrics"):
            async with http.get(f"{ext.ops}{path}") as r:
                assert r.status == 200, path
        async with http.get(f"{ext.ops}/metrics") as r:
            assert "gpuscale_connections_closed_total" in await r.text()
        async with http.post(f"{ext.ops}/bind", data=b"{}") as r:
            assert r.status == 403
            assert "only on the extender's mTLS port" in orjson.loads(await r.read())["Error"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"address": "0.0.0.0:0", "plain_http_sidecar": True},
            "refusing plain HTTP on 0.0.0.0:0",
        ),
        ({"address": "10.1.2.3:8888", "plain_http_sidecar": True}, "refusing plain HTTP"),
        ({"address": "127.0.0.1:0"}, "serves its verbs over mTLS"),
        (
            {"address": "127.0.0.1:0", "plain_http_sidecar": True, "client_ca_file": "ca.crt"},
            "drop it or the TLS files",
        ),
    ],
)
async def test_plain_http_off_loopback_or_without_the_sidecar_flag_is_refused_at_start_up(
    changes: dict[str, Any], message: str
) -> None:
    settings = ExtenderProcess(ops_address=None, **changes)
    with pytest.raises(StartupError, match=message):
        await serve_extender(settings, api_client=object())


def test_access_rules_per_listener_and_identity() -> None:
    policy = AccessPolicy.of(["system:kube-scheduler"])
    scheduler = {"subject": ((("commonName", "system:kube-scheduler"),),)}
    by_san = {
        "subject": ((("commonName", "x"),),),
        "subjectAltName": (("DNS", "system:kube-scheduler"),),
    }
    other = {"subject": ((("commonName", "intruder"),),)}
    assert refusal(policy, "/bind", Peer("verbs", True, scheduler)) is None
    assert refusal(policy, "/bind", Peer("verbs", True, by_san)) is None
    refused = refusal(policy, "/filter", Peer("verbs", True, other))
    assert refused is not None and refused[0] == 403 and "intruder" in refused[1]
    assert refusal(policy, "/readyz", Peer("verbs", True, other)) is None
    assert refusal(policy, "/bind", Peer("verbs", False, None)) is None  # loopback sidecar
    assert refusal(policy, "/bind", Peer("ops", False, None)) is not None
    assert refusal(policy, "/metrics", Peer("ops", False, None)) is None
    assert refusal(AccessPolicy.of([]), "/bind", Peer("verbs", True, other)) is None
