"""Serving TLS: a self-signed certificate without test dependencies, renewals picked up live."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shutil
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import trustme
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from runtime.startup import serving
from runtime.tls import ServingTLS, self_signed_pem
from tests.autoscaler.helpers import (
    Certs,
    FakePrometheus,
    controller_settings,
    run_controller,
    wait_until,
)
from tests.support.kube_standin import KubeStandIn


def test_self_signed_certificate_names_the_hosts_and_matches_its_key() -> None:
    cert_pem, key_pem = self_signed_pem(["localhost", "127.0.0.1", "node-1"])
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, None)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "node-1"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert cert.public_key() == key.public_key()
    assert cert.issuer == cert.subject


def _write(cert: trustme.LeafCert, directory: Path) -> None:
    """Replace the pair the way a Secret volume update does: new files renamed into place."""
    for name, blob in (
        ("tls.crt", b"".join(p.bytes() for p in cert.cert_chain_pems)),
        ("tls.key", cert.private_key_pem.bytes()),
    ):
        tmp = directory / f".{name}.new"
        tmp.write_bytes(blob)
        os.replace(tmp, directory / name)


@contextlib.asynccontextmanager
async def _server(tls: ServingTLS) -> AsyncIterator[int]:
    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    application = web.Application()
    application.router.add_get("/", hello)
    async with serving(application, "127.0.0.1:0", tls.listening) as port:
        yield port


async def _served_serial(port: int, trust: ssl.SSLContext) -> int:
    """The serial number of the certificate a new connection is shown."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=trust)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()
    del reader
    return int(x509.load_der_x509_certificate(der).serial_number)


def _serial(cert: trustme.LeafCert) -> int:
    return int(x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes()).serial_number)


async def test_without_files_a_self_signed_certificate_is_served() -> None:
    tls = ServingTLS(None, None, hosts=["127.0.0.1"])
    async with _server(tls) as port:
        trust = ssl.create_default_context()
        trust.check_hostname = False
        trust.verify_mode = ssl.CERT_NONE
        assert await _served_serial(port, trust) > 0


async def test_a_connection_is_issued_no_session_ticket() -> None:
    """Our clients keep no TLS session cache, so a ticket would be CPU spent for nothing: the
    server issues none (OpenSSL sends two after a TLS 1.3 handshake unless told not to)."""
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    server_side = ServingTLS(None, None)
    for context in (server_side.listening, server_side.current):
        leaf.configure_cert(context)
    trust = ssl.create_default_context()
    ca.configure_trust(trust)
    trust.minimum_version = ssl.TLSVersion.TLSv1_3
    async with _server(server_side) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=trust)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = await reader.read()  # tickets, when sent, arrive before the reply
            session = writer.get_extra_info("ssl_object").session
        finally:
            writer.close()
            with contextlib.suppress(ssl.SSLError, ConnectionError):
                await writer.wait_closed()
    assert reply.startswith(b"HTTP/1.1 200")
    assert session is not None and not session.has_ticket


async def test_renewed_certificate_files_are_served_to_new_connections(tmp_path: Path) -> None:
    ca = trustme.CA()
    old, new = ca.issue_cert("127.0.0.1"), ca.issue_cert("127.0.0.1")
    _write(old, tmp_path)
    tls = ServingTLS(str(tmp_path / "tls.crt"), str(tmp_path / "tls.key"))
    trust = ssl.create_default_context()
    ca.configure_trust(trust)
    watcher = asyncio.create_task(tls.watch_files(0.05))
    try:
        async with _server(tls) as port:
            assert await _served_serial(port, trust) == _serial(old)

            # A half-written renewal does not load: the old certificate stays.
            (tmp_path / "tls.crt").write_text("-----BEGIN CERTIFICATE-----\ntruncated")
            assert not tls.reload_if_changed() and tls.reloads == 0
            assert await _served_serial(port, trust) == _serial(old)

            _write(new, tmp_path)

            async def renewed() -> bool:
                return await _served_serial(port, trust) == _serial(new)

            await wait_until(renewed, within=10)
            assert tls.reloads == 1
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def test_the_controller_serves_a_renewed_certificate_without_a_restart(
    kube: KubeStandIn, fake_prometheus: FakePrometheus, certs: Certs, tmp_path: Path
) -> None:
    renewed = certs.ca.issue_cert("127.0.0.1", "localhost")
    shutil.copy(certs.cert_file, tmp_path / "tls.crt")
    shutil.copy(certs.key_file, tmp_path / "tls.key")
    assert kube.kubeconfig_path is not None
    settings = controller_settings(
        fake_prometheus.url,
        kube.kubeconfig_path,
        certs,
        tls_cert_file=str(tmp_path / "tls.crt"),
        tls_private_key_file=str(tmp_path / "tls.key"),
        tls_reload_interval=0.1,
    )
    trust = ssl.create_default_context()
    certs.ca.configure_trust(trust)
    async with run_controller(settings) as rc:
        port = rc.running.secure_port
        assert port is not None
        first = await _served_serial(port, trust)
        assert first != _serial(renewed)
        _write(renewed, tmp_path)

        async def picked_up() -> bool:
            return await _served_serial(port, trust) == _serial(renewed)

        await wait_until(picked_up, within=10)
