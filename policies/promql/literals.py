"""PromQL's literal values: numbers, durations and quoted strings, as Prometheus 2.42 reads them.

Each function returns the value or a reason (``str``) it is not one, so the parser can attach
the reason to a position. The rules follow Go's ``strconv`` and ``prometheus/common/model``.
"""

from __future__ import annotations

import math
import re

INT64_MAX = (1 << 63) - 1

_DURATION = re.compile(
    r"(?:([0-9]+)y)?(?:([0-9]+)w)?(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?"
    r"(?:([0-9]+)ms)?"
)
_DURATION_UNITS_MS = (
    365 * 24 * 3600 * 1000,
    7 * 24 * 3600 * 1000,
    24 * 3600 * 1000,
    3600 * 1000,
    60 * 1000,
    1000,
    1,
)
_DECIMAL_FLOAT = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SIMPLE_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92}


def parse_number(text: str) -> float | str:
    """The value of a NUMBER token, the way ``strconv.ParseInt(s, 0, 64)`` then ``ParseFloat``
    read it: ``0x1f`` and ``010`` (octal) as integers, ``1e3``, ``.5``, ``Inf``, ``NaN``."""
    lower = text.lower()
    if lower in ("inf", "nan"):
        return math.inf if lower == "inf" else math.nan
    as_int = _go_int(lower)
    if as_int is not None:
        return float(as_int)
    if not _DECIMAL_FLOAT.fullmatch(text):
        return f"error parsing number: invalid syntax: {text!r}"
    value = float(text)
    if math.isinf(value):
        return f"error parsing number: value out of range: {text!r}"
    return value


def _go_int(lower: str) -> int | None:
    """``strconv.ParseInt(s, 0, 64)`` on the digits the lexer lets through, or None."""
    if lower.startswith("0x"):
        digits, base = lower[2:], 16
    elif len(lower) > 1 and lower.startswith("0"):
        digits, base = lower[1:], 8
    else:
        digits, base = lower, 10
    valid = "0123456789abcdef"[:base]
    if not digits or any(c not in valid for c in digits):
        return None
    value = int(digits, base)
    return value if value <= INT64_MAX else None


def parse_duration(text: str) -> int | str:
    """Milliseconds of a duration such as ``1h30m`` (``model.ParseDuration``), which must be
    positive; or why it is not one."""
    match = _DURATION.fullmatch(text)
    if match is None or not text:
        return f"not a valid duration string: {text!r}"
    total = 0
    for group, unit in zip(match.groups(), _DURATION_UNITS_MS, strict=True):
        if group is None:
            continue
        count = int(group)
        if count > INT64_MAX // unit // 1_000_000:
            return "duration out of range"
        total += count * unit
    if total * 1_000_000 > INT64_MAX:
        return "duration out of range"
    if total == 0:
        return "duration must be greater than 0"
    return total


def unquote(token: str) -> str:
    """The value of a STRING token the lexer accepted (so its escapes are well formed).

    ``\\x`` escapes make single bytes, which may not be UTF-8; such bytes come back as
    surrogate escapes (``bytes.decode("utf-8", "surrogateescape")``).
    """
    quote, body = token[0], token[1:-1]
    if quote == "`" or "\\" not in body:
        return body
    out = bytearray()
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out += c.encode("utf-8", "surrogateescape")
            i += 1
            continue
        e = body[i + 1]
        i += 2
        if e in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[e])
        elif e == quote:
            out += e.encode()
        elif e in "01234567":
            out.append(int(body[i - 1 : i + 2], 8))
            i += 2
        else:
            width = {"x": 2, "u": 4, "U": 8}[e]
            code = int(body[i : i + width], 16)
            i += width
            if e == "x":
                out.append(code)
            else:
                out += chr(code).encode("utf-8")
    return out.decode("utf-8", "surrogateescape")


def quote(value: str) -> str:
    """``value`` as a double-quoted PromQL string that reads back as exactly ``value``."""
    parts = ['"']
    for c in value:
        code = ord(c)
        if c in '"\\':
            parts.append("\\" + c)
        elif 0xDC80 <= code <= 0xDCFF:  # a raw byte kept by surrogateescape
            parts.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F or c == "\ufffd" or 0xD800 <= code < 0xE000:
            parts.append(f"\\u{code:04x}" if not 0xD800 <= code < 0xE000 else "\\ufffd")
        else:
            parts.append(c)
    parts.append('"')
    return "".join(parts)


def format_duration(ms: int) -> str:
    """The shortest duration literal for ``ms`` milliseconds (``90m`` -> ``1h30m``)."""
    parts = []
    for unit, name in zip(_DURATION_UNITS_MS, ("y", "w", "d", "h", "m", "s", "ms"), strict=True):
        count, ms = divmod(ms, unit)
        if count:
            parts.append(f"{count}{name}")
    return "".join(parts) or "0s"
