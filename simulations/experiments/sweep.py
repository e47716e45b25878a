"""Run a sweep: every point × seed, the static search and the hindsight curves, on local
processes or on a Ray cluster, each result appended to ``results.jsonl`` as it finishes.

A result's key is a hash of everything it depends on: the scenario (without its contenders),
the contender, the seed, what is measured, and the source of the simulator and the decision
code. A re-run reads the file and skips every key it holds, so an interrupted sweep goes on
where it stopped and a changed spec only runs what is new; results whose inputs changed are
simply not used.

The static bound is a bisection over the replica count (attainment rises with it): each probe
runs all seeds, and the next probe is submitted as soon as the last one's seeds are in, while
the rest of the sweep keeps the workers busy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import extender
import policies
import simulations
from simulations.config.scenario import Scenario
from simulations.config.sweep_spec import SweepSpec, all_points
from simulations.experiments.bounds import fitting_replicas, interval_curves, static_scenario
from simulations.experiments.compare import run_one

RESULTS_FILE = "results.jsonl"
FORMAT = "gpuscale.io/sweep-results/v1"
TaskKind = Literal["point", "static", "hindsight"]


@dataclass(frozen=True, slots=True)
class Task:
    key: str
    kind: TaskKind
    scenario: Scenario
    """With exactly one contender for ``point`` and ``static``."""
    seed: int
    meta: dict[str, Any] = field(default_factory=dict)
    """JSON fields written with the result (family and knobs, replicas, interval and cap)."""


def execute(task: Task) -> dict[str, Any]:
    """Run one task (in whichever process or Ray worker) and return its JSON record."""
    record: dict[str, Any] = {"key": task.key, "kind": task.kind, "seed": task.seed, **task.meta}
    if task.kind == "hindsight":
        c = interval_curves(task.scenario, task.seed, task.meta["interval"], task.meta["cap"])
        record["lengths"] = list(c.lengths)
        record["counted"] = list(c.counted)
        record["misses"] = [list(m) for m in c.misses]
        return record
    result = run_one(task.scenario, 0, task.seed)
    summary = {k: v for k, v in result.summary.items() if k not in ("bursts", "unschedulable")}
    record["summary"] = _json_safe(summary)
    return record


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


# --------------------------------------------------------------------------- keys


_REPORTING = frozenset(
    {"sweep.py", "sweep_spec.py", "sweep_report.py", "pareto.py", "hindsight.py", "report.py"}
)
"""Modules that only read results: editing them reruns nothing (``FORMAT`` covers records)."""


def code_fingerprint() -> str:
    """A hash of the source of the packages a result depends on."""
    h = hashlib.sha256()
    for pkg in (simulations, policies, extender):
        assert pkg.__file__ is not None
        root = Path(pkg.__file__).resolve().parent
        for path in sorted(root.rglob("*.py")):
            if pkg is simulations and path.name in _REPORTING:
                continue
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def task_key(code: str, kind: str, scenario: Scenario, seed: int, extra: Any = None) -> str:
    """The identity of a result (labels do not count: renaming a family reruns nothing)."""
    contenders = tuple(replace(c, label="") for c in scenario.contenders)
    base = replace(scenario, contenders=contenders, file="", name="")
    text = repr((FORMAT, code, kind, base, seed, extra))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# --------------------------------------------------------------------------- results file


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """Records by key; a torn last line (an interrupted write) is ignored."""
    out: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("key"), str):
            out[record["key"]] = record
    return out


class ResultsFile:
    """Appends one JSON line per result and flushes it, so a crash loses nothing finished."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size:
            with path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
        else:
            torn = False
        self._f = path.open("a", encoding="utf-8")
        if torn:
            self._f.write("\n")

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, sort_keys=True, allow_nan=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


# --------------------------------------------------------------------------- backends


class Backend(Protocol):
    """Where tasks run: ``submit`` returns a handle, ``wait`` returns finished records."""

    def submit(self, task: Task) -> Any: ...

    def wait(self, handles: list[Any]) -> list[tuple[Any, dict[str, Any]]]: ...

    def close(self) -> None: ...


class _Deferred:
    __slots__ = ("task",)

    def __init__(self, task: Task) -> None:
        self.task = task


class SerialBackend:
    """Runs each task in this process when it is waited for."""

    def submit(self, task: Task) -> Any:
        return _Deferred(task)

    def wait(self, handles: list[Any]) -> list[tuple[Any, dict[str, Any]]]:
        return [(handles[0], execute(handles[0].task))]

    def close(self) -> None:
        pass


class ProcessBackend:
    """A pool of ``workers`` local processes."""

    def __init__(self, workers: int) -> None:
        from concurrent.futures import ProcessPoolExecutor

        self._pool = ProcessPoolExecutor(max_workers=workers)

    def submit(self, task: Task) -> Any:
        return self._pool.submit(execute, task)

    def wait(self, handles: list[Any]) -> list[tuple[Any, dict[str, Any]]]:
        from concurrent.futures import FIRST_COMPLETED
        from concurrent.futures import wait as wait_futures

        done, _ = wait_futures(handles, return_when=FIRST_COMPLETED)
        return [(f, f.result()) for f in done]

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


class RayUnavailable(RuntimeError):
    """``--ray`` was asked for but Ray is not installed or the cluster cannot be reached."""


class RayBackend:
    """Tasks as Ray remote functions on an existing cluster (``address``, or ``auto``).

    The cluster's workers import gpuscale (install ``gpuscale[ray]`` in their image) and read
    the scenario's files at the same paths as this machine (a shared filesystem or the image).
    """

    def __init__(self, address: str) -> None:
        try:
            import ray
        except ImportError:
            raise RayUnavailable(
                "--ray needs Ray: pip install 'gpuscale[ray]' (here and on the cluster)"
            ) from None
        self._ray = ray
        _check_reachable(address)
        try:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RayUnavailable(f"--ray {address}: cannot connect: {exc}") from None
        self._remote = ray.remote(execute)

    def submit(self, task: Task) -> Any:
        return self._remote.remote(task)

    def wait(self, handles: list[Any]) -> list[tuple[Any, dict[str, Any]]]:
        done, _ = self._ray.wait(handles, num_returns=1)
        return [(h, self._ray.get(h)) for h in done]

    def close(self) -> None:
        self._ray.shutdown()


def _check_reachable(address: str) -> None:
    """Fail fast on a ``host:port`` where nothing listens (Ray itself retries for minutes)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # "auto", "local" or a ray:// client address: Ray resolves those itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise RayUnavailable(f"--ray {address}: cannot connect: {exc}") from None


def make_backend(workers: int, ray_address: str | None) -> Backend:
    if ray_address is not None:
        return RayBackend(ray_address)
    if workers <= 1:
        return SerialBackend()
    return ProcessBackend(workers)


# --------------------------------------------------------------------------- the sweep


@dataclass(slots=True)
class StaticSearch:
    """Bisection for the fewest replicas whose mean attainment reaches the target.

    Invariant: ``lo`` replicas are known to miss the target (0 trivially), ``hi`` to reach it
    or to be the most that fit (then unknown until probed).
    """

    lo: int
    hi: int
    hi_known: bool = False
    probed: dict[int, float] = field(default_factory=dict)

    def next_probe(self) -> int | None:
        if not self.hi_known:
            return self.hi
        if self.hi - self.lo <= 1:
            return None
        return (self.lo + self.hi) // 2

    def record(self, replicas: int, attainment: float, target: float) -> None:
        self.probed[replicas] = attainment
        ok = attainment >= target
        if replicas == self.hi and not self.hi_known:
            self.hi_known = True
            if not ok:
                self.lo = self.hi  # even the most that fit miss the target
            return
        if ok:
            self.hi = replicas
        else:
            self.lo = replicas

    @property
    def answer(self) -> int | None:
        """The fewest replicas that reach the target; ``None`` if none within reach."""
        return self.hi if self.hi_known and self.lo < self.hi else None


@dataclass(slots=True)
class SweepRun:
    """What a sweep produced: records by kind, with the static search's outcome."""

    spec: SweepSpec
    points: list[dict[str, Any]]
    static: list[dict[str, Any]]
    hindsight: list[dict[str, Any]]
    static_replicas: int | None
    cap: int
    ran: int
    reused: int


Progress = Callable[[int, int], None]
"""``(done, total)`` after every result."""


def run_sweep(
    spec: SweepSpec, out: Path, backend: Backend, progress: Progress | None = None
) -> SweepRun:
    """Run what ``out/results.jsonl`` does not hold yet and collect every record the spec uses."""
    code = code_fingerprint()
    path = out / RESULTS_FILE
    known = read_results(path)
    cap = min(fitting_replicas(spec.scenario, s) for s in spec.seeds)

    tasks: list[Task] = []
    for pt in all_points(spec):
        sc = replace(spec.scenario, contenders=(pt.contender,))
        for seed in spec.seeds:
            meta: dict[str, Any] = {
                "family": pt.family,
                "knobs": dict(pt.knobs),
                "label": pt.label,
            }
            tasks.append(Task(task_key(code, "point", sc, seed), "point", sc, seed, meta))
    if spec.hindsight is not None:
        for seed in spec.seeds:
            extra = (spec.hindsight.interval, cap)
            h_meta: dict[str, Any] = {"interval": spec.hindsight.interval, "cap": cap}
            key = task_key(code, "hindsight", spec.scenario, seed, extra)
            tasks.append(Task(key, "hindsight", spec.scenario, seed, h_meta))

    search = StaticSearch(0, cap) if spec.static and cap > 0 else None

    def static_tasks(replicas: int) -> list[Task]:
        sc = static_scenario(spec.scenario, replicas)
        return [
            Task(task_key(code, "static", sc, s), "static", sc, s, {"replicas": replicas})
            for s in spec.seeds
        ]

    used: dict[str, dict[str, Any]] = {}
    pending: dict[Any, Task] = {}
    results = ResultsFile(path)
    ran = reused = 0
    # a guess at the static probes still to come, for the progress total
    rounds = (cap.bit_length() + 1) if search else 0
    total = len(tasks) + rounds * len(spec.seeds)
    waiting_static: list[Task] = []

    def advance_static() -> list[Task]:
        """Feed finished probes to the search until it needs a probe not run yet."""
        nonlocal waiting_static
        assert search is not None
        while True:
            if waiting_static:
                if any(t.key not in used for t in waiting_static):
                    return []
                n = waiting_static[0].meta["replicas"]
                att = [used[t.key]["summary"]["slo_attainment"] for t in waiting_static]
                vals = [a if a is not None else 0.0 for a in att]
                search.record(n, sum(vals) / len(vals), spec.target)
                waiting_static = []
            probe = search.next_probe()
            if probe is None:
                return []
            waiting_static = static_tasks(probe)
            for t in waiting_static:
                if t.key in known and t.key not in used:
                    used[t.key] = known[t.key]
            todo = [t for t in waiting_static if t.key not in used]
            if todo:
                return todo

    def report() -> None:
        if progress is not None:
            progress(len(used), max(total, len(used) + len(pending)))

    try:
        to_submit: list[Task] = []
        for t in tasks:
            if t.key in known:
                used[t.key] = known[t.key]
                reused += 1
            else:
                to_submit.append(t)
        if search is not None:
            before = len(used)
            to_submit += advance_static()
            reused += len(used) - before
        for t in to_submit:
            pending[backend.submit(t)] = t
        report()
        while pending:
            for handle, record in backend.wait(list(pending)):
                pending.pop(handle)
                results.write(record)
                used[record["key"]] = record
                ran += 1
                if search is not None and record["kind"] == "static":
                    for t in advance_static():
                        pending[backend.submit(t)] = t
            report()
    finally:
        results.close()
        backend.close()

    def of(kind: str, keys: Iterable[str]) -> list[dict[str, Any]]:
        return [used[k] for k in keys if k in used and used[k]["kind"] == kind]

    all_keys = list(used)
    return SweepRun(
        spec,
        points=of("point", [t.key for t in tasks]),
        static=of("static", all_keys),
        hindsight=of("hindsight", [t.key for t in tasks]),
        static_replicas=search.answer if search is not None else None,
        cap=cap,
        ran=ran,
        reused=reused,
    )
