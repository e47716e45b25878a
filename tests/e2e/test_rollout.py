"""The judging of a rollout watch (``rollout.py``): outages of the served metric, leaders."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.e2e.rollout import (
    Answer,
    Leadership,
    double_claims,
    holders,
    is_leader_gauge,
    outages,
)


def _answers(oks: list[bool]) -> list[Answer]:
    # One read a second, each 0.25 s long.
    return [Answer(float(i), i + 0.25, ok, "" if ok else f"fail {i}") for i, ok in enumerate(oks)]


def test_no_failure_no_outage() -> None:
    assert outages(_answers([True] * 5)) == []


def test_a_run_of_failures_is_one_outage_with_both_measures() -> None:
    [out] = outages(_answers([True, False, False, True, True]))
    assert out.failures == 2
    assert out.observed == 2.0  # 1.0 (first failure asked) -> 3.0 (next good one asked)
    assert out.bound == 3.25 - 0.25  # last good answer ended 0.25 -> next good one ended 3.25
    assert out.detail == "fail 1"


def test_a_failure_at_the_end_lasts_until_the_last_read_ended() -> None:
    [out] = outages(_answers([True, True, False, False]))
    assert out.observed == 3.25 - 2.0
    assert out.bound == 3.25 - 1.25


@given(st.lists(st.booleans(), max_size=40))
def test_outages_count_the_runs_of_failures(oks: list[bool]) -> None:
    runs = sum(1 for i, ok in enumerate(oks) if not ok and (i == 0 or oks[i - 1]))
    found = outages(_answers(oks))
    assert len(found) == runs
    assert sum(o.failures for o in found) == oks.count(False)
    assert all(0 < o.observed <= o.bound for o in found)


def test_holders_in_order_without_releases_or_repeats() -> None:
    looks = [
        Leadership(t, h, frozenset())
        for t, h in enumerate(["", "a", "a", "", "b", "b", "a"], start=1)
    ]
    assert holders(looks) == ["a", "b", "a"]


def test_double_claims_are_looks_with_two_claimants() -> None:
    one = Leadership(1.0, "a", frozenset({"a"}))
    two = Leadership(2.0, "a", frozenset({"a", "b"}))
    assert double_claims([one, two, one]) == [two]


def test_is_leader_gauge() -> None:
    head = "# HELP gpuscale_is_leader x\n# TYPE gpuscale_is_leader gauge\n"
    assert is_leader_gauge(head + "gpuscale_is_leader 1.0\n") is True
    assert is_leader_gauge(head + "gpuscale_is_leader 0.0\n") is False
    with pytest.raises(ValueError, match="no gpuscale_is_leader"):
        is_leader_gauge("# TYPE other gauge\nother 1\n")
