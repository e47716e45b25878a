"""Print a syntax tree back as PromQL that parses to the same tree.

The printer adds no parentheses of its own: a tree from :func:`~policies.promql.parser.parse`
carries its :class:`~policies.promql.syntax.Paren` nodes, so printing it keeps its shape.
"""

from __future__ import annotations

import math

from policies.promql.literals import format_duration, quote
from policies.promql.syntax import (
    Aggregate,
    At,
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


def format_expr(node: Expr) -> str:
    """PromQL text for ``node``."""
    if isinstance(node, NumberLiteral):
        return format_number(node.value)
    if isinstance(node, StringLiteral):
        return quote(node.value)
    if isinstance(node, VectorSelector):
        return format_selector(node) + _modifiers(node.offset, node.at)
    if isinstance(node, MatrixSelector):
        vs = node.selector
        return f"{format_selector(vs)}[{format_duration(node.range)}]" + _modifiers(
            vs.offset, vs.at
        )
    if isinstance(node, Subquery):
        step = format_duration(node.step) if node.step is not None else ""
        inner = format_expr(node.expr)
        return f"{inner}[{format_duration(node.range)}:{step}]" + _modifiers(node.offset, node.at)
    if isinstance(node, Call):
        return f"{node.function}({', '.join(format_expr(a) for a in node.args)})"
    if isinstance(node, Aggregate):
        args = [format_expr(node.expr)]
        if node.param is not None:
            args.insert(0, format_expr(node.param))
        grouping = ""
        if node.grouping is not None:
            grouping = f" {'without' if node.without else 'by'} ({', '.join(node.grouping)}) "
        return f"{node.op}{grouping}({', '.join(args)})"
    if isinstance(node, Binary):
        modifiers = " bool" if node.return_bool else ""
        if node.matching is not None:
            modifiers += _matching(node.matching)
        return f"{format_expr(node.lhs)} {node.op}{modifiers} {format_expr(node.rhs)}"
    if isinstance(node, Unary):
        return f"{node.op}{format_expr(node.expr)}"
    assert isinstance(node, Paren)
    return f"({format_expr(node.expr)})"


def format_selector(vs: VectorSelector) -> str:
    """``name{matchers}`` without modifiers."""
    matchers = ", ".join(format_matcher(m) for m in vs.matchers)
    if vs.name is not None and not vs.matchers:
        return vs.name
    return f"{vs.name or ''}{{{matchers}}}"


def format_matcher(m: LabelMatcher) -> str:
    return f"{m.name}{m.op}{quote(m.value)}"


def format_number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Inf" if value > 0 else "-Inf"
    return repr(value)


def _modifiers(offset: int | None, at: At | None) -> str:
    text = ""
    if offset is not None:
        text += f" offset {'-' if offset < 0 else ''}{format_duration(abs(offset))}"
    if at is not None:
        text += f" @ {at}()" if isinstance(at, str) else f" @ {_seconds(at)}"
    return text


def _seconds(millis: int) -> str:
    whole, rest = divmod(abs(millis), 1000)
    sign = "-" if millis < 0 else ""
    return f"{sign}{whole}.{rest:03d}" if rest else f"{sign}{whole}"


def _matching(m: VectorMatching) -> str:
    text = f" {'on' if m.on else 'ignoring'}({', '.join(m.labels)})"
    if m.group is not None:
        text += f" group_{m.group}({', '.join(m.include)})"
    return text
