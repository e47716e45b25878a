"""Typed field readers for every YAML document gpuscale reads: policies, scenarios, sweep specs.

One :class:`Reader` walks a parsed document and records each problem as a :class:`FieldError`
(``field.path: message``) instead of stopping at the first, so a user fixes a file in one pass;
callers prefix the file or ConfigMap (``file: field: message``). Unknown fields are errors: a
typo must never fall back to a default silently.

The documents grew their own conventions before they shared this module, and tests and users
rely on those messages, so the differences are named options of a :class:`Style` rather than
two readers: how a bad value is shown, how the root is named, how unknown fields are listed,
whether an empty section means "all defaults", and whether a duration may be bare seconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import yaml

from policies.durations import DurationError, parse_duration

T = TypeVar("T")

ROOT = "(root)"
"""The path callers pass for the document itself (``""`` means the same)."""


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem: the field's path in the document and what was expected there."""

    path: str
    message: str


@dataclass(frozen=True, slots=True)
class YamlProblem:
    """Why a text is not YAML, and where (1-based; ``None`` where PyYAML does not say)."""

    problem: str
    line: int | None = None
    column: int | None = None


def yaml_problem(exc: yaml.YAMLError) -> YamlProblem:
    """What a YAML error means for a user: PyYAML keeps it in optional attributes."""
    problem = getattr(exc, "problem", None) or "invalid YAML"
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return YamlProblem(problem)
    return YamlProblem(problem, mark.line + 1, mark.column + 1)


def describe(value: Any) -> str:
    """A value as policy messages show it: ``a string ('x')``, ``a number (3)``, ``nothing``."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__


def show(value: Any) -> str:
    """A value as scenario and sweep messages show it: ``"x"``, ``3``, ``true``, ``nothing``."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"{value!r}".lower()
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def join(path: str, field: Any) -> str:
    """``path.field``, or ``field`` alone at the root."""
    return str(field) if path in ("", ROOT) else f"{path}.{field}"


@dataclass(frozen=True, slots=True)
class Style:
    """The conventions of one kind of document (see the module docstring for why they differ)."""

    show: Callable[[Any], str]
    """How a bad value appears in a message."""
    root: str
    """How an error about the document itself names its path."""
    known: Literal["sorted", "declared"]
    """Unknown-field hint: ``(allowed here: …)`` sorted, or ``(expected one of: …)`` as declared."""
    empty_is_default: bool
    """A section given with nothing under it (``service:``) reads as an empty mapping."""
    seconds: bool
    """A duration may be a bare number of seconds as well as a string like ``"30s"``."""


POLICY = Style(show=describe, root=ROOT, known="sorted", empty_is_default=False, seconds=False)
"""ScalingPolicy documents: Kubernetes-style, durations only as strings (as the HPA's)."""
SCENARIO = Style(show=show, root="(top)", known="declared", empty_is_default=True, seconds=True)
"""Scenario and sweep spec files: for experiments, so seconds as numbers are welcome."""


class Reader:
    """Typed field access that records every problem and returns ``None`` for a bad value."""

    def __init__(self, style: Style) -> None:
        self.style = style
        self.errors: list[FieldError] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(FieldError(path or self.style.root, message))

    def kind_of(self, value: Any) -> str:
        return self.style.show(value)

    def messages(self, prefix: str) -> list[str]:
        """``prefix: path: message`` for every error, in the order found."""
        return [f"{prefix}: {e.path}: {e.message}" for e in self.errors]

    # -- structure ------------------------------------------------------------------------

    def mapping(
        self,
        value: Any,
        path: str,
        *,
        required: tuple[str, ...] = (),
        optional: tuple[str, ...] = (),
    ) -> Mapping[str, Any] | None:
        """``value`` if it is a mapping; unknown and missing fields are recorded either way."""
        if value is None and self.style.empty_is_default:
            value = {}
        if not isinstance(value, Mapping):
            where = self.style.root if path in ("", ROOT) else path
            self.error(where, f"expected a mapping, got {self.kind_of(value)}")
            return None
        allowed = (*required, *optional)
        for field in value:
            if field not in allowed:
                self.error(join(path, field), f"unknown field ({self._known(allowed)})")
        for field in required:
            if field not in value:
                self.error(join(path, field), "required field is missing")
        return value

    def _known(self, allowed: Iterable[str]) -> str:
        if self.style.known == "sorted":
            return f"allowed here: {', '.join(sorted(allowed))}"
        return f"expected one of: {', '.join(allowed)}"

    def get(
        self,
        obj: Mapping[str, Any],
        path: str,
        field: str,
        read: Callable[[Any, str], T | None],
        default: T | None = None,
    ) -> T | None:
        """The field read with ``read``; ``default`` when absent, ``None`` when invalid."""
        if field not in obj:
            return default
        return read(obj[field], join(path, field))

    def field(
        self,
        obj: Mapping[str, Any],
        path: str,
        field: str,
        read: Callable[[Any, str], T | None],
        default: T,
    ) -> T:
        """The field read with ``read``; ``default`` when absent or invalid (error recorded).

        For documents that build the whole result and then raise if any error was recorded.
        """
        if field not in obj:
            return default
        out = read(obj[field], join(path, field))
        return default if out is None else out

    # -- scalars --------------------------------------------------------------------------

    def string(self, value: Any, path: str) -> str | None:
        """A string with something in it besides blanks."""
        if not isinstance(value, str) or not value.strip():
            self.error(path, f"expected a non-empty string, got {self.kind_of(value)}")
            return None
        return value

    def boolean(self, value: Any, path: str) -> bool | None:
        if not isinstance(value, bool):
            self.error(path, f"expected true or false, got {self.kind_of(value)}")
            return None
        return value

    def integer(self, value: Any, path: str, minimum: int = 0) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(path, f"expected an integer, got {self.kind_of(value)}")
            return None
        if value < minimum:
            self.error(path, f"must be at least {minimum}, got {value}")
            return None
        return value

    def number(
        self, value: Any, path: str, *, minimum: float | None = None, positive: bool = False
    ) -> float | None:
        """A finite number (``must be greater than 0`` / ``must be at least m`` when bounded)."""
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            self.error(path, f"expected a number, got {self.kind_of(value)}")
            return None
        if positive and value <= 0:
            self.error(path, f"must be greater than 0, got {value!r}")
            return None
        if minimum is not None and value < minimum:
            self.error(path, f"must be at least {minimum:g}, got {value!r}")
            return None
        return float(value)

    def positive(self, value: Any, path: str) -> float | None:
        """A finite number above 0, in one message (``expected a positive number``)."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(path, f"expected a positive number, got {self.kind_of(value)}")
            return None
        if not math.isfinite(value) or value <= 0:
            self.error(path, f"expected a positive number, got {value!r}")
            return None
        return float(value)

    def fraction(self, value: Any, path: str, *, closed_top: bool) -> float | None:
        """A number in (0, 1), or (0, 1] when ``closed_top``."""
        number = self.positive(value, path)
        if number is None:
            return None
        if number > 1 or (number == 1 and not closed_top):
            bound = "(0, 1]" if closed_top else "(0, 1)"
            self.error(path, f"expected a number in {bound}, got {value!r}")
            return None
        return number

    def choice(self, value: Any, path: str, choices: tuple[str, ...]) -> Any:
        """``value`` when it is one of ``choices`` (typed as the caller's Literal), else None."""
        if not isinstance(value, str) or value not in choices:
            self.error(path, f"expected one of {', '.join(choices)}, got {self.kind_of(value)}")
            return None
        return value

    def duration(self, value: Any, path: str, *, positive: bool = False) -> float | None:
        """Seconds from ``"1m30s"`` (or a bare number where the style allows it)."""
        if self.style.seconds:
            return self._seconds(value, path, positive=positive)
        if not isinstance(value, str):
            self.error(path, f'expected a duration like "2s", got {self.kind_of(value)}')
            return None
        try:
            seconds = parse_duration(value)
        except DurationError:
            self.error(path, f'expected a duration like "2s", got "{value}"')
            return None
        if positive and seconds <= 0:
            self.error(path, f'expected a positive duration, got "{value}"')
            return None
        return seconds

    def _seconds(self, value: Any, path: str, *, positive: bool) -> float | None:
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        elif isinstance(value, str):
            try:
                seconds = parse_duration(value)
            except DurationError as exc:
                self.error(path, str(exc))
                return None
        else:
            self.error(
                path, f'expected a duration like "30s" or seconds, got {self.kind_of(value)}'
            )
            return None
        if not math.isfinite(seconds) or seconds < 0 or (positive and seconds == 0):
            bound = "greater than 0" if positive else "at least 0"
            self.error(path, f"must be {bound}, got {self.kind_of(value)}")
            return None
        return seconds
