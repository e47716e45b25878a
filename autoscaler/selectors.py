"""Kubernetes label selectors as the HPA sends them in ``?labelSelector=``.

The HPA turns ``matchLabels``/``matchExpressions`` into the string form (``a=b,c in (d,e)``);
we parse that form with the same operators as ``k8s.io/apimachinery/pkg/labels`` and match it
against each policy's labels.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Operator = Literal["=", "!=", "in", "notin", "exists", "!"]

_KEY = r"(?:[a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_KEY_RE = re.compile(_KEY)
_VALUE_RE = re.compile(_VALUE)
_REQUIREMENT = re.compile(
    r"\s*(?:(?P<not>!)\s*(?P<nkey>[^\s,=!()]+)"
    r"|(?P<key>[^\s,=!()]+)(?:\s*(?P<op>==|=|!=)\s*(?P<value>[^\s,=!()]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^()]*)\))?)\s*"
)


class SelectorError(ValueError):
    """A ``labelSelector`` that does not parse; the message says where."""


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: Operator
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "exists":
            return present
        if self.operator == "!":
            return not present
        if self.operator in ("=", "in"):
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values


@dataclass(frozen=True, slots=True)
class Selector:
    """All requirements must hold; an empty selector matches everything."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def equals(self, key: str) -> str | None:
        """The single value ``key`` must equal, when the selector pins it; else None."""
        for r in self.requirements:
            if r.key == key and r.operator in ("=", "in") and len(r.values) == 1:
                return next(iter(r.values))
        return None


def parse_selector(text: str) -> Selector:
    """Parse the string form of a label selector; raise :class:`SelectorError` when invalid."""
    if not text.strip():
        return Selector()
    requirements: list[Requirement] = []
    position = 0
    while True:
        match = _REQUIREMENT.match(text, position)
        if match is None or match.end() == position:
            raise SelectorError(f"invalid label selector {text!r} at position {position}")
        requirements.append(_requirement(match, text))
        position = match.end()
        if position == len(text):
            break
        if text[position] != ",":
            raise SelectorError(f"invalid label selector {text!r}: expected ',' at {position}")
        position += 1
    return Selector(tuple(requirements))


def _requirement(match: re.Match[str], text: str) -> Requirement:
    if match["nkey"] is not None:
        return Requirement(_check_key(match["nkey"], text), "!")
    key = _check_key(match["key"], text)
    if match["op"] is not None:
        operator: Operator = "!=" if match["op"] == "!=" else "="
        return Requirement(key, operator, frozenset([_check_value(match["value"], text)]))
    if match["setop"] is not None:
        values = [v.strip() for v in match["values"].split(",")]
        checked = frozenset(_check_value(v, text) for v in values)
        return Requirement(key, "in" if match["setop"] == "in" else "notin", checked)
    return Requirement(key, "exists")


def _check_key(key: str, text: str) -> str:
    name = key.rsplit("/", 1)[-1]
    if not _KEY_RE.fullmatch(key) or len(name) > 63 or len(key) - len(name) > 254:
        raise SelectorError(f"invalid label key {key!r} in selector {text!r}")
    return key


def _check_value(value: str, text: str) -> str:
    if not _VALUE_RE.fullmatch(value) or len(value) > 63:
        raise SelectorError(f"invalid label value {value!r} in selector {text!r}")
    return value


_EXPRESSION_OPERATORS: dict[str, Operator] = {
    "In": "in",
    "NotIn": "notin",
    "Exists": "exists",
    "DoesNotExist": "!",
}


def from_label_selector(obj: Mapping[str, object] | None) -> Selector | None:
    """A workload's ``spec.selector`` (``matchLabels``/``matchExpressions``) as a Selector.

    ``None`` for a missing selector or an operator Kubernetes does not define: which pods belong
    to the workload is then unknown, and counting all of a namespace's pods would be wrong.
    """
    if not isinstance(obj, Mapping):
        return None
    requirements: list[Requirement] = []
    labels = obj.get("matchLabels") or {}
    expressions = obj.get("matchExpressions") or []
    if not isinstance(labels, Mapping) or not isinstance(expressions, list):
        return None
    for key, value in labels.items():
        requirements.append(Requirement(str(key), "=", frozenset([str(value)])))
    for e in expressions:
        op = _EXPRESSION_OPERATORS.get(str(e.get("operator"))) if isinstance(e, Mapping) else None
        if op is None:
            return None
        values = frozenset(str(v) for v in (e.get("values") or ()))
        requirements.append(Requirement(str(e.get("key")), op, values))
    return Selector(tuple(requirements)) if requirements else None
