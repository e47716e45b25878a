"""kube-scheduler with and without the gpuscale extender, on the real e2e control plane.

The control plane of ``make e2e`` (etcd, kube-apiserver, kube-controller-manager, kwok) with
``deploy/`` installed; kube-scheduler runs with ``deploy/``'s KubeSchedulerConfiguration (profile
``gpuscale``) three times per repetition: with the same configuration minus ``extenders``
(alone); with ``benchmarks/noop_extender``, a Go extender that does no work of its own on the same
protocol, mutual TLS and identity (the floor: what the extender protocol itself costs here); and
with gpuscale's extender (filter, prioritize and bind over HTTPS, nodeCacheCapable). The same run,
the same nodes, the same pods; ``--no-floor`` skips the no-op case (building it needs Go).
kwok GPU nodes carry 8 A100 80 GB GPUs each (time-sliced, 4 shares per GPU) and the
``gpuscale.io/gpus`` annotation in the node agent's format; each pod asks for 1 GPU and 8 GiB.

Two figures per case, over ``--nodes`` (default 1,000 and 5,000 nodes):

- throughput: ``--pods`` (1,000) pods created while no scheduler runs, then the scheduler is
  started; pods bound per second from the first bind to the last (what scheduler_perf calls
  SchedulingThroughput);
- latency: ``--paced`` (200) more pods created one at a time at ``--rate`` pods/s with the
  scheduler running; per pod, from the create call's answer to the bind seen on a watch (p50/p99).

Binds are observed through one pod watch. Run: ``python benchmarks/bench_scheduling.py`` (needs
``make cluster``; takes a few minutes at 5,000 nodes on two cores).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from extender.inventory import gpus_annotation
from extender.objects import GpuDevice
from tests.cluster.build import COMPONENTS, is_built
from tests.e2e.cluster import ControlPlane, Process, free_port, wait_until
from tests.e2e.gpu_nodes import GpuNode
from tests.e2e.install import (
    NAMESPACE,
    SCHEDULER_SA,
    Installed,
    extender_process,
    install,
    scheduler_process,
)

NS = "bench"
GPUS = 8
MIB_PER_POD = 8192
A100 = "NVIDIA-A100-SXM4-80GB"


@dataclass(frozen=True)
class Result:
    nodes: int
    mode: str
    throughput: float
    p50_ms: float
    p99_ms: float
    breakdown: str
    rep: int = 0
    load: float = 0.0
    """The machine's 1-minute load average when the case started."""


class Api:
    """Raw JSON calls as admin over one keep-alive session (the benchmark's own load)."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self.session = aiohttp.ClientSession(
            base_url=cp.server,
            headers={"Authorization": f"Bearer {cp.tokens['admin']}"},
            connector=aiohttp.TCPConnector(ssl=cp.ssl_context(), limit=32),
        )

    async def post(self, path: str, body: dict[str, Any]) -> None:
        async with self.session.post(path, json=body) as r:
            if r.status not in (200, 201, 409):
                raise RuntimeError(f"POST {path}: {r.status} {await r.text()}")

    async def close(self) -> None:
        await self.session.close()


def node_manifest(i: int, stamp: str) -> dict[str, Any]:
    node = GpuNode(f"bench-{i:05d}", A100, 81920, (0,) * GPUS, labels={"bench": "true"})
    manifest = node.manifest()
    devices = [GpuDevice(d, f"GPU-{i:05d}-{d}", A100, 81920, 0) for d in range(GPUS)]
    manifest["metadata"]["annotations"]["gpuscale.io/gpus"] = gpus_annotation(devices, stamp)
    return manifest


def pod_manifest(name: str) -> dict[str, Any]:
    limits = {"nvidia.com/gpu": "1", "gpuscale.io/gpu-memory": str(MIB_PER_POD)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "bench"}},
        "spec": {
            "schedulerName": "gpuscale",
            "containers": [{"name": "s", "image": "vllm", "resources": {"limits": limits}}],
        },
    }


async def gather_bounded(coros: Sequence[Any], limit: int = 32) -> None:
    sem = asyncio.Semaphore(limit)

    async def one(c: Any) -> None:
        async with sem:
            await c

    await asyncio.gather(*(one(c) for c in coros))


class BindWatch:
    """One watch on the benchmark's pods; records when each is first seen bound."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.bound: dict[str, float] = {}
        self.running: set[str] = set()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        rv = ""
        while True:
            params = {"watch": "1", "allowWatchBookmarks": "true", "timeoutSeconds": "300"}
            if rv:
                params["resourceVersion"] = rv
            async with self.api.session.get(
                f"/api/v1/namespaces/{NS}/pods", params=params, timeout=None
            ) as r:
                async for line in r.content:
                    event = json.loads(line)
                    obj = event["object"]
                    rv = obj["metadata"].get("resourceVersion", rv)
                    name = obj["metadata"].get("name")
                    if obj.get("spec", {}).get("nodeName") and name not in self.bound:
                        self.bound[name] = time.monotonic()
                    if obj.get("status", {}).get("phase") == "Running":
                        self.running.add(name)

    def start(self) -> None:
        self.task = asyncio.create_task(self.run())

    async def wait_for(self, names: set[str], within: float) -> None:
        deadline = time.monotonic() + within
        while not names <= self.bound.keys():
            if time.monotonic() > deadline:
                missing = len(names - self.bound.keys())
                raise RuntimeError(f"{missing} pods not bound within {within:.0f} s")
            await asyncio.sleep(0.05)

    async def wait_running(self, names: set[str], within: float) -> None:
        """Until kwok has started every pod: the work a bind causes downstream (kwok's status
        updates, their writes and watch events) lags the binds, and must be in a case's CPU."""
        deadline = time.monotonic() + within
        while not names <= self.running:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(names - self.running)} pods not running in {within} s")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await self.task


async def wait_schedulable(api: Api, count: int, within: float = 120) -> None:
    """Until ``count`` nodes are Ready without the not-ready taint (the node lifecycle controller
    lifts it node by node)."""
    deadline = time.monotonic() + within
    while True:
        async with api.session.get("/api/v1/nodes", params={"labelSelector": "bench=true"}) as r:
            nodes = (await r.json())["items"]
        ready = sum(1 for n in nodes if _schedulable(n))
        if ready >= count:
            return
        if time.monotonic() > deadline:
            # kwok on a loaded machine can lag on the last few nodes: measure on what is Ready
            # (both modes see the same nodes) and say so.
            print(f"  note: {ready} of {count} nodes schedulable after {within:.0f} s", flush=True)
            return
        await asyncio.sleep(1.0)


def _schedulable(node: dict[str, Any]) -> bool:
    taints = node["spec"].get("taints") or []
    conditions = node.get("status", {}).get("conditions") or []
    return not any(t["key"].startswith("node.kubernetes.io/") for t in taints) and any(
        c["type"] == "Ready" and c["status"] == "True" for c in conditions
    )


async def delete_pods(api: Api) -> None:
    async with api.session.delete(
        f"/api/v1/namespaces/{NS}/pods", params={"gracePeriodSeconds": "0"}
    ) as r:
        assert r.status == 200, await r.text()

    async def left() -> int:
        async with api.session.get(f"/api/v1/namespaces/{NS}/pods", params={"limit": "1"}) as r:
            body = await r.json()
            return len(body["items"])

    deadline = time.monotonic() + 300
    while await left():
        if time.monotonic() > deadline:
            raise RuntimeError("pods not deleted within 300 s")
        await asyncio.sleep(0.5)


ALONE: Final = "scheduler alone"
NOOP: Final = "no-op extender"
NOOP_H1: Final = "no-op, HTTP/1.1"
OURS: Final = "with extender"
NOOP_SOURCE: Final = Path(__file__).with_name("noop_extender")


def build_noop(into: Path) -> Path:
    """``benchmarks/noop_extender`` built with this machine's Go (the one ``make cluster`` uses)."""
    out = into / "noop-extender"
    subprocess.run(["go", "build", "-o", str(out), "."], cwd=NOOP_SOURCE, check=True)
    return out


def noop_process(inst: Installed, noop: Path, *, port: int, http1: bool = False) -> Process:
    """The floor: the same mTLS listener and the same identity for its Binding calls as
    ``gpuscale extender``, no work of its own (see benchmarks/noop_extender/main.go). Go's
    server offers HTTP/2, on which kube-scheduler sends every call over one connection;
    ``http1`` serves HTTP/1.1 only, as ours does."""
    ops = free_port()
    token = inst.cp.workdir / "noop-extender.token"
    token.write_text(inst.cp.service_account_token(NAMESPACE, SCHEDULER_SA))
    argv = [
        str(noop),
        f"--address=127.0.0.1:{port}",
        f"--ops-address=127.0.0.1:{ops}",
        f"--tls-cert-file={inst.cert.dir / 'extender.crt'}",
        f"--tls-private-key-file={inst.cert.dir / 'extender.key'}",
        f"--client-ca-file={inst.cert.ca}",
        f"--server={inst.cp.server}",
        f"--api-ca-file={inst.cp.pki.ca_file}",
        f"--token-file={token}",
        *(["--http1"] if http1 else []),
    ]
    return Process(
        "noop-extender",
        argv,
        inst.cp.workdir / "noop-extender.log",
        ports={"verbs": port, "ops": ops, "http": ops},
    )


def start_scheduler(
    inst: Installed, *, mode: str, port: int, qps: float | None, noop: Path | None = None
) -> list[Process]:
    procs = []
    if mode != ALONE:
        if mode in (NOOP, NOOP_H1):
            assert noop is not None
            ext = noop_process(inst, noop, port=port, http1=mode == NOOP_H1)
        else:
            ext = extender_process(
                inst, port=port, extra=["--stale-after=24h", "--log-level=warning"]
            )
        ext.start()
        procs.append(ext)

        def ready() -> bool:
            import urllib.request

            ready = f"http://127.0.0.1:{ext.ports['ops']}/readyz"
            with urllib.request.urlopen(ready, timeout=2) as r:
                return bool(r.status == 200)

        wait_until(ext.name, ready, within=300, log=ext.log)
    sched = scheduler_process(
        inst, extender_url=f"https://127.0.0.1:{port}", with_extender=mode != ALONE, qps=qps
    )
    sched.start()
    procs.append(sched)
    return procs


def _sums(text: str, family: str, label: str, **match: str) -> dict[str, tuple[float, int]]:
    """Sum and count of a histogram's series, keyed by ``label``, from a /metrics text."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name != family:
            continue
        for sample in fam.samples:
            if any(sample.labels.get(k) != v for k, v in match.items()):
                continue
            key = sample.labels.get(label, "")
            if sample.name.endswith("_sum"):
                sums[key] = sums.get(key, 0.0) + sample.value
            elif sample.name.endswith("_count"):
                counts[key] = counts.get(key, 0) + int(sample.value)
    return {k: (sums.get(k, 0.0), n) for k, n in counts.items()}


def _means(
    text: str, family: str, label: str, since: str = "", **match: str
) -> dict[str, tuple[float, int]]:
    """Mean (ms) and count of a histogram's series, keyed by ``label``; with ``since`` (an
    earlier /metrics text of the same process) only what was observed after it."""
    now = _sums(text, family, label, **match)
    before = _sums(since, family, label, **match) if since else {}
    out = {}
    for k, (total, n) in now.items():
        t0, n0 = before.get(k, (0.0, 0))
        if n > n0:
            out[k] = (1000 * (total - t0) / (n - n0), n - n0)
    return out


def _buckets(text: str, family: str, **match: str) -> dict[float, float]:
    """Cumulative bucket counts of a histogram's series matching ``match``, summed."""
    buckets: dict[float, float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name != family:
            continue
        for sample in fam.samples:
            if not sample.name.endswith("_bucket"):
                continue
            if any(sample.labels.get(k) != v for k, v in match.items()):
                continue
            le = float(sample.labels["le"])
            buckets[le] = buckets.get(le, 0.0) + sample.value
    return buckets


def _quantile(text: str, family: str, q: float, since: str = "", **match: str) -> float | None:
    """The ``q`` quantile (ms) of a histogram's series matching ``match``, interpolated within
    its bucket as PromQL's ``histogram_quantile`` does; with ``since`` (an earlier /metrics text
    of the same process) of what was observed after it. ``None`` without observations."""
    buckets = _buckets(text, family, **match)
    if since:
        before = _buckets(since, family, **match)
        buckets = {le: n - before.get(le, 0.0) for le, n in buckets.items()}
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] == 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for le in bounds:
        if buckets[le] >= rank:
            if le == float("inf"):
                return 1000 * lower
            return 1000 * (lower + (le - lower) * (rank - below) / (buckets[le] - below))
        lower, below = le, buckets[le]
    return None


async def apiserver_metrics(api: Api) -> str:
    async with api.session.get("/metrics") as r:
        return await r.text()


async def breakdown(api: Api, procs: list[Process], since: str) -> str:
    """Where a pod's time goes: kube-scheduler's own histograms (one scheduling attempt, and its
    algorithm part: filter, extenders, score) and, with the extender, the extender's server-side
    time per verb (decode to encode; queueing in its event loop is not in it)."""
    parts = []
    sched = next(p for p in procs if p.name == "kube-scheduler")
    url = f"https://127.0.0.1:{sched.ports['secure']}/metrics"
    async with api.session.get(url, ssl=False) as r:
        text = await r.text()
    attempt = _means(text, "scheduler_scheduling_attempt_duration_seconds", "result")
    algo = _means(text, "scheduler_scheduling_algorithm_duration_seconds", "")
    bind = _means(
        text,
        "scheduler_framework_extension_point_duration_seconds",
        "extension_point",
        status="Success",
    )
    if "scheduled" in attempt:
        parts.append(f"scheduler attempt {attempt['scheduled'][0]:.1f} ms")
    if "" in algo:
        parts.append(f"algorithm {algo[''][0]:.1f} ms")
    if "Bind" in bind:
        parts.append(f"bind plugins {bind['Bind'][0]:.1f} ms")
    ext = next((p for p in procs if p.name in ("gpuscale-extender", "noop-extender")), None)
    if ext is not None:
        text = await extender_metrics(api, ext)
        verbs = _means(text, "gpuscale_extender_request_duration_seconds", "verb")
        parts.extend(f"extender {v} {ms:.2f} ms x{n}" for v, (ms, n) in sorted(verbs.items()))
        parts.extend(_extender_bind_p99(text))
        for fam in text_string_to_metric_families(text):
            if fam.name == "gpuscale_connections_accepted":
                parts.extend(
                    f"{s.labels['listener']} connections accepted {s.value:.0f}"
                    for s in fam.samples
                    if s.name.endswith("_total")
                )
        calls = _means(text, "gpuscale_extender_api_call_duration_seconds", "call")
        parts.extend(f"of which API {c} {ms:.2f} ms" for c, (ms, _) in sorted(calls.items()))
    text = await apiserver_metrics(api)
    waits = _means(
        text,
        "apiserver_flowcontrol_request_wait_duration_seconds",
        "flow_schema",
        since,
        execute="true",
    )
    parts.extend(
        f"APF wait {fs} {ms:.2f} ms x{n}" for fs, (ms, n) in sorted(waits.items()) if ms >= 0.5
    )
    binding = _means(
        text,
        "apiserver_request_duration_seconds",
        "verb",
        since,
        resource="pods",
        subresource="binding",
    )
    parts.extend(f"apiserver binding {ms:.2f} ms x{n}" for _, (ms, n) in binding.items())
    parts.extend(_apiserver_binding_p99(text, since))
    return "; ".join(parts)


def _extender_bind_p99(text: str, since: str = "") -> list[str]:
    """The extender's bind p99 from its /metrics text, as a breakdown part (none without
    binds)."""
    p99 = _quantile(text, "gpuscale_extender_request_duration_seconds", 0.99, since, verb="bind")
    return [] if p99 is None else [f"extender bind p99 {p99:.1f} ms (target <= 20)"]


def _apiserver_binding_p99(text: str, since: str) -> list[str]:
    """The apiserver's own p99 for pods/binding writes since ``since``, as a breakdown part."""
    p99 = _quantile(
        text,
        "apiserver_request_duration_seconds",
        0.99,
        since,
        resource="pods",
        subresource="binding",
    )
    return [] if p99 is None else [f"apiserver binding p99 {p99:.1f} ms"]


async def paced_binds(api: Api, ext: Process | None, ext_since: str, api_since: str) -> str:
    """Bind p99 over the paced pods only (10 a second: no burst queues at the apiserver), the
    extender's (``ext``: gpuscale's, when it runs) against the apiserver's own time for the
    same Binding writes."""
    parts = []
    if ext is not None:
        parts.extend(_extender_bind_p99(await extender_metrics(api, ext), ext_since))
    parts.extend(_apiserver_binding_p99(await apiserver_metrics(api), api_since))
    return "; ".join(parts)


async def extender_metrics(api: Api, ext: Process) -> str:
    async with api.session.get(f"http://127.0.0.1:{ext.ports['http']}/metrics") as r:
        return await r.text()


def cpu_seconds(procs: Sequence[Process]) -> dict[str, float]:
    """User+system CPU seconds each running process has used so far (``/proc/<pid>/stat``):
    what a pod costs each component, which the machine's load does not distort as it does
    wall-clock figures."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for proc in procs:
        if proc.popen is None or proc.popen.poll() is not None:
            continue
        try:
            stat = Path(f"/proc/{proc.popen.pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[proc.name] = (int(fields[11]) + int(fields[12])) / tick
    return out


def cpu_per_pod(
    before: dict[str, float],
    after: dict[str, float],
    pods: int,
    *,
    seconds: float,
    background: dict[str, float],
) -> str:
    """CPU ms per pod by component, and in brackets net of what the component uses idle
    (``background`` per second) over the case's ``seconds``."""
    used = {k: after[k] - before.get(k, 0.0) for k in after}
    parts = []
    for name, sec in sorted(used.items(), key=lambda x: -x[1]):
        net = sec - background.get(name, 0.0) * seconds
        parts.append(f"{name} {1000 * sec / pods:.1f} ({1000 * net / pods:.1f})")
    total = sum(used.values())
    net_total = total - sum(background.get(k, 0.0) for k in used) * seconds
    parts.append(f"total {1000 * total / pods:.1f} ({1000 * net_total / pods:.1f})")
    return ", ".join(parts)


async def idle_cpu(inst: Installed, seconds: float = 10.0) -> dict[str, float]:
    """CPU per second each process uses with no pod to schedule (node heartbeats, watches,
    leases), with the scheduler and the extender running: what a case pays for its duration
    rather than for its pods."""
    procs = start_scheduler(inst, mode=OURS, port=free_port(), qps=None)
    everyone = [*inst.cp.processes.values(), *procs]
    try:
        await asyncio.sleep(3.0)  # the scheduler's own start-up (informers) is not idle
        before = cpu_seconds(everyone)
        await asyncio.sleep(seconds)
        after = cpu_seconds(everyone)
    finally:
        for proc in reversed(procs):
            proc.stop()
    return {k: (after[k] - before.get(k, 0.0)) / seconds for k in after}


async def pprof(api: Api, procs: list[Process], into: Path, mode: str, seconds: int) -> None:
    """CPU profiles (Go pprof) of kube-scheduler and kube-apiserver while the case runs."""
    sched = next(p for p in procs if p.name == "kube-scheduler")
    urls = {
        "kube-scheduler": f"https://127.0.0.1:{sched.ports['secure']}/debug/pprof/profile",
        "kube-apiserver": "/debug/pprof/profile",
    }
    await asyncio.sleep(1.0)

    async def one(name: str, url: str) -> None:
        params = {"seconds": str(seconds)}
        async with api.session.get(url, params=params, ssl=False, timeout=None) as r:
            body = await r.read()
        if r.status == 200:
            (into / f"{mode.replace(' ', '-')}-{name}.pprof").write_bytes(body)
        else:
            print(f"    pprof {name}: HTTP {r.status} {body[:200]!r}", flush=True)

    await asyncio.gather(*(one(n, u) for n, u in urls.items()))


async def run_case(
    inst: Installed,
    api: Api,
    nodes: int,
    *,
    mode: str,
    pods: int,
    paced: int,
    rate: float,
    qps: float | None,
    background: dict[str, float],
    profile: Path | None = None,
    rep: int = 0,
    noop: Path | None = None,
) -> Result:
    load = os.getloadavg()[0]
    since = await apiserver_metrics(api)
    print(
        f"  {nodes} nodes, {mode} (repetition {rep + 1}, load average {load:.1f}): "
        f"creating {pods} pods",
        flush=True,
    )
    names = [f"t-{i:05d}" for i in range(pods)]
    await gather_bounded(
        [api.post(f"/api/v1/namespaces/{NS}/pods", pod_manifest(n)) for n in names]
    )
    watch = BindWatch(api)
    watch.start()
    procs = start_scheduler(inst, mode=mode, port=free_port(), qps=qps, noop=noop)
    everyone = [*inst.cp.processes.values(), *procs]
    before, started = cpu_seconds(everyone), time.monotonic()
    profiling = (
        asyncio.create_task(pprof(api, procs, profile, mode, 8)) if profile is not None else None
    )
    try:
        await watch.wait_for(set(names), within=900)
        if profiling is not None:
            await profiling
        await watch.wait_running(set(names), within=300)
        cpu = cpu_per_pod(
            before,
            cpu_seconds(everyone),
            pods,
            seconds=time.monotonic() - started,
            background=background,
        )
        times = sorted(watch.bound[n] for n in names)
        throughput = (len(times) - 1) / max(times[-1] - times[0], 1e-9)
        where = await breakdown(api, procs, since)
        print(f"    throughput {throughput:.1f} pods/s ({where})", flush=True)
        print(f"    CPU ms per pod (net of idle): {cpu}", flush=True)
        print(f"    pacing {paced} pods at {rate}/s", flush=True)
        ext = next((p for p in procs if p.name == "gpuscale-extender"), None)
        ext_since = await extender_metrics(api, ext) if ext is not None else ""
        api_since = await apiserver_metrics(api)
        latencies = []
        for i in range(paced):
            name = f"p-{i:05d}"
            t0 = time.monotonic()
            await api.post(f"/api/v1/namespaces/{NS}/pods", pod_manifest(name))
            created = time.monotonic()
            await watch.wait_for({name}, within=60)
            latencies.append((watch.bound[name] - created) * 1000)
            await asyncio.sleep(max(0.0, 1 / rate - (time.monotonic() - t0)))
        paced_where = await paced_binds(api, ext, ext_since, api_since)
        print(f"    paced pods: {paced_where}", flush=True)
        where = f"{where}; paced: {paced_where}"
    finally:
        for proc in reversed(procs):
            proc.stop()
        await watch.stop()
    await delete_pods(api)
    q = statistics.quantiles(latencies, n=100)
    return Result(nodes, mode, throughput, statistics.median(latencies), q[98], where, rep, load)


async def main_async(args: argparse.Namespace) -> list[Result]:
    workdir = Path(tempfile.mkdtemp(prefix="gpuscale-bench-scheduling-"))
    # Thousands of nodes on two cores, so that what is measured is scheduling:
    # - the node lifecycle controller lifts the not-ready taint at a few nodes a second here, so
    #   new nodes are admitted without it;
    # - kwok renews every node's Lease as a kubelet does (every 10 s: 500 writes/s at 5,000
    #   nodes, which saturates this machine's apiserver and etcd); renewed every 150 s instead,
    #   with a node-monitor grace period to match, nodes stay Ready rather than flapping to
    #   Unknown and back (which taints and untaints them throughout the run).
    # Both modes see the same nodes and the same control plane.
    cp = ControlPlane(
        workdir,
        # The e2e's apiserver serves watches straight from etcd and audits every request
        # synchronously (its tests need both); a production apiserver does neither, and with
        # them every extra watcher and request costs the apiserver many times what it would.
        apiserver_flags=(
            "--disable-admission-plugins=TaintNodesByCondition",
            "--watch-cache=true",
            "--audit-log-mode=batch",
            "--profiling=true",
        ),
        kwok_flags=("--node-lease-duration-seconds=600",),
        kcm_flags=("--node-monitor-grace-period=20m",),
    )
    results: list[Result] = []
    modes = (
        ALONE,
        *((NOOP,) if args.floor else ()),
        *((NOOP_H1,) if args.floor_http1 else ()),
        OURS,
    )
    noop = build_noop(workdir) if args.floor or args.floor_http1 else None
    try:
        print(f"starting the control plane in {workdir}", flush=True)
        cp.start()
        inst = install(cp)
        api = Api(cp)
        try:
            await api.post(
                "/api/v1/namespaces",
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
            )
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            have = 0
            for target in sorted(args.nodes):
                t0 = time.monotonic()
                await gather_bounded(
                    [
                        api.post("/api/v1/nodes", node_manifest(i, stamp))
                        for i in range(have, target)
                    ]
                )
                have = target
                await wait_schedulable(api, target)
                print(
                    f"{target} kwok GPU nodes created and schedulable in "
                    f"{time.monotonic() - t0:.0f} s",
                    flush=True,
                )
                background = await idle_cpu(inst)
                print(
                    "  idle CPU ms per second: "
                    + ", ".join(f"{k} {1000 * v:.0f}" for k, v in sorted(background.items())),
                    flush=True,
                )
                # Alone and with the extender back to back, repeated: the pair shares the
                # machine's state of the moment, and the spread over pairs says how much of a
                # ratio is noise.
                for rep in range(args.repeat):
                    for mode in modes:
                        results.append(
                            await run_case(
                                inst,
                                api,
                                target,
                                mode=mode,
                                pods=args.pods,
                                paced=args.paced,
                                rate=args.rate,
                                qps=args.scheduler_qps,
                                background=background,
                                profile=args.pprof if rep == 0 else None,
                                rep=rep,
                                noop=noop,
                            )
                        )
        finally:
            await api.close()
    finally:
        cp.stop()
    return results


def report(results: list[Result]) -> None:
    print()
    head = ("nodes", "rep", "mode", "load", "pods/s", "p50 ms", "p99 ms")
    print("{:>6} {:>3} {:<16} {:>5} {:>8} {:>8} {:>8}".format(*head))
    for r in results:
        print(
            f"{r.nodes:>6} {r.rep + 1:>3} {r.mode:<16} {r.load:>5.1f} {r.throughput:>8.1f} "
            f"{r.p50_ms:>8.1f} {r.p99_ms:>8.1f}"
        )
    print()
    for r in results:
        print(f"{r.nodes} nodes, rep {r.rep + 1}, {r.mode}: {r.breakdown}")
    print()
    for nodes in sorted({r.nodes for r in results}):
        cases = {(r.rep, r.mode): r for r in results if r.nodes == nodes}
        reps = sorted({r.rep for r in results if r.nodes == nodes})
        for mode in (NOOP, NOOP_H1, OURS):
            if not any((rep, mode) in cases for rep in reps):
                continue
            pairs = [
                (
                    cases[rep, mode].throughput / cases[rep, ALONE].throughput,
                    cases[rep, mode].p99_ms / cases[rep, ALONE].p99_ms,
                )
                for rep in reps
            ]
            ratios = [t for t, _ in pairs]
            p99s = [p for _, p in pairs]
            what = {
                OURS: "the extender",
                NOOP: "the no-op extender (the floor)",
                NOOP_H1: "the no-op extender on HTTP/1.1",
            }[mode]
            print(
                f"{nodes} nodes, with {what} / the scheduler alone, per repetition: "
                + ", ".join(f"{t:.2f}x" for t in ratios)
            )
            print(
                f"  throughput ratio min {min(ratios):.2f}x median "
                f"{statistics.median(ratios):.2f}x max {max(ratios):.2f}x (spread "
                f"{max(ratios) - min(ratios):.2f}; target >= 0.8x with --scheduler-qps 1000, "
                f">= 1.0x with deploy/'s limits); p99 latency ratio min {min(p99s):.2f}x median "
                f"{statistics.median(p99s):.2f}x max {max(p99s):.2f}x (target <= 1.5x)"
            )
        if all((rep, NOOP) in cases for rep in reps):
            ours = [cases[rep, OURS].throughput / cases[rep, NOOP].throughput for rep in reps]
            print(
                "  with the extender / with the no-op extender, per repetition: "
                + ", ".join(f"{t:.2f}x" for t in ours)
                + f" (median {statistics.median(ours):.2f}x): what gpuscale's own work costs"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--paced", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="repetitions of the cases (alone, the no-op extender, ours) per node count; each "
        "ratio is reported per repetition, with its min, median, max and spread",
    )
    parser.add_argument(
        "--floor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run kube-scheduler with benchmarks/noop_extender (Go, same protocol and "
        "mTLS, no work of its own) in each repetition: the ratio no extender can beat here",
    )
    parser.add_argument(
        "--floor-http1",
        action="store_true",
        help="also run the no-op extender on HTTP/1.1 only, as ours serves (Go's server offers "
        "h2, and kube-scheduler then sends every call over one connection)",
    )
    parser.add_argument(
        "--scheduler-qps",
        type=float,
        help="kube-scheduler's API client QPS (burst twice that); default: deploy/'s, which "
        "leaves kube-scheduler's own 50/s, the limit its binds hit when it binds alone",
    )
    parser.add_argument(
        "--pprof",
        type=Path,
        help="write 8-second CPU profiles of kube-scheduler and kube-apiserver, taken while "
        "each case schedules, into this folder (read them with `go tool pprof -top FILE`)",
    )
    args = parser.parse_args(argv)
    if args.pprof is not None:
        args.pprof.mkdir(parents=True, exist_ok=True)
    missing = [k for k, c in COMPONENTS.items() if not is_built(c)]
    if missing:
        print(
            f"cluster binaries missing ({', '.join(missing)}): run `make cluster`", file=sys.stderr
        )
        return 1
    report(asyncio.run(main_async(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
