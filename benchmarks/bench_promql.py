"""How long does namespace scoping take? Parse and scope the example policies' queries.

The controller scopes each policy's queries once per policy version, not per tick, so this
only has to stay far below a tick. Beside it, in the same run: our parse alone, and the
Rust-backed ``promql-parser`` package's ``parse`` on the same queries where it is installed
(``pip install promql-parser``; it is not a project dependency).

    python benchmarks/bench_promql.py [--rounds 2000]
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from policies.parse import load_policy_file
from policies.promql import parse
from policies.schema import metric_inputs
from policies.tenancy import scope_query

EXAMPLES = Path(__file__).parents[1] / "policies" / "examples"


def example_queries() -> list[tuple[str, str]]:
    """``(namespace, query)`` of every query of every example policy."""
    return [
        (p.namespace, query)
        for path in sorted(EXAMPLES.glob("*.yaml"))
        for p in load_policy_file(path)
        for m in p.metrics
        for _, query in metric_inputs(m)
    ]


def timed(fn: Callable[[], object], rounds: int) -> float:
    """Best of three runs of ``rounds`` calls, in seconds per call."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(rounds):
            fn()
        best = min(best, (time.perf_counter() - t0) / rounds)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=2000, help="passes over all the queries")
    args = ap.parse_args(argv)
    queries = example_queries()
    texts = [q for _, q in queries]
    rounds = max(1, args.rounds // len(queries))

    def scope_all() -> None:
        for namespace, query in queries:
            scope_query(query, label="namespace", namespace=namespace)

    def parse_all() -> None:
        for query in texts:
            parse(query)

    results = {
        "parse + scope (ours)": timed(scope_all, rounds),
        "parse (ours)": timed(parse_all, rounds),
    }
    try:
        rust_parse = importlib.import_module("promql_parser").parse
    except ImportError:
        rust = "absent (pip install promql-parser to compare)"
    else:

        def rust_all() -> None:
            for query in texts:
                rust_parse(query)

        results["parse (promql-parser, Rust)"] = timed(rust_all, rounds)
        rust = "installed"
    n = len(queries)
    mean_len = sum(map(len, texts)) / n
    print(f"bench_promql: {n} example queries (mean {mean_len:.0f} chars) x {rounds} rounds")
    print(f"  python {sys.version.split()[0]}, one thread, best of 3, cpus={os.cpu_count()}")
    print(f"  promql-parser: {rust}")
    for name, per_pass in results.items():
        print(f"  {name:<30} {per_pass / n * 1e6:8.1f} µs per query")
    return 0


if __name__ == "__main__":
    sys.exit(main())
