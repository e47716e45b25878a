"""The shared connection-limit flags reach every server's settings, also from the environment."""

from __future__ import annotations

from typing import Any

import pytest

from gpuscale.cli import main
from runtime.limits import ConnectionLimits


def test_flags_and_environment_reach_the_extender_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import extender.app

    seen: list[Any] = []

    def run(settings: Any) -> int:
        seen.append(settings)
        return 0

    monkeypatch.setattr(extender.app, "run_extender", run)
    monkeypatch.setenv("GPUSCALE_EXTENDER_MAX_CONNECTIONS", "100")
    args = [
        "extender",
        "--address=127.0.0.1:0",
        "--plain-http-sidecar",
        "--request-head-timeout=3s",
        "--max-unproven-connections=10",
    ]
    assert main(args) == 0
    assert seen[0].limits == ConnectionLimits(
        max_connections=100, max_unproven=10, head_timeout=3.0
    )
    assert seen[0].plain_http_sidecar


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-connections=many"], "--max-connections: expected a whole number, got 'many'"),
        (["--request-body-timeout=soon"], "--request-body-timeout: expected a duration"),
        (["--idle-timeout=0s"], "--idle-timeout: must be positive"),
        (
            ["--max-connections=4", "--max-unproven-connections=8"],
            "max_unproven (8) must not exceed max_connections (4)",
        ),
    ],
)
@pytest.mark.parametrize("command", ["controller", "extender", "node-agent"])
def test_a_bad_limit_is_named_and_exits_1(
    command: str, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    required = {
        "controller": ["--prometheus-url=http://127.0.0.1:9"],
        "extender": [],
        "node-agent": ["--node-name=n1"],
    }[command]
    assert main([command, *required, *args]) == 1
    err = capsys.readouterr().err
    assert f"gpuscale {command}: " in err and message in err
