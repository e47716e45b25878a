"""``fits()``: the one composition of the filter predicates, checked against each predicate on its
own (the first failing one, in kube-scheduler's plugin order, is the answer)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from extender.affinity import AFFINITY_REASON, compile_required
from extender.filtering import FAILURE_KINDS, ClusterSnapshot
from extender.fit import NodeGpus, gpu_fit_reason, resource_fit_reasons
from extender.fitting import UNRESOLVABLE, Misfit, fits
from extender.model import NodeInfo, PodRequest
from extender.taints import filter_reason
from tests.extender.test_index import NOW, nodes, pods


def expected(
    pod: PodRequest, node: NodeInfo, requested: tuple[int, int], gpus: NodeGpus | str
) -> tuple[str, str] | None:
    """Each predicate alone, in order: (check, reason) of the first that fails, else None."""
    taint = filter_reason(node.taints, pod.tolerations)
    if taint is not None:
        return "untolerated_taint", taint
    if not compile_required(pod.node_selector, pod.required).matches(node.labels, node.name):
        return "node_affinity", AFFINITY_REASON
    short = resource_fit_reasons(
        pod.milli_cpu,
        pod.memory,
        allocatable_milli_cpu=node.allocatable_milli_cpu,
        allocatable_memory=node.allocatable_memory,
        requested_milli_cpu=requested[0],
        requested_memory=requested[1],
    )
    if short:
        return "insufficient_resources", ", ".join(short)
    if pod.gpu is None:
        return None
    if isinstance(gpus, str):
        return "gpu_inventory", gpus
    reason = gpu_fit_reason(gpus, pod.gpu)
    return None if reason is None else ("insufficient_gpu", reason)


@settings(max_examples=300, deadline=None)
@given(nodes(0), pods(), st.integers(0, 20000))
def test_fits_answers_the_first_failing_predicate(
    node: NodeInfo, pod: PodRequest, cpu: int
) -> None:
    gpus = ClusterSnapshot([node]).gpus(node.name, NOW)
    asked: list[str] = []

    def requested() -> tuple[int, int]:
        asked.append("requested")
        return cpu, 0

    def state() -> NodeGpus | str:
        asked.append("gpus")
        return gpus

    misfit = fits(
        name=node.name,
        labels=node.labels,
        taints=node.taints,
        tolerations=pod.tolerations,
        required=compile_required(pod.node_selector, pod.required),
        milli_cpu=pod.milli_cpu,
        memory=pod.memory,
        allocatable=(node.allocatable_milli_cpu, node.allocatable_memory),
        requested=requested,
        need=pod.gpu,
        gpus=state,
    )
    want = expected(pod, node, (cpu, 0), gpus)
    assert (None if misfit is None else (misfit.check, misfit.reason)) == want
    if misfit is not None:
        assert misfit.check in FAILURE_KINDS
        assert misfit.resolvable == (misfit.check not in UNRESOLVABLE)
    # what an earlier check settles is never computed
    if want is not None and want[0] in ("untolerated_taint", "node_affinity"):
        assert asked == []
    if "gpus" in asked:
        assert pod.gpu is not None and (want is None or want[0] not in ("insufficient_resources",))


def test_shortages_are_resolvable_and_label_problems_are_not() -> None:
    assert Misfit("insufficient_gpu", "").resolvable
    assert Misfit("insufficient_resources", "").resolvable
    assert not Misfit("node_affinity", "").resolvable
    assert not Misfit("gpu_inventory", "").resolvable
    assert fits(name="n", labels={}, taints=(), tolerations=()) is None
