"""``gpuscale policy check`` and ``gpuscale policy explain``: ScalingPolicies for people."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from policies.decide_types import Decision
    from policies.schema import ScalingPolicy


@click.group()
def policy() -> None:
    """Check ScalingPolicies (ConfigMaps or bare policy.yaml files) and explain their decisions."""


def _tenancy_label(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from policies.tenancy import ScopeError, check_label

    try:
        check_label(value)
    except ScopeError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


_BARE_NAMESPACE = click.option(
    "--namespace",
    "-n",
    metavar="NS",
    help='Namespace of bare ScalingPolicy documents (default "default"); ConfigMaps keep theirs.',
)
_BARE_NAME = click.option(
    "--name",
    metavar="NAME",
    help="Name of bare ScalingPolicy documents (default: the file's stem).",
)


def _bare_note(p: ScalingPolicy, namespace: str | None, name: str | None) -> str:
    """Says where a bare policy's namespace and name came from, since the file has neither."""
    ns = "--namespace" if namespace is not None else "assumed; set --namespace"
    nm = "--name" if name is not None else "from the file name; set --name"
    return f" [bare ScalingPolicy: namespace {p.namespace} ({ns}), name {p.name} ({nm})]"


@policy.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--tenancy-label",
    default="namespace",
    show_default=True,
    metavar="LABEL",
    callback=_tenancy_label,
    help="Check that every query can be confined to its policy's namespace through LABEL, "
    "as the controller's namespace enforcement does.",
)
@click.option(
    "--no-tenancy",
    is_flag=True,
    help="Skip that check (for controllers run without namespace enforcement).",
)
@_BARE_NAMESPACE
@_BARE_NAME
def check(
    files: tuple[Path, ...],
    tenancy_label: str,
    no_tenancy: bool,
    namespace: str | None,
    name: str | None,
) -> None:
    """Validate ScalingPolicies in FILES: ConfigMaps, or bare policy.yaml documents.

    Prints one line per valid policy; otherwise every problem as
    `file: namespace/name: field: message` and exits 1.

    A bare ScalingPolicy (kind: ScalingPolicy, no ConfigMap around it) is checked as if its
    ConfigMap were NAMESPACE/NAME: --namespace (default "default") and --name (default: the
    file's stem); the line printed says which were assumed.

    By default a query that reads another namespace's series (a matcher on the tenancy label
    other than label="<its namespace>") is an error, as it is for the controller.
    """
    from policies.parse import PolicyError, PolicyFileError, entry_messages, read_policy_file
    from policies.tenancy import scope_policy

    failed = False
    for path in files:
        try:
            entries = read_policy_file(path, namespace=namespace, name=name)
        except PolicyFileError as exc:
            failed = True
            for message in exc.messages:
                click.echo(message, err=True)
            continue
        for message in entry_messages(path, entries):
            failed = True
            click.echo(message, err=True)
        for entry in entries:
            if entry.policy is None:
                continue
            if not no_tenancy:
                try:
                    scope_policy(entry.policy, label=tenancy_label)
                except PolicyError as exc:
                    failed = True
                    for err in exc.errors:
                        click.echo(f"{path}: {exc.key}: {err.path}: {err.message}", err=True)
                    if entry.bare and namespace is None:
                        click.echo(
                            f"{path}: {exc.key}: note: a bare ScalingPolicy was checked in "
                            f"namespace {entry.policy.namespace!r}; give the namespace it will "
                            "live in with --namespace",
                            err=True,
                        )
                    continue
            note = _bare_note(entry.policy, namespace, name) if entry.bare else ""
            click.echo(f"{path}: {entry.policy.key}: ok ({_summary(entry.policy)}){note}")
    if failed:
        raise SystemExit(1)


@policy.command()
@click.option(
    "--configmap",
    is_flag=True,
    help="The schema of the ConfigMap that holds the policy, not of policy.yaml itself.",
)
def schema(configmap: bool) -> None:
    """Print the JSON Schema of policy.yaml (as published in policies/schemas/).

    Editors validate with it through a `# yaml-language-server: $schema=PATH` line;
    `gpuscale policy check` stays the full check.
    """
    from policies.jsonschema import configmap_schema, document_schema

    click.echo(json.dumps(configmap_schema() if configmap else document_schema(), indent=2))


@click.command(name="schema")
def scenario_schema() -> None:
    """Print the JSON Schema of scenario files (as published in simulations/schemas/).

    `gpuscale simulate` stays the full check (files exist, min <= max, …).
    """
    from simulations.config.scenario_schema import scenario_schema as build

    click.echo(json.dumps(build(), indent=2))


def _summary(p: ScalingPolicy) -> str:
    if p.variants is not None:
        from gpuscale.cmd_policy_variants import summary

        return f"{summary(p)}, every {_seconds(p.interval)}: {', '.join(m.name for m in p.metrics)}"
    metrics = ", ".join(f"{m.name} ({m.type})" for m in p.metrics)
    forecast = f", forecast {p.forecast.method}" if p.forecast.method != "none" else ""
    if p.burst is not None:
        q = "max" if p.burst.quantile >= 1 else f"p{p.burst.quantile * 100:g}"
        forecast += f", burst envelope {q} over {_seconds(p.burst.window)}"
    return (
        f"{p.target.kind}/{p.target.name}, replicas {p.replicas.min}..{p.replicas.max}, "
        f"every {_seconds(p.interval)}: {metrics}{forecast}"
    )


def _parse_metric(text: str) -> tuple[str, float | None]:
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise click.BadParameter(f"expected NAME=VALUE, got {text!r}", param_hint="--metric")
    if raw.strip().lower() in ("", "missing", "none", "nan"):
        return name, None
    try:
        value = float(raw)
    except ValueError:
        raise click.BadParameter(
            f"{name}: expected a number (or 'missing'), got {raw!r}", param_hint="--metric"
        ) from None
    return name, value if math.isfinite(value) else None


@policy.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--metric",
    "-m",
    "metrics",
    multiple=True,
    metavar="NAME=VALUE",
    help="A metric's current value (repeatable); VALUE 'missing' marks it unavailable.",
)
@click.option(
    "--current",
    type=click.IntRange(min=0),
    help="Replicas running now (required, except for a policy with variants).",
)
@click.option(
    "--placeable",
    "placeable",
    multiple=True,
    metavar="VARIANT=N",
    help="With variants: the most replicas VARIANT can have now (running plus what the free"
    " GPUs hold); default: its max.",
)
@click.option("--ready", type=click.IntRange(min=0), help="Replicas Ready now (default: current).")
@click.option(
    "--unschedulable",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="The target's pods the scheduler has no room for (the count then does not grow).",
)
@click.option("--name", help="Which policy of FILE to explain (namespace/name or name).")
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
def explain(
    file: Path,
    metrics: tuple[str, ...],
    current: int | None,
    placeable: tuple[str, ...],
    ready: int | None,
    unschedulable: int,
    name: str | None,
    as_json: bool,
) -> None:
    """Show, step by step, the replica count a policy in FILE picks for given metric values.

    Metrics left out count as unavailable. For a policy with variants: the replica mix and,
    per variant, why one replica fewer would not do (--placeable bounds a variant by its free
    GPUs; --current is not used). This is a first decision, with no history: the
    scale-down stabilization window has nothing to remember yet, and rate limits start fresh.

    A metric with several queries takes one value per query: a modelCapacity metric
    NAME takes NAME (requests/s), NAME:promptTokens and NAME:generationTokens (tokens/s).

    \b
    Examples:
      gpuscale policy explain policies/examples/llm-chat-vllm.yaml \\
        -m queue=37 -m latency=2.6 -m load=12 --current 4
      gpuscale policy explain policies/examples/llm-serving-model.yaml \\
        -m capacity=40 -m capacity:promptTokens=80000 -m capacity:generationTokens=8000 \\
        -m kv-cache=0.5 -m itl=0.03 --current 3
      gpuscale policy explain policies/examples/llm-serving-variants.yaml \\
        -m capacity=200 -m capacity:promptTokens=160000 -m capacity:generationTokens=40000 \\
        --placeable h100=2
    """
    from policies.decide import decide
    from policies.decide_types import Snapshot, State
    from policies.parse import PolicyFileError, load_policy_file
    from policies.schema import metric_inputs

    try:
        candidates = load_policy_file(file)
    except PolicyFileError as exc:
        for message in exc.messages:
            click.echo(message, err=True)
        raise SystemExit(1) from None
    chosen = [p for p in candidates if name in (None, p.name, p.key)]
    if len(chosen) != 1:
        keys = ", ".join(p.key for p in candidates)
        what = "no policy named " + repr(name) if not chosen else "several policies"
        click.echo(f"{file}: {what} in the file ({keys}); pick one with --name", err=True)
        raise SystemExit(1)
    (p,) = chosen
    values = dict(_parse_metric(m) for m in metrics)
    inputs = [key for m in p.metrics for key, _ in metric_inputs(m)]
    unknown = sorted(set(values) - set(inputs))
    if unknown:
        known = ", ".join(inputs)
        click.echo(
            f"{file}: {p.key}: unknown metric {', '.join(unknown)} (policy has: {known})", err=True
        )
        raise SystemExit(1)
    if p.variants is not None:
        _explain_variants(file, p, {key: values.get(key) for key in inputs}, placeable, as_json)
        return
    if current is None:
        click.echo(f"{file}: {p.key}: --current is required (replicas running now)", err=True)
        raise SystemExit(1)
    snapshot = Snapshot(
        values={key: values.get(key) for key in inputs},
        current_replicas=current,
        ready_replicas=current if ready is None else ready,
        unschedulable=unschedulable,
    )
    decision, _ = decide(p, snapshot, State(), 0.0)
    if as_json:
        click.echo(json.dumps(_decision_json(p, decision), indent=2))
    else:
        click.echo(_decision_text(p, decision))


def _explain_variants(
    file: Path,
    p: ScalingPolicy,
    values: dict[str, float | None],
    placeable: tuple[str, ...],
    as_json: bool,
) -> None:
    from gpuscale.cmd_policy_variants import explain_variants, mix_json, mix_text

    room: dict[str, int] = {}
    for text in placeable:
        name, sep, raw = text.partition("=")
        if not sep or not raw.strip().isdigit():
            click.echo(f"{file}: {p.key}: --placeable {text!r}: expected VARIANT=N", err=True)
            raise SystemExit(1)
        room[name] = int(raw)
    d = explain_variants(p, values, room)
    if isinstance(d, str):
        click.echo(f"{file}: {p.key}: {d}", err=True)
        raise SystemExit(1)
    click.echo(json.dumps(mix_json(p, d), indent=2) if as_json else mix_text(p, d))


def _decision_json(p: ScalingPolicy, decision: Decision) -> dict[str, Any]:
    body = asdict(decision)
    body["reason"] = decision.reason
    return {"policy": p.key, "target": f"{p.target.kind}/{p.target.name}", "decision": body}


def _decision_text(p: ScalingPolicy, d: Decision) -> str:
    lines = [
        f"Policy {p.key} scales {p.target.kind}/{p.target.name} "
        f"between {p.replicas.min} and {p.replicas.max} replicas.",
        f"Now: {d.current_replicas} replicas"
        + (f", {d.unschedulable} of them unschedulable." if d.unschedulable else "."),
        "",
        "Proposals:",
    ]
    width = max(len(pr.metric) for pr in d.proposals) if d.proposals else 0
    for pr in d.proposals:
        value = "missing" if pr.value is None else f"{pr.value:g}"
        proposes = "—" if pr.replicas is None else str(pr.replicas)
        mark = "  ← winner" if pr.metric == d.winner else ""
        head = f"  {pr.metric:<{width}}  {pr.type:<13}  value {value:<10}  proposes {proposes:>3}"
        parts = pr.reason.split("; ")
        if len(parts) == 1:
            lines.append(f"{head}  {pr.reason}{mark}")
        else:  # a model's arithmetic, one step a line
            lines.append(f"{head}{mark}")
            lines += [f"      {part}" for part in parts]
    for pr in d.proposals:
        if pr.unreachable is not None:
            lines += ["", f"SLO unreachable ({pr.metric}): {pr.unreachable}."]
    per_metric = {f"{pr.metric} ({pr.type}): {pr.reason}" for pr in d.proposals}
    lines += ["", "Then:"]
    lines += [f"  {i}. {step}" for i, step in enumerate(_without(d.steps, per_metric), 1)]
    lines += ["", f"Desired replicas: {d.desired_replicas}", "", *_history_note(p)]
    return "\n".join(lines)


def _window_line(direction: str, window: float, which: str, effect: str) -> str:
    head = f"  - behavior.{direction}.stabilizationWindow {_seconds(window)}"
    if window == 0:
        return f"{head}: off, applied at once"
    return f"{head}: only to the {which} recommendation of the last {_seconds(window)}; {effect}"


def _history_note(p: ScalingPolicy) -> list[str]:
    """What a first decision cannot show: the controller remembers, explain does not."""
    down = p.behavior.scale_down.stabilization_window
    up = p.behavior.scale_up.stabilization_window
    note = [
        "Not shown: history. This is a first decision; the controller also remembers its "
        "recent recommendations and scale events:",
        _window_line("scaleDown", down, "highest", "a lower count here may wait that long"),
        _window_line("scaleUp", up, "lowest", "a higher count here may wait that long"),
        "  - behavior.*.policies: rate limits count the scale events of each period; here "
        "none have happened yet.",
    ]
    if p.burst is not None:
        note.append(
            f"  - burst: the envelope over {_seconds(p.burst.window)} holds only the sizes "
            "given here."
        )
    return note


def _without(steps: tuple[str, ...], shown: set[str]) -> list[str]:
    """The steps not already printed in the proposals table."""
    return [step for step in steps if step not in shown]


def _seconds(seconds: float) -> str:
    from policies.durations import format_duration

    return format_duration(seconds)
