"""A vLLM-sized stand-in that runs as real pods on the e2e's node: only what gpuscale reads.

The e2e mounts this file from a ConfigMap into the gpuscale image (``python3`` there, standard
library only, read-only root) so that a Deployment of it can be scraped by Prometheus through
Kubernetes service discovery and scaled by the real HPA. The queue depth is the test's to set:
``WAITING`` in the environment at start (default 0), then ``PUT /waiting`` with a count as the
body, so that one pod can report a queue while the pods the HPA adds report none (the sum, and so
the replica count, then settles instead of growing with every pod).

    GET /metrics   vllm:num_requests_waiting and vllm:num_requests_running, label model_name
                   (``MODEL_NAME``, default ``llama``), Prometheus' classic text format
    GET /health    200 (vLLM's own health path; the readinessProbe)
    PUT /waiting   body: a count 0..1000000 -> 204; anything else -> 400 saying why

``PORT`` (default 8000) is where it listens, on every address. SIGTERM ends it at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_WAITING = 1_000_000
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


def parse_waiting(raw: bytes) -> int:
    """The queue depth a ``PUT /waiting`` body names; ValueError with the reason otherwise."""
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ValueError("waiting: expected a decimal count, got non-ASCII bytes") from None
    if not text.isdigit():
        raise ValueError(f"waiting: expected a decimal count, got {text[:40]!r}")
    value = int(text)
    if value > MAX_WAITING:
        raise ValueError(f"waiting: {value} is over {MAX_WAITING}")
    return value


def render_metrics(model_name: str, waiting: int) -> str:
    """The two gauges vLLM exports that the e2e's policy reads, for one model."""
    label = model_name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return (
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        f'vllm:num_requests_waiting{{model_name="{label}"}} {waiting}\n'
        "# HELP vllm:num_requests_running Number of requests currently running on GPU.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        f'vllm:num_requests_running{{model_name="{label}"}} 0\n'
    )


class _State:
    def __init__(self, model_name: str, waiting: int) -> None:
        self.model_name = model_name
        self.waiting = waiting
        self.lock = threading.Lock()


def _handler(state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: str = "", content_type: str = "text/plain") -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/metrics":
                with state.lock:
                    body = render_metrics(state.model_name, state.waiting)
                self._reply(200, body, TEXT_FORMAT)
            elif self.path == "/health":
                self._reply(200)
            else:
                self._reply(404, "not found\n")

        def do_PUT(self) -> None:
            if self.path != "/waiting":
                self._reply(404, "not found\n")
                return
            length = int(self.headers.get("Content-Length") or 0)
            try:
                value = parse_waiting(self.rfile.read(min(length, 64)))
            except ValueError as exc:
                self._reply(400, f"{exc}\n")
                return
            with state.lock:
                state.waiting = value
            self._reply(204)

        def log_message(self, format: str, *args: object) -> None:
            return  # a scrape a second would drown the pod's log

    return Handler


def main() -> int:
    try:
        port = int(os.environ.get("PORT", "8000"))
        waiting = parse_waiting(os.environ.get("WAITING", "0").encode())
    except ValueError as exc:
        print(f"vllm-standin: {exc}", file=sys.stderr)
        return 2
    state = _State(os.environ.get("MODEL_NAME", "llama"), waiting)
    server = ThreadingHTTPServer(("0.0.0.0", port), _handler(state))
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    print(f"vllm-standin: {state.model_name} on :{port}, waiting {waiting}", file=sys.stderr)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
