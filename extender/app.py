"""Running the extender and the node agent as processes: wiring, signals, clean shutdown.

SIGTERM/SIGINT set a stop event: ``/readyz`` starts failing at once, the HTTP server then stops
accepting requests and finishes the ones in flight, and the watches and pollers are cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from extender import access
from extender.cluster_state import ClusterState
from extender.inventory import InventoryConfig
from extender.scoring import ScoreWeights
from runtime import process
from runtime.limits import ConnectionLimits
from runtime.serving import Listener
from runtime.startup import Background, StartupError, kube_client, listen, parse_address
from runtime.tls import ServingTLS

log = logging.getLogger("gpuscale.extender")


@dataclass(frozen=True, slots=True)
class ExtenderProcess:
    address: str = "0.0.0.0:8888"
    kubeconfig: str | None = None
    scoring: str = "binpack"
    inventory: InventoryConfig = field(default_factory=InventoryConfig)
    prometheus_url: str | None = None
    dcgm_node_label: str = "Hostname"
    dcgm_interval: float = 15.0
    reservation_ttl: float = 300.0
    weights: ScoreWeights = field(default_factory=ScoreWeights)
    relearn_interval: float = 60.0
    """How often the fragmentation strategy re-estimates the pod shapes it expects."""
    tls_cert_file: str | None = None
    tls_private_key_file: str | None = None
    client_ca_file: str | None = None
    """CA that signs kube-scheduler's client certificate; the verbs need one it signed."""
    allowed_client_names: tuple[str, ...] = access.DEFAULT_ALLOWED_NAMES
    """Certificate names (CN or SAN) that may call the verbs; empty: any the CA signed."""
    plain_http_sidecar: bool = False
    """Serve the verbs over plain HTTP: only on a loopback ``address``, beside the scheduler."""
    ops_address: str | None = "0.0.0.0:8889"
    """Plain HTTP for /livez /readyz /metrics (kubelet, Prometheus); None: no ops listener."""
    tls_reload_interval: float = 30.0
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    full_mode: bool = False
    """kube-scheduler sends Node objects (``nodeCacheCapable: false``): larger body limits."""
    per_device_metrics: bool = False
    """One ``/metrics`` series per GPU (off: summed per GPU model)."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def verbs_tls(settings: ExtenderProcess) -> ServingTLS | None:
    """The verbs listener's TLS, or None for the loopback sidecar; refuses anything in between.

    Plain HTTP on an address other pods can reach would let any of them bind any pod.
    """
    host, _port = parse_address(settings.address)
    files = (settings.tls_cert_file, settings.tls_private_key_file, settings.client_ca_file)
    if settings.plain_http_sidecar:
        if any(files):
            raise StartupError(
                "--plain-http-sidecar serves plain HTTP; drop it or the TLS files"
                " (--tls-cert-file, --tls-private-key-file, --client-ca-file)"
            )
        if not _is_loopback(host):
            raise StartupError(
                f"refusing plain HTTP on {settings.address}: --plain-http-sidecar is only for a"
                " loopback --address (127.0.0.1:PORT) that only the scheduler beside it reaches;"
                " elsewhere serve mTLS with --tls-cert-file, --tls-private-key-file and"
                " --client-ca-file"
            )
        return None
    if not all(files):
        raise StartupError(
            "the extender serves its verbs over mTLS: give --tls-cert-file,"
            " --tls-private-key-file and --client-ca-file (kube-scheduler's client CA), or"
            " --plain-http-sidecar with a loopback --address when it runs beside the scheduler"
        )
    assert settings.client_ca_file is not None
    try:
        with open(settings.client_ca_file, encoding="utf-8") as handle:
            ca_pem = handle.read()
        return ServingTLS(
            settings.tls_cert_file,
            settings.tls_private_key_file,
            client_ca_pem=ca_pem,
            require_client_certificate=True,
        )
    except (OSError, UnicodeDecodeError, ssl.SSLError) as exc:
        raise StartupError(f"cannot load the extender's TLS files: {exc}") from None


async def serve_extender(
    settings: ExtenderProcess,
    *,
    stop: asyncio.Event | None = None,
    api_client: Any = None,
    on_listening: Callable[[int], None] | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    """Run until ``stop`` is set (or SIGTERM). ``api_client`` overrides ``settings.kubeconfig``;
    ``on_listening`` gets the bound port, ``ready`` is set once nodes and pods are listed."""
    from extender.body import RequestLimits
    from extender.cluster_cache import KubeCluster
    from extender.dcgm import run_poller
    from extender.server import Extender, ExtenderSettings, Metrics, make_app

    host, port = parse_address(settings.address)
    ops = parse_address(settings.ops_address) if settings.ops_address else None
    tls = verbs_tls(settings)
    if "dcgm" in settings.inventory.sources and not settings.prometheus_url:
        raise StartupError("--inventory dcgm needs --prometheus-url")
    try:
        ext_settings = ExtenderSettings(
            scoring=settings.scoring,
            reservation_ttl=settings.reservation_ttl,
            weights=settings.weights,
            limits=RequestLimits.full_mode() if settings.full_mode else RequestLimits.cache_mode(),
        )
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    stop = stop or asyncio.Event()
    process.stop_on_signals(stop)
    background = Background()
    session: aiohttp.ClientSession | None = None
    async with contextlib.AsyncExitStack() as stack:
        api_client = await stack.enter_async_context(kube_client(settings.kubeconfig, api_client))
        state = ClusterState(settings.inventory)
        cluster = KubeCluster(api_client, state, dra="dra" in settings.inventory.sources)
        metrics = Metrics(state, time.time, per_device=settings.per_device_metrics)
        extender = Extender(state, ext_settings, binder=cluster, metrics=metrics)
        draining = False
        app = make_app(extender, metrics=metrics, ready=lambda: cluster.ready and not draining)
        app.middlewares.append(
            access.middleware(access.AccessPolicy.of(settings.allowed_client_names))
        )
        listeners = [
            Listener(access.VERBS_LISTENER, host, port, tls.listening if tls is not None else None)
        ]
        if ops is not None:
            listeners.append(Listener(access.OPS_LISTENER, *ops))
        dcgm_url = settings.prometheus_url if "dcgm" in settings.inventory.sources else None
        if dcgm_url is not None:
            session = aiohttp.ClientSession()
            stack.push_async_callback(session.close)
        stack.push_async_callback(background.cancel)  # after the server stopped
        served = await listen(
            stack,
            app,
            listeners,
            limits=settings.limits,
            registry=metrics.registry,
            shutdown_timeout=10.0,
        )
        actual = served.ports[access.VERBS_LISTENER]
        log.info(
            "extender listening",
            extra={
                "address": f"{host}:{actual}",
                "tls": tls is not None,
                "ops_port": served.ports.get(access.OPS_LISTENER),
                "scoring": settings.scoring,
                "inventory": ",".join(settings.inventory.sources),
            },
        )
        if on_listening is not None:
            on_listening(actual)
        if tls is not None:
            background.start(tls.watch_files(settings.tls_reload_interval), "tls")
        background.start(cluster.run(), "kube-watch")
        learned = asyncio.Event()
        background.start(
            _when_synced(cluster.synced.values(), learned, ready, state),
            "first-sync",
            forever=False,
        )
        background.start(
            _learn_workload(learned, state, settings.relearn_interval), "learn-workload"
        )
        if session is not None and dcgm_url is not None:
            background.start(
                run_poller(
                    session,
                    dcgm_url,
                    state,
                    node_label=settings.dcgm_node_label,
                    interval=settings.dcgm_interval,
                ),
                "dcgm",
            )
        try:
            await background.until_stopped(stop)
            log.info("stopping: readiness off, draining requests")
        finally:
            draining = True
            gc.unfreeze()


async def _when_synced(
    events: Iterable[asyncio.Event],
    learned: asyncio.Event,
    ready: asyncio.Event | None,
    state: ClusterState,
) -> None:
    """After the first full listing: move the cached cluster out of the garbage collector's
    way (``gc.freeze``), so collections triggered by request garbage do not walk 100,000 pods,
    learn the workload for the fragmentation strategy and score every node state for its shapes
    (so the first pods of those shapes, and every pod after a restart, find the scores ready),
    then report readiness to ``ready``."""
    from extender.fragmentation import learn

    for e in events:
        await e.wait()
    gc.collect()
    gc.freeze()
    log.info("cluster cached", extra={"frozen_objects": gc.get_freeze_count()})
    strategy = learn(state.pods.values())
    started = time.perf_counter()
    warmed = state.index(time.time()).warm(strategy, strategy.learned_needs())
    log.info(
        "fragmentation scores pre-computed",
        extra={"needs": warmed, "seconds": round(time.perf_counter() - started, 3)},
    )
    learned.set()
    if ready is not None:
        ready.set()


async def _learn_workload(synced: asyncio.Event, state: ClusterState, interval: float) -> None:
    """Keep the ``fragmentation`` strategy's picture of the arriving pod shapes current: learn
    it from the cached pods once they are listed (before readiness), then every ``interval``."""
    from extender.fragmentation import learn
    from extender.scoring import get_strategy

    await synced.wait()
    while True:
        await asyncio.sleep(interval)
        before = get_strategy("fragmentation")
        strategy = learn(state.pods.values())
        log.info("workload learned", extra={"shapes": len(strategy.workload.shapes)})
        if strategy is not before:  # a new workload: its scores are new, compute them ahead
            for need in strategy.learned_needs():
                state.index(time.time()).warm(strategy, [need])
                await asyncio.sleep(0)  # one need at a time, requests in between


def run_extender(settings: ExtenderProcess) -> int:
    asyncio.run(serve_extender(settings))
    return 0


async def _device_plugin(
    settings: Any, nvml: Any, api_client: Any, registry: CollectorRegistry
) -> None:
    """The device plugin of ``settings`` with the API and the kubelet's sockets as its I/O; its
    metrics join the agent's."""
    from extender.device_plugin.server import (
        DevicePlugin,
        PluginCollector,
        kube_event_recorder,
        kube_pod_lister,
        pod_resources_viewer,
    )

    plugin = DevicePlugin(
        settings,
        nvml=nvml,
        list_pods=kube_pod_lister(api_client, settings.node),
        record_event=kube_event_recorder(api_client, settings.node, clock=time.time),
        kubelet_view=pod_resources_viewer(settings.pod_resources_socket, settings.resource),
    )
    collector = PluginCollector(plugin)
    registry.register(collector)
    try:
        await plugin.run()
    finally:
        registry.unregister(collector)


async def serve_node_agent(
    node: str,
    *,
    interval: float,
    kubeconfig: str | None,
    address: str = "0.0.0.0:8890",
    stale_after: float = 60.0,
    nvml: Any = None,
    api_client: Any = None,
    stop: asyncio.Event | None = None,
    on_listening: Callable[[int], None] | None = None,
    limits: ConnectionLimits | None = None,
    device_plugin: Any = None,
) -> None:
    """Publish this node's GPU memory until ``stop`` (or SIGTERM), serving ``/livez``,
    ``/readyz`` and ``/metrics`` on ``address``; ``stale_after`` bounds both probes. NVML is
    loaded first, so a machine without a driver fails before anything else happens. With
    ``device_plugin`` (a :class:`extender.device_plugin.server.PluginSettings`) the agent also
    serves the kubelet device plugin that hands each pod the GPUs the extender chose."""
    from extender.node_agent import AgentHealth, kube_patcher, load_nvml, make_health_app, run

    host, port = parse_address(address)
    nvml = nvml if nvml is not None else load_nvml()
    stop = stop or asyncio.Event()
    process.stop_on_signals(stop)
    health = [AgentHealth(started=time.time())]
    registry = CollectorRegistry()
    app = make_health_app(
        lambda: health[0],
        clock=time.time,
        bound=stale_after,
        stopping=stop.is_set,
        registry=registry,
    )
    background = Background()
    try:
        async with contextlib.AsyncExitStack() as stack:
            api_client = await stack.enter_async_context(kube_client(kubeconfig, api_client))
            stack.push_async_callback(background.cancel)  # after the server stopped
            served = await listen(
                stack,
                app,
                [Listener("ops", host, port)],
                limits=limits,
                registry=registry,
                shutdown_timeout=5.0,
            )
            actual = served.ports["ops"]
            if on_listening is not None:
                on_listening(actual)
            background.start(
                run(
                    nvml,
                    node,
                    kube_patcher(api_client),
                    interval=interval,
                    clock=time.time,
                    report=lambda h: health.__setitem__(0, h),
                ),
                "node-agent",
            )
            if device_plugin is not None:
                background.start(
                    _device_plugin(device_plugin, nvml, api_client, registry), "device-plugin"
                )
            log.info(
                "node agent started",
                extra={
                    "node": node,
                    "interval_s": interval,
                    "address": f"{host}:{actual}",
                    "device_plugin": device_plugin is not None,
                },
            )
            await background.until_stopped(stop)
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()
