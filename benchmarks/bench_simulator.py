"""Simulator speed: the vLLM engine model on the Azure code trace, our event engine against SimPy
on M/M/4, and the default scenario end to end, each next to a baseline measured in the same run.

0. An hour of the Azure LLM code trace (``simulations/data/azure_llm_2023_code.csv``) through 16
   vLLM engines (A100 profile) behind the least-outstanding router: simulated engine steps/s
   and requests/s, with decode-only runs advanced in one event (as shipped) and one step per
   event (``MAX_RUN = 1``), and the old per-request model (``engine: per-request``, 2 slots per
   replica) on the same requests.
1. An M/M/4 queue at ρ = 0.8 fed the same pre-drawn arrival and service times, once through
   our engine with the simulator's own serving model (one replica with 4 slots) and once written
   idiomatically in SimPy (a ``Resource`` of capacity 4, one generator process per customer).
   Prints customers/s of both, their ratio (target ≥ 10×), and both mean waits against Erlang C.
2. ``gpuscale simulate``'s default scenario with all its contenders, in a child process: wall
   time and peak RSS (targets: under 60 s and 2 GiB on a 2-core machine); the baselines are the
   same scenario with a single fixed-replica contender (the cost of the modelled world alone)
   and with the old per-request serving model.

Default: 200,000 customers, best of three runs each (well under a minute); ``--full`` uses
1,000,000.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time

import numpy as np

RHO = 0.8
SERVERS = 4
REPEATS = 3


def erlang_c_wait(c: int, rho: float) -> float:
    a = rho * c
    below = sum(a**k / math.factorial(k) for k in range(c))
    top = a**c / math.factorial(c) / (1 - rho)
    return top / (below + top) / (c - a)


def draw(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / (RHO * SERVERS), n))
    service = rng.exponential(1.0, n)
    return arrivals, service


def ours(arrivals: np.ndarray, service: np.ndarray) -> tuple[float, float]:
    from simulations.serving.clock import Engine
    from simulations.serving.replicas import Replica, RequestLog

    log = RequestLog(arrivals, service)
    engine = Engine()
    replica = Replica(0, engine, log, SERVERS, (1.0,))
    start = time.perf_counter()
    engine.feed(log.arrival, replica.admit)
    engine.run()
    elapsed = time.perf_counter() - start
    waits = np.asarray(log.start) - arrivals
    return elapsed, float(waits.mean())


def simpy_model(arrivals: np.ndarray, service: np.ndarray) -> tuple[float, float]:
    import simpy

    env = simpy.Environment()
    servers = simpy.Resource(env, capacity=SERVERS)
    waits = np.empty(len(arrivals))
    arrival_list = arrivals.tolist()
    service_list = service.tolist()

    def customer(i: int) -> simpy.events.ProcessGenerator:
        arrived = env.now
        with servers.request() as req:
            yield req
            waits[i] = env.now - arrived
            yield env.timeout(service_list[i])

    def source() -> simpy.events.ProcessGenerator:
        for i, t in enumerate(arrival_list):
            yield env.timeout(t - env.now)
            env.process(customer(i))

    start = time.perf_counter()
    env.process(source())
    env.run()
    elapsed = time.perf_counter() - start
    return elapsed, float(waits.mean())


def trace_replay(mode: str, replicas: int = 16) -> tuple[float, int, int]:
    """(wall s, engine steps, requests) of the code trace through ``replicas`` engines."""
    from policies.profiles import load_profile
    from policies.stepmodel import EngineLimits, kv_cache_blocks
    from simulations.config.scenario import DATA_DIR
    from simulations.serving import arrivals, vllm
    from simulations.serving.clock import Engine
    from simulations.serving.replicas import Replica, RequestLog, Router, TokenService
    from simulations.serving.vllm import BatchingReplica, EngineConfig, ServingLog

    trace = arrivals.read_trace(DATA_DIR / "azure_llm_2023_code.csv")
    w = arrivals.replay(trace, np.random.default_rng(1))
    engine = Engine()
    router = Router()
    start = time.perf_counter()
    if mode == "per-request":
        service = TokenService(10000.0, 100.0, 0.02).sample(
            np.random.default_rng(2), w.prompt, w.generated
        )
        log = RequestLog(w.times, service)
        for k in range(replicas):
            router.add(Replica(k, engine, log, 2, (1.0,)))
        engine.feed(log.arrival, router.route)
        engine.run()
        return time.perf_counter() - start, 0, len(w)
    profile = load_profile("llama-3.1-8b-a100-80gb-tp1")
    blocks = kv_cache_blocks(80 * 2**30, profile.weights_bytes, profile.kv_bytes_per_token)
    config = EngineConfig(profile, EngineLimits(blocks))
    slog = ServingLog(w.times, w.prompt, w.generated)
    engines = [BatchingReplica(k, engine, slog, config) for k in range(replicas)]
    for r in engines:
        router.add(r)
    saved = vllm.MAX_RUN
    if mode == "single-step":
        vllm.MAX_RUN = 1
    try:
        engine.feed(slog.arrival, router.route)
        engine.run()
    finally:
        vllm.MAX_RUN = saved
    return time.perf_counter() - start, sum(r.steps for r in engines), len(w)


SCENARIO_CHILD = """
import sys, time, resource, dataclasses
from simulations.config.scenario import load_scenario, FixedContender, ServiceTimeSpec, Slo
from simulations.experiments.compare import compare
sc = load_scenario()
if sys.argv[1] == "fixed":
    sc = dataclasses.replace(sc, contenders=(FixedContender("fixed-8", 8),))
if sys.argv[1] == "per-request":
    old = dataclasses.replace(
        sc.service, engine="per-request", vllm=None, max_batch=2, slo=Slo(e2e=2.0),
        service_time=ServiceTimeSpec("tokens", prefill_rate=10000, decode_rate=100, overhead=0.02),
    )
    sc = dataclasses.replace(sc, service=old)
start = time.perf_counter()
result = compare(sc, [sc.seed], workers=int(sys.argv[2]))
wall = time.perf_counter() - start
# VmHWM is this process's own peak (ru_maxrss survives exec and would show the parent's);
# pool workers report through RUSAGE_CHILDREN.
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
peak = max(hwm, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(len(sc.contenders), result.requests, wall, peak / 1024)
"""


def run_scenario(kind: str, workers: int) -> tuple[int, int, float, float]:
    """(contenders, requests, wall s, peak RSS MiB of one process) of the default scenario."""
    out = subprocess.run(
        [sys.executable, "-c", SCENARIO_CHILD, kind, str(workers)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return int(out[0]), int(out[1]), float(out[2]), float(out[3])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="1,000,000 customers")
    parser.add_argument("--customers", type=int, default=None)
    parser.add_argument("--skip-scenario", action="store_true")
    parser.add_argument("--skip-mmc", action="store_true", help="skip the M/M/4 vs SimPy part")
    args = parser.parse_args(argv)
    n = args.customers or (1_000_000 if args.full else 200_000)
    print(f"cpu_count={os.cpu_count()}  python={sys.version.split()[0]}")

    print("\nAzure code trace (57 min), 16 replicas, same requests (best of 3)")
    results = {}
    for mode in ("decode runs, one event", "single-step", "per-request"):
        results[mode] = min(trace_replay(mode) for _ in range(REPEATS))
    for mode, (wall, steps, reqs) in results.items():
        what = "vLLM engine, " + mode if mode != "per-request" else "old per-request model"
        per_step = f"{steps / wall:10,.0f} steps/s ({steps:,} steps)" if steps else " " * 32
        print(f"  {what:<34}: {wall:6.2f} s  {reqs / wall:9,.0f} requests/s  {per_step}")
    gain = results["single-step"][0] / results["decode runs, one event"][0]
    print(
        f"  decode runs in one event: {gain:.1f}x faster than one step per event, same results"
        " (tests/simulations/test_vllm.py)"
    )
    if args.skip_mmc:
        return _scenarios(args)

    arrivals, service = draw(n, seed=1)
    theory = erlang_c_wait(SERVERS, RHO)
    # Best of three runs each, interleaved: the machine is shared, and the fastest run of each
    # is the least disturbed one.
    runs_ours, runs_simpy = [], []
    for _ in range(REPEATS):
        runs_ours.append(ours(arrivals, service))
        runs_simpy.append(simpy_model(arrivals, service))
    t_ours, w_ours = min(runs_ours)
    t_simpy, w_simpy = min(runs_simpy)
    r_ours, r_simpy = n / t_ours, n / t_simpy
    print(f"\nM/M/{SERVERS} at rho={RHO}, {n:,} customers (same arrival and service draws)")
    for name, rate, secs, wait in (
        ("gpuscale engine ", r_ours, t_ours, w_ours),
        ("SimPy (baseline)", r_simpy, t_simpy, w_simpy),
    ):
        print(f"  {name}: {rate:12,.0f} customers/s  ({secs:6.2f} s)  mean wait {wait:.4f}")
    print(f"  speed-up        : {r_ours / r_simpy:.1f}x (target >= 10x)")
    print(
        f"  mean waits agree: {abs(w_ours / w_simpy - 1) * 100:.3f} % apart (target < 2 %); "
        f"Erlang C {theory:.4f} ({(w_ours / theory - 1) * 100:+.2f} %)"
    )

    return _scenarios(args)


def _scenarios(args: argparse.Namespace) -> int:
    if not args.skip_scenario:
        workers = os.cpu_count() or 1
        base = run_scenario("fixed", 1)
        old = run_scenario("per-request", 1)
        seq = run_scenario("default", 1)
        par = run_scenario("default", workers)
        print(f"\ndefault scenario ({seq[1]:,} requests), peak RSS of the child process")
        print(f"  baseline, 1 fixed contender, 1 process : {base[2]:6.1f} s  {base[3]:7.0f} MiB")
        label = f"old per-request model, {old[0]} contenders, 1 process"
        print(f"  {label}: {old[2]:6.1f} s  {old[3]:7.0f} MiB")
        print(f"  {seq[0]} contenders, 1 process              : {seq[2]:6.1f} s  {seq[3]:7.0f} MiB")
        print(
            f"  {par[0]} contenders, {workers} processes             : {par[2]:6.1f} s"
            f"  {par[3]:7.0f} MiB (per process)"
        )
        print("  targets: under 60 s and 2 GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
