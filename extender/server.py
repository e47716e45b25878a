"""The scheduler extender over HTTP: ``/filter``, ``/prioritize``, ``/bind`` for kube-scheduler,
``/livez``, ``/readyz``, ``/metrics`` for operators.

kube-scheduler sends ``k8s.io/kube-scheduler/extender/v1`` structs, which carry no JSON tags, so
keys arrive in PascalCase (``Pod``, ``Nodes``, ``NodeNames``); keys are read case-insensitively and
replies use PascalCase. Bad input gets HTTP 400 with ``{"Error": ...}``; a filter reply only ever
names nodes from its request.

:class:`Extender` holds the request logic without HTTP (decoded JSON in, reply out), so tests and
the benchmark can call it directly; :func:`make_app` wraps it in aiohttp.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol

import orjson
from aiohttp import hdrs, web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from extender import cluster_metrics
from extender.body import BodyReader, BodyRefused, RequestLimits
from extender.cluster_state import ClusterState
from extender.decode import BadRequest, pod_from_json
from extender.dra import DraError, DraNeed, ResourceClaim, claim_from_json
from extender.filtering import (
    FAILURE_KINDS,
    FilterResult,
    choose_devices,
    prioritize,
    strategy_for,
)
from extender.objects import PodRequest
from extender.scoring import ScoreWeights, get_strategy
from runtime.ops import add_ops_routes

log = logging.getLogger("gpuscale.extender")

CONTENT_TYPE: Final = "application/json"
READ_CHUNK: Final = 256 * 1024
NAMES_PER_NODE: Final = 2
NAMES_SLACK: Final = 1024
"""A request may name ``NAMES_PER_NODE`` x the cluster's nodes + ``NAMES_SLACK``."""
VERBS: Final = ("filter", "prioritize", "bind")

decode_json: Callable[[bytes], Any] = orjson.loads
"""The JSON decoder of request bodies (a seam for tests that assert it was not reached)."""


class BindError(Exception):
    """The Kubernetes API refused or failed the binding; the message says why."""


class Binder(Protocol):
    """Writes to Kubernetes for ``/bind`` (implemented in :mod:`extender.cluster_cache`)."""

    async def bind(
        self, *, namespace: str, name: str, uid: str, node: str, gpu_indices: tuple[int, ...]
    ) -> None:
        """Annotate the pod with its GPU indices (when it has any) and bind it to ``node``."""
        ...

    async def get_pod(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The pod object, for a bind of a pod the extender has not seen; ``None`` if absent."""
        ...

    async def get_claim(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """A ResourceClaim as the API has it now (kube-scheduler's DRA plugin writes its
        allocation just before the bind); ``None`` if absent or unreadable."""
        ...


@dataclass(frozen=True, slots=True)
class ExtenderSettings:
    scoring: str = "binpack"
    """Default scoring strategy (pods may pick another with ``gpuscale.io/scoring``)."""
    reservation_ttl: float = 300.0
    """Seconds a reservation holds memory for a pod not yet visible in measurements/pod list."""
    weights: ScoreWeights = field(default_factory=ScoreWeights)
    limits: RequestLimits = field(default_factory=RequestLimits.cache_mode)
    """Body limits per verb (bytes and estimated decoded size); larger bodies get 400."""
    pod_cache_bytes: int = 4 * 2**20
    """Encoded size of the request pods whose decoding is remembered (the same pod comes to
    filter, then prioritize, and on every retry); one pod over 1/64 of it is never kept."""

    def __post_init__(self) -> None:
        get_strategy(self.scoring)
        if not self.reservation_ttl > 0:
            raise ValueError(f"reservation TTL must be positive, got {self.reservation_ttl}")


class Metrics:
    """The extender's Prometheus metrics, in a registry of their own."""

    def __init__(
        self, state: ClusterState, clock: Callable[[], float], *, per_device: bool = False
    ) -> None:
        """``per_device`` adds one free-memory series per GPU (off: summed per GPU model)."""
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gpuscale_extender_requests",
            "Requests by verb and HTTP status code.",
            ["verb", "code"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "gpuscale_extender_request_duration_seconds",
            "Time to answer a request, by verb (decode to encode).",
            ["verb"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.filter_failures = Counter(
            "gpuscale_extender_filter_failures",
            "Nodes filtered out, by the check that failed.",
            ["reason"],
            registry=self.registry,
        )
        for kind in FAILURE_KINDS:
            self.filter_failures.labels(kind)
        self.binds = Counter(
            "gpuscale_extender_binds",
            "Bind attempts by result (bound, no_fit, api_error, unknown_pod, already_bound).",
            ["result"],
            registry=self.registry,
        )
        self.api_duration = Histogram(
            "gpuscale_extender_api_call_duration_seconds",
            "Time a bind waits on the Kubernetes API, by call (part of the bind's request time).",
            ["call"],
            buckets=(0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )
        self.state = state
        self.clock = clock
        self.per_device = per_device

    async def exposition(self) -> bytes:
        """The whole ``/metrics`` page: the counters, then the cluster state gauges, which are
        rendered a slice of nodes at a time (:mod:`extender.cluster_metrics`)."""
        state = await cluster_metrics.render(self.state, self.clock(), per_device=self.per_device)
        return generate_latest(self.registry) + state


def _lower_keys(args: object) -> dict[str, Any]:
    if not isinstance(args, dict):
        raise BadRequest(f"expected a JSON object, got {type(args).__name__}")
    return {k.lower(): v for k, v in args.items()}


class _PodDecoder:
    """Decodes request pods, remembering the result by the pod's whole content: kube-scheduler
    sends the same pod object to filter and then to prioritize, and again on every retry.

    Keyed by content, not by ``uid`` + ``resourceVersion``: a request naming a real pod's uid and
    version with other content must not decide what that pod needs in later requests (decoding
    is a pure function, so this cache only ever saves work). Pods whose encoding is over
    ``max_pod_bytes`` are decoded every time; the keys kept add up to ``max_bytes`` at most."""

    def __init__(self, max_bytes: int, max_pod_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.max_pod_bytes = max_pod_bytes
        self.cache: OrderedDict[bytes, PodRequest] = OrderedDict()
        self.size = 0

    def __call__(self, raw: object, path: str) -> PodRequest:
        try:
            key = orjson.dumps(raw)
        except TypeError:  # not JSON data at all (only direct callers can pass such)
            return pod_from_json(raw, path)
        hit = self.cache.get(key)
        if hit is not None:
            self.cache.move_to_end(key)
            return hit
        pod = pod_from_json(raw, path)
        if len(key) <= self.max_pod_bytes:
            self.cache[key] = pod
            self.size += len(key)
            while self.size > self.max_bytes:
                old, _ = self.cache.popitem(last=False)
                self.size -= len(old)
        return pod


def _node_names(items: list[Any]) -> list[str]:
    """``metadata.name`` of each node object of a full-mode request (nothing else is read)."""
    names: list[str] = []
    for i, raw in enumerate(items):
        meta = raw.get("metadata") if isinstance(raw, dict) else None
        name = meta.get("name") if isinstance(meta, dict) else None
        if not isinstance(name, str) or not name:
            raise BadRequest(f"Nodes.items[{i}].metadata.name: expected a node name")
        names.append(name)
    return names


class Extender:
    """Request handling: decoded JSON in, reply out. ``now`` always comes from the caller."""

    def __init__(
        self,
        state: ClusterState,
        settings: ExtenderSettings | None = None,
        *,
        binder: Binder | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.state = state
        self.settings = settings or ExtenderSettings()
        self.binder = binder
        self.metrics = metrics
        self.lock = asyncio.Lock()
        self._decode_pod = _PodDecoder(
            self.settings.pod_cache_bytes, self.settings.pod_cache_bytes // 64
        )

    def _names(self, a: Mapping[str, Any]) -> tuple[list[str], list[Any] | None]:
        """Node names of the request; in full mode the node objects (``items``) too.

        Only the names of full-mode node objects are read: what a node has is what the watch
        says (the same source as the pods on it), so request data never becomes cluster state
        and a node the watch does not know fails as not found (see extender/README.md)."""
        names_raw = a.get("nodenames")
        if names_raw is not None:
            if not isinstance(names_raw, list):
                raise BadRequest("NodeNames: expected a list of strings")
            try:  # the cheapest whole-list check: join fails on the first non-string
                "".join(names_raw)
            except TypeError:
                raise BadRequest("NodeNames: expected a list of strings") from None
            self._check_count(len(names_raw), "NodeNames")
            return names_raw, None
        nodes_raw = a.get("nodes")
        if nodes_raw is None:
            raise BadRequest("request has neither NodeNames nor Nodes")
        if not isinstance(nodes_raw, dict):
            raise BadRequest(f"Nodes: expected a NodeList object, got {type(nodes_raw).__name__}")
        items = nodes_raw.get("items")
        if items is None:
            items = []
        if not isinstance(items, list):
            raise BadRequest("Nodes.items: expected a list")
        self._check_count(len(items), "Nodes.items")
        return _node_names(items), items

    def _check_count(self, n: int, field: str) -> None:
        """kube-scheduler names nodes of the cluster the watch also sees: a list over twice
        that (plus slack for nodes the watch has yet to show) is refused before any per-name
        work, which would otherwise let one body of invented names cost ~50 ms of event loop."""
        bound = NAMES_PER_NODE * len(self.state.nodes) + NAMES_SLACK
        if n > bound:
            raise BadRequest(
                f"{field}: {n} nodes, more than kube-scheduler can send for a cluster of"
                f" {len(self.state.nodes)} nodes (at most {bound})"
            )

    def _pod(self, a: Mapping[str, Any]) -> tuple[PodRequest, DraNeed | None]:
        """The request's pod; a pod with DRA claims gets its GPU need from them (the need the
        fit and scoring understand) and the per-device checks the filter adds."""
        raw = a.get("pod")
        if raw is None:
            raise BadRequest("request has no Pod")
        pod = self._decode_pod(raw, "Pod")
        if not pod.claims or pod.gpu is not None:
            return pod, None
        need = self.state.dra_need(pod)
        if need is None:
            return pod, None
        return replace(pod, gpu=need.gpu), need

    def filter(self, args: object, now: float) -> dict[str, Any]:
        """``ExtenderArgs`` → ``ExtenderFilterResult``."""
        a = _lower_keys(args)
        pod, need = self._pod(a)
        names, items = self._names(a)
        self.state.expire(now)
        allocated = self.state.allocated_claims(pod) if need is not None else []
        if allocated:
            result = self._allocated_filter(replace(pod, gpu=None), names, allocated, now)
        else:
            result = self.state.index(now).filter(pod, names, now)
            if need is not None:
                result = self._dra_filter(result, need, now)
        if self.metrics is not None:
            for kind, n in result.counts.items():
                if n:
                    self.metrics.filter_failures.labels(kind).inc(n)
        log.debug(
            "filter",
            extra={
                "pod": pod.key,
                "nodes": len(names),
                "passed": len(result.passed),
                "failed": len(result.failed),
                "unresolvable": len(result.unresolvable),
            },
        )
        reply: dict[str, Any] = {
            "FailedNodes": result.failed,
            "FailedAndUnresolvableNodes": result.unresolvable,
            "Error": "",
        }
        if items is None:
            reply["NodeNames"] = list(result.passed)
            reply["Nodes"] = None
        else:
            keep = set(result.passed)
            reply["Nodes"] = {
                "metadata": {},
                "items": [raw for raw, name in zip(items, names, strict=True) if name in keep],
            }
            reply["NodeNames"] = None
        return reply

    def _allocated_filter(
        self, pod: PodRequest, names: list[str], claims: list[ResourceClaim], now: float
    ) -> FilterResult:
        """A pod whose claims are allocated can only go where its devices are, and only while
        they have room for them by the extender's books (the claims themselves not counted)."""
        result = self.state.index(now).filter(pod, names, now)
        passed: list[str] = []
        failed = dict(result.failed)
        counts = dict(result.counts)
        for name in result.passed:
            reason = None
            for claim in claims:
                where = self.state.claim_nodes(claim)
                if name not in where:
                    reason = f"claim {claim.name} is allocated on {', '.join(sorted(where))}"
                else:
                    problem = self.state.admit_claim(claim, now)
                    if problem is not None:
                        reason = f"insufficient GPU memory: claim {claim.name}: {problem}"
                if reason is not None:
                    break
            if reason is None:
                passed.append(name)
            else:
                failed[name] = reason
                counts["insufficient_gpu"] = counts.get("insufficient_gpu", 0) + 1
        return FilterResult(tuple(passed), failed, result.unresolvable, counts)

    def _dra_filter(self, result: FilterResult, need: DraNeed, now: float) -> FilterResult:
        """Nodes that passed the shared fit, checked against their own DRA devices (selectors
        this extender evaluates, room on a device that passes them)."""
        misfits = self.state.dra_misfits(result.passed, need, now)
        if not misfits:
            return result
        counts = dict(result.counts)
        counts["insufficient_gpu"] = counts.get("insufficient_gpu", 0) + len(misfits)
        return FilterResult(
            tuple(n for n in result.passed if n not in misfits),
            {**result.failed, **misfits},
            result.unresolvable,
            counts,
        )

    def prioritize(self, args: object, now: float) -> list[dict[str, Any]]:
        """``ExtenderArgs`` → ``HostPriorityList``."""
        a = _lower_keys(args)
        pod, _ = self._pod(a)
        names, _ = self._names(a)
        scores = self.state.index(now).priorities(
            pod, names, now, strategy_for(pod, self.settings.scoring), self.settings.weights
        )
        if scores is None:  # no array form: the per-node path, whose pairs follow ``names``
            pairs = prioritize(
                pod,
                names,
                self.state,
                now,
                strategy=self.settings.scoring,
                weights=self.settings.weights,
            )
            scores = [score for _, score in pairs]
        return [{"Host": host, "Score": score} for host, score in zip(names, scores, strict=True)]

    async def bind(self, args: object, now: float) -> dict[str, Any]:
        """``ExtenderBindingArgs`` → ``ExtenderBindingResult``: reserve devices, then bind."""
        a = _lower_keys(args)
        fields = {}
        for key in ("podname", "podnamespace", "poduid", "node"):
            v = a.get(key)
            if not isinstance(v, str) or (key != "poduid" and not v):
                raise BadRequest(f"binding args: {key} must be a non-empty string")
            fields[key] = v
        ns, name, uid, node = (
            fields["podnamespace"],
            fields["podname"],
            fields["poduid"],
            fields["node"],
        )
        key = f"{ns}/{name}"
        if self.binder is None:
            return self._bind_result("api_error", key, node, "bind is not configured: no client")
        pod = self.state.pods.get(key)  # the watch's pod; a filter request's copy is not trusted
        if pod is None:
            raw = await self.binder.get_pod(ns, name)
            if raw is None:
                return self._bind_result("unknown_pod", key, node, f"pod {key} not found")
            try:
                pod = pod_from_json(raw, "Pod")
            except BadRequest as exc:
                return self._bind_result("unknown_pod", key, node, f"pod {key}: {exc}")
        if pod.node_name:
            return self._bind_result(
                "already_bound", key, node, f"pod {key} is already bound to {pod.node_name}"
            )
        if uid and pod.uid and pod.uid != uid:
            return self._bind_result(
                "unknown_pod", key, node, f"pod {key} has uid {pod.uid}, binding asks for {uid}"
            )
        claims = await self._allocated_claims(pod) if pod.claims and pod.gpu is None else []
        indices: tuple[int, ...] = ()
        async with self.lock:
            self.state.release(key)
            self.state.expire(now)
            for claim in claims:
                problem = self.state.admit_claim(claim, now)
                if problem is not None:
                    return self._bind_result(
                        "no_fit", key, node, f"cannot bind to {node}: claim {claim.name}: {problem}"
                    )
            if pod.gpu is not None:
                chosen = choose_devices(
                    pod,
                    node,
                    self.state,
                    now,
                    strategy=self.settings.scoring,
                    exclude=self.state.dra_rows(node, now),
                )
                if isinstance(chosen, str):
                    return self._bind_result(
                        "no_fit", key, node, f"cannot bind to {node}: {chosen}"
                    )
                indices = chosen
                self.state.reserve(pod, node, indices, now, self.settings.reservation_ttl)
        started = time.perf_counter()
        try:
            await self.binder.bind(namespace=ns, name=name, uid=uid, node=node, gpu_indices=indices)
        except BindError as exc:
            self.state.release(key)
            return self._bind_result("api_error", key, node, f"binding {key} to {node}: {exc}")
        log.info("bound", extra={"pod": key, "node": node, "gpus": list(indices)})
        if self.metrics is not None:
            self.metrics.api_duration.labels("bind").observe(time.perf_counter() - started)
            self.metrics.binds.labels("bound").inc()
        return {"Error": ""}

    async def _allocated_claims(self, pod: PodRequest) -> list[ResourceClaim]:
        """The pod's claims as allocated now (read from the API: the watch may not have them
        yet), with ``--inventory dra`` only."""
        if self.binder is None or "dra" not in self.state.config.sources:
            return []
        out = []
        for c in pod.claims:
            if not c.claim:
                continue
            raw = await self.binder.get_claim(pod.namespace, c.claim)
            if raw is None:
                continue
            try:
                claim = claim_from_json(raw)
            except DraError:
                continue
            if claim.results:
                out.append(claim)
        return out

    def _bind_result(self, result: str, pod: str, node: str, error: str) -> dict[str, Any]:
        log.warning("bind failed", extra={"pod": pod, "node": node, "error": error})
        if self.metrics is not None:
            self.metrics.binds.labels(result).inc()
        return {"Error": error}


async def _read_body(request: web.Request, limits: RequestLimits, verb: str) -> bytes:
    """The body, inflated and checked chunk by chunk (:class:`~extender.body.BodyReader`):
    refused before it is decoded, and before the rest is read, once it breaks the verb's limit."""
    limit = limits.of(verb)
    reader = BodyReader(limit, request.headers.get(hdrs.CONTENT_ENCODING))
    if (
        request.content_length is not None
        and reader.coding in ("", "identity")
        and request.content_length > limit.max_bytes
    ):
        raise BodyRefused(
            f"request body of {request.content_length} bytes exceeds {limit.max_bytes}"
        )
    try:
        async for chunk in request.content.iter_chunked(READ_CHUNK):
            reader.feed(chunk)
    except web.RequestPayloadError as exc:  # a broken chunked framing or a cut-off body
        raise BodyRefused(f"request body could not be read: {exc}") from None
    return reader.finish()


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type=CONTENT_TYPE)


def make_app(
    extender: Extender,
    *,
    metrics: Metrics,
    clock: Callable[[], float] = time.time,
    ready: Callable[[], bool] = lambda: True,
) -> web.Application:
    """The aiohttp application. ``ready`` gates ``/readyz`` (caches synced, not draining)."""
    limits = extender.settings.limits

    async def handle(request: web.Request, verb: str) -> web.Response:
        start = time.perf_counter()
        status = 200
        try:
            args = decode_json(await _read_body(request, limits, verb))
            reply: object
            if verb == "filter":
                reply = extender.filter(args, clock())
            elif verb == "prioritize":
                reply = extender.prioritize(args, clock())
            else:
                reply = await extender.bind(args, clock())
            response = _json(reply)
        except (BadRequest, orjson.JSONDecodeError) as exc:
            status = 400
            log.warning("bad request", extra={"verb": verb, "error": str(exc)})
            response = _json({"Error": f"bad request: {exc}"}, status)
        except Exception as exc:  # a bug, not bad input: answer and keep serving
            status = 500
            log.exception("request failed", extra={"verb": verb})
            response = _json({"Error": f"internal error: {exc}"}, status)
        metrics.requests.labels(verb, str(status)).inc()
        metrics.duration.labels(verb).observe(time.perf_counter() - start)
        return response

    async def filter_(request: web.Request) -> web.Response:
        return await handle(request, "filter")

    async def prioritize_(request: web.Request) -> web.Response:
        return await handle(request, "prioritize")

    async def bind_(request: web.Request) -> web.Response:
        return await handle(request, "bind")

    # Bodies are inflated by _read_body, under the verb's limits and with a 400 for every
    # coding error; aiohttp's own inflating answers some of those with 500 or plain text.
    app = web.Application(
        client_max_size=max(limits.of(v).max_bytes for v in VERBS) + 1,
        handler_args={"auto_decompress": False},
    )
    app.router.add_post("/filter", filter_)
    app.router.add_post("/prioritize", prioritize_)
    app.router.add_post("/bind", bind_)
    add_ops_routes(
        app,
        live=lambda: (True, "ok"),
        ready=lambda: (True, "ok") if ready() else (False, "not ready"),
        scrape=metrics.exposition,
    )
    return app
