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
    Positive,
    Section,
    Tagged,
    Text,
)
from policies.metrics import KINDS
from policies.reading import POLICY, ROOT, Reader, join

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
    st.just(Text()),
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
    return fields.map(
        lambda fs: Section(tuple(Field(n, k, required=req) for n, k, req in fs), dict)
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
        st.builds(ListOf, inner, st.just("a list of things"), st.none() | st.just("empty")),
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
        case Positive():
            return draw(st.floats(1e-3, 1e6) | st.integers(1, 10**6))
        case Fraction(closed_top=closed):
            return draw(st.floats(1e-3, 1.0 if closed else 0.999))
        case Duration():
            return _duration_text(draw, kind)
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
        case ListOf(item=item):
            return draw(st.lists(valid(item), min_size=1, max_size=3))
        case Tagged():
            variants = kind.variants()
            return draw(valid(variants[draw(st.sampled_from(sorted(variants)))]))
    raise AssertionError(f"no generator for {kind!r}")


# -- values every declaration refuses, and documents broken in one place ----------------------


def invalid(kind: Kind) -> st.SearchStrategy[Any]:
    """Values that break ``kind`` in a way JSON Schema can state (no 2.0 for an integer, no
    inf: those are the parser's own rules, listed in ``PARSER_ONLY``)."""
    wrong_type = st.sampled_from([None, [], [1], True])
    match kind:
        case Integer(minimum=low):
            return wrong_type | st.sampled_from([low - 1, low - 7, "1", 1.5])
        case Positive():
            return wrong_type | st.sampled_from([0, -1, -0.5, "1"])
        case Fraction(closed_top=closed):
            return wrong_type | st.sampled_from([0, -0.1, 1.5, "0.5", *([] if closed else [1])])
        case Duration(positive=positive):
            bad = [15, "15", "", "-1s", "1 s", "1.s", "abc", "1s\n"]
            return wrong_type | st.sampled_from([*bad, *(["0s", "0"] if positive else [])])
        case Text(pattern=pattern):
            return wrong_type | st.sampled_from(["", "   ", 3, *(["A!", "9x"] if pattern else [])])
        case Choice():
            return wrong_type | st.sampled_from(["nope", 1])
        case Const():
            return wrong_type | st.sampled_from(["nope", 1])
        case Section():
            required = bool(kind.required)
            return wrong_type | st.sampled_from(["x", 3, *([{}] if required else [])])
        case ListOf():
            return wrong_type | st.sampled_from([[], {}, "x"])
        case Tagged():
            return wrong_type | st.sampled_from([{}, {"kind": "nope"}, {"kind": 3}])
    raise AssertionError(f"no breaker for {kind!r}")


@st.composite
def broken(draw: st.DrawFn, kind: Kind, value: Any, path: str) -> tuple[Any, str]:
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
                inner, where = draw(broken(f.kind, value[f.name], join(path, f.name)))
                return {**value, f.name: inner}, where
        case ListOf() if isinstance(value, list) and draw(st.booleans()):
            i = draw(st.integers(0, len(value) - 1))
            inner, where = draw(broken(kind.item, value[i], f"{path}[{i}]"))
            return [*value[:i], inner, *value[i + 1 :]], where
        case Tagged() if isinstance(value, dict) and draw(st.booleans()):
            return draw(broken(kind.variants()[value["kind"]], value, path))
    return draw(invalid(kind)), path


def _read(declaration: Section[Any], document: Any) -> tuple[Any, Reader]:
    r = Reader(POLICY)
    return declaration.read(r, document, ROOT), r


def _schema(declaration: Section[Any]) -> jsonschema.Draft202012Validator:
    ctx = Context(POLICY)
    schema = declaration.schema(ctx)
    return jsonschema.Draft202012Validator({**schema, "$defs": ctx.defs})


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data(), documents)
def test_a_document_built_from_a_declaration_passes_reader_and_schema(
    data: st.DataObject, declaration: Section[Any]
) -> None:
    document = data.draw(valid(declaration))
    value, r = _read(declaration, document)
    assert r.errors == [] and value is not None, (r.errors, document)
    assert list(_schema(declaration).iter_errors(document)) == []


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data(), documents)
def test_a_document_broken_in_one_place_is_refused_by_both_there(
    data: st.DataObject, declaration: Section[Any]
) -> None:
    document, where = data.draw(broken(declaration, data.draw(valid(declaration)), ""))
    _, r = _read(declaration, document)
    assert r.errors, document  # every caller refuses a document with an error recorded
    assert list(_schema(declaration).iter_errors(document)), (document, r.errors)
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
    bad, _ = data.draw(broken(section, good, ""))
    assert _read(section, bad)[1].errors
    assert list(_schema(section).iter_errors(bad))


def test_a_field_s_attribute_follows_its_name() -> None:
    assert Field("targetPerReplica", Positive()).key == "target_per_replica"
    assert Field("apiVersion", Text(), attr="").key == ""
    assert Field("min", Integer()).key == "min"
