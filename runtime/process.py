"""What every gpuscale server process does the same way: read its ``HOST:PORT`` flags and stop on
SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import signal


class AddressError(ValueError):
    """A ``HOST:PORT`` flag that is not one."""


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:443`` for IPv6) into a host and a port; an empty host is every
    interface, port 0 picks a free port."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise AddressError(f"expected HOST:PORT, got {text!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stop`` (where the loop can take signal handlers)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
