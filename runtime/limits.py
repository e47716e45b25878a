"""How much one connection may cost a server, and for how long: one frozen object per listener."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Bounds every listener applies to the connections it accepts.

    The defaults fit the callers we serve (kube-scheduler, the API aggregator, Prometheus, kubelet
    probes): a handful of long-lived connections each, requests sent at once. Go's HTTP clients
    close idle connections after 90 s, before ``idle_timeout``, so a keep-alive POST never races
    our close.
    """

    max_connections: int = 512
    """Open connections per listener; one more is closed at once (reason ``connection_limit``)."""
    max_unproven: int = 64
    """Connections that have proven nothing yet: no verified client certificate (TLS with a
    client CA) or no complete request (otherwise). When full, the oldest of them is closed for the
    new one (``unproven_evicted``), so stalled strangers cannot lock out a client with a
    certificate, whose connection is unproven only while its handshake runs."""
    handshake_timeout: float = 5.0
    """Seconds from accept to a finished TLS handshake."""
    head_timeout: float = 10.0
    """Seconds from accept (or, for an unproven connection, from the previous response) until a
    request line and its headers have arrived."""
    body_timeout: float = 30.0
    """Seconds from a request's head until its whole body has arrived (a chunked body that never
    ends is cut here)."""
    idle_timeout: float = 120.0
    """Seconds a proven keep-alive connection may wait for its next request."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value <= 0:
                raise ValueError(f"{f.name}: must be positive, got {value}")
        if self.max_unproven > self.max_connections:
            raise ValueError(
                f"max_unproven ({self.max_unproven}) must not exceed max_connections"
                f" ({self.max_connections})"
            )
