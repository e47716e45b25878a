"""Hypothesis strategies for PromQL: well-typed syntax trees in the shape the parser builds.

A tree drawn here carries the parentheses its printed form needs (the printer adds none), has
no ``Unary`` over a number (the parser folds ``-1`` into a number) and passes Prometheus' type
checks, so ``parse(format_expr(tree)) == tree`` must hold for every draw.
"""

from __future__ import annotations

from typing import Literal, cast, get_args

from hypothesis import strategies as st

from policies.promql.functions import FUNCTIONS
from policies.promql.lexer import KEYWORDS
from policies.promql.parser import PRECEDENCE
from policies.promql.syntax import (
    Aggregate,
    At,
    Binary,
    Call,
    Expr,
    LabelMatcher,
    MatchOp,
    MatrixSelector,
    NumberLiteral,
    Paren,
    StringLiteral,
    Subquery,
    Unary,
    VectorMatching,
    VectorSelector,
)

Type = Literal["S", "V", "M", "T"]

_PRECEDENCE = {kind.value: p for kind, p in PRECEDENCE.items()}
ARITHMETIC = ("+", "-", "*", "/", "%", "^", "atan2")
COMPARISON = ("==", "!=", "<", "<=", ">", ">=")
SET = ("and", "or", "unless")
AGGREGATORS = (
    "sum", "avg", "count", "min", "max", "group", "stddev", "stdvar", "topk", "bottomk",
    "count_values", "quantile",
)  # fmt: skip
METRIC_KEYWORDS = ("sum", "by", "and", "or", "unless", "offset", "without", "start", "end", "topk")
"""Keywords that may also name a metric."""
REGEXES = (".+", "a|b", "[[:alpha:]]+", "\\pL+", "(?i)x.*y", "x{2,3}", "\\d+\\.\\d*", ".*", "")

_words = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,8}", fullmatch=True)
label_names = _words.filter(lambda w: w.lower() not in ("inf", "nan", "without"))
"""Names usable both inside braces and in ``by (…)`` (where ``without`` is not)."""
metric_names = st.one_of(
    st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,10}", fullmatch=True).filter(
        lambda w: w.lower() not in KEYWORDS
    ),
    st.sampled_from(METRIC_KEYWORDS),
)
durations = st.integers(min_value=1, max_value=10 * 365 * 86_400_000)
ats: st.SearchStrategy[At] = st.one_of(
    st.integers(min_value=-(10**12), max_value=10**12), st.sampled_from(("start", "end"))
)
label_values = st.text(st.characters(exclude_categories=["Cs"]), max_size=8)


@st.composite
def matchers(draw: st.DrawFn) -> LabelMatcher:
    op: MatchOp = draw(st.sampled_from(get_args(MatchOp)))
    value = draw(st.sampled_from(REGEXES) if op in ("=~", "!~") else label_values)
    return LabelMatcher(draw(label_names), op, value)


@st.composite
def vector_selectors(draw: st.DrawFn, *, modifiers: bool = True) -> VectorSelector:
    name = draw(st.none() | metric_names)
    found = tuple(draw(st.lists(matchers(), max_size=3)))
    if name is not None:
        found = tuple(m for m in found if m.name != "__name__")
    else:
        found += (LabelMatcher(draw(label_names), "=", draw(label_values.filter(bool))),)
    offset = at = None
    if modifiers:
        offset = draw(st.none() | durations.map(lambda d: d * draw(st.sampled_from((1, -1)))))
        at = draw(st.none() | ats)
    return VectorSelector(name, found, offset, at)


def _paren_if(node: Expr, wrap: bool) -> Expr:
    return Paren(node) if wrap else node


def _is_number(node: Expr) -> bool:
    return isinstance(node, NumberLiteral)


def binary(
    op: str, lhs: Expr, rhs: Expr, *, bool_: bool = False, matching: VectorMatching | None = None
) -> Binary:
    """``lhs op rhs`` with the parentheses precedence demands."""
    p = _PRECEDENCE[op]
    right_assoc = op == "^"
    lhs = _paren_if(
        lhs,
        (
            isinstance(lhs, Binary)
            and (_PRECEDENCE[lhs.op] < p or (_PRECEDENCE[lhs.op] == p and right_assoc))
        )
        or (isinstance(lhs, Unary) and op == "^"),
    )
    rhs = _paren_if(
        rhs,
        isinstance(rhs, Binary)
        and (_PRECEDENCE[rhs.op] < p or (_PRECEDENCE[rhs.op] == p and not right_assoc)),
    )
    return Binary(op, lhs, rhs, bool_, matching)


def unary(op: Literal["+", "-"], operand: Expr) -> Unary:
    wrap = _is_number(operand) or (isinstance(operand, Binary) and operand.op != "^")
    return Unary(op, _paren_if(operand, wrap))


def postfixable(node: Expr) -> Expr:
    """``node`` as something ``[…]``, ``offset`` or ``@`` may follow."""
    return _paren_if(node, isinstance(node, Binary | Unary))


def exprs(want: Type, depth: int = 3) -> st.SearchStrategy[Expr]:
    """Trees of type ``want`` at most ``depth`` levels above the leaves."""
    leaves: dict[Type, st.SearchStrategy[Expr]] = {
        "S": st.floats(min_value=0, allow_nan=False).map(NumberLiteral),
        "T": label_values.map(StringLiteral),
        "V": vector_selectors(),
        "M": st.builds(MatrixSelector, vector_selectors(modifiers=False), durations).flatmap(
            _matrix_modifiers
        ),
    }
    if depth <= 0:
        return leaves[want]
    sub = depth - 1
    options: list[st.SearchStrategy[Expr]] = [leaves[want]]
    if want in ("S", "V"):
        options.append(exprs(want, sub).map(lambda e: Paren(e)))
        options.append(st.builds(unary, st.sampled_from(("+", "-")), exprs(want, sub)))
        options.append(_binaries(want, sub))
    if want == "V":
        options.append(_aggregates(sub))
    if want == "M":
        options.append(_subqueries(sub))
    options.append(_calls(want, sub))
    return st.one_of(*options)


def _matrix_modifiers(m: Expr) -> st.SearchStrategy[Expr]:
    assert isinstance(m, MatrixSelector)
    vs = m.selector

    def build(offset: int | None, at: At | None) -> Expr:
        inner = VectorSelector(vs.name, vs.matchers, offset, at)
        return MatrixSelector(inner, m.range)

    return st.builds(build, st.none() | durations, st.none() | ats)


@st.composite
def _subqueries(draw: st.DrawFn, depth: int) -> Expr:
    inner = postfixable(draw(exprs("V", depth)))
    step = draw(st.none() | durations)
    return Subquery(
        inner, draw(durations), step, draw(st.none() | durations), draw(st.none() | ats)
    )


@st.composite
def _binaries(draw: st.DrawFn, want: Type, depth: int) -> Expr:
    if want == "S":
        op = draw(st.sampled_from(ARITHMETIC + COMPARISON))
        return binary(op, draw(exprs("S", depth)), draw(exprs("S", depth)), bool_=op in COMPARISON)
    pairs: tuple[tuple[Type, Type], ...] = (("V", "V"), ("V", "S"), ("S", "V"))
    sides = draw(st.sampled_from(pairs))
    ops = ARITHMETIC + COMPARISON + (SET if sides == ("V", "V") else ())
    op = draw(st.sampled_from(ops))
    lhs, rhs = draw(exprs(sides[0], depth)), draw(exprs(sides[1], depth))
    bool_ = op in COMPARISON and draw(st.booleans())
    matching = None
    if sides == ("V", "V") and draw(st.booleans()):
        on = draw(st.booleans())
        labels = tuple(draw(st.lists(label_names, max_size=2)))
        sides_: tuple[Literal["left", "right"] | None, ...] = (None, "left", "right")
        group = None if op in SET else draw(st.sampled_from(sides_))
        include: tuple[str, ...] = ()
        if group is not None:
            include = tuple(
                x for x in draw(st.lists(label_names, max_size=2)) if not on or x not in labels
            )
        matching = VectorMatching(on, labels, group, include)
    return binary(op, lhs, rhs, bool_=bool_, matching=matching)


@st.composite
def _aggregates(draw: st.DrawFn, depth: int) -> Expr:
    op = draw(st.sampled_from(AGGREGATORS))
    param = None
    if op in ("topk", "bottomk", "quantile"):
        param = draw(exprs("S", depth))
    elif op == "count_values":
        param = draw(exprs("T", depth))
    grouping = draw(st.none() | st.lists(label_names, max_size=3).map(tuple))
    without = grouping is not None and draw(st.booleans())
    return Aggregate(op, draw(exprs("V", depth)), param, grouping, without)


@st.composite
def _calls(draw: st.DrawFn, want: Type, depth: int) -> Expr:
    names = sorted(n for n, (_, _, returns) in FUNCTIONS.items() if returns == want)
    if not names:
        return draw(exprs(want, 0))
    name = draw(st.sampled_from(names))
    arg_types, variadic, _ = FUNCTIONS[name]
    types = [cast(Type, t) for t in arg_types]
    if variadic:
        extra = draw(st.integers(0, variadic if variadic > 0 else 3))
        types = types[:-1] + types[-1:] * extra
    args = tuple(draw(exprs(t, depth)) for t in types)
    return Call(name, args)
