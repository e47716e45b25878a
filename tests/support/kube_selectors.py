"""Label and field selectors with kube-apiserver's grammar and matching rules.

Label selectors (`k8s.io/apimachinery/pkg/labels`): comma-separated requirements, each one of
`key=value`, `key==value`, `key!=value`, `key in (a,b)`, `key notin (a,b)`, `key` (exists) and
`!key` (does not exist). `!=` and `notin` also match objects that lack the key.

Field selectors: `path=value`, `path==value`, `path!=value` over a per-resource whitelist of
dotted paths (as the real server, which answers 400 for any other field). A missing field reads
as "", so `spec.nodeName=` selects unscheduled pods.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_KEY_RE = re.compile(
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


class SelectorError(ValueError):
    """A selector that does not parse; the server answers 400 BadRequest with its message."""


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # one of =, !=, in, notin, exists, !
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        if self.op == "exists":
            return present
        return not present


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"unable to parse requirement: unbalanced ')' in {text!r}")
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise SelectorError(f"unable to parse requirement: unbalanced '(' in {text!r}")
    parts.append("".join(current))
    return parts


def _check_key(key: str) -> str:
    if not key or len(key) > 316 or not _KEY_RE.match(key):
        raise SelectorError(f"unable to parse requirement: invalid label key {key!r}")
    return key


def _check_value(value: str) -> str:
    if len(value) > 63 or not _VALUE_RE.match(value):
        raise SelectorError(f"unable to parse requirement: invalid label value {value!r}")
    return value


_SET_RE = re.compile(r"^\s*(?P<key>[^\s!=()]+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)\s*$")
_EQ_RE = re.compile(r"^\s*(?P<key>[^\s!=()]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^\s!=()]*)\s*$")


def parse_label_selector(text: str | None) -> tuple[Requirement, ...]:
    """Parse a label selector string; "" or None selects everything."""
    if text is None or not text.strip():
        return ()
    requirements: list[Requirement] = []
    for raw in _split_top_level(text):
        part = raw.strip()
        if not part:
            raise SelectorError(f"unable to parse requirement: empty requirement in {text!r}")
        if m := _SET_RE.match(part):
            values = frozenset(_check_value(v.strip()) for v in m["values"].split(","))
            requirements.append(Requirement(_check_key(m["key"]), m["op"], values))
        elif m := _EQ_RE.match(part):
            op = "!=" if m["op"] == "!=" else "="
            value = _check_value(m["value"])
            requirements.append(Requirement(_check_key(m["key"]), op, frozenset({value})))
        elif part.startswith("!"):
            requirements.append(Requirement(_check_key(part[1:].strip()), "!", frozenset()))
        else:
            requirements.append(Requirement(_check_key(part), "exists", frozenset()))
    return tuple(requirements)


def labels_match(requirements: tuple[Requirement, ...], obj: Mapping[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(r.matches(labels) for r in requirements)


@dataclass(frozen=True, slots=True)
class FieldRequirement:
    path: str
    negate: bool
    value: str

    def matches(self, obj: Mapping[str, Any]) -> bool:
        current: Any = obj
        for part in self.path.split("."):
            current = current.get(part) if isinstance(current, Mapping) else None
        text = "" if current is None else _field_text(current)
        return (text == self.value) != self.negate


def _field_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_COMMON_FIELDS = frozenset({"metadata.name", "metadata.namespace"})
FIELDS_BY_RESOURCE: dict[str, frozenset[str]] = {
    "pods": _COMMON_FIELDS
    | {
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    },
    "nodes": _COMMON_FIELDS | {"spec.unschedulable"},
    "events": _COMMON_FIELDS
    | {
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    },
    "events.events.k8s.io": _COMMON_FIELDS
    | {"regarding.kind", "regarding.namespace", "regarding.name", "regarding.uid", "reason"},
}


def parse_field_selector(text: str | None, resource: str) -> tuple[FieldRequirement, ...]:
    """Parse a field selector for `resource` (its plural, `events.events.k8s.io` for the group)."""
    if text is None or not text.strip():
        return ()
    allowed = FIELDS_BY_RESOURCE.get(resource, _COMMON_FIELDS)
    out: list[FieldRequirement] = []
    for raw in text.split(","):
        m = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*$", raw)
        if not m:
            raise SelectorError(f"invalid selector: {raw!r}; can't understand '{raw}'")
        path, op, value = m.groups()
        if path not in allowed:
            raise SelectorError(f'field label not supported: "{path}"')
        out.append(FieldRequirement(path, op == "!=", value))
    return tuple(out)


def fields_match(requirements: tuple[FieldRequirement, ...], obj: Mapping[str, Any]) -> bool:
    return all(r.matches(obj) for r in requirements)


def make_filter(
    label_selector: str | None, field_selector: str | None, resource: str
) -> Callable[[Mapping[str, Any]], bool]:
    """One predicate for both selectors; raises SelectorError on bad syntax."""
    labels = parse_label_selector(label_selector)
    fields = parse_field_selector(field_selector, resource)
    return lambda obj: labels_match(labels, obj) and fields_match(fields, obj)
