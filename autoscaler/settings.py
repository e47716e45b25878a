"""Everything ``gpuscale controller`` can be told, as one frozen object."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from autoscaler.leader import LeaderSettings
from runtime.limits import ConnectionLimits
from runtime.process import AddressError, parse_address

__all__ = ["AddressError", "ControllerSettings", "parse_address"]

Actuation = Literal["hpa", "prometheus"]


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    prometheus_url: str
    kubeconfig: str | None = None
    """Path to a kubeconfig; None means in-cluster configuration."""
    namespace: str | None = None
    """Watch policies in this namespace only; None watches all."""
    actuation: Actuation = "hpa"
    """``hpa``: serve external metrics and own one HPA per policy; ``prometheus``: gauge only."""
    secure_address: str = "0.0.0.0:6443"
    tls_cert_file: str | None = None
    tls_private_key_file: str | None = None
    requestheader_client_ca_file: str | None = None
    """Front-proxy CA file; None: read it from kube-system/extension-apiserver-authentication."""
    requestheader_allowed_names: tuple[str, ...] = ()
    """CNs the front-proxy certificate may have (with the file; empty: any)."""
    insecure_allow_any_client: bool = False
    """Serve the metrics API to any TLS client when no front-proxy CA is found (tests/dev only)."""
    authn_refresh: float = 300.0
    """Seconds between reads of the extension-apiserver-authentication ConfigMap."""
    tls_reload_interval: float = 30.0
    """Seconds between checks of the certificate files (renewals take effect without restart)."""
    ops_address: str = "0.0.0.0:8080"
    leader_elect: bool = True
    leader: LeaderSettings = field(default_factory=LeaderSettings)
    """Lease settings; ``leader.identity`` also names this replica in Events and User-Agent."""
    stale_after: float = 120.0
    """Seconds a published count may go without fresh data before the API answers an error."""
    prometheus_timeout: float = 5.0
    """Seconds a query may take from the tick's call, the wait for a slot included."""
    prometheus_concurrency: int = 32
    prometheus_concurrency_per_namespace: int = 8
    """Queries one namespace may have in flight (its fair share of ``prometheus_concurrency``)."""
    prometheus_max_answer_bytes: int = 256 * 1024
    tenancy_label: str | None = "namespace"
    """Every query gets ``<label>="<policy namespace>"`` (:mod:`policies.tenancy`); None turns
    namespace enforcement off (single-team clusters)."""
    hpa_resync: float = 300.0
    """Seconds between full HPA reconciliations (drift repair) while leading."""
    drain_timeout: float = 7.0
    """Seconds in-flight ticks get after SIGTERM (the process exits within 10 s)."""
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    """Caps and timeouts for the connections of both servers (metrics API and ops)."""
