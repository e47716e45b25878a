"""PromQL tokens, scanned the way Prometheus 2.42's ``promql/parser/lex.go`` scans them.

The lexer keeps the same state as Prometheus' (open parentheses, an open brace, an open
bracket and whether it has seen its colon), because that state decides what a character means:
inside braces every word is a label name, inside brackets a letter is a subquery colon, and
``[`` must be followed by a duration. Tokens come one at a time, so the first problem in the
text is the one reported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from policies.promql.errors import PromQLError


class Kind(Enum):
    EOF = "end of input"
    IDENTIFIER = "identifier"
    METRIC_IDENTIFIER = "metric identifier"
    NUMBER = "number"
    STRING = "string"
    DURATION = "duration"
    LEFT_PAREN = '"("'
    RIGHT_PAREN = '")"'
    LEFT_BRACE = '"{"'
    RIGHT_BRACE = '"}"'
    LEFT_BRACKET = '"["'
    RIGHT_BRACKET = '"]"'
    COMMA = '","'
    COLON = '":"'
    AT = '"@"'
    EQL = '"="'
    # operators
    ADD = "+"
    SUB = "-"
    MUL = "*"
    DIV = "/"
    MOD = "%"
    POW = "^"
    ATAN2 = "atan2"
    EQLC = "=="
    NEQ = "!="
    LSS = "<"
    LTE = "<="
    GTR = ">"
    GTE = ">="
    EQL_REGEX = "=~"
    NEQ_REGEX = "!~"
    LAND = "and"
    LOR = "or"
    LUNLESS = "unless"
    # aggregators
    AVG = "avg"
    BOTTOMK = "bottomk"
    COUNT = "count"
    COUNT_VALUES = "count_values"
    GROUP = "group"
    MAX = "max"
    MIN = "min"
    QUANTILE = "quantile"
    STDDEV = "stddev"
    STDVAR = "stdvar"
    SUM = "sum"
    TOPK = "topk"
    # keywords
    BOOL = "bool"
    BY = "by"
    GROUP_LEFT = "group_left"
    GROUP_RIGHT = "group_right"
    IGNORING = "ignoring"
    OFFSET = "offset"
    ON = "on"
    WITHOUT = "without"
    START = "start"
    END = "end"


_FIRST_WORD, _LAST_WORD = list(Kind).index(Kind.ATAN2), list(Kind).index(Kind.END)
KEYWORDS: dict[str, Kind] = {
    k.value: k for k in list(Kind)[_FIRST_WORD : _LAST_WORD + 1] if k.value.isidentifier()
}
"""Words the lexer reads as operators, aggregators or keywords (case-insensitively)."""
KEYWORDS["inf"] = Kind.NUMBER
KEYWORDS["nan"] = Kind.NUMBER
AGGREGATORS = frozenset(
    {
        Kind.AVG, Kind.BOTTOMK, Kind.COUNT, Kind.COUNT_VALUES, Kind.GROUP, Kind.MAX,
        Kind.MIN, Kind.QUANTILE, Kind.STDDEV, Kind.STDVAR, Kind.SUM, Kind.TOPK,
    }
)  # fmt: skip

_HEX = "0123456789abcdefABCDEF"
_ESCAPE_WIDTH = {"x": (2, 16, 255), "u": (4, 16, 0x10FFFF), "U": (8, 16, 0x10FFFF)}


_SPACE = " \t\n\r"
_DIGITS = "0123456789"
_ALPHA = frozenset("_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_ALNUM = _ALPHA | frozenset(_DIGITS)
_WORD = re.compile(r"[A-Za-z0-9_:]*")
_LABEL = re.compile(r"[A-Za-z0-9_]*")
_SINGLE = {
    ",": Kind.COMMA, "*": Kind.MUL, "/": Kind.DIV, "%": Kind.MOD, "+": Kind.ADD, "-": Kind.SUB,
    "^": Kind.POW, "@": Kind.AT,
}  # fmt: skip


def is_alpha(c: str) -> bool:
    return c in _ALPHA


def is_alnum(c: str) -> bool:
    return c in _ALNUM


def is_label_name(s: str) -> bool:
    """A label name as PromQL spells one: ``[a-zA-Z_][a-zA-Z0-9_]*``."""
    return bool(s) and is_alpha(s[0]) and all(is_alnum(c) for c in s[1:])


@dataclass(frozen=True, slots=True)
class Token:
    kind: Kind
    text: str
    start: int

    @property
    def end(self) -> int:
        return self.start + len(self.text)

    def describe(self) -> str:
        """How an error names this token: ``"}"``, ``identifier "foo"``, ``end of input``."""
        if self.kind is Kind.EOF:
            return "end of input"
        if self.kind in (Kind.IDENTIFIER, Kind.METRIC_IDENTIFIER, Kind.NUMBER, Kind.STRING):
            text = self.text if len(self.text) <= 20 else self.text[:20] + "…"
            return f"{self.kind.value} {text!r}"
        if self.kind is Kind.DURATION:
            return f"duration {self.text!r}"
        return f'"{self.text}"'


class Lexer:
    """Yields the tokens of ``text`` one at a time through :meth:`next`; comments are skipped."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.paren_depth = 0
        self.brace_open = False
        self.bracket_open = False
        self.got_colon = False
        self.want_duration = False

    def error(self, message: str, position: int) -> PromQLError:
        return PromQLError(message, self.text, position)

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _accept(self, valid: str) -> bool:
        c = self._peek()
        if c and c in valid:
            self.pos += 1
            return True
        return False

    def _accept_run(self, valid: str) -> None:
        while self._accept(valid):
            pass

    def _token(self, kind: Kind, start: int) -> Token:
        return Token(kind, self.text[start : self.pos], start)

    def next(self) -> Token:
        while True:
            token = self._scan()
            if token is not None:
                return token

    def _scan(self) -> Token | None:
        """The next token, or None after skipping a space or a comment."""
        text = self.text
        if self.want_duration:
            self.want_duration = False
            return self._duration()
        start = self.pos
        if start < len(text) and text[start] == "#":
            while self.pos < len(text) and text[self.pos] not in "\r\n":
                self.pos += 1
            return None
        if self.brace_open:
            return self._inside_braces(start)
        if start >= len(text):
            if self.paren_depth:
                raise self.error("unclosed left parenthesis", start)
            if self.bracket_open:
                raise self.error("unclosed left bracket", start)
            return Token(Kind.EOF, "", start)
        c = text[start]
        self.pos += 1
        if c in _SPACE:
            self._accept_run(_SPACE)
            return None
        if c in _SINGLE:
            return self._token(_SINGLE[c], start)
        if c == "=":
            if self._accept("="):
                return self._token(Kind.EQLC, start)
            if self._peek() == "~":
                raise self.error("unexpected character after '=': '~'", start)
            return self._token(Kind.EQL, start)
        if c == "!":
            if self._accept("="):
                return self._token(Kind.NEQ, start)
            raise self.error(f"unexpected character after '!': {self._peek()!r}", start)
        if c in "<>":
            if self._accept("="):
                return self._token(Kind.LTE if c == "<" else Kind.GTE, start)
            return self._token(Kind.LSS if c == "<" else Kind.GTR, start)
        if c in _DIGITS or (c == "." and self._peek() != "" and self._peek() in _DIGITS):
            self.pos = start
            return self._number_or_duration(start)
        if c in "\"'`":
            return self._string(start, c)
        if is_alpha(c) or c == ":":
            if not self.bracket_open:
                return self._word(start)
            if self.got_colon:
                raise self.error(f"unexpected colon {c!r}", start)
            self.got_colon = True
            return self._token(Kind.COLON, start)
        if c == "(":
            self.paren_depth += 1
            return self._token(Kind.LEFT_PAREN, start)
        if c == ")":
            self.paren_depth -= 1
            if self.paren_depth < 0:
                raise self.error("unexpected right parenthesis ')'", start)
            return self._token(Kind.RIGHT_PAREN, start)
        if c == "{":
            self.brace_open = True
            return self._token(Kind.LEFT_BRACE, start)
        if c == "[":
            if self.bracket_open:
                raise self.error("unexpected left bracket '['", start)
            self.got_colon = False
            token = self._token(Kind.LEFT_BRACKET, start)
            self._accept_run(_SPACE)
            self.bracket_open = True
            self.want_duration = True
            return token
        if c == "]":
            if not self.bracket_open:
                raise self.error("unexpected right bracket ']'", start)
            self.bracket_open = False
            return self._token(Kind.RIGHT_BRACKET, start)
        raise self.error(f"unexpected character: {c!r}", start)

    def _inside_braces(self, start: int) -> Token | None:
        text = self.text
        if start >= len(text):
            raise self.error("unexpected end of input inside braces", start)
        c = text[start]
        self.pos += 1
        if c in _SPACE:
            self._accept_run(_SPACE)
            return None
        if c in _ALPHA:
            match = _LABEL.match(text, self.pos)
            assert match is not None
            self.pos = match.end()
            return self._token(Kind.IDENTIFIER, start)
        if c == ",":
            return self._token(Kind.COMMA, start)
        if c in "\"'`":
            return self._string(start, c)
        if c == "=":
            return self._token(Kind.EQL_REGEX if self._accept("~") else Kind.EQL, start)
        if c == "!":
            if self._accept("~"):
                return self._token(Kind.NEQ_REGEX, start)
            if self._accept("="):
                return self._token(Kind.NEQ, start)
            raise self.error(
                f"unexpected character after '!' inside braces: {self._peek()!r}", start
            )
        if c == "}":
            self.brace_open = False
            return self._token(Kind.RIGHT_BRACE, start)
        if c == "{":
            raise self.error("unexpected left brace '{'", start)
        raise self.error(f"unexpected character inside braces: {c!r}", start)

    def _word(self, start: int) -> Token:
        match = _WORD.match(self.text, self.pos)
        assert match is not None
        self.pos = match.end()
        word = self.text[start : self.pos]
        kind = KEYWORDS.get(word.lower())
        if kind is None:
            kind = Kind.METRIC_IDENTIFIER if ":" in word else Kind.IDENTIFIER
        return Token(kind, word, start)

    def _scan_number(self) -> bool:
        """Consume what looks like a number; True if no letter or digit follows it."""
        digits = _DIGITS
        if self._accept("0") and self._accept("xX"):
            digits = _HEX
        self._accept_run(digits)
        if self._accept("."):
            self._accept_run(digits)
        if self._accept("eE"):
            self._accept("+-")
            self._accept_run(_DIGITS)
        return not is_alnum(self._peek()) if self._peek() else True

    def _rest_of_duration(self) -> bool:
        if not self._accept("smhdwy"):
            return False
        self._accept("s")
        while self._accept(_DIGITS):
            self._accept_run(_DIGITS)
            if not self._accept("smhdw"):
                return False
            self._accept("s")
        return not (self._peek() and is_alnum(self._peek()))

    def _number_or_duration(self, start: int) -> Token:
        if self._scan_number():
            return self._token(Kind.NUMBER, start)
        if self._rest_of_duration():
            return self._token(Kind.DURATION, start)
        raise self.error(
            f"bad number or duration syntax: {self.text[start : self.pos + 1]!r}", start
        )

    def _duration(self) -> Token:
        start = self.pos
        if self._scan_number():
            raise self.error("missing unit character in duration", start)
        if not self._rest_of_duration():
            raise self.error(f"bad duration syntax: {self.text[start : self.pos + 1]!r}", start)
        return self._token(Kind.DURATION, start)

    def _string(self, start: int, quote: str) -> Token:
        text = self.text
        while True:
            if self.pos >= len(text):
                what = "raw string" if quote == "`" else "quoted string"
                raise self.error(f"unterminated {what}", start)
            c = text[self.pos]
            self.pos += 1
            if c == quote:
                return self._token(Kind.STRING, start)
            if c == "\ufffd" or "\ud800" <= c <= "\udfff":
                raise self.error("invalid UTF-8 rune", self.pos - 1)
            if quote == "`":
                continue
            if c == "\n":
                raise self.error("unterminated quoted string", start)
            if c == "\\":
                self._escape(quote)

    def _escape(self, quote: str) -> None:
        at = self.pos - 1
        c = self._peek()
        self.pos += 1
        if c and (c in "abfnrtv\\" or c == quote):
            return
        if not c:
            raise self.error("escape sequence not terminated", at)
        if c in "01234567":
            count, base, limit = 3, 8, 255
            self.pos -= 1
        elif c in _ESCAPE_WIDTH:
            count, base, limit = _ESCAPE_WIDTH[c]
        else:
            raise self.error(f"unknown escape sequence {_unicode_name(c)}", at)
        value = 0
        for _ in range(count):
            d = self._peek()
            self.pos += 1
            digit = int(d, 16) if d and d in _HEX else 16
            if digit >= base:
                if not d:
                    raise self.error("escape sequence not terminated", at)
                raise self.error(f"illegal character {_unicode_name(d)} in escape sequence", at)
            value = value * base + digit
        if value > limit or 0xD800 <= value < 0xE000:
            raise self.error("escape sequence is an invalid Unicode code point", at)


def _unicode_name(c: str) -> str:
    """Go's ``%#U``: ``U+0071 'q'``."""
    return f"U+{ord(c):04X} {c!r}"
