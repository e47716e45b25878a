"""Wiring: build the collaborators from settings, run everything until asked to stop.

Shutdown order on SIGTERM (``stop`` is set): ``/readyz`` fails at once, no new ticks start,
in-flight ticks get ``drain_timeout`` seconds, the lease is released, servers close, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from kubernetes.aio import client as kclient
from kubernetes.aio import config as kconfig

from autoscaler import external_metrics, ops
from autoscaler.controller import Controller
from autoscaler.feedback import Feedback
from autoscaler.hpa import HpaReconciler, supports_tolerance
from autoscaler.kube import KubeError, call
from autoscaler.leader import AlwaysLeader, LeaderElector
from autoscaler.policy_source import PolicySource, SourceSettings
from autoscaler.prometheus import PrometheusClient, PrometheusSettings
from autoscaler.settings import ControllerSettings, parse_address
from autoscaler.store import DecisionStore
from autoscaler.targets import TargetReplicas

log = logging.getLogger(__name__)


async def kube_client(kubeconfig: str | None) -> Any:
    """An ``ApiClient`` from a kubeconfig file, or from the pod's service account.

    ``trust_env`` is off: with it, aiohttp looks up ~/.netrc and proxy variables in a thread for
    every request, which doubled the controller's CPU per call. A kubeconfig ``proxy-url`` still
    applies (the client passes it per request).
    """
    configuration = kclient.Configuration()
    configuration.client_session_kwargs = {"trust_env": False}
    if kubeconfig:
        await kconfig.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=configuration
        )
    else:
        kconfig.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return kclient.ApiClient(configuration)


@contextlib.asynccontextmanager
async def serving(
    app: web.Application, address: str, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[int]:
    """Serve ``app`` on ``HOST:PORT`` until the block exits; yields the bound port (for ``:0``)."""
    host, port = parse_address(address)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_address=True)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        yield int(sockets[0].getsockname()[1]) if sockets else port
    finally:
        await runner.cleanup()


def self_signed_context(hosts: list[str]) -> ssl.SSLContext:
    """A throwaway serving certificate when none is given (local runs; deploy/ mounts one)."""
    try:
        import trustme
    except ImportError as exc:  # pragma: no cover - depends on the image
        raise SystemExit(
            "no --tls-cert-file/--tls-private-key-file given and trustme is not installed to"
            " make a self-signed certificate"
        ) from exc
    ca = trustme.CA()
    cert = ca.issue_cert(*hosts)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


@dataclass(slots=True)
class Running:
    """Handles a test or the CLI needs while the controller runs."""

    controller: Controller
    secure_port: int | None
    ops_port: int
    ready: asyncio.Event


class _Readiness:
    def __init__(self) -> None:
        self.listed = False
        self.tls_up = False
        self.stopping = False

    def __call__(self) -> tuple[bool, str]:
        if self.stopping:
            return False, "shutting down"
        if not self.listed:
            return False, "policies not listed yet"
        if not self.tls_up:
            return False, "external metrics server not up"
        return True, ""


async def run(
    settings: ControllerSettings,
    stop: asyncio.Event,
    *,
    api_client: Any | None = None,
    on_running: Callable[[Running], Awaitable[None] | None] | None = None,
) -> int:
    """Run the controller until ``stop`` is set; return the exit code."""
    own_client = api_client is None
    api = api_client if api_client is not None else await kube_client(settings.kubeconfig)
    api.user_agent = f"gpuscale-controller/{settings.leader.identity}"
    core = kclient.CoreV1Api(api)
    apps = kclient.AppsV1Api(api)
    metrics = ops.ControllerMetrics()
    store = DecisionStore()
    readiness = _Readiness()
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[Any]] = []
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=settings.prometheus_timeout)
    )
    controller: Controller | None = None
    try:
        hpas: HpaReconciler | None = None
        if settings.actuation == "hpa":
            tolerance = await _tolerance_supported(api)
            hpas = HpaReconciler(kclient.AutoscalingV2Api(api), tolerance=tolerance)
        querier = PrometheusClient(
            session,
            PrometheusSettings(
                settings.prometheus_url,
                timeout=settings.prometheus_timeout,
                concurrency=settings.prometheus_concurrency,
            ),
            observe=metrics.observe_query,
        )
        holder: list[Controller] = []
        source = PolicySource(
            core,
            SourceSettings(namespace=settings.namespace),
            on_change=lambda key, entry: holder[0].on_policy_change(key, entry),
        )
        leadership: LeaderElector | AlwaysLeader
        if settings.leader_elect:
            leadership = LeaderElector(
                kclient.CoordinationV1Api(api),
                settings.leader,
                on_change=lambda leading: holder[0].on_leadership_change(leading),
            )
        else:
            leadership = AlwaysLeader()
        controller = Controller(
            core_api=core,
            targets=TargetReplicas(apps, namespace=settings.namespace),
            querier=querier,
            source=source,
            store=store,
            metrics=metrics,
            leadership=leadership,
            feedback=Feedback(core, identity=settings.leader.identity),
            hpas=hpas,
            monotonic=loop.time,
            wall=time.time,
            hpa_resync=settings.hpa_resync,
        )
        holder.append(controller)
        metrics.policy_states = controller.policy_states
        if not settings.leader_elect:
            controller.on_leadership_change(True)

        async with contextlib.AsyncExitStack() as stack:
            ops_port = await stack.enter_async_context(
                serving(ops.build_app(metrics, ready=readiness), settings.ops_address)
            )
            secure_port: int | None = None
            if settings.actuation == "hpa":
                secure_port = await stack.enter_async_context(
                    serving(
                        external_metrics.build_app(
                            store,
                            external_metrics.ExternalMetricsSettings(settings.stale_after),
                        ),
                        settings.secure_address,
                        _server_context(settings),
                    )
                )
            readiness.tls_up = True
            tasks.append(asyncio.create_task(source.run(), name="policy source"))
            tasks.append(asyncio.create_task(leadership.run(), name="leader election"))
            tasks.append(asyncio.create_task(controller.run_hpa_worker(), name="hpa worker"))
            log.info(
                "controller started",
                extra={
                    "identity": settings.leader.identity,
                    "actuation": settings.actuation,
                    "secure_port": secure_port,
                    "ops_port": ops_port,
                },
            )
            ready = asyncio.Event()
            running = Running(controller, secure_port, ops_port, ready)
            if on_running is not None:
                maybe = on_running(running)
                if maybe is not None:
                    await maybe
            listed = asyncio.create_task(source.listed.wait())
            stopping = asyncio.create_task(stop.wait())
            failed = asyncio.create_task(_first_failure(tasks))
            await asyncio.wait({listed, stopping, failed}, return_when=asyncio.FIRST_COMPLETED)
            if listed.done():
                readiness.listed = True
                # Imports, the generated client's models and the policies are long-lived: move
                # them out of the collector's sight so full collections stay cheap.
                gc.freeze()
                ready.set()
                await asyncio.wait({stopping, failed}, return_when=asyncio.FIRST_COMPLETED)
            for t in (listed, stopping, failed):
                t.cancel()
            error = failed.exception() if failed.done() and not failed.cancelled() else None
            if error is not None:
                raise error
            readiness.stopping = True
            log.info("stopping: draining ticks")
            await controller.scheduler.drain(settings.drain_timeout)
            # Release the lease before the servers go, so a standby takes over at once.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            tasks.clear()
        log.info("controller stopped")
        return 0
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if controller is not None:
            await controller.scheduler.close()
            await controller.close()
            await controller.targets.close()
        await session.close()
        if own_client:
            await api.close()


async def _first_failure(tasks: list[asyncio.Task[Any]]) -> None:
    """Return when a long-running task ends by itself (a bug): re-raise its error."""
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error
    raise RuntimeError(f"task {next(iter(done)).get_name()} ended unexpectedly")


def _server_context(settings: ControllerSettings) -> ssl.SSLContext:
    if settings.tls_cert_file and settings.tls_private_key_file:
        return external_metrics.server_ssl_context(
            settings.tls_cert_file,
            settings.tls_private_key_file,
            settings.requestheader_client_ca_file,
        )
    log.warning("no serving certificate given; using a self-signed one")
    context = self_signed_context(["localhost", "127.0.0.1", os.uname().nodename])
    if settings.requestheader_client_ca_file:
        context.load_verify_locations(cafile=settings.requestheader_client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def _tolerance_supported(api: Any) -> bool:
    try:
        version = await call(kclient.VersionApi(api).get_code)
    except (KubeError, aiohttp.ClientError, OSError) as exc:
        log.warning(
            "server version unknown; HPA tolerance left at default", extra={"error": str(exc)}
        )
        return False
    supported = supports_tolerance(version)
    log.info(
        "server version",
        extra={"version": version.get("gitVersion"), "hpa_tolerance_zero": supported},
    )
    return supported


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


class StartupError(Exception):
    """The controller could not start (bad kubeconfig, certificate, busy port); says why."""


def main(settings: ControllerSettings) -> int:
    """Run until SIGTERM/SIGINT; the CLI's entry point."""

    async def _main() -> int:
        stop = asyncio.Event()
        install_signal_handlers(stop)
        return await run(settings, stop)

    try:
        return asyncio.run(_main())
    except kconfig.ConfigException as exc:
        raise StartupError(f"cannot load Kubernetes configuration: {exc}") from exc
    except ssl.SSLError as exc:
        raise StartupError(f"cannot load TLS certificate or key: {exc}") from exc
    except OSError as exc:
        raise StartupError(f"cannot start: {exc}") from exc
