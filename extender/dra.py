"""Dynamic Resource Allocation (``resource.k8s.io/v1``) as GPU inventory and GPU need.

Pure: Kubernetes JSON (already parsed) in, frozen data out; no I/O, no clock.

- **Inventory.** A driver publishes its devices in ResourceSlices, grouped into pools. Only a
  pool's newest ``pool.generation`` counts (older slices are leftovers the driver has yet to
  delete), and a pool counts only once all ``pool.resourceSliceCount`` slices of that generation
  are seen: a half-listed pool would show devices as missing, and the allocator waits too.
  Each device's total memory is its ``capacity.memory`` (bytes, rounded down to MiB).
- **What is taken.** A ResourceClaim's ``status.allocation.devices.results[]`` names the devices
  it holds; with consumable capacity (``allowMultipleAllocations`` devices) a result carries
  ``consumedCapacity.memory``, else the claim holds the whole device.
- **What a pod needs.** ``spec.resourceClaims`` name a ResourceClaim or a
  ResourceClaimTemplate; each request (``exactly``: ``count`` whole devices, or
  ``capacity.requests.memory`` per device) becomes a :class:`~extender.objects.GpuNeed`.
  Selectors of the forms ``device.driver == "x"`` and ``device.attributes["domain"].name ==
  value`` (joined by ``&&``) are evaluated here; any other CEL is left to kube-scheduler's DRA
  plugin, which evaluates every selector anyway (the extender can only be more permissive).

Devices are matched to NVML/DCGM measurements by their ``uuid`` attribute, which is how a node
whose GPUs are split between the device plugin and a DRA driver keeps one row per GPU.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from extender.objects import GpuDevice, GpuNeed
from extender.quantity import MIB, QuantityError, byte_count

GPU_DRIVERS: Final = ("gpu.nvidia.com",)
"""Drivers whose devices are GPUs (NVIDIA's DRA driver); requests of classes pinned to another
driver are not GPU needs."""

AttrValue = str | int | bool
DeviceKey = tuple[str, str, str]
"""(driver, pool, device name): how an allocation result names a device."""


class DraError(ValueError):
    """A DRA object that cannot be read; the message names the field."""


# ---- objects -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DraDevice:
    """One published device. ``attributes`` keys are qualified (``domain/name``); an
    unqualified name in the slice belongs to the driver's domain, as in CEL."""

    driver: str
    pool: str
    name: str
    node: str
    attributes: Mapping[str, AttrValue]
    memory_mib: int | None
    """``capacity.memory``; ``None`` when the device publishes none."""
    shared: bool = False
    """``allowMultipleAllocations``: several claims may take capacity from it."""

    @property
    def key(self) -> DeviceKey:
        return (self.driver, self.pool, self.name)

    @property
    def uuid(self) -> str:
        v = self.attributes.get(f"{self.driver}/uuid")
        return v if isinstance(v, str) else ""

    @property
    def minor(self) -> int | None:
        for name in ("minor", "index"):
            v = self.attributes.get(f"{self.driver}/{name}")
            if isinstance(v, int) and not isinstance(v, bool):
                return v
        return None

    @property
    def model(self) -> str:
        v = self.attributes.get(f"{self.driver}/productName")
        return v if isinstance(v, str) else ""


@dataclass(frozen=True, slots=True)
class ResourceSlice:
    name: str
    driver: str
    pool: str
    generation: int
    slice_count: int
    node: str
    """``spec.nodeName``; empty for slices of network-attached devices, which are not counted."""
    devices: tuple[DraDevice, ...]


@dataclass(frozen=True, slots=True)
class Check:
    """One equality of a selector: ``device.driver`` (``attribute`` empty) or an attribute."""

    attribute: str
    value: AttrValue


@dataclass(frozen=True, slots=True)
class Selector:
    expression: str
    checks: tuple[Check, ...] | None
    """The equalities ANDed; ``None`` when the expression is CEL this module does not evaluate."""


@dataclass(frozen=True, slots=True)
class DeviceClass:
    name: str
    selectors: tuple[Selector, ...] = ()


@dataclass(frozen=True, slots=True)
class DeviceRequest:
    """One ``spec.devices.requests[]`` entry (or one ``firstAvailable`` alternative)."""

    name: str
    device_class: str
    selectors: tuple[Selector, ...] = ()
    count: int = 1
    all_devices: bool = False
    """``allocationMode: All``: every matching device of the node."""
    memory_mib: int | None = None
    """``capacity.requests.memory`` per device (a share), else ``None`` (whole devices)."""
    alternatives: tuple[DeviceRequest, ...] = ()
    """``firstAvailable``: the allocator takes the first alternative that can be satisfied."""


@dataclass(frozen=True, slots=True)
class ClaimSpec:
    requests: tuple[DeviceRequest, ...] = ()


@dataclass(frozen=True, slots=True)
class AllocationResult:
    request: str
    driver: str
    pool: str
    device: str
    consumed_mib: int | None = None
    """``consumedCapacity.memory``; ``None``: the claim holds the whole device."""

    @property
    def key(self) -> DeviceKey:
        return (self.driver, self.pool, self.device)


@dataclass(frozen=True, slots=True)
class ResourceClaim:
    namespace: str
    name: str
    spec: ClaimSpec
    results: tuple[AllocationResult, ...] = ()
    reserved_for: tuple[str, ...] = ()
    """Names of the pods (same namespace) the claim is reserved for."""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class ClaimTemplate:
    namespace: str
    name: str
    spec: ClaimSpec

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


# ---- decoding ----------------------------------------------------------------------------


def _tn(v: object) -> str:
    return "null" if v is None else type(v).__name__


def _obj(v: object, path: str, *, optional: bool = True) -> Mapping[str, Any]:
    if v is None and optional:
        return MappingProxyType({})
    if not isinstance(v, dict):
        raise DraError(f"{path}: expected an object, got {_tn(v)}")
    return v


def _list(v: object, path: str) -> list[Any]:
    if v is None:
        return []
    if not isinstance(v, list):
        raise DraError(f"{path}: expected a list, got {_tn(v)}")
    return v


def _str(v: object, path: str, *, required: bool = False) -> str:
    if v is None and not required:
        return ""
    if not isinstance(v, str) or (required and not v):
        raise DraError(f"{path}: expected a non-empty string, got {v!r}")
    return v


def _int(v: object, path: str, default: int, minimum: int = 0) -> int:
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise DraError(f"{path}: expected an integer >= {minimum}, got {v!r}")
    return v


def _mib(v: object, path: str, *, round_up: bool) -> int:
    """A byte quantity (``"80Gi"``, ``"42949672960"``) in MiB."""
    try:
        b = byte_count(v)
    except QuantityError as exc:
        raise DraError(f"{path}: {exc}") from None
    if b < 0:
        raise DraError(f"{path}: cannot be negative: {v!r}")
    return -(-b // MIB) if round_up else b // MIB


def _meta(obj: Mapping[str, Any], path: str) -> tuple[str, str]:
    meta = _obj(obj.get("metadata"), f"{path}.metadata")
    return (
        _str(meta.get("namespace"), f"{path}.metadata.namespace"),
        _str(meta.get("name"), f"{path}.metadata.name", required=True),
    )


def _attribute(v: object, path: str) -> AttrValue:
    m = _obj(v, path, optional=False)
    for kind in ("string", "version", "int", "bool"):
        if kind in m:
            value = m[kind]
            ok = (
                isinstance(value, str)
                if kind in ("string", "version")
                else isinstance(value, bool)
                if kind == "bool"
                else isinstance(value, int) and not isinstance(value, bool)
            )
            if not ok:
                raise DraError(f"{path}.{kind}: wrong type {_tn(value)}")
            return value  # type: ignore[no-any-return]
    raise DraError(f"{path}: expected one of string, version, int, bool")


def qualified(name: str, driver: str) -> str:
    """An attribute name as CEL sees it: unqualified names are in the driver's domain."""
    return name if "/" in name else f"{driver}/{name}"


def slice_from_json(obj: object, path: str = "ResourceSlice") -> ResourceSlice:
    """Decode a ``resource.k8s.io/v1`` ResourceSlice; raises :class:`DraError`."""
    s = _obj(obj, path, optional=False)
    _, name = _meta(s, path)
    spec = _obj(s.get("spec"), f"{path}.spec", optional=False)
    driver = _str(spec.get("driver"), f"{path}.spec.driver", required=True)
    pool = _obj(spec.get("pool"), f"{path}.spec.pool", optional=False)
    pool_name = _str(pool.get("name"), f"{path}.spec.pool.name", required=True)
    generation = _int(pool.get("generation"), f"{path}.spec.pool.generation", 0)
    count = _int(pool.get("resourceSliceCount"), f"{path}.spec.pool.resourceSliceCount", 1, 1)
    node = _str(spec.get("nodeName"), f"{path}.spec.nodeName")
    devices: list[DraDevice] = []
    for i, d in enumerate(_list(spec.get("devices"), f"{path}.spec.devices")):
        dp = f"{path}.spec.devices[{i}]"
        dm = _obj(d, dp, optional=False)
        attrs = {
            qualified(_str(k, f"{dp}.attributes"), driver): _attribute(v, f"{dp}.attributes[{k}]")
            for k, v in _obj(dm.get("attributes"), f"{dp}.attributes").items()
        }
        capacity = _obj(dm.get("capacity"), f"{dp}.capacity")
        memory: int | None = None
        for k, v in capacity.items():
            if k in ("memory", qualified("memory", driver)):
                cap = _obj(v, f"{dp}.capacity[{k}]", optional=False)
                memory = _mib(cap.get("value"), f"{dp}.capacity[{k}].value", round_up=False)
        shared = dm.get("allowMultipleAllocations", False)
        if not isinstance(shared, bool):
            raise DraError(f"{dp}.allowMultipleAllocations: expected a boolean, got {_tn(shared)}")
        devices.append(
            DraDevice(
                driver,
                pool_name,
                _str(dm.get("name"), f"{dp}.name", required=True),
                node,
                MappingProxyType(attrs),
                memory,
                shared,
            )
        )
    return ResourceSlice(name, driver, pool_name, generation, count, node, tuple(devices))


_STRING: Final = r'"(?P<s1>[^"\\]*)"|\'(?P<s2>[^\'\\]*)\''
_VALUE: Final = rf"(?:{_STRING}|(?P<int>-?\d+)|(?P<bool>true|false))"
_ATTR: Final = (
    r"device\.attributes\[(?:\"(?P<d1>[^\"]+)\"|'(?P<d2>[^']+)')\]"
    r"(?:\.(?P<n1>[A-Za-z_][A-Za-z0-9_]*)|\[(?:\"(?P<n2>[^\"]+)\"|'(?P<n3>[^']+)')\])"
)
_EQUALITY: Final = re.compile(rf"\s*(?:(?P<driver>device\.driver)|{_ATTR})\s*==\s*{_VALUE}\s*")


def parse_selector(expression: str) -> tuple[Check, ...] | None:
    """The equalities of ``a == 1 && b == "x"``, or ``None`` for any other CEL."""
    checks: list[Check] = []
    for part in expression.split("&&"):
        m = _EQUALITY.fullmatch(part)
        if m is None:
            return None
        value: AttrValue
        if m["int"] is not None:
            value = int(m["int"])
        elif m["bool"] is not None:
            value = m["bool"] == "true"
        else:
            value = m["s1"] if m["s1"] is not None else m["s2"]
        if m["driver"]:
            checks.append(Check("", value))
        else:
            domain = m["d1"] or m["d2"]
            checks.append(Check(f"{domain}/{m['n1'] or m['n2'] or m['n3']}", value))
    return tuple(checks)


def _selectors(v: object, path: str) -> tuple[Selector, ...]:
    out: list[Selector] = []
    for i, s in enumerate(_list(v, path)):
        sm = _obj(s, f"{path}[{i}]", optional=False)
        cel = _obj(sm.get("cel"), f"{path}[{i}].cel", optional=False)
        expr = _str(cel.get("expression"), f"{path}[{i}].cel.expression", required=True)
        out.append(Selector(expr, parse_selector(expr)))
    return tuple(out)


def device_class_from_json(obj: object, path: str = "DeviceClass") -> DeviceClass:
    c = _obj(obj, path, optional=False)
    _, name = _meta(c, path)
    spec = _obj(c.get("spec"), f"{path}.spec")
    return DeviceClass(name, _selectors(spec.get("selectors"), f"{path}.spec.selectors"))


def _request(v: Mapping[str, Any], path: str, name: str) -> DeviceRequest:
    mode = _str(v.get("allocationMode"), f"{path}.allocationMode") or "ExactCount"
    if mode not in ("ExactCount", "All"):
        raise DraError(f"{path}.allocationMode: expected ExactCount or All, got {mode!r}")
    capacity = _obj(v.get("capacity"), f"{path}.capacity")
    requests = _obj(capacity.get("requests"), f"{path}.capacity.requests")
    memory = requests.get("memory")
    return DeviceRequest(
        name=name,
        device_class=_str(v.get("deviceClassName"), f"{path}.deviceClassName", required=True),
        selectors=_selectors(v.get("selectors"), f"{path}.selectors"),
        count=_int(v.get("count"), f"{path}.count", 1, 1) if mode == "ExactCount" else 0,
        all_devices=mode == "All",
        memory_mib=(
            None
            if memory is None
            else _mib(memory, f"{path}.capacity.requests.memory", round_up=True)
        ),
    )


def claim_spec_from_json(v: object, path: str) -> ClaimSpec:
    spec = _obj(v, path)
    devices = _obj(spec.get("devices"), f"{path}.devices")
    out: list[DeviceRequest] = []
    for i, r in enumerate(_list(devices.get("requests"), f"{path}.devices.requests")):
        rp = f"{path}.devices.requests[{i}]"
        rm = _obj(r, rp, optional=False)
        name = _str(rm.get("name"), f"{rp}.name", required=True)
        if rm.get("exactly") is not None:
            out.append(_request(_obj(rm["exactly"], f"{rp}.exactly"), f"{rp}.exactly", name))
        elif rm.get("firstAvailable") is not None:
            alts = tuple(
                _request(
                    _obj(a, f"{rp}.firstAvailable[{j}]", optional=False),
                    f"{rp}.firstAvailable[{j}]",
                    f"{name}/{_str(a.get('name'), f'{rp}.firstAvailable[{j}].name')}",
                )
                for j, a in enumerate(_list(rm["firstAvailable"], f"{rp}.firstAvailable"))
            )
            if not alts:
                raise DraError(f"{rp}.firstAvailable: empty")
            out.append(DeviceRequest(name, "", alternatives=alts))
        else:
            raise DraError(f"{rp}: expected exactly or firstAvailable")
    return ClaimSpec(tuple(out))


def claim_from_json(obj: object, path: str = "ResourceClaim") -> ResourceClaim:
    """Decode a ResourceClaim: its requests and, once allocated, the devices it holds."""
    c = _obj(obj, path, optional=False)
    ns, name = _meta(c, path)
    spec = claim_spec_from_json(c.get("spec"), f"{path}.spec")
    status = _obj(c.get("status"), f"{path}.status")
    allocation = _obj(status.get("allocation"), f"{path}.status.allocation")
    devices = _obj(allocation.get("devices"), f"{path}.status.allocation.devices")
    results: list[AllocationResult] = []
    for i, r in enumerate(
        _list(devices.get("results"), f"{path}.status.allocation.devices.results")
    ):
        rp = f"{path}.status.allocation.devices.results[{i}]"
        rm = _obj(r, rp, optional=False)
        consumed = _obj(rm.get("consumedCapacity"), f"{rp}.consumedCapacity")
        memory = consumed.get("memory")
        results.append(
            AllocationResult(
                request=_str(rm.get("request"), f"{rp}.request"),
                driver=_str(rm.get("driver"), f"{rp}.driver", required=True),
                pool=_str(rm.get("pool"), f"{rp}.pool", required=True),
                device=_str(rm.get("device"), f"{rp}.device", required=True),
                consumed_mib=(
                    None
                    if memory is None
                    else _mib(memory, f"{rp}.consumedCapacity.memory", round_up=True)
                ),
            )
        )
    reserved: list[str] = []
    for i, ref in enumerate(_list(status.get("reservedFor"), f"{path}.status.reservedFor")):
        rm = _obj(ref, f"{path}.status.reservedFor[{i}]", optional=False)
        if rm.get("resource") == "pods":
            reserved.append(_str(rm.get("name"), f"{path}.status.reservedFor[{i}].name"))
    return ResourceClaim(ns or "default", name, spec, tuple(results), tuple(reserved))


def template_from_json(obj: object, path: str = "ResourceClaimTemplate") -> ClaimTemplate:
    t = _obj(obj, path, optional=False)
    ns, name = _meta(t, path)
    spec = _obj(t.get("spec"), f"{path}.spec")
    return ClaimTemplate(
        ns or "default", name, claim_spec_from_json(spec.get("spec"), f"{path}.spec.spec")
    )


# ---- pools -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pools:
    """Devices of complete pools, per node, and the pools left out (and why)."""

    by_node: Mapping[str, tuple[DraDevice, ...]]
    incomplete: Mapping[tuple[str, str], str]


def pool_devices(slices: Iterable[ResourceSlice]) -> Pools:
    """The devices that count: per (driver, pool) the newest generation only, and only when all
    its ``resourceSliceCount`` slices are there. Devices of node-less slices are left out."""
    newest: dict[tuple[str, str], list[ResourceSlice]] = {}
    for s in slices:
        key = (s.driver, s.pool)
        have = newest.get(key)
        if have is None or s.generation > have[0].generation:
            newest[key] = [s]
        elif s.generation == have[0].generation:
            have.append(s)
    by_node: dict[str, list[DraDevice]] = {}
    incomplete: dict[tuple[str, str], str] = {}
    for key, group in sorted(newest.items()):
        want = max(s.slice_count for s in group)
        if len(group) < want:
            incomplete[key] = f"{len(group)} of {want} slices of generation {group[0].generation}"
            continue
        for s in sorted(group, key=lambda s: s.name):
            if s.node:
                by_node.setdefault(s.node, []).extend(s.devices)
    return Pools({n: tuple(d) for n, d in by_node.items()}, incomplete)


# ---- accounting --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Taken:
    """What claims hold on one device: shares (MiB) of claims whose pods run (their memory can
    show in a measurement) and of the others, and whether a claim holds the whole device."""

    running_mib: int = 0
    waiting_mib: int = 0
    whole_running: bool = False
    whole_waiting: bool = False
    holders: int = 0


def taken_by_claims(
    devices: Sequence[DraDevice], claims: Iterable[ResourceClaim], running: Iterable[str]
) -> dict[DeviceKey, Taken]:
    """What allocated claims hold on ``devices``. ``running`` are the keys (``ns/name``) of
    running pods: a claim reserved for one of them counts as running. A claim reserved for no
    pod holds nothing here: kube-scheduler reserves a claim in the same write that allocates it,
    so such a claim is left over (its pod's bind failed, or its pods finished) and no workload
    uses its memory; the DRA allocator still keeps it off the device by its own books."""
    on = {d.key for d in devices}
    run = set(running)
    out: dict[DeviceKey, Taken] = {}
    for c in claims:
        if not c.reserved_for:
            continue
        is_running = any(f"{c.namespace}/{p}" in run for p in c.reserved_for)
        for r in c.results:
            if r.key not in on:
                continue
            t = out.get(r.key, Taken())
            whole = r.consumed_mib is None
            mib = r.consumed_mib or 0
            out[r.key] = Taken(
                t.running_mib + (mib if is_running else 0),
                t.waiting_mib + (0 if is_running else mib),
                t.whole_running or (whole and is_running),
                t.whole_waiting or (whole and not is_running),
                t.holders + 1,
            )
    return out


def device_indices(
    devices: Sequence[DraDevice], measured: Sequence[GpuDevice] | None
) -> dict[DeviceKey, int]:
    """Which row of the node's GPU state each DRA device is. With a measurement: the measured
    device of the same ``uuid`` (devices without a match are left out: the measurement does not
    see them). Without: the ``minor`` (or ``index``) attribute when every device has a distinct
    one, else the order of the devices by name."""
    if measured is not None:
        by_uuid = {d.uuid: d.index for d in measured if d.uuid}
        return {d.key: by_uuid[d.uuid] for d in devices if d.uuid in by_uuid}
    minors = [d.minor for d in devices]
    if all(m is not None for m in minors) and len(set(minors)) == len(minors):
        return {d.key: m for d, m in zip(devices, minors, strict=True) if m is not None}
    return {d.key: i for i, d in enumerate(sorted(devices, key=lambda d: d.name))}


def static_devices(devices: Sequence[DraDevice]) -> list[GpuDevice]:
    """The published devices as a static inventory (nothing measured), like GFD labels."""
    index = device_indices(devices, None)
    return sorted(
        (
            GpuDevice(index[d.key], d.uuid, d.model, d.memory_mib or 0, 0)
            for d in devices
            if d.memory_mib is not None
        ),
        key=lambda g: g.index,
    )


@dataclass(frozen=True, slots=True)
class DraNode:
    """A node's DRA devices and what claims hold on them (the inventory's input)."""

    devices: tuple[DraDevice, ...] = ()
    taken: Mapping[DeviceKey, Taken] = field(default_factory=dict)


# ---- need --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DraNeed:
    """A pod's GPU need from its claims, and the per-device checks the extender can evaluate."""

    gpu: GpuNeed
    checks: tuple[tuple[Check, ...], ...] = ()
    """Per request (one per device it asks for): the equalities a device must satisfy."""
    left_to_plugin: tuple[str, ...] = ()
    """Selector expressions not evaluated here (kube-scheduler's DRA plugin evaluates them)."""


def _pinned_driver(selectors: Sequence[Selector]) -> str | None:
    for s in selectors:
        for c in s.checks or ():
            if c.attribute == "" and isinstance(c.value, str):
                return c.value
    return None


def claim_need(
    specs: Sequence[ClaimSpec],
    classes: Mapping[str, DeviceClass],
    gpu_drivers: Sequence[str] = GPU_DRIVERS,
) -> DraNeed | None:
    """The GPU need of a pod whose claims have ``specs``; ``None`` when no request is for GPUs.

    A request is for GPUs when its DeviceClass pins ``device.driver`` to a GPU driver. Whole
    devices add up to a whole-GPU count; memory shares to a count of shares of the largest
    amount asked. Mixing both asks for whole GPUs (the stricter need). ``All`` counts one
    device; ``firstAvailable`` uses the least demanding alternative (the allocator may fall
    back to it), so the filter never refuses a node the DRA plugin would accept.
    """
    whole = 0
    shares: list[int] = []
    checks: list[tuple[Check, ...]] = []
    unevaluated: list[str] = []
    for spec in specs:
        for req in spec.requests:
            options = req.alternatives or (req,)
            gpu_options = []
            for o in options:
                cls = classes.get(o.device_class)
                if cls is None or _pinned_driver(cls.selectors) not in gpu_drivers:
                    continue
                gpu_options.append((o, cls))
            if not gpu_options:
                continue
            o, cls = min(
                gpu_options,
                key=lambda oc: (
                    max(oc[0].count, 1),
                    oc[0].memory_mib if oc[0].memory_mib is not None else 1 << 62,
                ),
            )
            n = max(o.count, 1)
            both = (*cls.selectors, *o.selectors)
            flat = tuple(c for s in both if s.checks is not None for c in s.checks)
            unevaluated.extend(s.expression for s in both if s.checks is None)
            if len(gpu_options) < len(options) or len(options) > 1:
                flat = ()  # alternatives: which one the allocator takes is its decision
            checks.extend([flat] * n)
            if o.memory_mib is None:
                whole += n
            else:
                shares.extend([o.memory_mib] * n)
    if not whole and not shares:
        return None
    need = GpuNeed(whole + len(shares), None) if whole else GpuNeed(len(shares), max(shares))
    return DraNeed(need, tuple(checks), tuple(unevaluated))


def matches(checks: Sequence[Check], device: DraDevice) -> bool:
    for c in checks:
        have: AttrValue | None = (
            device.driver if c.attribute == "" else device.attributes.get(c.attribute)
        )
        if have is None or type(have) is not type(c.value) or have != c.value:
            return False
    return True


def _describe(checks: Sequence[Check]) -> str:
    return " && ".join(f"{c.attribute or 'driver'} == {c.value!r}" for c in checks) or "any device"


def device_misfit(
    need: DraNeed, devices: Sequence[DraDevice], free: Mapping[DeviceKey, tuple[int, bool]]
) -> str | None:
    """``None`` when each request of ``need`` can get a distinct device of the node that passes
    its checks and has room (``free``: MiB free and idle, per device key), else the reason.

    A bipartite matching (augmenting paths; a node has a few devices and a pod a few requests),
    so a device that two requests could use never makes a feasible node look full."""
    mib = need.gpu.mib_per_gpu
    usable = [
        d
        for d in devices
        if d.key in free and (free[d.key][1] if mib is None else free[d.key][0] >= mib)
    ]
    room = "idle" if mib is None else f"with {mib} MiB free"
    note = " (other CEL left to the DRA plugin)" if need.left_to_plugin else ""
    options = [[j for j, d in enumerate(usable) if matches(c, d)] for c in need.checks]
    owner: dict[int, int] = {}  # device position -> request

    def assign(i: int, seen: set[int]) -> bool:
        for j in options[i]:
            if j not in seen:
                seen.add(j)
                if j not in owner or assign(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    for i in sorted(range(len(options)), key=lambda i: len(options[i])):
        if not assign(i, set()):
            return f"no DRA device {room} matching {_describe(need.checks[i])}{note}"
    return None


def allocator_choice(
    need: DraNeed, devices: Sequence[DraDevice], free: Mapping[DeviceKey, tuple[int, bool]]
) -> tuple[DeviceKey, ...] | None:
    """The devices kube-scheduler's DRA allocator would give ``need`` on one node: it scores
    nothing, and takes for each request, in order, the first device in slice and device order
    (``gpu-0``, ``gpu-1``, ...) that passes the request's checks and has room (idle for a whole
    device, ``free`` MiB for a share), not already taken by this claim. ``None`` when a request
    finds none (the allocator would then backtrack; for requests without cross-request
    constraints, as here, backtracking finds nothing first fit missed unless checks overlap).
    This is what node-level scoring cannot change: the replay's "gpuscale node scoring with the
    allocator's own device choice" places pods this way inside the chosen node."""
    mib = need.gpu.mib_per_gpu
    taken: list[DeviceKey] = []
    for checks in need.checks:
        pick = next(
            (
                d.key
                for d in devices
                if d.key in free
                and d.key not in taken
                and (free[d.key][1] if mib is None else free[d.key][0] >= mib)
                and matches(checks, d)
            ),
            None,
        )
        if pick is None:
            return None
        taken.append(pick)
    return tuple(taken)
