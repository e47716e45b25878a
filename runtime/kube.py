"""The Kubernetes API client of every gpuscale server, configured once.

``trust_env`` is off. With it on (the client's default), aiohttp looks up ``~/.netrc`` and the
proxy variables in a worker thread on every request: two thread hand-offs per API call, which
doubled the controller's CPU per call and added the same to every bind of the extender (0.7 ms of
client CPU per Binding, measured against a local server; a raw aiohttp call costs 0.18 ms). A
kubeconfig's ``proxy-url`` still applies: the client passes it with each request.
"""

from __future__ import annotations

from typing import Any


class KubeAccessError(Exception):
    """No usable Kubernetes credentials; the message names where they were looked for."""


async def kube_client(kubeconfig: str | None) -> Any:
    """A ``kubernetes.aio`` ApiClient from a kubeconfig file, else from the pod's service
    account."""
    from kubernetes.aio import client, config

    configuration = client.Configuration()
    configuration.client_session_kwargs = {"trust_env": False}
    try:
        if kubeconfig:
            await config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig,
                client_configuration=configuration,
                persist_config=False,
            )
        else:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except Exception as exc:
        where = kubeconfig or "in-cluster service account"
        raise KubeAccessError(f"cannot load Kubernetes configuration from {where}: {exc}") from None
    return client.ApiClient(configuration)
