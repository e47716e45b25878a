"""Fixtures of the real-cluster e2e (``make e2e``): one control plane for the whole session.

``control_plane`` starts etcd, kube-apiserver, kube-controller-manager and kwok from the binaries
``make cluster`` built; ``installed`` applies ``deploy/`` to it (see ``install.py``). Tests marked
``cluster`` need them: where the binaries are missing the test FAILS and says to run
``make cluster`` (these tests run wherever Go is, so a skip would hide a broken build).
``real_node`` adds a kubelet node (``node.py``); it skips, with the reason, where this machine
cannot run one (not root, Debian packages missing, runc refused).
``GPUSCALE_E2E_KEEP=1`` leaves the work folder (logs, kubeconfigs) in place and prints it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.build import COMPONENTS, binary_dir, is_built
from tests.e2e.cluster import ControlPlane
from tests.e2e.install import Installed, install
from tests.e2e.node import (
    NodeUnavailable,
    RealNode,
    keep_node_logs,
    node_binaries_missing,
    unavailable_reason,
)
from tests.support.inference_server import InferenceServer
from tests.support.kube_standin import make_api_client
from tests.support.prometheus import PrometheusServer


def _missing() -> list[str]:
    # The real node's binaries are the `real_node` fixture's to check (it may skip).
    return [
        f"{key} ({binary_dir(c)})"
        for key, c in COMPONENTS.items()
        if key != "node" and not is_built(c)
    ]


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    missing = _missing()
    if missing:
        pytest.fail(f"cluster binaries not built: {', '.join(missing)}; run `make cluster`")
    keep = bool(os.environ.get("GPUSCALE_E2E_KEEP"))
    workdir = Path(tempfile.mkdtemp(prefix="gpuscale-e2e-"))
    cp = ControlPlane(workdir)
    try:
        cp.start()
        yield cp
    finally:
        cp.stop()
        if keep:
            print(f"\ne2e work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(autouse=True)
def _components_alive(request: pytest.FixtureRequest) -> Iterator[None]:
    """A component that died during a test fails that test with its log, not a later one."""
    yield
    if "control_plane" in request.fixturenames:
        cp: ControlPlane = request.getfixturevalue("control_plane")
        cp.check_alive()
    if "real_node" in request.fixturenames:
        node: RealNode = request.getfixturevalue("real_node")
        node.check_alive()


@pytest.fixture(scope="session")
def real_node(request: pytest.FixtureRequest, control_plane: ControlPlane) -> Iterator[RealNode]:
    """Node ``real-0`` (containerd, kubelet, kube-proxy) joined to the control plane; see
    ``node.py`` for what it offers. Skips where it cannot run (not root, packages missing,
    runc refused); fails where it is not built. Its logs are kept when anything failed."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    missing = node_binaries_missing()
    if missing:
        pytest.fail(missing)
    node = RealNode(control_plane, control_plane.workdir / "node")
    failed_before = request.session.testsfailed
    try:
        try:
            node.start()
        except NodeUnavailable as exc:
            pytest.skip(str(exc))
        except BaseException:
            keep_node_logs(node)
            raise
        yield node
        if request.session.testsfailed > failed_before:
            keep_node_logs(node)
    finally:
        node.stop()


@pytest.fixture(scope="session")
def installed(control_plane: ControlPlane) -> Installed:
    return install(control_plane)


@pytest.fixture
async def admin_client(control_plane: ControlPlane) -> AsyncIterator[Any]:
    """The official ``kubernetes.aio`` ApiClient as cluster admin."""
    client = await make_api_client(control_plane.admin_kubeconfig)
    try:
        yield client
    finally:
        await client.close()


class ThreadedInferenceServer:
    """The synthetic vLLM metrics server on a loop of its own, so session-scoped fixtures and
    every test's loop can share it; its gauges are set from any thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = InferenceServer()

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def vllm_server() -> Iterator[InferenceServer]:
    server = ThreadedInferenceServer()
    server.start()
    try:
        yield server.server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def prometheus(
    request: pytest.FixtureRequest,
    vllm_server: InferenceServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PrometheusServer]:
    """Debian's Prometheus scraping the module's vLLM-style server every second.

    Its series carry ``namespace="<the module's NS>"``, as Kubernetes service discovery would
    label a pod's series: the controller runs with namespace enforcement on, as deploy/ does.
    """
    namespace = getattr(request.module, "NS", None)
    server = PrometheusServer(
        tmp_path_factory.mktemp("prometheus"),
        [vllm_server.target],
        labels={"namespace": namespace} if namespace else None,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()
