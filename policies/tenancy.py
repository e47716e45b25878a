"""Namespace enforcement: confine a policy's PromQL to the series of its own namespace.

The controller queries Prometheus with cluster-wide access, and a policy's queries are written
by whoever may edit ConfigMaps in its namespace. So, as prom-label-proxy does, every vector
selector of every query gets the matcher ``<label>="<policy namespace>"``. The query is parsed
(:mod:`policies.promql`) and the matcher spliced into the original text at the parsed
positions, so the rest of the query stays exactly as its author wrote it.

A selector that already says ``<label>="<same namespace>"`` is left alone. Any other matcher
on the label (another namespace, ``!=``, or a regex, even one that would match) is refused
rather than rewritten: a query written to read elsewhere is a mistake or an attempt, and
either way its author should hear about it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

from policies.metrics import KINDS
from policies.parse import FieldError, PolicyError
from policies.promql import PromQLError, parse, selectors
from policies.promql.lexer import is_label_name
from policies.promql.literals import quote
from policies.promql.syntax import VectorSelector
from policies.schema import Metric, ScalingPolicy

DEFAULT_LABEL = "namespace"
"""The label kube-state-metrics, the Prometheus Operator and most scrape configs put the
namespace in."""


class ScopeError(ValueError):
    """A query (or a setting) that cannot be confined to one namespace; the message says
    which selector, why, and what to write instead."""


def check_label(label: str) -> None:
    """ScopeError unless ``label`` can carry the namespace: a plain label name, not one of the
    ``__``-prefixed names Prometheus reserves."""
    if not is_label_name(label):
        raise ScopeError(f"tenancy label {label!r} is not a label name ([a-zA-Z_][a-zA-Z0-9_]*)")
    if label.startswith("__"):
        raise ScopeError(f"tenancy label {label!r} is reserved (names starting with __ are)")


def scope_query(query: str, *, label: str, namespace: str) -> str:
    """``query`` with ``label="namespace"`` added to every vector selector.

    Raises PromQLError if the query does not parse, ScopeError if a selector already matches
    on ``label`` in any way other than ``label="namespace"``.
    """
    check_label(label)
    if not namespace:
        raise ScopeError("namespace must not be empty (it would match series without the label)")
    if any("\ud800" <= c <= "\udfff" for c in namespace):
        raise ScopeError(f"namespace {namespace!r} is not valid text")
    matcher = f"{label}={quote(namespace)}"
    edits: list[tuple[int, str]] = []
    for vs in selectors(parse(query)):
        pinned = [m for m in vs.matchers if m.name == label]
        if not pinned:
            if vs.braces is None:
                edits.append((vs.span.end, "{" + matcher + "}"))
            else:
                edits.append((vs.braces.start + 1, matcher + ("," if vs.matchers else "")))
            continue
        if len(pinned) > 1:
            raise ScopeError(
                f"{_where(query, vs)} matches {label} {len(pinned)} times; "
                f"keep at most one {matcher}"
            )
        (m,) = pinned
        if m.op == "=" and m.value == namespace:
            continue
        if m.op == "=":
            why = f"reads namespace {quote(m.value)}, but this policy lives in {quote(namespace)}"
        else:
            why = f'matches {label} with "{m.op}", which could reach other namespaces'
        raise ScopeError(
            f"{_where(query, vs)} {why}; remove the {label} matcher "
            f"(gpuscale adds {matcher} to every selector)"
        )
    out = query
    for position, text in sorted(edits, reverse=True):
        out = out[:position] + text + out[position:]
    return out


def _where(query: str, vs: VectorSelector) -> str:
    text = query[vs.span.start : vs.span.end]
    if len(text) > 80:
        text = text[:77] + "..."
    line = query.count("\n", 0, vs.span.start) + 1
    column = vs.span.start - (query.rfind("\n", 0, vs.span.start) + 1) + 1
    return f"selector {text} (at {line}:{column})"


def query_fields(metric: Metric) -> list[tuple[str, str, str]]:
    """``(attribute, YAML field, PromQL)`` of every query ``metric`` runs."""
    out = [("query", "query", metric.query)]
    for q in KINDS[metric.type].queries:
        promql = getattr(metric, q.attribute)
        if promql is not None:
            out.append((q.attribute, q.field, promql))
    return out


def scope_policy(policy: ScalingPolicy, *, label: str = DEFAULT_LABEL) -> ScalingPolicy:
    """``policy`` with every query of every metric confined to the policy's namespace.

    Every query that cannot be is reported, as a PolicyError with one field error each
    (``inference/llama: metrics[0].query: …``). ScopeError if ``label`` itself is unusable.
    """
    check_label(label)
    errors: list[FieldError] = []
    metrics: list[Metric] = []
    for i, metric in enumerate(policy.metrics):
        changes: dict[str, str] = {}
        for attr, yaml_field, query in query_fields(metric):
            path = f"metrics[{i}].{yaml_field}"
            try:
                changes[attr] = scope_query(query, label=label, namespace=policy.namespace)
            except PromQLError as exc:
                errors.append(FieldError(path, f"invalid PromQL at {exc}"))
            except ScopeError as exc:
                errors.append(FieldError(path, f"namespace enforcement: {exc}"))
        # replace() cannot be typed over a union of dataclasses; the fields are str on each.
        scoped: Metric = replace(cast(Any, metric), **changes)
        metrics.append(scoped)
    deletion_cost = policy.deletion_cost
    if deletion_cost is not None:
        try:
            scoped_cost = scope_query(deletion_cost.query, label=label, namespace=policy.namespace)
            deletion_cost = replace(deletion_cost, query=scoped_cost)
        except PromQLError as exc:
            errors.append(FieldError("deletionCost.query", f"invalid PromQL at {exc}"))
        except ScopeError as exc:
            errors.append(FieldError("deletionCost.query", f"namespace enforcement: {exc}"))
    if errors:
        raise PolicyError(policy.key, tuple(errors))
    return replace(policy, metrics=tuple(metrics), deletion_cost=deletion_cost)
