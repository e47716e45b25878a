"""Lease-based leader election (``coordination.k8s.io/v1``), client-go's algorithm in brief.

Only the leader writes HPAs, Events and status annotations; every replica decides and serves.

- The leader renews every ``retry_period``. It stops counting itself leader ``renew_deadline``
  after the start of its last successful renewal, which is earlier than anyone else may take
  over (``lease_duration``), so two writers never overlap while clocks agree within
  ``lease_duration - renew_deadline``.
- A follower takes over once the lease has not changed for ``lease_duration`` as seen by its own
  monotonic clock, or once ``renewTime + leaseDurationSeconds`` has passed by the wall clock,
  whichever comes first. The follower wakes exactly at that moment rather than on its next poll,
  so with the defaults (15 s / 10 s / 2 s) failover happens within 15 s of the leader's last
  renewal. A leader that shuts down cleanly releases the lease for an immediate handover.

We do not use ``kubernetes.aio.leaderelection``: it measures expiry with naive local datetimes
and offers no clean release or injected clock.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from runtime.kube import KubeError, call, metadata

log = logging.getLogger(__name__)


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wall(self) -> float: ...


class LoopClock:
    """The event loop's clock (fake under looptime) and the system wall clock."""

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    def wall(self) -> float:
        return time.time()


@dataclass(frozen=True, slots=True)
class LeaderSettings:
    namespace: str = "gpuscale-system"
    name: str = "gpuscale-controller"
    identity: str = "gpuscale"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


def micro_time(seconds: float) -> str:
    """``metav1.MicroTime`` as the API writes it: RFC 3339 with six fractional digits."""
    whole = int(seconds)
    micros = round((seconds - whole) * 1_000_000)
    if micros == 1_000_000:
        whole, micros = whole + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{micros:06d}Z"


_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)")


def parse_time(text: Any) -> float | None:
    """Seconds since the epoch from an RFC 3339 timestamp, or None when it is not one."""
    match = _TIME.fullmatch(str(text)) if text else None
    if match is None:
        return None
    y, mo, d, h, mi, s = (int(match[i]) for i in range(1, 7))
    seconds = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)) + float(match[7] or 0)
    if match[8] != "Z":
        sign = 1 if match[8][0] == "+" else -1
        seconds -= sign * (int(match[8][1:3]) * 3600 + int(match[8][4:6]) * 60)
    return seconds


class AlwaysLeader:
    """``--no-leader-elect``: this replica writes."""

    is_leader = True

    async def run(self) -> None:
        await asyncio.Event().wait()


class LeaderElector:
    """Campaign for the Lease until cancelled; ``is_leader`` says whether to write now."""

    def __init__(
        self,
        api: Any,
        settings: LeaderSettings,
        *,
        clock: Clock | None = None,
        on_change: Callable[[bool], None] | None = None,
        release_on_exit: bool = True,
    ) -> None:
        self._api = api
        self.release_on_exit = release_on_exit
        self.settings = settings
        self._clock = clock or LoopClock()
        self._on_change = on_change
        self._valid_until = float("-inf")
        self._observed: tuple[str, str, str] | None = None
        self._observed_at = 0.0
        self._leading = False

    @property
    def is_leader(self) -> bool:
        return self._leading and self._clock.monotonic() < self._valid_until

    async def run(self) -> None:
        """Acquire and renew until cancelled; release the lease on the way out if held."""
        try:
            while True:
                wait = await self.step()
                await asyncio.sleep(wait)
        finally:
            if self.is_leader and self.release_on_exit:
                await asyncio.shield(self._release())
            self._set_leading(False)

    async def step(self) -> float:
        """One acquire-or-renew attempt; returns the seconds to wait before the next."""
        attempt_start = self._clock.monotonic()
        if self._leading and not self.is_leader:
            # The renew deadline passed without a renewal (the process was paused, or the API
            # unreachable): that is the end of this term, even if the renewal below succeeds.
            # Whoever waits for leadership must hear of the new term.
            self._set_leading(False)
        try:
            held, expires_in = await self._try_acquire_or_renew()
        except (KubeError, OSError, TimeoutError) as exc:
            log.warning("lease update failed", extra={"error": str(exc)})
            held, expires_in = False, None
        wait = self.settings.retry_period
        if held:
            self._valid_until = attempt_start + self.settings.renew_deadline
            self._set_leading(True)
        else:
            if expires_in is not None:
                # Someone else holds it: stop writing now, wake when it expires.
                self._valid_until = float("-inf")
                wait = min(wait, expires_in + 0.01)
            if self._leading and not self.is_leader:
                self._set_leading(False)
        return wait

    def _set_leading(self, leading: bool) -> None:
        if leading != self._leading:
            self._leading = leading
            log.info(
                "leadership changed",
                extra={"leader": leading, "identity": self.settings.identity},
            )
            if self._on_change is not None:
                self._on_change(leading)

    async def _try_acquire_or_renew(self) -> tuple[bool, float | None]:
        """``(held, seconds until the current holder's lease expires)``."""
        s = self.settings
        now_wall = self._clock.wall()
        try:
            lease = await call(self._api.read_namespaced_lease, s.name, s.namespace)
        except KubeError as exc:
            if not exc.not_found:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": s.name, "namespace": s.namespace},
                "spec": self._spec(now_wall, acquire=now_wall, transitions=0),
            }
            try:
                await call(self._api.create_namespaced_lease, s.namespace, body)
            except KubeError as exc2:
                if exc2.conflict:
                    return False, None
                raise
            return True, None
        spec = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        rv = str(metadata(lease).get("resourceVersion", ""))
        record = (holder, str(spec.get("renewTime", "")), rv)
        now = self._clock.monotonic()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        duration = float(spec.get("leaseDurationSeconds") or s.lease_duration)
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder and holder != s.identity:
            left = self._observed_at + duration - now
            renewed = parse_time(spec.get("renewTime"))
            if renewed is not None:
                left = min(left, renewed + duration - now_wall)
            if left > 0:
                return False, left
            transitions += 1
            acquire = now_wall
        elif holder == s.identity:
            acquire = parse_time(spec.get("acquireTime")) or now_wall
        else:
            transitions += 1
            acquire = now_wall
        body = dict(lease)
        body["spec"] = self._spec(now_wall, acquire=acquire, transitions=transitions)
        try:
            updated = await call(self._api.replace_namespaced_lease, s.name, s.namespace, body)
        except KubeError as exc:
            if exc.conflict:
                return False, None
            raise
        new_spec = updated.get("spec") or {}
        self._observed = (
            s.identity,
            str(new_spec.get("renewTime", "")),
            str(metadata(updated).get("resourceVersion", "")),
        )
        self._observed_at = self._clock.monotonic()
        return True, None

    def _spec(self, now_wall: float, *, acquire: float, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.settings.identity,
            "leaseDurationSeconds": round(self.settings.lease_duration),
            "acquireTime": micro_time(acquire),
            "renewTime": micro_time(now_wall),
            "leaseTransitions": transitions,
        }

    async def _release(self) -> None:
        """Hand the lease over at once: empty holder, one-second duration (as client-go does)."""
        s = self.settings
        try:
            lease = await call(self._api.read_namespaced_lease, s.name, s.namespace)
            if (lease.get("spec") or {}).get("holderIdentity") != s.identity:
                return
            now_wall = self._clock.wall()
            lease["spec"] = {
                "leaseDurationSeconds": 1,
                "acquireTime": micro_time(now_wall),
                "renewTime": micro_time(now_wall),
                "leaseTransitions": (lease.get("spec") or {}).get("leaseTransitions", 0),
            }
            await call(self._api.replace_namespaced_lease, s.name, s.namespace, lease)
            log.info("lease released", extra={"identity": s.identity})
        except (KubeError, OSError, TimeoutError) as exc:
            log.warning("lease release failed", extra={"error": str(exc)})
