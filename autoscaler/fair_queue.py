"""Query slots shared fairly between tenants (namespaces).

The controller holds a fixed number of Prometheus queries in flight. With one first-come
semaphore, 200 hung queries of one team held every slot and another team's policy went 30 s
without a decision. Here each tenant may hold at most ``per_tenant`` slots, and a freed slot goes
to the tenants with waiters in turn (round robin), so a tenant that floods or hangs fills only
its own share, and every other tenant's next query waits for at most one slot to free.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator


class FairQueue:
    """``async with queue.slot(tenant):`` runs the block once a slot is granted.

    Invariants: at most ``total`` slots are held, at most ``per_tenant`` by one tenant, and no
    slot stays free while a tenant below its share is waiting (work conserving). A waiter that
    is cancelled (its deadline passed) leaves the queue without holding or leaking a slot.
    """

    def __init__(self, total: int, per_tenant: int) -> None:
        if total < 1 or per_tenant < 1:
            raise ValueError("total and per_tenant must be at least 1")
        self.total = total
        self.per_tenant = min(per_tenant, total)
        self.held = 0
        self._held_by: dict[str, int] = {}
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}
        self._turns: deque[str] = deque()
        """Tenants with waiters, in the order they get the next free slot."""

    def held_by(self, tenant: str) -> int:
        return self._held_by.get(tenant, 0)

    def waiting(self, tenant: str | None = None) -> int:
        if tenant is not None:
            return len(self._waiting.get(tenant, ()))
        return sum(len(q) for q in self._waiting.values())

    @contextlib.asynccontextmanager
    async def slot(self, tenant: str) -> AsyncIterator[None]:
        await self._acquire(tenant)
        try:
            yield
        finally:
            self._release(tenant)

    async def _acquire(self, tenant: str) -> None:
        if not self._turns and self.held < self.total and self.held_by(tenant) < self.per_tenant:
            self._take(tenant)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._waiting.get(tenant)
        if queue is None:
            queue = self._waiting[tenant] = deque()
            self._turns.append(tenant)
        queue.append(future)
        self._dispatch()  # free slots while others wait at their share: this one may go now
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release(tenant)  # granted just before the cancellation landed
            else:
                self._forget(tenant, future)
            raise

    def _take(self, tenant: str) -> None:
        self.held += 1
        self._held_by[tenant] = self._held_by.get(tenant, 0) + 1

    def _release(self, tenant: str) -> None:
        self.held -= 1
        left = self._held_by[tenant] - 1
        if left:
            self._held_by[tenant] = left
        else:
            del self._held_by[tenant]
        self._dispatch()

    def _forget(self, tenant: str, future: asyncio.Future[None]) -> None:
        queue = self._waiting.get(tenant)
        if queue is None:
            return
        with contextlib.suppress(ValueError):
            queue.remove(future)
        if not queue:
            del self._waiting[tenant]
            self._turns.remove(tenant)

    def _dispatch(self) -> None:
        """Grant free slots to waiting tenants in turn, skipping those at their share."""
        skipped = 0
        while self.held < self.total and self._turns and skipped < len(self._turns):
            tenant = self._turns[0]
            if self.held_by(tenant) >= self.per_tenant:
                self._turns.rotate(-1)
                skipped += 1
                continue
            queue = self._waiting[tenant]
            future = queue.popleft()
            if not queue:
                del self._waiting[tenant]
                self._turns.popleft()
            else:
                self._turns.rotate(-1)
            skipped = 0
            self._take(tenant)
            future.set_result(None)
