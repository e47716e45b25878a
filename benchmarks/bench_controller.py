"""The controller under load: CPU per decision cycle of N policies, and external-metrics latency.

Setup: the Kubernetes API stand-in (tests/support) holds N policy ConfigMaps (two metrics each:
a queue-depth sum and a histogram_quantile over rate) and N Deployments; Debian's real Prometheus
scrapes a synthetic inference server exposing 20 models. ``gpuscale controller`` runs as a child
process (as in a Pod), so its CPU time is its own: read from /proc after warm-up, over whole
decision cycles. Baseline in the same run: a child sending only the same Prometheus queries
(2 per policy, aiohttp, in one burst per cycle) without deciding, publishing or watching.

External metrics: an open-loop client (a child process) sends 100 requests/s over HTTPS
(keep-alive, front-proxy client certificate, the aggregated path) to the controller while it
runs its cycles; baseline: a bare aiohttp HTTPS handler returning a constant, in a child process
with the same TLS settings, measured right after while the controller keeps cycling.

Tenants: the policies are spread over ``--namespaces`` namespaces (100). ``--hung-namespaces K``
adds K more namespaces of ``--hung-policies`` policies each whose queries never get an answer (a
proxy in front of Prometheus holds them open): the healthy policies' tick lateness and longest
gap between decisions show whether one tenant's hung queries delay the others.

    python benchmarks/bench_controller.py [--policies 1000] [--namespaces 100] [--interval 5]
                                          [--cycles 3] [--rate 100] [--seconds 10]
                                          [--hung-namespaces 0] [--hung-policies 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.controller_probe import (  # noqa: E402
    bucket_quantile,
    child,
    cpu_seconds,
    decision_times,
    decisions,
    lateness,
    policy_objects,
    rss_mib,
    scrape,
)
from tests.autoscaler.helpers import Certs, make_certs  # noqa: E402
from tests.support.inference_server import InferenceServer  # noqa: E402
from tests.support.kube_standin import KubeStandIn  # noqa: E402
from tests.support.prometheus import PrometheusServer, free_port  # noqa: E402

MODELS = 20
HANG = "hang_forever"
"""Queries naming this metric are held open by the proxy (``--child-hanging-proxy``)."""


def _namespace(i: int, namespaces: int) -> str:
    return f"team-{i % namespaces}"


def _queries(i: int) -> tuple[str, str]:
    if i < 0:  # a hung tenant's policy
        return f"sum({HANG})", f"sum({HANG}_too)"
    model = f"m{i % MODELS}"
    queue = f'sum(vllm:num_requests_waiting{{model_name="{model}"}})'
    latency = (
        "histogram_quantile(0.95, sum by (le) "
        f'(rate(vllm:e2e_request_latency_seconds_bucket{{model_name="{model}"}}[30s])))'
    )
    return queue, latency


def _policy_objects(i: int, interval: float, namespace: str) -> list[dict[str, Any]]:
    """Policy ``svc-<i>`` (a queue-depth sum and a latency quantile) and its Deployment."""
    queue, latency = _queries(i)
    return policy_objects(
        namespace,
        f"svc-{i}",
        interval,
        [
            {"name": "queue", "type": "queueDepth", "query": queue, "targetPerReplica": 4},
            {"name": "latency", "type": "latency", "query": latency, "slo": "2s"},
        ],
        max_replicas=50,
    )


# -- child modes ------------------------------------------------------------------------------


async def _io_baseline(prometheus: str, policies: int, cycles: int) -> None:
    """Child: the controller's steady-state requests per cycle (two instant queries per
    policy; target counts come from a watch), nothing else; prints CPU per cycle."""
    limit = asyncio.Semaphore(32)
    async with aiohttp.ClientSession() as session:

        async def query(q: str) -> None:
            async with limit, session.post(f"{prometheus}/api/v1/query", data={"query": q}) as r:
                json.loads(await r.read())

        async def one(i: int) -> None:
            await asyncio.gather(*(query(q) for q in _queries(i)))

        await asyncio.gather(*(one(i) for i in range(policies)))  # warm-up
        start = time.process_time()
        for _ in range(cycles):
            await asyncio.gather(*(one(i) for i in range(policies)))
        print(json.dumps({"cpu_per_cycle": (time.process_time() - start) / cycles}))


async def _hanging_proxy(port: int, upstream: str) -> None:
    """Child: forwards queries to Prometheus, except those naming ``HANG``, which it holds
    open until the client gives up (a tenant whose Prometheus shard hangs)."""
    from aiohttp import web

    async with aiohttp.ClientSession() as session:

        async def handler(request: web.Request) -> web.Response:
            form = await request.post()
            query = str(form.get("query", ""))
            if HANG in query:
                await asyncio.Event().wait()
            async with session.post(f"{upstream}/api/v1/query", data={"query": query}) as r:
                return web.Response(
                    body=await r.read(), status=r.status, content_type="application/json"
                )

        app = web.Application()
        app.router.add_post("/api/v1/query", handler)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print("ready", flush=True)
        await asyncio.Event().wait()


async def _constant_server(port: int, cert: str, key: str, client_ca: str) -> None:
    """Child: a bare aiohttp HTTPS handler returning a constant ExternalMetricValueList."""
    from aiohttp import web

    body = json.dumps(
        {
            "kind": "ExternalMetricValueList",
            "apiVersion": "external.metrics.k8s.io/v1beta1",
            "metadata": {},
            "items": [{"metricName": "m", "metricLabels": {}, "timestamp": "", "value": "3"}],
        }
    ).encode()

    async def handler(_: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(cafile=client_ca)
    context.verify_mode = ssl.CERT_REQUIRED
    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


async def _loadchild(url: str, rate: float, seconds: float, certs: Sequence[str]) -> None:
    """Child: the open-loop HTTPS client, away from the parent's busy API stand-in."""
    ca, cert, key = certs
    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(cert, key)
    # As the aggregator sends it: the front-proxy certificate names the caller in a header.
    caller = {"X-Remote-User": "system:serviceaccount:kube-system:horizontal-pod-autoscaler"}
    async with aiohttp.ClientSession(headers=caller) as session:
        latencies, errors = await _load(session, url, context, rate, seconds)
    print(json.dumps({"latencies": latencies, "errors": errors}))


# -- parent -----------------------------------------------------------------------------------


async def _load(
    session: aiohttp.ClientSession, url: str, context: ssl.SSLContext, rate: float, seconds: float
) -> tuple[list[float], int]:
    """Open loop: one request every 1/rate s regardless of answers; latencies of 200s, errors."""
    latencies: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()

    async def one() -> None:
        nonlocal errors
        start = loop.time()
        try:
            async with session.get(url, ssl=context) as resp:
                await resp.read()
                if resp.status != 200:
                    errors += 1
                    return
        except aiohttp.ClientError:
            errors += 1
            return
        latencies.append(loop.time() - start)

    tasks: list[asyncio.Task[None]] = []
    begin = loop.time()
    for n in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, begin + n / rate - loop.time()))
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    return latencies, errors


async def _constant_latency(args: argparse.Namespace, work: Path, certs: Certs) -> dict[str, Any]:
    port = free_port()
    const_args = [
        sys.executable, str(Path(__file__)), "--child-constant-server", str(port),
        certs.cert_file, certs.key_file, certs.client_ca_file,
    ]  # fmt: skip
    async with child(*const_args) as proc:
        assert proc.stdout is not None
        await asyncio.wait_for(proc.stdout.readline(), 30)
        latencies, errors = await _load_inchild(f"https://127.0.0.1:{port}/x", args, work)
    return {"p50": _pct(latencies, 0.5), "p99": _pct(latencies, 0.99), "errors": errors}


async def _load_inchild(url: str, args: argparse.Namespace, work: Path) -> tuple[list[float], int]:
    load_args = [
        sys.executable, str(Path(__file__)), "--child-load", url, str(args.rate), str(args.seconds),
        str(work / "ca.crt"), str(work / "client.crt"), str(work / "client.key"),
    ]  # fmt: skip
    async with child(*load_args) as proc:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), args.seconds + 60)
    result = json.loads(line)
    return list(result["latencies"]), int(result["errors"])


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def main(args: argparse.Namespace) -> int:
    n = args.policies
    work = Path(tempfile.mkdtemp(prefix="bench-controller-"))
    certs: Certs = make_certs(work)
    certs.ca.cert_pem.write_to_path(str(work / "ca.crt"))
    certs.client_cert.cert_chain_pems[0].write_to_path(str(work / "client.crt"))
    certs.client_cert.private_key_pem.write_to_path(str(work / "client.key"))
    kube = KubeStandIn(history_size=20 * n + 1000)
    await kube.start()
    kubeconfig = kube.write_kubeconfig(work / "kubeconfig")
    for i in range(n):
        for obj in _policy_objects(i, args.interval, _namespace(i, args.namespaces)):
            kube.store.create(obj)
    hung = args.hung_namespaces * args.hung_policies
    for j in range(hung):
        for obj in _policy_objects(-1 - j, args.interval, f"hung-{j % args.hung_namespaces}"):
            kube.store.create(obj)
    server = InferenceServer()
    await server.start()
    for m in range(MODELS):
        # 9..12 waiting at 4 per replica: every policy wants the 3 replicas its target has,
        # the steady state of a service whose HPA has caught up.
        server.set_waiting(9 + m % 4, model=f"m{m}")

    async def traffic() -> None:
        """Requests keep finishing, so every latency quantile stays defined (steady state)."""
        while True:
            for m in range(MODELS):
                server.observe_latency(0.5 + m / 20, count=5, model=f"m{m}")
            await asyncio.sleep(0.5)

    traffic_task = asyncio.create_task(traffic())
    prometheus = PrometheusServer(work / "prometheus", [server.target])
    await prometheus.astart()
    await prometheus.wait_for_value(_queries(0)[0], lambda v: v == 9)
    await prometheus.wait_for_value(_queries(0)[1])
    print(
        f"bench_controller: {n} policies x 2 metrics in {args.namespaces} namespaces"
        f" (+{hung} whose queries hang, in {args.hung_namespaces} more),"
        f" interval {args.interval:g}s, os.cpu_count()={os.cpu_count()},"
        f" python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.2f}"
    )
    results: dict[str, Any] = {}
    proxy: Any = None
    try:
        prometheus_url = prometheus.url
        if hung:
            proxy_port = free_port()
            proxy = child(
                sys.executable, str(Path(__file__)), "--child-hanging-proxy", str(proxy_port),
                prometheus.url,
            )  # fmt: skip
            proxy_proc = await proxy.__aenter__()
            await asyncio.wait_for(proxy_proc.stdout.readline(), 30)
            prometheus_url = f"http://127.0.0.1:{proxy_port}"
        ops_port, secure_port = free_port(), free_port()
        profile = ["-m", "cProfile", "-o", args.profile] if args.profile else []
        controller_args = [
            sys.executable, *profile, "-m", "gpuscale", "controller",
            "--kubeconfig", str(kubeconfig),
            "--prometheus-url", prometheus_url,
            "--ops-address", f"127.0.0.1:{ops_port}",
            "--secure-address", f"127.0.0.1:{secure_port}",
            "--tls-cert-file", certs.cert_file,
            "--tls-private-key-file", certs.key_file,
            "--requestheader-client-ca-file", certs.client_ca_file,
            # Scoping runs once per policy version, not per tick; the synthetic series carry
            # no namespace label, so enforcement is off here.
            "--no-leader-elect", "--no-tenancy", "--log-level", "warning",
        ]  # fmt: skip
        async with child(*controller_args) as proc, aiohttp.ClientSession() as session:
            loop = asyncio.get_running_loop()
            # Warm-up: every policy decided twice, then no API write for two intervals (HPAs,
            # annotations and Events all written: the steady state the windows measure).
            deadline = loop.time() + 120 + n / 20
            quiet_since, writes = loop.time(), -1
            while (
                await decisions(session, ops_port) < 2 * n
                or loop.time() - quiet_since < 2 * args.interval
            ):
                if loop.time() > deadline or proc.returncode is not None:
                    raise SystemExit("controller did not reach a steady state in time")
                now_writes = sum(r.method != "GET" for r in kube.requests)
                if now_writes != writes:
                    quiet_since, writes = loop.time(), now_writes
                await asyncio.sleep(0.5)
            # CPU over whole cycles, nothing else asked of the controller, --repeat windows.
            scraped0 = await scrape(session, ops_port)
            requests0 = len(kube.requests)
            per_window: list[float] = []
            cycles = 0.0
            cpu0 = cpu_seconds(proc.pid)
            for _ in range(args.repeat):
                done_a, cpu_a = await decisions(session, ops_port), cpu_seconds(proc.pid)
                await asyncio.sleep(args.interval * args.cycles)
                cpu_b, done_b = cpu_seconds(proc.pid), await decisions(session, ops_port)
                window_cycles = (done_b - done_a) / n
                cycles += window_cycles
                per_window.append((cpu_b - cpu_a) / window_cycles if window_cycles else math.nan)
            cpu1 = cpu_seconds(proc.pid)
            window = kube.requests[requests0:]
            # Gaps between decisions of the healthy policies, sampled every second.
            healthy = {f"{_namespace(i, args.namespaces)}/svc-{i}" for i in range(n)}
            last = {k: v for k, v in decision_times(scraped0).items() if k in healthy}
            longest = 0.0
            gap_end = loop.time() + args.interval * args.cycles
            while loop.time() < gap_end:
                await asyncio.sleep(1.0)
                now = time.time()
                times = decision_times(await scrape(session, ops_port))
                for key in healthy:
                    seen = times.get(key, last.get(key, now))
                    longest = max(longest, now - seen)
                    last[key] = seen
            scraped1 = await scrape(session, ops_port)
            buckets0, skipped0 = lateness(scraped0)
            buckets1, skipped1 = lateness(scraped1)
            rss, peak = rss_mib(proc.pid)
            # External metrics latency while the cycles keep running.
            url = (
                f"https://127.0.0.1:{secure_port}/apis/external.metrics.k8s.io/v1beta1/"
                f"namespaces/{_namespace(7, args.namespaces)}/gpuscale_desired_replicas"
                "?labelSelector=gpuscale.io%2Fpolicy%3Dsvc-7"
            )
            cpu2, t2 = cpu_seconds(proc.pid), loop.time()
            latencies, errors = await _load_inchild(url, args, work)
            cpu3, t3 = cpu_seconds(proc.pid), loop.time()
            # Baseline under the same machine load: the controller keeps running its cycles.
            results["constant"] = await _constant_latency(args, work, certs)
            results["controller"] = {
                "cpu_per_cycle": statistics.median(per_window),
                "per_window": per_window,
                "cycles": cycles,
                "cpu_per_request_ms": (
                    (cpu3 - cpu2)
                    - (cpu1 - cpu0) / (args.interval * args.cycles * args.repeat) * (t3 - t2)
                )
                / max(1, len(latencies) + errors)
                * 1000,
                "p50": _pct(latencies, 0.5),
                "p99": _pct(latencies, 0.99),
                "errors": errors,
                "requests": len(latencies) + errors,
                "hpas": sum(
                    len(kube.store.list("horizontalpodautoscalers", _namespace(i, args.namespaces)))
                    for i in range(min(n, args.namespaces))
                ),
                "lateness_p50": bucket_quantile(buckets0, buckets1, 0.5),
                "lateness_p99": bucket_quantile(buckets0, buckets1, 0.99),
                "skipped": skipped1 - skipped0,
                "longest_gap": longest,
                "rss": rss,
                "peak_rss": peak,
                "api_reads": sum(r.method == "GET" and not r.watch for r in window),
                "api_writes": sum(r.method != "GET" for r in window),
            }

        baseline_args = [
            sys.executable, str(Path(__file__)), "--child-io-baseline",
            "--prometheus-url", prometheus.url,
            "--policies", str(n), "--cycles", str(args.cycles),
        ]  # fmt: skip
        baselines = []
        for _ in range(args.repeat):
            async with child(*baseline_args) as proc:
                assert proc.stdout is not None
                line = await asyncio.wait_for(proc.stdout.readline(), 300)
                baselines.append(json.loads(line)["cpu_per_cycle"])
        results["io_baseline"] = {
            "cpu_per_cycle": statistics.median(baselines),
            "per_window": baselines,
        }

    finally:
        if proxy is not None:
            await proxy.__aexit__(None, None, None)
        traffic_task.cancel()
        await prometheus.astop()
        await server.stop()
        await kube.stop()

    c, b, k = results["controller"], results["io_baseline"], results["constant"]
    cpu_ok = "yes" if c["cpu_per_cycle"] < 0.5 * n / 1000 else "NO"
    ratios = sorted(x / y for x, y in zip(c["per_window"], b["per_window"], strict=True))
    ratio = statistics.median(ratios)
    p99_ok = "yes" if c["p99"] < 5.0 else "NO"
    print(
        f"  HPAs created: {c['hpas']}; cycles measured: {c['cycles']:.2f};"
        f" API requests in them: {c['api_reads']} reads, {c['api_writes']} writes"
    )

    def spread(xs: list[float], unit: str = " s") -> str:
        xs = sorted(xs)
        return f"{xs[0]:.3f}/{statistics.median(xs):.3f}/{xs[-1]:.3f}{unit} (min/median/max)"

    print(f"  controller CPU per cycle of {n} policies: {spread(c['per_window'])}")
    print(f"  baseline, the same Prometheus queries only, in one burst: {spread(b['per_window'])}")
    print(
        f"  ratio to the bare queries, per repetition: {', '.join(f'{r:.2f}' for r in ratios)};"
        f" median {ratio:.2f}x (target <= 1.2x: {'yes' if ratio <= 1.2 else 'NO'});"
        f" under 0.5 s per 1,000 policies: {cpu_ok}; load average now {os.getloadavg()[0]:.2f}"
    )
    print(
        f"  tick lateness p50 <= {c['lateness_p50']:g} s, p99 <= {c['lateness_p99']:g} s"
        f" (histogram bucket bounds); ticks skipped {c['skipped']:.0f};"
        f" healthy policies' longest gap between decisions {c['longest_gap']:.1f} s"
        f" (interval {args.interval:g} s)"
    )
    print(f"  controller memory: RSS {c['rss']:.0f} MiB, peak {c['peak_rss']:.0f} MiB")
    print(
        f"  external metrics at {args.rate:g} req/s over HTTPS: p50 {c['p50']:.2f} ms,"
        f" p99 {c['p99']:.2f} ms, errors {c['errors']}/{c['requests']}"
        f" (while the controller runs its cycles; ~{c['cpu_per_request_ms']:.2f} ms CPU each)"
    )
    print(
        f"  baseline, bare aiohttp HTTPS constant handler (same load): p50 {k['p50']:.2f} ms,"
        f" p99 {k['p99']:.2f} ms, errors {k['errors']}"
    )
    print(f"  target p99 under 5 ms: {p99_ok}")
    return 0


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--policies", type=int, default=1000)
    parser.add_argument("--namespaces", type=int, default=100)
    parser.add_argument("--hung-namespaces", type=int, default=0)
    parser.add_argument("--hung-policies", type=int, default=200, help="per hung namespace")
    parser.add_argument("--child-hanging-proxy", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--cycles", type=int, default=3, help="decision cycles per window")
    parser.add_argument("--repeat", type=int, default=3, help="CPU windows (and baselines)")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--profile", help="write the controller's cProfile stats to this file")
    parser.add_argument("--child-io-baseline", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prometheus-url", help=argparse.SUPPRESS)
    parser.add_argument("--child-constant-server", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--child-load", nargs=6, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    if args.child_io_baseline:
        asyncio.run(_io_baseline(args.prometheus_url, args.policies, args.cycles))
        return 0
    if args.child_load:
        url, rate, seconds, *paths = args.child_load
        asyncio.run(_loadchild(url, float(rate), float(seconds), paths))
        return 0
    if args.child_hanging_proxy:
        port, upstream = args.child_hanging_proxy
        asyncio.run(_hanging_proxy(int(port), upstream))
        return 0
    if args.child_constant_server:
        port, cert, key, ca = args.child_constant_server
        asyncio.run(_constant_server(int(port), cert, key, ca))
        return 0
    return asyncio.run(main(args))


if __name__ == "__main__":
    sys.exit(run())
