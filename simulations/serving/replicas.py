"""Per-replica serving: a FIFO queue in front of ``max_batch`` concurrent slots, and routing.

A request is an index into the run's :class:`RequestLog` (struct of arrays), so the hot path
allocates nothing per request beyond the engine's heap entry. Service times are drawn up front
for every request from the scenario's :class:`ServiceModel`; a slot serves one request at a time
for that long, independently of how full the batch is (the issue's model: ``prefill / rate +
generated / rate`` with a cap on concurrent requests).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from simulations.serving.clock import Engine
from simulations.serving.vllm import ITL_BUCKETS, TTFT_BUCKETS

FloatArray = npt.NDArray[np.float64]

DEFAULT_LATENCY_BUCKETS: tuple[float, ...] = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
"""vLLM's ``e2e_request_latency_seconds`` buckets (seconds); ``+Inf`` is implied."""


# --------------------------------------------------------------------------- service models


@dataclass(frozen=True, slots=True)
class FixedService:
    """Every request takes ``seconds``."""

    seconds: float

    def sample(self, rng: np.random.Generator, prompt: FloatArray, gen: FloatArray) -> FloatArray:
        return np.full(len(prompt), self.seconds, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class ExponentialService:
    """Memoryless service with mean ``mean`` seconds (the M in M/M/c)."""

    mean: float

    def sample(self, rng: np.random.Generator, prompt: FloatArray, gen: FloatArray) -> FloatArray:
        return rng.exponential(self.mean, len(prompt))


@dataclass(frozen=True, slots=True)
class LognormalService:
    """Lognormal with the given ``mean`` seconds and shape ``sigma`` of the underlying normal."""

    mean: float
    sigma: float

    def sample(self, rng: np.random.Generator, prompt: FloatArray, gen: FloatArray) -> FloatArray:
        mu = math.log(self.mean) - self.sigma**2 / 2
        return rng.lognormal(mu, self.sigma, len(prompt))


@dataclass(frozen=True, slots=True)
class TokenService:
    """``overhead + prompt / prefill_rate + generated / decode_rate`` seconds per request.

    Rates are tokens/s seen by one request in a batch (vLLM's per-sequence decode speed).
    """

    prefill_rate: float
    decode_rate: float
    overhead: float = 0.0

    def sample(self, rng: np.random.Generator, prompt: FloatArray, gen: FloatArray) -> FloatArray:
        return self.overhead + prompt / self.prefill_rate + gen / self.decode_rate


ServiceModel = FixedService | ExponentialService | LognormalService | TokenService


# --------------------------------------------------------------------------- requests


class RequestLog:
    """What happened to every request of a run, by request index."""

    __slots__ = ("arrival", "finish", "n", "service", "start")

    def __init__(self, arrival: FloatArray, service: FloatArray) -> None:
        self.n = len(arrival)
        self.arrival: list[float] = arrival.tolist()
        self.service: list[float] = service.tolist()
        nan = math.nan
        self.start: list[float] = [nan] * self.n
        self.finish: list[float] = [nan] * self.n


# --------------------------------------------------------------------------- replicas


class Replica:
    """One serving pod's engine: a FIFO queue and ``max_batch`` slots; exposes its counters.

    ``waiting`` and ``running`` are the gauges (vLLM's ``num_requests_waiting/running``);
    ``completed``, ``bucket_counts`` (per bucket, not cumulative) and ``latency_sum`` feed the
    scraped latency histogram; ``inflight_area`` integrates in-flight requests over time for
    Knative's concurrency average.
    """

    __slots__ = (
        "_bounds",
        "_engine",
        "_finish_cb",
        "_log",
        "_push",
        "arrived",
        "backlog",
        "bucket_counts",
        "completed",
        "id",
        "in_service",
        "latency_sum",
        "max_batch",
        "on_idle",
        "pending",
        "queue",
        "running",
        "ttft_counts",
    )

    def __init__(
        self,
        replica_id: int,
        engine: Engine,
        log: RequestLog,
        max_batch: int,
        buckets: Sequence[float],
        on_complete: Callable[[int], None] | None = None,
    ) -> None:
        self.id = replica_id
        self._engine = engine
        self._push = engine.push
        self._log = log
        self.max_batch = max_batch
        self.queue: deque[int] = deque()
        self.backlog: deque[int] | None = None
        """The gateway's queue while this replica is in rotation: a free slot pulls from it."""
        self.running = 0
        self.in_service: set[int] = set()
        """The requests holding a slot (``running`` of them), lost if the pod is killed."""
        self.pending = 0
        """Always 0: this model queues a request the moment it arrives."""
        self.arrived = 0
        self.completed = 0
        self.latency_sum = 0.0
        self._bounds = list(buckets)
        self.bucket_counts = [0] * (len(self._bounds) + 1)
        self.ttft_counts = [0] * (len(TTFT_BUCKETS) + 1)
        """The whole reply comes at once, so the first token arrives with the last."""
        self.on_idle: Callable[[Replica], None] | None = None
        self._finish_cb = (
            self._finish if on_complete is None else self._finish_and_notify(on_complete)
        )

    @property
    def outstanding(self) -> int:
        return self.running + len(self.queue)

    def admit(self, i: int) -> None:
        """Take request ``i``: start it if a slot is free, else queue it."""
        self.arrived += 1
        if self.running < self.max_batch:
            self.running += 1
            now = self._engine.now
            self._log.start[i] = now
            self.in_service.add(i)
            self._push(now + self._log.service[i], self._finish_cb, i)
        else:
            self.queue.append(i)

    def _finish(self, i: int) -> None:
        serving = self.in_service
        if i not in serving:
            return  # cut: its pod was killed
        serving.remove(i)
        engine = self._engine
        log = self._log
        now = engine.now
        log.finish[i] = now
        latency = now - log.arrival[i]
        self.completed += 1
        self.latency_sum += latency
        self.bucket_counts[bisect_left(self._bounds, latency)] += 1
        self.ttft_counts[bisect_left(TTFT_BUCKETS, latency)] += 1
        if self.queue:
            j = self.queue.popleft()
            log.start[j] = now
            serving.add(j)
            self._push(now + log.service[j], self._finish_cb, j)
        elif self.backlog:
            j = self.backlog.popleft()
            self.arrived += 1
            log.start[j] = now
            serving.add(j)
            self._push(now + log.service[j], self._finish_cb, j)
        else:
            self.running -= 1
            if self.running == 0 and self.on_idle is not None:
                self.on_idle(self)

    def _finish_and_notify(self, on_complete: Callable[[int], None]) -> Callable[[int], None]:
        finish = self._finish
        serving = self.in_service

        def finish_and_notify(i: int) -> None:
            if i in serving:
                finish(i)
                on_complete(i)

        return finish_and_notify

    def take_queue(self) -> list[int]:
        """Remove and return the requests still waiting (for a replica that goes away)."""
        items = list(self.queue)
        self.queue.clear()
        return items

    def evict(self) -> list[int]:
        """The pod is killed: every request it still holds is lost."""
        items = sorted(self.in_service) + self.take_queue()
        self.in_service.clear()
        self.running = 0
        return items

    def sample(self) -> tuple[tuple[float, ...], tuple[float, ...], tuple[list[float], ...]]:
        """What the pod's ``/metrics`` shows (:class:`~simulations.serving.metrics.Scrapable`); this
        model has no tokens, KV cache or inter-token latency, and its TTFT is its latency."""
        acc = 0.0
        cumulative = []
        for c in self.bucket_counts:
            acc += c
            cumulative.append(acc)
        cumulative.append(self.latency_sum)
        ttft = []
        acc = 0.0
        for c in self.ttft_counts:
            acc += c
            ttft.append(acc)
        ttft.append(self.latency_sum)
        gauges = (float(len(self.queue)), float(self.running), 0.0)
        counters = (float(self.completed), float(self.arrived), 0.0, 0.0, 0.0)
        return gauges, counters, (cumulative, ttft, _EMPTY_ITL)


_EMPTY_ITL = [0.0] * (len(ITL_BUCKETS) + 2)


class Routable(Protocol):
    """What the router needs of a replica (this module's and :mod:`simulations.serving.vllm`'s)."""

    id: int
    queue: deque[int]
    running: int
    pending: int
    """Requests accepted but not yet in ``queue`` (an API server still preparing them)."""
    max_batch: int
    backlog: deque[int] | None

    def admit(self, i: int) -> None: ...

    @property
    def outstanding(self) -> int: ...


RoutingMode = Literal["least-outstanding", "round-robin", "capacity-weighted"]


class Router:
    """Spreads requests over Ready replicas, like a gateway in front of the Service.

    ``least-outstanding`` picks the replica with the fewest outstanding requests (running, queued
    or still on their way to the engine's queue, as a gateway counts open connections; lowest id
    on ties, so runs are deterministic); ``round-robin`` cycles in id order;
    ``capacity-weighted`` picks the lowest ``(outstanding + 1) / weight`` with ``weight`` the
    replica's capacity weight (``weight_of(id)``): Envoy's weighted least-request balancer with
    ``active_request_bias: 1`` (``load_balancing_weight / (active_requests + 1)``, the pick made
    deterministic), the way a gateway in front of Deployments on different GPU types splits load
    by capacity rather than by count (one model's variants, :mod:`simulations.serving.variants`).
    While no replica is
    Ready, requests wait in the gateway's own queue (``held``, as Knative's activator buffers
    them); replicas that come up take from it as their slots free up, and new requests join the
    end of it until it is empty, so a backlog is shared by every replica instead of landing on
    the first one to start.
    """

    __slots__ = ("_rr", "_weights", "held", "mode", "ready", "weight_of")

    def __init__(
        self,
        mode: RoutingMode = "least-outstanding",
        weight_of: Callable[[int], float] | None = None,
    ) -> None:
        if mode == "capacity-weighted" and weight_of is None:
            raise ValueError("capacity-weighted routing needs each replica's weight (weight_of)")
        self.mode = mode
        self.weight_of = weight_of
        self.ready: list[Routable] = []
        self._weights: list[float] = []
        """``weight_of(r.id)`` of each Ready replica, in the order of ``ready``."""
        self.held: deque[int] = deque()
        self._rr = 0

    def route(self, i: int) -> None:
        ready = self.ready
        if not ready or self.held:
            self.held.append(i)
            return
        if len(ready) == 1:
            ready[0].admit(i)
            return
        if self.mode == "round-robin":
            self._rr = (self._rr + 1) % len(ready)
            ready[self._rr].admit(i)
            return
        if self.mode == "capacity-weighted":
            self._weighted(i)
            return
        best = ready[0]
        best_load = best.running + len(best.queue) + best.pending
        if best_load:
            for replica in ready:
                load = replica.running + len(replica.queue) + replica.pending
                if load < best_load:
                    best, best_load = replica, load
                    if not load:
                        break  # an idle replica: nobody after it can have fewer
        best.admit(i)

    def _weighted(self, i: int) -> None:
        """The lowest outstanding-per-weight (lowest id on ties)."""
        best, best_score = self.ready[0], math.inf
        for replica, weight in zip(self.ready, self._weights, strict=True):
            score = (replica.running + len(replica.queue) + replica.pending + 1) / weight
            if score < best_score:
                best, best_score = replica, score
        best.admit(i)

    def _reweigh(self) -> None:
        if self.weight_of is not None:
            self._weights = [self.weight_of(r.id) for r in self.ready]

    def add(self, replica: Routable) -> None:
        """A replica became Ready: route to it; it fills its free slots from the backlog."""
        self.ready.append(replica)
        self.ready.sort(key=lambda r: r.id)
        self._reweigh()
        replica.backlog = self.held
        held = self.held
        while held and replica.outstanding < replica.max_batch:
            replica.admit(held.popleft())

    def remove(self, replica: Routable) -> None:
        replica.backlog = None
        if replica in self.ready:
            self.ready.remove(replica)
            self._reweigh()

    @property
    def outstanding(self) -> int:
        return len(self.held) + sum(r.outstanding for r in self.ready)
