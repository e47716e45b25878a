"""The connection-limit flags every server command shares (``runtime.limits.ConnectionLimits``).

One decorator adds them; the command receives ``limits`` (a valid ``ConnectionLimits``, the
defaults where a flag was bad) and ``limit_problems`` (``--flag: why`` lines to print).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from runtime.limits import ConnectionLimits

F = TypeVar("F", bound=Callable[..., Any])

_D = ConnectionLimits()
# flag, ConnectionLimits field, default as shown, help
_FLAGS = (
    ("--max-connections", "max_connections", str(_D.max_connections), "Open connections per port."),
    (
        "--max-unproven-connections",
        "max_unproven",
        str(_D.max_unproven),
        "Connections without a verified client certificate or a complete request yet; when"
        " full, the oldest is closed for a new one.",
    ),
    ("--tls-handshake-timeout", "handshake_timeout", "5s", "Time to finish a TLS handshake."),
    (
        "--request-head-timeout",
        "head_timeout",
        "10s",
        "Time for a request line and headers to arrive (from accept or the last response).",
    ),
    ("--request-body-timeout", "body_timeout", "30s", "Time for a request body to arrive."),
    ("--idle-timeout", "idle_timeout", "2m", "Time a proven keep-alive connection may idle."),
)


def _param(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def connection_limit_options(command: F) -> F:
    """Add the flags to a click command and hand it ``limits`` and ``limit_problems``."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from policies.durations import DurationError, parse_duration

        values: dict[str, float] = {}
        problems: list[str] = []
        for flag, field, _default, _help in _FLAGS:
            text = str(kwargs.pop(_param(flag)))
            if field.startswith("max_"):
                if not text.strip().isdigit():
                    problems.append(f"{flag}: expected a whole number, got {text!r}")
                    continue
                value = float(text)
            else:
                try:
                    value = parse_duration(text)
                except DurationError as exc:
                    problems.append(f"{flag}: {exc}")
                    continue
            if value <= 0:
                problems.append(f"{flag}: must be positive, got {text!r}")
                continue
            values[field] = int(value) if field.startswith("max_") else value
        limits = ConnectionLimits()
        if not problems:
            try:
                limits = ConnectionLimits(**values)  # type: ignore[arg-type]
            except ValueError as exc:
                problems.append(f"--max-unproven-connections/--max-connections: {exc}")
        return command(*args, limits=limits, limit_problems=problems, **kwargs)

    decorated: Callable[..., Any] = wrapper
    for flag, _field, default, help_ in reversed(_FLAGS):
        decorated = click.option(flag, default=default, show_default=True, help=help_)(decorated)
    return decorated  # type: ignore[return-value]
