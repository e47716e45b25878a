"""Taints and tolerations, with cases ported from upstream tests (origin cited per case)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extender.objects import Taint, Toleration
from extender.scoring import MAX_NODE_SCORE, normalize_scores
from extender.taints import (
    count_intolerable_prefer_no_schedule,
    filter_reason,
    find_untolerated,
    tolerates,
)

HELPERS = "component-helpers/scheduling/corev1/helpers_test.go TestFindMatchingUntoleratedTaint"
TT = "plugins/tainttoleration/taint_toleration_test.go"


@pytest.mark.parametrize(
    ("origin", "tolerations", "taints", "applies", "tolerated"),
    [
        (f"{HELPERS}: empty tolerations tolerate empty taints", [], [], None, True),
        (
            f"{HELPERS}: non-empty tolerations tolerate empty taints",
            [Toleration("foo", "Exists", effect="NoSchedule")],
            [],
            None,
            True,
        ),
        (
            f"{HELPERS}: tolerations match all taints, expect tolerated",
            [Toleration("foo", "Exists", effect="NoSchedule")],
            [Taint("foo", effect="NoSchedule")],
            None,
            True,
        ),
        (
            f"{HELPERS}: tolerations don't match taints, but no taints apply to the filter",
            [Toleration("foo", "Exists", effect="NoSchedule")],
            [Taint("bar", effect="NoSchedule")],
            lambda t: False,
            True,
        ),
        (
            f"{HELPERS}: no filterFunc indicated, means all taints apply to the filter",
            [Toleration("foo", "Exists", effect="NoSchedule")],
            [Taint("bar", effect="NoSchedule")],
            None,
            False,
        ),
        (
            f"{HELPERS}: tolerations match taints, expect tolerated",
            [Toleration("foo", "Exists", effect="NoExecute")],
            [Taint("foo", effect="NoExecute"), Taint("bar", effect="NoSchedule")],
            lambda t: t.effect == "NoExecute",
            True,
        ),
        (
            f"{HELPERS}: numeric Gt operator (feature gate off: Gt tolerates nothing)",
            [Toleration("node.kubernetes.io/sla", "Gt", "750", "NoSchedule")],
            [Taint("node.kubernetes.io/sla", "950", "NoSchedule")],
            None,
            False,
        ),
    ],
)
def test_find_untolerated(origin, tolerations, taints, applies, tolerated) -> None:  # type: ignore[no-untyped-def]
    assert (find_untolerated(taints, tolerations, applies) is None) is tolerated, origin


@pytest.mark.parametrize(
    ("origin", "tolerations", "taints", "passes"),
    [
        (
            f"{TT} TestTaintTolerationFilter: A pod having no tolerations can't be scheduled "
            "onto a node with nonempty taints",
            [],
            [Taint("dedicated", "user1", "NoSchedule")],
            False,
        ),
        (
            f"{TT} TestTaintTolerationFilter: ...dedicated node assigned to user1, NoSchedule",
            [Toleration("dedicated", value="user1", effect="NoSchedule")],
            [Taint("dedicated", "user1", "NoSchedule")],
            True,
        ),
        (
            f"{TT} TestTaintTolerationFilter: ...can't be scheduled on a node assigned to user2",
            [Toleration("dedicated", "Equal", "user2", "NoSchedule")],
            [Taint("dedicated", "user1", "NoSchedule")],
            False,
        ),
        (
            f"{TT} TestTaintTolerationFilter: toleration uses operator Exists",
            [Toleration("foo", "Exists", effect="NoSchedule")],
            [Taint("foo", "bar", "NoSchedule")],
            True,
        ),
        (
            f"{TT} TestTaintTolerationFilter: multiple tolerations, multiple taints, all tolerated",
            [
                Toleration("dedicated", "Equal", "user2", "NoSchedule"),
                Toleration("foo", "Exists", effect="NoSchedule"),
            ],
            [Taint("dedicated", "user2", "NoSchedule"), Taint("foo", "bar", "NoSchedule")],
            True,
        ),
        (
            f"{TT} TestTaintTolerationFilter: keys and values match but (non-empty) effect doesn't",
            [Toleration("foo", "Equal", "bar", "PreferNoSchedule")],
            [Taint("foo", "bar", "NoSchedule")],
            False,
        ),
        (
            f"{TT} TestTaintTolerationFilter: effect of toleration is empty, taint NoSchedule",
            [Toleration("foo", "Equal", "bar")],
            [Taint("foo", "bar", "NoSchedule")],
            True,
        ),
        (
            f"{TT} TestTaintTolerationFilter: key/value don't match but taint is PreferNoSchedule",
            [Toleration("dedicated", "Equal", "user2", "NoSchedule")],
            [Taint("dedicated", "user1", "PreferNoSchedule")],
            True,
        ),
        (
            f"{TT} TestTaintTolerationFilter: no toleration, taint is PreferNoSchedule",
            [],
            [Taint("dedicated", "user1", "PreferNoSchedule")],
            True,
        ),
        (
            "issue 4: empty key with Exists tolerates everything",
            [Toleration("", "Exists")],
            [Taint("a", "1", "NoSchedule"), Taint("b", "", "NoExecute")],
            True,
        ),
    ],
)
def test_filter(
    origin: str, tolerations: list[Toleration], taints: list[Taint], passes: bool
) -> None:
    assert (filter_reason(taints, tolerations) is None) is passes, origin


def test_filter_reason_names_the_taint() -> None:
    reason = filter_reason([Taint("gpu", "dedicated", "NoSchedule")], [])
    assert reason == "node(s) had untolerated taint {gpu: dedicated}"


def _taint_scores(tolerations: list[Toleration], nodes: list[list[Taint]]) -> list[int]:
    counts = [count_intolerable_prefer_no_schedule(t, tolerations) for t in nodes]
    return normalize_scores(counts, MAX_NODE_SCORE, reverse=True)


@pytest.mark.parametrize(
    ("origin", "tolerations", "nodes", "want"),
    [
        (
            f"{TT} TestTaintTolerationScore: node with tolerated taints scores higher",
            [Toleration("foo", "Equal", "bar", "PreferNoSchedule")],
            [[Taint("foo", "bar", "PreferNoSchedule")], [Taint("foo", "blah", "PreferNoSchedule")]],
            [100, 0],
        ),
        (
            f"{TT} TestTaintTolerationScore: all taints tolerated get the same score",
            [
                Toleration("cpu-type", "Equal", "arm64", "PreferNoSchedule"),
                Toleration("disk-type", "Equal", "ssd", "PreferNoSchedule"),
            ],
            [
                [],
                [Taint("cpu-type", "arm64", "PreferNoSchedule")],
                [
                    Taint("cpu-type", "arm64", "PreferNoSchedule"),
                    Taint("disk-type", "ssd", "PreferNoSchedule"),
                ],
            ],
            [100, 100, 100],
        ),
        (
            f"{TT} TestTaintTolerationScore: the more intolerable taints, the lower score",
            [Toleration("foo", "Equal", "bar", "PreferNoSchedule")],
            [
                [],
                [Taint("cpu-type", "arm64", "PreferNoSchedule")],
                [
                    Taint("cpu-type", "arm64", "PreferNoSchedule"),
                    Taint("disk-type", "ssd", "PreferNoSchedule"),
                ],
            ],
            [100, 50, 0],
        ),
        (
            f"{TT} TestTaintTolerationScore: only PreferNoSchedule taints and tolerations count",
            [
                Toleration("cpu-type", "Equal", "arm64", "NoSchedule"),
                Toleration("disk-type", "Equal", "ssd", "NoSchedule"),
            ],
            [
                [],
                [Taint("cpu-type", "arm64", "NoSchedule")],
                [
                    Taint("cpu-type", "arm64", "PreferNoSchedule"),
                    Taint("disk-type", "ssd", "PreferNoSchedule"),
                ],
            ],
            [100, 100, 0],
        ),
        (
            f"{TT} TestTaintTolerationScore: Default behaviour No taints and tolerations",
            [],
            [[], [Taint("cpu-type", "arm64", "PreferNoSchedule")]],
            [100, 0],
        ),
    ],
)
def test_prefer_no_schedule_score(
    origin: str, tolerations: list[Toleration], nodes: list[list[Taint]], want: list[int]
) -> None:
    assert _taint_scores(tolerations, nodes) == want, origin


names = st.sampled_from(["", "a", "b"])
effects = st.sampled_from(["", "NoSchedule", "PreferNoSchedule", "NoExecute"])
tolerations_st = st.builds(
    Toleration, names, st.sampled_from(["", "Equal", "Exists"]), names, effects
)
taints_st = st.builds(Taint, names.filter(bool), names, effects.filter(bool))


@given(tolerations_st, taints_st)
def test_tolerates_matches_the_spec(t: Toleration, taint: Taint) -> None:
    """The documented rule, restated independently: effect, then key, then operator."""
    expected = (
        (not t.effect or t.effect == taint.effect)
        and (not t.key or t.key == taint.key)
        and (t.operator == "Exists" or t.value == taint.value)
    )
    assert tolerates(t, taint) is expected


@given(st.lists(tolerations_st, max_size=4), st.lists(taints_st, max_size=4))
def test_adding_a_toleration_never_adds_a_failure(
    tols: list[Toleration], taints: list[Taint]
) -> None:
    if filter_reason(taints, tols) is None:
        assert filter_reason(taints, [*tols, Toleration("", "Exists")]) is None
    assert filter_reason(taints, [*tols, Toleration("", "Exists")]) is None
