"""Each configuration document's fields, declared once; its reader and JSON Schema derive from it.

A document is a tree of :class:`Field` declarations (name, kind, default, required or not, a
description). From that one tree :meth:`Kind.read` checks a parsed YAML value with the shared
:class:`~policies.reading.Reader` (so every message is the one users already know, and every
problem is recorded, none stops the reading) and :meth:`Kind.schema` writes the JSON Schema
fragment editors validate with. Rules that span fields (``min <= max``, exactly one of two
fields, a file that must exist) stay code: a section's ``check`` runs after its fields are read.

Why ours and not pydantic or msgspec: every message users see is asserted by tests and keeps
the ``path: message`` shape of :mod:`policies.reading` (all errors at once, the value shown the
way the document's style shows it), and the published schemas are reviewed files; both libraries
word errors and schemas their own way, so we would translate both directions and still keep the
rules they cannot state. The kinds below are the few the documents need; :class:`Custom` is the
escape hatch for odd fields (byte quantities, ``"hold"`` or a mapping).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Generic, Protocol, TypeVar

from policies.durations import UNITS
from policies.reading import Reader, Style, join

T = TypeVar("T")

# Patterns end in (?!\n)$: ECMA-262's $ (the dialect JSON Schema names) never matches before a
# final newline, Python's does; the lookahead makes both engines read the pattern the same way.
_UNIT = "|".join(sorted(UNITS, key=len, reverse=True))
DURATION = rf"^(0|([0-9]+(\.[0-9]+)?({_UNIT}))+)(?!\n)$"
"""The grammar of :func:`policies.durations.parse_duration` (its units, longest first)."""
POSITIVE_DURATION = rf"^(?=[^1-9]*[1-9])([0-9]+(\.[0-9]+)?({_UNIT}))+(?!\n)$"
"""A duration with a non-zero digit: exactly the durations above zero."""
NON_EMPTY = r"\S"
DURATION_HINT = ' Go-style duration: "500ms", "15s", "2m", "1h30m".'
"""What a duration's description ends with, so an editor's hover shows the spelling."""


@dataclass(frozen=True, slots=True)
class Context:
    """What a schema fragment depends on besides its declaration: the document's :class:`Style`
    (a duration may be bare seconds, an empty section means all defaults) and the ``$defs`` the
    document's tagged unions register their variants in."""

    style: Style
    defs: dict[str, Any] = field(default_factory=dict)


class Kind(Protocol):
    """What a field holds: how to read it and how JSON Schema states it."""

    def read(self, r: Reader, value: Any, path: str) -> Any:
        """The value, or None with the problem recorded on ``r``."""
        ...

    def schema(self, ctx: Context) -> dict[str, Any]: ...


@cache
def _attr(name: str) -> str:
    """``targetPerReplica`` → ``target_per_replica``: the dataclass attribute of a YAML field."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a section. ``attr`` is the keyword the section's ``build`` gets (derived
    from ``name``; ``""`` to read the field without passing it on, as ``apiVersion``)."""

    name: str
    kind: Kind
    required: bool = False
    default: Any = None
    description: str = ""
    attr: str | None = None
    missing: str | None = None
    """The message when this required field is left out, where it says more than the
    section's (``required: the attainment to reach, e.g. 0.99``)."""

    @property
    def key(self) -> str:
        return _attr(self.name) if self.attr is None else self.attr

    def schema(self, ctx: Context) -> dict[str, Any]:
        out = self.kind.schema(ctx)
        if self.description:
            explain = getattr(self.kind, "explain", None)
            out["description"] = explain(self.description) if explain else self.description
        return out


# -- scalars ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Integer:
    minimum: int = 0

    def read(self, r: Reader, value: Any, path: str) -> int | None:
        return r.integer(value, path, minimum=self.minimum)

    def schema(self, ctx: Context) -> dict[str, Any]:
        return {"type": "integer", "minimum": self.minimum}


@dataclass(frozen=True, slots=True)
class Positive:
    """A finite number above 0 (``expected a positive number``)."""

    def read(self, r: Reader, value: Any, path: str) -> float | None:
        return r.positive(value, path)

    def schema(self, ctx: Context) -> dict[str, Any]:
        return {"type": "number", "exclusiveMinimum": 0}


@dataclass(frozen=True, slots=True)
class Fraction:
    """A number in (0, 1], or (0, 1) unless ``closed_top``."""

    closed_top: bool = True

    def read(self, r: Reader, value: Any, path: str) -> float | None:
        return r.fraction(value, path, closed_top=self.closed_top)

    def schema(self, ctx: Context) -> dict[str, Any]:
        top = "maximum" if self.closed_top else "exclusiveMaximum"
        return {"type": "number", "exclusiveMinimum": 0, top: 1}


@dataclass(frozen=True, slots=True)
class Number:
    """A finite number, at least ``minimum`` or above 0 when ``positive`` (``must be greater
    than 0``, the scenario's wording; a policy says ``expected a positive number``: Positive),
    and at most ``at_most``."""

    minimum: float | None = None
    positive: bool = False
    at_most: float | None = None

    def read(self, r: Reader, value: Any, path: str) -> float | None:
        number = r.number(value, path, minimum=self.minimum, positive=self.positive)
        if number is not None and self.at_most is not None and number > self.at_most:
            r.error(path, f"must be at most {self.at_most:g}, got {number!r}")
            return None
        return number

    def schema(self, ctx: Context) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "number"}
        if self.positive:
            out["exclusiveMinimum"] = 0
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.at_most is not None:
            out["maximum"] = self.at_most
        return out


@dataclass(frozen=True, slots=True)
class Boolean:
    def read(self, r: Reader, value: Any, path: str) -> bool | None:
        return r.boolean(value, path)

    def schema(self, ctx: Context) -> dict[str, Any]:
        return {"type": "boolean"}


@dataclass(frozen=True, slots=True)
class Label:
    """Anything, read as its text (a contender's ``name``: ``name: 2`` is the label ``"2"``)."""

    def read(self, r: Reader, value: Any, path: str) -> str:
        return str(value)

    def schema(self, ctx: Context) -> dict[str, Any]:
        return {}


@dataclass(frozen=True, slots=True)
class Duration:
    """Seconds from ``"1m30s"`` (bare seconds too where the document's style allows them).

    ``at_most`` is ``(seconds, how the bound reads)``; JSON Schema cannot compare a duration's
    value, so the bound is the parser's alone (the schema lists it among the parser-only rules).
    """

    positive: bool = False
    at_most: tuple[float, str] | None = None

    def read(self, r: Reader, value: Any, path: str) -> float | None:
        seconds = r.duration(value, path, positive=self.positive)
        if seconds is not None and self.at_most is not None and seconds > self.at_most[0]:
            r.error(path, f'must be at most {self.at_most[1]}, got "{value}"')
            return None
        return seconds

    def schema(self, ctx: Context) -> dict[str, Any]:
        text = {"type": "string", "pattern": POSITIVE_DURATION if self.positive else DURATION}
        if not ctx.style.seconds:
            return text
        low = {"exclusiveMinimum": 0} if self.positive else {"minimum": 0}
        return {"anyOf": [text, {"type": "number", **low}]}

    def explain(self, description: str) -> str:
        return description + DURATION_HINT


@dataclass(frozen=True, slots=True)
class Text:
    """A non-empty string; with ``pattern``, one that matches it (``says`` what it allows)."""

    pattern: str | None = None
    says: str = ""
    blank: bool = False
    """Any string at all, even an empty one (a taint's value)."""

    def read(self, r: Reader, value: Any, path: str) -> str | None:
        if self.blank and isinstance(value, str):
            return value
        text = r.string(value, path)
        if text is not None and self.pattern and not re.fullmatch(self.pattern, text):
            r.error(path, f"expected {self.says}, got {text!r}")
            return None
        return text

    def schema(self, ctx: Context) -> dict[str, Any]:
        if self.blank:
            return {"type": "string"}
        if self.pattern is None:
            return {"type": "string", "pattern": NON_EMPTY}
        return {"type": "string", "pattern": f"^{self.pattern}(?!\\n)$"}


@dataclass(frozen=True, slots=True)
class Choice:
    """One of a few words (typed as the caller's ``Literal``)."""

    choices: tuple[str, ...]

    def read(self, r: Reader, value: Any, path: str) -> Any:
        return r.choice(value, path, self.choices)

    def schema(self, ctx: Context) -> dict[str, Any]:
        return {"enum": list(self.choices)}


@dataclass(frozen=True, slots=True)
class Const:
    """Exactly ``value`` (``apiVersion``, ``kind``, a tagged union's tag)."""

    value: str

    def read(self, r: Reader, value: Any, path: str) -> str | None:
        if value != self.value:
            r.error(path, f"expected {self.value}, got {r.kind_of(value)}")
            return None
        return self.value

    def schema(self, ctx: Context) -> dict[str, Any]:
        return {"const": self.value}


@dataclass(frozen=True, slots=True)
class Custom:
    """The escape hatch: a field with its own read function and schema fragment."""

    reader: Callable[[Reader, Any, str], Any]
    fragment: Callable[[Context], dict[str, Any]]

    def read(self, r: Reader, value: Any, path: str) -> Any:
        return self.reader(r, value, path)

    def schema(self, ctx: Context) -> dict[str, Any]:
        return self.fragment(ctx)


# -- structure -------------------------------------------------------------------------------

Check = Callable[[Reader, Mapping[str, Any], dict[str, Any], str], dict[str, Any] | None]
"""``(reader, the mapping as written, the values read, path)``: the values to build from, or
None where a rule across fields failed (recorded). Values of fields that failed are None."""


@dataclass(frozen=True, slots=True)
class Section(Generic[T]):
    """A closed mapping of fields (unknown ones are errors), built into ``T`` when all read."""

    fields: tuple[Field, ...]
    build: Callable[..., T]
    description: str = ""
    check: Check | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    """JSON Schema keywords across the fields (``if``/``then``, ``minProperties``)."""
    missing: str | None = None
    """The message for a required field left out, where the document words it its own way
    (``required for type: poisson``); default: the reader's ``required field is missing``."""
    nullable: bool | None = None
    """The schema admits ``null`` (read as all defaults, where the style says so); default:
    when no field is required."""

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if f.required)

    @property
    def optional(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if not f.required)

    def read(self, r: Reader, value: Any, path: str) -> T | None:
        worded = self.missing is not None or any(f.missing for f in self.fields)
        if not worded:
            obj = r.mapping(value, path, required=self.required, optional=self.optional)
        else:
            obj = r.mapping(value, path, optional=(*self.required, *self.optional))
        if obj is None:
            return None
        for f in self.fields if worded else ():
            if f.required and f.name not in obj:
                missing = f.missing or self.missing or "required field is missing"
                r.error(join(path, f.name), missing)
        values: dict[str, Any] = {}
        failed = False  # a field given and invalid, or required and missing
        for f in self.fields:
            if f.name in obj:
                got = f.kind.read(r, obj[f.name], join(path, f.name))
                failed = failed or got is None
            else:
                got = None if f.required else f.default
                failed = failed or f.required
            if f.key:
                values[f.key] = got
        built = values if self.check is None else self.check(r, obj, values, path)
        if failed or built is None:
            return None
        return self.build(**built)

    def all_read(self, obj: Mapping[str, Any], values: Mapping[str, Any]) -> bool:
        """In a ``check``: every field given was read (a rule that needs all can run)."""
        return all(values.get(f.key) is not None for f in self.fields if f.key and f.name in obj)

    def schema(self, ctx: Context) -> dict[str, Any]:
        properties = {f.name: f.schema(ctx) for f in self.fields}
        nullable = not self.required if self.nullable is None else self.nullable
        out: dict[str, Any] = {
            "type": ["object", "null"] if nullable and ctx.style.empty_is_default else "object",
            "properties": properties,
            "additionalProperties": False,
        }
        if self.required:
            out["required"] = list(self.required)
        if self.description:
            out["description"] = self.description
        return out | dict(self.extra)


@dataclass(frozen=True, slots=True)
class ListOf:
    """A list of ``item``; ``what`` names it in the message for a non-list (``a list of
    metrics``). ``empty`` is the message for an empty list, or None where one message says
    both; with ``allow_empty`` an empty list is fine. ``unique`` is ``(attribute, what it is)``
    for items whose attribute must differ."""

    item: Kind
    what: str
    empty: str | None = None
    unique: tuple[str, str] | None = None
    allow_empty: bool = False

    def read(self, r: Reader, value: Any, path: str) -> tuple[Any, ...] | None:
        if isinstance(value, list) and not value and self.allow_empty:
            return ()
        if not isinstance(value, list) or (not value and self.empty is None):
            r.error(path, f"expected {self.what}, got {r.kind_of(value)}")
            return None
        if not value:
            assert self.empty is not None
            r.error(path, self.empty)
            return None
        parsed: list[Any] = []
        seen: dict[Any, int] = {}
        for i, raw in enumerate(value):
            item = self.item.read(r, raw, f"{path}[{i}]")
            if item is None:
                continue
            if self.unique is not None:
                attribute, noun = self.unique
                key = getattr(item, attribute)
                if key in seen:
                    r.error(
                        f"{path}[{i}].{attribute}",
                        f"duplicate {noun} {key!r} (also {path}[{seen[key]}])",
                    )
                    continue
                seen[key] = i
            parsed.append(item)
        return tuple(parsed) if len(parsed) == len(value) else None

    def schema(self, ctx: Context) -> dict[str, Any]:
        items = {"items": self.item.schema(ctx)}
        return (
            {"type": "array", **items}
            if self.allow_empty
            else {
                "type": "array",
                "minItems": 1,
                **items,
            }
        )


@dataclass(frozen=True, slots=True)
class Tagged:
    """A union of sections told apart by one field (a metric's ``type``).

    ``variants`` is called at each use, so a registry that gains an entry (a test's toy metric
    type) is read and published without rebuilding the declaration. Each variant's schema goes
    into ``$defs`` as ``def_name.format(tag)``, or inline where ``def_name`` is None.
    ``missing`` is the message for a mapping without the tag (None: the one for a wrong tag,
    ``expected one of …, got nothing``).
    """

    tag: str
    variants: Callable[[], Mapping[str, Section[Any]]]
    def_name: str | None = "{}"
    missing: str | None = "required field is missing"

    def read(self, r: Reader, value: Any, path: str) -> Any:
        if not isinstance(value, Mapping):
            r.error(path or r.style.root, f"expected a mapping, got {r.kind_of(value)}")
            return None
        variants = self.variants()
        tag = value.get(self.tag)
        if not isinstance(tag, str) or tag not in variants:
            wrong = f"expected one of {', '.join(variants)}, got {r.kind_of(tag)}"
            absent = self.tag not in value and self.missing is not None
            r.error(join(path, self.tag), self.missing if absent and self.missing else wrong)
            return None
        return variants[tag].read(r, value, path)

    def schema(self, ctx: Context) -> dict[str, Any]:
        variants = self.variants()
        branches = []
        for tag, section in variants.items():
            fragment = section.schema(ctx)
            if self.def_name is not None:
                name = self.def_name.format(tag)
                if ctx.defs.setdefault(name, fragment) != fragment:
                    raise ValueError(f"two declarations of one document share $defs/{name}")
                fragment = {"$ref": f"#/$defs/{name}"}
            branches.append(
                {
                    "if": {"properties": {self.tag: {"const": tag}}, "required": [self.tag]},
                    "then": fragment,
                }
            )
        return {
            "type": "object",
            "required": [self.tag],
            "properties": {self.tag: {"enum": list(variants)}},
            "allOf": branches,
        }
