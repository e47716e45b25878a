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

    python benchmarks/bench_controller.py [--policies 1000] [--interval 5] [--cycles 3]
                                          [--rate 100] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import ssl
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.autoscaler.helpers import Certs, make_certs  # noqa: E402
from tests.support.inference_server import InferenceServer  # noqa: E402
from tests.support.kube_standin import KubeStandIn  # noqa: E402
from tests.support.prometheus import PrometheusServer, free_port  # noqa: E402

MODELS = 20
NS = "bench"
TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its reaped children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / TICKS


def _queries(i: int) -> tuple[str, str]:
    model = f"m{i % MODELS}"
    queue = f'sum(vllm:num_requests_waiting{{model_name="{model}"}})'
    latency = (
        "histogram_quantile(0.95, sum by (le) "
        f'(rate(vllm:e2e_request_latency_seconds_bucket{{model_name="{model}"}}[30s])))'
    )
    return queue, latency


def _policy_configmap(i: int, interval: float) -> dict[str, Any]:
    import yaml

    queue, latency = _queries(i)
    document = {
        "apiVersion": "gpuscale.io/v1alpha1",
        "kind": "ScalingPolicy",
        "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"svc-{i}"},
        "replicas": {"min": 1, "max": 50},
        "interval": f"{interval:g}s",
        "metrics": [
            {"name": "queue", "type": "queueDepth", "query": queue, "targetPerReplica": 4},
            {"name": "latency", "type": "latency", "query": latency, "slo": "2s"},
        ],
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"svc-{i}",
            "namespace": NS,
            "labels": {"gpuscale.io/scaling-policy": "true"},
        },
        "data": {"policy.yaml": yaml.safe_dump(document)},
    }


def _deployment(i: int) -> dict[str, Any]:
    labels = {"app": f"svc-{i}"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"svc-{i}", "namespace": NS},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "s", "image": "vllm"}]},
            },
        },
    }


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


async def _load_child(url: str, rate: float, seconds: float, certs: Sequence[str]) -> None:
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


@contextlib.asynccontextmanager
async def _child(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[Any]:
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _decisions(session: aiohttp.ClientSession, ops_port: int) -> float:
    try:
        async with session.get(f"http://127.0.0.1:{ops_port}/metrics") as resp:
            text = await resp.text()
    except aiohttp.ClientError:
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gpuscale_decisions_total{")
    )


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
    async with _child(*const_args) as proc:
        assert proc.stdout is not None
        await asyncio.wait_for(proc.stdout.readline(), 30)
        latencies, errors = await _load_in_child(f"https://127.0.0.1:{port}/x", args, work)
    return {"p50": _pct(latencies, 0.5), "p99": _pct(latencies, 0.99), "errors": errors}


async def _load_in_child(url: str, args: argparse.Namespace, work: Path) -> tuple[list[float], int]:
    load_args = [
        sys.executable, str(Path(__file__)), "--child-load", url, str(args.rate), str(args.seconds),
        str(work / "ca.crt"), str(work / "client.crt"), str(work / "client.key"),
    ]  # fmt: skip
    async with _child(*load_args) as proc:
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
        kube.store.create(_deployment(i))
        kube.store.create(_policy_configmap(i, args.interval))
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
        f"bench_controller: {n} policies x 2 metrics, interval {args.interval:g}s,"
        f" os.cpu_count()={os.cpu_count()}, python {sys.version.split()[0]}"
    )
    results: dict[str, Any] = {}
    try:
        ops_port, secure_port = free_port(), free_port()
        profile = ["-m", "cProfile", "-o", args.profile] if args.profile else []
        controller_args = [
            sys.executable, *profile, "-m", "gpuscale", "controller",
            "--kubeconfig", str(kubeconfig),
            "--prometheus-url", prometheus.url,
            "--ops-address", f"127.0.0.1:{ops_port}",
            "--secure-address", f"127.0.0.1:{secure_port}",
            "--tls-cert-file", certs.cert_file,
            "--tls-private-key-file", certs.key_file,
            "--requestheader-client-ca-file", certs.client_ca_file,
            "--no-leader-elect", "--log-level", "warning",
        ]  # fmt: skip
        async with _child(*controller_args) as proc, aiohttp.ClientSession() as session:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 120
            # Warm-up: every policy decided twice (HPAs, annotations, Events written).
            while await _decisions(session, ops_port) < 2 * n:
                if loop.time() > deadline or proc.returncode is not None:
                    raise SystemExit("controller did not warm up within 120 s")
                await asyncio.sleep(0.5)
            # CPU over whole cycles, nothing else asked of the controller.
            done0 = await _decisions(session, ops_port)
            requests0 = len(kube.requests)
            cpu0 = _cpu_seconds(proc.pid)
            await asyncio.sleep(args.interval * args.cycles)
            cpu1 = _cpu_seconds(proc.pid)
            done1 = await _decisions(session, ops_port)
            window = kube.requests[requests0:]
            cycles = (done1 - done0) / n
            # External metrics latency while the cycles keep running.
            url = (
                f"https://127.0.0.1:{secure_port}/apis/external.metrics.k8s.io/v1beta1/"
                f"namespaces/{NS}/gpuscale_desired_replicas?labelSelector=gpuscale.io%2Fpolicy%3Dsvc-7"
            )
            cpu2, t2 = _cpu_seconds(proc.pid), loop.time()
            latencies, errors = await _load_in_child(url, args, work)
            cpu3, t3 = _cpu_seconds(proc.pid), loop.time()
            # Baseline under the same machine load: the controller keeps running its cycles.
            results["constant"] = await _constant_latency(args, work, certs)
            results["controller"] = {
                "cpu_per_cycle": (cpu1 - cpu0) / cycles if cycles else float("nan"),
                "cycles": cycles,
                "cpu_per_request_ms": (
                    (cpu3 - cpu2) - (cpu1 - cpu0) / (args.interval * args.cycles) * (t3 - t2)
                )
                / max(1, len(latencies) + errors)
                * 1000,
                "p50": _pct(latencies, 0.5),
                "p99": _pct(latencies, 0.99),
                "errors": errors,
                "requests": len(latencies) + errors,
                "hpas": len(kube.store.list("horizontalpodautoscalers", NS)),
                "api_reads": sum(r.method == "GET" and not r.watch for r in window),
                "api_writes": sum(r.method != "GET" for r in window),
            }

        baseline_args = [
            sys.executable, str(Path(__file__)), "--child-io-baseline",
            "--prometheus-url", prometheus.url,
            "--policies", str(n), "--cycles", str(args.cycles),
        ]  # fmt: skip
        async with _child(*baseline_args) as proc:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 300)
            results["io_baseline"] = json.loads(line)

    finally:
        traffic_task.cancel()
        await prometheus.astop()
        await server.stop()
        await kube.stop()

    c, b, k = results["controller"], results["io_baseline"], results["constant"]
    cpu_ok = "yes" if c["cpu_per_cycle"] < 0.5 * n / 1000 else "NO"
    p99_ok = "yes" if c["p99"] < 5.0 else "NO"
    print(
        f"  HPAs created: {c['hpas']}; cycles measured: {c['cycles']:.2f};"
        f" API requests in them: {c['api_reads']} reads, {c['api_writes']} writes"
    )
    print(f"  controller CPU per cycle of {n} policies: {c['cpu_per_cycle']:.3f} s")
    print(f"  baseline, the same Prometheus queries only, in one burst: {b['cpu_per_cycle']:.3f} s")
    print(f"  target under 0.5 s per 1,000 policies: {cpu_ok}")
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
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--cycles", type=int, default=3)
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
        asyncio.run(_load_child(url, float(rate), float(seconds), paths))
        return 0
    if args.child_constant_server:
        port, cert, key, ca = args.child_constant_server
        asyncio.run(_constant_server(int(port), cert, key, ca))
        return 0
    return asyncio.run(main(args))


if __name__ == "__main__":
    sys.exit(run())
