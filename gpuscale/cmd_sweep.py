"""``gpuscale simulate sweep``: every autoscaler family over its knobs, as Pareto frontiers."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click


@click.command()
@click.argument("spec", required=False, type=click.Path(path_type=Path))
@click.option(
    "--out",
    default="sweep-report",
    show_default=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Directory for results.jsonl (kept between runs: a re-run skips what is done), "
    "pareto.json and pareto.png.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    help="Local processes (default: the CPU count).",
)
@click.option(
    "--ray",
    "ray_address",
    metavar="ADDRESS",
    help="Run the points as Ray tasks on an existing cluster (host:port, or auto); "
    "needs the gpuscale[ray] extra.",
)
@click.option("--plots/--no-plots", default=True, show_default=True)
def sweep(
    spec: Path | None, out: Path, workers: int | None, ray_address: str | None, plots: bool
) -> None:
    """Sweep SPEC (default: the built-in sweep on the Azure code trace).

    Runs every point x seed of every family, the static-provisioning search and the hindsight
    bound, then writes pareto.json and pareto.png to --out and prints the table.
    """
    import os

    from simulations.config.sweep_spec import SweepSpecError, load_sweep
    from simulations.experiments.sweep import RayUnavailable, make_backend, run_sweep
    from simulations.experiments.sweep_report import pareto_dict, table, write_json, write_plot

    try:
        parsed = load_sweep(spec)
    except SweepSpecError as exc:
        for message in exc.messages:
            click.echo(message, err=True)
        raise SystemExit(1) from None
    if ray_address is not None and workers is not None:
        click.echo("--workers and --ray: choose one (Ray decides its own parallelism)", err=True)
        raise SystemExit(1)
    try:
        backend = make_backend(workers or os.cpu_count() or 1, ray_address)
    except RayUnavailable as exc:
        click.echo(str(exc), err=True)
        raise SystemExit(1) from None

    started = time.perf_counter()
    try:
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress

            with Progress(console=Console(stderr=True), transient=True) as progress:
                task = progress.add_task("sweeping", total=None)
                result = run_sweep(
                    parsed,
                    out,
                    backend,
                    lambda done, total: progress.update(task, completed=done, total=total),
                )
        else:
            result = run_sweep(parsed, out, backend)
    except OSError as exc:
        click.echo(f"{parsed.file}: {exc}", err=True)
        raise SystemExit(1) from None
    elapsed = time.perf_counter() - started

    doc = pareto_dict(result)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.jsonl", out / "pareto.json"]
    write_json(doc, written[1])
    if plots:
        written.append(out / "pareto.png")
        write_plot(doc, written[2])
    sc = parsed.scenario
    seeds = ", ".join(str(s) for s in parsed.seeds)
    click.echo(
        f"{sc.name}: {len(doc['families'])} families, seeds {seeds}, target "
        f"{parsed.target * 100:g}% attainment of {sc.service.slo.describe().split(' for ')[0]}; "
        f"{result.ran} runs in {elapsed:.0f} s, {result.reused} reused from {written[0]}"
    )
    click.echo(table(doc))
    click.echo("wrote " + ", ".join(str(p) for p in written))
