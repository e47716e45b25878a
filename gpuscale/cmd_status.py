"""``gpuscale status``: the ScalingPolicies of a cluster, as the controller last reported them."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from autoscaler.overview import PolicyRow

_NARROW = ("POLICY", "TARGET", "STATE", "DESIRED", "CURRENT", "WINNER", "MISSING", "LAST ERROR")
_WIDE = (*_NARROW[:-1], "HPA", "CONTROLLER STATE", "SINCE", "LAST ERROR", "REASON")
_ERROR_WIDTH = 60


@click.command()
@click.option(
    "-n", "--namespace", default=None, help="Only this namespace (default: all namespaces)."
)
@click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "wide", "json"]),
    default="table",
    show_default=True,
    help="wide adds the HPA, the controller's state and reason; json prints everything.",
)
@click.option(
    "--kubeconfig",
    type=click.Path(dir_okay=False),
    default=None,
    help="Kubeconfig (default: $KUBECONFIG or ~/.kube/config, else the pod's service account).",
)
@click.option("--context", default=None, help="Kubeconfig context (default: the current one).")
def status(namespace: str | None, output: str, kubeconfig: str | None, context: str | None) -> None:
    """List ScalingPolicies: target, state, desired/current replicas, the winning metric,
    missing metrics and the last error.

    Read from what the controller writes (the gpuscale.io/status annotation, the HPA it owns,
    Events on the policy ConfigMap). STATE is the annotation's: Pending (no report from the
    controller yet), Active (deciding), CapacityLimited (some of the target's pods are
    unschedulable: the count does not grow until they are placed), MetricsUnavailable or
    TargetUnavailable (replicas held), or Invalid (the policy does not parse; an earlier good
    version may still run).
    """
    import asyncio

    try:
        if kubeconfig and not os.path.isfile(kubeconfig):
            raise _Unreachable(f"--kubeconfig: no such file: {kubeconfig}")
        rows = asyncio.run(_fetch(namespace, kubeconfig or _default_kubeconfig(), context))
    except _Unreachable as exc:
        click.echo(f"gpuscale status: {exc}", err=True)
        raise SystemExit(1) from None
    if output == "json":
        click.echo(json.dumps([r.to_json() for r in rows], indent=2))
        return
    if not rows:
        where = f"namespace {namespace}" if namespace else "any namespace"
        click.echo(f"No ScalingPolicies found in {where}.", err=True)
        return
    click.echo(_table(rows, wide=output == "wide"))


class _Unreachable(Exception):
    """The cluster cannot be reached or refused us; the message says which and where."""


async def _fetch(namespace: str | None, found: str | None, context: str | None) -> list[Any]:
    """Rows from the cluster of kubeconfig ``found`` (None: the pod's service account)."""
    import aiohttp
    from kubernetes.aio import client, config

    from autoscaler.overview import fetch_rows
    from runtime.kube import KubeError

    configuration = client.Configuration()
    configuration.client_session_kwargs = {"trust_env": False}
    if found is not None:
        try:
            await config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=found, context=context, client_configuration=configuration
            )
        except Exception as exc:
            raise _Unreachable(f"cannot use kubeconfig {found}: {exc}") from None
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except Exception:
            raise _Unreachable(
                "no kubeconfig ($KUBECONFIG, ~/.kube/config) and not running in a pod; "
                "pass --kubeconfig"
            ) from None
    where = configuration.host
    api = client.ApiClient(configuration)
    try:
        return await fetch_rows(api, namespace)
    except KubeError as exc:
        hint = " (check your credentials and RBAC: list configmaps, events, HPAs)"
        auth = hint if exc.status in (401, 403) else ""
        raise _Unreachable(f"the Kubernetes API at {where} answered {exc}{auth}") from None
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        raise _Unreachable(f"cannot reach the Kubernetes API at {where}: {reason}") from None
    finally:
        await api.close()  # type: ignore[no-untyped-call]


def _default_kubeconfig() -> str | None:
    """The first file of $KUBECONFIG, else ~/.kube/config, if it exists (as kubectl looks)."""
    candidates = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    candidates.append(os.path.expanduser("~/.kube/config"))
    return next((p for p in candidates if os.path.isfile(p)), None)


def _cell(value: object) -> str:
    if value is None or value == ():
        return "-"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _short(text: str | None, width: int) -> str:
    if not text:
        return "-"
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(rows: list[PolicyRow], *, wide: bool) -> str:
    lines: list[tuple[str, ...]] = [_WIDE if wide else _NARROW]
    for r in rows:
        base = (
            f"{r.namespace}/{r.name}",
            r.target,
            r.state,
            _cell(r.desired),
            _cell(r.current),
            _cell(r.winner),
            _cell(r.missing),
        )
        if wide:
            extra = (_cell(r.hpa), r.detail, _cell(r.since), _short(r.last_error, 10_000))
            lines.append((*base, *extra, _short(r.reason, 10_000)))
        else:
            lines.append((*base, _short(r.last_error, _ERROR_WIDTH)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "   ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
