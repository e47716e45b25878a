"""The declarative fields (:mod:`policies.declare`): for random declarations, a document built
from the declaration passes both the derived reader and the derived JSON Schema, and a document
broken in one place is refused by both, with every message at or under that place.

``test_jsonschema.py`` checks the same agreement on the real policy document; this file checks
the module itself, on declarations no document has yet (the next section someone declares).
"""

from __future__ import annotations

import string
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.declare import (
    Boolean,
    Choice,
    Const,
    Context,
    Custom,
    Duration,
    Field,
    Fraction,
    Integer,
    Kind,
    ListOf,
    Number,
    Positive,
    Section,
    Tagged,
    Text,
)
from policies.metrics import KINDS
from policies.reading import POLICY, ROOT, SCENARIO, Reader, Style, join

WORDS = st.sampled_from(["alpha", "beta", "gamma", "delta", "omega", "zeta"])
FIELD_NAMES = st.sampled_from(["a", "b", "cName", "dValue", "e", "fooBar", "g"])

# -- random declarations ---------------------------------------------------------------------

scalar_kinds: st.SearchStrategy[Kind] = st.one_of(
    st.builds(Integer, st.integers(-3, 5)),
    st.just(Positive()),
    st.builds(Fraction, st.booleans()),
    st.builds(
        Duration,
        st.booleans(),
        st.none() | st.sampled_from([(60.0, "1m"), (3600.0, "1h")]),
    ),
    st.builds(
        Number,
        st.none() | st.sampled_from([0, -2, 1.5]),
        st.booleans(),
        st.none() | st.sampled_from([2, 100]),
    ),
    st.just(Boolean()),
    st.just(Text()),
    st.just(Text(blank=True)),
    st.just(Text("[a-z][a-z0-9]*", "lower-case letters and digits")),
    st.builds(Choice, st.lists(WORDS, min_size=1, max_size=4, unique=True).map(tuple)),
    st.builds(Const, WORDS),
)


def sections(inner: st.SearchStrategy[Kind]) -> st.SearchStrategy[Section[Any]]:
    fields = st.lists(
        st.tuples(FIELD_NAMES, inner, st.booleans()),
        min_size=1,
        max_size=4,
        unique_by=lambda t: t[0],
    )
    missing = st.none() | st.just("required")
    return st.builds(
        lambda fs, m: Section(
            tuple(Field(n, k, required=req) for n, k, req in fs), dict, missing=m
        ),
        fields,
        missing,
    )


def tagged(inner: st.SearchStrategy[Kind]) -> st.SearchStrategy[Tagged]:
    @st.composite
    def build(draw: st.DrawFn) -> Tagged:
        tags = draw(st.lists(WORDS, min_size=1, max_size=3, unique=True))
        variants: dict[str, Section[Any]] = {}
        for tag in tags:
            own = draw(sections(inner))
            rest = tuple(f for f in own.fields if f.name != "kind")
            variants[tag] = Section((Field("kind", Const(tag), required=True), *rest), dict)
        prefix = draw(st.uuids()).hex  # $defs names are the document's: one per union
        return Tagged("kind", lambda: variants, prefix + "{}")

    return build()


kinds: st.SearchStrategy[Kind] = st.recursive(
    scalar_kinds,
    lambda inner: st.one_of(
        sections(inner),
        st.builds(
            ListOf,
            inner,
            st.just("a list of things"),
            st.none() | st.just("empty"),
            allow_empty=st.booleans(),
        ),
        tagged(inner),
    ),
    max_leaves=8,
)
documents: st.SearchStrategy[Section[Any]] = sections(kinds)

# -- valid values, derived from a declaration -------------------------------------------------


def _duration_text(draw: st.DrawFn, kind: Duration) -> str:
    top = int(kind.at_most[0] * 1000) if kind.at_most else 10**7
    ms = draw(st.integers(1 if kind.positive else 0, top))
    return draw(st.sampled_from([f"{ms}ms", f"{ms / 1000:g}s" if ms % 10 == 0 else f"{ms}ms"]))


@st.composite
def valid(draw: st.DrawFn, kind: Kind) -> Any:
    match kind:
        case Integer(minimum=low):
            return draw(st.integers(low, low + 1000))
        case Number(minimum=low, positive=positive, at_most=top):
            bottom = max(low if low is not None else -1e6, 1e-3 if positive else -1e6)
            return draw(st.floats(bottom, top if top is not None else 1e6))
        case Boolean():
            return draw(st.booleans())
        case Positive():
            return draw(st.floats(1e-3, 1e6) | st.integers(1, 10**6))
        case Fraction(closed_top=closed):
            return draw(st.floats(1e-3, 1.0 if closed else 0.999))
        case Duration():
            return _duration_text(draw, kind)
        case Text(blank=True):
            return draw(st.text(string.printable, max_size=5))
        case Text(pattern=None):
            alphabet = string.ascii_letters + string.digits + " -_/"
            return draw(st.text(alphabet, min_size=1, max_size=8).filter(str.strip))
        case Text(pattern=pattern):
            assert pattern is not None
            return draw(st.from_regex(pattern, fullmatch=True).filter(lambda s: "\n" not in s))
        case Choice(choices=choices):
            return draw(st.sampled_from(choices))
        case Const(value=value):
            return value
        case Section():
            return {
                f.name: draw(valid(f.kind))
                for f in kind.fields
                if f.required or draw(st.booleans())
            }
        case ListOf(item=item, allow_empty=empty):
            return draw(st.lists(valid(item), min_size=0 if empty else 1, max_size=3))
        case Tagged():
            variants = kind.variants()
            return draw(valid(variants[draw(st.sampled_from(sorted(variants)))]))
    raise AssertionError(f"no generator for {kind!r}")


# -- values every declaration refuses, and documents broken in one place ----------------------


def invalid(kind: Kind, style: Style) -> st.SearchStrategy[Any]:
    """Values that break ``kind`` in ``style`` in a way JSON Schema can state (no 2.0 for an
    integer, no inf: those are the parser's own rules, listed in ``PARSER_ONLY``)."""
    wrong_type = st.sampled_from([None, [], [1], True])
    match kind:
        case Number(minimum=low, positive=positive, at_most=top):
            below = [*([low - 1] if low is not None else []), *([0, -1] if positive else [])]
            above = [top + 1] if top is not None else []
            return wrong_type | st.sampled_from(["1", *below, *above])
        case Boolean():
            return st.sampled_from([None, "true", 1, [], 0.0])
        case Text(blank=True):
            return st.sampled_from([None, 3, [], True])
        case Integer(minimum=low):
            return wrong_type | st.sampled_from([low - 1, low - 7, "1", 1.5])
        case Positive():
            return wrong_type | st.sampled_from([0, -1, -0.5, "1"])
        case Fraction(closed_top=closed):
            return wrong_type | st.sampled_from([0, -0.1, 1.5, "0.5", *([] if closed else [1])])
        case Duration(positive=positive):
            bad: list[Any] = ["15", "", "-1s", "1 s", "1.s", "abc", "1s\n"]
            bad += [-1] if style.seconds else [15]
            bad += ["0s", "0", *([0] if style.seconds else [])] if positive else []
            return wrong_type | st.sampled_from(bad)
        case Text(pattern=pattern):
            return wrong_type | st.sampled_from(["", "   ", 3, *(["A!", "9x"] if pattern else [])])
        case Choice():
            return wrong_type | st.sampled_from(["nope", 1])
        case Const():
            return wrong_type | st.sampled_from(["nope", 1])
        case Section():
            required = bool(kind.required)
            nothing = [None] if required or not style.empty_is_default else []
            return st.sampled_from([[], [1], True, "x", 3, *nothing, *([{}] if required else [])])
        case ListOf(allow_empty=empty):
            return st.sampled_from([None, True, 3, {}, "x", *([] if empty else [[]])])
        case Tagged():
            return wrong_type | st.sampled_from([{}, {"kind": "nope"}, {"kind": 3}])
    raise AssertionError(f"no breaker for {kind!r}")


@st.composite
def broken(draw: st.DrawFn, kind: Kind, value: Any, path: str, style: Style) -> tuple[Any, str]:
    """``value`` broken in one place; returns it and that place's path."""
    match kind:
        case Section() if isinstance(value, dict):
            present = [f for f in kind.fields if f.name in value]
            how = draw(st.sampled_from(["replace", "descend", "unknown", "drop"]))
            if how == "unknown":
                return {**value, "zzzUnknown": 1}, join(path, "zzzUnknown")
            required = [f for f in present if f.required]
            if how == "drop" and required:
                f = draw(st.sampled_from(required))
                return {k: v for k, v in value.items() if k != f.name}, join(path, f.name)
            if how == "descend" and present:
                f = draw(st.sampled_from(present))
                inner, where = draw(broken(f.kind, value[f.name], join(path, f.name), style))
                return {**value, f.name: inner}, where
        case ListOf() if isinstance(value, list) and value and draw(st.booleans()):
            i = draw(st.integers(0, len(value) - 1))
            inner, where = draw(broken(kind.item, value[i], f"{path}[{i}]", style))
            return [*value[:i], inner, *value[i + 1 :]], where
        case Tagged() if isinstance(value, dict) and draw(st.booleans()):
            return draw(broken(kind.variants()[value["kind"]], value, path, style))
    return draw(invalid(kind, style)), path


def _read(declaration: Section[Any], document: Any, style: Style = POLICY) -> tuple[Any, Reader]:
    r = Reader(style)
    return declaration.read(r, document, ROOT), r


def _schema(declaration: Section[Any], style: Style = POLICY) -> jsonschema.Draft202012Validator:
    ctx = Context(style)
    schema = declaration.schema(ctx)
    return jsonschema.Draft202012Validator({**schema, "$defs": ctx.defs})


STYLES = pytest.mark.parametrize("style", [POLICY, SCENARIO], ids=["policy", "scenario"])


@STYLES
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), declaration=documents)
def test_a_document_built_from_a_declaration_passes_reader_and_schema(
    style: Style, data: st.DataObject, declaration: Section[Any]
) -> None:
    document = data.draw(valid(declaration))
    value, r = _read(declaration, document, style)
    assert r.errors == [] and value is not None, (r.errors, document)
    assert list(_schema(declaration, style).iter_errors(document)) == []


@STYLES
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), declaration=documents)
def test_a_document_broken_in_one_place_is_refused_by_both_there(
    style: Style, data: st.DataObject, declaration: Section[Any]
) -> None:
    document, where = data.draw(broken(declaration, data.draw(valid(declaration)), "", style))
    _, r = _read(declaration, document, style)
    assert r.errors, document  # every caller refuses a document with an error recorded
    assert list(_schema(declaration, style).iter_errors(document)), (document, r.errors)
    if where:
        for e in r.errors:
            assert e.path == where or e.path.startswith((f"{where}.", f"{where}[")), (
                where,
                r.errors,
            )


# -- the real declarations -------------------------------------------------------------------


def _plain(kind: Kind) -> bool:
    """Declared with no escape hatch and no rule across fields: generated values are valid."""
    match kind:
        case Custom():
            return False
        case Section():
            return kind.check is None and all(_plain(f.kind) for f in kind.fields)
        case ListOf(item=item):
            return _plain(item)
    return True


@pytest.mark.parametrize(
    "kind", [k for k in KINDS.values() if _plain(k.section)], ids=lambda k: k.type
)
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_each_metric_type_s_declaration_agrees_with_its_schema(
    kind: Any, data: st.DataObject
) -> None:
    section = kind.section
    good = data.draw(valid(section))
    assert _read(section, good)[0] is not None
    assert list(_schema(section).iter_errors(good)) == []
    bad, _ = data.draw(broken(section, good, "", POLICY))
    assert _read(section, bad)[1].errors
    assert list(_schema(section).iter_errors(bad))


def test_a_field_s_attribute_follows_its_name() -> None:
    assert Field("targetPerReplica", Positive()).key == "target_per_replica"
    assert Field("apiVersion", Text(), attr="").key == ""
    assert Field("min", Integer()).key == "min"
