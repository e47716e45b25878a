"""Simulator speed: our engine against SimPy on M/M/4, and the default scenario end to end.

1. An M/M/4 queue at ρ = 0.8 fed the same pre-drawn arrival and service times, once through
   our engine with the simulator's own serving model (one replica with 4 slots) and once written
   idiomatically in SimPy (a ``Resource`` of capacity 4, one generator process per customer).
   Prints customers/s of both, their ratio (target ≥ 10×), and both mean waits against Erlang C.
2. ``gpuscale simulate``'s default scenario with all its contenders, in a child process: wall
   time and peak RSS (targets: under 60 s and 2 GiB on a 2-core machine); the baseline is the
   same scenario with a single fixed-replica contender (the cost of the modelled world alone).

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
    from simulations.engine import Engine
    from simulations.serving import Replica, RequestLog

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


SCENARIO_CHILD = """
import sys, time, resource, dataclasses
from simulations.scenario import load_scenario, FixedContender
from simulations.compare import compare
sc = load_scenario()
if sys.argv[1] == "fixed":
    sc = dataclasses.replace(sc, contenders=(FixedContender("fixed-8", 8),))
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
    args = parser.parse_args(argv)
    n = args.customers or (1_000_000 if args.full else 200_000)
    print(f"cpu_count={os.cpu_count()}  python={sys.version.split()[0]}")

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

    if not args.skip_scenario:
        workers = os.cpu_count() or 1
        base = run_scenario("fixed", 1)
        seq = run_scenario("default", 1)
        par = run_scenario("default", workers)
        print(f"\ndefault scenario ({seq[1]:,} requests), peak RSS of the child process")
        print(f"  baseline, 1 fixed contender, 1 process : {base[2]:6.1f} s  {base[3]:7.0f} MiB")
        print(f"  {seq[0]} contenders, 1 process              : {seq[2]:6.1f} s  {seq[3]:7.0f} MiB")
        print(
            f"  {par[0]} contenders, {workers} processes             : {par[2]:6.1f} s"
            f"  {par[3]:7.0f} MiB (per process)"
        )
        print("  targets: under 60 s and 2 GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
