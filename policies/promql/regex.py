"""Go's RE2 regular-expression syntax, checked as Prometheus 2.42 compiles label matchers.

A ``=~``/``!~`` matcher whose value Go's ``regexp.Compile("^(?:" + value + ")$")`` refuses is a
parse error in Prometheus, and a selector whose every matcher matches the empty string is
refused too; so the parser needs two answers about a value: is it valid RE2 (Perl flags, as
``regexp/syntax`` reads it), and does the anchored pattern match ``""``. Python's ``re`` speaks a
different dialect (``[[:alpha:]]``, ``\\pL``, ``\\z``, ``(?U)``), hence this small checker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_REPEAT = 1000

_PERL_CLASSES = frozenset("dDsSwW")
_POSIX_CLASSES = frozenset(
    {
        "alnum", "alpha", "ascii", "blank", "cntrl", "digit", "graph", "lower", "print",
        "punct", "space", "upper", "word", "xdigit",
    }
)  # fmt: skip
_UNICODE_CLASSES = frozenset(
    {
        "Any",
        "C",
        "Cc",
        "Cf",
        "Cn",
        "Co",
        "Cs",
        "L",
        "Ll",
        "Lm",
        "Lo",
        "Lt",
        "Lu",
        "M",
        "Mc",
        "Me",
        "Mn",
        "N",
        "Nd",
        "Nl",
        "No",
        "P",
        "Pc",
        "Pd",
        "Pe",
        "Pf",
        "Pi",
        "Po",
        "Ps",
        "S",
        "Sc",
        "Sk",
        "Sm",
        "So",
        "Z",
        "Zl",
        "Zp",
        "Zs",
        "Adlam",
        "Ahom",
        "Anatolian_Hieroglyphs",
        "Arabic",
        "Armenian",
        "Avestan",
        "Balinese",
        "Bamum",
        "Bassa_Vah",
        "Batak",
        "Bengali",
        "Bhaiksuki",
        "Bopomofo",
        "Brahmi",
        "Braille",
        "Buginese",
        "Buhid",
        "Canadian_Aboriginal",
        "Carian",
        "Caucasian_Albanian",
        "Chakma",
        "Cham",
        "Cherokee",
        "Chorasmian",
        "Common",
        "Coptic",
        "Cuneiform",
        "Cypriot",
        "Cypro_Minoan",
        "Cyrillic",
        "Deseret",
        "Devanagari",
        "Dives_Akuru",
        "Dogra",
        "Duployan",
        "Egyptian_Hieroglyphs",
        "Elbasan",
        "Elymaic",
        "Ethiopic",
        "Georgian",
        "Glagolitic",
        "Gothic",
        "Grantha",
        "Greek",
        "Gujarati",
        "Gunjala_Gondi",
        "Gurmukhi",
        "Han",
        "Hangul",
        "Hanifi_Rohingya",
        "Hanunoo",
        "Hatran",
        "Hebrew",
        "Hiragana",
        "Imperial_Aramaic",
        "Inherited",
        "Inscriptional_Pahlavi",
        "Inscriptional_Parthian",
        "Javanese",
        "Kaithi",
        "Kannada",
        "Katakana",
        "Kawi",
        "Kayah_Li",
        "Kharoshthi",
        "Khitan_Small_Script",
        "Khmer",
        "Khojki",
        "Khudawadi",
        "Lao",
        "Latin",
        "Lepcha",
        "Limbu",
        "Linear_A",
        "Linear_B",
        "Lisu",
        "Lycian",
        "Lydian",
        "Mahajani",
        "Makasar",
        "Malayalam",
        "Mandaic",
        "Manichaean",
        "Marchen",
        "Masaram_Gondi",
        "Medefaidrin",
        "Meetei_Mayek",
        "Mende_Kikakui",
        "Meroitic_Cursive",
        "Meroitic_Hieroglyphs",
        "Miao",
        "Modi",
        "Mongolian",
        "Mro",
        "Multani",
        "Myanmar",
        "Nabataean",
        "Nag_Mundari",
        "Nandinagari",
        "New_Tai_Lue",
        "Newa",
        "Nko",
        "Nushu",
        "Nyiakeng_Puachue_Hmong",
        "Ogham",
        "Ol_Chiki",
        "Old_Hungarian",
        "Old_Italic",
        "Old_North_Arabian",
        "Old_Permic",
        "Old_Persian",
        "Old_Sogdian",
        "Old_South_Arabian",
        "Old_Turkic",
        "Old_Uyghur",
        "Oriya",
        "Osage",
        "Osmanya",
        "Pahawh_Hmong",
        "Palmyrene",
        "Pau_Cin_Hau",
        "Phags_Pa",
        "Phoenician",
        "Psalter_Pahlavi",
        "Rejang",
        "Runic",
        "Samaritan",
        "Saurashtra",
        "Sharada",
        "Shavian",
        "Siddham",
        "SignWriting",
        "Sinhala",
        "Sogdian",
        "Sora_Sompeng",
        "Soyombo",
        "Sundanese",
        "Syloti_Nagri",
        "Syriac",
        "Tagalog",
        "Tagbanwa",
        "Tai_Le",
        "Tai_Tham",
        "Tai_Viet",
        "Takri",
        "Tamil",
        "Tangsa",
        "Tangut",
        "Telugu",
        "Thaana",
        "Thai",
        "Tibetan",
        "Tifinagh",
        "Tirhuta",
        "Toto",
        "Ugaritic",
        "Vai",
        "Vithkuqi",
        "Wancho",
        "Warang_Citi",
        "Yezidi",
        "Yi",
        "Zanabazar_Square",
    }
)
"""``\\p{…}`` names: ``Any``, Unicode categories and scripts, from a newer Go's ``unicode``
tables than the Go 1.19 that built Debian's Prometheus 2.42, so a script Unicode added since
(none a label regex is likely to name) is accepted here and refused there."""


class RegexError(ValueError):
    """Why Go's ``regexp`` would refuse a pattern."""


@dataclass(slots=True)
class _Item:
    nullable: bool
    weight: int = 1
    """The largest product of repeat counts on any path inside (Go caps it at 1000)."""


@dataclass(slots=True)
class _Group:
    alternatives: list[_Item] = field(default_factory=list)
    items: list[_Item] = field(default_factory=list)

    def close_branch(self) -> None:
        self.alternatives.append(
            _Item(
                all(i.nullable for i in self.items),
                max((i.weight for i in self.items), default=1),
            )
        )
        self.items = []

    def close(self) -> _Item:
        self.close_branch()
        return _Item(
            any(a.nullable for a in self.alternatives),
            max(a.weight for a in self.alternatives),
        )


def matches_empty(value: str) -> bool:
    """Whether ``^(?:value)$`` matches the empty string; RegexError if Go refuses it.

    Prometheus compiles the anchored pattern and also parses ``value`` on its own, so a value
    such as ``a)|(b`` that only balances once wrapped is refused as well.
    """
    _Checker(value).run()
    return _Checker("^(?:" + value + ")$").run()


class _Checker:
    def __init__(self, pattern: str) -> None:
        self.s = pattern
        self.i = 0

    def fail(self, message: str) -> RegexError:
        return RegexError(f"error parsing regexp: {message}")

    def run(self) -> bool:
        s = self.s
        if any("\ud800" <= c <= "\udfff" for c in s):
            raise self.fail("invalid UTF-8")
        stack = [_Group()]
        last_repeat = False
        while self.i < len(s):
            c = s[self.i]
            repeat = False
            group = stack[-1]
            if c == "(":
                if s.startswith("(?", self.i):
                    if self._perl_flags():
                        stack.append(_Group())
                else:
                    self.i += 1
                    stack.append(_Group())
            elif c == "|":
                group.close_branch()
                self.i += 1
            elif c == ")":
                if len(stack) < 2:
                    raise self.fail("unexpected ): `" + s + "`")
                stack.pop()
                stack[-1].items.append(group.close())
                self.i += 1
            elif c in "^$":
                group.items.append(_Item(nullable=True))
                self.i += 1
            elif c == "[":
                self._class()
                group.items.append(_Item(nullable=False))
            elif c in "*+?":
                self._repeat(
                    group, last_repeat, 0 if c != "+" else 1, -1 if c != "?" else 1, counted=False
                )
                repeat = True
            elif c == "{" and (bounds := self._bounds()) is not None:
                low, high = bounds
                if low < 0 or low > MAX_REPEAT or high > MAX_REPEAT or 0 <= high < low:
                    raise self.fail("invalid repeat count")
                self._repeat(group, last_repeat, low, high, counted=True)
                repeat = True
            elif c == "\\":
                self._escape_atom(group)
            else:
                group.items.append(_Item(nullable=False))
                self.i += 1
            last_repeat = repeat
        if len(stack) != 1:
            raise self.fail("missing closing ): `" + s + "`")
        return stack[0].close().nullable

    def _repeat(
        self, group: _Group, last_repeat: bool, low: int, high: int, *, counted: bool
    ) -> None:
        start = self.i
        if self.s[self.i] == "{":
            self.i = self.s.index("}", self.i) + 1
        else:
            self.i += 1
        if self.i < len(self.s) and self.s[self.i] == "?":
            self.i += 1
        if last_repeat:
            raise self.fail(f"invalid nested repetition operator: `{self.s[start : self.i]}`")
        if not group.items:
            raise self.fail(f"missing argument to repetition operator: `{self.s[start : self.i]}`")
        inner = group.items[-1]
        if counted:
            weight = 1 if high == 0 else max(high if high > 0 else low, 1) * inner.weight
            if (low >= 2 or high >= 2) and weight > MAX_REPEAT:
                raise self.fail(f"invalid repeat count: `{self.s[start : self.i]}`")
        else:
            weight = inner.weight
        group.items[-1] = _Item(low == 0 or inner.nullable, weight)

    def _bounds(self) -> tuple[int, int] | None:
        """``{n}``, ``{n,}`` or ``{n,m}`` at the cursor; None when ``{`` is a literal."""
        s, j = self.s, self.i + 1
        low, j = self._int(j)
        if low is None or j >= len(s):
            return None
        if s[j] != ",":
            high: int | None = low
        else:
            j += 1
            if j >= len(s):
                return None
            if s[j] == "}":
                high = -1
            else:
                high, j = self._int(j)
                if high is None:
                    return None
        if j >= len(s) or s[j] != "}" or high is None:
            return None
        return low, high

    def _int(self, j: int) -> tuple[int | None, int]:
        s, start = self.s, j
        if j >= len(s) or not s[j].isascii() or not s[j].isdigit():
            return None, j
        if s[j] == "0" and j + 1 < len(s) and s[j + 1] in "0123456789":
            return None, j
        while j < len(s) and s[j] in "0123456789":
            j += 1
        digits = s[start:j]
        return (int(digits) if len(digits) <= 8 else MAX_REPEAT + 1), j

    def _perl_flags(self) -> bool:
        """Parse ``(?flags)``, ``(?flags:`` or ``(?P<name>``; True when a group opens."""
        s, start = self.s, self.i
        if s.startswith("(?P<", start) and len(s) - start > 4:
            end = s.find(">", start)
            if end < 0:
                raise self.fail(f"invalid named capture: `{s[start:]}`")
            name = s[start + 4 : end]
            if not name or not all(c == "_" or (c.isascii() and c.isalnum()) for c in name):
                raise self.fail(f"invalid named capture: `{s[start : end + 1]}`")
            self.i = end + 1
            return True
        j = start + 2
        sign, saw_flag = 1, False
        while j < len(s):
            c = s[j]
            j += 1
            if c in "imsU":
                saw_flag = True
            elif c == "-":
                if sign < 0:
                    break
                sign, saw_flag = -1, False
            elif c in ":)":
                if sign < 0 and not saw_flag:
                    break
                self.i = j
                return c == ":"
            else:
                break
        raise self.fail(f"invalid or unsupported Perl syntax: `{s[start:j]}`")

    def _escape_atom(self, group: _Group) -> None:
        s, i = self.s, self.i
        nxt = s[i + 1] if i + 1 < len(s) else ""
        if nxt in ("A", "z", "B"):
            group.items.append(_Item(nullable=True))
            self.i += 2
            return
        if nxt == "b":
            group.items.append(_Item(nullable=False))
            self.i += 2
            return
        if nxt == "C":
            raise self.fail("invalid escape sequence: `\\C`")
        if nxt == "Q":
            end = s.find("\\E", i + 2)
            literal = s[i + 2 :] if end < 0 else s[i + 2 : end]
            self.i = len(s) if end < 0 else end + 2
            group.items.extend(_Item(nullable=False) for _ in literal)
            return
        if not self._class_escape():
            self._char_escape()
        group.items.append(_Item(nullable=False))

    def _class_escape(self) -> bool:
        """``\\d``, ``\\pL`` or ``\\p{Greek}`` at the cursor; True if one was read."""
        s, i = self.s, self.i
        nxt = s[i + 1] if i + 1 < len(s) else ""
        if nxt in ("p", "P"):
            if i + 2 < len(s) and s[i + 2] == "{":
                end = s.find("}", i)
                if end < 0:
                    raise self.fail(f"invalid character class range: `{s[i:]}`")
                name, self.i = s[i + 3 : end], end + 1
            else:
                name = s[i + 2 : i + 3]
                self.i = i + 3
            if name.startswith("^"):
                name = name[1:]
            if name not in _UNICODE_CLASSES:
                raise self.fail(f"invalid character class range: `{s[i : self.i]}`")
            return True
        if nxt and nxt in _PERL_CLASSES:
            self.i = i + 2
            return True
        return False

    def _char_escape(self) -> int:
        """One escaped character at the cursor (``\\n``, ``\\x{263a}``, ``\\.``)."""
        s, i = self.s, self.i
        if i + 1 >= len(s):
            raise self.fail("trailing backslash at end of expression")
        c, j = s[i + 1], i + 2
        octal, hexdigits = "01234567", "0123456789abcdefABCDEF"
        if c.isascii() and not c.isalnum():
            self.i = j
            return ord(c)
        if c == "0" or (c in octal and j < len(s) and s[j] in octal):
            value = int(c)
            for _ in range(2):
                if j < len(s) and s[j] in octal:
                    value, j = value * 8 + int(s[j]), j + 1
            self.i = j
            return value
        if c == "x" and j < len(s) and s[j] == "{":
            end = s.find("}", j)
            digits = s[j + 1 : end] if end > 0 else ""
            if digits and all(d in hexdigits for d in digits) and int(digits, 16) <= 0x10FFFF:
                self.i = end + 1
                return int(digits, 16)
        elif c == "x" and len(s[j : j + 2]) == 2 and all(d in hexdigits for d in s[j : j + 2]):
            self.i = j + 2
            return int(s[j : j + 2], 16)
        simple = {"a": 7, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11}
        if c in simple:
            self.i = j
            return simple[c]
        raise self.fail(f"invalid escape sequence: `{s[i:j]}`")

    def _class(self) -> None:
        s, start = self.s, self.i
        j = start + 1
        if j < len(s) and s[j] == "^":
            j += 1
        first = True
        while j >= len(s) or s[j] != "]" or first:
            if j >= len(s):
                raise self.fail(f"missing closing ]: `{s[start:]}`")
            first = False
            if s.startswith("[:", j):
                end = s.find(":]", j + 2)
                if end >= 0:
                    name = s[j + 2 : end]
                    if name.removeprefix("^") not in _POSIX_CLASSES:
                        raise self.fail(f"invalid character class range: `{s[j : end + 2]}`")
                    j = end + 2
                    continue
            self.i = j
            if s[j] == "\\" and self._class_escape():
                j = self.i
                continue
            low = self._class_char(start)
            high = low
            if self.i + 1 < len(s) and s[self.i] == "-" and s[self.i + 1] != "]":
                range_start = j
                self.i += 1
                high = self._class_char(start)
                if high < low:
                    raise self.fail(f"invalid character class range: `{s[range_start : self.i]}`")
            j = self.i
        self.i = j + 1

    def _class_char(self, class_start: int) -> int:
        if self.i >= len(self.s):
            raise self.fail(f"missing closing ]: `{self.s[class_start:]}`")
        if self.s[self.i] == "\\":
            return self._char_escape()
        self.i += 1
        return ord(self.s[self.i - 1])
