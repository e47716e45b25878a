"""Taints and tolerations with the semantics of ``k8s.io/component-helpers/scheduling/corev1``.

Filtering follows kube-scheduler's TaintToleration plugin: only ``NoSchedule`` and ``NoExecute``
taints keep a pod off a node; ``PreferNoSchedule`` taints the pod does not tolerate only lower the
node's score. The ``Gt``/``Lt`` toleration operators (alpha, behind a feature gate upstream) are
treated as tolerating nothing, which is what upstream does with the gate off.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from extender.objects import Taint, Toleration

FILTER_EFFECTS = frozenset({"NoSchedule", "NoExecute"})


def tolerates(toleration: Toleration, taint: Taint) -> bool:
    """``Toleration.ToleratesTaint``: empty effect matches all effects, empty key with
    ``Exists`` matches all keys, and an empty operator means ``Equal``."""
    if toleration.effect and toleration.effect != taint.effect:
        return False
    if toleration.key and toleration.key != taint.key:
        return False
    if toleration.operator in ("", "Equal"):
        return toleration.value == taint.value
    return toleration.operator == "Exists"


def tolerations_tolerate(tolerations: Sequence[Toleration], taint: Taint) -> bool:
    return any(tolerates(t, taint) for t in tolerations)


def find_untolerated(
    taints: Sequence[Taint],
    tolerations: Sequence[Toleration],
    applies: Callable[[Taint], bool] | None = None,
) -> Taint | None:
    """``FindMatchingUntoleratedTaint``: the first taint (among those ``applies`` selects; all when
    ``None``) that no toleration tolerates, or ``None``."""
    for taint in taints:
        if applies is not None and not applies(taint):
            continue
        if not tolerations_tolerate(tolerations, taint):
            return taint
    return None


def filter_reason(taints: Sequence[Taint], tolerations: Sequence[Toleration]) -> str | None:
    """TaintToleration Filter: ``None`` when the pod may run here, else kube-scheduler's reason."""
    taint = find_untolerated(taints, tolerations, lambda t: t.effect in FILTER_EFFECTS)
    if taint is None:
        return None
    return f"node(s) had untolerated taint {{{taint.key}: {taint.value}}}"


def prefer_no_schedule_tolerations(tolerations: Sequence[Toleration]) -> tuple[Toleration, ...]:
    """Tolerations that can tolerate a ``PreferNoSchedule`` taint (that effect, or no effect)."""
    return tuple(t for t in tolerations if t.effect in ("", "PreferNoSchedule"))


def count_intolerable_prefer_no_schedule(
    taints: Sequence[Taint], tolerations: Sequence[Toleration]
) -> int:
    """TaintToleration Score (before reverse normalisation): untolerated PreferNoSchedule taints."""
    relevant = prefer_no_schedule_tolerations(tolerations)
    return sum(
        1
        for taint in taints
        if taint.effect == "PreferNoSchedule" and not tolerations_tolerate(relevant, taint)
    )
