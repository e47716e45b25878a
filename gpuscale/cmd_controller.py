"""``gpuscale controller``: run the autoscaler (flags as deploy/ uses them)."""

from __future__ import annotations

import os
import socket

import click

from gpuscale.connection_flags import connection_limit_options
from runtime.limits import ConnectionLimits


def _identity_default() -> str:
    return os.environ.get("POD_NAME") or socket.gethostname()


@click.command()
@click.option("--kubeconfig", type=click.Path(dir_okay=False), help="Kubeconfig; else in-cluster.")
@click.option(
    "--namespace", default=None, help="Watch policies in this namespace only (default all)."
)
@click.option("--prometheus-url", required=True, help="Prometheus base URL, e.g. http://prom:9090.")
@click.option(
    "--actuation",
    type=click.Choice(["hpa", "prometheus"]),
    default="hpa",
    show_default=True,
    help="hpa: serve external metrics and own one HPA per policy; prometheus: export a gauge.",
)
@click.option(
    "--secure-address",
    default="0.0.0.0:6443",
    show_default=True,
    help="External metrics API (HTTPS).",
)
@click.option("--tls-cert-file", type=click.Path(dir_okay=False), help="Serving certificate (PEM).")
@click.option("--tls-private-key-file", type=click.Path(dir_okay=False), help="Serving key (PEM).")
@click.option(
    "--requestheader-client-ca-file",
    type=click.Path(dir_okay=False),
    help="Front-proxy client CA (default: from kube-system/extension-apiserver-authentication);"
    " clients must present a certificate it signed.",
)
@click.option(
    "--requestheader-allowed-names",
    default="",
    help="With --requestheader-client-ca-file: comma list of CNs the front-proxy certificate may"
    " have (default any).",
)
@click.option(
    "--insecure-allow-any-client",
    is_flag=True,
    default=False,
    help="Tests and development only: when no front-proxy CA is found, serve the metrics API to"
    " any TLS client instead of refusing to start.",
)
@click.option(
    "--ops-address",
    default="0.0.0.0:8080",
    show_default=True,
    help="/livez /readyz /metrics (HTTP).",
)
@click.option("--leader-elect/--no-leader-elect", default=True, show_default=True)
@click.option("--leader-elect-namespace", default="gpuscale-system", show_default=True)
@click.option("--leader-elect-lease-name", default="gpuscale-controller", show_default=True)
@click.option("--identity", default=None, help="Leader identity (default: $POD_NAME or hostname).")
@click.option(
    "--stale-after",
    default="2m",
    show_default=True,
    help="Serve an error once a count is this old.",
)
@click.option(
    "--prometheus-timeout",
    default="5s",
    show_default=True,
    help="How long one query may take, the wait for a free query slot included.",
)
@click.option(
    "--prometheus-concurrency",
    type=click.IntRange(1),
    default=32,
    show_default=True,
    help="Prometheus queries in flight at once, all policies together.",
)
@click.option(
    "--prometheus-concurrency-per-namespace",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="Queries one namespace may have in flight: one team's hung or slow queries fill only"
    " its own share; free slots go to the namespaces with waiting queries in turn.",
)
@click.option(
    "--prometheus-max-answer-bytes",
    type=click.IntRange(1024),
    default=256 * 1024,
    show_default=True,
    help="Largest Prometheus answer read; a larger one (a query that selects many series) makes"
    " that metric unavailable with a reason, without being read whole.",
)
@click.option(
    "--tenancy-label",
    default="namespace",
    show_default=True,
    help='Namespace enforcement: every query of a policy gets <LABEL>="<its namespace>", and'
    " a query that reads another namespace makes the policy Invalid. Name the label your"
    " series carry the namespace in.",
)
@click.option(
    "--no-tenancy",
    is_flag=True,
    default=False,
    help="Let policies query any namespace's series (single-team clusters).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
)
@connection_limit_options
def controller(
    kubeconfig: str | None,
    namespace: str | None,
    prometheus_url: str,
    actuation: str,
    secure_address: str,
    tls_cert_file: str | None,
    tls_private_key_file: str | None,
    requestheader_client_ca_file: str | None,
    requestheader_allowed_names: str,
    insecure_allow_any_client: bool,
    ops_address: str,
    leader_elect: bool,
    leader_elect_namespace: str,
    leader_elect_lease_name: str,
    identity: str | None,
    stale_after: str,
    prometheus_timeout: str,
    prometheus_concurrency: int,
    prometheus_concurrency_per_namespace: int,
    prometheus_max_answer_bytes: int,
    tenancy_label: str,
    no_tenancy: bool,
    log_level: str,
    limits: ConnectionLimits,
    limit_problems: list[str],
) -> None:
    """Run the autoscaler controller: Prometheus in, external metrics and HPAs out."""
    from autoscaler import app
    from autoscaler.leader import LeaderSettings
    from autoscaler.settings import AddressError, ControllerSettings, parse_address
    from gpuscale import logs
    from policies.durations import DurationError, parse_duration
    from runtime.startup import StartupError

    problems: list[str] = list(limit_problems)
    try:
        stale = parse_duration(stale_after)
    except DurationError as exc:
        problems.append(f"--stale-after: {exc}")
        stale = 0.0
    try:
        query_timeout = parse_duration(prometheus_timeout)
    except DurationError as exc:
        problems.append(f"--prometheus-timeout: {exc}")
        query_timeout = 0.0
    else:
        if query_timeout <= 0:
            problems.append("--prometheus-timeout: must be more than 0s")
    for flag, value in (("--secure-address", secure_address), ("--ops-address", ops_address)):
        try:
            parse_address(value)
        except AddressError as exc:
            problems.append(f"{flag}: {exc}")
    if requestheader_allowed_names.strip() and not requestheader_client_ca_file:
        problems.append(
            "--requestheader-allowed-names needs --requestheader-client-ca-file (without it the"
            " allowed names come from kube-system/extension-apiserver-authentication)"
        )
    if bool(tls_cert_file) != bool(tls_private_key_file):
        problems.append("--tls-cert-file and --tls-private-key-file go together")
    for flag, path in (
        ("--kubeconfig", kubeconfig),
        ("--tls-cert-file", tls_cert_file),
        ("--tls-private-key-file", tls_private_key_file),
        ("--requestheader-client-ca-file", requestheader_client_ca_file),
    ):
        if path and not os.path.isfile(path):
            problems.append(f"{flag}: no such file: {path}")
    if not no_tenancy:
        from policies.tenancy import ScopeError, check_label

        try:
            check_label(tenancy_label)
        except ScopeError as exc:
            problems.append(f"--tenancy-label: {exc}")
    if not prometheus_url.startswith(("http://", "https://")):
        problems.append(f"--prometheus-url: expected an http(s) URL, got {prometheus_url!r}")
    if problems:
        for line in problems:
            click.echo(f"gpuscale controller: {line}", err=True)
        raise SystemExit(1)

    who = identity or _identity_default()
    settings = ControllerSettings(
        prometheus_url=prometheus_url,
        kubeconfig=kubeconfig,
        namespace=namespace or None,
        actuation="prometheus" if actuation == "prometheus" else "hpa",
        secure_address=secure_address,
        tls_cert_file=tls_cert_file,
        tls_private_key_file=tls_private_key_file,
        requestheader_client_ca_file=requestheader_client_ca_file,
        requestheader_allowed_names=tuple(
            n.strip() for n in requestheader_allowed_names.split(",") if n.strip()
        ),
        insecure_allow_any_client=insecure_allow_any_client,
        ops_address=ops_address,
        leader_elect=leader_elect,
        leader=LeaderSettings(
            namespace=leader_elect_namespace, name=leader_elect_lease_name, identity=who
        ),
        stale_after=stale,
        prometheus_timeout=query_timeout,
        prometheus_concurrency=prometheus_concurrency,
        prometheus_concurrency_per_namespace=prometheus_concurrency_per_namespace,
        prometheus_max_answer_bytes=prometheus_max_answer_bytes,
        tenancy_label=None if no_tenancy else tenancy_label,
        limits=limits,
    )
    logs.configure(log_level)
    try:
        code = app.main(settings)
    except StartupError as exc:
        click.echo(f"gpuscale controller: {exc}", err=True)
        raise SystemExit(1) from None
    raise SystemExit(code)
