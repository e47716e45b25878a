"""Serve an aiohttp app with a bounded cost per connection.

aiohttp's own server accepts every connection, lets a TLS handshake or a request head take
forever, and keeps a half-sent body open as long as the client likes; each idle TLS connection
also holds asyncio's 256 KiB read buffer. Here each listener admits a connection before anything
is allocated for it (over the cap it is closed at once, before the handshake), gives it a small
TLS read buffer, and cuts it when the handshake, the request head or the body is late. Every
close we cause is counted in ``gpuscale_connections_closed_total{listener,reason}``.

A TLS handshake costs the server about a millisecond of CPU, which no cap bounds: a burst of
strangers' handshakes would hold the event loop while a client on an open connection waits. So
each listener runs at most ``HANDSHAKE_STEPS_PER_TURN`` handshake steps per turn of the loop and
defers the rest, in arrival order, to the following turns.

A connection is *proven* once it showed a client certificate the TLS layer verified or, on a
listener that asks for none, once it completed a request. Unproven connections have a smaller
cap of their own; the oldest is closed to make room for a new one, so a crowd of stalled
strangers costs each other their slots, never a client with a certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from asyncio import sslproto
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from prometheus_client import CollectorRegistry, Counter, Gauge

from runtime.limits import ConnectionLimits
from runtime.memory import release_free_memory

log = logging.getLogger(__name__)

TLS_READ_BUFFER: Final = 17 * 1024
"""Bytes asyncio's TLS protocol reads at once: one full TLS record. Its default, 256 KiB, is
allocated zeroed for every connection; measured with 1,000 idle TLS connections to the
controller (bench_abuse): 288 KiB each with the default, 60 KiB with 32 KiB, 43 KiB with 16 KiB."""
HANDSHAKE_STEPS_PER_TURN = 4
"""TLS handshake steps (each ~1 ms of CPU: key exchange, signature) one event-loop turn runs; the
rest wait a turn, so a flood of handshakes delays requests on open connections by a few steps,
not by the whole flood."""
TRIM_AFTER: Final = 64
"""Hand memory back once a listener's open connections fell to a quarter of a peak this high."""

REASONS: Final = (
    "connection_limit",
    "unproven_evicted",
    "handshake_timeout",
    "head_timeout",
    "body_timeout",
    "idle_timeout",
)


@dataclass(frozen=True, slots=True)
class Listener:
    """One address an app is served on; ``name`` labels its metrics and its requests' peers."""

    name: str
    host: str
    port: int
    ssl_context: ssl.SSLContext | None = None


@dataclass(frozen=True, slots=True)
class Peer:
    """Who sent a request: the listener it came in on and its verified client certificate."""

    listener: str
    tls: bool
    certificate: Mapping[str, Any] | None


PEER_KEY: Final = web.RequestKey("gpuscale_peer", Peer)


def peer_of(request: web.Request) -> Peer | None:
    """The peer of a request served by :func:`serve` (None for requests served otherwise)."""
    return request.get(PEER_KEY)


class ConnectionMetrics:
    """The connection counters of every listener of a process, in the process's registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.closed = Counter(
            "gpuscale_connections_closed",
            "Connections the server closed to bound its cost, by listener and reason.",
            ("listener", "reason"),
            registry=registry,
        )
        self.accepted = Counter(
            "gpuscale_connections_accepted",
            "Connections admitted, by listener: a rate close to the request rate means clients "
            "do not keep connections alive (each pays a TLS handshake).",
            ("listener",),
            registry=registry,
        )
        self.open = Gauge(
            "gpuscale_connections_open",
            "Open connections by listener and whether they proved who they are.",
            ("listener", "state"),
            registry=registry,
        )


class _Conn:
    """One admitted connection: its raw transport, its aiohttp handler and its deadline."""

    __slots__ = ("busy", "handler", "opened", "proven", "raw", "timer", "tls_done")

    def __init__(self, raw: asyncio.Transport, opened: float) -> None:
        self.raw = raw
        self.opened = opened
        self.handler: RequestHandler | None = None
        self.proven = False
        self.tls_done = False
        self.busy = False
        self.timer: asyncio.TimerHandle | None = None


class _Guard:
    """Admission, deadlines and accounting for one listener."""

    def __init__(
        self,
        listener: Listener,
        server: web.Server,
        limits: ConnectionLimits,
        metrics: ConnectionMetrics,
        handlers: dict[RequestHandler, tuple[_Guard, _Conn]],
    ) -> None:
        self.listener = listener
        self.server = server
        self.limits = limits
        self.handlers = handlers
        self.loop = asyncio.get_running_loop()
        context = listener.ssl_context
        self.proof_by_request = context is None or context.verify_mode == ssl.CERT_NONE
        self.open: dict[_Conn, None] = {}
        self.unproven: OrderedDict[_Conn, None] = OrderedDict()
        self.peak = 0
        self.handshake_budget = HANDSHAKE_STEPS_PER_TURN
        self.deferred: deque[_TlsProtocol] = deque()
        self.deferred_steps = 0
        self._turn_scheduled = False
        self.closed_counts = dict.fromkeys(REASONS, 0)
        self._closed = {r: metrics.closed.labels(listener.name, r) for r in REASONS}
        self._accepted = metrics.accepted.labels(listener.name)
        self._proven_gauge = metrics.open.labels(listener.name, "proven")
        self._unproven_gauge = metrics.open.labels(listener.name, "unproven")
        self._proven_gauge.set_function(lambda: len(self.open) - len(self.unproven))
        self._unproven_gauge.set_function(lambda: len(self.unproven))

    # -- admission -------------------------------------------------------------------------

    def admit(self, raw: asyncio.Transport) -> _Conn | None:
        if len(self.open) >= self.limits.max_connections:
            self._count("connection_limit")
            return None
        if len(self.unproven) >= self.limits.max_unproven:
            # The oldest that is not in the middle of a request (a first request being answered
            # on a plain listener is about to prove itself).
            victim = next((c for c in self.unproven if not c.busy), next(iter(self.unproven)))
            self._close(victim, "unproven_evicted")
            self._forget(victim)  # its slot is free now, not when the loop reports the close
        conn = _Conn(raw, self.loop.time())
        self._accepted.inc()
        self.open[conn] = None
        self.unproven[conn] = None
        self.peak = max(self.peak, len(self.open))
        return conn

    def attach(self, conn: _Conn, handler: RequestHandler) -> None:
        conn.handler = handler
        self.handlers[handler] = (self, conn)

    def prove(self, conn: _Conn) -> None:
        conn.proven = True
        self.unproven.pop(conn, None)

    def release(self, conn: _Conn) -> None:
        """The connection is gone (closed by either side)."""
        self._forget(conn)
        if self.peak >= TRIM_AFTER and len(self.open) <= self.peak // 4:
            self.peak = len(self.open)
            release_free_memory()

    def _forget(self, conn: _Conn) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        self.open.pop(conn, None)
        self.unproven.pop(conn, None)
        if conn.handler is not None:
            self.handlers.pop(conn.handler, None)

    # -- handshake CPU -----------------------------------------------------------------------

    def may_handshake(self) -> bool:
        """Whether a handshake step may run in this turn of the loop (and count it)."""
        if not self._turn_scheduled:
            self._turn_scheduled = True
            self.loop.call_soon(self._next_turn)
        if self.handshake_budget > 0:
            self.handshake_budget -= 1
            return True
        return False

    def defer(self, tls: _TlsProtocol) -> None:
        self.deferred.append(tls)
        self.deferred_steps += 1

    def _next_turn(self) -> None:
        """Runs first in the next turn: a fresh budget, spent on the deferred steps in order."""
        self._turn_scheduled = False
        self.handshake_budget = HANDSHAKE_STEPS_PER_TURN
        while self.deferred and self.handshake_budget > 0:
            self.handshake_budget -= 1
            self.deferred.popleft().resume_handshake()
        if self.deferred and not self._turn_scheduled:
            self._turn_scheduled = True
            self.loop.call_soon(self._next_turn)

    # -- deadlines -------------------------------------------------------------------------

    def arm(self, conn: _Conn, at: float, reason: str) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
        conn.timer = self.loop.call_at(at, self._expire, conn, reason)

    def _expire(self, conn: _Conn, reason: str) -> None:
        conn.timer = None
        if conn in self.open:
            self._close(conn, reason)

    def _count(self, reason: str) -> None:
        self.closed_counts[reason] += 1
        self._closed[reason].inc()

    def _close(self, conn: _Conn, reason: str) -> None:
        self._count(reason)
        conn.raw.abort()

    def handshake_done(self, conn: _Conn, certificate: Mapping[str, Any] | None) -> None:
        conn.tls_done = True
        if certificate:
            self.prove(conn)
        self.arm(conn, conn.opened + self.limits.head_timeout, "head_timeout")

    def request_started(self, conn: _Conn, body_complete: Callable[[], bool]) -> None:
        conn.busy = True
        at = self.loop.time() + self.limits.body_timeout
        if conn.timer is not None:
            conn.timer.cancel()
        conn.timer = self.loop.call_at(at, self._check_body, conn, body_complete)

    def _check_body(self, conn: _Conn, body_complete: Callable[[], bool]) -> None:
        conn.timer = None
        if conn in self.open and not body_complete():
            self._close(conn, "body_timeout")

    def request_finished(self, conn: _Conn) -> None:
        conn.busy = False
        if self.proof_by_request:
            self.prove(conn)
        now = self.loop.time()
        if conn.proven:
            self.arm(conn, now + self.limits.idle_timeout, "idle_timeout")
        else:
            self.arm(conn, now + self.limits.head_timeout, "head_timeout")

    def peer(self, conn: _Conn) -> Peer:
        certificate = None
        if self.listener.ssl_context is not None and conn.handler is not None:
            transport = conn.handler.transport
            certificate = transport.get_extra_info("peercert") if transport else None
        return Peer(self.listener.name, self.listener.ssl_context is not None, certificate or None)

    def abort_all(self) -> None:
        for conn in list(self.open):
            conn.raw.abort()
            self._forget(conn)


class _PlainConnection(asyncio.Protocol):
    """A plain-HTTP connection: admitted here, then handed to aiohttp's handler call by call."""

    def __init__(self, guard: _Guard) -> None:
        self.guard = guard
        self.conn: _Conn | None = None
        self.handler: RequestHandler | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        conn = self.guard.admit(transport)
        if conn is None:
            transport.abort()
            return
        self.conn = conn
        self.handler = self.guard.server()
        self.guard.attach(conn, self.handler)
        self.guard.arm(conn, conn.opened + self.guard.limits.head_timeout, "head_timeout")
        self.handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.handler is not None:
            self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        if self.handler is not None:
            self.handler.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.guard.release(self.conn)
        if self.handler is not None:
            self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.resume_writing()


class _TlsApplication(asyncio.Protocol):
    """The decrypted side of a TLS connection: marks the handshake, then forwards to aiohttp."""

    def __init__(self, guard: _Guard, conn: _Conn, handler: RequestHandler) -> None:
        self.guard = guard
        self.conn = conn
        self.handler = handler

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.guard.handshake_done(self.conn, transport.get_extra_info("peercert"))
        self.handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        self.handler.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()


class _TlsProtocol(sslproto.SSLProtocol):
    """asyncio's TLS protocol with a small read buffer and handshake steps the guard paces,
    telling the guard when the socket goes (else nobody hears of a failed handshake).

    Pacing uses the base class's internals (``_state``, ``_incoming``, ``_do_handshake``), the
    same from Python 3.11 to 3.13.
    """

    max_size = TLS_READ_BUFFER

    def __init__(self, guard: _Guard, conn: _Conn, app: _TlsApplication) -> None:
        assert guard.listener.ssl_context is not None
        super().__init__(
            guard.loop,
            app,
            guard.listener.ssl_context,
            None,  # type: ignore[arg-type]  # no waiter: the guard follows the handshake
            server_side=True,
            ssl_handshake_timeout=guard.limits.handshake_timeout + 1.0,  # type: ignore[arg-type]
            ssl_shutdown_timeout=guard.limits.handshake_timeout,
        )
        self._guard = guard
        self._conn = conn

    def buffer_updated(self, nbytes: int) -> None:
        base: Any = self  # the internals typeshed does not declare
        handshaking = base._state is sslproto.SSLProtocolState.DO_HANDSHAKE
        if not handshaking or self._guard.may_handshake():
            super().buffer_updated(nbytes)
            return
        # Over this turn's budget: keep the bytes, stop reading, continue in a later turn.
        base._incoming.write(base._ssl_buffer_view[:nbytes])
        base._transport.pause_reading()
        self._guard.defer(self)

    def resume_handshake(self) -> None:
        base: Any = self
        if base._transport is None or base._state is not sslproto.SSLProtocolState.DO_HANDSHAKE:
            return  # closed (or cut) while it waited
        base._do_handshake()
        if base._transport is not None:
            base._transport.resume_reading()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._guard.release(self._conn)
        super().connection_lost(exc)


class _TlsAdmission(asyncio.Protocol):
    """Admits a TLS connection before its handshake costs anything, then wraps it in TLS."""

    def __init__(self, guard: _Guard) -> None:
        self.guard = guard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        guard = self.guard
        conn = guard.admit(transport)
        if conn is None:
            transport.abort()
            return
        handler = guard.server()
        guard.attach(conn, handler)
        tls = _TlsProtocol(guard, conn, _TlsApplication(guard, conn, handler))
        guard.arm(conn, conn.opened + guard.limits.handshake_timeout, "handshake_timeout")
        transport.set_protocol(tls)
        tls.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        """Only a refused connection ends here; an admitted one belongs to its TLS protocol."""


def _watch(
    handlers: Mapping[RequestHandler, tuple[_Guard, _Conn]],
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The middleware that tells each connection's guard when a request starts and ends."""

    @web.middleware
    async def watch(
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        found = handlers.get(request.protocol)
        if found is None:
            return await handler(request)
        guard, conn = found
        request[PEER_KEY] = guard.peer(conn)
        guard.request_started(conn, request.content.is_eof)
        try:
            return await handler(request)
        finally:
            if conn in guard.open:
                guard.request_finished(conn)

    return watch


class Served:
    """The bound ports of a running :func:`serve`, and its counters (for tests and logs)."""

    def __init__(self, guards: Sequence[_Guard], ports: Mapping[str, int]) -> None:
        self._guards = {g.listener.name: g for g in guards}
        self.ports = dict(ports)

    def closed(self, listener: str, reason: str) -> int:
        return self._guards[listener].closed_counts[reason]

    def deferred_handshake_steps(self, listener: str) -> int:
        """How many TLS handshake steps waited for a later turn of the loop."""
        return self._guards[listener].deferred_steps

    def open_connections(self, listener: str) -> tuple[int, int]:
        """(proven, unproven) connections open on ``listener`` now."""
        guard = self._guards[listener]
        return len(guard.open) - len(guard.unproven), len(guard.unproven)


@contextlib.asynccontextmanager
async def serve(
    app: web.Application,
    listeners: Sequence[Listener],
    *,
    limits: ConnectionLimits | None = None,
    metrics: ConnectionMetrics | None = None,
    shutdown_timeout: float = 1.0,
    backlog: int = 128,
) -> AsyncIterator[Served]:
    """Serve ``app`` on every listener until the block exits.

    Requests in flight get ``shutdown_timeout`` seconds when it exits; connections that never
    reached aiohttp (handshake still running) are aborted.
    """
    limits = limits or ConnectionLimits()
    metrics = metrics or ConnectionMetrics(CollectorRegistry())
    handlers: dict[RequestHandler, tuple[_Guard, _Conn]] = {}
    app.middlewares.insert(0, _watch(handlers))
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=shutdown_timeout,
        keepalive_timeout=limits.idle_timeout,
    )
    await runner.setup()
    assert runner.server is not None
    loop = asyncio.get_running_loop()
    guards: list[_Guard] = []
    servers: list[asyncio.Server] = []
    try:
        ports: dict[str, int] = {}
        for listener in listeners:
            guard = _Guard(listener, runner.server, limits, metrics, handlers)
            guards.append(guard)
            factory = functools.partial(
                _PlainConnection if listener.ssl_context is None else _TlsAdmission, guard
            )
            server = await loop.create_server(
                factory, listener.host, listener.port, reuse_address=True, backlog=backlog
            )
            servers.append(server)
            ports[listener.name] = int(server.sockets[0].getsockname()[1])
        yield Served(guards, ports)
    finally:
        for server in servers:
            server.close()
        await runner.cleanup()
        for guard in guards:
            guard.abort_all()
