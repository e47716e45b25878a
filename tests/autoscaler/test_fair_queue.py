"""The fair query queue: shares per tenant, work conservation, cancellation without leaks."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.fair_queue import FairQueue

TENANTS = ("a", "b", "c")


@dataclass
class Client:
    tenant: str
    done: asyncio.Event = field(default_factory=asyncio.Event)
    holding: bool = False
    task: asyncio.Task[None] | None = None


async def _use(queue: FairQueue, client: Client, order: list[Client]) -> None:
    async with queue.slot(client.tenant):
        client.holding = True
        order.append(client)
        try:
            await client.done.wait()
        finally:
            client.holding = False


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def _check(queue: FairQueue, clients: list[Client]) -> None:
    holding = [c for c in clients if c.holding]
    assert queue.held == len(holding) <= queue.total
    for tenant in TENANTS:
        mine = sum(c.tenant == tenant for c in holding)
        assert queue.held_by(tenant) == mine <= queue.per_tenant
        # Work conserving: a waiting tenant below its share means every slot is taken.
        if queue.waiting(tenant) and mine < queue.per_tenant:
            assert queue.held == queue.total


ops = st.lists(
    st.tuples(st.sampled_from(("come", "come", "finish", "cancel")), st.sampled_from(TENANTS)),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6), st.integers(1, 4), ops)
async def test_shares_are_kept_and_no_slot_idles_or_leaks(
    total: int, per_tenant: int, steps: list[tuple[str, str]]
) -> None:
    queue = FairQueue(total, per_tenant)
    clients: list[Client] = []
    order: list[Client] = []
    for op, tenant in steps:
        live = [c for c in clients if c.task is not None and not c.task.done()]
        if op == "come":
            client = Client(tenant)
            client.task = asyncio.create_task(_use(queue, client, order))
            clients.append(client)
        elif op == "finish" and (held := [c for c in live if c.holding]):
            held[0].done.set()
        elif op == "cancel" and live:
            waiting = [c for c in live if not c.holding and c.tenant == tenant] or live
            assert waiting[0].task is not None
            waiting[0].task.cancel()
        await _settle()
        _check(queue, clients)
    # Within one tenant, slots are granted in arrival order.
    for tenant in TENANTS:
        granted = [clients.index(c) for c in order if c.tenant == tenant]
        assert granted == sorted(granted)
    for c in clients:
        c.done.set()
    await asyncio.gather(*(c.task for c in clients if c.task), return_exceptions=True)
    assert queue.held == 0 and queue.waiting() == 0


async def test_a_flooding_tenant_leaves_room_for_the_others() -> None:
    queue = FairQueue(total=4, per_tenant=2)
    flood = [Client("a") for _ in range(50)]
    order: list[Client] = []
    for c in flood:
        c.task = asyncio.create_task(_use(queue, c, order))
    await _settle()
    quiet = Client("b")
    quiet.task = asyncio.create_task(_use(queue, quiet, order))
    await _settle()
    assert quiet.holding and queue.held_by("a") == 2 and queue.waiting("a") == 48
    for c in [*flood, quiet]:
        c.done.set()
    await asyncio.gather(*(c.task for c in [*flood, quiet] if c.task))


async def test_freed_slots_go_to_waiting_tenants_in_turn() -> None:
    queue = FairQueue(total=1, per_tenant=1)
    order: list[Client] = []
    first = Client("a")
    first.task = asyncio.create_task(_use(queue, first, order))
    await _settle()
    waiters = [Client(t) for t in ("a", "a", "a", "b", "c")]
    for c in waiters:
        c.task = asyncio.create_task(_use(queue, c, order))
        await _settle()
    for c in [first, *waiters]:
        c.done.set()
    await asyncio.gather(*(c.task for c in [first, *waiters] if c.task))
    assert [c.tenant for c in order] == ["a", "a", "b", "c", "a", "a"]


def test_shares_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        FairQueue(0, 1)
