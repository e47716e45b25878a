"""Inputs and outputs of :func:`policies.decide.decide`: a metric snapshot in, a Decision out.

State that must survive between ticks (recommendation history, scale events, forecast state,
since when metrics are missing) is plain data passed in and returned, so the controller keeps it
in memory and the simulator can drive the same code with simulated time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the world looked like at one tick.

    ``values`` maps metric name to its value, or ``None`` when it is missing, empty or not
    finite. A metric absent from the mapping counts as missing.
    """

    values: Mapping[str, float | None]
    current_replicas: int
    ready_replicas: int | None = None
    unschedulable: int = 0
    """The target's pods the scheduler found no room for (``PodScheduled=False``, reason
    ``Unschedulable``): while there are any, the count may fall but not grow."""


@dataclass(frozen=True, slots=True)
class Recommendation:
    time: float
    replicas: int


@dataclass(frozen=True, slots=True)
class ScaleEvent:
    """``change`` replicas added (scale up) or removed (scale down) at ``time``."""

    time: float
    change: int


@dataclass(frozen=True, slots=True)
class HoltState:
    level: float
    trend: float
    time: float


@dataclass(frozen=True, slots=True)
class BurstSample:
    """A demand metric's replica count at one tick, kept for the burst envelope."""

    time: float
    replicas: int


@dataclass(frozen=True, slots=True)
class State:
    """Carried from one decision to the next; ``State()`` is the start."""

    recommendations: tuple[Recommendation, ...] = ()
    scale_up_events: tuple[ScaleEvent, ...] = ()
    scale_down_events: tuple[ScaleEvent, ...] = ()
    holt: Mapping[str, HoltState] = field(default_factory=dict)
    missing_since: float | None = None
    last_seen: tuple[float, int] | None = None
    """(time, target's count) at the previous decision: a change since is a scale event."""
    burst: Mapping[str, tuple[BurstSample, ...]] = field(default_factory=dict)
    """Per demand metric, its sizes over the burst window (:mod:`policies.envelope`)."""


@dataclass(frozen=True, slots=True)
class Proposal:
    """One metric's opinion. ``replicas is None`` when the metric was missing."""

    metric: str
    type: str
    value: float | None
    replicas: int | None
    reason: str
    saturated: bool = False
    forecast: float | None = None
    """For ``arrivalRate`` with ``forecast: holt``: the rate the proposal was sized for."""
    burst: int | None = None
    """With ``burst``: the envelope of the metric's recent sizes (``replicas`` is at least it)."""
    unreachable: str | None = None
    """No count meets the metric's latency bound: the bound it was sized for instead, and why
    (:mod:`policies.reachable`)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The replica count to run and why.

    ``steps`` is the human story, one line per rule applied, in order; ``limited_by`` names the
    bound or behavior rule that changed the winner's proposal (``None`` when none did).
    """

    desired_replicas: int
    current_replicas: int
    proposals: tuple[Proposal, ...]
    winner: str | None
    recommended: int
    limited_by: str | None
    steps: tuple[str, ...]
    metrics_missing: tuple[str, ...] = ()
    unschedulable: int = 0
    """The snapshot's unschedulable pods; above 0 the policy is capacity-limited."""

    @property
    def saturated(self) -> bool:
        """Some ``arrivalRate`` metric cannot meet its target even at ``replicas.max``."""
        return any(p.saturated for p in self.proposals)

    @property
    def unreachable(self) -> tuple[str, ...]:
        """The metrics whose latency bound no replica count meets (sized near their floor)."""
        return tuple(p.metric for p in self.proposals if p.unreachable is not None)

    @property
    def reason(self) -> str:
        """One line for Events and the status annotation."""
        return self.steps[-1] if self.steps else ""
