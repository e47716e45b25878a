"""Time what the image costs the people who run it: CLI and server start, before and after.

``python -m tests.image.measure [BASELINE_TAG]`` runs each command in each image under runc
(read-only root, uid 65532: :mod:`tests.image.runner`), rounds interleaved so that both images see
the same load, and prints medians with the load average. ``BASELINE_TAG`` is an image built from
an older Dockerfile (the figures in the README came from ``localhost/gpuscale:before``).

Start-to-serving is the time from ``runc run`` until the component's probe port answers HTTP.
Without a Kubernetes API server the components do not become Ready, so this is the start cost the
image controls (interpreter, imports, server up); readiness then waits on the API. The node agent
is left out: it exits at start without NVML, which only a GPU node's driver provides.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.cluster.images import GPUSCALE_TAG
from tests.image import runner

COMMANDS: dict[str, tuple[list[str] | None, list[str]]] = {
    # label: (entrypoint override, args)
    "python3 -c pass (floor)": (["python3"], ["-c", "pass"]),
    "gpuscale --help": (None, ["--help"]),
    "gpuscale controller --help": (None, ["controller", "--help"]),
    "gpuscale extender --help": (None, ["extender", "--help"]),
    "gpuscale node-agent --help": (None, ["node-agent", "--help"]),
    "import autoscaler.app": (["python3"], ["-c", "import autoscaler.app"]),
    "import extender.server": (["python3"], ["-c", "import extender.server"]),
    "import extender.node_agent": (["python3"], ["-c", "import extender.node_agent"]),
}

_KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}}]
users: [{name: none, user: {token: none}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def servers(kubeconfig: str) -> dict[str, tuple[list[str], int]]:
    """label: (args, probe port) for the servers, pointed at an API server that is absent."""
    ext, ext_ops, ctl, ctl_api = (_free_port() for _ in range(4))
    return {
        "extender": (
            [
                "extender",
                "--plain-http-sidecar",
                f"--address=127.0.0.1:{ext}",
                f"--ops-address=127.0.0.1:{ext_ops}",
                f"--kubeconfig={kubeconfig}",
            ],
            ext_ops,
        ),
        "controller": (
            [
                "controller",
                f"--kubeconfig={kubeconfig}",
                "--prometheus-url=http://127.0.0.1:1",
                f"--ops-address=127.0.0.1:{ctl}",
                f"--secure-address=127.0.0.1:{ctl_api}",
                "--insecure-allow-any-client",
            ],
            ctl,
        ),
    }


def time_run(tag: str, entrypoint: list[str] | None, args: list[str]) -> float:
    with runner.container(tag, args, entrypoint=entrypoint) as command:
        started = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
        elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{tag} {args}: exit {done.returncode}: {done.stderr[-800:]}")
    return elapsed


def _answers(port: int) -> str | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/readyz")
        return str(conn.getresponse().status)
    except OSError:
        return None
    finally:
        conn.close()


def time_serving(tag: str, args: list[str], port: int, kubeconfig: Path) -> tuple[float, str]:
    """Seconds from ``runc run`` until GET /readyz on the probe port answers, and its status."""
    mounts = [(kubeconfig, str(kubeconfig))]
    with runner.container(tag, args, mounts=mounts) as command:
        started = time.monotonic()
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            while time.monotonic() - started < 60:
                status = _answers(port)
                if status is not None:
                    return time.monotonic() - started, status
                if proc.poll() is not None:
                    err = proc.stderr.read().decode()[-800:] if proc.stderr else ""
                    raise SystemExit(f"{tag} {args[0]} exited {proc.returncode}: {err}")
                time.sleep(0.02)
            raise SystemExit(f"{tag} {args[0]}: port {port} never answered")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv: Sequence[str]) -> int:
    tags = [*argv, GPUSCALE_TAG] if argv else [GPUSCALE_TAG]
    missing = [t for t in tags if not runner.image_exists(t)]
    if missing:
        print(f"not built: {', '.join(missing)} (make image)", file=sys.stderr)
        return 1
    rounds = int(os.environ.get("ROUNDS", "5"))
    print(f"load average before: {os.getloadavg()}; {rounds} rounds, medians in seconds")
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for label, (entrypoint, args) in COMMANDS.items():
            for tag in tags:
                times.setdefault((label, tag), []).append(time_run(tag, entrypoint, args))
    with tempfile.TemporaryDirectory() as tmp:
        kubeconfig = Path(tmp) / "kubeconfig"
        kubeconfig.write_text(_KUBECONFIG)
        kubeconfig.chmod(0o644)
        Path(tmp).chmod(0o755)
        statuses: dict[tuple[str, str], str] = {}
        for _ in range(rounds):
            for label, (args, port) in servers(str(kubeconfig)).items():
                for tag in tags:
                    seconds, status = time_serving(tag, args, port, kubeconfig)
                    times.setdefault((f"{label}: start to /readyz answering", tag), []).append(
                        seconds
                    )
                    statuses[(label, tag)] = status
    width = max(len(label) for label, _ in times)
    print(f"{'':{width}}  " + "  ".join(f"{t:>28}" for t in tags))
    for label in dict.fromkeys(label for label, _ in times):
        cells = [f"{statistics.median(times[(label, t)]):28.2f}" for t in tags]
        print(f"{label:{width}}  " + "  ".join(cells))
    print("readyz status without an API server:", statuses)
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
