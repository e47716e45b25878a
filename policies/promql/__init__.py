"""PromQL, read exactly as Prometheus 2.42 reads it: a lexer, a parser, a syntax tree with
source spans, and a printer. Pure: no I/O."""

from policies.promql.errors import PromQLError
from policies.promql.parser import MAX_DEPTH, parse
from policies.promql.printer import format_expr
from policies.promql.syntax import selectors

__all__ = ["MAX_DEPTH", "PromQLError", "format_expr", "parse", "selectors"]
