"""The ``gpuscale`` command: wiring only.

Each subcommand lives in its own module under :mod:`gpuscale` and is imported only when it runs,
so ``gpuscale controller`` never loads the simulator's plotting stack.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

import click

# name -> (module, attribute, one-line help shown by `gpuscale --help`)
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "controller": ("gpuscale.cmd_controller", "controller", "Run the autoscaler controller."),
    "extender": ("gpuscale.cmd_extender", "extender", "Run the kube-scheduler extender."),
    "node-agent": ("gpuscale.cmd_extender", "node_agent", "Publish this node's GPU memory."),
    "policy": ("gpuscale.cmd_policy", "policy", "Check and explain ScalingPolicies."),
    "simulate": ("gpuscale.cmd_simulate", "simulate", "Replay traffic against policies offline."),
    "status": ("gpuscale.cmd_status", "status", "List ScalingPolicies and their state."),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _COMMANDS:
            return None
        module, attr, _ = _COMMANDS[cmd_name]
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, _, help_) in sorted(_COMMANDS.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup, context_settings={"auto_envvar_prefix": "GPUSCALE"})
@click.version_option(package_name="gpuscale")
def cli() -> None:
    """gpuscale: scale GPU inference services by what users feel, and place them by GPU memory.

    Every flag can also be set through an environment variable: GPUSCALE_<COMMAND>_<FLAG>,
    for example GPUSCALE_CONTROLLER_PROMETHEUS_URL.
    """


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code instead of exiting, so tests can call it."""
    try:
        cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="gpuscale",
            standalone_mode=False,
            auto_envvar_prefix="GPUSCALE",
        )
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return 1
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 1
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
