"""PromQL, read as Prometheus 2.42 reads it: a lexer, a parser, a syntax tree with source
spans, and a printer. Pure: no I/O.

``tests/policies/test_promql_oracle.py`` holds it to the real binary. Known differences, both
deliberate: nesting deeper than :data:`MAX_DEPTH` is refused here (Prometheus has no bound), and
``\\p{Script}`` names in regex matchers follow a newer Unicode (see :mod:`.regex`).
"""

from policies.promql.errors import PromQLError
from policies.promql.parser import MAX_DEPTH, parse
from policies.promql.printer import format_expr
from policies.promql.syntax import selectors

__all__ = ["MAX_DEPTH", "PromQLError", "format_expr", "parse", "selectors"]
