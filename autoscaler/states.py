"""The one vocabulary of a policy's state.

The ``gpuscale.io/status`` annotation, ``gpuscale status`` and the ``gpuscale_policies{state}``
gauge all name a policy's state from :data:`POLICY_STATES`; the gauge spells each name the way
Prometheus label values are spelled (``MetricsUnavailable`` → ``metrics_unavailable``), so that
alerts keep matching ``state="invalid"``. Nothing here may grow a state the others lack.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

PolicyState = Literal[
    "Pending", "Active", "CapacityLimited", "MetricsUnavailable", "TargetUnavailable", "Invalid"
]

POLICY_STATES: tuple[PolicyState, ...] = get_args(PolicyState)

STATE_MEANINGS: dict[PolicyState, str] = {
    "Pending": "no decision yet (the controller has not ticked this policy, or is not running)",
    "Active": "deciding from its metrics",
    "CapacityLimited": (
        "some of the target's pods are unschedulable (no room in the cluster): deciding, but the"
        " count does not grow until they are placed; scale-down goes on"
    ),
    "MetricsUnavailable": "no metric could be read; replicas held (or fallbackReplicas)",
    "TargetUnavailable": "the scaled workload cannot be read; replicas held",
    "Invalid": "the latest version does not parse; the last good version, if any, keeps running",
}

HOLDING: frozenset[PolicyState] = frozenset({"MetricsUnavailable", "TargetUnavailable"})
"""States in which the replica count stays where it is."""


def gauge_label(state: PolicyState) -> str:
    """The ``state`` label value of ``gpuscale_policies`` for ``state``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", state).lower()
