"""Namespace enforcement: every selector of every query gains ``namespace="<ns>"``, in place."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from policies.parse import PolicyError, load_policy_file
from policies.promql import PromQLError, format_expr, parse, selectors
from policies.promql.syntax import VectorSelector
from policies.schema import ModelCapacityMetric, ScalingPolicy, metric_inputs
from policies.tenancy import ScopeError, query_fields, scope_policy, scope_query
from tests.policies.promql_strategies import exprs, label_names

EXAMPLES = sorted((Path(__file__).parents[2] / "policies" / "examples").glob("*.yaml"))


def scoped(query: str, namespace: str = "a", label: str = "namespace") -> str:
    return scope_query(query, label=label, namespace=namespace)


REWRITES = [
    ("foo", 'foo{namespace="a"}'),
    ("foo{}", 'foo{namespace="a"}'),
    ('foo{job="x"}', 'foo{namespace="a",job="x"}'),
    ('foo{job="x",}', 'foo{namespace="a",job="x",}'),
    ('{__name__="foo"}', '{namespace="a",__name__="foo"}'),
    ('{__name__=~"foo|bar"}', '{namespace="a",__name__=~"foo|bar"}'),
    ('foo{job=~"api|web", code!~"5.."}', 'foo{namespace="a",job=~"api|web", code!~"5.."}'),
    ("rate(foo[5m])", 'rate(foo{namespace="a"}[5m])'),
    (
        "histogram_quantile(0.95, sum by (le) (rate(x_bucket[1m])))",
        'histogram_quantile(0.95, sum by (le) (rate(x_bucket{namespace="a"}[1m])))',
    ),
    ("sum(foo) by (job)", 'sum(foo{namespace="a"}) by (job)'),
    ("topk(3, foo)", 'topk(3, foo{namespace="a"})'),
    ("count_values('v', foo)", "count_values('v', foo{namespace=\"a\"})"),
    ("a / b", 'a{namespace="a"} / b{namespace="a"}'),
    (
        "a * on(pod) group_left(node) b",
        'a{namespace="a"} * on(pod) group_left(node) b{namespace="a"}',
    ),
    ("a / ignoring(code) b", 'a{namespace="a"} / ignoring(code) b{namespace="a"}'),
    ("a > bool 1", 'a{namespace="a"} > bool 1'),
    (
        "a and b or c unless d",
        'a{namespace="a"} and b{namespace="a"} or c{namespace="a"} unless d{namespace="a"}',
    ),
    ("-foo", '-foo{namespace="a"}'),
    ("(foo)", '(foo{namespace="a"})'),
    ("foo offset 5m", 'foo{namespace="a"} offset 5m'),
    ("foo offset -5m", 'foo{namespace="a"} offset -5m'),
    ("foo @ 1700000000", 'foo{namespace="a"} @ 1700000000'),
    ("foo[5m] @ start()", 'foo{namespace="a"}[5m] @ start()'),
    ("rate(foo[5m])[1h:5m]", 'rate(foo{namespace="a"}[5m])[1h:5m]'),
    ("max_over_time(foo[1h:])", 'max_over_time(foo{namespace="a"}[1h:])'),
    ("foo offset 1m [10m:1m] offset 2m", 'foo{namespace="a"} offset 1m [10m:1m] offset 2m'),
    ("vector(1)", "vector(1)"),
    ("time() - 1", "time() - 1"),
    ('"just a string"', '"just a string"'),
    ("sum", 'sum{namespace="a"}'),
    ("and and and", 'and{namespace="a"} and and{namespace="a"}'),
    ("foo:bar:rate5m", 'foo:bar:rate5m{namespace="a"}'),
    ("foo # comment { }\n + bar", 'foo{namespace="a"} # comment { }\n + bar{namespace="a"}'),
    ("sum(\n  rate(foo [ 5m ])\n)", 'sum(\n  rate(foo{namespace="a"} [ 5m ])\n)'),
    # already scoped to the same namespace: kept as written
    ('foo{namespace="a"}', 'foo{namespace="a"}'),
    ("foo{namespace='a', job='x'}", "foo{namespace='a', job='x'}"),
    ('foo{namespace="a"} / bar', 'foo{namespace="a"} / bar{namespace="a"}'),
    ("foo{namespace=`a`}", "foo{namespace=`a`}"),
]
"""``(query, scoped to namespace a)`` for every construct."""


@pytest.mark.parametrize(("query", "expected"), REWRITES)
def test_rewrites(query: str, expected: str) -> None:
    assert scoped(query) == expected
    assert scoped(expected) == expected


def test_label_and_value_are_configurable_and_escaped() -> None:
    assert scoped("foo", label="kubernetes_namespace", namespace="team-a") == (
        'foo{kubernetes_namespace="team-a"}'
    )
    tricky = 'a"b\\c\nd\ufffd'
    out = scoped("foo", namespace=tricky)
    (vs,) = selectors(parse(out))
    assert vs.matchers[0].value == tricky


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        (
            'foo{namespace="b"}',
            'selector foo{namespace="b"} (at 1:1) reads namespace "b", '
            'but this policy lives in "a"',
        ),
        (
            'sum(rate(x{job="j", namespace="b"}[5m]))',
            'selector x{job="j", namespace="b"} (at 1:10) reads namespace "b"',
        ),
        ('foo{namespace!="b"}', 'matches namespace with "!="'),
        ('foo{namespace=~"a"}', 'matches namespace with "=~"'),
        ('foo{namespace=~"a|b"}', 'matches namespace with "=~"'),
        ('foo{namespace!~"b"}', 'matches namespace with "!~"'),
        ('foo{namespace=""}', 'reads namespace ""'),
        ('a / on(x) b{namespace="b"}', 'selector b{namespace="b"} (at 1:11)'),
        (
            'foo{namespace="a", namespace="a"}',
            'matches namespace 2 times; keep at most one namespace="a"',
        ),
        ('rate(foo{namespace="b"}[5m])[1h:]', 'reads namespace "b"'),
    ],
)
def test_rejections_name_the_selector_and_the_fix(query: str, reason: str) -> None:
    with pytest.raises(ScopeError) as caught:
        scoped(query)
    assert reason in str(caught.value)
    if "keep at most one" not in reason:
        assert (
            'remove the namespace matcher (gpuscale adds namespace="a" to every selector)'
            in str(caught.value)
        )


def test_other_labels_may_mention_namespaces() -> None:
    assert scoped('foo{exported_namespace="b"}') == 'foo{namespace="a",exported_namespace="b"}'


@pytest.mark.parametrize("label", ["", "1x", "name-space", "a.b", "__name__", "__tenant"])
def test_bad_labels_are_refused(label: str) -> None:
    with pytest.raises(ScopeError, match="tenancy label"):
        scoped("foo", label=label)


@pytest.mark.parametrize("namespace", ["", "\ud800"])
def test_bad_namespaces_are_refused(namespace: str) -> None:
    with pytest.raises(ScopeError, match="namespace"):
        scoped("foo", namespace=namespace)


def test_unparsable_queries_raise_promql_errors() -> None:
    with pytest.raises(PromQLError, match="unclosed left parenthesis"):
        scoped("sum(foo")


# -- properties ---------------------------------------------------------------------------------


def _strip(node: Any, label: str) -> Any:
    """``node`` without any matcher on ``label`` (and without spans, which equality ignores)."""
    if isinstance(node, VectorSelector):
        return dataclasses.replace(
            node, matchers=tuple(m for m in node.matchers if m.name != label)
        )
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        changes = {
            f.name: _strip(getattr(node, f.name), label)
            for f in dataclasses.fields(node)
            if f.compare
        }
        return dataclasses.replace(node, **changes)
    if isinstance(node, tuple):
        return tuple(_strip(x, label) for x in node)
    return node


queries = st.one_of(exprs("V"), exprs("S"), exprs("M")).map(format_expr)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    queries,
    st.sampled_from(["namespace", "ns"]) | label_names.filter(lambda n: not n.startswith("__")),
    st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True),
)
def test_every_selector_ends_up_with_exactly_the_namespace(
    query: str, label: str, namespace: str
) -> None:
    original = parse(query)
    try:
        out = scope_query(query, label=label, namespace=namespace)
    except ScopeError:
        pinned = [m for vs in selectors(original) for m in vs.matchers if m.name == label]
        assert pinned, "refused a query that does not mention the label"
        assert any((m.op, m.value) != ("=", namespace) for m in pinned) or any(
            sum(m.name == label for m in vs.matchers) > 1 for vs in selectors(original)
        )
        return
    tree = parse(out)
    for vs in selectors(tree):
        on_label = [m for m in vs.matchers if m.name == label]
        assert [(m.op, m.value) for m in on_label] == [("=", namespace)]
    assert _strip(tree, label) == _strip(original, label)
    assert len(selectors(tree)) == len(selectors(original))
    assert scope_query(out, label=label, namespace=namespace) == out


@settings(max_examples=200, deadline=None)
@given(queries)
def test_scoping_only_inserts_the_matcher(query: str) -> None:
    assume("namespace" not in query)
    out = scoped(query)
    rest = iter(out)
    assert all(ch in rest for ch in query), "the query is not kept, in order, inside the result"
    sizes = {
        "bare": len('{namespace="a"}'),
        "empty": len('namespace="a"'),
        "some": len('namespace="a",'),
    }
    expected = sum(
        sizes["bare" if vs.braces is None else "empty" if not vs.matchers else "some"]
        for vs in selectors(parse(query))
    )
    assert len(out) - len(query) == expected


# -- policies -----------------------------------------------------------------------------------


def test_examples_scope_cleanly_and_every_query_is_scoped() -> None:
    for path in EXAMPLES:
        for policy in load_policy_file(path):
            out = scope_policy(policy)
            queries_before = [q for m in policy.metrics for _, q in metric_inputs(m)]
            queries_after = [q for m in out.metrics for _, q in metric_inputs(m)]
            assert len(queries_after) == len(queries_before)
            for before, after in zip(queries_before, queries_after, strict=True):
                assert after == scoped(before, namespace=policy.namespace)
                for vs in selectors(parse(after)):
                    assert [(m.name, m.value) for m in vs.matchers if m.name == "namespace"] == [
                        ("namespace", policy.namespace)
                    ]
            assert dataclasses.replace(out, metrics=policy.metrics) == policy


def _capacity_policy() -> ScalingPolicy:
    (policy,) = load_policy_file(
        Path(__file__).parents[2] / "policies" / "examples" / "llm-serving-model.yaml"
    )
    return policy


def test_every_query_of_a_model_capacity_metric_is_scoped() -> None:
    policy = dataclasses.replace(_capacity_policy(), namespace="team-a")
    metric = next(m for m in policy.metrics if isinstance(m, ModelCapacityMetric))
    bare = dataclasses.replace(
        metric,
        query="sum(rate(req[1m]))",
        prompt_tokens_query="sum(rate(prompt[1m]))",
        generation_tokens_query="sum(rate(gen[1m]))",
    )
    policy = dataclasses.replace(policy, metrics=(bare,))
    (out,) = scope_policy(policy).metrics
    assert [q for _, q in metric_inputs(out)] == [
        'sum(rate(req{namespace="team-a"}[1m]))',
        'sum(rate(prompt{namespace="team-a"}[1m]))',
        'sum(rate(gen{namespace="team-a"}[1m]))',
    ]
    assert [f for _, f, _ in query_fields(out)] == [
        "query",
        "promptTokensQuery",
        "generationTokensQuery",
    ]


def test_policy_errors_name_each_field() -> None:
    policy = _capacity_policy()
    capacity = next(i for i, m in enumerate(policy.metrics) if isinstance(m, ModelCapacityMetric))
    metric = policy.metrics[capacity]
    assert isinstance(metric, ModelCapacityMetric)
    bad = dataclasses.replace(
        metric,
        query="sum(rate(x[5m])",
        generation_tokens_query='sum(rate(gen{namespace="other"}[1m]))',
    )
    metrics = list(policy.metrics)
    metrics[capacity] = bad
    with pytest.raises(PolicyError) as caught:
        scope_policy(dataclasses.replace(policy, metrics=tuple(metrics)))
    errors = caught.value.errors
    assert [e.path for e in errors] == [
        f"metrics[{capacity}].query",
        f"metrics[{capacity}].generationTokensQuery",
    ]
    assert errors[0].message == "invalid PromQL at 1:16: unclosed left parenthesis"
    assert errors[1].message.startswith('namespace enforcement: selector gen{namespace="other"}')
    assert str(caught.value).splitlines()[0] == (
        f"inference/llama-serving: metrics[{capacity}].query: invalid PromQL at 1:16: "
        "unclosed left parenthesis"
    )


def test_the_deletion_cost_query_is_scoped_like_the_metrics() -> None:
    from policies.schema import DeletionCost

    policy = dataclasses.replace(
        _capacity_policy(), deletion_cost=DeletionCost("sum by (pod) (vllm:num_requests_running)")
    )
    scoped = scope_policy(policy).deletion_cost
    assert scoped is not None
    assert (
        scoped.query
        == f'sum by (pod) (vllm:num_requests_running{{namespace="{policy.namespace}"}})'
    )
    other = DeletionCost('sum by (pod) (running{namespace="billing"})')
    with pytest.raises(PolicyError) as caught:
        scope_policy(dataclasses.replace(policy, deletion_cost=other))
    assert [e.path for e in caught.value.errors] == ["deletionCost.query"]
