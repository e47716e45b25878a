"""The start-up and supervision every server shares: a busy port or a failed task says so."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest
from aiohttp import web

from runtime.serving import Listener
from runtime.startup import Background, StartupError, listen, parse_address, serving

BOUND = 20.0
"""Seconds a wait may take before the test fails (only a broken supervisor gets there)."""


async def _forever() -> None:
    await asyncio.Event().wait()


async def _fail_after(started: asyncio.Event) -> None:
    await started.wait()
    raise ValueError("the watch broke")


async def test_a_failed_task_ends_the_wait_with_its_error() -> None:
    background = Background()
    go = asyncio.Event()
    background.start(_forever(), "idle")
    background.start(_fail_after(go), "watch")
    waiting = asyncio.create_task(background.until_stopped(asyncio.Event()))
    await asyncio.sleep(0)
    assert not waiting.done()
    go.set()
    with pytest.raises(ValueError, match="the watch broke"):
        await asyncio.wait_for(waiting, BOUND)
    await background.cancel()


async def test_a_forever_task_that_returns_is_a_failure_and_a_one_shot_task_is_not() -> None:
    background = Background()
    background.start(asyncio.sleep(0), "first-sync", forever=False)
    stop = asyncio.Event()
    waiting = asyncio.create_task(background.until_stopped(stop))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiting.done()  # the one-shot task ended, which is fine
    stop.set()
    await asyncio.wait_for(waiting, BOUND)

    background = Background()
    background.start(asyncio.sleep(0), "poller")
    with pytest.raises(RuntimeError, match="task poller ended unexpectedly"):
        await asyncio.wait_for(background.until_stopped(asyncio.Event()), BOUND)


async def test_cancel_ends_every_task_and_swallows_their_last_errors() -> None:
    cleaned: list[str] = []

    async def cleans_up(name: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append(name)
            raise OSError("closing a socket failed")

    background = Background()
    tasks = [background.start(cleans_up(n), n) for n in ("a", "b")]
    await asyncio.sleep(0)
    await background.cancel()
    assert sorted(cleaned) == ["a", "b"]
    assert all(t.done() for t in tasks)


async def test_a_busy_port_stops_start_up_with_a_sentence() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with contextlib.AsyncExitStack() as stack:
            with pytest.raises(StartupError, match=rf"cannot listen on 127\.0\.0\.1:{port}"):
                await listen(stack, web.Application(), [Listener("ops", "127.0.0.1", port)])
        with pytest.raises(StartupError, match="cannot listen on"):
            async with serving(web.Application(), f"127.0.0.1:{port}"):
                pass


def test_a_bad_address_is_a_start_up_error() -> None:
    assert parse_address("[::1]:8443") == ("::1", 8443)
    with pytest.raises(StartupError, match="expected HOST:PORT"):
        parse_address("localhost")
