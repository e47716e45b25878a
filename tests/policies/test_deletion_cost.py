"""The deletion-cost planner: idle pods cost 0, costs only rise with load, and the writes of a
tick are the changed costs, the ones to or from idle first, never more than the cap."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from policies.deletion_cost import Write, cost, plan

PODS = st.sampled_from([f"llama-{i}" for i in range(8)])
LOADS = st.dictionaries(PODS, st.floats(0, 500, allow_nan=False))
WRITTEN = st.dictionaries(PODS, st.integers(0, 10))


def test_idle_is_zero_and_busier_is_dearer() -> None:
    assert [cost(x) for x in (0, 0.4, 1, 2, 3, 4, 7, 8, 250)] == [0, 0, 1, 2, 2, 3, 3, 4, 8]
    assert cost(float("nan")) == 0 and cost(-3) == 0


@given(a=st.floats(0, 1e6), b=st.floats(0, 1e6))
def test_more_requests_never_cost_less(a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    assert cost(lo) <= cost(hi)


@given(observed=LOADS, written=WRITTEN, most=st.integers(0, 10))
def test_writes_are_the_changed_costs_up_to_the_cap(
    observed: dict[str, float], written: dict[str, int], most: int
) -> None:
    writes = plan(observed, written, most)
    changed = {p for p, r in observed.items() if written.get(p) != cost(r)}
    assert len(writes) == min(most, len(changed))
    assert {w.pod for w in writes} <= changed
    assert all(w.cost == cost(observed[w.pod]) for w in writes)
    # after writing them all, nothing is left to write (it converges, no flapping)
    done = {**written, **{w.pod: w.cost for w in plan(observed, written, len(observed))}}
    assert plan(observed, done, 10) == ()


@given(observed=LOADS, written=WRITTEN)
def test_a_pod_going_idle_is_written_before_any_busy_one_changes(
    observed: dict[str, float], written: dict[str, int]
) -> None:
    writes = plan(observed, written, 1)
    idle_edges = [
        p
        for p, r in observed.items()
        if written.get(p) != cost(r) and (cost(r) == 0 or written.get(p) in (None, 0))
    ]
    if writes and idle_edges:
        assert writes[0].pod in idle_edges


def test_an_example() -> None:
    observed = {"a": 0.0, "b": 12.0, "c": 3.0}
    assert plan(observed, {"a": 2, "b": 3, "c": 2}, 5) == (Write("a", 0), Write("b", 4))
