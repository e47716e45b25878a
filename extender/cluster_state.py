"""The extender's in-memory picture of the cluster: a :class:`~extender.filtering.ClusterView`
kept up to date by watch events, DCGM polls and reservations.

No I/O and no clock: callers pass ``now``. Per-node GPU state is cached and recomputed only when
something on that node changes (node object, its pods, its reservations, its DCGM report) or when
its measurement turns stale.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from extender.dra import (
    Check,
    ClaimTemplate,
    DeviceClass,
    DeviceKey,
    DraDevice,
    DraNeed,
    DraNode,
    ResourceClaim,
    ResourceSlice,
    claim_need,
    device_indices,
    device_misfit,
    matches,
    pool_devices,
    taken_by_claims,
)
from extender.fit import NodeGpus
from extender.index import NodeIndex
from extender.inventory import RUNNING, InventoryConfig, baseline_used, node_gpus
from extender.objects import GpuDevice, GpuReport, NodeInfo, PodRequest
from extender.reservations import EMPTY, Book, Reservation, expire, measured
from extender.state_memo import StateMemo

PoolKey = tuple[str, str]


@dataclass(slots=True)
class _Dra:
    """DRA objects, and the devices of complete pools kept per pool and per node so that a
    slice event recounts its own pool only (5,000 nodes are 5,000 pools)."""

    slices: dict[str, ResourceSlice] = field(default_factory=dict)
    classes: dict[str, DeviceClass] = field(default_factory=dict)
    claims: dict[str, ResourceClaim] = field(default_factory=dict)
    templates: dict[str, ClaimTemplate] = field(default_factory=dict)
    by_pool: dict[PoolKey, dict[str, ResourceSlice]] = field(default_factory=dict)
    pool_nodes: dict[PoolKey, Mapping[str, tuple[DraDevice, ...]]] = field(default_factory=dict)
    node_pools: dict[str, set[PoolKey]] = field(default_factory=dict)
    by_node: dict[str, tuple[DraDevice, ...]] = field(default_factory=dict)
    incomplete: dict[PoolKey, str] = field(default_factory=dict)
    """Pools left out, and why (newest generation not all seen)."""
    device_node: dict[DeviceKey, str] = field(default_factory=dict)
    claims_by_device: dict[DeviceKey, set[str]] = field(default_factory=dict)
    rows_memo: dict[str, tuple[NodeGpus, dict[DeviceKey, int]]] = field(default_factory=dict)
    match_memo: dict[tuple[str, int], tuple[tuple[DraDevice, ...], int]] = field(
        default_factory=dict
    )
    check_ids: dict[tuple[Check, ...], int] = field(default_factory=dict)
    decided: dict[tuple[int, ...], set[str]] = field(default_factory=dict)
    """Per set of check ids, the nodes whose every GPU is published and passes them: the
    shared fit decides those alone (a node leaves every set when anything on it changes)."""


@dataclass(slots=True)
class _Cached:
    gpus: NodeGpus | str
    valid_until: float


class ClusterState:
    """Nodes, bound pods, DCGM reports and reservations, with per-node GPU state cached."""

    def __init__(self, config: InventoryConfig | None = None) -> None:
        self.config = config or InventoryConfig()
        self.nodes: dict[str, NodeInfo] = {}
        self.pods: dict[str, PodRequest] = {}
        self.pods_by_node: dict[str, dict[str, PodRequest]] = {}
        self.dcgm: dict[str, GpuReport] = {}
        self.reservations: Book = EMPTY
        self._requested: dict[str, tuple[int, int]] = {}
        self._gpus: dict[str, _Cached] = {}
        self._index: NodeIndex | None = None
        self.memo = StateMemo()
        """Node states and their scores, kept across index rebuilds (nodes added or deleted)."""
        self._rebuild = True
        self._relabelled: set[str] = set()
        """Nodes whose labels or taints changed since the index last saw them."""
        self._dirty: set[str] = set()
        self._pending = 0
        """GPU pods not bound yet, kept as pods come and go (a scrape reads it)."""
        self.dra = _Dra()
        """ResourceSlices, claims, templates and classes (``--inventory dra``)."""

    # ---- ClusterView -------------------------------------------------------------------
    def node(self, name: str) -> NodeInfo | None:
        return self.nodes.get(name)

    def gpus(self, name: str, now: float) -> NodeGpus | str:
        cached = self._gpus.get(name)
        if cached is not None and now <= cached.valid_until:
            return cached.gpus
        return self._compute(name, self.nodes[name], now)

    def requested(self, name: str) -> tuple[int, int]:
        return self._requested.get(name, (0, 0))

    # ---- computing -----------------------------------------------------------------------
    def _compute(self, name: str, node: NodeInfo, now: float) -> NodeGpus | str:
        result = node_gpus(
            node,
            config=self.config,
            now=now,
            dcgm=self.dcgm.get(name),
            pods=self.pods_by_node.get(name, {}).values(),
            reservations=[r for r in self.reservations.values() if r.node == name],
            dra=self._dra_node(name) if "dra" in self.config.sources else None,
        )
        self._gpus[name] = _Cached(result, self._valid_until(node, name))
        return result

    def _valid_until(self, node: NodeInfo, name: str) -> float:
        """When a cached result may change by time alone: a measurement turning stale."""
        times = [r.time for r in (node.gpu_report, self.dcgm.get(name)) if r is not None]
        if not times:
            return math.inf
        return max(times) + self.config.stale_after

    def _touch(self, name: str) -> None:
        self._gpus.pop(name, None)
        self._dirty.add(name)
        for decided in self.dra.decided.values():
            decided.discard(name)

    def index(self, now: float) -> NodeIndex:
        """The columnar index over the current nodes (see :mod:`extender.index`), brought up to
        date: rebuilt when nodes came or went, and otherwise row by row: nodes whose labels or
        taints changed move to their class, and rows are refreshed for nodes whose GPUs, pods or
        reservations changed."""
        if self._index is None or self._rebuild:
            self._index = NodeIndex(
                [self.nodes[n] for n in sorted(self.nodes)],
                gpus_of=self.gpus,
                requested=self.requested,
                valid_until=self._valid_until_of,
                now=now,
                memo=self.memo,
                previous=self._index,
            )
            self._rebuild = False
            self._relabelled.clear()
            self._dirty.clear()
            return self._index
        index = self._index
        if self._dirty:
            for name in self._dirty:
                i = index.pos.get(name)
                if i is not None:
                    if name in self._relabelled:
                        index.reclassify_node(i, self.nodes[name])
                    else:
                        index.update_node(i, self.nodes[name])
                    index.refresh_row(i, now)
            self._dirty.clear()
            self._relabelled.clear()
        return index

    def _valid_until_of(self, name: str) -> float:
        cached = self._gpus.get(name)
        return cached.valid_until if cached is not None else -math.inf

    # ---- updates -------------------------------------------------------------------------
    def upsert_node(self, node: NodeInfo) -> None:
        old = self.nodes.get(node.name)
        if old is node:
            return
        if old is None:
            self._rebuild = True
        elif old.labels != node.labels or old.taints != node.taints:
            self._relabelled.add(node.name)
        self.nodes[node.name] = node
        self._touch(node.name)
        if node.gpu_report is not None:
            self._settle_measured(node.name, node.gpu_report)

    def delete_node(self, name: str) -> None:
        if self.nodes.pop(name, None) is not None:
            self._rebuild = True
        self._gpus.pop(name, None)

    def replace_nodes(self, nodes: Iterable[NodeInfo]) -> None:
        """After a relist: exactly these nodes."""
        fresh = {n.name: n for n in nodes}
        for name in list(self.nodes):
            if name not in fresh:
                self.delete_node(name)
        for n in fresh.values():
            if self.nodes.get(n.name) != n:
                self.upsert_node(n)

    def upsert_pod(self, pod: PodRequest) -> None:
        old = self.pods.get(pod.key)
        if old is not None and old.node_name:
            self._unindex(old)
        if old is not None:
            self._pending -= _pending(old)
        if pod.terminated:
            self.pods.pop(pod.key, None)
        else:
            self.pods[pod.key] = pod
            self._pending += _pending(pod)
            if pod.node_name:
                self.pods_by_node.setdefault(pod.node_name, {})[pod.key] = pod
                cpu, mem = self._requested.get(pod.node_name, (0, 0))
                self._requested[pod.node_name] = (cpu + pod.milli_cpu, mem + pod.memory)
                self._touch(pod.node_name)
        if pod.node_name and pod.key in self.reservations:
            self.release(pod.key)

    def _unindex(self, pod: PodRequest) -> None:
        on_node = self.pods_by_node.get(pod.node_name, {})
        if on_node.pop(pod.key, None) is not None:
            cpu, mem = self._requested.get(pod.node_name, (0, 0))
            self._requested[pod.node_name] = (cpu - pod.milli_cpu, mem - pod.memory)
        self._touch(pod.node_name)

    def delete_pod(self, key: str) -> None:
        old = self.pods.pop(key, None)
        if old is not None:
            self._pending -= _pending(old)
        if old is not None and old.node_name:
            self._unindex(old)
        self.release(key)

    def replace_pods(self, pods: Iterable[PodRequest]) -> None:
        """After a relist: exactly these pods."""
        fresh = {p.key: p for p in pods}
        for key in list(self.pods):
            if key not in fresh:
                self.delete_pod(key)
        for p in fresh.values():
            if self.pods.get(p.key) != p:
                self.upsert_pod(p)

    def set_dcgm(self, reports: Mapping[str, GpuReport]) -> None:
        for name in self.dcgm.keys() | reports.keys():
            self._touch(name)
        self.dcgm = dict(reports)
        for name, report in reports.items():
            self._settle_measured(name, report)

    # ---- reservations --------------------------------------------------------------------
    def reserve(
        self, pod: PodRequest, node: str, indices: tuple[int, ...], now: float, ttl: float
    ) -> Reservation:
        assert pod.gpu is not None
        info = self.nodes.get(node)
        baseline = (
            baseline_used(info, self.dcgm.get(node), indices, self.config, now)
            if info is not None
            else None
        )
        r = Reservation(
            pod.key, pod.uid, node, indices, pod.gpu.mib_per_gpu, now, now + ttl, baseline
        )
        old = self.reservations.get(pod.key)
        if old is not None:
            self._touch(old.node)
        self.reservations = {**self.reservations, pod.key: r}
        self._touch(node)
        return r

    def release(self, key: str) -> None:
        old = self.reservations.get(key)
        if old is None:
            return
        self.reservations = {k: v for k, v in self.reservations.items() if k != key}
        self._touch(old.node)

    def expire(self, now: float) -> int:
        """Drop reservations past their TTL; returns how many were dropped."""
        kept = expire(self.reservations, now)
        dropped = [r for k, r in self.reservations.items() if k not in kept]
        for r in dropped:
            self._touch(r.node)
        self.reservations = kept
        return len(dropped)

    def _settle_measured(self, node: str, report: GpuReport) -> None:
        for key, r in list(self.reservations.items()):
            if r.node == node and measured(r, report):
                self.release(key)

    def pending_gpu_pods(self) -> int:
        return self._pending

    # ---- DRA -------------------------------------------------------------------------------
    def _dra_node(self, name: str) -> DraNode:
        devices = self.dra.by_node.get(name, ())
        if not devices:
            return DraNode()
        keys = set().union(*(self.dra.claims_by_device.get(d.key, set()) for d in devices))
        claims = [self.dra.claims[k] for k in sorted(keys)]
        running = [p.key for p in self.pods_by_node.get(name, {}).values() if p.phase == RUNNING]
        return DraNode(devices, taken_by_claims(devices, claims, running))

    def _claim_touches(self, claim: ResourceClaim) -> None:
        for r in claim.results:
            node = self.dra.device_node.get(r.key)
            if node is not None:
                self._touch(node)

    def _repool(self, key: PoolKey) -> None:
        """Recount one pool after one of its slices changed; nodes whose devices changed are
        touched (their GPU state is computed again)."""
        old = self.dra.pool_nodes.pop(key, {})
        counted = pool_devices(self.dra.by_pool.get(key, {}).values())
        self.dra.incomplete.pop(key, None)
        self.dra.incomplete.update(counted.incomplete)
        if counted.by_node:
            self.dra.pool_nodes[key] = counted.by_node
        for node in old.keys() | counted.by_node.keys():
            pools = self.dra.node_pools.setdefault(node, set())
            if node in counted.by_node:
                pools.add(key)
            else:
                pools.discard(key)
            merged = tuple(d for k in sorted(pools) for d in self.dra.pool_nodes[k].get(node, ()))
            before = self.dra.by_node.get(node, ())
            if merged == before:
                continue
            for d in before:
                self.dra.device_node.pop(d.key, None)
            for d in merged:
                self.dra.device_node[d.key] = node
            if merged:
                self.dra.by_node[node] = merged
            else:
                self.dra.by_node.pop(node, None)
                self.dra.node_pools.pop(node, None)
            self._touch(node)

    def upsert_slice(self, s: ResourceSlice) -> None:
        old = self.dra.slices.get(s.name)
        if old == s:
            return
        self.dra.slices[s.name] = s
        if old is not None and (old.driver, old.pool) != (s.driver, s.pool):
            self._drop_slice(old)
        self.dra.by_pool.setdefault((s.driver, s.pool), {})[s.name] = s
        self._repool((s.driver, s.pool))

    def _drop_slice(self, s: ResourceSlice) -> None:
        key = (s.driver, s.pool)
        group = self.dra.by_pool.get(key, {})
        group.pop(s.name, None)
        if not group:
            self.dra.by_pool.pop(key, None)
        self._repool(key)

    def delete_slice(self, name: str) -> None:
        old = self.dra.slices.pop(name, None)
        if old is not None:
            self._drop_slice(old)

    def replace_slices(self, slices: Iterable[ResourceSlice]) -> None:
        """After a relist: exactly these slices."""
        fresh = {s.name: s for s in slices}
        for name in list(self.dra.slices):
            if name not in fresh:
                self.delete_slice(name)
        for s in fresh.values():
            self.upsert_slice(s)

    def upsert_claim(self, claim: ResourceClaim) -> None:
        old = self.dra.claims.get(claim.key)
        if old == claim:
            return
        if old is not None:
            self.delete_claim(old.key)
        self.dra.claims[claim.key] = claim
        for r in claim.results:
            self.dra.claims_by_device.setdefault(r.key, set()).add(claim.key)
        self._claim_touches(claim)

    def delete_claim(self, key: str) -> None:
        old = self.dra.claims.pop(key, None)
        if old is None:
            return
        for r in old.results:
            holders = self.dra.claims_by_device.get(r.key)
            if holders is not None:
                holders.discard(key)
                if not holders:
                    del self.dra.claims_by_device[r.key]
        self._claim_touches(old)

    def replace_claims(self, claims: Iterable[ResourceClaim]) -> None:
        """After a relist: exactly these claims."""
        fresh = {c.key: c for c in claims}
        for key in list(self.dra.claims):
            if key not in fresh:
                self.delete_claim(key)
        for c in fresh.values():
            self.upsert_claim(c)

    def dra_need(self, pod: PodRequest) -> DraNeed | None:
        """The GPU need of ``pod``'s claims, from the claims, templates and classes watched;
        ``None`` when none is known to be for GPUs (kube-scheduler's DRA plugin then decides
        alone, e.g. while a template has not been seen yet)."""
        specs = []
        for c in pod.claims:
            claim = self.dra.claims.get(f"{pod.namespace}/{c.claim}") if c.claim else None
            template = (
                self.dra.templates.get(f"{pod.namespace}/{c.template}") if c.template else None
            )
            if claim is not None:
                specs.append(claim.spec)
            elif template is not None:
                specs.append(template.spec)
        return claim_need(specs, self.dra.classes) if specs else None

    def _rows(self, name: str, gpus: NodeGpus) -> dict[DeviceKey, int]:
        """Which row of ``gpus`` each of the node's DRA devices is (as the inventory matched
        them: by uuid to the measurement that won, else the static order); remembered while
        the node's GPU state is the same object."""
        memo = self.dra.rows_memo.get(name)
        if memo is not None and memo[0] is gpus:
            return memo[1]
        devices = self.dra.by_node.get(name, ())
        node = self.nodes[name]
        measured: tuple[GpuDevice, ...] | None = None
        if gpus.source == "annotation" and node.gpu_report is not None:
            measured = node.gpu_report.devices
        elif gpus.source == "dcgm" and name in self.dcgm:
            measured = self.dcgm[name].devices
        rows = device_indices(devices, measured)
        self.dra.rows_memo[name] = (gpus, rows)
        return rows

    def _matching(
        self, name: str, cid: int, devices: tuple[DraDevice, ...], checks: tuple[Check, ...]
    ) -> int:
        """How many of the node's devices pass ``checks`` (id ``cid``), remembered while the
        node's devices are the same."""
        memo = self.dra.match_memo.get((name, cid))
        if memo is not None and memo[0] is devices:
            return memo[1]
        n = sum(1 for d in devices if matches(checks, d))
        self.dra.match_memo[(name, cid)] = (devices, n)
        return n

    def dra_rows(self, name: str, now: float) -> frozenset[int]:
        """Rows of the node's GPU state that a DRA driver publishes (not the device plugin's)."""
        if "dra" not in self.config.sources or name not in self.nodes:
            return frozenset()
        gpus = self.gpus(name, now)
        return frozenset() if isinstance(gpus, str) else frozenset(self._rows(name, gpus).values())

    def admit_claim(self, claim: ResourceClaim, now: float) -> str | None:
        """Count ``claim``'s allocation now (as a reservation would: the watch may show it
        later), and say why the devices it was given cannot hold it by the extender's books
        (NVML, pods, the other claims), or ``None`` when they can. The DRA allocator's books
        know nothing of memory used outside Kubernetes, and a filter may have run before an
        earlier claim's allocation was written."""
        self.delete_claim(claim.key)
        problems: list[str] = []
        want: dict[DeviceKey, tuple[int, bool]] = {}
        for r in claim.results:
            mib, whole = want.get(r.key, (0, False))
            want[r.key] = (mib + (r.consumed_mib or 0), whole or r.consumed_mib is None)
        for key, (mib, whole) in sorted(want.items()):
            node = self.dra.device_node.get(key)
            if node is None or node not in self.nodes:
                continue
            gpus = self.gpus(node, now)
            if isinstance(gpus, str):
                problems.append(f"{node}: {gpus}")
                continue
            row = self._rows(node, gpus).get(key)
            d = next((d for d in gpus.devices if d.index == row), None)
            if d is None:
                continue
            if whole and not d.idle:
                problems.append(f"{key[2]} on {node} is not idle")
            elif not whole and d.free_mib < mib:
                problems.append(
                    f"{key[2]} on {node} has {d.free_mib} MiB free, claim takes {mib} MiB"
                )
        self.upsert_claim(claim)
        return "; ".join(problems) or None

    def allocated_claims(self, pod: PodRequest) -> list[ResourceClaim]:
        """The pod's claims that are allocated already (e.g. after a bind the extender
        refused: kube-scheduler's Unreserve drops the pod from ``reservedFor`` but keeps the
        allocation, so the pod can only go where its devices are)."""
        out = []
        for c in pod.claims:
            claim = self.dra.claims.get(f"{pod.namespace}/{c.claim}") if c.claim else None
            if claim is not None and claim.results:
                out.append(claim)
        return out

    def claim_nodes(self, claim: ResourceClaim) -> set[str]:
        return {n for r in claim.results if (n := self.dra.device_node.get(r.key)) is not None}

    def dra_misfits(self, names: Sequence[str], need: DraNeed, now: float) -> dict[str, str]:
        """Of ``names`` (nodes that passed the shared GPU fit), those whose own DRA devices
        cannot take ``need`` (selectors, room on a device that passes them), with the reason.
        The shared fit already decided nodes whose every GPU is published and passes the
        checks; what is asked per node is remembered while its devices stay the same."""
        if len(self.dra.check_ids) > 4096:  # distinct selector sets seen; forget, not grow
            self.dra.check_ids.clear()
            self.dra.match_memo.clear()
            self.dra.decided.clear()
        wanted = [
            (self.dra.check_ids.setdefault(c, len(self.dra.check_ids)), c, n)
            for c, n in Counter(need.checks).items()
        ]
        no_match = device_misfit(need, (), {}) or "node(s) had too few DRA GPU devices"
        decided = self.dra.decided.setdefault(tuple(sorted(cid for cid, _, _ in wanted)), set())
        out = {}
        for name in names:
            if name in decided:
                continue
            reason = self._dra_misfit(name, need, now, wanted, no_match)
            if reason is _DECIDED:
                decided.add(name)
            elif reason is not None:
                out[name] = reason
        return out

    def _dra_misfit(
        self,
        name: str,
        need: DraNeed,
        now: float,
        wanted: list[tuple[int, tuple[Check, ...], int]],
        no_match: str | None,
    ) -> str | None:
        devices = self.dra.by_node.get(name, ())
        if not devices:
            return "node(s) had no DRA GPU devices"
        gpus = self.gpus(name, now)
        if isinstance(gpus, str):
            return gpus
        all_pass = True
        for cid, checks, n in wanted:
            passing = self._matching(name, cid, devices, checks)
            if passing < n:
                return no_match  # too few devices pass the checks, whatever their room
            all_pass = all_pass and passing == len(devices)
        rows = self._rows(name, gpus)
        if all_pass and len(rows) == len(gpus.devices) == len(devices):
            return _DECIDED  # every GPU published and passing: the shared fit decided it
        by_row = {d.index: d for d in gpus.devices}
        free: dict[DeviceKey, tuple[int, bool]] = {}
        for key, row in rows.items():
            d = by_row.get(row)
            if d is not None:
                free[key] = (d.free_mib, d.idle)
        return device_misfit(need, devices, free)


_DECIDED: Final = "decided by the shared fit"


def _pending(pod: PodRequest) -> int:
    return 1 if pod.gpu is not None and not pod.node_name else 0
