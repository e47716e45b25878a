"""``gpuscale simulate calibrate``: fit a step-time profile to measurements and write it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import click
import yaml


@click.command()
@click.option(
    "--steps",
    "steps_file",
    type=click.Path(path_type=Path),
    help="CSV of engine steps: prefill_tokens,decode_seqs,step_seconds[,context_tokens].",
)
@click.option(
    "--levels",
    "levels_file",
    type=click.Path(path_type=Path),
    help="CSV of load levels: rate,prompt_tokens,generated_tokens,ttft_seconds,itl_seconds"
    "[,replicas].",
)
@click.option(
    "--prometheus",
    "prometheus_url",
    help="Read the load levels from this Prometheus (vLLM V1 series); needs --windows.",
)
@click.option(
    "--windows",
    "windows_file",
    type=click.Path(path_type=Path),
    help="CSV of the load test's levels: start,end (Unix s),rate (req/s)[,replicas].",
)
@click.option(
    "--selector", default="", help='Label matchers for the queries, e.g. {model_name="llama"}.'
)
@click.option(
    "--name", required=True, help="Profile name (lower-case, e.g. llama-3.1-8b-l40s-tp1)."
)
@click.option("--model", default="", help="Model the profile is for.")
@click.option("--gpu", default="", help="GPU type the profile is for.")
@click.option("--tensor-parallelism", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option(
    "--gpu-memory", default="", help='Memory of one GPU, for the KV capacity (e.g. "48Gi").'
)
@click.option("--weights", default="", help='Weight bytes on each GPU (e.g. "16.06G").')
@click.option(
    "--kv-bytes-per-token", default="", help="KV-cache bytes per token on each GPU (e.g. 131072)."
)
@click.option(
    "--kv-cache-tokens",
    default=1_000_000,
    show_default=True,
    type=click.IntRange(16),
    help="KV capacity per engine during the load test (levels only).",
)
@click.option("--max-num-seqs", default=256, show_default=True, type=click.IntRange(1))
@click.option("--max-num-batched-tokens", default=2048, show_default=True, type=click.IntRange(1))
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Profile file to write (default: NAME.yaml).",
)
@click.option("--plot/--no-plot", default=True, show_default=True, help="Write NAME-fit.png too.")
def calibrate(
    steps_file: Path | None,
    levels_file: Path | None,
    prometheus_url: str | None,
    windows_file: Path | None,
    selector: str,
    name: str,
    model: str,
    gpu: str,
    tensor_parallelism: int,
    gpu_memory: str,
    weights: str,
    kv_bytes_per_token: str,
    kv_cache_tokens: int,
    max_num_seqs: int,
    max_num_batched_tokens: int,
    out: Path | None,
    plot: bool,
) -> None:
    """Fit step = beta0 + beta1·prefill tokens + beta2·decoding sequences [+ beta3·context]
    by least squares, print the fit and its error, and write a profile file that scenarios
    (service.profile) and modelCapacity metrics (profile) can name.

    \b
    From measured steps (non-negative least squares):
      gpuscale simulate calibrate --steps steps.csv --name llama-3.1-8b-l40s-tp1
    From a load test at known loads (mean TTFT and inter-token latency per level):
      gpuscale simulate calibrate --levels levels.csv --name my-profile
      gpuscale simulate calibrate --prometheus http://127.0.0.1:9090 --windows windows.csv \\
        --selector '{model_name="llama"}' --name my-profile
    Steps and levels together also fit the alpha terms (the overheads outside the steps):
      gpuscale simulate calibrate --steps steps.csv --levels levels.csv --name my-profile
    """
    from policies.profiles import NAME_PATTERN, parse_bytes, profile_document
    from policies.stepmodel import EngineLimits
    from simulations.experiments import calibrate as cal

    given = [x for x in (steps_file, levels_file, prometheus_url) if x is not None]
    if not given or (levels_file is not None and prometheus_url is not None):
        click.echo(
            "calibrate: give exactly one of --steps, --levels, --prometheus (or --steps with"
            " one of the other two, for the alpha terms)",
            err=True,
        )
        raise SystemExit(1)
    if prometheus_url is not None and windows_file is None:
        click.echo("calibrate: --prometheus needs --windows (the load test's levels)", err=True)
        raise SystemExit(1)
    if not NAME_PATTERN.fullmatch(name):
        click.echo(
            f"--name: expected lower-case letters, digits, '-', '.' or '_', got {name!r}", err=True
        )
        raise SystemExit(1)
    sizes: dict[str, float] = {}
    for flag, raw in (
        ("--gpu-memory", gpu_memory),
        ("--weights", weights),
        ("--kv-bytes-per-token", kv_bytes_per_token),
    ):
        if raw:
            value = parse_bytes(raw)
            if value is None:
                click.echo(
                    f'{flag}: expected bytes or a quantity like "48Gi", got {raw!r}', err=True
                )
                raise SystemExit(1)
            sizes[flag] = value
    limits = EngineLimits(kv_cache_tokens // 16, max_num_seqs, max_num_batched_tokens)
    try:
        levels: list[cal.Level] | None = None
        what = ""
        if levels_file is not None:
            levels = cal.read_levels(levels_file)
            what = f"{levels_file.name} (load levels)"
        elif prometheus_url is not None:
            assert windows_file is not None
            windows = cal.read_windows(windows_file)
            levels = cal.load_levels_from_prometheus(_querier(prometheus_url), windows, selector)
            what = f"Prometheus load test ({len(windows)} levels, {windows_file.name})"
        if steps_file is not None:
            fit = cal.fit_steps(cal.read_steps(steps_file), name)
            steps_what = f"{steps_file.name} (engine steps)"
            if levels is None:
                what = steps_what
            else:
                fit = cal.fit_alphas(levels, limits, fit.profile)
                what = f"{steps_what} and {what}"
        else:
            assert levels is not None
            fit = cal.fit_levels(levels, limits, name)
    except cal.CalibrationError as exc:
        click.echo(str(exc), err=True)
        raise SystemExit(1) from None
    except OSError as exc:
        click.echo(f"calibrate: {prometheus_url}: {exc}", err=True)
        raise SystemExit(1) from None
    profile = cal.with_source(fit, what)
    profile = replace(
        profile,
        model=model,
        gpu=gpu,
        tensor_parallelism=tensor_parallelism,
        gpu_memory_bytes=sizes.get("--gpu-memory", 0.0),
        weights_bytes=sizes.get("--weights", 0.0),
        kv_bytes_per_token=sizes.get("--kv-bytes-per-token", 0.0),
    )
    p = profile
    click.echo(f"{name}: fitted from {what}")
    click.echo(f"  beta0 {p.beta0 * 1e3:10.4f} ms          per step")
    click.echo(f"  beta1 {p.beta1 * 1e6:10.4f} µs/token    per prefill token")
    click.echo(f"  beta2 {p.beta2 * 1e6:10.4f} µs/sequence per decoding sequence")
    if p.beta3:
        click.echo(f"  beta3 {p.beta3 * 1e9:10.4f} ns/token    per context token")
    if p.alpha0 or p.alpha1 or p.alpha2:
        click.echo(f"  alpha0 {p.alpha0 * 1e6:9.4f} µs          per request, before queueing")
        click.echo(f"  alpha1 {p.alpha1 * 1e6:9.4f} µs/token    per prompt token, before queueing")
        click.echo(f"  alpha2 {p.alpha2 * 1e6:9.4f} µs/token    per emitted token")
    elif levels is None:
        click.echo("  alphas: not fitted (step times carry none; add --levels or --prometheus)")
    for note in fit.notes:
        click.echo(f"  {note}")
    r2 = "" if fit.r2 != fit.r2 else f", R² {fit.r2:.4f}"
    click.echo(
        f"  error: RMSE {fit.rmse * 1e3:.4g} ms, mean relative error {fit.mape * 100:.3g}%{r2}"
        f" over {len(fit.measured)} measurements"
    )
    target = out or Path(f"{name}.yaml")
    header = "# Step-time profile written by gpuscale simulate calibrate.\n"
    try:
        target.write_text(header + yaml.safe_dump(profile_document(profile), sort_keys=False))
        written = [target]
        if plot:
            written.append(cal.plot_fit(fit, target.with_name(f"{target.stem}-fit.png"), name))
    except OSError as exc:
        click.echo(f"{target}: cannot write: {exc.strerror or exc}", err=True)
        raise SystemExit(1) from None
    click.echo("wrote " + ", ".join(str(w) for w in written))


def _querier(url: str) -> Callable[[str, float], float | None]:
    """``query(promql, at) -> float | None`` through prometheus-api-client."""
    from prometheus_api_client import PrometheusConnect

    client = PrometheusConnect(url=url, disable_ssl=True)

    def query(promql: str, at: float) -> float | None:
        try:
            result = client.custom_query(query=promql, params={"time": at})
        except Exception as exc:  # the client raises bare exceptions for HTTP errors
            raise OSError(f"query {promql!r} failed: {exc}") from None
        if not result:
            return None
        return float(result[0]["value"][1])

    return query
