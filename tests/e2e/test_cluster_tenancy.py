"""Scenario: three teams, one controller, identical policies (as everyone copies the examples).

Three namespaces each run a vLLM-style server whose series Prometheus labels with the namespace
(as Kubernetes service discovery does) and a ScalingPolicy with the same name, the same metric
name and the same query. The controller runs with namespace enforcement on (deploy/'s default):
each team's query is confined to its own series, each keeps its own decision state, and each
Deployment ends at its own count through the real HPA. Deleting one team's policy removes its
HPA and leaves the others as they were. A team that points a query at another team's series is
refused (status Invalid, an InvalidPolicy Event) and never sees the other team's load.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.aio import client as kclient

from tests.autoscaler.helpers import metric_count, metric_via_api
from tests.e2e.cluster import ControlPlane, Process
from tests.e2e.conftest import ThreadedInferenceServer
from tests.e2e.install import Installed, apply, running_controller
from tests.e2e.kube import (
    api,
    deployment,
    eventually,
    namespace,
    policy_configmap,
    policy_event_reasons,
    policy_status,
    spec_replicas,
)
from tests.support.inference_server import InferenceServer
from tests.support.prometheus import PrometheusServer

pytestmark = [pytest.mark.cluster]

TEAMS = {"team-a": 37, "team-b": 9, "team-c": 0}
"""Requests waiting in each team's server; at 4 per replica: 10, 3 and 1 replicas."""
EXPECTED = {"team-a": 10, "team-b": 3, "team-c": 1}
NAME = "chat"
QUEUE = 'sum(vllm:num_requests_waiting{model_name="llama"})'


def _policy(query: str = QUEUE) -> dict[str, Any]:
    return {
        "apiVersion": "gpuscale.io/v1alpha1",
        "kind": "ScalingPolicy",
        "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME},
        "replicas": {"min": 1, "max": 32},
        "interval": "1s",
        "metrics": [{"name": "queue", "type": "queueDepth", "query": query, "targetPerReplica": 4}],
        "behavior": {
            "scaleUp": {
                "stabilizationWindow": "0s",
                "select": "Max",
                "policies": [{"type": "Percent", "value": 1000, "period": "1s"}],
            },
            # The default 5-minute window: a team that shared another's state kept its peak.
            "scaleDown": {"stabilizationWindow": "300s"},
        },
    }


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, InferenceServer]]:
    started = {team: ThreadedInferenceServer() for team in TEAMS}
    for s in started.values():
        s.start()
    try:
        for team, waiting in TEAMS.items():
            started[team].server.set_waiting(waiting)
        yield {team: s.server for team, s in started.items()}
    finally:
        for s in started.values():
            s.stop()


@pytest.fixture(scope="module")
def team_prometheus(
    servers: dict[str, InferenceServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusServer]:
    job = {
        "job_name": "teams",
        "scrape_interval": "1s",
        "static_configs": [
            {"targets": [server.target], "labels": {"namespace": team}}
            for team, server in servers.items()
        ],
    }
    prom = PrometheusServer(tmp_path_factory.mktemp("prometheus"), extra_scrape_configs=[job])
    prom.start()
    try:
        yield prom
    finally:
        prom.stop()


@pytest.fixture(scope="module")
def controller(installed: Installed, team_prometheus: PrometheusServer) -> Iterator[Process]:
    with running_controller(
        installed, name="gpuscale-controller-tenancy", prometheus_url=team_prometheus.url
    ) as proc:
        yield proc


async def _replicas(admin_client: Any, ns: str) -> int:
    return await spec_replicas(admin_client, ns, NAME)


async def _hpa_exists(admin_client: Any, ns: str) -> bool:
    try:
        await api(admin_client, "AutoscalingV2Api").read_namespaced_horizontal_pod_autoscaler(
            f"gpuscale-{NAME}", ns
        )
    except kclient.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


async def _counts(admin_client: Any) -> dict[str, int]:
    return {ns: await _replicas(admin_client, ns) for ns in TEAMS}


async def _served(admin_client: Any) -> dict[str, int | None]:
    """Each team's desired count as the HPA reads it (None while the API has none)."""
    out: dict[str, int | None] = {}
    for ns in TEAMS:
        code, body = await metric_via_api(admin_client, ns, NAME)
        out[ns] = metric_count(body) if code == 200 else None
    return out


async def _statuses(admin_client: Any) -> dict[str, tuple[Any, Any]]:
    out: dict[str, tuple[Any, Any]] = {}
    for ns in TEAMS:
        status = await policy_status(admin_client, ns, NAME)
        out[ns] = (status.get("state"), status.get("desiredReplicas"))
    return out


async def test_each_team_scales_by_its_own_series(
    control_plane: ControlPlane,
    controller: Process,
    team_prometheus: PrometheusServer,
    admin_client: Any,
) -> None:
    total = sum(TEAMS.values())
    await team_prometheus.wait_for_value(QUEUE, lambda v: v == total)
    for ns in TEAMS:
        apply(control_plane, [namespace(ns), deployment(NAME, ns, 1)])
        apply(control_plane, [policy_configmap(NAME, ns, _policy())], manager="sre")
    # Unscoped, each query would read all three teams (46 waiting: 12 replicas each).
    # team-c's count is its Deployment's first one, so its replicas alone cannot tell that its
    # policy was decided: wait for every team's served metric too.
    served = await eventually(
        "each team's metric served at its own count",
        lambda: _served(admin_client),
        lambda c: c == EXPECTED,
        within=90,
    )
    assert served == EXPECTED
    counts = await eventually(
        "each team at its own count",
        lambda: _counts(admin_client),
        lambda c: c == EXPECTED,
        within=90,
    )
    assert counts == EXPECTED
    for ns, expected in EXPECTED.items():
        code, body = await metric_via_api(admin_client, ns, NAME)
        assert code == 200 and metric_count(body) == expected, (ns, body)
    # The status is written after the decision is served: wait for it as well.
    statuses = await eventually(
        "each team's status Active at its own count",
        lambda: _statuses(admin_client),
        lambda c: c == {ns: ("Active", n) for ns, n in EXPECTED.items()},
        within=60,
    )
    assert statuses == {ns: ("Active", n) for ns, n in EXPECTED.items()}


async def test_deleting_one_teams_policy_leaves_the_others_alone(
    control_plane: ControlPlane, controller: Process, admin_client: Any
) -> None:
    await api(admin_client, "CoreV1Api").delete_namespaced_config_map(NAME, "team-b")
    await eventually(
        "team-b's HPA gone",
        lambda: _hpa_exists(admin_client, "team-b"),
        lambda exists: not exists,
        within=30,
    )
    assert await _hpa_exists(admin_client, "team-a") and await _hpa_exists(admin_client, "team-c")
    counts = await _counts(admin_client)
    assert counts["team-a"] == EXPECTED["team-a"] and counts["team-c"] == EXPECTED["team-c"]
    for ns in ("team-a", "team-c"):
        code, body = await metric_via_api(admin_client, ns, NAME)
        assert code == 200 and metric_count(body) == EXPECTED[ns]


async def test_a_team_that_reads_another_teams_series_is_refused(
    control_plane: ControlPlane,
    controller: Process,
    servers: dict[str, InferenceServer],
    admin_client: Any,
) -> None:
    nosy = 'sum(vllm:num_requests_waiting{namespace="team-a", model_name="llama"})'
    apply(control_plane, [policy_configmap(NAME, "team-c", _policy(nosy))], manager="sre")

    refused = await eventually(
        "team-c Invalid",
        lambda: policy_status(admin_client, "team-c", NAME),
        lambda s: s.get("state") == "Invalid",
        within=30,
    )
    assert any(
        "metrics[0].query" in e and "namespace enforcement" in e and "team-a" in e
        for e in refused["errors"]
    ), refused
    # The Event is written after the status (its own API call): wait for it, do not race it.

    await eventually(
        "InvalidPolicy Event",
        lambda: policy_event_reasons(admin_client, "team-c", NAME),
        lambda r: "InvalidPolicy" in r,
        within=30,
    )
    # The last good version (its own series: nothing waiting) keeps running; team-a's load of
    # 37 is never served to team-c, neither as a count nor through the status.
    servers["team-c"].set_waiting(5)
    await eventually(
        "team-c at 2 from its own series",
        lambda: _replicas(admin_client, "team-c"),
        lambda n: n == 2,
        within=60,
    )
    code, body = await metric_via_api(admin_client, "team-c", NAME)
    assert code == 200 and metric_count(body) == 2
    reason = str((await policy_status(admin_client, "team-c", NAME)).get("reason", ""))
    # team-a's 37 as a number of its own (a resourceVersion such as 3637 may hold the digits)
    assert not re.search(r"(?<![\d.])37(?![\d.])", reason), reason
