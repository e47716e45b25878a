"""A real Kubernetes control plane on loopback, from the binaries ``make cluster`` builds.

:class:`ControlPlane` starts, in a work folder of its own:

- etcd (one member, no fsync: a test cluster loses nothing it needs when the host crashes);
- kube-apiserver with RBAC (``Node,RBAC``), service-account tokens (issuer, signing key) and the
  aggregation layer as a real cluster has it: a front-proxy CA trusted through
  ``--requestheader-client-ca-file`` and a front-proxy client certificate the aggregator presents
  to APIService backends (``--proxy-client-cert-file``). Users authenticate with static tokens:
  ``admin`` (``system:masters``), ``system:kube-controller-manager``, ``system:kube-scheduler``;
  gpuscale's own processes get TokenRequest tokens of their ServiceAccounts instead.
  The watch cache is off, so watches are served by etcd itself: a compaction then makes a real
  ``410 Gone`` for a watch that resumes from an older version.
- kube-controller-manager with the controllers a Deployment + HPA needs (and node lifecycle,
  which lifts the not-ready taint of new nodes), each with its own
  ServiceAccount credentials (``--use-service-account-credentials``), HPA sync every second;
- kwok, which makes the fake nodes it manages Ready and the pods bound to them Running (after a
  short delay, so "bound but not running" is a real state), with the stage files beside this
  module.

kube-scheduler is not part of it: it runs with the KubeSchedulerConfiguration from ``deploy/``
and the gpuscale ServiceAccount's token once ``deploy/`` is installed (see ``conftest.py``).
Every process logs to ``<workdir>/<name>.log``; a failed start raises with the tail of that log.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.cluster.build import binary

HERE = Path(__file__).resolve().parent
KWOK_STAGES = HERE / "kwok-stages.yaml"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
FRONT_PROXY_CN = "front-proxy-client"
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
"""The ``kubernetes`` Service's ClusterIP: the first address of :data:`SERVICE_CIDR`."""
HPA_SYNC = "1s"

# Controllers a Deployment scaled by an HPA needs, and the node lifecycle controller: the API
# server taints every new node `node.kubernetes.io/not-ready` and only that controller lifts it
# once the node is Ready (kwok renews the nodes' Leases, as a kubelet would).
KCM_CONTROLLERS = (
    "horizontal-pod-autoscaler-controller",
    "deployment-controller",
    "replicaset-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "node-lifecycle-controller",
    # A Service's EndpointSlices, which kube-proxy on the real node (node.py) programs.
    "endpointslice-controller",
    # ResourceClaims made from a pod's ResourceClaimTemplates (DRA, test_cluster_dra.py).
    "resourceclaim-controller",
)


class ClusterError(RuntimeError):
    """A component did not start or did not become ready; the message has its log's tail."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(
    what: str, check: Callable[[], bool], *, within: float, log: Path | None = None
) -> None:
    """Poll ``check`` until it holds; past ``within`` seconds raise with ``log``'s tail."""
    deadline = time.monotonic() + within
    while True:
        try:
            if check():
                return
        except ClusterError:
            raise
        except Exception:  # a component that is still coming up refuses or resets connections
            pass
        if time.monotonic() > deadline:
            raise ClusterError(f"{what}: not ready within {within:.0f} s{_tail(log)}")
        time.sleep(0.2)


def _tail(log: Path | None, lines: int = 40) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return f"\n--- {log.name} (last {len(text)} lines) ---\n" + "\n".join(text)


@dataclass
class Process:
    """A started component: its command, its log file and the running ``Popen``."""

    name: str
    argv: list[str]
    log: Path
    env: Mapping[str, str] | None = None
    ports: dict[str, int] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None
    restarts: int = 0

    def start(self) -> None:
        out = self.log.open("ab")
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env} if self.env is not None else None,
                start_new_session=True,
            )
        finally:
            out.close()

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.running:
            assert self.popen is not None
            self.popen.send_signal(sig)

    def stop(self, grace: float = 10.0) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGCONT)
            self.popen.terminate()
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(grace)
        self.popen = None

    def tail(self, lines: int = 40) -> str:
        return _tail(self.log, lines)

    async def keep_running(self, every: float = 0.5) -> None:
        """Start the process again whenever it exits, as a kubelet does for ``restartPolicy:
        Always`` (kube-scheduler exits by design when it loses its leader Lease)."""
        while True:
            if self.popen is not None and not self.running:
                self.restarts += 1
                self.start()
            await asyncio.sleep(every)


@dataclass
class Pki:
    """Every certificate and key the control plane uses, written under ``dir``."""

    dir: Path
    cluster_ca: trustme.CA = field(default_factory=trustme.CA)
    front_proxy_ca: trustme.CA = field(default_factory=trustme.CA)

    def __post_init__(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cluster_ca.cert_pem.write_to_path(str(self.ca_file))
        # 10.96.0.1 is the `kubernetes` Service's ClusterIP (first of SERVICE_CIDR): pods on
        # the real node reach the API server through it (in-cluster config checks the IP).
        serving = self.cluster_ca.issue_cert(
            "127.0.0.1", "localhost", "kubernetes", "kubernetes.default.svc", KUBERNETES_SERVICE_IP
        )
        serving.cert_chain_pems[0].write_to_path(str(self.apiserver_cert))
        serving.private_key_pem.write_to_path(str(self.apiserver_key))
        self.front_proxy_ca.cert_pem.write_to_path(str(self.front_proxy_ca_file))
        client = self.front_proxy_ca.issue_cert(FRONT_PROXY_CN, common_name=FRONT_PROXY_CN)
        client.cert_chain_pems[0].write_to_path(str(self.front_proxy_cert))
        client.private_key_pem.write_to_path(str(self.front_proxy_key))
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.sa_key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        self.sa_pub.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def apiserver_cert(self) -> Path:
        return self.dir / "apiserver.crt"

    @property
    def apiserver_key(self) -> Path:
        return self.dir / "apiserver.key"

    @property
    def front_proxy_ca_file(self) -> Path:
        return self.dir / "front-proxy-ca.crt"

    @property
    def front_proxy_cert(self) -> Path:
        return self.dir / "front-proxy-client.crt"

    @property
    def front_proxy_key(self) -> Path:
        return self.dir / "front-proxy-client.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"


@dataclass
class ControlPlane:
    """etcd, kube-apiserver, kube-controller-manager and kwok on free loopback ports."""

    workdir: Path
    etcd_port: int = field(default_factory=free_port)
    etcd_peer_port: int = field(default_factory=free_port)
    apiserver_port: int = field(default_factory=free_port)
    kcm_port: int = field(default_factory=free_port)
    kwok_port: int = field(default_factory=free_port)
    processes: dict[str, Process] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    apiserver_flags: tuple[str, ...] = ()
    """Extra kube-apiserver flags (the scheduling benchmark turns off node taint admission)."""
    kcm_flags: tuple[str, ...] = ()
    """Extra kube-controller-manager flags."""
    kwok_flags: tuple[str, ...] = ()
    """Extra kwok flags (the scheduling benchmark renews node Leases less often)."""

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pki = Pki(self.workdir / "pki")
        users = {
            "admin": ("admin", "system:masters"),
            "kcm": ("system:kube-controller-manager", ""),
            "scheduler": ("system:kube-scheduler", ""),
        }
        lines = []
        for key, (user, groups) in users.items():
            token = base64.b32encode(os.urandom(20)).decode().lower()
            self.tokens[key] = token
            lines.append(f'{token},{user},{user},"{groups}"')
        self.token_file.write_text("\n".join(lines) + "\n")
        self.admin_kubeconfig = self.write_kubeconfig("admin", self.tokens["admin"])

    # -- paths and clients --------------------------------------------------------------------

    @property
    def token_file(self) -> Path:
        return self.workdir / "tokens.csv"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    def write_kubeconfig(self, name: str, token: str) -> Path:
        """A kubeconfig for ``token`` against this API server, trusting its CA."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "e2e",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority": str(self.pki.ca_file),
                    },
                }
            ],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": name, "context": {"cluster": "e2e", "user": name}}],
            "current-context": name,
        }
        path = self.workdir / f"{name}.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        return path

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.pki.ca_file))

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        content_type: str = "application/json",
        timeout: float = 10.0,
    ) -> tuple[int, Any]:
        """A raw API call (status, decoded JSON or text), as ``token`` (default admin)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token or self.tokens['admin']}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self.ssl_context(), timeout=timeout) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def service_account_token(
        self, namespace: str, name: str, *, seconds: int = 3600, audiences: Sequence[str] = ()
    ) -> str:
        """A TokenRequest token for a ServiceAccount, as a kubelet would mount it."""
        spec: dict[str, Any] = {"expirationSeconds": seconds}
        if audiences:
            spec["audiences"] = list(audiences)
        status, body = self.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        if status != 201:
            raise ClusterError(f"TokenRequest for {namespace}/{name}: {status} {body}")
        token: str = body["status"]["token"]
        return token

    # -- components ---------------------------------------------------------------------------

    def _process(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> Process:
        proc = Process(name, argv, self.workdir / f"{name}.log", env)
        self.processes[name] = proc
        return proc

    def _etcd(self) -> Process:
        return self._process(
            "etcd",
            [
                str(binary("etcd")),
                "--name=e2e",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{self.etcd_peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{self.etcd_peer_port}",
                f"--initial-cluster=e2e=http://127.0.0.1:{self.etcd_peer_port}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )

    def _apiserver(self) -> Process:
        pki = self.pki
        return self._process(
            "kube-apiserver",
            [
                str(binary("kube-apiserver")),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}",
                f"--tls-cert-file={pki.apiserver_cert}",
                f"--tls-private-key-file={pki.apiserver_key}",
                f"--client-ca-file={pki.ca_file}",
                f"--token-auth-file={self.token_file}",
                "--authorization-mode=Node,RBAC",
                "--anonymous-auth=false",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # No kubelet or kube-proxy here: the `kubernetes` Service has no endpoints to
                # keep, and a loopback address would be refused as one anyway.
                "--endpoint-reconciler-type=none",
                # The aggregation layer, as kubeadm configures it.
                f"--requestheader-client-ca-file={pki.front_proxy_ca_file}",
                f"--requestheader-allowed-names={FRONT_PROXY_CN}",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki.front_proxy_cert}",
                f"--proxy-client-key-file={pki.front_proxy_key}",
                # Watches straight from etcd, so a compaction makes a real 410 (see module doc).
                "--watch-cache=false",
                "--etcd-compaction-interval=0",
                # Who wrote what: the HA test reads writers from here (user agent, time).
                f"--audit-policy-file={self._audit_policy()}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-mode=blocking",
                "--profiling=false",
                "--v=1",
                *self.apiserver_flags,
            ],
        )

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    def _audit_policy(self) -> Path:
        """Metadata-level records of writes to what gpuscale writes; nothing else."""
        policy = {
            "apiVersion": "audit.k8s.io/v1",
            "kind": "Policy",
            "omitStages": ["RequestReceived", "ResponseStarted"],
            "rules": [
                {
                    "level": "Metadata",
                    "verbs": ["create", "update", "patch", "delete"],
                    "resources": [
                        {
                            "group": "",
                            "resources": ["configmaps", "events", "pods", "pods/binding"],
                        },
                        {"group": "autoscaling", "resources": ["horizontalpodautoscalers"]},
                        {"group": "coordination.k8s.io", "resources": ["leases"]},
                    ],
                },
                {"level": "None"},
            ],
        }
        path = self.workdir / "audit-policy.yaml"
        path.write_text(yaml.safe_dump(policy))
        return path

    def audit_events(self) -> list[dict[str, Any]]:
        """Every audit record so far (one JSON object per line)."""
        if not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines() if line]

    def _controller_manager(self) -> Process:
        kubeconfig = self.write_kubeconfig("kube-controller-manager", self.tokens["kcm"])
        return self._process(
            "kube-controller-manager",
            [
                str(binary("kube-controller-manager")),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.kcm_port}",
                f"--controllers={','.join(KCM_CONTROLLERS)}",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={self.pki.sa_key}",
                f"--root-ca-file={self.pki.ca_file}",
                f"--horizontal-pod-autoscaler-sync-period={HPA_SYNC}",
                "--leader-elect=false",
                "--v=2",
                *self.kcm_flags,
            ],
        )

    def _kwok(self) -> Process:
        return self._process(
            "kwok",
            [
                str(binary("kwok")),
                f"--kubeconfig={self.admin_kubeconfig}",
                f"--config={KWOK_STAGES}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                f"--server-address=127.0.0.1:{self.kwok_port}",
                "--node-ip=10.244.0.1",
                "--cidr=10.244.0.0/16",
                *self.kwok_flags,
            ],
        )

    # -- life cycle ---------------------------------------------------------------------------

    def _etcd_ready(self) -> bool:
        with urllib.request.urlopen(self.etcd_url + "/health", timeout=2) as r:
            return bool(json.loads(r.read()).get("health") == "true")

    def _apiserver_ready(self) -> bool:
        status, _ = self.request("GET", "/readyz", timeout=2)
        return status == 200

    def start_etcd(self) -> None:
        proc = self.processes.get("etcd") or self._etcd()
        proc.start()
        wait_until("etcd", self._etcd_ready, within=60, log=proc.log)

    def start_apiserver(self) -> None:
        proc = self.processes.get("kube-apiserver") or self._apiserver()
        proc.start()
        wait_until("kube-apiserver /readyz", self._apiserver_ready, within=120, log=proc.log)

    def _healthy(self, name: str, url: str) -> Callable[[], bool]:
        proc = self.processes[name]
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # its self-signed serving cert; we only ask /healthz

        def check() -> bool:
            if not proc.running:
                raise ClusterError(f"{name} exited{proc.tail()}")
            with urllib.request.urlopen(url, timeout=2, context=insecure) as r:
                return bool(r.status == 200)

        return check

    def start(self) -> None:
        self.start_etcd()
        self.start_apiserver()
        for proc in (self._controller_manager(), self._kwok()):
            proc.start()
        kcm = self.processes["kube-controller-manager"]
        kcm_health = self._healthy(
            "kube-controller-manager", f"https://127.0.0.1:{self.kcm_port}/healthz"
        )
        wait_until("kube-controller-manager /healthz", kcm_health, within=60, log=kcm.log)
        kwok = self.processes["kwok"]
        kwok_health = self._healthy("kwok", f"http://127.0.0.1:{self.kwok_port}/healthz")
        wait_until("kwok /healthz", kwok_health, within=60, log=kwok.log)

    def restart_apiserver(self) -> None:
        """Stop kube-apiserver (every watch and connection breaks) and start it again."""
        proc = self.processes["kube-apiserver"]
        proc.stop()
        self.start_apiserver()

    def etcd_revision(self) -> int:
        body = self._etcd_post("/v3/kv/range", {"key": base64.b64encode(b"/").decode()})
        return int(body["header"]["revision"])

    def compact_etcd(self, revision: int | None = None) -> int:
        """Compact etcd's history up to ``revision`` (default: now); returns the revision."""
        rev = self.etcd_revision() if revision is None else revision
        self._etcd_post("/v3/kv/compaction", {"revision": str(rev), "physical": True})
        return rev

    def _etcd_post(self, path: str, body: Mapping[str, Any]) -> Any:
        req = urllib.request.Request(
            self.etcd_url + path, data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        for proc in reversed(list(self.processes.values())):
            proc.stop()

    def check_alive(self) -> None:
        """Raise with the log of any component that died."""
        dead = [p for p in self.processes.values() if p.popen is not None and not p.running]
        if dead:
            raise ClusterError(
                "stopped unexpectedly: " + ", ".join(p.name for p in dead) + dead[0].tail()
            )
