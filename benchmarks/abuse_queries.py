"""Hostile tenants against the controller's Prometheus side (issue 21's query rows).

One healthy policy (namespace ``healthy``, 1 s interval) shares a ``gpuscale controller`` child
process with attacking policies whose queries a stand-in Prometheus (in this process) answers
with a million series (~150 MB, streamed in chunks, never held whole here) or never answers at
all. Per row, beside a quiet run of the same length: the controller's peak RSS, the healthy
policy's decisions and its longest gap between them (sampled every 0.25 s), and its tick
lateness from the controller's own histogram. Targets: peak RSS within 70% of deploy/'s 512 MiB
limit, and the healthy policy misses at most one tick (longest gap <= 2 intervals).

    python benchmarks/abuse_queries.py [--seconds 20] [--only quiet,huge,hung-41,hung-201]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.controller_probe import (  # noqa: E402
    child,
    decision_times,
    policy_objects,
    rss_mib,
    scrape,
)
from tests.support.kube_standin import KubeStandIn  # noqa: E402
from tests.support.prometheus import free_port  # noqa: E402

HEALTHY = "healthy/svc"
LIMIT_MIB = 512
INTERVAL = 1.0


@dataclass(frozen=True)
class Row:
    name: str
    attackers: int
    kind: str  # "" (quiet), "huge" or "hang"


ROWS = {
    "quiet": Row("quiet run", 0, ""),
    "huge": Row("1 policy answered with 1M series (~150 MB)", 1, "huge"),
    "hung-41": Row("41 policies whose query hangs", 41, "hang"),
    "hung-201": Row("201 policies whose query hangs", 201, "hang"),
}


@dataclass(frozen=True)
class Result:
    row: Row
    peak_rss: float
    decisions: int
    longest_gap: float
    answered_bytes: int


_ONE_SERIES = (
    b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"9"]}]}}'
)


class HostilePrometheus:
    """``/api/v1/query``: the healthy query gets one series; ``huge`` queries a million series,
    written in 1 MiB chunks; ``hang`` queries no answer until the client leaves."""

    def __init__(self) -> None:
        self.sent = 0
        self.port = free_port()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def _query(self, request: web.Request) -> web.StreamResponse:
        query = str((await request.post()).get("query", ""))
        if "hang" in query:
            await self._closing.wait()
            raise web.HTTPServiceUnavailable
        if "huge" in query:
            return await self._million(request)
        return web.Response(body=_ONE_SERIES, content_type="application/json")

    async def _million(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        series = (
            b'{"metric":{"__name__":"vllm:num_requests_waiting","pod":"p%07d"},"value":[1,"1"]},'
        )
        head = b'{"status":"success","data":{"resultType":"vector","result":['
        try:
            await response.write(head)
            chunk: list[bytes] = []
            for i in range(1_000_000):
                chunk.append(series % i)
                if len(chunk) == 8192:
                    data = b"".join(chunk)
                    await response.write(data)
                    self.sent += len(data)
                    chunk = []
            await response.write(b"".join(chunk) + b"{}]}}")
            await response.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass  # the client stopped reading: what we want
        return response

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/v1/query", self._query)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()


def _policy(namespace: str, name: str, query: str) -> list[dict[str, Any]]:
    metric = {"name": "queue", "type": "queueDepth", "query": query, "targetPerReplica": 4}
    return policy_objects(namespace, name, INTERVAL, [metric])


@contextlib.asynccontextmanager
async def _controller(kubeconfig: Path, prometheus: str) -> AsyncIterator[tuple[Any, int]]:
    ops = free_port()
    args = [
        sys.executable, "-m", "gpuscale", "controller", "--kubeconfig", str(kubeconfig),
        "--prometheus-url", prometheus, "--ops-address", f"127.0.0.1:{ops}",
        "--secure-address", f"127.0.0.1:{free_port()}", "--insecure-allow-any-client",
        "--no-leader-elect", "--no-tenancy", "--log-level", "error",
    ]  # fmt: skip
    async with child(*args) as proc:
        yield proc, ops


async def run_row(row: Row, seconds: float) -> Result:
    kube = KubeStandIn()
    await kube.start()
    prometheus = HostilePrometheus()
    await prometheus.start()
    work = Path(tempfile.mkdtemp(prefix="abuse-queries-"))
    try:
        for obj in _policy("healthy", "svc", "sum(ok)"):
            kube.store.create(obj)
        for i in range(row.attackers):
            for obj in _policy("tenant-x", f"attack-{i}", f"sum({row.kind}_{i})"):
                kube.store.create(obj)
        kubeconfig = kube.write_kubeconfig(work / "kubeconfig")
        running = _controller(kubeconfig, f"http://127.0.0.1:{prometheus.port}")
        async with running as (proc, ops), aiohttp.ClientSession() as session:
            return await _observe(row, proc.pid, ops, session, seconds, prometheus)
    finally:
        await prometheus.stop()
        await kube.stop()


async def _observe(
    row: Row,
    pid: int,
    ops: int,
    session: aiohttp.ClientSession,
    seconds: float,
    prometheus: HostilePrometheus,
) -> Result:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while HEALTHY not in decision_times(await scrape(session, ops)):
        if loop.time() > deadline:
            raise SystemExit("the healthy policy made no decision within 60 s")
        await asyncio.sleep(0.25)
    last = decision_times(await scrape(session, ops))[HEALTHY]
    decided = 0
    longest = 0.0
    end = loop.time() + seconds
    while loop.time() < end:
        await asyncio.sleep(0.25)
        now = time.time()
        seen = decision_times(await scrape(session, ops)).get(HEALTHY, last)
        if seen != last:
            decided += 1
        longest = max(longest, now - seen)
        last = seen
    return Result(row, rss_mib(pid)[1], decided, longest, prometheus.sent)


def report(results: Sequence[Result], seconds: float) -> None:
    print(
        f"abuse_queries: one healthy policy (interval {INTERVAL:g} s) beside hostile tenants,"
        f" {seconds:g} s per row; controller limit {LIMIT_MIB} MiB (target peak <="
        f" {LIMIT_MIB * 0.7:.0f} MiB), healthy policy misses at most one tick"
    )
    print(f"  {'row':<44} {'peak RSS':>9} {'decisions':>9} {'longest gap':>11}  verdict")
    for r in results:
        ok = r.peak_rss <= LIMIT_MIB * 0.7 and r.longest_gap <= 2 * INTERVAL + 0.25
        extra = (
            f" (the stand-in sent {r.answered_bytes / 2**20:.0f} MiB)"
            if r.row.kind == "huge"
            else ""
        )
        print(
            f"  {r.row.name:<44} {r.peak_rss:>7.0f} MiB {r.decisions:>9} {r.longest_gap:>9.2f} s"
            f"  {'ok' if ok else 'NOT MET'}{extra}"
        )


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--only", default=",".join(ROWS), help="comma list of " + ", ".join(ROWS))
    args = parser.parse_args(argv)
    chosen = [ROWS[name] for name in args.only.split(",") if name]
    results = [await run_row(row, args.seconds) for row in chosen]
    report(results, args.seconds)


if __name__ == "__main__":
    asyncio.run(main())
