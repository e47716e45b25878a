"""Install ``deploy/`` into the e2e control plane as a cluster admin would, and run gpuscale's
processes beside it with the ServiceAccounts it creates.

The overlay applied is ``deploy/overlays/ca-bundle`` (the install without cert-manager), rendered
from a copy of the tree with a CA and serving certificate made here, and applied server-side by
the real kubectl. Three things differ from a cluster, each because this control plane runs no
kubelet and no kube-proxy, and each is a change to the rendered objects, not to ``deploy/``:

- the workloads (controller and scheduler Deployments, node-agent DaemonSet) are scaled to zero:
  their processes run on this machine instead (:class:`GpuscaleProcesses`);
- the ``gpuscale-controller`` Service becomes ``type: ExternalName`` with ``localhost``, so the
  aggregator reaches the local controller on port 443 through the same APIService and Service
  name (a loopback Endpoints address would be refused by validation);
- the second scheduler's KubeSchedulerConfiguration gets the local extender's URL and a
  kubeconfig (``clientConnection``), nothing else.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
import yaml

from tests.cluster.build import binary
from tests.deploy.manifests import write_extender_pems
from tests.e2e.cluster import ControlPlane, Process, free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "gpuscale-system"
CONTROLLER_SA = "gpuscale-controller"
SCHEDULER_SA = "gpuscale-scheduler"
NODE_AGENT_SA = "gpuscale-node-agent"
SERVICE_HOST = f"{CONTROLLER_SA}.{NAMESPACE}.svc"

Obj = dict[str, Any]


def kubectl(cp: ControlPlane, *args: str, input_: str | None = None, timeout: float = 120) -> str:
    """The kubectl built with the control plane, as admin; raises with stderr on failure."""
    out = subprocess.run(
        [str(binary("kubectl")), f"--kubeconfig={cp.admin_kubeconfig}", *args],
        input=input_,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if out.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({out.returncode}):\n{out.stderr}")
    return out.stdout


@dataclass(frozen=True)
class ServingCert:
    """The controller's serving certificate for ``gpuscale-controller.gpuscale-system.svc``."""

    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def cert(self) -> Path:
        return self.dir / "tls.crt"

    @property
    def key(self) -> Path:
        return self.dir / "tls.key"

    @classmethod
    def make(cls, dir: Path) -> ServingCert:
        dir.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        leaf = ca.issue_cert(SERVICE_HOST, f"{CONTROLLER_SA}.{NAMESPACE}", "localhost")
        out = cls(dir)
        ca.cert_pem.write_to_path(str(out.ca))
        leaf.cert_chain_pems[0].write_to_path(str(out.cert))
        leaf.private_key_pem.write_to_path(str(out.key))
        write_extender_pems(dir, ca)
        intruder = ca.issue_cert("intruder", common_name="system:node:intruder")
        intruder.cert_chain_pems[0].write_to_path(str(dir / "intruder.crt"))
        intruder.private_key_pem.write_to_path(str(dir / "intruder.key"))
        return out

    def extender_files(self) -> tuple[Path, ...]:
        """The extender's serving pair and kube-scheduler's client pair (same CA)."""
        names = ("extender.crt", "extender.key", "scheduler-client.crt", "scheduler-client.key")
        return tuple(self.dir / n for n in names)


def render_ca_bundle(cert: ServingCert) -> list[Obj]:
    """``deploy/overlays/ca-bundle`` rendered with ``cert``'s PEM files, as a user would."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "deploy"
        shutil.copytree(REPO / "deploy", tree)
        overlay = tree / "overlays" / "ca-bundle"
        for src in (cert.ca, cert.cert, cert.key, *cert.extender_files()):
            shutil.copy(src, overlay / src.name)
        out = subprocess.run(
            [str(binary("kubectl")), "kustomize", str(overlay)],
            capture_output=True,
            text=True,
            check=False,
        )
    if out.returncode != 0:
        raise AssertionError(f"kubectl kustomize deploy/overlays/ca-bundle:\n{out.stderr}")
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def adapt_for_local_processes(objs: Iterable[Obj]) -> list[Obj]:
    """The three changes of the module doc, on copies."""
    out = []
    for obj in map(copy.deepcopy, objs):
        kind, name = obj["kind"], obj["metadata"]["name"]
        if kind in ("Deployment", "StatefulSet"):
            obj["spec"]["replicas"] = 0
        elif kind == "DaemonSet":
            # No node matches: the DaemonSet stays, its pods never exist.
            spec = obj["spec"]["template"]["spec"]
            spec["nodeSelector"] = {"gpuscale.io/e2e-no-such-node": "true"}
        elif kind == "Service" and name == CONTROLLER_SA:
            obj["spec"] = {
                "type": "ExternalName",
                "externalName": "localhost",
                "ports": [
                    {"name": p["name"], "port": p["port"], "protocol": p.get("protocol", "TCP")}
                    for p in obj["spec"]["ports"]
                ],
            }
        out.append(obj)
    return out


def scheduler_config(objs: Iterable[Obj]) -> Obj:
    """The KubeSchedulerConfiguration that ``deploy/`` ships (from its ConfigMap)."""
    for obj in objs:
        if obj["kind"] == "ConfigMap" and "config.yaml" in obj.get("data", {}):
            config: Obj = yaml.safe_load(obj["data"]["config.yaml"])
            if config.get("kind") == "KubeSchedulerConfiguration":
                return config
    raise AssertionError("deploy/ renders no ConfigMap with a KubeSchedulerConfiguration")


def apply(cp: ControlPlane, objs: Iterable[Obj], *, manager: str = "gpuscale-e2e") -> str:
    """Server-side apply, as admin, waiting for nothing."""
    text = yaml.safe_dump_all(list(objs), sort_keys=False)
    return kubectl(
        cp, "apply", "--server-side", f"--field-manager={manager}", "-f", "-", input_=text
    )


def delete(cp: ControlPlane, objs: Iterable[Obj]) -> None:
    """Delete what a test created (no wait: namespaces finalize in the background)."""
    text = yaml.safe_dump_all(list(objs), sort_keys=False)
    kubectl(cp, "delete", "--ignore-not-found", "--wait=false", "-f", "-", input_=text)


@dataclass
class Installed:
    """What the install left: the rendered objects and credentials for each component."""

    cp: ControlPlane
    objects: list[Obj]
    cert: ServingCert
    kubeconfigs: dict[str, Path] = field(default_factory=dict)

    def kubeconfig(self, service_account: str) -> Path:
        """A kubeconfig with a fresh TokenRequest token of ``service_account`` (cached)."""
        if service_account not in self.kubeconfigs:
            token = self.cp.service_account_token(NAMESPACE, service_account)
            self.kubeconfigs[service_account] = self.cp.write_kubeconfig(service_account, token)
        return self.kubeconfigs[service_account]


def install(cp: ControlPlane) -> Installed:
    cert = ServingCert.make(cp.workdir / "serving")
    rendered = render_ca_bundle(cert)
    apply(cp, adapt_for_local_processes(rendered))
    return Installed(cp, rendered, cert)


def gpuscale_bin() -> str:
    beside = Path(sys.executable).with_name("gpuscale")
    if not beside.exists():
        raise AssertionError(f"{beside} not found: run the e2e tests from the project's venv")
    return str(beside)


def controller_process(
    inst: Installed,
    *,
    name: str,
    prometheus_url: str,
    host: str = "127.0.0.1",
    port: int = 443,
    extra: Iterable[str] = (),
) -> Process:
    """``gpuscale controller`` as the deploy/ Deployment runs it, as its ServiceAccount."""
    ops = free_port()
    argv = [
        gpuscale_bin(),
        "controller",
        f"--kubeconfig={inst.kubeconfig(CONTROLLER_SA)}",
        f"--prometheus-url={prometheus_url}",
        "--actuation=hpa",
        f"--secure-address={host}:{port}",
        f"--tls-cert-file={inst.cert.cert}",
        f"--tls-private-key-file={inst.cert.key}",
        f"--ops-address=127.0.0.1:{ops}",
        "--leader-elect",
        f"--leader-elect-namespace={NAMESPACE}",
        "--leader-elect-lease-name=gpuscale-controller",
        f"--identity={name}",
        "--log-level=info",
        *extra,
    ]
    return Process(name, argv, inst.cp.workdir / f"{name}.log", ports={"ops": ops})


@contextlib.contextmanager
def running_controller(inst: Installed, *, name: str, prometheus_url: str) -> Iterator[Process]:
    """A :func:`controller_process` started and ready (``/readyz``), stopped on exit."""
    proc = controller_process(inst, name=name, prometheus_url=prometheus_url)
    proc.start()
    try:
        wait_http_ok(f"http://127.0.0.1:{proc.ports['ops']}/readyz", within=60, proc=proc)
        yield proc
    finally:
        proc.stop()


def extender_process(inst: Installed, *, port: int, extra: Iterable[str] = ()) -> Process:
    """``gpuscale extender`` as deploy/ runs it: the verbs over mTLS on ``port`` (the extender
    certificate of the install, kube-scheduler's client CA), probes and /metrics on plain
    ``ports["ops"]``."""
    ops = free_port()
    crt, key = inst.cert.dir / "extender.crt", inst.cert.dir / "extender.key"
    argv = [
        gpuscale_bin(),
        "extender",
        f"--address=127.0.0.1:{port}",
        f"--ops-address=127.0.0.1:{ops}",
        f"--tls-cert-file={crt}",
        f"--tls-private-key-file={key}",
        f"--client-ca-file={inst.cert.ca}",
        f"--kubeconfig={inst.kubeconfig(SCHEDULER_SA)}",
        "--log-level=info",
        *extra,
    ]
    return Process(
        "gpuscale-extender",
        argv,
        inst.cp.workdir / "gpuscale-extender.log",
        ports={"verbs": port, "ops": ops, "http": ops},
    )


def scheduler_process(
    inst: Installed,
    *,
    extender_url: str,
    with_extender: bool = True,
    qps: float | None = None,
    dra: bool = False,
) -> Process:
    """kube-scheduler with deploy/'s configuration; only the extender URL, the paths of its
    client certificate files and the kubeconfig (the pod's in-cluster credentials, here a
    TokenRequest token) differ, and the extender is
    not ignorable (see below). ``with_extender=False``
    drops the extender: the same scheduler alone, for the benchmark's baseline. ``qps`` raises
    the scheduler's API client limits (deploy/ keeps kube-scheduler's defaults, 50/s, burst 100)."""
    config = scheduler_config(inst.objects)
    for ext in config.get("extenders", []):
        ext["urlPrefix"] = extender_url
        # deploy/'s mTLS with the files the pod would mount, from this machine's folder.
        tls = ext.get("tlsConfig")
        if tls is not None:
            tls["certFile"] = str(inst.cert.dir / "scheduler-client.crt")
            tls["keyFile"] = str(inst.cert.dir / "scheduler-client.key")
            tls["caFile"] = str(inst.cert.ca)
        # On a loaded 2-core test machine an extender call can pass deploy/'s 5 s: with
        # `ignorable` the scheduler would then bind GPU pods without GPU accounting and the
        # scenario would test nothing. Here a slow call is a retry, never a silent bypass.
        ext["ignorable"] = False
        ext["httpTimeout"] = "30s"
        if dra:  # as deploy/components/dra/kube-scheduler-config.yaml
            ext.pop("managedResources", None)
    if not with_extender:
        # The same pods must fit the same nodes: kube-scheduler alone is told to ignore the
        # memory resource, as the extender's managedResources tell it with the extender.
        ignored = [
            r["name"]
            for ext in config.pop("extenders", [])
            for r in ext.get("managedResources", [])
            if r.get("ignoredByScheduler")
        ]
        for profile in config.get("profiles", []):
            profile.setdefault("pluginConfig", []).append(
                {"name": "NodeResourcesFit", "args": {"ignoredResources": ignored}}
            )
    kubeconfig = inst.kubeconfig(SCHEDULER_SA)
    config["clientConnection"] = {"kubeconfig": str(kubeconfig)}
    if qps is not None:
        config["clientConnection"].update(qps=qps, burst=int(2 * qps))
    port = free_port()
    path = inst.cp.workdir / "kube-scheduler-config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [
        str(binary("kube-scheduler")),
        f"--config={path}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        "--v=2",
    ]
    return Process(
        "kube-scheduler", argv, inst.cp.workdir / "kube-scheduler.log", ports={"secure": port}
    )


def wait_http_ok(url: str, *, within: float, proc: Process) -> None:
    import urllib.request

    def ok() -> bool:
        if not proc.running:
            raise_dead(proc)
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)

    wait_until(f"{proc.name} {url}", ok, within=within, log=proc.log)


def raise_dead(proc: Process) -> None:
    from tests.e2e.cluster import ClusterError

    raise ClusterError(f"{proc.name} exited{proc.tail()}")


def objects_of(objs: Iterable[Obj], kind: str) -> list[Mapping[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


@contextlib.contextmanager
def second_scheduler(inst: Installed, *, dra: bool = False) -> Iterator[tuple[Process, Process]]:
    """deploy/'s second scheduler with its extender, running until the block ends: the
    extender first (ready), then kube-scheduler; stopped in the reverse order. ``dra`` runs
    them as deploy/components/dra does (``--inventory annotation,dra,gfd``, no
    managedResources)."""
    port = free_port()
    extender = extender_process(
        inst, port=port, extra=["--inventory=annotation,dra,gfd"] if dra else ()
    )
    sched = scheduler_process(inst, extender_url=f"https://127.0.0.1:{port}", dra=dra)
    extender.start()
    try:
        wait_http_ok(f"http://127.0.0.1:{extender.ports['ops']}/readyz", within=60, proc=extender)
        sched.start()
        yield extender, sched
    finally:
        sched.stop()
        extender.stop()
