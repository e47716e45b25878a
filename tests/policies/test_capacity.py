"""decide() when the cluster has no room: unschedulable pods cap the count at what is already
asked for (no ratchet), never block a scale-down, and leave no trace once they are placed."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from policies.decide import decide
from policies.decide_types import Snapshot, State
from policies.schema import ScalingPolicy
from tests.policies.test_decide import FREE, LAT, maybe, policy, scenario

Scenario = tuple[ScalingPolicy, State, int, float]


def test_unschedulable_pods_hold_a_scale_up_and_say_so() -> None:
    p = policy(behavior=FREE)
    values = {"queue": 37.0, "latency": 2.0, "load": 21.0}
    free, _ = decide(p, Snapshot(values, 6), State(), 0.0)
    held, _ = decide(p, Snapshot(values, 6, unschedulable=2), State(), 0.0)
    assert free.desired_replicas == 10
    assert (held.desired_replicas, held.recommended, held.unschedulable) == (6, 10, 2)
    assert held.limited_by == "capacity (2 unschedulable)"
    assert "2 pods of the target cannot be scheduled" in held.steps[-2]
    assert held.reason == (
        "keep 6 replicas: queue proposes 10, limited by capacity (2 unschedulable)"
    )


def test_a_scale_down_goes_ahead_with_pods_pending() -> None:
    p = policy(behavior=FREE)
    values = {"queue": 4.0, "latency": 0.5, "load": 1.0}
    d, _ = decide(p, Snapshot(values, 9, unschedulable=3), State(), 0.0)
    assert d.desired_replicas < 9 and d.limited_by != "capacity (3 unschedulable)"


@settings(max_examples=300, deadline=None)
@given(sc=scenario(), q=maybe, lat=maybe, load=maybe, pending=st.integers(1, 50))
def test_pending_pods_only_cap_the_count_at_current(
    sc: Scenario, q: float | None, lat: float | None, load: float | None, pending: int
) -> None:
    """With pods pending the decision is the free one capped at ``current`` (no ratchet, no
    effect on a scale-down), and the state for the next tick is the same (so the first tick
    after the pods are placed decides as if they had never waited)."""
    p, state, current, now = sc
    values = {"queue": q, "latency": lat, "load": load}
    free, free_state = decide(p, Snapshot(values, current), state, now)
    held, held_state = decide(p, Snapshot(values, current, unschedulable=pending), state, now)
    assert held.desired_replicas <= current or current < p.replicas.min
    assert held.desired_replicas == min(free.desired_replicas, max(current, p.replicas.min))
    assert held_state == free_state


def _world(policy: ScalingPolicy, capacity: list[int], load: float, see_pending: bool) -> list[int]:
    """Ticks of a toy cluster: the HPA sets spec to each decision at once, ``capacity[t]`` pods
    fit, and the latency seen is the load over the pods that run (the ratchet's cause)."""
    spec, state, specs = 4, State(), []
    for t, room in enumerate(capacity):
        running = min(spec, room)
        latency = load / max(running, 1)
        pending = spec - running if see_pending else 0
        snapshot = Snapshot({"latency": latency}, spec, running, pending)
        decision, state = decide(policy, snapshot, state, 15.0 * t)
        spec = decision.desired_replicas
        specs.append(spec)
    return specs


def test_a_latency_rule_ratchets_to_max_without_the_pending_count_and_not_with_it() -> None:
    p = replace(policy(1, 32, behavior=FREE), metrics=(LAT,))
    # Load 16 at an SLO of 2 s needs 8 replicas; the cluster holds 5, then 20 from tick 10.
    capacity = [5] * 10 + [20] * 10
    blind = _world(p, capacity, 16.0, see_pending=False)
    seeing = _world(p, capacity, 16.0, see_pending=True)
    assert max(blind[:10]) == 32  # latency stays high whatever spec says: up to max
    assert max(seeing[:10]) == seeing[0] < 32  # one step up, then held while pods wait
    assert seeing[-1] == math.ceil(16.0 / 2.0)  # room again: it settles at what the load needs
    # and once the load goes, the count comes down although pods are pending
    p_down = _world(p, [5] * 6, 1.0, see_pending=True)
    assert p_down[-1] < 4
