"""Label selectors in the string form the HPA sends (``k8s.io/apimachinery/pkg/labels``)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoscaler.selectors import Requirement, SelectorError, from_label_selector, parse_selector

NAMES = st.from_regex(r"[a-z0-9]([a-z0-9._-]{0,10}[a-z0-9])?", fullmatch=True)
PREFIXES = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
KEYS = st.one_of(NAMES, st.builds(lambda p, n: f"{p}.io/{n}", PREFIXES, NAMES))
VALUES = st.one_of(st.just(""), NAMES)


def _render(r: Requirement) -> str:
    values = sorted(r.values)
    if r.operator == "exists":
        return r.key
    if r.operator == "!":
        return f"!{r.key}"
    if r.operator in ("=", "!="):
        return f"{r.key}{r.operator}{values[0]}"
    return f"{r.key} {r.operator} ({', '.join(values)})"


REQUIREMENTS = st.one_of(
    st.builds(lambda k: Requirement(k, "exists"), KEYS),
    st.builds(lambda k: Requirement(k, "!"), KEYS),
    st.builds(lambda k, v: Requirement(k, "=", frozenset([v])), KEYS, VALUES),
    st.builds(lambda k, v: Requirement(k, "!=", frozenset([v])), KEYS, VALUES),
    st.builds(
        lambda k, vs, op: Requirement(k, op, frozenset(vs)),
        KEYS,
        st.lists(NAMES, min_size=1, max_size=3),
        st.sampled_from(["in", "notin"]),
    ),
)


@given(st.lists(REQUIREMENTS, max_size=4), st.sampled_from([",", ", ", " , "]))
def test_rendered_selectors_parse_back(requirements: list[Requirement], sep: str) -> None:
    text = sep.join(_render(r) for r in requirements)
    assert parse_selector(text).requirements == tuple(requirements)


@given(st.text(max_size=30))
def test_any_text_parses_or_fails_with_a_selector_error(text: str) -> None:
    try:
        parse_selector(text)
    except SelectorError as exc:
        assert "selector" in str(exc)


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("gpuscale.io/policy=llama", {"gpuscale.io/policy": "llama"}, True),
        ("gpuscale.io/policy==llama", {"gpuscale.io/policy": "mistral"}, False),
        ("gpuscale.io/policy!=llama", {}, True),
        ("gpuscale.io/policy in (a,b)", {"gpuscale.io/policy": "b"}, True),
        ("gpuscale.io/policy notin (a,b)", {"gpuscale.io/policy": "b"}, False),
        ("gpuscale.io/policy", {"gpuscale.io/policy": ""}, True),
        ("!gpuscale.io/policy", {"gpuscale.io/policy": ""}, False),
        ("", {}, True),
        ("a=b,c=d", {"a": "b"}, False),
    ],
)
def test_matching_follows_kubernetes(text: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_selector(text).matches(labels) is expected


@pytest.mark.parametrize("bad", ["a b", "a=b,,c", "=x", "a in b", "a=(b)", "-a=b", "a=b c"])
def test_malformed_selectors_are_refused(bad: str) -> None:
    with pytest.raises(SelectorError):
        parse_selector(bad)


def test_pinned_value_is_found_for_a_fast_lookup() -> None:
    assert parse_selector("x=1, gpuscale.io/policy=llama").equals("gpuscale.io/policy") == "llama"
    assert parse_selector("gpuscale.io/policy in (a,b)").equals("gpuscale.io/policy") is None
    assert parse_selector("gpuscale.io/policy!=a").equals("gpuscale.io/policy") is None


# -- a workload's spec.selector (matchLabels / matchExpressions) -----------------------------

_OPS = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}


def _reference(selector: dict[str, object], labels: dict[str, str]) -> bool:
    """LabelSelectorAsSelector's meaning, written out: every clause must hold."""
    match = selector.get("matchLabels") or {}
    assert isinstance(match, dict)
    if any(labels.get(k) != v for k, v in match.items()):
        return False
    expressions = selector.get("matchExpressions") or []
    assert isinstance(expressions, list)
    for e in expressions:
        assert isinstance(e, dict)
        key, op, values = e["key"], e["operator"], e.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op in ("Exists", "DoesNotExist") and (op == "Exists") != present:
            return False
    return True


EXPRESSIONS = st.builds(
    lambda k, op, vs: {
        "key": k,
        "operator": op,
        **({"values": vs} if op in ("In", "NotIn") else {}),
    },
    st.sampled_from(["app", "tier", "gpu"]),
    st.sampled_from(sorted(_OPS)),
    st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3),
)
SMALL_LABELS = st.dictionaries(st.sampled_from(["app", "tier", "gpu"]), st.sampled_from("abc"))


@given(
    match=SMALL_LABELS,
    expressions=st.lists(EXPRESSIONS, max_size=3),
    labels=SMALL_LABELS,
)
def test_a_workload_selector_matches_as_kubernetes_does(
    match: dict[str, str], expressions: list[dict[str, object]], labels: dict[str, str]
) -> None:
    spec: dict[str, object] = {"matchLabels": match, "matchExpressions": expressions}
    selector = from_label_selector(spec)
    if not match and not expressions:
        assert selector is None  # no selector: which pods are the workload's is unknown
        return
    assert selector is not None
    assert selector.matches(labels) == _reference(spec, labels)


def test_an_unknown_operator_or_shape_is_no_selector() -> None:
    assert from_label_selector(None) is None
    assert from_label_selector({"matchExpressions": [{"key": "a", "operator": "Gt"}]}) is None
    assert from_label_selector({"matchLabels": ["app"]}) is None
