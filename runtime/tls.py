"""Serving TLS for every server: certificate and client CA, both swappable live.

A listening socket keeps the ``SSLContext`` it was started with, so that context only carries an
SNI callback that hands each new handshake the latest context: a renewed certificate on disk
(cert-manager rotates it every ~60 days) or a new front-proxy CA takes effect for new connections
without a restart; open connections keep theirs.

By default the client certificate is asked for but optional at the TLS layer (the controller's
metrics API answers a missing one with a 401 ``Status``, as kube-apiserver does); one from
another CA fails the handshake. ``require_client_certificate`` (the extender) fails the handshake
without one too, so a stranger costs no more than a refused handshake.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import os
import shutil
import ssl
import tempfile
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

SESSION_TICKETS = 0
"""TLS 1.3 session tickets a handshake issues. Our clients (kube-scheduler's extender client,
the aggregator's proxy, client-go in general) keep no session cache, so a ticket is never used;
OpenSSL's default of two cost a third of the server's handshake CPU with a client certificate
(0.92 -> 0.62 ms, OpenSSL 3.0, measured in process), and kube-scheduler opens a new connection
for about every third pod it schedules through the extender (docs/benchmarks.md)."""


def self_signed_pem(hosts: Iterable[str], days: int = 365) -> tuple[bytes, bytes]:
    """A self-signed serving certificate and its key (PEM), as generic apiservers make one."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    names = list(dict.fromkeys(hosts))
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    alt: list[x509.GeneralName] = []
    for host in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"{names[0]}@{int(now.timestamp())}")]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def _load_pem_pair(context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """``load_cert_chain`` wants files: write them to a private directory and remove it again."""
    directory = tempfile.mkdtemp(prefix="gpuscale-tls-")  # mode 0700
    try:
        cert_path = os.path.join(directory, "tls.crt")
        key_path = os.path.join(directory, "tls.key")
        for path, data in ((cert_path, cert_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        context.load_cert_chain(cert_path, key_path)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _mtime(path: str) -> float | None:
    try:
        return Path(path).stat().st_mtime_ns / 1e9
    except OSError:
        return None


class ServingTLS:
    """Serving certificate from files (reloaded on change) or self-signed; client CA swappable."""

    def __init__(
        self,
        cert_file: str | None,
        key_file: str | None,
        *,
        client_ca_pem: str | None = None,
        hosts: Iterable[str] = ("localhost", "127.0.0.1"),
        require_client_certificate: bool = False,
    ) -> None:
        self.cert_file = cert_file
        self.require_client_certificate = require_client_certificate
        self.key_file = key_file
        self._client_ca_pem = client_ca_pem
        self._self_signed: tuple[bytes, bytes] | None = None
        if not (cert_file and key_file):
            self._self_signed = self_signed_pem(hosts)
        self._stamp = self._file_stamp()
        self.current = self._build()
        self.listening = self._build()
        self.listening.sni_callback = self._pick
        self.reloads = 0
        """How many times the certificate or CA changed since start (for tests and logs)."""

    def _file_stamp(self) -> tuple[float | None, float | None]:
        if self._self_signed is not None or not (self.cert_file and self.key_file):
            return (None, None)
        return (_mtime(self.cert_file), _mtime(self.key_file))

    def _build(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.num_tickets = SESSION_TICKETS
        if self._self_signed is not None:
            _load_pem_pair(context, *self._self_signed)
        else:
            assert self.cert_file and self.key_file
            context.load_cert_chain(self.cert_file, self.key_file)
        if self._client_ca_pem:
            context.load_verify_locations(cadata=self._client_ca_pem)
            context.verify_mode = (
                ssl.CERT_REQUIRED if self.require_client_certificate else ssl.CERT_OPTIONAL
            )
        else:
            context.verify_mode = ssl.CERT_NONE
        return context

    def _pick(self, sslobj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        sslobj.context = self.current

    def set_client_ca(self, pem: str | None) -> bool:
        """Trust a new front-proxy CA for new connections; True when it changed."""
        if pem == self._client_ca_pem:
            return False
        self._client_ca_pem = pem
        self.current = self._build()
        self.reloads += 1
        log.info("client CA changed; new connections use it")
        return True

    def reload_if_changed(self) -> bool:
        """Load the certificate files again if either changed on disk; True when reloaded.

        A half-written pair (renewal in progress) fails to load: keep the old one and retry on
        the next check.
        """
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return False
        try:
            context = self._build()
        except (ssl.SSLError, OSError) as exc:
            log.warning(
                "serving certificate changed but does not load; keeping the old one",
                extra={"error": str(exc), "cert_file": self.cert_file},
            )
            return False
        self._stamp = stamp
        self.current = context
        self.reloads += 1
        log.info("serving certificate reloaded", extra={"cert_file": self.cert_file})
        return True

    async def watch_files(self, interval: float) -> None:
        """Check the certificate files every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            self.reload_if_changed()
