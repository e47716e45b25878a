"""``gpuscale simulate``: replay a scenario against policies and baselines, offline.

``gpuscale simulate placement …`` (the openb placement replay, :mod:`gpuscale.cmd_placement`)
and ``gpuscale simulate calibrate …`` (step-time profiles, :mod:`gpuscale.cmd_calibrate`) are
sub-verbs; every other first argument is the optional SCENARIO file.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import click

SUBVERBS = {
    "placement": ("gpuscale.cmd_placement", "placement"),
    "sweep": ("gpuscale.cmd_sweep", "sweep"),
    "calibrate": ("gpuscale.cmd_calibrate", "calibrate"),
    "schema": ("gpuscale.cmd_policy", "scenario_schema"),
}

SIM_EXTRA_MODULES = ("matplotlib", "rich", "scipy")
"""What the ``sim`` extra installs that every simulate verb but ``schema`` needs."""

SIM_EXTRA_MISSING = (
    "gpuscale {verb} needs the 'sim' extra ({missing} not installed):"
    " pip install 'gpuscale[sim]'. The container image carries only the controller, the"
    " extender and the node agent, not the simulator."
)


def missing_sim_extra() -> list[str]:
    """The ``sim`` extra's modules that cannot be imported here (none after a dev install)."""
    return [name for name in SIM_EXTRA_MODULES if importlib.util.find_spec(name) is None]


def require_sim_extra(verb: str) -> None:
    """Fail with one clear line instead of an ImportError traceback halfway through a run."""
    missing = missing_sim_extra()
    if missing:
        raise click.ClickException(SIM_EXTRA_MISSING.format(verb=verb, missing=", ".join(missing)))


class _SimulateCommand(click.Command):
    """A command with an optional positional SCENARIO that also dispatches sub-verbs.

    A click Group would read the scenario path as a subcommand name, so instead the context of
    ``simulate placement ARGS`` is the placement command's own context, which the parent group
    then invokes.
    """

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        verb = args[0] if args and args[0] in SUBVERBS else None
        if verb != "schema" and "--help" not in args:
            require_sim_extra(f"simulate {verb}" if verb else "simulate")
        if args and args[0] in SUBVERBS:
            module, attr = SUBVERBS[args[0]]
            try:
                command = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError):
                click.echo(f"gpuscale simulate {args[0]}: not available in this build", err=True)
                raise SystemExit(1) from None
            assert isinstance(command, click.Command)
            name = f"{info_name} {args[0]}" if info_name else args[0]
            return command.make_context(name, args[1:], parent=parent, **extra)
        return super().make_context(info_name, args, parent=parent, **extra)


def _baselines(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if names == ("none",):
        return ()
    bad = [n for n in names if n not in ("hpa", "keda", "kpa")]
    if bad:
        click.echo(
            f"--baseline: unknown baseline {', '.join(bad)}"
            " (expected a comma list of hpa, keda, kpa, or none)",
            err=True,
        )
        raise SystemExit(1)
    return names


@click.command(
    cls=_SimulateCommand,
    epilog="Sub-verbs: `gpuscale simulate placement --help` replays openb pods onto GPU nodes;"
    " `gpuscale simulate sweep --help` sweeps each autoscaler's knobs into Pareto frontiers;"
    " `gpuscale simulate calibrate --help` fits a step-time profile.",
)
@click.argument("scenario", required=False, type=click.Path(path_type=Path))
@click.option(
    "--policy",
    "policy_files",
    multiple=True,
    type=click.Path(path_type=Path),
    help="ScalingPolicy file to compare (repeatable); replaces the scenario's policy files.",
)
@click.option(
    "--baseline",
    "baseline_text",
    help="Baselines to run, comma list of hpa,keda,kpa (or none); default: the scenario's.",
)
@click.option("--seeds", default=1, show_default=True, type=click.IntRange(1, 1000))
@click.option("--seed", type=int, help="First seed (default: the scenario's).")
@click.option(
    "--duration", help='Simulate only this long (a duration like "10m"); default: the scenario\'s.'
)
@click.option(
    "--out",
    default="simulation-report",
    show_default=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Directory for report.json, timeline.csv and the plots.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    help="Processes (default: one per seed, up to CPU count).",
)
@click.option("--plots/--no-plots", default=True, show_default=True)
def simulate(
    scenario: Path | None,
    policy_files: tuple[Path, ...],
    baseline_text: str | None,
    seeds: int,
    seed: int | None,
    duration: str | None,
    out: Path,
    workers: int | None,
    plots: bool,
) -> None:
    """Run SCENARIO (default: the built-in Azure code trace scenario) and compare policies.

    Writes report.json, timeline.csv and PNG plots to --out and prints a summary table.
    """
    from policies.durations import DurationError, parse_duration
    from policies.parse import PolicyFileError, load_policy_file
    from simulations.config.scenario import (
        BASELINES,
        Contender,
        GpuscaleContender,
        HpaContender,
        KedaContender,
        KpaContender,
        ScenarioError,
        load_scenario,
    )
    from simulations.placement.openb import OpenbFormatError
    from simulations.serving.arrivals import TraceError

    wanted = _baselines(baseline_text)
    try:
        sc = load_scenario(scenario)
    except ScenarioError as exc:
        for message in exc.messages:
            click.echo(message, err=True)
        raise SystemExit(1) from None

    contenders: list[Contender] = list(sc.contenders)
    if policy_files:
        added: list[Contender] = []
        for path in policy_files:
            try:
                for pol in load_policy_file(path):
                    added.append(GpuscaleContender(pol.name, pol, str(path)))
            except PolicyFileError as exc:
                for message in exc.messages:
                    click.echo(message, err=True)
                raise SystemExit(1) from None
        contenders = added + [c for c in contenders if not isinstance(c, GpuscaleContender)]
    if wanted is not None:
        defaults: dict[str, Contender] = {
            "hpa": HpaContender("hpa"),
            "keda": KedaContender("keda"),
            "kpa": KpaContender("kpa"),
        }

        def baseline_of(c: object) -> str | None:
            for name, cls in (
                ("hpa", HpaContender),
                ("keda", KedaContender),
                ("kpa", KpaContender),
            ):
                if isinstance(c, cls):
                    return name
            return None

        kept: list[Contender] = [c for c in contenders if baseline_of(c) in (None, *wanted)]
        have = {baseline_of(c) for c in kept}
        kept += [defaults[b] for b in BASELINES if b in wanted and b not in have]
        contenders = kept
    labels = [c.label for c in contenders]
    if sc.variants is not None:  # run beside the others (simulations.serving.variants)
        labels += [c.label for c in sc.variants.contenders]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        click.echo(f"{sc.file}: policies: duplicate names {', '.join(dupes)}", err=True)
        raise SystemExit(1)
    if not labels:
        click.echo("nothing to compare: no policies and no baselines", err=True)
        raise SystemExit(1)
    changes: dict[str, Any] = {"contenders": tuple(contenders)}
    if duration is not None:
        try:
            changes["duration"] = parse_duration(duration)
        except DurationError as exc:
            click.echo(f"--duration: {exc}", err=True)
            raise SystemExit(1) from None
        if changes["duration"] <= 0:
            click.echo("--duration: must be greater than 0", err=True)
            raise SystemExit(1)
    sc = dataclasses.replace(sc, **changes)
    first = sc.seed if seed is None else seed
    seed_list = list(range(first, first + seeds))

    from simulations.experiments.compare import compare
    from simulations.experiments.report import plain_table, write_all

    total = len(seed_list) * len(labels)
    try:
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress

            with Progress(console=Console(stderr=True), transient=True) as progress:
                task = progress.add_task("simulating", total=total)
                result = compare(
                    sc, seed_list, workers=workers, on_done=lambda _r: progress.advance(task)
                )
        else:
            result = compare(sc, seed_list, workers=workers)
    except (TraceError, OpenbFormatError, OSError, ValueError) as exc:
        click.echo(f"{sc.file}: {exc}", err=True)
        raise SystemExit(1) from None

    written = write_all(result, out, plots=plots)
    runs = f"{len(seed_list)} seed{'s' if len(seed_list) > 1 else ''}"
    click.echo(
        f"{sc.name}: {result.requests} requests over {result.duration / 60:.0f} min, "
        f"{runs}, SLO {sc.service.slo.describe()}"
    )
    click.echo(plain_table(result))
    click.echo("wrote " + ", ".join(str(p) for p in written))
