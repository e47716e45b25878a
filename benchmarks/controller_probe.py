"""Watching a ``gpuscale controller`` child process from a benchmark: its CPU time and memory
from /proc, and what its /metrics says about decisions, tick lateness and skipped ticks."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its reaped children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / TICKS


@contextlib.asynccontextmanager
async def child(
    *args: str,
    env: dict[str, str] | None = None,
    capture: bool = True,
    grace: float = 10.0,
) -> AsyncIterator[Any]:
    """A child process with the repository on its path (stdout piped when ``capture``), sent
    SIGTERM on exit and killed after ``grace`` seconds."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE if capture else None,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def scrape(session: aiohttp.ClientSession, ops_port: int) -> list[tuple[str, float]]:
    """The controller's /metrics as ``(name{labels}, value)`` pairs ([] while unreachable)."""
    try:
        async with session.get(f"http://127.0.0.1:{ops_port}/metrics") as resp:
            text = await resp.text()
    except aiohttp.ClientError:
        return []
    pairs = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            pairs.append((name, float(value)))
    return pairs


async def decisions(session: aiohttp.ClientSession, ops_port: int) -> float:
    return sum(
        v for k, v in await scrape(session, ops_port) if k.startswith("gpuscale_decisions_total{")
    )


def lateness(scraped: list[tuple[str, float]]) -> tuple[dict[float, float], float]:
    """Cumulative buckets of ``gpuscale_tick_lateness_seconds`` and the skipped ticks."""
    buckets: dict[float, float] = {}
    skipped = 0.0
    for key, value in scraped:
        if key.startswith("gpuscale_tick_lateness_seconds_bucket{"):
            le = key.split('le="', 1)[1].split('"', 1)[0]
            buckets[float(le)] = value
        elif key == "gpuscale_ticks_skipped_total":
            skipped = value
    return buckets, skipped


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The upper bound of the bucket holding quantile ``q`` of the ticks between two scrapes."""
    counts = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    total = counts[-1][1] if counts else 0.0
    for le, cumulative in counts:
        if total and cumulative >= q * total:
            return le
    return float("nan")


def decision_times(scraped: list[tuple[str, float]]) -> dict[str, float]:
    """``namespace/policy`` -> Unix time of its latest decision."""
    times = {}
    for key, value in scraped:
        if key.startswith("gpuscale_decision_timestamp_seconds{"):
            labels = dict(
                part.split("=", 1) for part in key[key.index("{") + 1 : -1].split(",") if part
            )
            times[f"{labels['namespace'].strip(chr(34))}/{labels['policy'].strip(chr(34))}"] = value
    return times


def rss_mib(pid: int) -> tuple[float, float]:
    """Resident and peak resident memory of a process, MiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def policy_objects(
    namespace: str,
    name: str,
    interval: float,
    metrics: list[dict[str, Any]],
    *,
    max_replicas: int = 10,
) -> list[dict[str, Any]]:
    """A ScalingPolicy ConfigMap for Deployment ``name`` (3 replicas) and the Deployment."""
    import yaml

    document = {
        "apiVersion": "gpuscale.io/v1alpha1",
        "kind": "ScalingPolicy",
        "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
        "replicas": {"min": 1, "max": max_replicas},
        "interval": f"{interval:g}s",
        "metrics": metrics,
    }
    labels = {"app": name}
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"gpuscale.io/scaling-policy": "true"},
            },
            "data": {"policy.yaml": yaml.safe_dump(document)},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "s", "image": "vllm"}]},
                },
            },
        },
    ]
