"""Debian's real Prometheus, started on a free loopback port for one test.

The process is managed synchronously (so a fixture of any scope can own it) and has async
wrappers (`astart`, `astop`, `arestart`) for tests that stop it while their code under test keeps
running on the event loop. Queries go through the HTTP API as gpuscale's own client does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import yaml

PROMETHEUS_BINARY = "/usr/bin/prometheus"


class PrometheusError(RuntimeError):
    """Prometheus did not start, or answered a query with an error."""


def find_prometheus() -> str | None:
    if Path(PROMETHEUS_BINARY).is_file():
        return PROMETHEUS_BINARY
    return shutil.which("prometheus")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusServer:
    """One Prometheus process with its own config and data directory under `workdir`."""

    def __init__(
        self,
        workdir: Path,
        targets: Sequence[str] = (),
        *,
        scrape_interval: str = "1s",
        job_name: str = "inference",
        extra_scrape_configs: Sequence[dict[str, Any]] = (),
        binary: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        found = binary or find_prometheus()
        if found is None:
            raise PrometheusError("prometheus binary not found (make test installs Debian's)")
        self.binary = found
        self.workdir = workdir
        self.targets = list(targets)
        self.scrape_interval = scrape_interval
        self.job_name = job_name
        self.extra_scrape_configs = list(extra_scrape_configs)
        self.labels = dict(labels or {})
        """Target labels on every series of ``targets`` (e.g. the namespace, as service
        discovery would attach it)."""
        self.port = free_port()
        self.config_path = workdir / "prometheus.yml"
        self.data_dir = workdir / "data"
        self.log_path = workdir / "prometheus.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _write_config(self) -> None:
        scrape_configs: list[dict[str, Any]] = [
            {
                "job_name": self.job_name,
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "static_configs": (
                    [{"targets": self.targets, **({"labels": self.labels} if self.labels else {})}]
                    if self.targets
                    else []
                ),
            },
            *self.extra_scrape_configs,
        ]
        config = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.scrape_interval,
            },
            "scrape_configs": scrape_configs,
        }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    # -- process control (blocking) -------------------------------------------------------------
    def start(self, within: float = 30.0) -> None:
        """Start (or start again, same port and data) and wait until `/-/ready`."""
        if self.running:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        args = [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
            "--log.level=warn",
        ]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited with {self._proc.returncode}: {self.log_tail()}"
                )
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r,
            ):
                if r.status == 200:
                    return
            time.sleep(0.05)
        self.stop()
        raise PrometheusError(f"prometheus not ready within {within} s: {self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; the data directory stays for a restart."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def set_targets(self, targets: Sequence[str]) -> None:
        """Rewrite the scrape targets and reload the running server."""
        self.targets = list(targets)
        self._write_config()
        if self.running:
            req = urllib.request.Request(f"{self.url}/-/reload", method="POST")
            with urllib.request.urlopen(req, timeout=10) as r:
                if r.status != 200:
                    raise PrometheusError(f"reload answered {r.status}")

    # -- async wrappers ---------------------------------------------------------------------------
    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    async def arestart(self) -> None:
        await asyncio.to_thread(self.restart)

    # -- queries ----------------------------------------------------------------------------------
    async def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; returns `data.result` (a vector's samples)."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.url}/api/v1/query", params={"query": expr}) as resp,
        ):
            body = await resp.json()
        if body.get("status") != "success":
            raise PrometheusError(f"query {expr!r} failed: {body.get('error')}")
        result = body["data"]["result"]
        if body["data"]["resultType"] == "scalar":
            return [{"metric": {}, "value": result}]
        return list(result)

    async def query_value(self, expr: str) -> float | None:
        """The single sample's value; None for no series. Several series is an error."""
        result = await self.query(expr)
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"query {expr!r} returned {len(result)} series, expected one")
        return float(result[0]["value"][1])

    async def wait_for_value(
        self,
        expr: str,
        predicate: Callable[[float], bool] = lambda v: not math.isnan(v),
        within: float = 30.0,
        poll: float = 0.2,
    ) -> float:
        """Poll until the query has one sample satisfying `predicate`; returns its value."""
        last: float | None = None
        try:
            async with asyncio.timeout(within):
                while True:
                    with contextlib.suppress(aiohttp.ClientError):
                        last = await self.query_value(expr)
                        if last is not None and predicate(last):
                            return last
                    await asyncio.sleep(poll)
        except TimeoutError as e:
            message = f"{expr!r} did not reach the condition in {within} s; last {last}"
            raise TimeoutError(message) from e

    async def targets_up(self) -> dict[str, str]:
        """`instance -> health` of the active targets."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.url}/api/v1/targets") as resp,
        ):
            body = json.loads(await resp.text())
        return {t["labels"]["instance"]: t["health"] for t in body["data"]["activeTargets"]}
