"""Small helpers the e2e scenarios share: polling with a deadline, objects to create, reads."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import yaml

from policies.schema import POLICY_LABEL

T = TypeVar("T")


def api(client: Any, name: str) -> Any:
    """``kubernetes.aio.client.<name>(client)``, untyped: the models' every field is Optional,
    and the scenarios assert on the fields they read."""
    from kubernetes.aio import client as kclient

    return getattr(kclient, name)(client)


async def eventually(
    what: str,
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    *,
    within: float,
    every: float = 0.25,
) -> T:
    """Poll ``probe`` until ``accept`` holds for its value; fail with the last value seen."""
    deadline = time.monotonic() + within
    last: T | None = None
    while True:
        last = await probe()
        if accept(last):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within:.0f} s; last seen: {last!r}")
        await asyncio.sleep(every)


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def deployment(
    name: str,
    ns: str,
    replicas: int,
    *,
    scheduler: str | None = None,
    gpus: int = 0,
    gpu_memory_mib: int | None = None,
    pod_spec: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    limits: dict[str, str] = {}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    if gpu_memory_mib is not None:
        limits["gpuscale.io/gpu-memory"] = str(gpu_memory_mib)
    container: dict[str, Any] = {"name": "server", "image": "vllm/vllm-openai:v0.8.5"}
    if limits:
        container["resources"] = {"limits": limits}
    spec: dict[str, Any] = {"containers": [container], **(pod_spec or {})}
    if scheduler:
        spec["schedulerName"] = scheduler
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
        },
    }


def policy_configmap(name: str, ns: str, policy: Mapping[str, Any]) -> dict[str, Any]:
    """A ScalingPolicy ConfigMap, as an SRE writes it (YAML under ``policy.yaml``)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "labels": {POLICY_LABEL: "true"}},
        "data": {"policy.yaml": yaml.safe_dump(dict(policy), sort_keys=False)},
    }


def status_annotation(configmap: Any) -> dict[str, Any]:
    """The controller's ``gpuscale.io/status`` on a ConfigMap model, decoded (``{}`` if none)."""
    annotations = configmap.metadata.annotations or {}
    text = annotations.get("gpuscale.io/status")
    return dict(json.loads(text)) if text else {}


async def policy_status(admin_client: Any, ns: str, name: str) -> dict[str, Any]:
    """The controller's status of policy ConfigMap ``ns/name`` (:func:`status_annotation`)."""
    cm = await api(admin_client, "CoreV1Api").read_namespaced_config_map(name, ns)
    return status_annotation(cm)


async def policy_event_reasons(admin_client: Any, ns: str, name: str) -> list[str]:
    """The reasons of the Events the controller wrote about policy ConfigMap ``ns/name``."""
    events = await api(admin_client, "CoreV1Api").list_namespaced_event(
        ns, field_selector=f"involvedObject.name={name},involvedObject.kind=ConfigMap"
    )
    return [e.reason for e in events.items]


def condition(obj: Any, kind: str) -> Any:
    for c in obj.status.conditions or []:
        if c.type == kind:
            return c
    return None


async def spec_replicas(client: Any, ns: str, name: str) -> int:
    """The Deployment's ``spec.replicas``: the count the HPA last set."""
    dep = await api(client, "AppsV1Api").read_namespaced_deployment(name, ns)
    return int(dep.spec.replicas)
