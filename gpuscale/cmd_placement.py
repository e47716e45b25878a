"""``gpuscale simulate placement``: replay the openb GPU trace through the extender's scoring."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from simulations.placement.openb import OpenbNode, OpenbPod

_DATA = Path(__file__).resolve().parent.parent / "simulations" / "data"


def _gpu_memory(text: str | None) -> dict[str, int]:
    out: dict[str, int] = {}
    if not text:
        return out
    for item in text.split(","):
        model, sep, value = item.strip().partition("=")
        try:
            mib = int(value)
        except ValueError:
            mib = 0
        if not sep or not model or mib <= 0:
            click.echo(
                f"--gpu-memory: expected MODEL=MiB with a positive integer, got {item.strip()!r}",
                err=True,
            )
            raise SystemExit(1)
        out[model] = mib
    return out


@click.command()
@click.option(
    "--nodes",
    "nodes_path",
    type=click.Path(path_type=Path),
    default=_DATA / "openb_node_list_gpu_node.csv",
    show_default="simulations/data/openb_node_list_gpu_node.csv",
    help="openb node list (sn,cpu_milli,memory_mib,gpu,model).",
)
@click.option(
    "--pods",
    "pod_paths",
    type=click.Path(path_type=Path),
    multiple=True,
    help="openb pod list (repeatable; default: the default, multigpu50 and gpushare60 lists).",
)
@click.option(
    "--constrain",
    "constrain_fraction",
    default=0.0,
    show_default=True,
    type=float,
    help="Also replay each pod list with this fraction of its GPU pods constrained to one or "
    "two GPU models (gpu_spec, seeded from --seed; see simulations/placement/gpuspec.py), "
    "as LIST+specNN.",
)
@click.option(
    "--scoring",
    default="binpack,spread,fragmentation",
    show_default=True,
    help="Comma list of the extender's scoring strategies to compare; in DRA form, "
    "dra-upstream (no GPU-aware scoring, LeastAllocated) and dra-STRATEGY (the strategy's node "
    "score, the DRA allocator's devices).",
)
@click.option("--repeats", default=10, show_default=True, type=int, help="Seeded runs each.")
@click.option("--seed", default=42, show_default=True, type=int, help="Seed of the first run.")
@click.option(
    "--target-load",
    default=1.3,
    show_default=True,
    type=float,
    help="Stop when requested GPUs reach this multiple of cluster GPU capacity.",
)
@click.option(
    "--order",
    type=click.Choice(["sampled", "trace"]),
    default="sampled",
    show_default=True,
    help="sampled: pods drawn to the target load and shuffled per seed (the paper); "
    "trace: trace order, cut at the target load.",
)
@click.option(
    "--selection",
    type=click.Choice(["scheduler", "exact"]),
    default="scheduler",
    show_default=True,
    help="scheduler: the best of the integer 0..10 scores kube-scheduler receives from the "
    "extender (ties at random); exact: the node with the best strategy score (for analysis).",
)
@click.option(
    "--departures",
    is_flag=True,
    help="With --order trace: pods arrive at creation_time / --compress and leave after their "
    "traced run time; pods that fit nowhere wait and are retried as pods leave. Reports "
    "allocation over time and how many GPU pods waited, how long "
    "(simulations/placement/departures.py).",
)
@click.option(
    "--compress",
    default=1000.0,
    show_default=True,
    type=float,
    help="--departures: arrival times are divided by this (run times are not).",
)
@click.option(
    "--copies",
    default=3,
    show_default=True,
    type=int,
    help="--departures: each pod of the trace arrives this many times.",
)
@click.option(
    "--gpu-memory",
    "gpu_memory_text",
    help="GPU memory per model, MODEL=MiB comma list, added to the defaults "
    "(V100M16/T4/P100 16 GiB, V100M32 32 GiB, A10 24 GiB, G2 16 GiB, G3 32 GiB).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("placement-report"),
    show_default=True,
    help="Directory for placement.json, placement.csv, placement_curve.csv, placement.png.",
)
def placement(
    nodes_path: Path,
    pod_paths: tuple[Path, ...],
    constrain_fraction: float,
    scoring: str,
    repeats: int,
    seed: int,
    target_load: float,
    order: str,
    selection: str,
    departures: bool,
    compress: float,
    copies: int,
    gpu_memory_text: str | None,
    out_dir: Path,
) -> None:
    """Replay openb pods onto openb GPU nodes through the extender's filter and scoring.

    Pods arrive without departures until requested GPUs reach --target-load of capacity; a pod
    that fits nowhere is skipped. Reports the share of GPU capacity allocated as arrivals grow,
    mean ± std over --repeats seeds, per pod list and scoring strategy. A pod's gpu_spec becomes
    a required node affinity on nvidia.com/gpu.product, enforced by the extender's own code.
    """
    from extender.scoring import strategy_names
    from simulations.placement.dra import dra_names
    from simulations.placement.openb import OpenbFormatError, read_nodes
    from simulations.placement.replay import (
        DEFAULT_GPU_MEMORY_MIB,
        PlacementError,
        ReplayConfig,
        curve_csv,
        plot,
        run_trace,
        runs_csv,
        summaries_to_json,
        table,
    )

    names = [n.strip() for n in scoring.split(",") if n.strip()]
    known = [*strategy_names(), *dra_names(strategy_names())]
    bad = [n for n in names if n not in known]
    if not names or bad:
        click.echo(
            f"--scoring: unknown strategy {', '.join(bad) or '(none given)'} "
            f"(known: {', '.join(known)})",
            err=True,
        )
        raise SystemExit(1)
    if repeats < 1:
        click.echo(f"--repeats: must be at least 1, got {repeats}", err=True)
        raise SystemExit(1)
    if not 0 < target_load <= 10:
        click.echo(f"--target-load: must be in (0, 10], got {target_load}", err=True)
        raise SystemExit(1)
    if departures and order != "trace":
        click.echo("--departures: needs --order trace (pods arrive at their trace times)", err=True)
        raise SystemExit(1)
    if not compress > 0:
        click.echo(f"--compress: must be positive, got {compress}", err=True)
        raise SystemExit(1)
    if copies < 1:
        click.echo(f"--copies: must be at least 1, got {copies}", err=True)
        raise SystemExit(1)
    if not 0 <= constrain_fraction <= 1:
        click.echo(f"--constrain: must be in [0, 1], got {constrain_fraction}", err=True)
        raise SystemExit(1)
    memory = {**DEFAULT_GPU_MEMORY_MIB, **_gpu_memory(gpu_memory_text)}
    config = ReplayConfig(
        target_load=target_load,
        repeats=repeats,
        seed=seed,
        sample=order == "sampled",
        gpu_memory_mib=memory,
        selection="scheduler" if selection == "scheduler" else "exact",
    )
    paths = pod_paths or (
        _DATA / "openb_pod_list_default.csv",
        _DATA / "openb_pod_list_multigpu50.csv",
        _DATA / "openb_pod_list_gpushare60.csv",
    )

    def progress(message: str) -> None:
        click.echo(message, err=True)

    started = time.perf_counter()
    if departures:
        _departures(nodes_path, paths, names, config, compress, copies, constrain_fraction, out_dir)
        return
    summaries = []
    try:
        nodes = read_nodes(nodes_path)
        for label, listed in _pod_lists(nodes, paths, constrain_fraction, seed):
            summaries.extend(
                run_trace(nodes, listed, names, config=config, trace=label, progress=progress)
            )
    except (OpenbFormatError, PlacementError) as exc:
        click.echo(f"gpuscale simulate placement: {exc}", err=True)
        raise SystemExit(1) from None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "placement.json").write_text(
            json.dumps(summaries_to_json(summaries, config), indent=1) + "\n"
        )
        (out_dir / "placement.csv").write_text(runs_csv(summaries, config))
        (out_dir / "placement_curve.csv").write_text(curve_csv(summaries))
        plot(summaries, str(out_dir / "placement.png"), config)
    except OSError as exc:
        click.echo(f"gpuscale simulate placement: cannot write {out_dir}: {exc}", err=True)
        raise SystemExit(1) from None
    click.echo(table(summaries, config))
    click.echo(
        f"\n{len(summaries)} trace × scoring combinations, {repeats} repeat(s) each, "
        f"in {time.perf_counter() - started:.0f} s; wrote {out_dir}/placement.json, "
        "placement.csv, placement_curve.csv, placement.png"
    )


def _pod_lists(
    nodes: list[OpenbNode], paths: tuple[Path, ...], constrain_fraction: float, seed: int
) -> Iterator[tuple[str, list[OpenbPod]]]:
    """Each pod list under its trace's name, and with ``constrain_fraction`` also a copy in
    which that share of the GPU pods asks for a GPU model (``TRACE+specNN``)."""
    from simulations.placement.gpuspec import constrain
    from simulations.placement.openb import read_pods

    for path in paths:
        pods = read_pods(path)
        trace = path.stem.removeprefix("openb_pod_list_")
        yield trace, pods
        if constrain_fraction > 0:
            label = f"{trace}+spec{round(100 * constrain_fraction)}"
            yield label, constrain(pods, nodes, constrain_fraction, seed)


def _departures(
    nodes_path: Path,
    paths: tuple[Path, ...],
    names: list[str],
    config: object,
    compress: float,
    copies: int,
    constrain_fraction: float,
    out_dir: Path,
) -> None:
    """``--order trace --departures``: one run per pod list × strategy."""
    from simulations.placement.departures import (
        DeparturesConfig,
        departures_curve_csv,
        departures_json,
        departures_table,
        replay_departures,
    )
    from simulations.placement.openb import OpenbFormatError, read_nodes
    from simulations.placement.replay import PlacementError, ReplayConfig, make_strategy

    assert isinstance(config, ReplayConfig)
    dep = DeparturesConfig(compress=compress, copies=copies, replay=config)
    started = time.perf_counter()
    results = []
    try:
        nodes = read_nodes(nodes_path)
        for label, listed in _pod_lists(nodes, paths, constrain_fraction, config.seed):
            for name in names:
                r = replay_departures(
                    nodes, listed, make_strategy(name, listed), config=dep, trace=label
                )
                results.append(r)
                click.echo(
                    f"{label} {name:<13} {r.waited}/{r.gpu_pods} GPU pods waited, "
                    f"{100 * r.allocated_peak:.1f}% peak allocation ({r.seconds:.1f} s)",
                    err=True,
                )
    except (OpenbFormatError, PlacementError) as exc:
        click.echo(f"gpuscale simulate placement: {exc}", err=True)
        raise SystemExit(1) from None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "departures.json").write_text(
            json.dumps(departures_json(results, dep), indent=1) + "\n"
        )
        (out_dir / "departures_curve.csv").write_text(departures_curve_csv(results))
    except OSError as exc:
        click.echo(f"gpuscale simulate placement: cannot write {out_dir}: {exc}", err=True)
        raise SystemExit(1) from None
    click.echo(departures_table(results))
    click.echo(
        f"\n{len(results)} trace × scoring runs in {time.perf_counter() - started:.0f} s; "
        f"wrote {out_dir}/departures.json, departures_curve.csv"
    )
