"""A modelCapacity metric in the controller: every query it names is read, and the decision is
the step-time model's (the same function the simulator sizes with)."""

from __future__ import annotations

from dataclasses import replace

from policies.metrics import metric_target
from policies.parse import load_policy_file
from policies.schema import ModelCapacityMetric, metric_inputs
from policies.stepmodel import TokenMix, replicas_for_slo
from tests.autoscaler.helpers import (
    Certs,
    FakePrometheus,
    controller_settings,
    deployment,
    fast_behavior,
    policy_configmap,
    run_controller,
    wait_until,
)
from tests.support.kube_standin import KubeStandIn

NS = "inference"
EXAMPLE = "policies/examples/llm-serving-model.yaml"


async def test_model_capacity_reads_all_its_queries_and_sizes_by_the_model(
    kube: KubeStandIn, fake_prometheus: FakePrometheus, certs: Certs
) -> None:
    [example] = load_policy_file(EXAMPLE)
    metric = example.metrics[0]
    assert isinstance(metric, ModelCapacityMetric)
    policy = replace(
        example, name="llama", metrics=(metric,), interval=1.0, behavior=fast_behavior()
    )
    policy = replace(policy, target=replace(policy.target, name="llama"))
    kube.store.create(deployment("llama", NS, 1))
    kube.store.create(policy_configmap(policy))
    queries = [q for _, q in metric_inputs(metric)]
    answers = dict(zip(queries, (40.0, 80_000.0, 8000.0), strict=True))
    fake_prometheus.answers.update(answers)
    assert kube.kubeconfig_path is not None
    settings = controller_settings(fake_prometheus.url, kube.kubeconfig_path, certs)
    expect = replicas_for_slo(
        metric.profile, metric.limits, 40.0, TokenMix(2000, 200), 0.5, 0.05, 32
    ).replicas
    async with run_controller(settings) as rc:
        published = await wait_until(lambda: rc.controller.store.get(NS, "llama"))
        assert published.replicas == expect > 1
    assert set(answers) <= set(fake_prometheus.calls)
    assert metric_target(metric) == 0.5


async def test_burst_envelope_state_is_kept_between_the_controllers_ticks(
    kube: KubeStandIn, fake_prometheus: FakePrometheus, certs: Certs
) -> None:
    """The burst example in the controller: after a burst, the policy with ``burst`` keeps
    proposing the burst's size (its state lives across ticks) while the same policy without it
    follows the load down; both sized by the same step-time model."""
    [example] = load_policy_file("policies/examples/llm-serving-burst.yaml")
    assert example.burst is not None
    metric = example.metrics[0]
    assert isinstance(metric, ModelCapacityMetric) and metric.slo.tpot is not None
    base = replace(example, metrics=(metric,), interval=0.5, behavior=fast_behavior())
    held = replace(base, name="held", target=replace(base.target, name="held"))
    plain = replace(base, name="plain", target=replace(base.target, name="plain"), burst=None)
    for p in (held, plain):
        kube.store.create(deployment(p.name, NS, 16))  # within one scale-up step of both sizes
        kube.store.create(policy_configmap(p))
    queries = [q for _, q in metric_inputs(metric)]

    def size(rate: float) -> int:
        mix = TokenMix(2000, 200)
        slo = metric.slo
        return replicas_for_slo(
            metric.profile, metric.limits, rate, mix, slo.ttft, slo.tpot, 32
        ).replicas

    high, low = size(40.0), size(2.0)
    assert high > low >= 1
    fake_prometheus.answers.update(zip(queries, (40.0, 80_000.0, 8000.0), strict=True))
    assert kube.kubeconfig_path is not None
    settings = controller_settings(fake_prometheus.url, kube.kubeconfig_path, certs)
    async with run_controller(settings) as rc:
        store = rc.controller.store
        for name in ("held", "plain"):
            await wait_until(lambda n=name: (p := store.get(NS, n)) and p.replicas == high)
        switched = store.get(NS, "held").decided_at
        fake_prometheus.answers.update(zip(queries, (2.0, 4000.0, 400.0), strict=True))
        await wait_until(lambda: store.get(NS, "plain").replicas == low)
        await wait_until(lambda: store.get(NS, "held").decided_at > switched + 1.0)
        assert store.get(NS, "held").replicas == high
