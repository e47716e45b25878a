"""Node agent (NVML stand-in), DCGM polling, the extender process end to end, and the CLI."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from extender.app import ExtenderProcess, serve_extender, serve_node_agent
from extender.dcgm import DcgmError, poll_once
from extender.fragmentation import Fragmentation
from extender.inventory import InventoryConfig, parse_gpus_annotation
from extender.node_agent import NoNvml, publish_once, read_devices, run
from extender.scoring import get_strategy, register
from gpuscale.cli import main
from runtime.startup import StartupError, parse_address
from tests.extender.test_cluster_cache import pod_obj
from tests.support.kube_standin import KubeStandIn

GIB = 2**30


@dataclass
class Mem:
    total: int
    used: int
    free: int


class FakeNvml:
    """The slice of pynvml the agent uses, over a list of (total, used) bytes."""

    class NVMLError(Exception):
        pass

    def __init__(self, devices: list[tuple[int, int]]) -> None:
        self.devices = devices
        self.broken = False
        self.shut_down = False

    def nvmlDeviceGetCount(self) -> int:
        if self.broken:
            raise self.NVMLError("GPU is lost")
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Mem:
        total, used = self.devices[h]
        return Mem(total, used, total - used)

    def nvmlDeviceGetUUID(self, h: int) -> bytes:
        return f"GPU-{h:04d}".encode()

    def nvmlDeviceGetName(self, h: int) -> str:
        return "NVIDIA H100 80GB HBM3"

    def nvmlShutdown(self) -> None:
        self.shut_down = True


def test_read_devices_converts_to_mib() -> None:
    nvml = FakeNvml([(80 * GIB, GIB + 1), (80 * GIB, 0)])
    devices = read_devices(nvml)
    assert [(d.index, d.uuid, d.total_mib, d.used_mib) for d in devices] == [
        (0, "GPU-0000", 81920, 1025),  # used rounds up: never report more free than there is
        (1, "GPU-0001", 81920, 0),
    ]
    nvml.broken = True
    with pytest.raises(NoNvml, match="GPU is lost"):
        read_devices(nvml)


async def test_publish_and_run() -> None:
    nvml = FakeNvml([(80 * GIB, 40 * GIB)])
    patches: list[tuple[str, dict[str, str]]] = []

    async def patch(node: str, annotations: dict[str, str]) -> None:
        patches.append((node, annotations))

    await publish_once(nvml, "gpu-1", patch, lambda: 1_800_000_000.0)
    node, ann = patches[0]
    report = parse_gpus_annotation(ann["gpuscale.io/gpus"])
    assert node == "gpu-1" and report.time == 1_800_000_000.0
    assert report.devices[0].used_mib == 40960

    ticks: list[float] = []
    failures = iter([RuntimeError("apiserver down"), None, None])

    async def flaky(node: str, annotations: dict[str, str]) -> None:
        exc = next(failures)
        if exc is not None:
            raise exc

    async def sleep(seconds: float) -> None:
        ticks.append(seconds)
        if len(ticks) == 3:
            nvml.broken = True

    with pytest.raises(NoNvml):
        await run(nvml, "gpu-1", flaky, interval=10, clock=lambda: 0.0, sleep=sleep)
    assert ticks == [10, 10, 10]


async def test_node_agent_patches_the_node(kube: KubeStandIn, kube_client: Any) -> None:
    kube.store.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gpu-1"}})
    nvml = FakeNvml([(80 * GIB, 10 * GIB), (80 * GIB, 0)])
    stop = asyncio.Event()
    agent = asyncio.create_task(
        serve_node_agent(
            "gpu-1", interval=0.05, kubeconfig=None, nvml=nvml, api_client=kube_client, stop=stop
        )
    )
    node = await kube.wait_for_object(
        "nodes",
        None,
        "gpu-1",
        lambda n: "gpuscale.io/gpus" in (n["metadata"].get("annotations") or {}),
    )
    stop.set()
    await asyncio.wait_for(agent, 5)
    assert nvml.shut_down
    devices = parse_gpus_annotation(node["metadata"]["annotations"]["gpuscale.io/gpus"]).devices
    assert [(d.used_mib, d.total_mib) for d in devices] == [(10240, 81920), (0, 81920)]


async def test_node_agent_without_driver_fails_clearly() -> None:
    with pytest.raises(NoNvml, match="NVML"):
        await serve_node_agent("n", interval=1, kubeconfig=None)


def test_cli_node_agent_without_driver_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["node-agent", "--node-name", "n1"]) == 1
    err = capsys.readouterr().err
    assert "gpuscale node-agent:" in err and "NVML" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stale-after", "soon"], "--stale-after"),
        (["--reservation-ttl", "-"], "--reservation-ttl"),
        (["--address", "nowhere"], "--address"),
        (["--inventory", "nvml"], "inventory sources"),
        (["--inventory", "dcgm"], "needs --prometheus-url"),
        (["--prometheus-url", "prom:9090"], "http(s) URL"),
        (["--kubeconfig", "/no/such/file"], "no such file"),
    ],
)
def test_cli_extender_flag_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["extender", *args]) == 1
    assert message in capsys.readouterr().err


def test_parse_address() -> None:
    assert parse_address("0.0.0.0:8888") == ("0.0.0.0", 8888)
    assert parse_address("[::1]:80") == ("::1", 80)
    assert parse_address(":9") == ("0.0.0.0", 9)
    for bad in ("8888", "h:x", "h:70000"):
        with pytest.raises(StartupError):
            parse_address(bad)


@contextlib.asynccontextmanager
async def fake_prometheus(results: dict[str, Any]) -> AsyncIterator[str]:
    async def query(request: web.Request) -> web.Response:
        expr = request.query["query"]
        if expr not in results:
            return web.json_response({"status": "error", "error": "unknown"}, status=400)
        return web.json_response(
            {"status": "success", "data": {"resultType": "vector", "result": results[expr]}}
        )

    app = web.Application()
    app.router.add_get("/api/v1/query", query)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = next(a for a in runner.addresses if isinstance(a, tuple))[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_dcgm_poll() -> None:
    def series(node: str, gpu: str, v: float) -> dict[str, Any]:
        return {
            "metric": {"Hostname": node, "gpu": gpu, "modelName": "H100"},
            "value": [1_800_000_000, str(v)],
        }

    results = {
        "DCGM_FI_DEV_FB_FREE": [series("n1", "0", 1000), series("n1", "1", 81000)],
        "DCGM_FI_DEV_FB_USED": [series("n1", "0", 80000), series("n1", "1", 0)],
    }
    async with fake_prometheus(results) as url, aiohttp.ClientSession() as session:
        reports = await poll_once(session, url)
        assert [(d.total_mib, d.used_mib) for d in reports["n1"].devices] == [
            (81000, 80000),
            (81000, 0),
        ]
        assert reports["n1"].time == 1_800_000_000
    async with fake_prometheus({}) as url, aiohttp.ClientSession() as session:
        with pytest.raises(DcgmError, match="unknown"):
            await poll_once(session, url)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(DcgmError):
            await poll_once(session, "http://127.0.0.1:9")


async def test_extender_process_end_to_end(kube: KubeStandIn, kube_client: Any) -> None:
    """Node agent publishes, the extender lists it, filters, binds through the API."""
    kube.store.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gpu-1"}})
    kube.store.create(pod_obj("llm", 40000))
    nvml = FakeNvml([(80 * GIB, 70 * GIB), (80 * GIB, 10 * GIB)])
    stop = asyncio.Event()
    ready = asyncio.Event()
    ports: list[int] = []
    agent = asyncio.create_task(
        serve_node_agent(
            "gpu-1", interval=0.05, kubeconfig=None, nvml=nvml, api_client=kube_client, stop=stop
        )
    )
    server: asyncio.Task[None] | None = None
    try:
        await kube.wait_for_object(
            "nodes",
            None,
            "gpu-1",
            lambda n: "gpuscale.io/gpus" in (n["metadata"].get("annotations") or {}),
        )
        server = asyncio.create_task(
            serve_extender(
                ExtenderProcess(
                    address="127.0.0.1:0",
                    plain_http_sidecar=True,
                    ops_address=None,
                    inventory=InventoryConfig(stale_after=30),
                ),
                stop=stop,
                api_client=kube_client,
                on_listening=ports.append,
                ready=ready,
            )
        )
        await asyncio.wait_for(ready.wait(), 10)
        pod = kube.store.get("pods", "default", "llm")
        assert pod is not None
        base = f"http://127.0.0.1:{ports[0]}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 200
            args = {"Pod": pod, "Nodes": None, "NodeNames": ["gpu-1"]}
            async with http.post(f"{base}/filter", data=orjson.dumps(args)) as r:
                assert orjson.loads(await r.read())["NodeNames"] == ["gpu-1"]
            bind = {
                "PodName": "llm",
                "PodNamespace": "default",
                "PodUID": pod["metadata"]["uid"],
                "Node": "gpu-1",
            }
            async with http.post(f"{base}/bind", data=orjson.dumps(bind)) as r:
                assert orjson.loads(await r.read()) == {"Error": ""}
            bound = await kube.wait_for_object(
                "pods", "default", "llm", lambda p: bool(p["spec"].get("nodeName"))
            )
            assert bound["metadata"]["annotations"]["gpuscale.io/gpu-indices"] == "1"
            async with http.get(f"{base}/metrics") as r:
                assert 'gpuscale_extender_binds_total{result="bound"} 1.0' in await r.text()
        learned = get_strategy("fragmentation")  # learned from the listed pods before ready
        assert isinstance(learned, Fragmentation)
        assert [s.mib_per_gpu for s in learned.workload.shapes] == [40000]
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(agent, *([server] if server else [])), 10)
        register(Fragmentation())


async def test_dcgm_poller_feeds_the_state() -> None:
    from extender.cluster_state import ClusterState
    from extender.dcgm import run_poller

    series = [{"metric": {"Hostname": "n1", "gpu": "0"}, "value": [1_800_000_000, "100"]}]
    results = {"DCGM_FI_DEV_FB_FREE": series, "DCGM_FI_DEV_FB_USED": series}
    state = ClusterState(InventoryConfig(sources=("dcgm",)))
    polled: list[bool] = []
    done = asyncio.Event()

    def on_poll(ok: bool) -> None:
        polled.append(ok)
        done.set()

    async with fake_prometheus(results) as url, aiohttp.ClientSession() as session:
        task = asyncio.create_task(run_poller(session, url, state, interval=60, on_poll=on_poll))
        await asyncio.wait_for(done.wait(), 5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert polled == [True]
    assert [(d.total_mib, d.used_mib) for d in state.dcgm["n1"].devices] == [(200, 100)]
