"""What DRA costs the extender (issue 25), in process, on the cluster of ``bench_extender.py``.

Every node also publishes its 8 GPUs in a ResourceSlice (uuids matching its NVML annotation), and
a quarter of them carry allocated claims. Reports, each beside a same-run baseline:

1. filter + prioritize per pod over 10% of the nodes (what kube-scheduler sends at 5,000) and
   over all of them: a pod without GPUs (what dropping ``managedResources`` adds: every pod of
   the profile reaches the extender), a device-plugin GPU pod (the baseline), a DRA pod with a
   memory-share claim, and one whose claim has an attribute selector;
2. applying a ResourceSlice and a ResourceClaim watch event, and the first list of all slices.

``python benchmarks/bench_dra.py`` (``--nodes``/``--pods``/``--rounds`` to resize).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from benchmarks.bench_extender import NOW, build_cluster
from extender.cluster_state import ClusterState
from extender.decode import node_from_json, pod_from_json
from extender.dra import claim_from_json, device_class_from_json, slice_from_json
from extender.inventory import InventoryConfig
from extender.server import Extender
from tests.support.dra_objects import allocated_claim, claim_spec, device_class, gpu_device
from tests.support.dra_objects import resource_slice as slice_json


def _slice(node: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    name = node["metadata"]["name"]
    i = int(name.removeprefix("node-"))
    mib = int(node["metadata"]["labels"]["nvidia.com/gpu.memory"])
    product = node["metadata"]["labels"]["nvidia.com/gpu.product"]
    devices = [
        gpu_device(d, uuid=f"GPU-{i:05d}-{d}", product=product, memory_mib=mib, shared=True)
        for d in range(8)
    ]
    return slice_json(name, devices, generation=generation)


def _pod(kind: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": "c", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}],
        "tolerations": [{"operator": "Exists"}],
    }
    pod: dict[str, Any] = {
        "metadata": {"name": f"new-{kind}", "namespace": "bench", "uid": f"uid-{kind}"},
        "spec": spec,
        "status": {},
    }
    if kind == "gpu":
        spec["containers"][0]["resources"]["limits"] = {
            "nvidia.com/gpu": "1",
            "gpuscale.io/gpu-memory": "16384",
        }
    elif kind in ("dra", "dra-selector"):
        spec["resourceClaims"] = [{"name": "gpu", "resourceClaimTemplateName": "t"}]
        pod["status"]["resourceClaimStatuses"] = [{"name": "gpu", "resourceClaimName": kind}]
    return pod


def _time(fn: Callable[[], object], rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def _fmt(xs: list[float]) -> str:
    xs = sorted(xs)
    p99 = xs[min(len(xs) - 1, math.ceil(0.99 * len(xs)) - 1)]  # nearest rank
    return f"p50 {statistics.median(xs):7.2f} ms  p99 {p99:7.2f} ms"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--pods", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=50)
    args = ap.parse_args(argv)
    print(f"load average before: {os.getloadavg()}")
    nodes_json, pods_json = build_cluster(args.nodes, args.pods, seed=7)
    nodes = [node_from_json(n) for n in nodes_json]
    pods = [pod_from_json(p) for p in pods_json]
    names = [n.name for n in nodes]
    rng = random.Random(3)

    def state_for(sources: tuple[str, ...]) -> ClusterState:
        state = ClusterState(InventoryConfig(sources))
        state.replace_nodes(nodes)
        state.replace_pods(pods)
        return state

    plain = state_for(("annotation", "gfd"))
    dra = state_for(("annotation", "dra", "gfd"))
    slices = [slice_from_json(_slice(n)) for n in nodes_json]
    t = time.perf_counter()
    dra.replace_slices(slices)
    first_list_ms = (time.perf_counter() - t) * 1000
    dra.dra.classes["gpu.nvidia.com"] = device_class_from_json(device_class())
    claims = [
        claim_from_json(
            allocated_claim("bench", f"held-{i}", names[i], [(f"gpu-{rng.randrange(8)}", "8Gi")])
        )
        for i in range(0, len(names), 4)
    ]
    dra.replace_claims(claims)
    dra.upsert_claim(
        claim_from_json(
            {"metadata": {"namespace": "bench", "name": "dra"}, "spec": claim_spec(memory="16Gi")}
        )
    )
    selector = "device.attributes['gpu.nvidia.com'].productName == 'NVIDIA-H100-80GB-HBM3'"
    dra.upsert_claim(
        claim_from_json(
            {
                "metadata": {"namespace": "bench", "name": "dra-selector"},
                "spec": claim_spec(memory="16Gi", selectors=[selector]),
            }
        )
    )
    sample = names[:: max(1, len(names) // max(1, len(names) // 10))][: max(1, len(names) // 10)]
    print(
        f"{len(names)} nodes, {len(pods)} pods; requests name {len(sample)} or {len(names)} nodes"
    )
    rows = []
    for label, state, kind in (
        ("device-plugin GPU pod, no DRA (baseline)", plain, "gpu"),
        ("device-plugin GPU pod, --inventory dra", dra, "gpu"),
        ("pod without GPUs (sent once managedResources goes)", dra, "none"),
        ("DRA pod, 16 GiB share claim", dra, "dra"),
        ("DRA pod, share + productName selector", dra, "dra-selector"),
    ):
        ext = Extender(state)
        pod = _pod(kind)
        for subset in (sample, names):
            body = {"Pod": pod, "NodeNames": subset}
            ext.filter(body, NOW)  # warm: index built, shape learned
            ext.prioritize(body, NOW)

            def one(b: dict[str, Any] = body, e: Extender = ext) -> None:
                e.filter(b, NOW)
                e.prioritize(b, NOW)

            times = _time(one, args.rounds)
            passed = len(ext.filter(body, NOW)["NodeNames"])
            rows.append((label, len(subset), _fmt(times), passed))
    for label, n, stats, passed in rows:
        print(f"{label:55s} {n:5d} nodes  {stats}  ({passed} pass)")
    k = 0

    def slice_event() -> None:
        nonlocal k
        k += 1
        dra.upsert_slice(slice_from_json(_slice(nodes_json[k % len(nodes_json)], generation=1 + k)))
        dra.index(NOW)

    def claim_event() -> None:
        nonlocal k
        k += 1
        c = allocated_claim("bench", f"ev-{k}", names[k % len(names)], [("gpu-0", "1Gi")])
        dra.upsert_claim(claim_from_json(c))
        dra.index(NOW)

    print(f"first list of {len(slices)} slices into the state: {first_list_ms:.0f} ms")
    print(f"ResourceSlice event (+ index refresh): {_fmt(_time(slice_event, args.rounds))}")
    print(f"ResourceClaim event (+ index refresh): {_fmt(_time(claim_event, args.rounds))}")
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
