"""``gpuscale simulate`` without the ``sim`` extra (as in the container image): one clear error."""

from __future__ import annotations

import sys

import pytest

from gpuscale import cmd_simulate
from gpuscale.cli import main


def _without(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make ``names`` unimportable, as if their distributions were not installed."""
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize(
    ("argv", "verb"),
    [
        (["simulate"], "simulate"),
        (["simulate", "--seeds", "2"], "simulate"),
        (["simulate", "calibrate", "--name", "x"], "simulate calibrate"),
        (["simulate", "placement"], "simulate placement"),
        (["simulate", "sweep"], "simulate sweep"),
    ],
)
def test_simulate_names_the_missing_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], verb: str
) -> None:
    _without(monkeypatch, "scipy")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"gpuscale {verb} needs the 'sim' extra (scipy not installed)" in err
    assert "pip install 'gpuscale[sim]'" in err
    assert "container image" in err
    assert "Traceback" not in err


def test_every_missing_module_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _without(monkeypatch, *cmd_simulate.SIM_EXTRA_MODULES)
    assert main(["simulate"]) == 1
    assert "(matplotlib, rich, scipy not installed)" in capsys.readouterr().err


def test_help_and_schema_work_without_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _without(monkeypatch, *cmd_simulate.SIM_EXTRA_MODULES)
    assert main(["simulate", "--help"]) == 0
    assert main(["simulate", "calibrate", "--help"]) == 0
    assert main(["simulate", "schema"]) == 0
    assert "Usage" in capsys.readouterr().out


def test_nothing_is_missing_in_the_dev_install() -> None:
    assert cmd_simulate.missing_sim_extra() == []
