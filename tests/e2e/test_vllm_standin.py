"""The e2e's vLLM stand-in (``vllm_standin.py``), here as a local process: what the pods serve."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e import vllm_standin
from tests.e2e.vllm_standin import MAX_WAITING, parse_waiting, render_metrics


@given(st.integers(min_value=0, max_value=MAX_WAITING), st.sampled_from(["", " ", "\n"]))
def test_parse_waiting_reads_any_count_in_range(value: int, pad: str) -> None:
    assert parse_waiting(f"{pad}{value}{pad}".encode()) == value


@given(st.binary(max_size=12))
def test_parse_waiting_refuses_what_is_not_a_count_with_a_reason(raw: bytes) -> None:
    try:
        value = parse_waiting(raw)
    except ValueError as exc:
        assert str(exc).startswith("waiting: ")
    else:
        assert raw.strip().isdigit() and 0 <= value <= MAX_WAITING


@pytest.mark.parametrize(
    "raw", [b"-1", b"1.5", b"", b"12 3", b"\xff", str(MAX_WAITING + 1).encode()]
)
def test_parse_waiting_refuses(raw: bytes) -> None:
    with pytest.raises(ValueError, match=r"^waiting: "):
        parse_waiting(raw)


@given(st.text(max_size=20), st.integers(min_value=0, max_value=MAX_WAITING))
def test_metrics_parse_back_to_the_model_and_count(model: str, waiting: int) -> None:
    families = {f.name: f for f in text_string_to_metric_families(render_metrics(model, waiting))}
    [sample] = families["vllm:num_requests_waiting"].samples
    assert sample.labels == {"model_name": model}
    assert sample.value == waiting
    assert families["vllm:num_requests_waiting"].type == "gauge"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def standin() -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "PORT": str(port), "WAITING": "5", "MODEL_NAME": "opt"}
    proc = subprocess.Popen([sys.executable, str(Path(vllm_standin.__file__))], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        assert proc.wait(10) == 0  # SIGTERM ends it cleanly


def _waiting(url: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
        text = r.read().decode()
    [sample] = [
        s
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "vllm:num_requests_waiting"
    ]
    assert sample.labels == {"model_name": "opt"}
    return sample.value


def _put(url: str, body: bytes) -> int:
    req = urllib.request.Request(f"{url}/waiting", data=body, method="PUT")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_process_serves_the_queue_the_test_sets(standin: str) -> None:
    assert _waiting(standin) == 5  # WAITING at start
    assert _put(standin, b"12") == 204
    assert _waiting(standin) == 12
    assert _put(standin, b"lots") == 400
    assert _waiting(standin) == 12  # a refused value changes nothing


def test_a_bad_environment_is_an_error_not_a_traceback() -> None:
    env = {**os.environ, "WAITING": "many"}
    out = subprocess.run(
        [sys.executable, str(Path(vllm_standin.__file__))],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == "vllm-standin: waiting: expected a decimal count, got 'many'"
