"""Request-level attacks on the extender (issue 21), each beside a quiet run of the same length.

The extender runs as a real process (spawned, cluster cached from paged lists as in
``bench_extender.py``) on stand-in nodes, on 127.0.0.1 only. For every row a healthy client
schedules pods (filter over every node name, prioritize over those that passed) and a pinger
calls ``/livez`` every 10 ms, first alone, then while an attacker process runs the row's attack
at a bounded rate for a bounded time. Printed per row: peak RSS of the extender during the row
(VmHWM, reset before it), the healthy client's p99 and the longest ``/livez`` wait, quiet and
under attack, what the attacker got back, and whether any later answer changed (the same
filter/prioritize requests and the cluster gauges of ``/metrics``, before and after the row).

Targets: peak RSS within the 1Gi limit deploy/ sets with 30% headroom (717 MiB), healthy p99
within 2x of the quiet run, no attack changes a later answer.

``python benchmarks/abuse_requests.py`` (5,000 nodes x 8 GPUs, 100,000 pods, 5 s per phase;
``--nodes/--pods/--seconds`` to change). Each attack is one async function below.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_extender import (
    NOW,
    build_cluster,
    pending_pods,
    percentile,
    read_pages,
    write_pages,
)
from tests.extender.test_filtering import node_json

LIMIT_MIB = 1024 * 0.7
"""deploy/'s 1Gi memory limit with 30% headroom."""
ATTACK_BUDGET_S = 60.0
"""No attacker process runs longer than this, whatever it was asked."""


# --------------------------------------------------------------------------- the server ---


def serve(nodes_path: str, pods_path: str, per_device: bool, port_q: Any, stop: Any) -> None:
    """The extender in a fresh interpreter, as ``gpuscale extender`` serves it (default flags
    but ``per_device``), on a cluster listed page by page."""
    import gc
    import logging

    from aiohttp import web

    from extender.cluster_state import ClusterState
    from extender.decode import node_from_json, pod_from_json
    from extender.fragmentation import learn
    from extender.inventory import InventoryConfig
    from extender.server import Extender, ExtenderSettings, Metrics, make_app

    state = ClusterState(InventoryConfig(stale_after=3600))
    state.replace_nodes(read_pages(nodes_path, node_from_json))
    state.replace_pods(read_pages(pods_path, pod_from_json))
    state.index(NOW)
    learn(state.pods.values())
    logging.getLogger("gpuscale").setLevel(logging.ERROR)  # one warning per refused request
    gc.collect()
    gc.freeze()

    async def main() -> None:
        metrics = Metrics(state, lambda: NOW, per_device=per_device)
        ext = Extender(state, ExtenderSettings(), metrics=metrics)
        runner = web.AppRunner(make_app(ext, metrics=metrics, clock=lambda: NOW), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port_q.put(next(a for a in runner.addresses if isinstance(a, tuple))[1])
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        await runner.cleanup()

    asyncio.run(main())


def reset_peak(pid: int) -> None:
    """Reset VmHWM of ``pid`` to its current RSS (Linux ``clear_refs`` value 5)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# --------------------------------------------------------------------------- the attacks ---


@dataclass
class Control:
    """The attacker's side of the row: ``ready()`` once its bodies are built; it attacks while
    ``active`` is set and stops for good when ``done`` is."""

    ready_event: Any
    active: Any
    done: Any

    def ready(self) -> None:
        self.ready_event.set()

    async def go(self) -> bool:
        """Wait until an attack phase; ``False`` once the row is over."""
        while not self.active.is_set():
            if self.done.is_set():
                return False
            await asyncio.sleep(0.005)
        return not self.done.is_set()


def _names(n: int) -> list[str]:
    return [f"node-{i:05d}" for i in range(n)]


async def _paced(
    control: Control, period: float, limit: int, one: Callable[[int], Awaitable[str]]
) -> Counter[str]:
    """Call ``one`` every ``period`` seconds during attack phases, ``limit`` times at most."""
    out: Counter[str] = Counter()
    k = 0
    while k < limit and await control.go():
        started = time.monotonic()
        try:
            out[await one(k)] += 1
        except (TimeoutError, aiohttp.ClientError) as exc:
            out[type(exc).__name__] += 1
        k += 1
        await asyncio.sleep(max(0.0, period - (time.monotonic() - started)))
    return out


async def _status(resp: aiohttp.ClientResponse) -> str:
    body = await resp.read()
    json_ok = resp.content_type == "application/json" and "Error" in orjson.loads(body or b"{}")
    return f"{resp.status}{' json' if json_ok else ''}"


async def big_body(base: str, nodes: int, control: Control) -> Counter[str]:
    """A 63 MiB ``[{},{},...]`` body to /filter, with Content-Length and chunked (no length),
    one every 0.5 s."""
    body = b"[" + b"{}," * (63 * 2**20 // 3) + b"{}]"
    piece = 1 << 20

    async def chunks() -> AsyncIterator[bytes]:
        for k in range(0, len(body), piece):
            yield body[k : k + piece]

    control.ready()
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as s:

        async def one(k: int) -> str:
            data: Any = body if k % 2 == 0 else chunks()
            async with s.post(f"{base}/filter", data=data) as resp:
                return ("length " if k % 2 == 0 else "chunked ") + await _status(resp)

        return await _paced(control, 0.5, 40, one)


async def costly_body(base: str, nodes: int, control: Control) -> Counter[str]:
    """The most costly garbage a /filter accepts for decoding: ``[{},...]`` just under the
    decoded-size limit, four a second (decoded, then refused as not an object)."""
    from extender.body import RequestLimits, decoded_estimate

    limit = RequestLimits.cache_mode().filter.max_decoded
    n = 1
    while decoded_estimate(3 * n + 2, 2 * n + 1, n + 1) < limit:
        n = int(n * 1.01) + 1
    body = b"[" + b"{}," * (n - 2) + b"{}]"
    control.ready()
    async with aiohttp.ClientSession() as s:

        async def one(_: int) -> str:
            async with s.post(f"{base}/filter", data=body) as resp:
                return f"{len(body) >> 10} KiB: " + await _status(resp)

        return await _paced(control, 0.25, 400, one)


def _bomb(wbits: int) -> bytes:
    """1 GiB of zeros compressed (about 1 MiB), built without holding the GiB."""
    z = zlib.compressobj(9, zlib.DEFLATED, wbits)
    zeros = b"\0" * 2**20
    return b"".join([*(z.compress(zeros) for _ in range(1024)), z.flush()])


def _bad_codings(pod: dict[str, Any]) -> list[tuple[str, str, bytes]]:
    good = orjson.dumps({"Pod": pod, "NodeNames": _names(100)})
    return [
        ("not gzip", "gzip", b"this is not gzip"),
        ("not zlib", "deflate", b"nor is this zlib"),
        ("cut-off gzip", "gzip", gzip.compress(good)[:-20]),
        ("trailing junk", "gzip", gzip.compress(good) + b"junk"),
        ("gzip bomb 1 GiB", "gzip", _bomb(16 + zlib.MAX_WBITS)),
        ("deflate bomb 1 GiB", "deflate", _bomb(zlib.MAX_WBITS)),
        ("stacked", "gzip, gzip", gzip.compress(gzip.compress(good))),
        ("br", "br", b"\x0b\x02\x80"),
        ("zstd", "zstd", b"(\xb5/\xfd"),
        ("unknown", "x-foo", good),
    ]


async def bad_encodings(base: str, nodes: int, control: Control) -> Counter[str]:
    """Every content-coding error, on every verb, in turn, ten a second."""
    cases = [
        (name, coding, data, verb)
        for name, coding, data in _bad_codings(pending_pods(1, 1)[0])
        for verb in ("filter", "prioritize", "bind")
    ]
    control.ready()
    async with aiohttp.ClientSession() as s:

        async def one(k: int) -> str:
            name, coding, data, verb = cases[k % len(cases)]
            headers = {"Content-Encoding": coding}
            async with s.post(f"{base}/{verb}", data=data, headers=headers) as resp:
                got = await _status(resp)
                return got if got == "400 json" else f"{name} /{verb}: {got}"

        return await _paced(control, 0.1, 1000, one)


async def full_mode_poison(base: str, nodes: int, control: Control) -> Counter[str]:
    """Full-mode /filter and /prioritize carrying Node objects: every real node sent with every
    GPU full, and 1,000 invented nodes per request (100,000 in all), five requests a second."""
    pod = pending_pods(2, 1)[1]
    full = [node_json(n, [81920] * 8) for n in _names(nodes)[:50]]

    def fake(k: int) -> list[dict[str, Any]]:
        return [node_json(f"evil-{k:03d}-{i:04d}", [0] * 8) for i in range(1000)]

    bodies = [orjson.dumps({"Pod": pod, "Nodes": {"items": [*full, *fake(k)]}}) for k in range(100)]
    control.ready()
    async with aiohttp.ClientSession() as s:

        async def one(k: int) -> str:
            verb = "filter" if k % 2 == 0 else "prioritize"
            async with s.post(f"{base}/{verb}", data=bodies[k]) as resp:
                return f"/{verb} {await _status(resp)}"

        return await _paced(control, 0.2, 100, one)


async def invented_names(base: str, nodes: int, control: Control) -> Counter[str]:
    """/filter with invented node names, a new list and pod shape each time, four a second:
    120,000 names (2.1 MiB, refused: more than kube-scheduler could send) and the longest list
    accepted (2 x the cluster's nodes + 1,024), whose answers must not be kept."""
    pods = pending_pods(8, 3)
    bodies = [
        orjson.dumps(
            {
                "Pod": pods[k % 8],
                "NodeNames": [
                    f"ghost-{k:02d}-{i:06d}" for i in range(120_000 if k % 2 else 2 * nodes + 1024)
                ],
            }
        )
        for k in range(16)
    ]
    control.ready()
    async with aiohttp.ClientSession() as s:

        async def one(k: int) -> str:
            body = bodies[k % len(bodies)]
            async with s.post(f"{base}/filter", data=body) as resp:
                return f"{len(body) >> 10} KiB: " + await _status(resp)

        return await _paced(control, 0.25, 200, one)


async def metrics_scrape(base: str, nodes: int, control: Control) -> Counter[str]:
    """/metrics scraped five times a second (Prometheus scrapes every 15-30 s)."""
    out: Counter[str] = Counter()
    times: list[float] = []
    control.ready()
    async with aiohttp.ClientSession() as s:
        while len(times) < 2000 and await control.go():
            t0 = time.perf_counter()
            async with s.get(f"{base}/metrics") as resp:
                text = await resp.read()
            times.append(time.perf_counter() - t0)
            series = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
            out[f"{len(text) / 1000:.0f} kB, {series} series"] += 1
            await asyncio.sleep(max(0.0, 0.2 - times[-1]))
    out[f"scrape p50 {statistics.median(times) * 1000:.1f} ms max {max(times) * 1000:.1f} ms"] = 0
    return out


ATTACKS: dict[str, Callable[[str, int, Control], Awaitable[Counter[str]]]] = {
    "63 MiB [{},...] body": big_body,
    "costliest accepted body": costly_body,
    "bad Content-Encoding": bad_encodings,
    "full-mode node injection": full_mode_poison,
    "invented node names": invented_names,
    "/metrics scraped 5/s": metrics_scrape,
}


def attacker(name: str, base: str, nodes: int, control: Control, out: Any) -> None:
    """An attacker process: one attack, in the phases ``control`` opens, for
    ``ATTACK_BUDGET_S`` at most."""

    async def bounded() -> Counter[str]:
        return await asyncio.wait_for(ATTACKS[name](base, nodes, control), ATTACK_BUDGET_S)

    out.put(dict(asyncio.run(bounded())))


# ------------------------------------------------------------------- the healthy client ---


@dataclass
class Phase:
    latencies: list[float]
    livez_max: float
    seconds: float = 0.0
    cpu: float = 0.0
    """The extender's CPU seconds during the phase."""

    def add(self, other: Phase) -> None:
        self.latencies += other.latencies
        self.livez_max = max(self.livez_max, other.livez_max)

    def timed(self, pid: int, phase: Awaitable[Phase]) -> None:
        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        self.add(asyncio.run(_run(phase)))
        self.cpu += cpu_seconds(pid) - cpu0
        self.seconds += time.perf_counter() - t0

    @property
    def cpu_share(self) -> float:
        return self.cpu / self.seconds if self.seconds else 0.0

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 0.99) * 1000


async def healthy(base: str, pods: list[dict[str, Any]], names: list[str], seconds: float) -> Phase:
    """kube-scheduler's requests for ``seconds``, one pod after another, and a /livez pinger."""
    latencies: list[float] = []
    livez: list[float] = []
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as s:

        async def pinger() -> None:
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                async with s.get(f"{base}/livez") as resp:
                    await resp.read()
                livez.append(time.perf_counter() - t0)
                await asyncio.sleep(0.01)

        ping = asyncio.create_task(pinger())
        k = 0
        while time.monotonic() < deadline:
            pod = pods[k % len(pods)]
            k += 1
            fbody = orjson.dumps({"Pod": pod, "Nodes": None, "NodeNames": names})
            t0 = time.perf_counter()
            async with s.post(f"{base}/filter", data=fbody) as resp:
                passed = orjson.loads(await resp.read())["NodeNames"]
            t1 = time.perf_counter()
            pbody = orjson.dumps({"Pod": pod, "Nodes": None, "NodeNames": passed})
            t2 = time.perf_counter()
            async with s.post(f"{base}/prioritize", data=pbody) as resp:
                await resp.read()
            latencies.append((t1 - t0) + (time.perf_counter() - t2))
        await ping
    return Phase(latencies, max(livez) * 1000)


async def _run(phase: Awaitable[Phase]) -> Phase:
    return await phase


async def answers(base: str, pods: list[dict[str, Any]], names: list[str]) -> bytes:
    """What later requests see: filter and prioritize replies for ``pods`` over ``names`` plus
    a few invented names, and the cluster gauges of /metrics (not the request counters)."""
    probe = [*names, "evil-000-0000", "evil-099-0999"]
    out: list[bytes] = []
    async with aiohttp.ClientSession() as s:
        for pod in pods:
            for verb in ("filter", "prioritize"):
                body = orjson.dumps({"Pod": pod, "NodeNames": probe})
                async with s.post(f"{base}/{verb}", data=body) as resp:
                    out.append(await resp.read())
        async with s.get(f"{base}/metrics") as resp:
            text = await resp.read()
    out += [
        line
        for line in text.splitlines()
        if line.startswith(b"gpuscale_extender_")
        and not line.startswith(
            (b"gpuscale_extender_request", b"gpuscale_extender_filter_failures")
        )
    ]
    return b"\n".join(out)


def run_row(
    name: str, pid: int, base: str, pods: list[dict[str, Any]], names: list[str], seconds: float
) -> str:
    """Three rounds of a quiet phase and an attacked phase (``seconds / 3`` each), so that other
    load on the machine falls on both alike."""
    before = asyncio.run(answers(base, pods[:4], names))
    ctx = multiprocessing.get_context("spawn")
    control = Control(ctx.Event(), ctx.Event(), ctx.Event())
    out = ctx.Queue()
    proc = ctx.Process(target=attacker, args=(name, base, len(names), control, out), daemon=True)
    proc.start()
    if not control.ready_event.wait(ATTACK_BUDGET_S):
        raise RuntimeError(f"{name}: the attacker did not get ready")
    reset_peak(pid)
    quiet, attacked = Phase([], 0.0), Phase([], 0.0)
    try:
        for _ in range(3):
            control.active.clear()
            quiet.timed(pid, healthy(base, pods, names, seconds / 3))
            control.active.set()
            attacked.timed(pid, healthy(base, pods, names, seconds / 3))
    finally:
        control.active.clear()
        control.done.set()
    result: dict[str, int] = out.get(timeout=ATTACK_BUDGET_S + 30)
    proc.join(10)
    peak = peak_mib(pid)
    changed = asyncio.run(answers(base, pods[:4], names)) != before
    ratio = attacked.p99 / quiet.p99
    got = "; ".join(f"{k} x{v}" if v else k for k, v in sorted(result.items()))
    return (
        f"{name}\n"
        f"   peak RSS {peak:5.0f} MiB {'ok' if peak < LIMIT_MIB else 'OVER'} (< {LIMIT_MIB:.0f})"
        f"   healthy p99 {quiet.p99:6.2f} -> {attacked.p99:6.2f} ms ({ratio:.2f}x"
        f" {'ok' if ratio <= 2 else 'OVER'})   /livez max {quiet.livez_max:5.1f} ->"
        f" {attacked.livez_max:6.1f} ms   ({len(quiet.latencies)}/{len(attacked.latencies)}"
        f" pods)\n   extender CPU {quiet.cpu_share:.0%} of a core quiet, {attacked.cpu_share:.0%}"
        f" attacked\n   attacker got: {got}\n"
        f"   later answers changed: {'YES' if changed else 'no'}"
    )


def scrape_holds(nodes_path: str, pods_path: str, repeat: int = 5) -> str:
    """In this process, on the same cluster: the longest time one /metrics rendering holds the
    event loop (a ticker task measures the gaps between its turns), sliced as served and, as
    the same-run baseline, with slices too large to ever yield."""
    from extender import cluster_metrics
    from extender.cluster_state import ClusterState
    from extender.decode import node_from_json, pod_from_json
    from extender.inventory import InventoryConfig

    state = ClusterState(InventoryConfig(stale_after=3600))
    state.replace_nodes(read_pages(nodes_path, node_from_json))
    state.replace_pods(read_pages(pods_path, pod_from_json))
    state.index(NOW)

    async def hold(per_device: bool, sliced: bool) -> tuple[float, float, int]:
        gaps: list[float] = []
        done = False

        async def ticker() -> None:
            last = time.perf_counter()
            while not done:
                await asyncio.sleep(0)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        big = 10**9
        t0 = time.process_time()
        for _ in range(repeat):
            text = await cluster_metrics.render(
                state,
                NOW,
                per_device=per_device,
                slice_nodes=cluster_metrics.SLICE_NODES if sliced else big,
            )
        cpu = (time.process_time() - t0) / repeat
        done = True
        await task
        return max(gaps) * 1000, cpu * 1000, len(text)

    out = []
    for per_device in (False, True):
        for sliced in (True, False):
            longest, cpu, size = asyncio.run(hold(per_device, sliced))
            how = (
                f"per-device {'on ' if per_device else 'off'} {'sliced' if sliced else 'unsliced'}"
            )
            out.append(
                f"   {how:26s} longest hold {longest:6.2f} ms   CPU per scrape {cpu:6.1f} ms"
                f"   {size / 1e6:.2f} MB"
            )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--pods", type=int, default=100_000)
    ap.add_argument(
        "--seconds", type=float, default=6.0, help="quiet and attacked time per row, each"
    )
    ap.add_argument("--only", default="", help="comma list of row names' first words")
    ap.add_argument("--per-device", action="store_true", help="serve per-device /metrics")
    args = ap.parse_args(argv)
    seconds = min(args.seconds, ATTACK_BUDGET_S - 10)
    print(
        f"abuse_requests: {args.nodes} nodes x 8 GPUs, {args.pods} pods, {seconds:.0f} s per"
        f" phase, per-device metrics {'on' if args.per_device else 'off'},"
        f" cpu_count={os.cpu_count()}, load average {os.getloadavg()[0]:.1f}"
    )
    nodes, cluster_pods = build_cluster(args.nodes, args.pods, 1)
    names = [n["metadata"]["name"] for n in nodes]
    pods = pending_pods(20, 1)
    rows = [r for r in ATTACKS if not args.only or r.split()[0] in args.only.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        nodes_path, pods_path = os.path.join(tmp, "nodes.jsonl"), os.path.join(tmp, "pods.jsonl")
        write_pages(nodes_path, nodes)
        write_pages(pods_path, cluster_pods)
        del nodes, cluster_pods
        ctx = multiprocessing.get_context("spawn")
        port_q, stop = ctx.Queue(), ctx.Event()
        server = ctx.Process(
            target=serve, args=(nodes_path, pods_path, args.per_device, port_q, stop), daemon=True
        )
        t0 = time.perf_counter()
        server.start()
        port = port_q.get(timeout=600)
        assert server.pid is not None
        print(f"extender process {server.pid} serving after {time.perf_counter() - t0:.1f} s\n")
        try:
            for name in rows:
                print(run_row(name, server.pid, f"http://127.0.0.1:{port}", pods, names, seconds))
        finally:
            stop.set()
            server.join(20)
        print("\n/metrics rendering in process (state gauges only), same cluster:")
        print(scrape_holds(nodes_path, pods_path))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
