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
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes.aio import client as kclient

from autoscaler import authn, external_metrics, ops
from autoscaler.controller import Controller
from autoscaler.deletion_costs import DeletionCosts
from autoscaler.feedback import Feedback
from autoscaler.hpa import HpaReconciler, supports_tolerance
from autoscaler.leader import AlwaysLeader, LeaderElector
from autoscaler.pending import UnschedulablePods
from autoscaler.policy_source import PolicySource, SourceSettings
from autoscaler.prometheus import PrometheusClient, PrometheusSettings
from autoscaler.settings import ControllerSettings
from autoscaler.store import DecisionStore
from autoscaler.targets import TargetReplicas
from runtime.kube import KubeError, call
from runtime.process import stop_on_signals
from runtime.serving import ConnectionMetrics
from runtime.startup import Background, StartupError, kube_client, serving
from runtime.tls import ServingTLS

log = logging.getLogger(__name__)


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
    async with kube_client(settings.kubeconfig, api_client) as api:
        return await _run(settings, stop, api, on_running)


async def _run(
    settings: ControllerSettings,
    stop: asyncio.Event,
    api: Any,
    on_running: Callable[[Running], Awaitable[None] | None] | None,
) -> int:
    api.user_agent = f"gpuscale-controller/{settings.leader.identity}"
    core = kclient.CoreV1Api(api)
    apps = kclient.AppsV1Api(api)
    metrics = ops.ControllerMetrics()
    store = DecisionStore()
    readiness = _Readiness()
    loop = asyncio.get_running_loop()
    background = Background()
    # No session-wide timeout: each query's own deadline (slot wait included) bounds it, and a
    # second timer per request cost CPU on every query.
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
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
                concurrency_per_tenant=settings.prometheus_concurrency_per_namespace,
                max_answer_bytes=settings.prometheus_max_answer_bytes,
            ),
            observe=metrics.observe_query,
        )
        holder: list[Controller] = []
        source = PolicySource(
            core,
            SourceSettings(namespace=settings.namespace, tenancy_label=settings.tenancy_label),
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
        pods = UnschedulablePods(core, namespace=settings.namespace)
        pods.start()
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
            pods=pods,
            costs=DeletionCosts(core, querier),
        )
        holder.append(controller)
        metrics.policy_states = controller.policy_states
        if not settings.leader_elect:
            controller.on_leadership_change(True)

        guard: _FrontProxyGuard | None = None
        if settings.actuation == "hpa":
            guard = await _FrontProxyGuard.start(settings, core)

        connections = ConnectionMetrics(metrics.registry)
        async with contextlib.AsyncExitStack() as stack:
            ops_port = await stack.enter_async_context(
                serving(
                    ops.build_app(metrics, ready=readiness),
                    settings.ops_address,
                    name="ops",
                    limits=settings.limits,
                    metrics=connections,
                )
            )
            secure_port: int | None = None
            if guard is not None:
                secure_port = await stack.enter_async_context(
                    serving(
                        external_metrics.build_app(
                            store,
                            external_metrics.ExternalMetricsSettings(settings.stale_after),
                            trust=guard.current if guard.trust is not None else None,
                        ),
                        settings.secure_address,
                        guard.tls.listening,
                        name="secure",
                        limits=settings.limits,
                        metrics=connections,
                    )
                )
                background.start(guard.run(), "tls refresh")
            readiness.tls_up = True
            background.start(source.run(), "policy source")
            background.start(leadership.run(), "leader election")
            background.start(controller.run_hpa_worker(), "hpa worker")
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
            failed = asyncio.create_task(background.first_failure())
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
            await background.cancel()
        log.info("controller stopped")
        return 0
    finally:
        await background.cancel()
        if controller is not None:
            await controller.scheduler.close()
            await controller.close()
            await controller.targets.close()
            if controller.pods is not None:
                await controller.pods.close()
        await session.close()


class _FrontProxyGuard:
    """The serving TLS and the front-proxy trust, kept fresh while the controller runs.

    The trust comes from ``--requestheader-client-ca-file`` (re-read when the file changes) or
    from ``kube-system/extension-apiserver-authentication`` (re-read every ``authn_refresh`` s).
    A failed re-read keeps the last good trust.
    """

    def __init__(
        self, settings: ControllerSettings, core: Any, trust: authn.FrontProxy | None
    ) -> None:
        self.settings = settings
        self.core = core
        self.trust = trust
        self._ca_stamp = _file_mtime(settings.requestheader_client_ca_file)
        hosts = ["localhost", "127.0.0.1", os.uname().nodename]
        if not (settings.tls_cert_file and settings.tls_private_key_file):
            log.warning("no serving certificate given; using a self-signed one")
        self.tls = ServingTLS(
            settings.tls_cert_file,
            settings.tls_private_key_file,
            client_ca_pem=trust.ca_pem if trust is not None else None,
            hosts=hosts,
        )

    def current(self) -> authn.FrontProxy | None:
        return self.trust

    @classmethod
    async def start(cls, settings: ControllerSettings, core: Any) -> _FrontProxyGuard:
        if settings.requestheader_client_ca_file:
            trust: authn.FrontProxy | None = _trust_from_file(settings)
        else:
            try:
                trust = await _trust_from_cluster(core)
            except (KubeError, authn.AuthnConfigError, aiohttp.ClientError, OSError) as exc:
                if not settings.insecure_allow_any_client:
                    raise StartupError(
                        f"cannot read {authn.CONFIGMAP_NAMESPACE}/{authn.CONFIGMAP_NAME} for the"
                        f" front-proxy CA: {exc}; give --requestheader-client-ca-file, or"
                        " --insecure-allow-any-client (tests and development only)"
                    ) from exc
                trust = None
            if trust is None and not settings.insecure_allow_any_client:
                raise StartupError(
                    "no front-proxy CA: --requestheader-client-ca-file is not given and"
                    f" {authn.CONFIGMAP_NAMESPACE}/{authn.CONFIGMAP_NAME} has no"
                    " requestheader-client-ca-file; refusing to serve the metrics API to anyone"
                    " (--insecure-allow-any-client allows that, for tests and development only)"
                )
        if trust is None:
            log.warning("external metrics API open to any TLS client (--insecure-allow-any-client)")
        else:
            log.info(
                "front-proxy authentication",
                extra={"source": trust.source, "allowed_names": list(trust.allowed_names)},
            )
        return cls(settings, core, trust)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_lookup = loop.time() + self.settings.authn_refresh
        step = min(self.settings.tls_reload_interval, self.settings.authn_refresh)
        while True:
            await asyncio.sleep(step)
            self.tls.reload_if_changed()
            if self.trust is None:
                continue
            if self.settings.requestheader_client_ca_file:
                stamp = _file_mtime(self.settings.requestheader_client_ca_file)
                if stamp != self._ca_stamp:
                    self._ca_stamp = stamp
                    self._adopt(self._safely_from_file())
            elif loop.time() >= next_lookup:
                next_lookup = loop.time() + self.settings.authn_refresh
                try:
                    self._adopt(await _trust_from_cluster(self.core))
                except (KubeError, authn.AuthnConfigError, aiohttp.ClientError, OSError) as exc:
                    log.warning(
                        "cannot re-read the front-proxy configuration; keeping the last one",
                        extra={"error": str(exc)},
                    )

    def _safely_from_file(self) -> authn.FrontProxy | None:
        try:
            return _trust_from_file(self.settings)
        except StartupError as exc:
            log.warning(
                "front-proxy CA file unusable; keeping the last one", extra={"error": str(exc)}
            )
            return None

    def _adopt(self, trust: authn.FrontProxy | None) -> None:
        if trust is None:
            return
        self.tls.set_client_ca(trust.ca_pem)
        if trust != self.trust:
            log.info(
                "front-proxy authentication changed",
                extra={"source": trust.source, "allowed_names": list(trust.allowed_names)},
            )
        self.trust = trust


def _file_mtime(path: str | None) -> float | None:
    try:
        return os.stat(path).st_mtime_ns / 1e9 if path else None
    except OSError:
        return None


def _trust_from_file(settings: ControllerSettings) -> authn.FrontProxy:
    path = settings.requestheader_client_ca_file
    assert path is not None
    try:
        with open(path, encoding="utf-8") as handle:
            pem = handle.read()
        return authn.from_file(path, pem, settings.requestheader_allowed_names)
    except (OSError, UnicodeDecodeError, authn.AuthnConfigError) as exc:
        raise StartupError(f"--requestheader-client-ca-file: {exc}") from exc


async def _trust_from_cluster(core: Any) -> authn.FrontProxy | None:
    """The front-proxy trust kube-apiserver publishes; None when it publishes no CA."""
    try:
        obj = await call(
            core.read_namespaced_config_map, authn.CONFIGMAP_NAME, authn.CONFIGMAP_NAMESPACE
        )
    except KubeError as exc:
        if exc.not_found:
            return None
        raise
    data = obj.get("data")
    return authn.from_configmap(data if isinstance(data, dict) else None)


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


def main(settings: ControllerSettings) -> int:
    """Run until SIGTERM/SIGINT; the CLI's entry point."""

    async def _main() -> int:
        stop = asyncio.Event()
        stop_on_signals(stop)
        return await run(settings, stop)

    try:
        return asyncio.run(_main())
    except ssl.SSLError as exc:
        raise StartupError(f"cannot load TLS certificate or key: {exc}") from exc
    except OSError as exc:
        raise StartupError(f"cannot start: {exc}") from exc
