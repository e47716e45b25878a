"""Bounded connections, over real sockets on 127.0.0.1.

Deadlines are configured short (a fraction of a second) and the tests wait for their effect
(the server closing the socket, a counter), never for a duration; each wait has a generous
bound that only a broken server reaches.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator

import aiohttp
import pytest
import trustme
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from runtime import serving
from runtime.limits import ConnectionLimits
from runtime.serving import ConnectionMetrics, Listener, Served, peer_of, serve
from tests.autoscaler.helpers import wait_until

BOUND = 20.0
"""Seconds any single wait may take before the test fails (only a broken server gets there)."""


def _app() -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        peer = peer_of(request)
        cn = ""
        if peer is not None and peer.certificate:
            cn = dict(x[0] for x in peer.certificate["subject"])["commonName"]
        return web.Response(text=f"hello {cn}".strip())

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_post("/echo", echo)
    return app


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


def _client_context(ca: trustme.CA, *, with_certificate: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if with_certificate:
        ca.issue_cert("client.test", common_name="system:kube-scheduler").configure_cert(context)
    return context


@contextlib.asynccontextmanager
async def _serving(
    limits: ConnectionLimits, context: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[Served, CollectorRegistry]]:
    registry = CollectorRegistry()
    listener = Listener("test", "127.0.0.1", 0, context)
    async with serve(_app(), [listener], limits=limits, metrics=ConnectionMetrics(registry)) as s:
        yield s, registry


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Read until the server ends the connection; True when it did (EOF or reset)."""
    try:
        async with asyncio.timeout(BOUND):
            while await reader.read(65536):
                pass
    except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
        return True
    except TimeoutError:
        return False
    return True


async def test_over_the_cap_a_new_connection_is_closed_and_counted_and_a_proven_one_served() -> (
    None
):
    limits = ConnectionLimits(max_connections=3, max_unproven=3, head_timeout=60)
    async with _serving(limits) as (served, registry):
        port = served.ports["test"]
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.get(f"http://127.0.0.1:{port}/") as resp:
                assert resp.status == 200
            await wait_until(lambda: served.open_connections("test") == (1, 0), within=BOUND)
            idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            await wait_until(lambda: served.open_connections("test") == (1, 2), within=BOUND)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await _closed_by_server(reader)
            writer.close()
            assert served.closed("test", "connection_limit") == 1
            # The proven client's keep-alive connection still gets answers.
            async with session.get(f"http://127.0.0.1:{port}/") as resp:
                assert resp.status == 200
            assert served.open_connections("test") == (1, 2)
            for _r, w in idle:
                w.close()
    text = generate_latest(registry).decode()
    assert 'gpuscale_connections_closed_total{listener="test",reason="connection_limit"} 1.0' in (
        text
    )


async def test_a_half_request_line_is_cut_after_the_head_timeout() -> None:
    async with _serving(ConnectionLimits(head_timeout=0.2)) as (served, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", served.ports["test"])
        writer.write(b"GET /sl")
        await writer.drain()
        assert await _closed_by_server(reader)
        writer.close()
        assert served.closed("test", "head_timeout") == 1
        assert served.open_connections("test") == (0, 0)


async def test_a_request_that_arrives_in_time_is_answered_with_the_head_timeout_short() -> None:
    async with _serving(ConnectionLimits(head_timeout=5)) as (served, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", served.ports["test"])
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 200")
        writer.close()
        assert served.closed("test", "head_timeout") == 0


async def test_a_chunked_body_that_never_ends_is_cut() -> None:
    async with _serving(ConnectionLimits(body_timeout=0.2)) as (served, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", served.ports["test"])
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        await writer.drain()
        assert await _closed_by_server(reader)
        writer.close()
        assert served.closed("test", "body_timeout") == 1


async def test_a_complete_body_is_not_cut_after_the_body_timeout() -> None:
    """The body timer only checks that the body arrived; a finished one is left alone."""
    async with _serving(ConnectionLimits(body_timeout=0.05, idle_timeout=60)) as (served, _):
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{served.ports['test']}/echo", data=b"x" * 100) as resp,
        ):
            assert await resp.read() == b"x" * 100
        assert served.closed("test", "body_timeout") == 0


async def test_a_silent_tls_client_is_cut_after_the_handshake_timeout(ca: trustme.CA) -> None:
    limits = ConnectionLimits(handshake_timeout=0.2, head_timeout=60)
    async with _serving(limits, _server_context(ca)) as (served, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", served.ports["test"])
        assert await _closed_by_server(reader)
        writer.close()
        assert served.closed("test", "handshake_timeout") == 1


async def test_unauthenticated_tls_connections_cannot_exhaust_the_cap_for_clients_with_certificates(
    ca: trustme.CA,
) -> None:
    limits = ConnectionLimits(max_connections=32, max_unproven=4, head_timeout=60)
    async with _serving(limits, _server_context(ca)) as (served, _):
        port = served.ports["test"]
        anonymous = _client_context(ca, with_certificate=False)
        strangers = []
        for _ in range(12):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=anonymous)
            writer.write(b"GET /half")
            strangers.append((reader, writer))
        await wait_until(lambda: served.closed("test", "unproven_evicted") >= 8, within=BOUND)
        assert served.open_connections("test")[1] <= 4

        trusted = _client_context(ca, with_certificate=True)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"https://127.0.0.1:{port}/", ssl=trusted) as resp,
        ):
            assert await resp.text() == "hello system:kube-scheduler"
        # The newest strangers still hold their slots; the client with a certificate took none.
        assert served.open_connections("test")[1] <= 4
        for _r, w in strangers:
            w.close()


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """One keep-alive GET on a raw connection; the response's body."""
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.startswith(b"Content-L")
    )
    return await reader.readexactly(length)


async def test_an_unproven_connection_gets_no_idle_keep_alive(ca: trustme.CA) -> None:
    """Without a certificate a TLS client is answered (the app decides), but it must send its
    next request within the head timeout; with one it may idle until the idle timeout."""
    limits = ConnectionLimits(head_timeout=0.2, idle_timeout=60)
    async with _serving(limits, _server_context(ca)) as (served, _):
        port = served.ports["test"]
        trusted = _client_context(ca, with_certificate=True)
        anonymous = _client_context(ca, with_certificate=False)
        proven = await asyncio.open_connection("127.0.0.1", port, ssl=trusted)
        stranger = await asyncio.open_connection("127.0.0.1", port, ssl=anonymous)
        assert await _get(*proven) == b"hello system:kube-scheduler"
        assert await _get(*stranger) == b"hello"
        # The stranger's deadline comes first: once it is cut, the proven one has idled longer
        # than the head timeout and is still served.
        assert await _closed_by_server(stranger[0])
        assert await _get(*proven) == b"hello system:kube-scheduler"
        assert served.closed("test", "head_timeout") == 1
        for _r, w in (proven, stranger):
            w.close()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_connections": 0}, "max_connections: must be positive, got 0"),
        ({"head_timeout": -1.0}, "head_timeout: must be positive, got -1.0"),
        ({"max_connections": 4, "max_unproven": 8}, "max_unproven (8) must not exceed"),
    ],
)
def test_limits_that_make_no_sense_are_refused_with_the_field(
    changes: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ConnectionLimits(**changes)  # type: ignore[arg-type]


async def test_a_burst_of_handshakes_is_paced_over_turns_and_every_one_completes(
    ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One handshake step per turn of the loop: the burst waits its turn, none is lost."""
    monkeypatch.setattr(serving, "HANDSHAKE_STEPS_PER_TURN", 1)
    async with _serving(ConnectionLimits(max_unproven=64), _server_context(ca)) as (served, _):
        port = served.ports["test"]
        trusted = _client_context(ca, with_certificate=True)

        async def one() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=trusted)
            try:
                return await _get(reader, writer)
            finally:
                writer.close()

        answers = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(20))), BOUND)
        assert answers == [b"hello system:kube-scheduler"] * 20
        assert served.deferred_handshake_steps("test") > 0


async def test_eviction_spares_an_unproven_connection_whose_request_is_being_answered() -> None:
    """On a plain listener a first request is in flight (its body still arriving): strangers
    who arrive after it evict each other, not it."""
    limits = ConnectionLimits(max_unproven=2, head_timeout=60, body_timeout=60)
    async with _serving(limits) as (served, _):
        port = served.ports["test"]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        # aiohttp answers 100 Continue in the same step in which the request starts.
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100")
        writer.write(b"ab")
        strangers = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        await wait_until(lambda: served.closed("test", "unproven_evicted") == 3, within=BOUND)
        writer.write(b"cd")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert await reader.readexactly(4) == b"abcd"
        for _r, w in [*strangers, (reader, writer)]:
            w.close()
