"""GPU-model constraints of openb pods: ``gpu_spec`` as the node affinity a real pod carries.

In the openb traces ``gpu_spec`` lists the GPU models a pod accepts (``V100M16|V100M32``). A real
pod says that with a required node affinity on the GPU product label that GPU Feature Discovery
puts on every GPU node (``nvidia.com/gpu.product In [V100M16, V100M32]``); the replay gives each
node its model as that label and lets the extender's own affinity code
(:func:`extender.affinity.compile_required`) decide which nodes a pod may use.

The lists we have carry no constraints, so :func:`constrain` builds constrained variants: a
seeded fraction of the GPU pods is constrained to one or two models drawn from the cluster's own
model mix (weighted by GPUs per model), among the models that have a node able to hold the pod.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Final

from extender.affinity import RequiredAffinity, compile_required
from extender.objects import (
    EMPTY_LABELS,
    GFD_PRODUCT_LABEL,
    NodeSelector,
    NodeSelectorRequirement,
    NodeSelectorTerm,
)
from simulations.placement.openb import OpenbNode, OpenbPod

TWO_MODELS: Final = 0.5
"""Share of constrained pods that accept two models rather than one (the published examples
have both: ``V100M16|V100M32``, ``T4``)."""


def node_labels(node: OpenbNode) -> Mapping[str, str]:
    """The labels the replay gives a node: its GPU model as GFD's product label."""
    return {GFD_PRODUCT_LABEL: node.model} if node.gpus > 0 else EMPTY_LABELS


def required_affinity(spec: Sequence[str]) -> NodeSelector | None:
    """The required node affinity of a pod with ``gpu_spec`` = ``spec`` (``None``: any node)."""
    if not spec:
        return None
    requirement = NodeSelectorRequirement(GFD_PRODUCT_LABEL, "In", tuple(spec))
    return NodeSelector(terms=(NodeSelectorTerm(match_expressions=(requirement,)),))


def compiled(spec: Sequence[str]) -> RequiredAffinity:
    """The extender's compiled form of :func:`required_affinity`."""
    return compile_required({}, required_affinity(spec))


def model_mix(nodes: Sequence[OpenbNode]) -> dict[str, int]:
    """GPUs per model, in the order models first appear in the node list."""
    mix: dict[str, int] = {}
    for n in nodes:
        if n.gpus > 0:
            mix[n.model] = mix.get(n.model, 0) + n.gpus
    return mix


def _hosts(nodes: Sequence[OpenbNode], pod: OpenbPod) -> list[str]:
    """Models with at least one node that could hold ``pod`` on its own."""
    return list(
        dict.fromkeys(
            n.model
            for n in nodes
            if n.gpus >= pod.num_gpu
            and n.cpu_milli >= pod.cpu_milli
            and n.memory_mib >= pod.memory_mib
        )
    )


def constrain(
    pods: Sequence[OpenbPod], nodes: Sequence[OpenbNode], fraction: float, seed: int
) -> list[OpenbPod]:
    """``pods`` with a seeded ``fraction`` of the GPU pods given a ``gpu_spec``.

    Each chosen pod accepts one model, or two with probability :data:`TWO_MODELS`, drawn without
    replacement with weights = GPUs per model, among models with a node big enough for the pod.
    Pods that already carry a ``gpu_spec`` keep it; pods without GPUs stay unconstrained.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"constrained fraction must be in [0, 1], got {fraction}")
    rng = random.Random(seed)
    mix = model_mix(nodes)
    hosts: dict[tuple[int, int, int], list[str]] = {}
    out: list[OpenbPod] = []
    for p in pods:
        if p.num_gpu == 0 or p.gpu_spec or rng.random() >= fraction:
            out.append(p)
            continue
        key = (p.num_gpu, p.cpu_milli, p.memory_mib)
        if key not in hosts:
            hosts[key] = [m for m in _hosts(nodes, p) if m in mix]
        models = list(hosts[key])
        want = 2 if rng.random() < TWO_MODELS else 1
        spec: list[str] = []
        while models and len(spec) < want:
            pick = rng.choices(models, weights=[mix[m] for m in models])[0]
            spec.append(pick)
            models.remove(pick)
        out.append(replace(p, gpu_spec=tuple(sorted(spec, key=list(mix).index))))
    return out


def constrained_share(pods: Sequence[OpenbPod]) -> float:
    """Share of GPU pods that carry a ``gpu_spec``."""
    gpu = [p for p in pods if p.num_gpu > 0]
    return sum(1 for p in gpu if p.gpu_spec) / len(gpu) if gpu else 0.0
