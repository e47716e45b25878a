"""Lease-based leader election against the API stand-in."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubernetes.aio import client as kclient

from autoscaler.leader import LeaderElector, LeaderSettings, micro_time, parse_time
from tests.autoscaler.helpers import wait_until
from tests.support.kube_standin import KubeStandIn

DEFAULTS = LeaderSettings(namespace="gpuscale-system", name="gpuscale-controller")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_micro_time_round_trips_to_the_microsecond(seconds: float) -> None:
    text = micro_time(seconds)
    assert text.endswith("Z") and len(text.split(".")[1]) == 7
    parsed = parse_time(text)
    assert parsed is not None and abs(parsed - seconds) <= 1e-6 + 1e-9 * seconds


def test_parse_time_handles_offsets_and_garbage() -> None:
    assert parse_time("2026-01-01T01:00:00+01:00") == parse_time("2026-01-01T00:00:00Z")
    assert parse_time("yesterday") is None
    assert parse_time(None) is None


def _elector(api: Any, identity: str, clock: FakeClock, **overrides: Any) -> LeaderElector:
    return LeaderElector(
        kclient.CoordinationV1Api(api),
        replace(DEFAULTS, identity=identity, **overrides),
        clock=clock,
    )


async def test_failover_within_the_lease_duration_with_default_settings(
    kube: KubeStandIn, kube_client: Any
) -> None:
    clock = FakeClock()
    a = _elector(kube_client, "a", clock)
    b = _elector(kube_client, "b", clock)

    await a.step()
    assert a.is_leader
    wait = await b.step()
    assert not b.is_leader and wait == DEFAULTS.retry_period
    lease = kube.store.get("leases", "gpuscale-system", "gpuscale-controller")
    assert lease is not None and lease["spec"]["holderIdentity"] == "a"
    assert lease["spec"]["leaseDurationSeconds"] == 15

    died = clock.now  # `a` renewed last at this moment and then died.
    for _ in range(20):
        wait = await b.step()
        if b.is_leader:
            break
        clock.now += wait
        # `a` stops counting itself leader once its renew deadline passed without a renewal.
        assert not (a.is_leader and b.is_leader)
    assert b.is_leader
    assert clock.now - died <= DEFAULTS.lease_duration + 0.05
    assert not a.is_leader
    lease = kube.store.get("leases", "gpuscale-system", "gpuscale-controller")
    assert lease is not None and lease["spec"]["holderIdentity"] == "b"
    assert lease["spec"]["leaseTransitions"] == 1


async def test_follower_never_takes_a_lease_that_is_being_renewed(
    kube: KubeStandIn, kube_client: Any
) -> None:
    clock = FakeClock()
    a = _elector(kube_client, "a", clock)
    b = _elector(kube_client, "b", clock)
    for _ in range(30):
        await a.step()
        await b.step()
        assert a.is_leader and not b.is_leader
        clock.now += DEFAULTS.retry_period


async def test_leader_that_cannot_renew_stops_before_anyone_can_take_over(
    kube: KubeStandIn, kube_client: Any
) -> None:
    clock = FakeClock()
    a = _elector(kube_client, "a", clock)
    await a.step()
    kube.faults.fail(None, "*/leases/*", status=500, times=None)
    start = clock.now
    while a.is_leader:
        clock.now += await a.step()
    assert clock.now - start <= DEFAULTS.renew_deadline + DEFAULTS.retry_period
    assert clock.now - start < DEFAULTS.lease_duration


async def test_conflicting_writes_leave_one_leader(kube: KubeStandIn, kube_client: Any) -> None:
    clock = FakeClock()
    electors = [_elector(kube_client, name, clock) for name in "abcde"]
    await asyncio.gather(*(e.step() for e in electors))
    assert sum(e.is_leader for e in electors) == 1


@pytest.mark.slow
async def test_killed_leader_is_replaced_and_there_are_never_two_writers(
    kube: KubeStandIn, kube_client: Any
) -> None:
    """Real time, shortened settings (3 s lease): the survivor takes over within the lease."""
    fast: dict[str, Any] = {"lease_duration": 3.0, "renew_deadline": 2.0, "retry_period": 0.5}
    a = LeaderElector(
        kclient.CoordinationV1Api(kube_client),
        replace(DEFAULTS, identity="a", **fast),
        release_on_exit=False,
    )
    b = LeaderElector(
        kclient.CoordinationV1Api(kube_client), replace(DEFAULTS, identity="b", **fast)
    )
    both: list[bool] = []
    loop = asyncio.get_running_loop()

    async def watch_writers() -> None:
        while True:
            both.append(a.is_leader and b.is_leader)
            await asyncio.sleep(0.02)

    task_a = asyncio.create_task(a.run())
    await wait_until(lambda: a.is_leader, within=5)
    task_b = asyncio.create_task(b.run())
    watcher = asyncio.create_task(watch_writers())
    try:
        await wait_until(lambda: b._observed is not None, within=5)  # b has seen a's lease
        task_a.cancel()  # killed: no release
        with contextlib.suppress(asyncio.CancelledError):
            await task_a
        killed = loop.time()
        await wait_until(lambda: b.is_leader, within=10, every=0.01)
        assert loop.time() - killed <= 3.0 + 0.6
    finally:
        for t in (task_b, watcher):
            t.cancel()
        await asyncio.gather(task_b, watcher, return_exceptions=True)
    assert not any(both)


async def test_clean_shutdown_hands_over_at_once(kube: KubeStandIn, kube_client: Any) -> None:
    clock = FakeClock()
    a = _elector(kube_client, "a", clock)
    b = _elector(kube_client, "b", clock)
    task = asyncio.create_task(a.run())
    await wait_until(lambda: a.is_leader, within=5)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    lease = kube.store.get("leases", "gpuscale-system", "gpuscale-controller")
    assert lease is not None and not lease["spec"].get("holderIdentity")
    await b.step()
    assert b.is_leader
