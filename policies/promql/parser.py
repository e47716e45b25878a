"""A PromQL parser that accepts what Prometheus 2.42 accepts, and builds :mod:`.syntax` trees.

Prometheus' parser is a yacc grammar with operator precedences (``promql/parser/
generated_parser.y``) followed by a type check (``parse.go``: ``checkAST``). This is the same
language written as precedence climbing: ``or`` < ``and``/``unless`` < comparisons < ``+ -`` <
``* / % atan2`` < ``^`` (right-associative); a unary sign binds like ``*`` but lets ``^`` in
(``-a ^ b`` is ``-(a ^ b)``); ``offset``, ``@`` and ``[…]`` bind tightest, to the operand just
before them. Nesting is bounded (:data:`MAX_DEPTH`) so hostile input gets an error rather
than exhausting Python's stack.
"""

from __future__ import annotations

import math
from typing import Literal

from policies.promql.errors import PromQLError
from policies.promql.functions import FUNCTIONS, TYPE_NAMES
from policies.promql.lexer import AGGREGATORS, KEYWORDS, Kind, Lexer, Token, is_label_name
from policies.promql.literals import parse_duration, parse_number, unquote
from policies.promql.regex import RegexError, matches_empty
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
    Span,
    StringLiteral,
    Subquery,
    Unary,
    VectorMatching,
    VectorSelector,
    depth,
)

MAX_DEPTH = 128
"""Deepest nesting accepted (parentheses, calls, operators); real queries stay under 20."""

PRECEDENCE: dict[Kind, int] = {
    Kind.LOR: 1,
    Kind.LAND: 2,
    Kind.LUNLESS: 2,
    Kind.EQLC: 3,
    Kind.NEQ: 3,
    Kind.LTE: 3,
    Kind.LSS: 3,
    Kind.GTE: 3,
    Kind.GTR: 3,
    Kind.ADD: 4,
    Kind.SUB: 4,
    Kind.MUL: 5,
    Kind.DIV: 5,
    Kind.MOD: 5,
    Kind.ATAN2: 5,
    Kind.POW: 6,
}
COMPARISONS = frozenset({"==", "!=", "<=", "<", ">=", ">"})
SET_OPERATORS = frozenset({"and", "or", "unless"})
PARAM_AGGREGATORS = frozenset({"topk", "bottomk", "count_values", "quantile"})

_METRIC_KEYWORDS = AGGREGATORS | {
    Kind.BY, Kind.LAND, Kind.LOR, Kind.LUNLESS, Kind.OFFSET, Kind.WITHOUT, Kind.START, Kind.END,
}  # fmt: skip
"""Keywords that may also name a metric (``metric_identifier`` in the grammar)."""
_LABEL_TOKENS = frozenset(KEYWORDS.values()) - {Kind.NUMBER, Kind.WITHOUT} | {
    Kind.IDENTIFIER,
    Kind.METRIC_IDENTIFIER,
}
"""What may stand for a label in ``by (…)``, ``on (…)`` and ``group_left (…)`` (the grammar's
``maybe_label``, which leaves out ``without``)."""
_MATCH_OPS: dict[Kind, MatchOp] = {
    Kind.EQL: "=",
    Kind.NEQ: "!=",
    Kind.EQL_REGEX: "=~",
    Kind.NEQ_REGEX: "!~",
}
_INT64 = 2.0**63


def parse(query: str) -> Expr:
    """The syntax tree of ``query``; PromQLError where Prometheus 2.42 would refuse it."""
    if not isinstance(query, str):
        raise TypeError(f"expected a str, got {type(query).__name__}")
    return _Parser(query).parse()


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.lexer = Lexer(text)
        self.tok = self.lexer.next()
        self.last_end = 0

    # -- tokens ---------------------------------------------------------------------------------
    def kind(self) -> Kind:
        """The next token's kind (a call, so type narrowing does not outlive ``advance``)."""
        return self.tok.kind

    def advance(self) -> Token:
        token = self.tok
        self.last_end = token.end
        self.tok = self.lexer.next()
        return token

    def error(self, message: str, position: int) -> PromQLError:
        return PromQLError(message, self.text, position)

    def unexpected(self, context: str = "", expected: str = "") -> PromQLError:
        message = f"unexpected {self.tok.describe()}"
        if context:
            message += f" in {context}"
        if expected:
            message += f", expected {expected}"
        return self.error(message, self.tok.start)

    def expect(self, kind: Kind, context: str) -> Token:
        if self.kind() is not kind:
            raise self.unexpected(context, kind.value)
        return self.advance()

    # -- expressions ----------------------------------------------------------------------------
    def parse(self) -> Expr:
        if self.kind() is Kind.EOF:
            raise self.error("no expression found in input", 0)
        expr = self.expr(0, 1)
        if self.kind() is not Kind.EOF:
            raise self.unexpected()
        if depth(expr) > MAX_DEPTH:
            raise self.error(f"expression nested deeper than {MAX_DEPTH} levels", 0)
        _Checker(self).check(expr)
        return expr

    def expr(self, min_precedence: int, level: int) -> Expr:
        if level > MAX_DEPTH:
            raise self.error(f"expression nested deeper than {MAX_DEPTH} levels", self.tok.start)
        left = self.unary(level)
        while True:
            precedence = PRECEDENCE.get(self.kind())
            if precedence is None or precedence < min_precedence:
                return left
            op = self.advance()
            return_bool, matching = self.bin_modifiers()
            right_min = precedence if op.kind is Kind.POW else precedence + 1
            right = self.expr(right_min, level + 1)
            left = Binary(
                op.text.lower(),
                left,
                right,
                return_bool,
                matching,
                span=Span(left.span.start, right.span.end),
            )

    def unary(self, level: int) -> Expr:
        if self.kind() not in (Kind.ADD, Kind.SUB):
            return self.postfix(self.primary(level))
        op = self.advance()
        operand = self.expr(PRECEDENCE[Kind.POW], level + 1)
        span = Span(op.start, operand.span.end)
        if isinstance(operand, NumberLiteral):
            value = -operand.value if op.kind is Kind.SUB else operand.value
            return NumberLiteral(value, span=span)
        return Unary("-" if op.kind is Kind.SUB else "+", operand, span=span)

    def primary(self, level: int) -> Expr:
        tok = self.tok
        kind = tok.kind
        if kind is Kind.NUMBER:
            self.advance()
            value = parse_number(tok.text)
            if isinstance(value, str):
                raise self.error(value, tok.start)
            return NumberLiteral(value, span=Span(tok.start, tok.end))
        if kind is Kind.STRING:
            self.advance()
            return StringLiteral(unquote(tok.text), span=Span(tok.start, tok.end))
        if kind is Kind.LEFT_PAREN:
            self.advance()
            inner = self.expr(0, level + 1)
            close = self.expect(Kind.RIGHT_PAREN, "parenthesis")
            return Paren(inner, span=Span(tok.start, close.end))
        if kind is Kind.LEFT_BRACE:
            return self.selector(None, tok.start)
        if kind is Kind.IDENTIFIER or kind is Kind.METRIC_IDENTIFIER or kind in _METRIC_KEYWORDS:
            self.advance()
            if kind is Kind.IDENTIFIER and self.kind() is Kind.LEFT_PAREN:
                return self.call(tok, level)
            if kind in AGGREGATORS and self.kind() in (Kind.LEFT_PAREN, Kind.BY, Kind.WITHOUT):
                return self.aggregate(tok, level)
            return self.selector(tok, tok.start)
        raise self.unexpected()

    def postfix(self, expr: Expr) -> Expr:
        while True:
            kind = self.kind()
            if kind is Kind.LEFT_BRACKET:
                expr = self.range(expr)
            elif kind is Kind.OFFSET:
                expr = self.offset(expr)
            elif kind is Kind.AT:
                expr = self.at(expr)
            else:
                return expr

    # -- selectors ------------------------------------------------------------------------------
    def selector(self, name: Token | None, start: int) -> VectorSelector:
        if self.kind() is not Kind.LEFT_BRACE:
            assert name is not None
            return VectorSelector(name.text, (), span=Span(start, name.end), braces=None)
        brace = self.advance()
        matchers: list[LabelMatcher] = []
        while self.kind() is not Kind.RIGHT_BRACE:
            matchers.append(self.matcher())
            if self.kind() is Kind.COMMA:
                self.advance()
            elif self.kind() is not Kind.RIGHT_BRACE:
                raise self.unexpected("label matching", '"," or "}"')
        close = self.advance()
        return VectorSelector(
            name.text if name is not None else None,
            tuple(matchers),
            span=Span(start, close.end),
            braces=Span(brace.start, close.end),
        )

    def matcher(self) -> LabelMatcher:
        if self.kind() is not Kind.IDENTIFIER:
            raise self.unexpected("label matching", 'identifier or "}"')
        label = self.advance()
        op = _MATCH_OPS.get(self.kind())
        if op is None:
            raise self.unexpected("label matching", "label matching operator")
        self.advance()
        if self.kind() is not Kind.STRING:
            raise self.unexpected("label matching", "string")
        value_token = self.advance()
        value = unquote(value_token.text)
        if op in ("=~", "!~"):
            try:
                matches_empty(value)
            except RegexError as exc:
                raise self.error(str(exc), label.start) from None
        return LabelMatcher(label.text, op, value, span=Span(label.start, value_token.end))

    def range(self, expr: Expr) -> Expr:
        bracket = self.advance()
        length = self.duration(self.expect(Kind.DURATION, "subquery selector"))
        if self.kind() is Kind.RIGHT_BRACKET:
            close = self.advance()
            if not isinstance(expr, VectorSelector):
                raise self.error("ranges only allowed for vector selectors", bracket.start)
            if expr.offset is not None:
                raise self.error("no offset modifiers allowed before range", bracket.start)
            if expr.at is not None:
                raise self.error("no @ modifiers allowed before range", bracket.start)
            return MatrixSelector(expr, length, span=Span(expr.span.start, close.end))
        if self.kind() is not Kind.COLON:
            raise self.unexpected("subquery or range", '":" or "]"')
        self.advance()
        step = None
        if self.kind() is Kind.DURATION:
            step = self.duration(self.advance())
        if self.kind() is not Kind.RIGHT_BRACKET:
            expected = '"]"' if step is not None else 'duration or "]"'
            raise self.unexpected("subquery selector", expected)
        close = self.advance()
        return Subquery(expr, length, step, span=Span(expr.span.start, close.end))

    def duration(self, token: Token) -> int:
        value = parse_duration(token.text)
        if isinstance(value, str):
            raise self.error(value, token.start)
        return value

    def offset(self, expr: Expr) -> Expr:
        keyword = self.advance()
        sign = 1
        if self.kind() is Kind.SUB:
            self.advance()
            sign = -1
        if self.kind() is not Kind.DURATION:
            raise self.unexpected("offset", "duration")
        amount = sign * self.duration(self.advance())
        end = self.last_end
        if isinstance(expr, VectorSelector | Subquery):
            if expr.offset is not None:
                raise self.error("offset may not be set multiple times", keyword.start)
            if isinstance(expr, VectorSelector):
                return _replace_selector(expr, offset=amount)
            return _replace_subquery(expr, offset=amount, end=end)
        if isinstance(expr, MatrixSelector):
            if expr.selector.offset is not None:
                raise self.error("offset may not be set multiple times", keyword.start)
            inner = _replace_selector(expr.selector, offset=amount)
            return MatrixSelector(inner, expr.range, span=Span(expr.span.start, end))
        raise self.error(
            "offset modifier must be preceded by an instant vector selector or range vector "
            "selector or a subquery",
            keyword.start,
        )

    def at(self, expr: Expr) -> Expr:
        sign_token = self.advance()
        value: At
        if self.kind() in (Kind.START, Kind.END):
            which = self.advance()
            self.expect(Kind.LEFT_PAREN, "@")
            self.expect(Kind.RIGHT_PAREN, "@")
            value = "start" if which.kind is Kind.START else "end"
        else:
            sign = 1.0
            if self.kind() in (Kind.ADD, Kind.SUB):
                sign = -1.0 if self.advance().kind is Kind.SUB else 1.0
            if self.kind() is not Kind.NUMBER:
                raise self.unexpected("@", "timestamp")
            number = self.advance()
            seconds = parse_number(number.text)
            if isinstance(seconds, str):
                raise self.error(seconds, number.start)
            seconds *= sign
            if math.isnan(seconds) or not -_INT64 < seconds < _INT64:
                raise self.error(
                    f"timestamp out of bounds for @ modifier: {seconds:f}", number.start
                )
            millis = math.floor(abs(seconds) * 1000 + 0.5)
            value = int(-millis if seconds < 0 else millis)
        end = self.last_end
        target = expr.selector if isinstance(expr, MatrixSelector) else expr
        if not isinstance(target, VectorSelector | Subquery):
            raise self.error(
                "@ modifier must be preceded by an instant vector selector or range vector "
                "selector or a subquery",
                sign_token.start,
            )
        if target.at is not None:
            raise self.error("@ <timestamp> may not be set multiple times", sign_token.start)
        if isinstance(expr, MatrixSelector):
            inner = _replace_selector(expr.selector, at=value)
            return MatrixSelector(inner, expr.range, span=Span(expr.span.start, end))
        if isinstance(expr, VectorSelector):
            return _replace_selector(expr, at=value)
        assert isinstance(expr, Subquery)
        return _replace_subquery(expr, at=value, end=end)

    # -- calls and aggregations -----------------------------------------------------------------
    def call(self, name: Token, level: int) -> Call:
        if name.text not in FUNCTIONS:
            raise self.error(f"unknown function with name {name.text!r}", name.start)
        args = self.call_body(level)
        return Call(name.text, args, span=Span(name.start, self.last_end))

    def call_body(self, level: int) -> tuple[Expr, ...]:
        self.expect(Kind.LEFT_PAREN, "function call")
        args: list[Expr] = []
        if self.kind() is Kind.RIGHT_PAREN:
            self.advance()
            return ()
        while True:
            args.append(self.expr(0, level + 1))
            if self.kind() is Kind.RIGHT_PAREN:
                self.advance()
                return tuple(args)
            if self.kind() is not Kind.COMMA:
                raise self.unexpected("function call", '"," or ")"')
            comma = self.advance()
            if self.kind() is Kind.RIGHT_PAREN:
                raise self.error("trailing commas not allowed in function call args", comma.start)

    def aggregate(self, op: Token, level: int) -> Aggregate:
        grouping: tuple[str, ...] | None = None
        without = False
        if self.kind() in (Kind.BY, Kind.WITHOUT):
            without = self.advance().kind is Kind.WITHOUT
            grouping = self.grouping()
        args = self.call_body(level)
        if grouping is None and self.kind() in (Kind.BY, Kind.WITHOUT):
            without = self.advance().kind is Kind.WITHOUT
            grouping = self.grouping()
        name = op.text.lower()
        span = Span(op.start, self.last_end)
        if not args:
            raise self.error("no arguments for aggregate expression provided", op.start)
        wanted = 2 if name in PARAM_AGGREGATORS else 1
        if len(args) != wanted:
            raise self.error(
                "wrong number of arguments for aggregate expression provided, "
                f"expected {wanted}, got {len(args)}",
                op.start,
            )
        param = args[0] if wanted == 2 else None
        return Aggregate(name, args[-1], param, grouping, without, span=span)

    def grouping(self) -> tuple[str, ...]:
        if self.kind() is not Kind.LEFT_PAREN:
            raise self.unexpected("grouping opts", '"("')
        self.advance()
        labels: list[str] = []
        while self.kind() is not Kind.RIGHT_PAREN:
            if self.kind() not in _LABEL_TOKENS or not is_label_name(self.tok.text):
                raise self.unexpected("grouping opts", "label")
            labels.append(self.advance().text)
            if self.kind() is Kind.COMMA:
                self.advance()
            elif self.kind() is not Kind.RIGHT_PAREN:
                raise self.unexpected("grouping opts", '"," or ")"')
        self.advance()
        return tuple(labels)

    def bin_modifiers(self) -> tuple[bool, VectorMatching | None]:
        return_bool = False
        if self.kind() is Kind.BOOL:
            self.advance()
            return_bool = True
        if self.kind() not in (Kind.ON, Kind.IGNORING):
            return return_bool, None
        on = self.advance().kind is Kind.ON
        labels = self.grouping()
        if self.kind() not in (Kind.GROUP_LEFT, Kind.GROUP_RIGHT):
            return return_bool, VectorMatching(on, labels)
        side: Literal["left", "right"] = (
            "left" if self.advance().kind is Kind.GROUP_LEFT else "right"
        )
        include = self.grouping() if self.kind() is Kind.LEFT_PAREN else ()
        return return_bool, VectorMatching(on, labels, side, include)


def _replace_selector(
    vs: VectorSelector, *, offset: int | None = None, at: At | None = None
) -> VectorSelector:
    return VectorSelector(
        vs.name,
        vs.matchers,
        offset if offset is not None else vs.offset,
        at if at is not None else vs.at,
        span=vs.span,
        braces=vs.braces,
    )


def _replace_subquery(
    sq: Subquery, *, end: int, offset: int | None = None, at: At | None = None
) -> Subquery:
    return Subquery(
        sq.expr,
        sq.range,
        sq.step,
        offset if offset is not None else sq.offset,
        at if at is not None else sq.at,
        span=Span(sq.span.start, end),
    )


class _Checker:
    """Prometheus' ``checkAST``: types of operands and arguments, and selectors that could
    select every series."""

    def __init__(self, parser: _Parser) -> None:
        self.parser = parser

    def fail(self, message: str, node: Expr) -> PromQLError:
        return self.parser.error(message, node.span.start)

    def expect(self, node: Expr, want: str, context: str) -> None:
        got = self.check(node)
        if got != want:
            raise self.fail(
                f"expected type {TYPE_NAMES[want]} in {context}, got {TYPE_NAMES[got]}", node
            )

    def check(self, node: Expr) -> str:
        if isinstance(node, NumberLiteral):
            return "S"
        if isinstance(node, StringLiteral):
            return "T"
        if isinstance(node, VectorSelector):
            self.selector(node)
            return "V"
        if isinstance(node, MatrixSelector):
            self.check(node.selector)
            return "M"
        if isinstance(node, Subquery):
            inner = self.check(node.expr)
            if inner != "V":
                raise self.fail(
                    f"subquery is only allowed on instant vector, got {TYPE_NAMES[inner]} instead",
                    node,
                )
            return "M"
        if isinstance(node, Paren):
            return self.check(node.expr)
        if isinstance(node, Unary):
            inner = self.check(node.expr)
            if inner not in ("S", "V"):
                raise self.fail(
                    "unary expression only allowed on expressions of type scalar or instant "
                    f"vector, got {TYPE_NAMES[inner]!r}",
                    node,
                )
            return inner
        if isinstance(node, Call):
            return self.call(node)
        if isinstance(node, Aggregate):
            self.expect(node.expr, "V", "aggregation expression")
            if node.param is not None:
                want = "T" if node.op == "count_values" else "S"
                self.expect(node.param, want, "aggregation parameter")
            return "V"
        return self.binary(node)

    def selector(self, node: VectorSelector) -> None:
        if node.name is not None:
            for m in node.matchers:
                if m.name == "__name__":
                    raise self.fail(
                        f"metric name must not be set twice: {node.name!r} or {m.value!r}", node
                    )
            return
        if not any(not _matches_empty(m) for m in node.matchers):
            raise self.fail("vector selector must contain at least one non-empty matcher", node)

    def call(self, node: Call) -> str:
        arg_types, variadic, returns = FUNCTIONS[node.function]
        count, given = len(arg_types), len(node.args)
        name = node.function
        if variadic == 0 and given != count:
            raise self.fail(f"expected {count} argument(s) in call to {name!r}, got {given}", node)
        if variadic != 0 and given < count - 1:
            raise self.fail(
                f"expected at least {count - 1} argument(s) in call to {name!r}, got {given}", node
            )
        if variadic > 0 and given > count - 1 + variadic:
            raise self.fail(
                f"expected at most {count - 1 + variadic} argument(s) in call to {name!r}, "
                f"got {given}",
                node,
            )
        for i, arg in enumerate(node.args):
            self.expect(arg, arg_types[min(i, count - 1)], f"call to function {name!r}")
        return returns

    def binary(self, node: Expr) -> str:
        assert isinstance(node, Binary)
        left, right = self.check(node.lhs), self.check(node.rhs)
        op, matching = node.op, node.matching
        if node.return_bool and op not in COMPARISONS:
            raise self.fail("bool modifier can only be used on comparison operators", node)
        if op in COMPARISONS and not node.return_bool and left == right == "S":
            raise self.fail("comparisons between scalars must use BOOL modifier", node)
        if matching is not None and matching.on:
            for label in matching.labels:
                if label in matching.include:
                    raise self.fail(
                        f"label {label!r} must not occur in ON and GROUP clause at once", node
                    )
        for side, t in ((node.lhs, left), (node.rhs, right)):
            if t not in ("S", "V"):
                raise self.fail(
                    "binary expression must contain only scalar and instant vector types", side
                )
        if left != "V" or right != "V":
            if matching is not None and matching.labels:
                raise self.fail("vector matching only allowed between instant vectors", node)
        elif op in SET_OPERATORS and matching is not None and matching.group is not None:
            raise self.fail(f"no grouping allowed for {op!r} operation", node)
        if "S" in (left, right) and op in SET_OPERATORS:
            raise self.fail(f"set operator {op!r} not allowed in binary scalar expression", node)
        return "S" if left == right == "S" else "V"


def _matches_empty(m: LabelMatcher) -> bool:
    if m.op == "=":
        return m.value == ""
    if m.op == "!=":
        return m.value != ""
    empty = matches_empty(m.value)
    return empty if m.op == "=~" else not empty
