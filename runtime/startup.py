"""How every gpuscale server starts and stops: the controller, the extender and the node agent.

Start-up failures a user can fix (a busy port, unreadable credentials) become one
:class:`StartupError` with a sentence, never a traceback. While a server runs, its long-lived
tasks (watches, pollers, leader election) are :class:`Background` tasks: the first one to fail
ends the server with its error instead of dying unseen, and every task is cancelled on the way
out, after the listeners stopped accepting requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from runtime import kube, process
from runtime.limits import ConnectionLimits
from runtime.serving import ConnectionMetrics, Listener, Served, serve


class StartupError(Exception):
    """The process cannot start (bad address, no Kubernetes access, no NVML…); says why."""


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (:func:`runtime.process.parse_address`); a bad one stops start-up."""
    try:
        return process.parse_address(text)
    except process.AddressError as exc:
        raise StartupError(str(exc)) from None


@contextlib.asynccontextmanager
async def kube_client(kubeconfig: str | None, given: Any = None) -> AsyncIterator[Any]:
    """``given`` as it is (a test's client, closed by its owner), or a client built from
    ``kubeconfig`` (in-cluster when ``None``) and closed on the way out."""
    if given is not None:
        yield given
        return
    try:
        client = await kube.kube_client(kubeconfig)
    except kube.KubeAccessError as exc:
        raise StartupError(str(exc)) from None
    try:
        yield client
    finally:
        await client.close()


async def listen(
    stack: contextlib.AsyncExitStack,
    app: web.Application,
    listeners: Sequence[Listener],
    *,
    limits: ConnectionLimits | None = None,
    metrics: ConnectionMetrics | None = None,
    registry: CollectorRegistry | None = None,
    shutdown_timeout: float = 1.0,
) -> Served:
    """Serve ``app`` on ``listeners`` until ``stack`` closes; a port that cannot be bound stops
    start-up. Connection counters go to ``metrics``, or to new ones in ``registry``."""
    if metrics is None and registry is not None:
        metrics = ConnectionMetrics(registry)
    try:
        return await stack.enter_async_context(
            serve(
                app,
                list(listeners),
                limits=limits,
                metrics=metrics,
                shutdown_timeout=shutdown_timeout,
            )
        )
    except OSError as exc:
        where = ", ".join(f"{x.host}:{x.port}" for x in listeners)
        raise StartupError(f"cannot listen on {where}: {exc}") from None


@contextlib.asynccontextmanager
async def serving(
    app: web.Application,
    address: str,
    ssl_context: ssl.SSLContext | None = None,
    *,
    name: str = "http",
    limits: ConnectionLimits | None = None,
    metrics: ConnectionMetrics | None = None,
) -> AsyncIterator[int]:
    """Serve ``app`` alone on ``HOST:PORT`` until the block exits; yields the bound port (for
    ``:0``). ``name`` labels the connection counters."""
    async with contextlib.AsyncExitStack() as stack:
        listener = Listener(name, *parse_address(address), ssl_context)
        served = await listen(stack, app, [listener], limits=limits, metrics=metrics)
        yield served.ports[name]


class Background:
    """A server's long-lived tasks, watched together.

    A task started with ``forever=True`` (the default) must never end: its return is a bug and
    ends the server as its exception does. One-shot tasks (``forever=False``) may return; only
    their exception ends the server.
    """

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[Any]] = []
        self._one_shot: set[asyncio.Task[Any]] = set()

    def start(
        self, coro: Coroutine[Any, Any, Any], name: str, *, forever: bool = True
    ) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.append(task)
        if not forever:
            self._one_shot.add(task)
        return task

    async def first_failure(self) -> None:
        """Never return while all is well; raise the first error (or unexpected end) of the tasks
        started so far."""
        pending: set[asyncio.Task[Any]] = set(self._tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = None if task.cancelled() else task.exception()
                if error is not None:
                    raise error
                if task not in self._one_shot:
                    raise RuntimeError(f"task {task.get_name()} ended unexpectedly")
        await asyncio.Event().wait()

    async def until_stopped(self, stop: asyncio.Event) -> None:
        """Wait for ``stop``; a failed task ends the wait with its error."""
        stopping = asyncio.create_task(stop.wait())
        failed = asyncio.create_task(self.first_failure())
        try:
            await asyncio.wait({stopping, failed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            failed.cancel()
        error = failed.exception() if failed.done() and not failed.cancelled() else None
        if error is not None:
            raise error

    async def cancel(self) -> None:
        """Cancel every task and wait for them to end; what they raise on the way is dropped."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._one_shot.clear()
