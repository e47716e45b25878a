"""nodeSelector and node affinity with the semantics of ``component-helpers/.../nodeaffinity``.

- Required terms are ORed; the expressions and fields inside one term are ANDed.
- A term with no expressions and no fields matches nothing; so does an empty term list.
- A term whose requirements do not parse (bad key or value, ``Gt`` with a non-integer, ``In`` with
  no values…) matches nothing, but the other terms still count (``LazyErrorNodeSelector``).
- ``matchFields`` supports ``In``/``NotIn`` with exactly one value; the only node field is
  ``metadata.name`` (any other key reads as the empty string).
- ``Gt``/``Lt`` compare the label and the value as base-10 int64, parsed like Go's
  ``strconv.ParseInt(s, 10, 64)``: optional sign, ASCII digits only, in range.
- ``nodeSelector`` (exact label equality) is ANDed with the required affinity.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from extender.objects import NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PreferredTerm

AFFINITY_REASON: Final = "node(s) didn't match Pod's node affinity/selector"

_INT64: Final = re.compile(r"[+-]?[0-9]+")
_NAME: Final = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS1123_SUBDOMAIN: Final = re.compile(
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
)
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_NAME_FIELD: Final = "metadata.name"


def parse_go_int64(text: str) -> int | None:
    """Go's ``strconv.ParseInt(text, 10, 64)``: ``None`` where Go returns an error.

    Python's ``int()`` is more lenient (spaces, underscores, non-ASCII digits), hence the regex.
    """
    if not _INT64.fullmatch(text) or not text.isascii():
        return None
    value = int(text)
    if value < _INT64_MIN or value > _INT64_MAX:
        return None
    return value


def label_key_error(key: str) -> str | None:
    """Why ``key`` is not a qualified name (``[prefix/]name``), or ``None``."""
    parts = key.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            return f"key {key!r}: prefix part must be non-empty"
        if len(prefix) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(prefix):
            return f"key {key!r}: prefix part must be a DNS-1123 subdomain"
    else:
        return f"key {key!r}: a qualified name must have at most one '/'"
    if not name:
        return f"key {key!r}: name part must be non-empty"
    if len(name) > 63:
        return f"key {key!r}: name part must be no more than 63 characters"
    if not _NAME.fullmatch(name):
        return f"key {key!r}: name part must consist of alphanumeric characters, '-', '_' or '.'"
    return None


def label_value_error(value: str) -> str | None:
    if value == "":
        return None
    if len(value) > 63:
        return f"value {value!r}: must be no more than 63 characters"
    if not _NAME.fullmatch(value):
        return f"value {value!r}: must consist of alphanumeric characters, '-', '_' or '.'"
    return None


@dataclass(frozen=True, slots=True)
class _LabelRequirement:
    key: str
    operator: str
    values: frozenset[str]
    number: int | None

    def matches(self, labels: Mapping[str, str]) -> bool:
        op = self.operator
        if op == "In":
            v = labels.get(self.key)
            return v is not None and v in self.values
        if op == "NotIn":
            v = labels.get(self.key)
            return v is None or v not in self.values
        if op == "Exists":
            return self.key in labels
        if op == "DoesNotExist":
            return self.key not in labels
        v = labels.get(self.key)
        if v is None or self.number is None:
            return False
        have = parse_go_int64(v)
        if have is None:
            return False
        return have > self.number if op == "Gt" else have < self.number


@dataclass(frozen=True, slots=True)
class _FieldRequirement:
    key: str
    equal: bool
    value: str

    def matches(self, node_name: str) -> bool:
        have = node_name if self.key == _NAME_FIELD else ""
        return (have == self.value) is self.equal


@dataclass(frozen=True, slots=True)
class CompiledTerm:
    """A parsed term. ``labels``/``fields`` are ``None`` when the term has none of them;
    ``errors`` non-empty means the term matches nothing."""

    labels: tuple[_LabelRequirement, ...] | None
    fields: tuple[_FieldRequirement, ...] | None
    errors: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str], node_name: str) -> bool:
        if self.errors:
            return False
        if self.labels is not None and not all(r.matches(labels) for r in self.labels):
            return False
        return not (
            self.fields is not None
            and node_name
            and not all(r.matches(node_name) for r in self.fields)
        )


def _compile_label_requirement(
    r: NodeSelectorRequirement, path: str, errors: list[str]
) -> _LabelRequirement | None:
    op = r.operator
    found: list[str] = []
    if op not in ("In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"):
        errors.append(f"{path}.operator: unsupported value {op!r}")
        return None
    if (e := label_key_error(r.key)) is not None:
        found.append(f"{path}.key: {e}")
    number: int | None = None
    if op in ("In", "NotIn") and not r.values:
        found.append(f"{path}.values: for 'in', 'notin' operators, values set can't be empty")
    elif op in ("Exists", "DoesNotExist") and r.values:
        found.append(f"{path}.values: values set must be empty for exists and does not exist")
    elif op in ("Gt", "Lt"):
        if len(r.values) != 1:
            found.append(f"{path}.values: for 'Gt', 'Lt' operators, exactly one value is required")
        for i, v in enumerate(r.values):
            number = parse_go_int64(v)
            if number is None:
                found.append(
                    f"{path}.values[{i}]: for 'Gt', 'Lt' operators, the value must be an integer"
                )
    for i, v in enumerate(r.values):
        if (e := label_value_error(v)) is not None:
            found.append(f"{path}.values[{i}]: {e}")
    if found:
        errors.extend(found)
        return None
    return _LabelRequirement(r.key, op, frozenset(r.values), number)


def compile_term(term: NodeSelectorTerm, path: str = "") -> CompiledTerm:
    """Parse one term (``newNodeSelectorTerm``); errors are kept, not raised."""
    errors: list[str] = []
    labels: tuple[_LabelRequirement, ...] | None = None
    fields: tuple[_FieldRequirement, ...] | None = None
    if term.match_expressions:
        parsed = [
            _compile_label_requirement(r, f"{path}matchExpressions[{i}]", errors)
            for i, r in enumerate(term.match_expressions)
        ]
        labels = tuple(p for p in parsed if p is not None)
    if term.match_fields:
        out: list[_FieldRequirement] = []
        for i, r in enumerate(term.match_fields):
            p = f"{path}matchFields[{i}]"
            if r.operator not in ("In", "NotIn"):
                errors.append(f"{p}.operator: unsupported value {r.operator!r}")
            elif len(r.values) != 1:
                errors.append(f"{p}.values: must have one element")
            else:
                out.append(_FieldRequirement(r.key, r.operator == "In", r.values[0]))
        fields = tuple(out)
    return CompiledTerm(labels, fields, tuple(errors))


def _is_empty(term: NodeSelectorTerm) -> bool:
    return not term.match_expressions and not term.match_fields


@dataclass(frozen=True, slots=True)
class RequiredAffinity:
    """A pod's ``nodeSelector`` plus required node affinity, compiled once per pod.

    ``terms`` is ``None`` when the pod has no required affinity (matches every node).
    """

    node_selector: tuple[tuple[str, str], ...] = ()
    terms: tuple[CompiledTerm, ...] | None = None
    uses_fields: bool = False

    @property
    def errors(self) -> tuple[str, ...]:
        return tuple(e for t in self.terms or () for e in t.errors)

    def matches(self, labels: Mapping[str, str], node_name: str) -> bool:
        for key, value in self.node_selector:
            if labels.get(key) != value:
                return False
        if self.terms is None:
            return True
        return any(t.matches(labels, node_name) for t in self.terms)


def compile_required(
    node_selector: Mapping[str, str], required: NodeSelector | None
) -> RequiredAffinity:
    """``GetRequiredNodeAffinity``: the selector map ANDed with the ORed required terms."""
    terms: tuple[CompiledTerm, ...] | None = None
    if required is not None:
        terms = tuple(
            compile_term(t, f"nodeSelectorTerms[{i}].")
            for i, t in enumerate(required.terms)
            if not _is_empty(t)
        )
    uses_fields = any(t.fields is not None for t in terms or ())
    return RequiredAffinity(tuple(sorted(node_selector.items())), terms, uses_fields)


@dataclass(frozen=True, slots=True)
class PreferredAffinity:
    """Preferred terms with their weights; zero-weight and empty terms are dropped as upstream."""

    terms: tuple[tuple[int, CompiledTerm], ...] = ()

    @property
    def uses_fields(self) -> bool:
        return any(t.fields is not None for _, t in self.terms)

    def score(self, labels: Mapping[str, str], node_name: str) -> int:
        """Sum of the weights of the matching terms (``PreferredSchedulingTerms.Score``)."""
        return sum(w for w, t in self.terms if t.matches(labels, node_name))


def compile_preferred(terms: Sequence[PreferredTerm]) -> PreferredAffinity:
    return PreferredAffinity(
        tuple(
            (t.weight, compile_term(t.preference, f"[{i}]."))
            for i, t in enumerate(terms)
            if t.weight != 0 and not _is_empty(t.preference)
        )
    )
