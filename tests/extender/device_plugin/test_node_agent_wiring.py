"""``gpuscale node-agent --device-plugin``: the flags, and the agent serving the plugin."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from extender.app import serve_node_agent
from extender.device_plugin.devices import FakeNvml
from extender.device_plugin.server import PluginSettings
from extender.inventory import parse_gpus_annotation
from gpuscale.cli import main
from tests.extender.device_plugin.test_fake_kubelet import GPUS, FakeKubelet, gpu_pod, until
from tests.support.kube_standin import KubeStandIn


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fake-inventory", "/no/such.json"], "--fake-inventory: /no/such.json"),
        (["--device-plugin", "--device-plugin-dir", "/no/such"], "no such directory"),
        (["--device-plugin", "--device-plugin-shares", "0"], "shares = 0, must be between"),
    ],
)
def test_cli_device_plugin_flag_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["node-agent", "--node-name", "n1", *args]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_names_a_bad_fake_inventory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "gpus.json"
    bad.write_text('[{"index": 0}]')
    assert main(["node-agent", "--node-name", "n1", "--fake-inventory", str(bad)]) == 1
    assert "[0].totalMiB" in capsys.readouterr().err


async def test_the_node_agent_publishes_and_serves_the_device_plugin(
    kube: KubeStandIn, kube_client: Any
) -> None:
    kube.store.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gpu-1"}})
    directory = Path("/tmp") / f"gdpa-{os.getpid()}"
    directory.mkdir()
    kubelet = FakeKubelet(directory)
    try:
        inventory = directory / "gpus.json"
        inventory.write_bytes(orjson.dumps(GPUS))
        await kubelet.start()
        stop = asyncio.Event()
        ports: list[int] = []
        agent = asyncio.create_task(
            serve_node_agent(
                "gpu-1",
                interval=0.05,
                kubeconfig=None,
                address="127.0.0.1:0",
                nvml=FakeNvml(str(inventory)),
                api_client=kube_client,
                stop=stop,
                on_listening=ports.append,
                device_plugin=PluginSettings(
                    node="gpu-1",
                    directory=str(directory),
                    pod_resources_socket=str(directory / "pod-resources.sock"),
                    poll_interval=0.02,
                ),
            )
        )
        await until(lambda: len(kubelet.devices) == 4 * 16)
        node = await kube.wait_for_object(
            "nodes",
            None,
            "gpu-1",
            lambda n: "gpuscale.io/gpus" in (n["metadata"].get("annotations") or {}),
        )
        published = parse_gpus_annotation(node["metadata"]["annotations"]["gpuscale.io/gpus"])
        assert [d.uuid for d in published.devices] == [g["uuid"] for g in GPUS]
        pod = kube.store.create(gpu_pod("a", "3"))
        envs = await kubelet.admit(pod)
        assert envs["vllm"]["NVIDIA_VISIBLE_DEVICES"] == GPUS[3]["uuid"]
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{ports[0]}/metrics") as resp,
        ):
            metrics = await resp.text()
        assert "gpuscale_device_plugin_registered 1.0" in metrics
        assert "gpuscale_device_plugin_allocations_total 1.0" in metrics
        assert "gpuscale_node_agent_gpus 4.0" in metrics
        stop.set()
        await asyncio.wait_for(agent, 10)
        assert not (directory / "gpuscale-gpu.sock").exists()
    finally:
        await kubelet.stop()
        for p in directory.iterdir():
            p.unlink()
        directory.rmdir()
