"""A real kubelet node for the e2e control plane: containerd, runc, bridge CNI, kubelet, kube-proxy.

:class:`RealNode` joins :class:`~tests.e2e.cluster.ControlPlane` as node ``real-0`` and runs real
pods from images imported with ``ctr -n k8s.io images import`` (nothing can be pulled). Everything
lives in a work folder of its own (``<control plane workdir>/node``): containerd's config, root,
state and socket; kubelet's root, certificates and pod logs; the CNI config and its IPAM store;
every process's log. Nothing of the system's containerd is touched, and of ``/var/lib/kubelet``
only ``device-plugins/``, which the kubelet places there whatever its root folder (teardown
removes what it left there).

What this machine needs, found by hand (Debian 12, cgroups v1 hybrid, no systemd as PID 1, no
CAP_SYS_RESOURCE): ``cgroupDriver: cgroupfs`` and ``failCgroupV1: false`` for the kubelet, runc
(crun refuses these cgroups), and containerd's ``restrict_oom_score_adj`` (a negative
``oom_score_adj`` is refused; the kubelet logs a warning about its own and carries on).

The node is for CPU work only (the add-on, a CPU workload); kwok's fake nodes keep the GPUs. It
registers with :data:`TAINT` and :data:`LABELS` and advertises no GPU resource, so GPU pods never
land on it; a pod meant for it tolerates the taint (:func:`RealNode.pod_spec` adds that).

Interface, for scenarios that build on it (``conftest.py``'s ``real_node`` fixture):

- ``node.name``, ``node.pod_cidr``, ``node.service_cidr``; :data:`TAINT`, :data:`LABELS`;
- ``node.pod_spec(containers)``: a pod spec pinned to this node, tolerating its taint;
- ``node.import_image(archive)``: import an image archive (OCI or docker-archive) for its pods;
- ``node.device_plugin_dir``, ``node.pod_resources_socket`` (for a device plugin run beside it),
  ``node.forget_device_plugins(resources)`` (back to a node without them, after such a run);
- ``node.gateway`` (the host on the pods' bridge), ``node.relay(port)`` (a host loopback port
  offered to pods at ``node.gateway``: Prometheus), ``node.publish_apiserver()`` (the
  ``kubernetes`` Service answers in pods, for in-cluster clients: the API server listens on
  loopback only, so it is relayed);
- ``node.restart_kubelet()``, ``node.proxy_mode()``, ``node.processes`` (``containerd``,
  ``kubelet``, ``kube-proxy``), ``node.check_alive()``, ``node.stop()`` (tears down containers,
  mounts, network namespaces, the bridge, iptables chains and cgroups, and restores the kernel
  settings the kubelet changed).

One real node per machine at a time (a lock under ``/run/lock``): the bridge, kube-proxy's chains
and the kubelet's cgroups are machine-wide, and teardown removes them.

:func:`unavailable_reason` says why a node cannot run here (not root, Debian packages missing);
the fixture skips with it. A missing kubelet fails instead ("run ``make cluster``").
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.build import COMPONENTS, binary, binary_dir, cache_root, is_built
from tests.cluster.node_images import HTTP, PAUSE, archive
from tests.e2e.cluster import (
    KUBERNETES_SERVICE_IP,
    SERVICE_CIDR,
    ClusterError,
    ControlPlane,
    Process,
    free_port,
    wait_until,
)

NODE_NAME = "real-0"
POD_CIDR = "10.199.0.0/24"
"""The node's pods; private, and clear of kwok's 10.244/16, the Services' 10.96/16 and podman's
default 10.88/16."""
BRIDGE = "gse2e0"
CNI_DIR = Path("/usr/lib/cni")
"""Debian's containernetworking-plugins."""
LABELS: Mapping[str, str] = {"gpuscale.io/e2e-node": "real"}
TAINT: Mapping[str, str] = {
    "key": "gpuscale.io/e2e-real-node",
    "value": "cpu-only",
    "effect": "NoSchedule",
}
TOLERATION: Mapping[str, str] = {"operator": "Equal", **TAINT}
PAUSE_IMAGE = PAUSE.name
HTTP_IMAGE = HTTP.name

# The kubelet sets these when it starts (protectKernelDefaults would make it refuse to start on
# this machine's values instead); the node puts back what it found.
KERNEL_TUNABLES = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
PACKAGES = {
    "containerd": "containerd",
    "containerd-shim-runc-v2": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "iptables": "iptables",
    "ip": "iproute2",
}
KUBE_CHAIN_PREFIX = "KUBE-"
LOCK = Path("/run/lock/gpuscale-e2e-real-node.lock")
DEVICE_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")
"""The kubelet's device plugin folder, the same for every kubelet on a machine (one node runs
at a time: the lock)."""


class NodeUnavailable(RuntimeError):
    """This machine cannot run a real node; the message says why (the fixture skips with it)."""


def unavailable_reason() -> str | None:
    """Why a real node cannot run here, or None: root, and the Debian packages it needs."""
    if os.geteuid() != 0:
        return "a real node needs root (containerd, runc, bridge networking, iptables)"
    missing = sorted({pkg for exe, pkg in PACKAGES.items() if shutil.which(exe) is None})
    if not (CNI_DIR / "bridge").exists() or not (CNI_DIR / "host-local").exists():
        missing.append("containernetworking-plugins")
    if missing:
        return (
            f"a real node needs Debian's {', '.join(missing)}: "
            f"apt-get install {' '.join(missing)} (make e2e installs them)"
        )
    return None


def node_binaries_missing() -> str | None:
    """None when kubelet, kube-proxy and the node images are built; else what to run."""
    node = COMPONENTS["node"]
    missing = [] if is_built(node) else [f"kubelet and kube-proxy ({binary_dir(node)})"]
    missing += [
        str(path) for image in (PAUSE, HTTP) if not (path := archive(cache_root(), image)).exists()
    ]
    if missing:
        return f"real node not built: {', '.join(missing)}; run `make cluster`"
    return None


def keep_node_logs(node: RealNode) -> Path:
    """Copy the node's logs (containerd, kubelet, kube-proxy, pods') out of the work folder,
    which the session removes, and say where."""
    dest = Path(tempfile.mkdtemp(prefix=f"gpuscale-e2e-{node.name}-logs-"))
    for log in node.workdir.glob("*.log"):
        shutil.copy2(log, dest / log.name)
    pod_logs = node.workdir / "pod-logs"
    if pod_logs.is_dir():
        shutil.copytree(pod_logs, dest / "pod-logs", symlinks=False, dirs_exist_ok=True)
    print(f"\nreal node logs kept: {dest}")
    return dest


def archive_image_names(path: Path) -> list[str]:
    """The image names an archive carries: a docker-archive's ``RepoTags``, or an OCI layout's
    ``io.containerd.image.name`` / full ``org.opencontainers.image.ref.name`` annotations."""
    with tarfile.open(path) as tar:
        members = {m.name.removeprefix("./"): m for m in tar.getmembers()}

        def read(name: str) -> Any:
            f = tar.extractfile(members[name])
            assert f is not None
            return json.loads(f.read())

        if "manifest.json" in members:
            return [tag for entry in read("manifest.json") for tag in entry.get("RepoTags") or []]
        if "index.json" in members:
            names = []
            for entry in read("index.json").get("manifests", []):
                notes = entry.get("annotations") or {}
                name = notes.get("io.containerd.image.name") or notes.get(
                    "org.opencontainers.image.ref.name", ""
                )
                if "/" in name or ":" in name:
                    names.append(name)
            return names
    raise ClusterError(f"{path}: neither a docker-archive nor an OCI layout")


def _epoch(stamp: str) -> float:
    """An RFC 3339 API timestamp (``2026-12-05T09:00:00Z``) as seconds since the epoch."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _run(argv: Sequence[str], *, timeout: float = 60, check: bool = True) -> str:
    out = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and out.returncode != 0:
        raise ClusterError(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr.strip()}")
    return out.stdout


class Relay:
    """A TCP relay from ``listen`` (the bridge's host address) to ``127.0.0.1:target``.

    The control plane and the e2e's fixtures (Prometheus) listen on loopback, which a pod's
    network namespace cannot reach; this offers one such port to pods without rebinding it
    on every interface. Two threads per connection: test traffic only."""

    def __init__(self, listen: str, target: int) -> None:
        self.target = target
        self._server = socket.create_server((listen, 0))
        self.address: tuple[str, int] = self._server.getsockname()[:2]
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True, name=f"relay-{target}").start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            threading.Thread(target=self._serve, args=(client, upstream), daemon=True).start()

    @classmethod
    def _serve(cls, client: socket.socket, upstream: socket.socket) -> None:
        """Both directions; a half-close is passed on, and both sockets close once both
        directions have ended (a client's request-then-shutdown still gets its answer)."""
        back = threading.Thread(target=cls._pipe, args=(upstream, client), daemon=True)
        back.start()
        cls._pipe(client, upstream)
        back.join()
        client.close()
        upstream.close()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed.set()
        # shutdown wakes the blocked accept(); close alone would leave the port listening
        # until it returned.
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()


@dataclass
class RealNode:
    """One kubelet node (``real-0``) of ``cp``, with its own containerd; see the module doc."""

    cp: ControlPlane
    workdir: Path
    name: str = NODE_NAME
    pod_cidr: str = POD_CIDR
    service_cidr: str = SERVICE_CIDR
    processes: dict[str, Process] = field(default_factory=dict)
    kubelet_port: int = field(default_factory=free_port)
    kubelet_healthz_port: int = field(default_factory=free_port)
    proxy_healthz_port: int = field(default_factory=free_port)
    proxy_metrics_port: int = field(default_factory=free_port)
    _tunables: dict[str, str] = field(default_factory=dict)
    _lock_fd: int | None = None
    _relays: dict[int, Relay] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)

    # -- paths --------------------------------------------------------------------------------

    @property
    def socket(self) -> Path:
        return self.workdir / "containerd" / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.workdir / "kubelet"

    @property
    def device_plugin_dir(self) -> Path:
        """Where the kubelet serves ``kubelet.sock`` for device plugins and keeps its checkpoint:
        fixed in the kubelet (``pluginapi.DevicePluginPath``), not under ``--root-dir``."""
        return DEVICE_PLUGIN_DIR

    @property
    def pod_resources_socket(self) -> Path:
        return self.kubelet_root / "pod-resources" / "kubelet.sock"

    def log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    # -- what scenarios use -------------------------------------------------------------------

    def pod_spec(self, containers: Iterable[Mapping[str, Any]], **extra: Any) -> dict[str, Any]:
        """A pod spec bound to this node (``nodeName``: the control plane has no default
        scheduler) that tolerates the node's taint."""
        return {
            "nodeName": self.name,
            "tolerations": [dict(TOLERATION)],
            "containers": [dict(c) for c in containers],
            **extra,
        }

    @property
    def gateway(self) -> str:
        """This host's address on the pods' bridge (the CNI's gateway: the CIDR's first)."""
        return str(next(ipaddress.ip_network(self.pod_cidr).hosts()))

    def relay(self, port: int) -> tuple[str, int]:
        """Offer the host's ``127.0.0.1:port`` to pods; returns the (host, port) they dial.
        Relays last as long as the node."""
        if port not in self._relays:
            self._ensure_bridge()
            self._relays[port] = Relay(self.gateway, port)
        return self._relays[port].address

    def publish_apiserver(self) -> None:
        """Make the ``kubernetes`` Service answer in pods, as in-cluster clients expect: an
        EndpointSlice (the control plane keeps none: it advertises loopback) to a relay of
        the API server. Its certificate names the Service's IP."""
        host, port = self.relay(self.cp.apiserver_port)
        status, svc = self.cp.request("GET", "/api/v1/namespaces/default/services/kubernetes")
        if status != 200 or svc["spec"].get("clusterIP") != KUBERNETES_SERVICE_IP:
            raise ClusterError(f"the kubernetes Service is not at {KUBERNETES_SERVICE_IP}: {svc}")
        port_name = svc["spec"]["ports"][0].get("name", "https")
        slice_ = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kubernetes-e2e-relay",
                "namespace": "default",
                "labels": {
                    "kubernetes.io/service-name": "kubernetes",
                    "endpointslice.kubernetes.io/managed-by": "gpuscale-e2e",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [host], "conditions": {"ready": True}}],
            "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        }
        path = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
        self.cp.request("DELETE", f"{path}/kubernetes-e2e-relay")  # a relay of an earlier call
        status, body = self.cp.request("POST", path, slice_)
        if status != 201:
            raise ClusterError(f"EndpointSlice for the kubernetes Service: {status} {body}")

    def _ensure_bridge(self) -> None:
        """The bridge with the gateway address, before any pod made it (the CNI's bridge
        plugin takes it as it finds it); teardown deletes it either way."""
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            return
        prefix = ipaddress.ip_network(self.pod_cidr).prefixlen
        _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        _run(["ip", "addr", "add", f"{self.gateway}/{prefix}", "dev", BRIDGE])
        _run(["ip", "link", "set", BRIDGE, "up"])

    def ctr(self, *args: str, timeout: float = 120) -> str:
        return _run(
            ["ctr", f"--address={self.socket}", "--namespace=k8s.io", *args], timeout=timeout
        )

    def import_image(self, path: Path) -> list[str]:
        """Import an image archive into the CRI's namespace; returns the names it carries."""
        self.ctr("images", "import", "--no-unpack", str(path))
        # Unpacked by the CRI on first use; --no-unpack skips a snapshot the kubelet would redo.
        names = archive_image_names(path)
        missing = sorted(set(names) - set(self.images()))
        if missing:
            raise ClusterError(f"{path}: {missing} not in containerd after the import")
        return names

    def proxy_mode(self) -> str:
        """The mode kube-proxy runs in, as it reports it (``iptables``)."""
        url = f"http://127.0.0.1:{self.proxy_metrics_port}/proxyMode"
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode().strip())

    def images(self) -> list[str]:
        return self.ctr("images", "list", "--quiet").split()

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """containerd, the images, kubelet and kube-proxy; returns once the Node is Ready."""
        reason = unavailable_reason()
        if reason:
            raise NodeUnavailable(reason)
        self._lock()
        self._save_tunables()
        self._start_containerd()
        for image in (PAUSE, HTTP):
            self.import_image(archive(cache_root(), image))
        self._probe_runc()
        self._process("kubelet", self._kubelet_argv()).start()
        wait_until(f"node {self.name} Ready", self._node_ready, within=120, log=self.log("kubelet"))
        self._process("kube-proxy", self._proxy_argv()).start()
        wait_until(
            "kube-proxy /healthz",
            self._proxy_healthy,
            within=60,
            log=self.log("kube-proxy"),
        )

    def restart_kubelet(self) -> None:
        """Stop the kubelet and start it again (containers keep running under containerd)."""
        proc = self.processes["kubelet"]
        proc.stop()
        proc.start()
        wait_until(
            "kubelet /healthz after restart",
            self._kubelet_healthy,
            within=60,
            log=proc.log,
        )

    def forget_device_plugins(self, resources: Iterable[str]) -> None:
        """Leave the node as if no device plugin had ever served ``resources`` (for scenarios
        after one that ran a plugin, which expect a CPU-only node): restart the kubelet without
        its device manager checkpoint, so it registers none of them again, and drop them from
        the Node's status, where the kubelet zeroes but never removes an extended resource.
        Run it once no pod holds those devices."""
        proc = self.processes["kubelet"]
        proc.stop()
        (self.device_plugin_dir / "kubelet_internal_checkpoint").unlink(missing_ok=True)
        restarted = time.time()
        proc.start()
        wait_until("kubelet /healthz after restart", self._kubelet_healthy, within=60, log=proc.log)
        names = sorted(set(resources))
        path = f"/api/v1/nodes/{self.name}/status"

        def gone() -> bool:
            status, node = self.cp.request("GET", f"/api/v1/nodes/{self.name}", timeout=5)
            if status != 200:
                return False
            held = [
                f"/status/{part}/{name.replace('~', '~0').replace('/', '~1')}"
                for part in ("capacity", "allocatable")
                for name in names
                if name in node["status"].get(part, {})
            ]
            if held:
                patch = [{"op": "remove", "path": p} for p in held]
                self.cp.request("PATCH", path, patch, content_type="application/json-patch+json")
                return False
            # The restarted kubelet's first status (after its registration, which zeroes the
            # resources) came and went without them: they stay gone.
            beats = [
                c["lastHeartbeatTime"]
                for c in node["status"].get("conditions", [])
                if c["type"] == "Ready"
            ]
            return bool(beats) and _epoch(beats[0]) > restarted + 2

        wait_until(f"{', '.join(names)} gone from node {self.name}", gone, within=60, log=proc.log)

    def check_alive(self) -> None:
        dead = [p for p in self.processes.values() if p.popen is not None and not p.running]
        if dead:
            raise ClusterError(
                "stopped unexpectedly: " + ", ".join(p.name for p in dead) + dead[0].tail()
            )

    def stop(self) -> None:
        """Tear down everything the node made on this machine, each step independent of the
        last one having worked (a failed start still cleans up)."""
        if self._lock_fd is None:
            return  # never started: the machine-wide state may be another node's
        steps = (
            self._close_relays,
            self._stop_proxy,
            self._stop_kubelet,
            self._remove_containers,
            self._stop_containerd,
            self._kill_shims,
            self._unmount_all,
            self._remove_log_links,
            self._remove_shim_dirs,
            self._remove_device_plugin_files,
            self._delete_bridge,
            self._remove_kube_chains,
            self._remove_cgroups,
            self._restore_tunables,
            self._unlock,
        )
        errors = []
        for step in steps:
            try:
                step()
            except Exception as exc:  # every step runs; all errors are reported
                errors.append(f"{getattr(step, '__name__', 'step')}: {exc}")
        if errors:
            raise ClusterError("node teardown incomplete: " + "; ".join(errors))

    def _lock(self) -> None:
        """One real node per machine: the bridge, kube-proxy's chains and the kubelet's
        cgroups are machine-wide, and teardown removes them all."""
        LOCK.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            raise NodeUnavailable(
                f"another e2e real node runs on this machine (pid {holder or '?'} holds {LOCK})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _close_relays(self) -> None:
        for relay in self._relays.values():
            relay.close()
        self._relays.clear()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    # -- containerd ---------------------------------------------------------------------------

    def _process(self, name: str, argv: list[str]) -> Process:
        proc = Process(name, argv, self.log(name))
        self.processes[name] = proc
        return proc

    def _containerd_config(self) -> Path:
        base = self.workdir / "containerd"
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        runc = f"{cri}.containerd.runtimes.runc"
        lines = [
            "version = 2",
            f'root = "{base / "root"}"',
            f'state = "{base / "state"}"',
            'disabled_plugins = ["io.containerd.snapshotter.v1.aufs", '
            '"io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", '
            '"io.containerd.snapshotter.v1.zfs"]',
            "[grpc]",
            f'  address = "{self.socket}"',
            "[ttrpc]",
            f'  address = "{base / "ttrpc.sock"}"',
            '[plugins."io.containerd.internal.v1.opt"]',
            f'  path = "{base / "opt"}"',
            f"[{cri}]",
            f'  sandbox_image = "{PAUSE_IMAGE}"',
            # No CAP_SYS_RESOURCE here: a negative oom_score_adj is refused, so clamp it.
            "  restrict_oom_score_adj = true",
            # Network namespaces under our state folder, not /var/run/netns.
            "  netns_mounts_under_state_dir = true",
            f"[{cri}.containerd]",
            '  snapshotter = "overlayfs"',
            '  default_runtime_name = "runc"',
            f"[{runc}]",
            '  runtime_type = "io.containerd.runc.v2"',
            f"[{runc}.options]",
            f'  BinaryName = "{shutil.which("runc")}"',
            "  SystemdCgroup = false",
            # runc's state beside ours, not in /run/containerd/runc.
            f'  Root = "{base / "runc"}"',
            f"[{cri}.cni]",
            f'  bin_dir = "{CNI_DIR}"',
            f'  conf_dir = "{self.workdir / "cni"}"',
            "  max_conf_num = 1",
        ]
        path = base / "config.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        return path

    def _cni_config(self) -> None:
        conf = {
            "cniVersion": "1.0.0",
            "name": "gpuscale-e2e",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    # Pods need not reach out; no per-pod NAT rules to clean up.
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.pod_cidr}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.workdir / "cni-ipam"),
                    },
                }
            ],
        }
        path = self.workdir / "cni" / "10-gpuscale-e2e.conflist"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(conf, indent=2))

    def _start_containerd(self) -> None:
        self._cni_config()
        proc = self._process("containerd", ["containerd", f"--config={self._containerd_config()}"])
        proc.start()

        def up() -> bool:
            if not proc.running:
                raise ClusterError(f"containerd exited{proc.tail()}")
            try:
                self.ctr("version", timeout=5)
            except ClusterError:
                return False  # not listening yet (ctr's refusal is a ClusterError: no retry)
            return True

        wait_until("containerd", up, within=30, log=proc.log)

    def _probe_runc(self) -> None:
        """Run one container straight through containerd (the workload image with a bad port:
        it prints its usage and exits 2). If runc cannot run here, say so (skip) before the
        kubelet fails in a less readable way."""
        base = ["ctr", f"--address={self.socket}", "--namespace=gpuscale-probe"]
        _run([*base, "images", "import", str(archive(cache_root(), HTTP))])
        out = subprocess.run(
            [*base, "run", "--rm", "--null-io", HTTP_IMAGE, "probe", "/httpd", "0"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if out.returncode != 2:
            raise NodeUnavailable(
                f"containerd/runc cannot run a container here (exit {out.returncode}): "
                f"{out.stderr.strip()[-400:]}"
            )

    # -- kubelet and kube-proxy ---------------------------------------------------------------

    def _credentials(self, user: str, groups: str | None) -> Path:
        """A kubeconfig with a client certificate from the cluster CA (as kubeadm gives the
        kubelet and kube-proxy), so the Node authorizer sees ``system:node:<name>``."""
        name = user.replace(":", "-")
        # The user is the subject's CN, the groups its O; the SAN only has to be a valid name.
        cert = self.cp.pki.cluster_ca.issue_cert(name, common_name=user, organization_name=groups)
        pem_cert = self.workdir / "pki" / f"{name}.crt"
        pem_key = self.workdir / "pki" / f"{name}.key"
        pem_cert.parent.mkdir(parents=True, exist_ok=True)
        cert.cert_chain_pems[0].write_to_path(str(pem_cert))
        cert.private_key_pem.write_to_path(str(pem_key))
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "e2e",
                    "cluster": {
                        "server": self.cp.server,
                        "certificate-authority": str(self.cp.pki.ca_file),
                    },
                }
            ],
            "users": [
                {
                    "name": name,
                    "user": {"client-certificate": str(pem_cert), "client-key": str(pem_key)},
                }
            ],
            "contexts": [{"name": name, "context": {"cluster": "e2e", "user": name}}],
            "current-context": name,
        }
        path = self.workdir / f"{name}.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        return path

    def _kubelet_argv(self) -> list[str]:
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # This machine: cgroups v1 hybrid, no systemd (see the module doc).
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "address": "127.0.0.1",
            "port": self.kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.kubelet_healthz_port,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.cp.pki.ca_file)},
            },
            "authorization": {"mode": "Webhook"},
            "clusterDomain": "cluster.local",
            "failSwapOn": False,
            # A shared, busy test machine: never evict or collect images for disk or memory.
            "evictionHard": {
                "memory.available": "1Mi",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "registerWithTaints": [dict(TAINT)],
            "podLogsDir": str(self.workdir / "pod-logs"),
            "serializeImagePulls": False,
            "nodeStatusUpdateFrequency": "2s",
        }
        path = self.workdir / "kubelet-config.yaml"
        path.write_text(yaml.safe_dump(config))
        labels = ",".join(f"{k}={v}" for k, v in LABELS.items())
        return [
            str(binary("kubelet")),
            f"--config={path}",
            f"--kubeconfig={self._credentials(f'system:node:{self.name}', 'system:nodes')}",
            f"--root-dir={self.kubelet_root}",
            f"--cert-dir={self.workdir / 'kubelet-pki'}",
            f"--hostname-override={self.name}",
            f"--node-labels={labels}",
            "--v=2",
        ]

    def _proxy_argv(self) -> list[str]:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {
                "kubeconfig": str(self._credentials("system:kube-proxy", None)),
            },
            "hostnameOverride": self.name,
            "clusterCIDR": self.pod_cidr,
            "healthzBindAddress": f"127.0.0.1:{self.proxy_healthz_port}",
            "metricsBindAddress": f"127.0.0.1:{self.proxy_metrics_port}",
            # Leave the host's conntrack sysctls and route_localnet as they are.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            "iptables": {"localhostNodePorts": False, "syncPeriod": "30s", "minSyncPeriod": "0s"},
        }
        path = self.workdir / "kube-proxy-config.yaml"
        path.write_text(yaml.safe_dump(config))
        return [str(binary("kube-proxy")), f"--config={path}", "--v=2"]

    def _node_ready(self) -> bool:
        proc = self.processes["kubelet"]
        if not proc.running:
            raise ClusterError(f"kubelet exited{proc.tail()}")
        status, node = self.cp.request("GET", f"/api/v1/nodes/{self.name}", timeout=5)
        if status != 200:
            return False
        conditions = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
        return conditions.get("Ready") == "True"

    def _kubelet_healthy(self) -> bool:
        return self._healthz("kubelet", self.kubelet_healthz_port)

    def _proxy_healthy(self) -> bool:
        return self._healthz("kube-proxy", self.proxy_healthz_port)

    def _healthz(self, name: str, port: int) -> bool:
        proc = self.processes[name]
        if not proc.running:
            raise ClusterError(f"{name} exited{proc.tail()}")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return bool(r.status == 200)

    # -- teardown -----------------------------------------------------------------------------

    def _stop_process(self, name: str) -> None:
        proc = self.processes.get(name)
        if proc is not None:
            proc.stop(grace=20)

    def _stop_kubelet(self) -> None:
        self._stop_process("kubelet")

    def _stop_containerd(self) -> None:
        self._stop_process("containerd")

    def _stop_proxy(self) -> None:
        self._stop_process("kube-proxy")
        if "kube-proxy" in self.processes:
            # Its own cleanup of every chain and rule it wrote (all modes).
            _run([str(binary("kube-proxy")), "--cleanup", "--v=0"], timeout=60, check=False)

    def _remove_containers(self) -> None:
        """Kill and remove every container and sandbox of every namespace of our containerd."""
        proc = self.processes.get("containerd")
        if proc is None or not proc.running:
            return
        namespaces = _run(
            ["ctr", f"--address={self.socket}", "namespaces", "list", "--quiet"], timeout=30
        ).split()
        for ns in namespaces:
            base = ["ctr", f"--address={self.socket}", f"--namespace={ns}"]
            for task in _run([*base, "tasks", "list", "--quiet"], timeout=30).split():
                _run([*base, "tasks", "kill", "--all", "--signal=SIGKILL", task], check=False)
            deadline = time.monotonic() + 20
            while _run([*base, "tasks", "list", "--quiet"], timeout=30).split():
                for task in _run([*base, "tasks", "list", "--quiet"], timeout=30).split():
                    _run([*base, "tasks", "delete", "--force", task], check=False)
                if time.monotonic() > deadline:
                    raise ClusterError(f"tasks in containerd namespace {ns} would not go")
                time.sleep(0.2)
            for container in _run([*base, "containers", "list", "--quiet"], timeout=30).split():
                _run([*base, "containers", "delete", container], check=False)

    def _kill_shims(self) -> None:
        """Shims started for our containerd (their command line names its socket), if any
        outlived their tasks."""
        marker = str(self.workdir).encode()
        for pid_dir in Path("/proc").iterdir():
            if not pid_dir.name.isdigit():
                continue
            try:
                cmdline = (pid_dir / "cmdline").read_bytes()
            except OSError:
                continue
            if b"containerd-shim" in cmdline and marker in cmdline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid_dir.name), 9)

    def _unmount_all(self) -> None:
        """Every mount under the work folder (overlay roots, shm, netns, pod volumes), deepest
        first; a network namespace goes with its last mount, its veth with it."""
        prefix = str(self.workdir.resolve()) + "/"
        for _ in range(3):
            mounts = [
                line.split()[4]
                for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if line.split()[4].startswith(prefix)
            ]
            if not mounts:
                return
            for mount in sorted(set(mounts), key=lambda m: m.count("/"), reverse=True):
                _run(["umount", "--lazy", mount], check=False)
        raise ClusterError(f"mounts left under {prefix}")

    def _remove_log_links(self) -> None:
        """The kubelet links every container's log into /var/log/containers (a fixed path)."""
        links = Path("/var/log/containers")
        if not links.is_dir():
            return
        prefix = str(self.workdir)
        for link in links.iterdir():
            if link.is_symlink() and os.readlink(link).startswith(prefix):
                link.unlink()

    def _remove_shim_dirs(self) -> None:
        """The shims keep their sockets in /run/containerd/s whatever the config says, and
        ``ctr run`` (the runc probe) runc's state in /run/containerd/runc/<namespace>: remove
        what is left empty (a system containerd's would not be)."""
        for path in (
            Path("/run/containerd/runc/gpuscale-probe"),
            Path("/run/containerd/runc/k8s.io"),
            Path("/run/containerd/runc"),
            Path("/run/containerd/s"),
            Path("/run/containerd"),
        ):
            with contextlib.suppress(OSError):
                path.rmdir()

    def _remove_device_plugin_files(self) -> None:
        """The kubelet's ``kubelet.sock`` and checkpoint in the fixed device plugin folder (and
        any plugin socket left there), then the folders if that left them empty."""
        if DEVICE_PLUGIN_DIR.is_dir():
            for path in DEVICE_PLUGIN_DIR.iterdir():
                if path.is_socket() or path.name == "kubelet_internal_checkpoint":
                    path.unlink()
        for path in (DEVICE_PLUGIN_DIR, DEVICE_PLUGIN_DIR.parent):
            with contextlib.suppress(OSError):
                path.rmdir()

    def _delete_bridge(self) -> None:
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            _run(["ip", "link", "delete", BRIDGE])

    def _remove_kube_chains(self) -> None:
        """What kube-proxy's own cleanup leaves (the kubelet's canary chains): every jump to a
        ``KUBE-`` chain, then those chains, in every table of both families."""
        for tool in ("iptables", "ip6tables"):
            if shutil.which(tool) is None:
                continue
            for table in ("filter", "nat", "mangle"):
                rules = _run([tool, "-t", table, "-S"], check=False).splitlines()
                for rule in rules:
                    parts = rule.split()
                    if parts[:1] == ["-A"] and "-j" in parts:
                        target = parts[parts.index("-j") + 1]
                        if target.startswith(KUBE_CHAIN_PREFIX):
                            _run([tool, "-t", table, "-D", *parts[1:]], check=False)
                chains = [
                    r.split()[1]
                    for r in rules
                    if r.startswith("-N ") and r.split()[1].startswith(KUBE_CHAIN_PREFIX)
                ]
                for chain in chains:
                    _run([tool, "-t", table, "-F", chain], check=False)
                for chain in chains:
                    _run([tool, "-t", table, "-X", chain], check=False)

    def _remove_cgroups(self) -> None:
        """The kubelet's ``kubepods`` cgroups in every hierarchy, leaves first."""
        root = Path("/sys/fs/cgroup")
        for top in root.glob("*/kubepods*"):
            for path in sorted(
                (p for p in top.rglob("*") if p.is_dir()),
                key=lambda p: len(p.parts),
                reverse=True,
            ):
                path.rmdir()
            top.rmdir()

    def _save_tunables(self) -> None:
        for name in KERNEL_TUNABLES:
            path = Path("/proc/sys") / name
            if path.exists():
                self._tunables[name] = path.read_text().strip()

    def _restore_tunables(self) -> None:
        for name, value in self._tunables.items():
            path = Path("/proc/sys") / name
            if path.read_text().strip() != value:
                path.write_text(value)
