"""Kubernetes JSON (already parsed into dicts) → :mod:`extender.objects` objects.

Every wrong type raises :class:`BadRequest` naming the field, so the server can answer 400.
Node decoding reads only the fields placement needs and memoises the expensive parts (quantities,
the ``gpuscale.io/gpus`` annotation) by their text: in full mode thousands of nodes arrive in
every request, mostly unchanged since the last one.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from extender.inventory import InventoryError, parse_gfd, parse_gpus_annotation
from extender.need import ContainerResources, NeedError, pod_need
from extender.objects import (
    EMPTY_LABELS,
    GPU_INDICES_ANNOTATION,
    GPUS_ANNOTATION,
    SCORING_ANNOTATION,
    GpuReport,
    NodeInfo,
    NodeSelector,
    NodeSelectorRequirement,
    NodeSelectorTerm,
    PodClaim,
    PodRequest,
    PreferredTerm,
    Taint,
    Toleration,
)
from extender.quantity import QuantityError, byte_count, milli_cpu


class BadRequest(ValueError):
    """Input that does not have the shape of a Kubernetes object; the message names the field."""


def _type_name(v: object) -> str:
    return "null" if v is None else type(v).__name__


def _obj(v: object, path: str, *, optional: bool = True) -> Mapping[str, Any]:
    if v is None and optional:
        return EMPTY_LABELS
    if not isinstance(v, dict):
        raise BadRequest(f"{path}: expected an object, got {_type_name(v)}")
    return v


def _list(v: object, path: str) -> list[Any]:
    if v is None:
        return []
    if not isinstance(v, list):
        raise BadRequest(f"{path}: expected a list, got {_type_name(v)}")
    return v


def _str(v: object, path: str, default: str = "") -> str:
    if v is None:
        return default
    if not isinstance(v, str):
        raise BadRequest(f"{path}: expected a string, got {_type_name(v)}")
    return v


def _str_map(v: object, path: str) -> Mapping[str, str]:
    m = _obj(v, path)
    for k, val in m.items():
        if type(val) is not str:
            raise BadRequest(f"{path}[{k}]: expected a string, got {_type_name(val)}")
    return m


def _taint(v: object, path: str) -> Taint:
    m = _obj(v, path, optional=False)
    return Taint(
        key=_str(m.get("key"), f"{path}.key"),
        value=_str(m.get("value"), f"{path}.value"),
        effect=_str(m.get("effect"), f"{path}.effect"),
    )


def _toleration(v: object, path: str) -> Toleration:
    m = _obj(v, path, optional=False)
    return Toleration(
        key=_str(m.get("key"), f"{path}.key"),
        operator=_str(m.get("operator"), f"{path}.operator"),
        value=_str(m.get("value"), f"{path}.value"),
        effect=_str(m.get("effect"), f"{path}.effect"),
    )


def _requirement(v: object, path: str) -> NodeSelectorRequirement:
    m = _obj(v, path, optional=False)
    values = tuple(
        _str(x, f"{path}.values[{i}]")
        for i, x in enumerate(_list(m.get("values"), f"{path}.values"))
    )
    return NodeSelectorRequirement(
        key=_str(m.get("key"), f"{path}.key"),
        operator=_str(m.get("operator"), f"{path}.operator"),
        values=values,
    )


def _term(v: object, path: str) -> NodeSelectorTerm:
    m = _obj(v, path)
    return NodeSelectorTerm(
        match_expressions=tuple(
            _requirement(x, f"{path}.matchExpressions[{i}]")
            for i, x in enumerate(_list(m.get("matchExpressions"), f"{path}.matchExpressions"))
        ),
        match_fields=tuple(
            _requirement(x, f"{path}.matchFields[{i}]")
            for i, x in enumerate(_list(m.get("matchFields"), f"{path}.matchFields"))
        ),
    )


def _int(v: object, path: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadRequest(f"{path}: expected an integer, got {_type_name(v)}")
    return v


def _container(v: object, path: str, *, init: bool) -> ContainerResources:
    m = _obj(v, path, optional=False)
    res = _obj(m.get("resources"), f"{path}.resources")
    return ContainerResources(
        name=_str(m.get("name"), f"{path}.name"),
        requests=_obj(res.get("requests"), f"{path}.resources.requests"),
        limits=_obj(res.get("limits"), f"{path}.resources.limits"),
        restartable=init and _str(m.get("restartPolicy"), f"{path}.restartPolicy") == "Always",
    )


def _gpu_indices(text: str) -> tuple[int, ...] | None:
    parts = [p.strip() for p in text.split(",")] if text.strip() else []
    if not parts or not all(p.isdigit() and p.isascii() for p in parts):
        return None
    return tuple(int(p) for p in parts)


def _pod_claims(
    spec: Mapping[str, Any], status: Mapping[str, Any], path: str
) -> tuple[PodClaim, ...]:
    generated: dict[str, str] = {}
    sp = f"{path}.status.resourceClaimStatuses"
    for i, s in enumerate(_list(status.get("resourceClaimStatuses"), sp)):
        m = _obj(s, f"{sp}[{i}]", optional=False)
        generated[_str(m.get("name"), f"{sp}[{i}].name")] = _str(
            m.get("resourceClaimName"), f"{sp}[{i}].resourceClaimName"
        )
    out: list[PodClaim] = []
    cp = f"{path}.spec.resourceClaims"
    for i, c in enumerate(_list(spec.get("resourceClaims"), cp)):
        m = _obj(c, f"{cp}[{i}]", optional=False)
        name = _str(m.get("name"), f"{cp}[{i}].name")
        claim = _str(m.get("resourceClaimName"), f"{cp}[{i}].resourceClaimName")
        template = _str(m.get("resourceClaimTemplateName"), f"{cp}[{i}].resourceClaimTemplateName")
        if bool(claim) == bool(template):
            raise BadRequest(
                f"{cp}[{i}]: expected exactly one of resourceClaimName, resourceClaimTemplateName"
            )
        out.append(PodClaim(name, claim or generated.get(name, ""), template))
    return tuple(out)


def pod_from_json(obj: object, path: str = "Pod") -> PodRequest:
    """Decode a v1.Pod; raises :class:`BadRequest` on wrong types or unreadable quantities."""
    pod = _obj(obj, path, optional=False)
    meta = _obj(pod.get("metadata"), f"{path}.metadata")
    spec = _obj(pod.get("spec"), f"{path}.spec")
    status = _obj(pod.get("status"), f"{path}.status")
    annotations = _str_map(meta.get("annotations"), f"{path}.metadata.annotations")
    affinity = _obj(spec.get("affinity"), f"{path}.spec.affinity")
    node_aff = _obj(affinity.get("nodeAffinity"), f"{path}.spec.affinity.nodeAffinity")
    ap = f"{path}.spec.affinity.nodeAffinity"
    req_raw = node_aff.get("requiredDuringSchedulingIgnoredDuringExecution")
    required: NodeSelector | None = None
    if req_raw is not None:
        rp = f"{ap}.requiredDuringSchedulingIgnoredDuringExecution"
        req = _obj(req_raw, rp)
        required = NodeSelector(
            tuple(
                _term(t, f"{rp}.nodeSelectorTerms[{i}]")
                for i, t in enumerate(
                    _list(req.get("nodeSelectorTerms"), f"{rp}.nodeSelectorTerms")
                )
            )
        )
    pp = f"{ap}.preferredDuringSchedulingIgnoredDuringExecution"
    preferred: list[PreferredTerm] = []
    for i, t in enumerate(
        _list(node_aff.get("preferredDuringSchedulingIgnoredDuringExecution"), pp)
    ):
        tm = _obj(t, f"{pp}[{i}]", optional=False)
        preferred.append(
            PreferredTerm(
                weight=_int(tm.get("weight", 0), f"{pp}[{i}].weight"),
                preference=_term(tm.get("preference"), f"{pp}[{i}].preference"),
            )
        )
    containers = [
        _container(c, f"{path}.spec.containers[{i}]", init=False)
        for i, c in enumerate(_list(spec.get("containers"), f"{path}.spec.containers"))
    ]
    inits = [
        _container(c, f"{path}.spec.initContainers[{i}]", init=True)
        for i, c in enumerate(_list(spec.get("initContainers"), f"{path}.spec.initContainers"))
    ]
    overhead = _obj(spec.get("overhead"), f"{path}.spec.overhead")
    try:
        need = pod_need(containers, inits, overhead, annotations)
    except NeedError as exc:
        raise BadRequest(f"{path}: {exc}") from None
    indices_raw = annotations.get(GPU_INDICES_ANNOTATION)
    return PodRequest(
        namespace=_str(meta.get("namespace"), f"{path}.metadata.namespace", "default"),
        name=_str(meta.get("name"), f"{path}.metadata.name"),
        uid=_str(meta.get("uid"), f"{path}.metadata.uid"),
        tolerations=tuple(
            _toleration(t, f"{path}.spec.tolerations[{i}]")
            for i, t in enumerate(_list(spec.get("tolerations"), f"{path}.spec.tolerations"))
        ),
        node_selector=_str_map(spec.get("nodeSelector"), f"{path}.spec.nodeSelector"),
        required=required,
        preferred=tuple(preferred),
        milli_cpu=need.milli_cpu,
        memory=need.memory,
        gpu=need.gpu,
        scoring=annotations.get(SCORING_ANNOTATION) or None,
        node_name=_str(spec.get("nodeName"), f"{path}.spec.nodeName"),
        gpu_indices=_gpu_indices(indices_raw) if indices_raw is not None else None,
        phase=_str(status.get("phase"), f"{path}.status.phase"),
        claims=_pod_claims(spec, status, path) if "resourceClaims" in spec else (),
    )


@lru_cache(maxsize=4096)
def _cpu(text: str) -> int | None:
    try:
        return milli_cpu(text)
    except QuantityError:
        return None


@lru_cache(maxsize=4096)
def _mem(text: str) -> int | None:
    try:
        return byte_count(text)
    except QuantityError:
        return None


@lru_cache(maxsize=16384)
def _gpus(text: str) -> GpuReport | str:
    try:
        return parse_gpus_annotation(text)
    except InventoryError as exc:
        return f"{GPUS_ANNOTATION}: {exc}"


def _quantity(v: object, path: str, parse: Any) -> int | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise BadRequest(f"{path}: expected a quantity string, got {_type_name(v)}")
    out: int | None = parse(v)
    if out is None:
        raise BadRequest(f"{path}: not a quantity: {v!r}")
    return out


def node_from_json(obj: object, path: str = "Node") -> NodeInfo:
    """Decode a v1.Node. A bad ``gpuscale.io/gpus`` annotation is not a bad request: it is kept
    as ``gpu_report_error`` so only that node fails."""
    node = _obj(obj, path, optional=False)
    meta = _obj(node.get("metadata"), f"{path}.metadata")
    spec = _obj(node.get("spec"), f"{path}.spec")
    status = _obj(node.get("status"), f"{path}.status")
    labels = _str_map(meta.get("labels"), f"{path}.metadata.labels")
    annotations = _obj(meta.get("annotations"), f"{path}.metadata.annotations")
    raw_taints = spec.get("taints")
    taints = (
        tuple(
            _taint(t, f"{path}.spec.taints[{i}]")
            for i, t in enumerate(_list(raw_taints, f"{path}.spec.taints"))
        )
        if raw_taints
        else ()
    )
    alloc = _obj(status.get("allocatable"), f"{path}.status.allocatable")
    report: GpuReport | None = None
    report_error: str | None = None
    raw = annotations.get(GPUS_ANNOTATION)
    if raw is not None:
        if not isinstance(raw, str):
            raise BadRequest(
                f"{path}.metadata.annotations[{GPUS_ANNOTATION}]: expected a string, got "
                f"{_type_name(raw)}"
            )
        parsed = _gpus(raw)
        if isinstance(parsed, str):
            report_error = parsed
        else:
            report = parsed
    return NodeInfo(
        name=_str(meta.get("name"), f"{path}.metadata.name"),
        labels=labels,
        taints=taints,
        allocatable_milli_cpu=_quantity(alloc.get("cpu"), f"{path}.status.allocatable.cpu", _cpu),
        allocatable_memory=_quantity(
            alloc.get("memory"), f"{path}.status.allocatable.memory", _mem
        ),
        gpu_report=report,
        gpu_report_error=report_error,
        gfd=parse_gfd(labels) if "nvidia.com/gpu.count" in labels else None,
    )
