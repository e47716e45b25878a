"""Node agent health: the probes' rules, the loop's record, and the served endpoints scraped by
a real Prometheus while the agent patches the API stand-in."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from extender.app import serve_node_agent
from extender.node_agent import AgentHealth, NoNvml, live_problem, ready_problem, run
from gpuscale.cli import main
from tests.extender.test_agent_and_app import GIB, FakeNvml
from tests.support.fixtures import PrometheusFactory
from tests.support.kube_standin import KubeStandIn

BOUND = 60.0


def test_not_ready_before_the_first_read_and_publish() -> None:
    h = AgentHealth(started=100.0)
    assert ready_problem(h, 101.0, BOUND) == "no successful NVML read yet"
    h = AgentHealth(started=100.0, last_read=101.0, last_error="patching node n: 503")
    problem = ready_problem(h, 102.0, BOUND)
    assert problem == "no successful annotation publish yet; last error: patching node n: 503"


def test_ready_within_the_bound_and_not_after() -> None:
    h = AgentHealth(started=0.0, last_tick=100.0, last_read=100.0, last_publish=100.0)
    assert ready_problem(h, 100.0 + BOUND, BOUND) is None
    stale = ready_problem(h, 161.0, BOUND)
    assert stale == "last successful NVML read was 61s ago (bound 60s)"


def test_publish_failures_alone_make_it_unready() -> None:
    h = AgentHealth(started=0.0, last_tick=200.0, last_read=200.0, last_publish=100.0)
    assert ready_problem(h, 200.0, BOUND) == (
        "last successful annotation publish was 100s ago (bound 60s)"
    )
    assert live_problem(h, 200.0, BOUND) is None


def test_live_while_ticks_end_whatever_their_outcome() -> None:
    assert live_problem(AgentHealth(started=0.0), BOUND, BOUND) is None
    assert live_problem(AgentHealth(started=0.0), 61.0, BOUND) == (
        "no publishing tick has ended for 61s (bound 60s)"
    )
    assert live_problem(AgentHealth(started=0.0, last_tick=50.0), 100.0, BOUND) is None


@given(
    read=st.floats(0, 1e6),
    publish=st.floats(0, 1e6),
    now=st.floats(0, 2e6),
    bound=st.floats(1, 1e4),
)
def test_ready_exactly_when_both_successes_are_recent(
    read: float, publish: float, now: float, bound: float
) -> None:
    h = AgentHealth(started=0.0, last_read=read, last_publish=publish)
    expected = now - read <= bound and now - publish <= bound
    assert (ready_problem(h, now, bound) is None) == expected


async def test_the_loop_records_reads_publishes_and_errors() -> None:
    nvml = FakeNvml([(80 * GIB, GIB), (80 * GIB, 0)])
    outcomes = iter([RuntimeError("apiserver down"), None, None])
    clock = iter(float(t) for t in range(1000))
    seen: list[AgentHealth] = []

    async def patch(node: str, annotations: dict[str, str]) -> None:
        exc = next(outcomes)
        if exc is not None:
            raise exc

    async def sleep(_: float) -> None:
        if len(seen) == 3:
            nvml.broken = True

    with pytest.raises(NoNvml):
        await run(
            nvml,
            "gpu-1",
            patch,
            interval=10,
            clock=lambda: next(clock),
            sleep=sleep,
            report=seen.append,
        )
    first, second, third, last = seen
    assert (first.reads, first.publishes, first.publish_errors) == (1, 0, 1)
    assert "apiserver down" in first.last_error and first.last_publish is None
    assert (second.reads, second.publishes, second.last_error) == (2, 1, "")
    assert second.last_publish == second.last_tick and second.gpus == 2
    assert third.publishes == 2 and third.last_publish is not None
    assert last.reads == 3 and "GPU is lost" in last.last_error
    assert last.last_tick is not None and last.last_tick > third.last_tick  # type: ignore[operator]


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as resp:
        return resp.status, await resp.text()


async def _until(
    session: aiohttp.ClientSession, url: str, ok: Callable[[int, str], bool], within: float = 10
) -> tuple[int, str]:
    last = (0, "")
    async with asyncio.timeout(within):
        while not ok(*last):
            last = await _get(session, url)
            if not ok(*last):
                await asyncio.sleep(0.02)
    return last


async def test_probes_and_metrics_served_and_scraped(
    kube: KubeStandIn, kube_client: Any, prometheus_factory: PrometheusFactory
) -> None:
    kube.store.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gpu-1"}})
    nvml = FakeNvml([(80 * GIB, 10 * GIB)])
    stop = asyncio.Event()
    port: list[int] = []
    listening = asyncio.Event()

    def on_listening(p: int) -> None:
        port.append(p)
        listening.set()

    agent = asyncio.create_task(
        serve_node_agent(
            "gpu-1",
            interval=0.05,
            kubeconfig=None,
            address="127.0.0.1:0",
            stale_after=0.5,
            nvml=nvml,
            api_client=kube_client,
            stop=stop,
            on_listening=on_listening,
        )
    )
    try:
        await asyncio.wait_for(listening.wait(), 10)
        base = f"http://127.0.0.1:{port[0]}"
        prom = prometheus_factory([f"127.0.0.1:{port[0]}"], job_name="node-agent")
        async with aiohttp.ClientSession() as session:
            assert await _until(session, f"{base}/readyz", lambda s, _: s == 200) == (200, "ok")
            assert (await _get(session, f"{base}/livez")) == (200, "ok")
            published = await prom.wait_for_value(
                'gpuscale_node_agent_publishes_total{job="node-agent"}', lambda v: v >= 1
            )
            assert published >= 1
            assert await prom.wait_for_value("gpuscale_node_agent_gpus", lambda v: v == 1) == 1
            assert (
                await prom.query_value("gpuscale_node_agent_last_success_timestamp_seconds > 0")
                is not None
            )
            # The Node disappears: patches fail, the agent stays alive but turns unready.
            kube.store.delete("nodes", None, "gpu-1")
            _, text = await _until(session, f"{base}/readyz", lambda s, _: s == 503)
            assert "annotation publish" in text and "gpu-1" in text
            assert (await _get(session, f"{base}/livez"))[0] == 200
            errors = await prom.wait_for_value(
                "gpuscale_node_agent_publish_errors_total", lambda v: v >= 1
            )
            assert errors >= 1
            # It comes back: ready again without a restart.
            kube.store.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gpu-1"}})
            assert (await _until(session, f"{base}/readyz", lambda s, _: s == 200))[0] == 200
            stop.set()
            await asyncio.wait_for(agent, 5)
    finally:
        stop.set()
        await asyncio.wait_for(agent, 5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stale-after", "soon"], "--stale-after"),
        (["--stale-after", "5s", "--interval", "10s"], "must be longer than --interval"),
        (["--address", "nowhere"], "--address"),
        (["--interval", "0s"], "must be positive"),
    ],
)
def test_cli_node_agent_flag_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["node-agent", "--node-name", "n1", *args]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
