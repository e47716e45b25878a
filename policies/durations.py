"""Go-style durations (``15s``, ``2m``, ``1h30m``, ``500ms``, ``17us``), the unit of every policy
field.

Kubernetes and Prometheus users write durations this way; we parse them to float seconds once,
at the edge, so the decision core only ever sees numbers.
"""

from __future__ import annotations

import math
import re

UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(us|µs|ms|s|m|h)", re.ASCII)
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:us|µs|ms|s|m|h))+", re.ASCII)


class DurationError(ValueError):
    """A string that is not a duration."""


def parse_duration(text: str) -> float:
    """Return the duration in seconds; ``"0"`` is accepted as zero, as Go does."""
    if text == "0":
        return 0.0
    if not _WHOLE.fullmatch(text):
        raise DurationError(f'expected a duration like "2s", got {text!r}')
    return sum(float(n) * UNITS[u] for n, u in _PART.findall(text))


def format_duration(seconds: float) -> str:
    """A short Go-style spelling of ``seconds`` that parses back to it (to the nanosecond)."""
    if not math.isfinite(seconds) or seconds < 0:
        raise DurationError(f"cannot format {seconds!r} as a duration")
    if seconds == 0:
        return "0s"
    millis = round(seconds * 1000)
    if abs(millis - seconds * 1000) > 1e-6:
        return _decimal(seconds) + "s"
    if millis % 1000:
        return f"{millis}ms"
    whole = millis // 1000
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
        f"{secs}s" if secs else "",
    ]
    return "".join(parts) or "0s"


def _decimal(seconds: float) -> str:
    """Plain decimal seconds at Go's resolution (1 ns); ``repr`` may give ``5e-05``, which no
    duration parser takes."""
    return f"{seconds:.9f}".rstrip("0").rstrip(".")
