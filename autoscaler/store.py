"""The latest replica count per policy, shared by the decision loop and the metrics servers.

Every replica of the controller decides and serves; only freshness differs. A value is *fresh*
while it rests on data: a decision made with every metric missing (Prometheus down) keeps the
count it held but does not renew ``fresh_at``, so after ``--stale-after`` the external metrics
API answers with an error and the HPA holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Published:
    namespace: str
    policy: str
    replicas: int
    decided_at: float
    """Wall-clock time of the decision that produced ``replicas``."""
    fresh_at: float
    """Wall-clock time of the latest decision that rested on at least one metric."""
    note: str = ""
    """Why the value is not fresh, when it is not (for the stale error message)."""


class DecisionStore:
    """``(namespace, policy) -> Published``, with a per-namespace index for list requests."""

    def __init__(self) -> None:
        self._by_namespace: dict[str, dict[str, Published]] = {}

    def put(self, value: Published) -> None:
        self._by_namespace.setdefault(value.namespace, {})[value.policy] = value

    def get(self, namespace: str, policy: str) -> Published | None:
        return self._by_namespace.get(namespace, {}).get(policy)

    def remove(self, namespace: str, policy: str) -> None:
        policies = self._by_namespace.get(namespace)
        if policies is not None:
            policies.pop(policy, None)
            if not policies:
                del self._by_namespace[namespace]

    def in_namespace(self, namespace: str) -> Iterator[Published]:
        yield from self._by_namespace.get(namespace, {}).values()

    def __len__(self) -> int:
        return sum(len(p) for p in self._by_namespace.values())
