"""Hostile load against both servers (issue 21): memory, a healthy client's p99, connections held.

Each server runs as a child process as in its Pod (``gpuscale controller`` with its metrics API
over TLS and front-proxy client certificates; ``gpuscale extender`` over mTLS with its plain ops
port), against the Kubernetes API stand-in. Every attack is one function (``Attack``) that opens
a bounded number of loopback connections for a bounded time and reports what happened to them;
the driver measures, around it, the server's peak RSS (from /proc, every 50 ms), its RSS 3 s
after the attackers closed, its open file descriptors at the attack's height, and the p99 of a
healthy client (a child process, 20 requests/s on keep-alive connections as the aggregator and
kube-scheduler send them, or with ``--fresh-connections`` each on a new connection: the worst
case for admission) beside the same client's p99 in a quiet run of the same length.

The rows of other shapes run after these, each module with its own table: hostile tenants'
Prometheus answers against the controller (``benchmarks/abuse_queries.py``) and hostile request
bodies against the extender at 5,000 nodes (``benchmarks/abuse_requests.py``).

``--legacy`` runs the same attacks against the servers as they were before connection limits
(aiohttp's own server, its 256 KiB TLS buffer, and the extender on plain HTTP), for comparison.

    python benchmarks/bench_abuse.py [--idle 1000] [--slowloris 200] [--chunked 100]
        [--seconds 12] [--only controller|extender] [--fresh-connections] [--legacy]
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
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import trustme

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import abuse_queries, abuse_requests  # noqa: E402
from benchmarks.controller_probe import child  # noqa: E402
from tests.extender.test_cluster_cache import node_obj, pod_obj  # noqa: E402
from tests.support.kube_standin import KubeStandIn  # noqa: E402
from tests.support.prometheus import free_port  # noqa: E402

QUIET_RATE = 20.0
SETTLE = 3.0
NODES = 50
LIMITS_MIB = {"controller": 512, "extender": 1024}  # deploy/'s memory limits
HEADROOM = 0.7  # the target: peak RSS within 70% of the limit


# -- what an attack is given and returns ---------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One port of one server, as an attacker sees it."""

    server: str  # controller | extender
    port_name: str
    port: int
    tls: bool
    trust: ssl.SSLContext | None  # verifies the server, shows no client certificate
    wrong_identity: ssl.SSLContext | None = None  # a certificate from the right CA, wrong name
    pod: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scale:
    idle: int = 1000
    slowloris: int = 200
    chunked: int = 100
    seconds: float = 12.0


@dataclass
class Outcome:
    opened: int = 0
    refused: int = 0  # failed to connect or to finish the TLS handshake
    closed_by_server: int = 0
    held_at_end: int = 0
    longest_held_s: float = 0.0
    note: str = ""


Attack = Callable[[Target, Scale], Awaitable[Outcome]]


# -- attacks ---------------------------------------------------------------------------------


async def _open(target: Target, ssl_context: ssl.SSLContext | None = None) -> Any:
    context = ssl_context or target.trust
    return await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", target.port, ssl=context if target.tls else None), 10
    )


async def _open_many(target: Target, n: int, first: bytes) -> tuple[list[Any], int]:
    """``n`` connections (50 at a time), each sent ``first``; (connections, refused)."""
    conns: list[Any] = []
    refused = 0

    async def one() -> None:
        nonlocal refused
        try:
            reader, writer = await _open(target)
            writer.write(first)
            conns.append((reader, writer, time.monotonic()))
        except (OSError, ssl.SSLError, TimeoutError):
            refused += 1

    for start in range(0, n, 50):
        await asyncio.gather(*(one() for _ in range(min(50, n - start))))
    return conns, refused


def _closed(writer: asyncio.StreamWriter) -> bool:
    return writer.transport.is_closing()


async def _hold(conns: list[Any], seconds: float, every: bytes | None) -> tuple[int, float]:
    """Keep the connections (sending ``every`` each second); (closed by server, longest held)."""
    deadline = time.monotonic() + seconds
    gone: dict[int, float] = {}
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        for i, (_r, w, opened) in enumerate(conns):
            if i in gone:
                continue
            if _closed(w):
                gone[i] = time.monotonic() - opened
            elif every is not None:
                with contextlib.suppress(OSError, RuntimeError):
                    w.write(every)
    now = time.monotonic()
    for i, (_r, w, opened) in enumerate(conns):
        if i not in gone and _closed(w):
            gone[i] = now - opened
    longest = max([now - o for i, (_r, _w, o) in enumerate(conns) if i not in gone] or [0.0])
    return len(gone), max([longest, *gone.values()])


def _close_all(conns: list[Any]) -> None:
    for _r, w, _o in conns:
        w.transport.abort()


async def attack_idle_half_request(target: Target, scale: Scale) -> Outcome:
    """Issue row 1: many idle connections (TLS without a client certificate), half a line each."""
    conns, refused = await _open_many(target, scale.idle, b"GET /apis/external.metrics.k8s")
    closed, longest = await _hold(conns, scale.seconds, None)
    out = Outcome(len(conns) + refused, refused, closed, len(conns) - closed, longest)
    _close_all(conns)
    return out


async def attack_slowloris(target: Target, scale: Scale) -> Outcome:
    """Issue row 7: request heads that never end, one header line a second."""
    head = b"GET /livez HTTP/1.1\r\nHost: x\r\n"
    conns, refused = await _open_many(target, scale.slowloris, head)
    closed, longest = await _hold(conns, scale.seconds, b"X-Slow: 1\r\n")
    out = Outcome(len(conns) + refused, refused, closed, len(conns) - closed, longest)
    _close_all(conns)
    return out


async def attack_endless_chunked(target: Target, scale: Scale) -> Outcome:
    """Issue row 7: a chunked body that never ends, to a verb that reads its body."""
    path = b"/filter" if target.server == "extender" else b"/apis/external.metrics.k8s.io/v1beta1"
    head = b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    conns, refused = await _open_many(target, scale.chunked, head)
    closed, longest = await _hold(conns, scale.seconds, b"1\r\n[\r\n")
    out = Outcome(len(conns) + refused, refused, closed, len(conns) - closed, longest)
    _close_all(conns)
    return out


async def attack_unauthenticated_bind(target: Target, scale: Scale) -> Outcome:
    """Issue row 9: /bind without a client certificate and with a wrong identity."""
    del scale
    body = orjson.dumps(
        {"PodName": "victim", "PodNamespace": "default", "PodUID": "x", "Node": "n0"}
    )
    scheme = "https" if target.tls else "http"
    out = Outcome()
    served = []
    for context in (target.trust, target.wrong_identity):
        if target.tls and context is None:
            continue
        out.opened += 1
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    f"{scheme}://127.0.0.1:{target.port}/bind",
                    data=body,
                    ssl=context if target.tls and context is not None else False,
                ) as resp,
            ):
                served.append(resp.status)
        except (aiohttp.ClientError, ssl.SSLError, OSError):
            out.refused += 1
    out.note = f"answered {served}" + (" (403: refused)" if 403 in served else "")
    return out


# Which attack runs against which port: (name, function, ports).
ATTACKS: list[tuple[str, Attack, tuple[str, ...]]] = [
    ("idle half line x N", attack_idle_half_request, ("controller/secure", "extender/verbs")),
    ("slowloris heads", attack_slowloris, ("controller/secure", "extender/verbs", "extender/ops")),
    ("endless chunked body", attack_endless_chunked, ("controller/secure", "extender/verbs")),
    ("unauthenticated /bind", attack_unauthenticated_bind, ("extender/verbs",)),
]


# -- measuring around an attack ------------------------------------------------------------------


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _sample(pid: int, peak: list[float], fds: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(OSError):
            peak[0] = max(peak[0], _rss_mib(pid))
            fds[0] = max(fds[0], _fds(pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


async def _healthy(spec: dict[str, Any]) -> list[float]:
    """Run the healthy client child for ``spec["seconds"]``; its latencies (ms), errors as inf."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--healthy-client",
        json.dumps(spec),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    out, _ = await proc.communicate()
    return [float(x) for x in json.loads(out)]


def _p99(latencies: Sequence[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else float("nan")


async def healthy_client(spec: dict[str, Any]) -> None:
    """Open-loop requests at ``rate``/s, each on a new connection; prints latencies (ms)."""
    context: ssl.SSLContext | bool = False
    if spec.get("ca"):
        ctx = ssl.create_default_context(cafile=spec["ca"])
        if spec.get("cert"):
            ctx.load_cert_chain(spec["cert"], spec["key"])
        context = ctx
    latencies: list[float] = []
    body = spec.get("body", "").encode() or None
    connector = aiohttp.TCPConnector(force_close=bool(spec.get("fresh")), ssl=context)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one() -> None:
            started = time.perf_counter()
            try:
                async with (
                    asyncio.timeout(10),
                    http.request(
                        spec["method"], spec["url"], data=body, headers=spec.get("headers")
                    ) as resp,
                ):
                    await resp.read()
                    ok = resp.status == 200
            except (aiohttp.ClientError, OSError, TimeoutError):
                ok = False
            latencies.append((time.perf_counter() - started) * 1000 if ok else float("inf"))

        tasks = []
        start = time.perf_counter()
        for i in range(int(spec["seconds"] * spec["rate"])):
            await asyncio.sleep(max(0.0, start + i / spec["rate"] - time.perf_counter()))
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    print(json.dumps([x if x != float("inf") else 1e9 for x in latencies]))


@dataclass
class Row:
    attack: str
    port: str
    outcome: Outcome
    rss_before: float
    rss_peak: float
    rss_after: float
    fds_before: int
    fds_peak: int
    p99_quiet: float
    p99_attack: float
    errors: int


async def _measure(
    name: str,
    attack: Attack,
    target: Target,
    scale: Scale,
    pid: int,
    spec: dict[str, Any],
    quiet_p99: float,
) -> Row:
    rss_before, fds_before = _rss_mib(pid), _fds(pid)
    peak, fds, stop = [rss_before], [fds_before], asyncio.Event()
    sampler = asyncio.create_task(_sample(pid, peak, fds, stop))
    healthy = asyncio.create_task(_healthy({**spec, "seconds": scale.seconds}))
    outcome = await attack(target, scale)
    latencies = await healthy
    await asyncio.sleep(SETTLE)
    stop.set()
    await sampler
    return Row(
        name,
        f"{target.server}/{target.port_name}",
        outcome,
        rss_before,
        peak[0],
        _rss_mib(pid),
        fds_before,
        fds[0],
        quiet_p99,
        _p99(latencies),
        sum(1 for x in latencies if x >= 1e9),
    )


# -- the servers -----------------------------------------------------------------------------


@dataclass
class Pki:
    directory: Path
    ca: trustme.CA

    def pair(self, name: str, *hosts: str, cn: str | None = None) -> tuple[str, str]:
        leaf = self.ca.issue_cert(*hosts, common_name=cn) if cn else self.ca.issue_cert(*hosts)
        cert, key = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        return str(cert), str(key)

    @property
    def ca_file(self) -> str:
        path = self.directory / "ca.crt"
        if not path.exists():
            self.ca.cert_pem.write_to_path(str(path))
        return str(path)

    def client(self, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        if cert and key:
            context.load_cert_chain(cert, key)
        return context


_LEGACY = """
import contextlib, sys, types
from aiohttp import web
import runtime.serving as serving

@contextlib.asynccontextmanager
async def legacy(app, listeners, *, limits=None, metrics=None, shutdown_timeout=1.0, backlog=128):
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           shutdown_timeout=shutdown_timeout)
    await runner.setup()
    ports = {}
    try:
        for x in listeners:
            site = web.TCPSite(runner, x.host, x.port, ssl_context=x.ssl_context,
                               reuse_address=True)
            await site.start()
            ports[x.name] = site.port
        yield types.SimpleNamespace(ports=ports)
    finally:
        await runner.cleanup()

serving.serve = legacy
from gpuscale.cli import main
sys.exit(main(sys.argv[1:]))
"""


@contextlib.asynccontextmanager
async def _child(args: Sequence[str], legacy: bool) -> AsyncIterator[asyncio.subprocess.Process]:
    start = ["-c", _LEGACY] if legacy else ["-m", "gpuscale"]
    async with child(sys.executable, *start, *args, capture=False, grace=15.0) as proc:
        yield proc


async def _wait_ok(url: str, context: ssl.SSLContext | bool, headers: dict[str, str]) -> None:
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(url, ssl=context, headers=headers) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.3)
    raise SystemExit(f"bench_abuse: {url} did not answer 200 within 60 s")


async def _run_server(
    server: str,
    kubeconfig: Path,
    pki: Pki,
    scale: Scale,
    legacy: bool,
    rows: list[Row],
    fresh: bool,
) -> None:
    serving_cert, serving_key = pki.pair(f"{server}-serving", "127.0.0.1", "localhost")
    client_cn = "front-proxy-client" if server == "controller" else "system:kube-scheduler"
    client_cert, client_key = pki.pair(f"{server}-client", "client", cn=client_cn)
    wrong = pki.pair(f"{server}-wrong", "intruder", cn="intruder")
    main_port, ops_port = free_port(), free_port()
    tls = server == "controller" or not legacy
    if server == "controller":
        args = [
            "controller", "--kubeconfig", str(kubeconfig),
            "--prometheus-url", "http://127.0.0.1:9",
            "--secure-address", f"127.0.0.1:{main_port}",
            "--ops-address", f"127.0.0.1:{ops_port}",
            "--tls-cert-file", serving_cert, "--tls-private-key-file", serving_key,
            "--requestheader-client-ca-file", pki.ca_file,
            "--no-leader-elect", "--log-level", "error",
        ]  # fmt: skip
        url = f"https://127.0.0.1:{main_port}/apis/external.metrics.k8s.io/v1beta1"
        spec: dict[str, Any] = {"method": "GET", "url": url, "headers": {"X-Remote-User": "hpa"}}
        ports = {"secure": main_port}
    else:
        args = [
            "extender", "--kubeconfig", str(kubeconfig),
            "--address", f"127.0.0.1:{main_port}", "--ops-address", f"127.0.0.1:{ops_port}",
            "--log-level", "error",
        ]  # fmt: skip
        if legacy:
            args.append("--plain-http-sidecar")
        else:
            args += [
                "--tls-cert-file", serving_cert, "--tls-private-key-file", serving_key,
                "--client-ca-file", pki.ca_file,
            ]  # fmt: skip
        scheme = "https" if tls else "http"
        pod = pod_obj("healthy", 1000)
        names = [f"n{i}" for i in range(NODES)]
        body = orjson.dumps({"Pod": pod, "Nodes": None, "NodeNames": names}).decode()
        spec = {"method": "POST", "url": f"{scheme}://127.0.0.1:{main_port}/filter", "body": body}
        ports = {"verbs": main_port, "ops": ops_port}
    spec["fresh"] = fresh
    if tls:
        spec |= {"ca": pki.ca_file, "cert": client_cert, "key": client_key}
    async with _child(args, legacy) as proc:
        trusted: ssl.SSLContext | bool = pki.client(client_cert, client_key) if tls else False
        headers = spec.get("headers") or {}
        if server == "controller":
            await _wait_ok(spec["url"], trusted, headers)
        else:
            await _wait_ok(f"http://127.0.0.1:{ops_port}/readyz", False, {})
        await _healthy({**spec, "rate": QUIET_RATE, "seconds": 2.0})  # warm-up, not counted
        quiet = await _healthy({**spec, "rate": QUIET_RATE, "seconds": scale.seconds})
        spec["rate"] = QUIET_RATE
        for name, attack, where in ATTACKS:
            for port_name, port in ports.items():
                if f"{server}/{port_name}" not in where:
                    continue
                plain = port_name == "ops" or not tls
                target = Target(
                    server,
                    port_name,
                    port,
                    not plain,
                    None if plain else pki.client(),
                    None if plain else pki.client(*wrong),
                )
                rows.append(
                    await _measure(name, attack, target, scale, proc.pid, spec, _p99(quiet))
                )
                print(f"  done: {name} on {server}/{port_name}", file=sys.stderr)


def _print(rows: list[Row], legacy: bool, fresh: bool) -> None:
    servers = "legacy servers" if legacy else "runtime.serving"
    client = "a new connection per request" if fresh else "keep-alive"
    print(f"\nbench_abuse ({servers}; healthy client: {client}):")
    header = (
        f"{'attack':<22} {'port':<18} {'opened':>6} {'refused':>7} {'cut':>5} {'held':>5}"
        f" {'longest':>8} {'fds':>11} {'RSS MiB before/peak/after':>26} {'limit':>7}"
        f" {'p99 quiet/attack ms':>20} {'err':>4}"
    )
    print(header)
    for r in rows:
        o = r.outcome
        limit = LIMITS_MIB[r.port.split("/")[0]]
        within = "ok" if r.rss_peak <= HEADROOM * limit else "OVER"
        p99 = f"{r.p99_quiet:.1f}/{r.p99_attack:.1f}"
        rss = f"{r.rss_before:.0f}/{r.rss_peak:.0f}/{r.rss_after:.0f}"
        print(
            f"{r.attack:<22} {r.port:<18} {o.opened:>6} {o.refused:>7} {o.closed_by_server:>5}"
            f" {o.held_at_end:>5} {o.longest_held_s:>7.1f}s {r.fds_before:>4}->{r.fds_peak:<5}"
            f" {rss:>26} {limit:>4} {within:<3} {p99:>20} {r.errors:>4}"
            + (f"  {o.note}" if o.note else "")
        )
    print(
        "cut: closed by the server during the attack; held: still open at its end; limit: deploy/"
        f" memory limit (ok: peak within {HEADROOM:.0%}); target p99 within 2x of quiet."
    )


async def main(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=1000, help="idle connections (max 3000)")
    parser.add_argument("--slowloris", type=int, default=200, help="slow connections (max 1000)")
    parser.add_argument("--chunked", type=int, default=100, help="endless bodies (max 1000)")
    parser.add_argument("--seconds", type=float, default=12.0, help="per attack (max 30)")
    parser.add_argument("--legacy", action="store_true", help="servers without the limits")
    parser.add_argument("--only", choices=["controller", "extender"], default=None)
    parser.add_argument(
        "--fresh-connections", action="store_true", help="healthy client: a connection each"
    )
    args = parser.parse_args(argv)
    scale = Scale(
        min(args.idle, 3000),
        min(args.slowloris, 1000),
        min(args.chunked, 1000),
        min(args.seconds, 30.0),
    )
    kube = KubeStandIn()
    for i in range(NODES):
        kube.store.create(node_obj(f"n{i}", [0] * 8))
    await kube.start()
    rows: list[Row] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            kubeconfig = kube.write_kubeconfig(work / "kubeconfig")
            pki = Pki(work, trustme.CA())
            for server in ("controller", "extender"):
                if args.only in (None, server):
                    await _run_server(
                        server, kubeconfig, pki, scale, args.legacy, rows, args.fresh_connections
                    )
    finally:
        await kube.stop()
    _print(rows, args.legacy, args.fresh_connections)
    if not args.legacy and args.only in (None, "controller"):
        await abuse_queries.main(["--seconds", f"{max(scale.seconds, 10.0):g}"])
    return args


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--healthy-client":
        asyncio.run(healthy_client(json.loads(sys.argv[2])))
    else:
        parsed = asyncio.run(main())
        if not parsed.legacy and parsed.only in (None, "extender"):
            # Its own processes and event loops: run after this script's loop has closed.
            abuse_requests.main([])
