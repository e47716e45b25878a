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
    variant: str = ""
    """The variant of a policy with ``variants:`` (one record each, each read by its own HPA);
    ``""`` for a policy with one target."""


class DecisionStore:
    """``(namespace, policy, variant) -> Published``, indexed by namespace then policy (list
    requests read a namespace, an HPA's selector pins a policy)."""

    def __init__(self) -> None:
        self._by_namespace: dict[str, dict[str, dict[str, Published]]] = {}

    def put(self, value: Published) -> None:
        policies = self._by_namespace.setdefault(value.namespace, {})
        policies.setdefault(value.policy, {})[value.variant] = value

    def get(self, namespace: str, policy: str, variant: str = "") -> Published | None:
        return self._by_namespace.get(namespace, {}).get(policy, {}).get(variant)

    def of_policy(self, namespace: str, policy: str) -> list[Published]:
        """Every record of one policy: one, or one per variant."""
        return list(self._by_namespace.get(namespace, {}).get(policy, {}).values())

    def retain(self, namespace: str, policy: str, variants: frozenset[str]) -> None:
        """Drop the policy's records of variants it no longer has (``""``: its one target)."""
        records = self._by_namespace.get(namespace, {}).get(policy)
        if records is None:
            return
        for variant in [v for v in records if v not in variants]:
            del records[variant]
        if not records:
            self.remove(namespace, policy)

    def remove(self, namespace: str, policy: str) -> None:
        policies = self._by_namespace.get(namespace)
        if policies is not None:
            policies.pop(policy, None)
            if not policies:
                del self._by_namespace[namespace]

    def in_namespace(self, namespace: str) -> Iterator[Published]:
        for records in self._by_namespace.get(namespace, {}).values():
            yield from records.values()

    def __len__(self) -> int:
        return sum(len(r) for p in self._by_namespace.values() for r in p.values())
