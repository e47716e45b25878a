"""The PromQL syntax tree: frozen dataclasses that remember where in the text they came from.

Spans are character offsets into the parsed string and take no part in equality, so a tree
printed and parsed again compares equal to the original. The shapes follow Prometheus'
``promql/parser/ast.go``: ``-1`` is a number, not a negation; an offset or ``@`` written after
a range belongs to the selector inside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypeAlias

MatchOp = Literal["=", "!=", "=~", "!~"]
At: TypeAlias = int | Literal["start", "end"]
"""An ``@`` modifier: milliseconds since the epoch, or ``start()`` / ``end()``."""


@dataclass(frozen=True, slots=True)
class Span:
    start: int
    end: int


NOWHERE = Span(0, 0)


@dataclass(frozen=True, slots=True)
class NumberLiteral:
    value: float
    span: Span = field(default=NOWHERE, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class StringLiteral:
    value: str
    span: Span = field(default=NOWHERE, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class LabelMatcher:
    name: str
    op: MatchOp
    value: str
    span: Span = field(default=NOWHERE, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class VectorSelector:
    """``name{matchers}``; ``span`` covers the name and braces, ``braces`` the ``{…}`` alone
    (None when the selector is a bare name)."""

    name: str | None
    matchers: tuple[LabelMatcher, ...]
    offset: int | None = None
    """Milliseconds, negative for ``offset -5m``; None when there is no offset."""
    at: At | None = None
    span: Span = field(default=NOWHERE, compare=False, repr=False)
    braces: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class MatrixSelector:
    selector: VectorSelector
    range: int
    span: Span = field(default=NOWHERE, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Subquery:
    expr: Expr
    range: int
    step: int | None
    offset: int | None = None
    at: At | None = None
    span: Span = field(default=NOWHERE, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Call:
    function: str
    args: tuple[Expr, ...]
    span: Span = field(default=NOWHERE, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Aggregate:
    """``op by (grouping) (param, expr)``; ``grouping`` is None when no clause was written."""

    op: str
    expr: Expr
    param: Expr | None = None
    grouping: tuple[str, ...] | None = None
    without: bool = False
    span: Span = field(default=NOWHERE, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class VectorMatching:
    """``on(labels)`` or ``ignoring(labels)``, then ``group_left(include)`` or
    ``group_right(include)``."""

    on: bool
    labels: tuple[str, ...]
    group: Literal["left", "right"] | None = None
    include: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Binary:
    op: str
    lhs: Expr
    rhs: Expr
    return_bool: bool = False
    matching: VectorMatching | None = None
    span: Span = field(default=NOWHERE, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Unary:
    op: Literal["+", "-"]
    expr: Expr
    span: Span = field(default=NOWHERE, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Paren:
    expr: Expr
    span: Span = field(default=NOWHERE, compare=False, repr=False)


Expr: TypeAlias = (
    NumberLiteral
    | StringLiteral
    | VectorSelector
    | MatrixSelector
    | Subquery
    | Call
    | Aggregate
    | Binary
    | Unary
    | Paren
)


def children(node: Expr) -> tuple[Expr, ...]:
    """The expressions directly under ``node``, left to right."""
    if isinstance(node, MatrixSelector):
        return (node.selector,)
    if isinstance(node, Subquery | Unary | Paren):
        return (node.expr,)
    if isinstance(node, Call):
        return node.args
    if isinstance(node, Aggregate):
        return (node.expr,) if node.param is None else (node.param, node.expr)
    if isinstance(node, Binary):
        return (node.lhs, node.rhs)
    return ()


def selectors(node: Expr) -> list[VectorSelector]:
    """Every vector selector in ``node`` (those inside ranges too), in text order."""
    found: list[VectorSelector] = []
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, VectorSelector):
            found.append(current)
        stack.extend(reversed(children(current)))
    return found


def depth(node: Expr) -> int:
    """How deep the tree goes (a leaf is 1), computed without recursion."""
    deepest = 0
    stack = [(node, 1)]
    while stack:
        current, level = stack.pop()
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children(current))
    return deepest
