"""The shared field readers: every problem collected, the two styles' named differences, and the
configuration modules reading through them rather than through each other's private names."""

from __future__ import annotations

import ast
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from policies.durations import format_duration
from policies.reading import (
    POLICY,
    ROOT,
    SCENARIO,
    FieldError,
    Reader,
    describe,
    join,
    show,
    yaml_problem,
)

REPO = Path(__file__).resolve().parents[2]
CONFIG_MODULES = (
    "policies/parse.py",
    "policies/reading.py",
    "simulations/config/scenario.py",
    "simulations/config/sweep_spec.py",
)

yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
field_names = st.text(alphabet="abcdefgh", min_size=1, max_size=4)


@pytest.mark.parametrize("style", [POLICY, SCENARIO])
@given(value=yaml_values)
def test_every_reader_answers_any_value_without_raising(style: Any, value: Any) -> None:
    r = Reader(style)
    r.string(value, "a")
    r.integer(value, "a", minimum=1)
    r.number(value, "a", positive=True)
    r.positive(value, "a")
    r.fraction(value, "a", closed_top=False)
    r.choice(value, "a", ("x", "y"))
    r.duration(value, "a", positive=True)
    r.mapping(value, "a", required=("x",), optional=("y",))
    assert all(isinstance(e, FieldError) and e.path for e in r.errors)
    assert isinstance(describe(value), str) and isinstance(show(value), str)


@given(
    allowed=st.sets(field_names, max_size=4),
    given_fields=st.sets(field_names, max_size=6),
)
def test_mapping_reports_every_unknown_and_missing_field_at_once(
    allowed: set[str], given_fields: set[str]
) -> None:
    required = tuple(sorted(allowed))[:2]
    optional = tuple(sorted(allowed))[2:]
    r = Reader(POLICY)
    r.mapping(dict.fromkeys(given_fields, 1), "spec", required=required, optional=optional)
    unknown = {e.path for e in r.errors if e.message.startswith("unknown field")}
    missing = {e.path for e in r.errors if e.message == "required field is missing"}
    assert unknown == {f"spec.{f}" for f in given_fields - allowed}
    assert missing == {f"spec.{f}" for f in set(required) - given_fields}


def test_unknown_field_hints_follow_the_style() -> None:
    policy, scenario = Reader(POLICY), Reader(SCENARIO)
    policy.mapping({"zz": 1}, ROOT, optional=("b", "a"))
    scenario.mapping({"zz": 1}, "", optional=("b", "a"))
    assert policy.errors == [FieldError("zz", "unknown field (allowed here: a, b)")]
    assert scenario.errors == [FieldError("zz", "unknown field (expected one of: b, a)")]


def test_an_empty_section_is_all_defaults_only_in_the_scenario_style() -> None:
    policy, scenario = Reader(POLICY), Reader(SCENARIO)
    assert policy.mapping(None, "behavior", optional=("scaleUp",)) is None
    assert scenario.mapping(None, "service", optional=("name",)) == {}
    assert policy.errors == [FieldError("behavior", "expected a mapping, got nothing")]
    assert scenario.errors == []


def test_a_bad_root_is_named_by_the_style() -> None:
    policy, scenario = Reader(POLICY), Reader(SCENARIO)
    policy.mapping([1], ROOT)
    scenario.mapping([1], "")
    assert [e.path for e in policy.errors] == ["(root)"]
    assert [e.path for e in scenario.errors] == ["(top)"]


@given(seconds=st.floats(min_value=0, max_value=1e6) | st.integers(0, 10**6))
def test_bare_seconds_are_a_duration_only_in_the_scenario_style(seconds: float) -> None:
    policy, scenario = Reader(POLICY), Reader(SCENARIO)
    assert policy.duration(seconds, "d") is None
    assert policy.errors[0].message.startswith('expected a duration like "2s", got a number')
    assert scenario.duration(seconds, "d") == float(seconds)
    assert scenario.errors == []


@given(seconds=st.integers(0, 10**6), positive=st.booleans())
def test_both_styles_read_a_duration_string_alike(seconds: int, positive: bool) -> None:
    """The twin duration readers agree wherever both accept the input: strings."""
    text = format_duration(seconds)
    policy, scenario = Reader(POLICY), Reader(SCENARIO)
    got_policy = policy.duration(text, "d", positive=positive)
    got_scenario = scenario.duration(text, "d", positive=positive)
    assert got_policy == got_scenario
    assert (got_policy is None) == (positive and seconds == 0)


@given(text=st.text(max_size=8))
def test_a_duration_string_either_reads_or_names_the_field(text: str) -> None:
    for style in (POLICY, SCENARIO):
        r = Reader(style)
        got = r.duration(text, "spec.window")
        assert (got is None) == bool(r.errors)
        assert all(e.path == "spec.window" for e in r.errors)
        assert got is None or (math.isfinite(got) and got >= 0)


@given(value=yaml_values, default=st.integers())
def test_get_gives_none_for_a_bad_value_and_field_gives_the_default(
    value: Any, default: int
) -> None:
    r = Reader(SCENARIO)
    got = r.get({"n": value}, "spec", "n", r.integer)
    kept = r.field({"n": value}, "spec", "n", r.integer, default)
    valid = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    assert got == (value if valid else None)
    assert kept == (value if valid else default)
    assert len(r.errors) == (0 if valid else 2)
    assert r.get({}, "spec", "n", r.integer, 7) == 7 and r.field({}, "spec", "n", r.integer, 7) == 7


def test_strings_of_blanks_are_empty_in_both_styles() -> None:
    for style, shown in ((POLICY, "a string ('  ')"), (SCENARIO, '"  "')):
        r = Reader(style)
        assert r.string("  ", "name") is None
        assert r.errors == [FieldError("name", f"expected a non-empty string, got {shown}")]


def test_messages_prefix_the_file_and_keep_the_order_found() -> None:
    r = Reader(SCENARIO)
    r.integer("x", "b")
    r.integer(-1, "a")
    assert r.messages("s.yaml") == [
        's.yaml: b: expected an integer, got "x"',
        "s.yaml: a: must be at least 0, got -1",
    ]


@given(path=st.sampled_from(["", ROOT, "a", "a.b[0]"]), field=field_names)
def test_join_names_root_fields_alone(path: str, field: str) -> None:
    assert join(path, field) == (field if path in ("", ROOT) else f"{path}.{field}")


@pytest.mark.parametrize("module", CONFIG_MODULES)
def test_configuration_modules_import_no_private_names(module: str) -> None:
    tree = ast.parse((REPO / module).read_text(encoding="utf-8"))
    private = [
        f"{node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module != "__future__"
        for alias in node.names
        if alias.name.startswith("_")
    ]
    assert private == []


@given(text=st.text(alphabet="ab:{}[]-'\"\n #&*!|>", max_size=20))
def test_a_yaml_problem_says_what_and_where_when_pyyaml_knows(text: str) -> None:
    try:
        yaml.safe_load(text)
    except yaml.YAMLError as exc:
        bad = yaml_problem(exc)
        assert bad.problem
        mark = getattr(exc, "problem_mark", None)
        if mark is None:
            assert bad.line is None and bad.column is None
        else:
            assert (bad.line, bad.column) == (mark.line + 1, mark.column + 1)
            assert bad.line is not None and 1 <= bad.line <= text.count("\n") + 1


def test_a_yaml_problem_points_at_the_line_a_user_sees() -> None:
    with pytest.raises(yaml.YAMLError) as info:
        yaml.safe_load("a: 1\nb: [2\n")
    bad = yaml_problem(info.value)
    assert bad.line == 3 and bad.column == 1 and "expected ','" in bad.problem
