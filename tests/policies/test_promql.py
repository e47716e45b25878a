"""The PromQL parser: shapes, literals, errors with positions, and printed trees reading back."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.promql import MAX_DEPTH, PromQLError, format_expr, parse, selectors
from policies.promql.literals import format_duration, parse_duration, quote, unquote
from policies.promql.regex import RegexError, matches_empty
from policies.promql.syntax import (
    Aggregate,
    Binary,
    Call,
    Expr,
    LabelMatcher,
    MatrixSelector,
    NumberLiteral,
    Paren,
    StringLiteral,
    Subquery,
    Unary,
    VectorMatching,
    VectorSelector,
)
from tests.policies.promql_strategies import exprs

a, b, c = (VectorSelector(n, ()) for n in "abc")


@pytest.mark.parametrize(
    ("query", "tree"),
    [
        ("a + b * c", Binary("+", a, Binary("*", b, c))),
        ("a * b + c", Binary("+", Binary("*", a, b), c)),
        ("a - b - c", Binary("-", Binary("-", a, b), c)),
        ("a ^ b ^ c", Binary("^", a, Binary("^", b, c))),
        ("a or b and c", Binary("or", a, Binary("and", b, c))),
        ("a and b unless c", Binary("unless", Binary("and", a, b), c)),
        ("a == b + c", Binary("==", a, Binary("+", b, c))),
        ("a atan2 b * c", Binary("*", Binary("atan2", a, b), c)),
        ("-a ^ b", Unary("-", Binary("^", a, b))),
        ("-a * b", Binary("*", Unary("-", a), b)),
        ("a ^ -b", Binary("^", a, Unary("-", b))),
        ("-1", NumberLiteral(-1.0)),
        ("- -1", NumberLiteral(1.0)),
        ("-(1)", Unary("-", Paren(NumberLiteral(1.0)))),
        ("(a)", Paren(a)),
        ("a > bool b", Binary(">", a, b, return_bool=True)),
        (
            "a * on(x, y) group_left(z) b",
            Binary("*", a, b, matching=VectorMatching(True, ("x", "y"), "left", ("z",))),
        ),
        (
            "a / ignoring(x) group_right b",
            Binary("/", a, b, matching=VectorMatching(False, ("x",), "right", ())),
        ),
        ("a and on() b", Binary("and", a, b, matching=VectorMatching(True, ()))),
        # keywords that name metrics where a metric can stand
        ("sum", VectorSelector("sum", ())),
        ("and and and", Binary("and", VectorSelector("and", ()), VectorSelector("and", ()))),
        ("offset offset 5m", VectorSelector("offset", (), offset=300_000)),
        ("SUM{x='1'}", VectorSelector("SUM", (LabelMatcher("x", "=", "1"),))),
        ("foo:bar", VectorSelector("foo:bar", ())),
        (
            '{__name__=~"a|b", on="1"}',
            VectorSelector(
                None, (LabelMatcher("__name__", "=~", "a|b"), LabelMatcher("on", "=", "1"))
            ),
        ),
        # modifiers and ranges
        ("a offset -5m", VectorSelector("a", (), offset=-300_000)),
        ("a @ 1.5", VectorSelector("a", (), at=1500)),
        ("a @ -2", VectorSelector("a", (), at=-2000)),
        ("a @ start()", VectorSelector("a", (), at="start")),
        (
            "a[1h30m] offset 1m @ end()",
            MatrixSelector(VectorSelector("a", (), 60_000, "end"), 5_400_000),
        ),
        ("a offset 1m [5m:]", Subquery(VectorSelector("a", (), offset=60_000), 300_000, None)),
        (
            "rate(a[5m])[1h:5m] @ 10",
            Subquery(Call("rate", (MatrixSelector(a, 300_000),)), 3_600_000, 300_000, at=10_000),
        ),
        # aggregations, either side
        ("sum by (x) (a)", Aggregate("sum", a, None, ("x",))),
        ("sum(a) without (x,)", Aggregate("sum", a, None, ("x",), without=True)),
        ("sum by () (a)", Aggregate("sum", a, None, ())),
        ("topk(3, a)", Aggregate("topk", a, NumberLiteral(3.0))),
        ("count_values('v', a)", Aggregate("count_values", a, StringLiteral("v"))),
        (
            "sum by (bool, on, start, atan2) (a)",
            Aggregate("sum", a, None, ("bool", "on", "start", "atan2")),
        ),
        # literals
        ("0x1F", NumberLiteral(31.0)),
        ("010", NumberLiteral(8.0)),
        ("09", NumberLiteral(9.0)),
        ("1e3", NumberLiteral(1000.0)),
        (".5", NumberLiteral(0.5)),
        ("Inf", NumberLiteral(math.inf)),
        ('"a\\x41\\u00e9\\101\\n"', StringLiteral("aAéA\n")),
        ("'it\\'s'", StringLiteral("it's")),
        ("`raw\\n`", StringLiteral("raw\\n")),
        ("a # a comment\n + b", Binary("+", a, b)),
        (
            "label_join(a, 'd', ',', 's1', 's2')",
            Call("label_join", (a, *(StringLiteral(s) for s in ("d", ",", "s1", "s2")))),
        ),
    ],
)
def test_shapes(query: str, tree: object) -> None:
    assert parse(query) == tree


@pytest.mark.parametrize(
    ("query", "message", "column"),
    [
        ("", "no expression found in input", 1),
        ("sum(rate(x[5m])", "unclosed left parenthesis", 16),
        ("foo)", "unexpected right parenthesis", 4),
        ("foo{a='b'", "unexpected end of input inside braces", 10),
        ("foo{a:b='c'}", "unexpected character inside braces: ':'", 6),
        (
            "foo{a='b' c='d'}",
            'unexpected identifier \'c\' in label matching, expected "," or "}"',
            11,
        ),
        ("foo[5]", "missing unit character in duration", 5),
        ("foo[1.5m]", "not a valid duration string: '1.5m'", 5),
        ("foo[0s]", "duration must be greater than 0", 5),
        ("foo offset 5", "unexpected number '5' in offset, expected duration", 12),
        ("foo offset 5m offset 1m", "offset may not be set multiple times", 15),
        ("foo offset 5m [5m]", "no offset modifiers allowed before range", 15),
        ("(foo)[5m]", "ranges only allowed for vector selectors", 6),
        ("sum(foo) offset 5m", "offset modifier must be preceded by", 10),
        ("foo @ 1 @ 2", "@ <timestamp> may not be set multiple times", 9),
        ("foo @ inf", "timestamp out of bounds for @ modifier", 7),
        ("foo @ start", 'unexpected end of input in @, expected "("', 12),
        ("{}", "vector selector must contain at least one non-empty matcher", 1),
        ('{a=~".*"}', "vector selector must contain at least one non-empty matcher", 1),
        ('foo{__name__="bar"}', "metric name must not be set twice", 1),
        ('foo{a=~"("}', "error parsing regexp: missing closing )", 5),
        ('foo{a=~"x**"}', "invalid nested repetition operator", 5),
        ("nope(foo)", "unknown function with name 'nope'", 1),
        (
            "rate(foo)",
            "expected type range vector in call to function 'rate', got instant vector",
            6,
        ),
        ("rate(foo[5m],)", "trailing commas not allowed in function call args", 13),
        ("round(a, 1, 2)", "expected at most 2 argument(s) in call to 'round', got 3", 1),
        ("sum()", "no arguments for aggregate expression provided", 1),
        (
            "topk(a)",
            "wrong number of arguments for aggregate expression provided, expected 2, got 1",
            1,
        ),
        ("count_values(1, a)", "expected type string in aggregation parameter, got scalar", 14),
        ("sum by (without) (a)", 'unexpected "without" in grouping opts, expected label', 9),
        ("sum by (inf) (a)", "unexpected number 'inf' in grouping opts, expected label", 9),
        ("1 > 2", "comparisons between scalars must use BOOL modifier", 1),
        ("a + bool b", "bool modifier can only be used on comparison operators", 1),
        ("a and on(x) group_left b", "no grouping allowed for 'and' operation", 1),
        ("1 and a", "set operator 'and' not allowed in binary scalar expression", 1),
        ("a + on(x) 1", "vector matching only allowed between instant vectors", 1),
        ("a * on(x) group_left(x) b", "label 'x' must not occur in ON and GROUP clause at once", 1),
        ("a[5m] + 1", "binary expression must contain only scalar and instant vector types", 1),
        (
            "-a[5m]",
            "unary expression only allowed on expressions of type scalar or instant vector",
            1,
        ),
        ("a[5m][5m:]", "subquery is only allowed on instant vector, got range vector instead", 1),
        ('"\\q"', "unknown escape sequence U+0071 'q'", 2),
        ('"\\uD800"', "escape sequence is an invalid Unicode code point", 2),
        ('"a\nb"', "unterminated quoted string", 1),
        ('"\ufffd"', "invalid UTF-8 rune", 2),
        ("1e400", "error parsing number: value out of range", 1),
        ("0x", "error parsing number: invalid syntax", 1),
        ("1_000", "bad number or duration syntax", 1),
        ("5m", "unexpected duration '5m'", 1),
        ("foo bar", "unexpected identifier 'bar'", 5),
        ("a * group_left b", 'unexpected "group_left"', 5),
    ],
)
def test_errors_say_what_and_where(query: str, message: str, column: int) -> None:
    with pytest.raises(PromQLError) as caught:
        parse(query)
    assert message in caught.value.message
    assert (caught.value.line, caught.value.column) == (
        query.count("\n", 0, caught.value.position) + 1,
        column,
    )


def test_error_position_counts_lines() -> None:
    with pytest.raises(PromQLError) as caught:
        parse("sum(\n  rate(x[5m])\n  + )")
    assert (caught.value.line, caught.value.column) == (3, 5)
    assert str(caught.value).startswith("3:5: unexpected")


@pytest.mark.parametrize(
    "query",
    [
        "(" * 100_000 + "1" + ")" * 100_000,
        "-" * 100_000 + "1",
        "a" + " + a" * 100_000,
        "a ^ " * 100_000 + "a",
        "sum(" * 50_000 + "a" + ")" * 50_000,
        "{" * 100_000,
        "a[5m:]" * 1000,
    ],
)
def test_hostile_nesting_is_an_error_not_a_crash(query: str) -> None:
    with pytest.raises(PromQLError):
        parse(query)


def test_nesting_up_to_the_bound_is_fine() -> None:
    depth = MAX_DEPTH // 2
    assert parse("(" * depth + "a" + ")" * depth) is not None


def test_spans_point_into_the_text() -> None:
    query = 'sum(rate(foo{a="b"}[5m])) / bar offset 1m'
    found = selectors(parse(query))
    assert [query[s.span.start : s.span.end] for s in found] == ['foo{a="b"}', "bar"]
    assert found[0].braces is not None
    assert query[found[0].braces.start : found[0].braces.end] == '{a="b"}'
    assert found[1].braces is None


MAX_DURATION_MS = ((1 << 63) - 1) // 1_000_000
"""Go's time.Duration holds about 292 years."""


@given(st.integers(min_value=1, max_value=2 * MAX_DURATION_MS))
def test_durations_print_and_read_back_within_gos_range(ms: int) -> None:
    expected = ms if ms <= MAX_DURATION_MS else "duration out of range"
    assert parse_duration(format_duration(ms)) == expected


@given(st.text(st.characters(exclude_categories=["Cs"])))
def test_strings_quote_and_read_back(value: str) -> None:
    token = quote(value)
    assert unquote(token) == value
    assert parse(token) == StringLiteral(value)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(exprs("S"), exprs("V"), exprs("M"), exprs("T")))
def test_printed_trees_parse_back_to_the_same_tree(tree: Expr) -> None:
    text = format_expr(tree)
    assert parse(text) == tree, text


_FRAGMENTS = (
    "sum", "rate", "(", ")", "{", "}", "[", "]", "5m", ":", ",", "=", "=~", "!=", '"a"', "'b",
    "`c`", "foo", "offset", "@", "start()", "by", "on", "group_left", "bool", "+", "-", "^",
    "and", "1", "0x", "1e", "#", "\n", " ", "\\", "inf", ".", "topk", "__name__", "ignoring",
)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(), st.lists(st.sampled_from(_FRAGMENTS), max_size=20).map("".join)))
def test_any_text_parses_or_raises_promql_error(text: str) -> None:
    try:
        tree = parse(text)
    except PromQLError as exc:
        assert 0 <= exc.position <= len(text)
        assert exc.message
    else:
        assert parse(format_expr(tree)) == tree


@pytest.mark.parametrize(
    ("pattern", "empty"),
    [
        (".*", True), (".+", False), ("a|", True), ("x", False), ("", True), ("(?i)a*", True),
        ("[[:alpha:]]*", True), ("\\pL+", False), ("\\p{Greek}?", True), ("x{0}", True),
        ("x{0,3}", True), ("x{2}", False), ("\\b", False), ("\\B", True), ("^$", True),
        ("\\Q.*\\E", False), ("\\Q\\E", True), ("\\Qab\\E*", False),
        ("\\Qa\\E*", True), ("(?)", True), ("a(?i)*", True), ("(?P<n>a)?", True),
        ("[^a]", False), ("\\x{41}*", True), ("\\_", False), ("[]a]", False), ("[a-]", False),
    ],
)  # fmt: skip
def test_regex_matches_empty(pattern: str, empty: bool) -> None:
    assert matches_empty(pattern) is empty


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("(", "missing closing )"), (")", "unexpected )"), ("a)|(b", "unexpected )"),
        ("*", "missing argument to repetition operator"), ("a|*", "missing argument"),
        ("a**", "invalid nested repetition operator"), ("x{1001}", "invalid repeat count"),
        ("(x{100}){100}", "invalid repeat count"),
        ("x{2,999999999}", "invalid repeat count"), ("[z-a]", "invalid character class range"),
        ("[[:foo:]]", "invalid character class range"), ("\\p{Nope}", "invalid character class"),
        ("\\1", "invalid escape sequence"), ("\\Z", "invalid escape sequence"), ("\\C", "\\C"),
        ("(?<n>x)", "invalid or unsupported Perl syntax"), ("(?i-)", "invalid or unsupported"),
        ("(?P<>x)", "invalid named capture"), ("[a", "missing closing ]"), ("\\", "trailing"),
        ("\udcff", "invalid UTF-8"),
    ],
)  # fmt: skip
def test_regex_errors_as_go_reports_them(pattern: str, reason: str) -> None:
    with pytest.raises(RegexError, match="error parsing regexp") as caught:
        matches_empty(pattern)
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    "query",
    ["x" * 100_000 + "(a)", '{a=~"[' + "[:" * 50_000 + ']"}', "a{" + "b" * 100_000 + "}"],
)
def test_messages_stay_short_for_huge_queries(query: str) -> None:
    with pytest.raises(PromQLError) as caught:
        parse(query)
    assert len(str(caught.value)) < 250
