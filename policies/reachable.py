"""What to size for when no replica count can meet a latency bound.

Adding replicas lowers the load per replica, so a modelled latency falls towards its *floor*: the
latency of one request on an idle replica (a prompt's prefill, a token's step, a service time).
When the floor itself is above the bound, no count meets it, and sizing for the bound would hold
``replicas.max`` forever while buying almost nothing (ai-dynamo/dynamo#11624). Instead the bound
is moved to just above the floor: the count then stops where one more replica would improve the
modelled latency by less than :data:`NEAR_FLOOR` of the floor, and the proposal says why.
"""

from __future__ import annotations

from dataclasses import dataclass

NEAR_FLOOR = 0.10
"""A latency within this fraction of its floor is as good as more replicas can make it."""


@dataclass(frozen=True, slots=True)
class Bound:
    """The bound to size for, and why it differs from the policy's (``None``: it does not)."""

    value: float
    unreachable: str | None = None


def effective_bound(name: str, bound: float, floor: float) -> Bound:
    """``bound`` if the ``floor`` meets it, else the floor plus :data:`NEAR_FLOOR` of it."""
    if floor <= bound:
        return Bound(bound)
    near = floor * (1.0 + NEAR_FLOOR)
    return Bound(
        near,
        f"{name} bound {_ms(bound)} is below {_ms(floor)}, what a request takes on an idle"
        f" replica, so no count meets it: sized for {_ms(near)} instead (within"
        f" {NEAR_FLOOR:.0%} of that floor)",
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.4g}ms" if seconds < 1 else f"{seconds:.4g}s"
