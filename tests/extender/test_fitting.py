"""``fits()``: the one composition of the filter predicates, checked against each predicate on its
own (the first failing one, in kube-scheduler's plugin order, is the answer)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from extender.affinity import AFFINITY_REASON, compile_required
from extender.filtering import FAILURE_KINDS, ClusterSnapshot
from extender.fit import NodeGpus, gpu_fit_reason, resource_fit_reasons
from extender.fitting import UNRESOLVABLE, PodFit, fits, label_misfit
from extender.objects import NodeInfo, PodRequest
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


@dataclass
class Host:
    """Answers as a ClusterView would, and records what it was asked."""

    cpu: int
    state: NodeGpus | str
    asked: list[str] = field(default_factory=list)

    def requested(self, name: str) -> tuple[int, int]:
        self.asked.append("requested")
        return self.cpu, 0

    def gpus(self, name: str, now: float) -> NodeGpus | str:
        self.asked.append("gpus")
        return self.state


@settings(max_examples=300, deadline=None)
@given(nodes(0), pods(), st.integers(0, 20000))
def test_fits_answers_the_first_failing_predicate(
    node: NodeInfo, pod: PodRequest, cpu: int
) -> None:
    host = Host(cpu, ClusterSnapshot([node]).gpus(node.name, NOW))
    fit = PodFit.of(pod)
    misfit = fits(fit, node, host, NOW)
    want = expected(pod, node, (cpu, 0), host.state)
    assert (None if misfit is None else (misfit.check, misfit.reason)) == want
    if misfit is not None:
        assert misfit.check in FAILURE_KINDS
        assert misfit.resolvable == (misfit.check not in UNRESOLVABLE)
    label = label_misfit(fit, node)
    if want is not None and want[0] in ("untolerated_taint", "node_affinity"):
        assert label == misfit and host.asked == []  # a label answer reads nothing more
    else:
        assert label is None
    reached_gpus = want is None or want[0] in ("gpu_inventory", "insufficient_gpu")
    assert ("gpus" in host.asked) == (pod.gpu is not None and reached_gpus)


def test_shortages_are_resolvable_and_label_problems_are_not() -> None:
    assert set(FAILURE_KINDS) - {"insufficient_resources", "insufficient_gpu"} == UNRESOLVABLE
