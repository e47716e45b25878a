"""nodeSelector and node affinity, with cases ported from upstream tests (origin cited per case)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extender.affinity import (
    compile_preferred,
    compile_required,
    compile_term,
    parse_go_int64,
)
from extender.objects import (
    NodeSelector,
    NodeSelectorRequirement,
    NodeSelectorTerm,
    PreferredTerm,
)

NA = "component-helpers/scheduling/corev1/nodeaffinity/nodeaffinity_test.go"
HT = "component-helpers/scheduling/corev1/helpers_test.go TestMatchNodeSelectorTerms"


def req(key: str, op: str, *values: str) -> NodeSelectorRequirement:
    return NodeSelectorRequirement(key, op, tuple(values))


def term(
    exprs: list[NodeSelectorRequirement] | None = None,
    fields: list[NodeSelectorRequirement] | None = None,
) -> NodeSelectorTerm:
    return NodeSelectorTerm(tuple(exprs or ()), tuple(fields or ()))


def sel(*terms: NodeSelectorTerm) -> NodeSelector:
    return NodeSelector(tuple(terms))


NAME_IN_1 = req("metadata.name", "In", "host_1")
LABEL_1 = req("label_1", "In", "label_1_val")


@pytest.mark.parametrize(
    ("origin", "selector", "name", "labels", "want"),
    [
        (
            f"{NA} TestNodeSelectorMatch: invalid field selector and label selector",
            sel(
                term(fields=[req("metadata.name", "In", "host_1", "host_2")]),
                term([LABEL_1], [NAME_IN_1]),
                term([req("invalid key", "In", "label_value")]),
            ),
            "host_1",
            {"label_1": "label_1_val"},
            True,  # upstream's strict NewNodeSelector errors; the lazy one still matches term 2
        ),
        (
            f"{NA} TestNodeSelectorMatch: node matches field selector, but not labels",
            sel(term([LABEL_1], [NAME_IN_1])),
            "host_1",
            {},
            False,
        ),
        (
            f"{NA} TestNodeSelectorMatch: node matches field selector and label selector",
            sel(term([LABEL_1], [NAME_IN_1])),
            "host_1",
            {"label_1": "label_1_val"},
            True,
        ),
        (
            f"{NA} TestNodeSelectorMatch: second term matches",
            sel(term([LABEL_1]), term(fields=[NAME_IN_1])),
            "host_1",
            {},
            True,
        ),
        (
            f"{HT}: node label matches matchExpressions terms",
            sel(term([LABEL_1])),
            "",
            {"label_1": "label_1_val"},
            True,
        ),
        (
            f"{HT}: node field matches matchFields terms",
            sel(term(fields=[NAME_IN_1])),
            "host_1",
            {},
            True,
        ),
        (
            f"{HT}: invalid node field requirement",
            sel(term(fields=[req("metadata.name", "In", "host_1", "host_2")])),
            "host_1",
            {},
            False,
        ),
        (
            f"{HT}: fieldSelectorTerm with node labels",
            sel(term(fields=[NAME_IN_1])),
            "not_host_1",
            {"metadata.name": "host_1"},
            False,
        ),
        (
            f"{HT}: labelSelectorTerm with node fields",
            sel(term([req("metadata.name", "In", "host_1")])),
            "host_1",
            {},
            False,
        ),
        (
            f"{HT}: labelSelectorTerm and fieldSelectorTerm was set, but only node fields",
            sel(term([LABEL_1], [NAME_IN_1])),
            "host_1",
            {},
            False,
        ),
        (
            f"{HT}: ...both node fields and labels (one mismatched)",
            sel(term([LABEL_1], [NAME_IN_1])),
            "host_1",
            {"label_1": "label_1_val-failed"},
            False,
        ),
        (
            f"{HT}: multi-selector was set, both node fields and labels (one mismatched)",
            sel(term([LABEL_1]), term(fields=[NAME_IN_1])),
            "host_1",
            {"label_1": "label_1_val-failed"},
            True,
        ),
    ],
)
def test_node_selector_terms(
    origin: str, selector: NodeSelector, name: str, labels: dict[str, str], want: bool
) -> None:
    assert compile_required({}, selector).matches(labels, name) is want, origin


def _pod(
    node_selector: dict[str, str] | None = None, required: NodeSelector | None = None
) -> tuple[dict[str, str], NodeSelector | None]:
    return node_selector or {}, required


PM = f"{NA} TestPodMatchesNodeSelectorAndAffinityTerms"


@pytest.mark.parametrize(
    ("origin", "pod", "labels", "name", "want"),
    [
        (f"{PM}: no selector", _pod(), {}, "", True),
        (f"{PM}: missing labels", _pod({"foo": "bar"}), {}, "", False),
        (f"{PM}: same labels", _pod({"foo": "bar"}), {"foo": "bar"}, "", True),
        (
            f"{PM}: node labels are superset",
            _pod({"foo": "bar"}),
            {"foo": "bar", "baz": "blah"},
            "",
            True,
        ),
        (
            f"{PM}: node labels are subset",
            _pod({"foo": "bar", "baz": "blah"}),
            {"foo": "bar"},
            "",
            False,
        ),
        (
            f"{PM}: matchExpressions using In operator that matches the existing node",
            _pod(required=sel(term([req("foo", "In", "bar", "value2")]))),
            {"foo": "bar"},
            "",
            True,
        ),
        (
            f"{PM}: matchExpressions using Gt operator that matches the existing node",
            _pod(required=sel(term([req("kernel-version", "Gt", "0204")]))),
            {"kernel-version": "0206"},
            "",
            True,
        ),
        (
            f"{PM}: matchExpressions using NotIn operator that matches the existing node",
            _pod(required=sel(term([req("mem-type", "NotIn", "DDR", "DDR2")]))),
            {"mem-type": "DDR3"},
            "",
            True,
        ),
        (
            f"{PM}: matchExpressions using Exists operator that matches the existing node",
            _pod(required=sel(term([req("GPU", "Exists")]))),
            {"GPU": "NVIDIA-GRID-K1"},
            "",
            True,
        ),
        (
            f"{PM}: affinity that don't match node's labels won't schedule onto the node",
            _pod(required=sel(term([req("foo", "In", "value1", "value2")]))),
            {"foo": "bar"},
            "",
            False,
        ),
        (
            f"{PM}: a nil []NodeSelectorTerm in affinity",
            _pod(required=sel()),
            {"foo": "bar"},
            "",
            False,
        ),
        (
            f"{PM}: empty MatchExpressions is not a valid value will match no objects",
            _pod(required=sel(term())),
            {"foo": "bar"},
            "",
            False,
        ),
        (
            f"{PM}: Affinity but nil NodeSelector will schedule onto a node",
            _pod(),
            {"foo": "bar"},
            "",
            True,
        ),
        (
            f"{PM}: multiple matchExpressions ANDed that matches the existing node",
            _pod(required=sel(term([req("GPU", "Exists"), req("GPU", "NotIn", "AMD", "INTER")]))),
            {"GPU": "NVIDIA-GRID-K1"},
            "",
            True,
        ),
        (
            f"{PM}: multiple matchExpressions ANDed that doesn't match the existing node",
            _pod(required=sel(term([req("GPU", "Exists"), req("GPU", "In", "AMD", "INTER")]))),
            {"GPU": "NVIDIA-GRID-K1"},
            "",
            False,
        ),
        (
            f"{PM}: multiple NodeSelectorTerms ORed in affinity, matches the node's labels",
            _pod(
                required=sel(
                    term([req("foo", "In", "bar", "value2")]),
                    term([req("diffkey", "In", "wrong", "value2")]),
                )
            ),
            {"foo": "bar"},
            "",
            True,
        ),
        (
            f"{PM}: an Affinity and a PodSpec.NodeSelector both are satisfied",
            _pod({"foo": "bar"}, sel(term([req("foo", "Exists")]))),
            {"foo": "bar"},
            "",
            True,
        ),
        (
            f"{PM}: Affinity matches node's labels but the PodSpec.NodeSelector is not satisfied",
            _pod({"foo": "bar"}, sel(term([req("foo", "Exists")]))),
            {"foo": "barrrrrr"},
            "",
            False,
        ),
        (
            f"{PM}: an invalid value in Affinity term won't be scheduled onto the node",
            _pod(required=sel(term([req("foo", "NotIn", "invalid value: ___@#$%^")]))),
            {"foo": "bar"},
            "",
            False,
        ),
        (
            f"{PM}: matchFields using In operator that matches the existing node",
            _pod(required=sel(term(fields=[req("metadata.name", "In", "node_1")]))),
            {},
            "node_1",
            True,
        ),
        (
            f"{PM}: matchFields using In operator that does not match the existing node",
            _pod(required=sel(term(fields=[req("metadata.name", "In", "node_1")]))),
            {},
            "node_2",
            False,
        ),
        (
            f"{PM}: two terms: matchFields does not match, but matchExpressions matches",
            _pod(
                required=sel(
                    term(fields=[req("metadata.name", "In", "node_1")]),
                    term([req("foo", "In", "bar")]),
                )
            ),
            {"foo": "bar"},
            "node_2",
            True,
        ),
        (
            f"{PM}: one term: matchFields does not match, but matchExpressions matches",
            _pod(
                required=sel(
                    term([req("foo", "In", "bar")], [req("metadata.name", "In", "node_1")])
                )
            ),
            {"foo": "bar"},
            "node_2",
            False,
        ),
        (
            f"{PM}: one term: both matchFields and matchExpressions match",
            _pod(
                required=sel(
                    term([req("foo", "In", "bar")], [req("metadata.name", "In", "node_1")])
                )
            ),
            {"foo": "bar"},
            "node_1",
            True,
        ),
        (
            f"{PM}: two terms: both matchFields and matchExpressions do not match",
            _pod(
                required=sel(
                    term(fields=[req("metadata.name", "In", "node_1")]),
                    term([req("foo", "In", "not-match-to-bar")]),
                )
            ),
            {"foo": "bar"},
            "node_2",
            False,
        ),
    ],
)
def test_required_affinity(
    origin: str,
    pod: tuple[dict[str, str], NodeSelector | None],
    labels: dict[str, str],
    name: str,
    want: bool,
) -> None:
    assert compile_required(*pod).matches(labels, name) is want, origin


PS = f"{NA} TestPreferredSchedulingTermsScore"


def test_preferred_first_and_third_term_match() -> None:
    """{PS}: first and third term match → 5 + 11."""
    pref = compile_preferred(
        [
            PreferredTerm(5, term(fields=[NAME_IN_1])),
            PreferredTerm(7, term([req("unknown_label", "In", "unknown_label_val")])),
            PreferredTerm(11, term([LABEL_1])),
        ]
    )
    assert pref.score({"label_1": "label_1_val"}, "host_1") == 16


def test_preferred_zero_weight_term_is_ignored() -> None:
    """{PS}: invalid field selector but no weight, error not reported."""
    pref = compile_preferred(
        [PreferredTerm(0, term(fields=[req("metadata.name", "In", "a", "b")]))]
    )
    assert pref.terms == ()
    assert pref.score({}, "host_1") == 0


def test_preferred_invalid_terms_score_nothing() -> None:
    """{PS}: invalid field selector and label selector (errors are per term)."""
    pref = compile_preferred(
        [
            PreferredTerm(1, term(fields=[req("metadata.name", "In", "host_1", "host_2")])),
            PreferredTerm(1, term([LABEL_1], [NAME_IN_1])),
            PreferredTerm(1, term([req("invalid key", "In", "label_value")])),
        ]
    )
    assert [bool(t.errors) for _, t in pref.terms] == [True, False, True]
    assert pref.score({"label_1": "label_1_val"}, "host_1") == 1


NR = f"{NA} TestNodeSelectorRequirementsAsSelector"


@pytest.mark.parametrize(
    ("origin", "requirement", "error"),
    [
        (f"{NR}: In", req("foo", "In", "bar", "baz"), False),
        (f"{NR}: Exists with values", req("foo", "Exists", "bar", "baz"), True),
        (f"{NR}: Gt", req("foo", "Gt", "1"), False),
        (f"{NR}: Lt", req("bar", "Lt", "7"), False),
        ("labels.NewRequirement: In without values", req("foo", "In"), True),
        ("labels.NewRequirement: Gt with two values", req("foo", "Gt", "1", "2"), True),
        ("labels.NewRequirement: Gt with a non-integer", req("foo", "Gt", "1.5"), True),
        ("labels.NewRequirement: unknown operator", req("foo", "Equals", "x"), True),
        ("labels.NewRequirement: key with two slashes", req("a/b/c", "Exists"), True),
        ("labels.NewRequirement: DNS prefix", req("example.com/gpu", "Exists"), False),
    ],
)
def test_requirement_parsing(
    origin: str, requirement: NodeSelectorRequirement, error: bool
) -> None:
    assert bool(compile_term(term([requirement])).errors) is error, origin


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("7", 7),
        ("-7", -7),
        ("+7", 7),
        ("0204", 204),
        (" 7", None),
        ("7 ", None),
        ("1_000", None),
        ("0x10", None),
        ("1e3", None),
        ("", None),
        ("+", None),
        ("٣", None),  # Arabic-Indic digit: Python's int() accepts it, Go does not
        ("9223372036854775807", 2**63 - 1),
        ("9223372036854775808", None),
        ("-9223372036854775808", -(2**63)),
        ("-9223372036854775809", None),
    ],
)
def test_go_parse_int(text: str, want: int | None) -> None:
    assert parse_go_int64(text) == want


@pytest.mark.parametrize(
    ("label", "op", "value", "want"),
    [
        ("10", "Gt", "7", True),
        ("7", "Gt", "7", False),
        ("3", "Lt", "7", True),
        ("1_000", "Gt", "7", False),
        (" 70", "Gt", "7", False),
        ("0x10", "Gt", "7", False),
        ("abc", "Lt", "7", False),
    ],
)
def test_gt_lt_on_labels(label: str, op: str, value: str, want: bool) -> None:
    r = compile_required({}, sel(term([req("n", op, value)])))
    assert r.matches({"n": label}, "node") is want
    assert r.matches({}, "node") is False


@given(st.integers(min_value=-(2**64), max_value=2**64))
def test_go_parse_int_round_trips_in_range(n: int) -> None:
    expected = n if -(2**63) <= n < 2**63 else None
    assert parse_go_int64(str(n)) == expected


@given(st.text(max_size=8))
def test_go_parse_int_agrees_with_a_strict_reading(text: str) -> None:
    body = text[1:] if text[:1] in "+-" else text
    ok = body != "" and all(c in "0123456789" for c in body)
    got = parse_go_int64(text)
    if ok and -(2**63) <= int(text) < 2**63:
        assert got == int(text)
    else:
        assert got is None


keys = st.sampled_from(["a", "b", "c"])
vals = st.sampled_from(["1", "2", "x"])
labels_st = st.dictionaries(keys, vals, max_size=3)
reqs = st.builds(
    NodeSelectorRequirement,
    keys,
    st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]),
    st.lists(vals, min_size=1, max_size=2).map(tuple),
)


@given(st.lists(st.lists(reqs, min_size=1, max_size=3), min_size=1, max_size=3), labels_st)
def test_terms_are_ored_and_expressions_anded(
    terms: list[list[NodeSelectorRequirement]], labels: dict[str, str]
) -> None:
    """A selector of several terms matches exactly when one of its single-term selectors does."""
    whole = compile_required({}, sel(*(term(t) for t in terms))).matches(labels, "n")
    parts = [compile_required({}, sel(term(t))).matches(labels, "n") for t in terms]
    assert whole is any(parts)
