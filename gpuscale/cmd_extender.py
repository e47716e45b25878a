"""``gpuscale extender`` and ``gpuscale node-agent`` (flags as deploy/ uses them)."""

from __future__ import annotations

import os

import click

from gpuscale.connection_flags import connection_limit_options
from runtime.limits import ConnectionLimits

_LOG_LEVEL = click.Choice(["debug", "info", "warning", "error"], case_sensitive=False)


def _fail(command: str, problems: list[str]) -> None:
    for line in problems:
        click.echo(f"gpuscale {command}: {line}", err=True)
    raise SystemExit(1)


@click.command()
@click.option(
    "--address",
    default="0.0.0.0:8888",
    show_default=True,
    help="HOST:PORT for /filter /prioritize /bind (mTLS unless --plain-http-sidecar).",
)
@click.option(
    "--ops-address",
    default="0.0.0.0:8889",
    show_default=True,
    help="HOST:PORT for /livez /readyz /metrics over plain HTTP (kubelet probes, Prometheus).",
)
@click.option("--tls-cert-file", type=click.Path(dir_okay=False), help="Serving certificate (PEM).")
@click.option("--tls-private-key-file", type=click.Path(dir_okay=False), help="Serving key (PEM).")
@click.option(
    "--client-ca-file",
    type=click.Path(dir_okay=False),
    help="CA of kube-scheduler's client certificate; the verbs need a certificate it signed.",
)
@click.option(
    "--allowed-client-names",
    default="system:kube-scheduler",
    show_default=True,
    help="Comma list of certificate names (CN or SAN) that may call the verbs; empty: any the"
    " client CA signed.",
)
@click.option(
    "--plain-http-sidecar",
    is_flag=True,
    default=False,
    help="Serve the verbs over plain HTTP: only with a loopback --address, when the extender"
    " runs in kube-scheduler's pod and nothing else can reach it.",
)
@connection_limit_options
@click.option("--kubeconfig", type=click.Path(dir_okay=False), help="Kubeconfig; else in-cluster.")
@click.option(
    "--scoring",
    type=click.Choice(["binpack", "spread", "fragmentation"]),
    default="binpack",
    show_default=True,
    help="Default GPU scoring; a pod may choose with annotation gpuscale.io/scoring.",
)
@click.option(
    "--inventory",
    default="annotation,gfd",
    show_default=True,
    help=(
        "GPU memory sources in order of preference: comma list of dcgm, annotation, gfd, dra"
        " (ResourceSlices as inventory, allocated ResourceClaims as accounting)."
    ),
)
@click.option("--prometheus-url", default=None, help="Prometheus base URL (for --inventory dcgm).")
@click.option(
    "--dcgm-node-label",
    default="Hostname",
    show_default=True,
    help="DCGM series label that names the node.",
)
@click.option(
    "--stale-after",
    default="1m",
    show_default=True,
    help="Distrust GPU measurements older than this.",
)
@click.option(
    "--stale",
    type=click.Choice(["fail", "accounting"]),
    default="fail",
    show_default=True,
    help="Nodes with stale measurements: fail the filter, or fall back to request accounting.",
)
@click.option(
    "--reservation-ttl",
    default="5m",
    show_default=True,
    help="How long a bound pod's memory stays reserved until measurements or the pod list show it.",
)
@click.option(
    "--full-mode/--no-full-mode",
    default=False,
    show_default=True,
    help="kube-scheduler sends Node objects (nodeCacheCapable: false): accept bodies up to "
    "64 MiB instead of 4 MiB.",
)
@click.option(
    "--per-device-metrics/--no-per-device-metrics",
    default=False,
    show_default=True,
    help="One /metrics series per GPU (node, gpu); off: GPU metrics summed per GPU model.",
)
@click.option("--log-level", type=_LOG_LEVEL, default="info", show_default=True)
def extender(
    address: str,
    ops_address: str,
    tls_cert_file: str | None,
    tls_private_key_file: str | None,
    client_ca_file: str | None,
    allowed_client_names: str,
    plain_http_sidecar: bool,
    limits: ConnectionLimits,
    limit_problems: list[str],
    kubeconfig: str | None,
    scoring: str,
    inventory: str,
    prometheus_url: str | None,
    dcgm_node_label: str,
    stale_after: str,
    stale: str,
    reservation_ttl: str,
    full_mode: bool,
    per_device_metrics: bool,
    log_level: str,
) -> None:
    """Run the kube-scheduler extender: place GPU pods by free GPU memory."""
    from extender.app import ExtenderProcess, run_extender
    from extender.inventory import InventoryConfig
    from gpuscale import logs
    from policies.durations import DurationError, parse_duration
    from runtime.startup import StartupError, parse_address

    problems: list[str] = list(limit_problems)
    durations: dict[str, float] = {}
    for flag, text in (("--stale-after", stale_after), ("--reservation-ttl", reservation_ttl)):
        try:
            durations[flag] = parse_duration(text)
        except DurationError as exc:
            problems.append(f"{flag}: {exc}")
    for flag, value in (("--address", address), ("--ops-address", ops_address)):
        try:
            parse_address(value)
        except StartupError as exc:
            problems.append(f"{flag}: {exc}")
    for flag, path in (
        ("--tls-cert-file", tls_cert_file),
        ("--tls-private-key-file", tls_private_key_file),
        ("--client-ca-file", client_ca_file),
    ):
        if path and not os.path.isfile(path):
            problems.append(f"{flag}: no such file: {path}")
    sources = tuple(s.strip() for s in inventory.split(",") if s.strip())
    config: InventoryConfig | None = None
    try:
        config = InventoryConfig(
            sources=sources,
            stale_after=durations.get("--stale-after", 60.0),
            stale_mode="accounting" if stale == "accounting" else "fail",
        )
    except ValueError as exc:
        problems.append(f"--inventory/--stale-after: {exc}")
    if "dcgm" in sources and not prometheus_url:
        problems.append("--inventory dcgm needs --prometheus-url")
    if prometheus_url and not prometheus_url.startswith(("http://", "https://")):
        problems.append(f"--prometheus-url: expected an http(s) URL, got {prometheus_url!r}")
    if kubeconfig and not os.path.isfile(kubeconfig):
        problems.append(f"--kubeconfig: no such file: {kubeconfig}")
    if problems or config is None:
        _fail("extender", problems)
        return
    logs.configure(log_level)
    settings = ExtenderProcess(
        address=address,
        kubeconfig=kubeconfig,
        scoring=scoring,
        inventory=config,
        prometheus_url=prometheus_url,
        dcgm_node_label=dcgm_node_label,
        reservation_ttl=durations["--reservation-ttl"],
        tls_cert_file=tls_cert_file,
        tls_private_key_file=tls_private_key_file,
        client_ca_file=client_ca_file,
        allowed_client_names=tuple(n.strip() for n in allowed_client_names.split(",") if n.strip()),
        plain_http_sidecar=plain_http_sidecar,
        ops_address=ops_address,
        limits=limits,
        full_mode=full_mode,
        per_device_metrics=per_device_metrics,
    )
    try:
        code = run_extender(settings)
    except StartupError as exc:
        _fail("extender", [str(exc)])
        return
    raise SystemExit(code)


@click.command(name="node-agent")
@click.option(
    "--node-name",
    envvar=["GPUSCALE_NODE_AGENT_NODE_NAME", "NODE_NAME"],
    required=True,
    help="This node's name (env NODE_NAME works too, e.g. from the downward API).",
)
@click.option(
    "--interval", default="10s", show_default=True, help="How often to read NVML and publish."
)
@click.option(
    "--address",
    default="0.0.0.0:8890",
    show_default=True,
    help="HOST:PORT for /livez /readyz /metrics.",
)
@click.option(
    "--stale-after",
    default="1m",
    show_default=True,
    help="Not ready when the last NVML read or annotation publish is older than this "
    "(match the extender's --stale-after); not live when no tick ended for this long.",
)
@click.option("--kubeconfig", type=click.Path(dir_okay=False), help="Kubeconfig; else in-cluster.")
@click.option("--log-level", type=_LOG_LEVEL, default="info", show_default=True)
@click.option(
    "--device-plugin/--no-device-plugin",
    default=False,
    show_default=True,
    help="Also serve the kubelet device plugin for nvidia.com/gpu that hands each pod the GPUs"
    " in its gpuscale.io/gpu-indices annotation. Not with NVIDIA's device plugin on this node.",
)
@click.option(
    "--device-plugin-dir",
    default="/var/lib/kubelet/device-plugins",
    show_default=True,
    help="The kubelet's device plugin directory (kubelet.sock, checkpoint).",
)
@click.option(
    "--device-plugin-shares",
    default=16,
    show_default=True,
    type=int,
    help="Device IDs advertised per GPU: how many pods may share one (memory is the real bound).",
)
@click.option(
    "--pod-resources-socket",
    default="/var/lib/kubelet/pod-resources/kubelet.sock",
    show_default=True,
    help="The kubelet's PodResources API (tells apart pods waiting side by side); empty: none.",
)
@click.option(
    "--device-plugin-device-specs/--no-device-plugin-device-specs",
    default=False,
    show_default=True,
    help="Also hand out /dev/nvidia<N> (without the NVIDIA container runtime).",
)
@click.option(
    "--device-plugin-cdi/--no-device-plugin-cdi",
    default=False,
    show_default=True,
    help="Also hand out CDI names nvidia.com/gpu=<uuid> (with nvidia-ctk's CDI spec).",
)
@click.option(
    "--fake-inventory",
    type=click.Path(dir_okay=False),
    default=None,
    help="Read GPUs from this JSON file instead of NVML (tests, nodes without NVIDIA runtime):"
    ' [{"index": 0, "uuid": "GPU-…", "model": "…", "totalMiB": 81920, "usedMiB": 0}].',
)
@connection_limit_options
def node_agent(
    node_name: str,
    interval: str,
    address: str,
    stale_after: str,
    kubeconfig: str | None,
    log_level: str,
    device_plugin: bool,
    device_plugin_dir: str,
    device_plugin_shares: int,
    pod_resources_socket: str,
    device_plugin_device_specs: bool,
    device_plugin_cdi: bool,
    fake_inventory: str | None,
    limits: ConnectionLimits,
    limit_problems: list[str],
) -> None:
    """Publish this node's per-GPU memory (NVML) in the annotation gpuscale.io/gpus.

    Serves /livez, /readyz and /metrics on --address for the kubelet's probes and Prometheus.
    With --device-plugin, also the kubelet device plugin (extender/README.md, "From score to
    container").
    """
    import asyncio

    from extender.app import serve_node_agent
    from extender.node_agent import NoNvml
    from gpuscale import logs
    from policies.durations import DurationError, parse_duration
    from runtime.startup import StartupError, parse_address

    problems: list[str] = list(limit_problems)
    durations: dict[str, float] = {}
    for flag, text in (("--interval", interval), ("--stale-after", stale_after)):
        try:
            durations[flag] = parse_duration(text)
        except DurationError as exc:
            problems.append(f"{flag}: {exc}")
            continue
        if durations[flag] <= 0:
            problems.append(f"{flag}: must be positive, got {text!r}")
    seconds, bound = durations.get("--interval", 0.0), durations.get("--stale-after", 0.0)
    if seconds > 0 and bound > 0 and bound <= seconds:
        problems.append(
            f"--stale-after ({stale_after}) must be longer than --interval ({interval})"
        )
    try:
        parse_address(address)
    except StartupError as exc:
        problems.append(f"--address: {exc}")
    if kubeconfig and not os.path.isfile(kubeconfig):
        problems.append(f"--kubeconfig: no such file: {kubeconfig}")
    plugin = None
    if device_plugin:
        from extender.device_plugin.server import PluginSettings

        try:
            plugin = PluginSettings(
                node=node_name,
                directory=device_plugin_dir,
                shares=device_plugin_shares,
                pod_resources_socket=pod_resources_socket or None,
                device_specs=device_plugin_device_specs,
                cdi=device_plugin_cdi,
            )
        except ValueError as exc:
            problems.append(f"--device-plugin: {exc}")
        if not os.path.isdir(device_plugin_dir):
            problems.append(f"--device-plugin-dir: no such directory: {device_plugin_dir}")
    nvml = None
    if fake_inventory is not None:
        from extender.device_plugin.devices import FakeNvml, InventoryFileError

        try:
            nvml = FakeNvml(fake_inventory)
            nvml.nvmlInit()
        except (OSError, InventoryFileError) as exc:
            problems.append(f"--fake-inventory: {fake_inventory}: {exc}")
    if problems:
        _fail("node-agent", problems)
    logs.configure(log_level)
    try:
        asyncio.run(
            serve_node_agent(
                node_name,
                interval=seconds,
                kubeconfig=kubeconfig,
                address=address,
                stale_after=bound,
                limits=limits,
                nvml=nvml,
                device_plugin=plugin,
            )
        )
    except (NoNvml, StartupError) as exc:
        _fail("node-agent", [str(exc)])
