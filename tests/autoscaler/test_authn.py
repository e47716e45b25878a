"""Front-proxy authentication: the pure rules, then the running controller over direct HTTPS."""

from __future__ import annotations

import json
import logging
import ssl
from typing import Any

import aiohttp
import pytest
import trustme
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from autoscaler.authn import (
    AuthnConfigError,
    FrontProxy,
    authenticate,
    common_name,
    from_configmap,
)
from runtime.startup import StartupError
from tests.autoscaler.helpers import (
    Certs,
    FakePrometheus,
    controller_settings,
    deployment,
    make_policy,
    policy_configmap,
    run_controller,
    wait_until,
)
from tests.support.kube_aggregator import HPA_USER, FrontProxyPki
from tests.support.kube_standin import KubeStandIn

NS = "inference"
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
CERT = {"subject": ((("commonName", "front-proxy-client"),),)}


def test_configmap_defaults_and_lists() -> None:
    assert from_configmap(None) is None
    assert from_configmap({"client-ca-file": PEM}) is None  # no front-proxy CA
    trust = from_configmap(
        {
            "requestheader-client-ca-file": PEM,
            "requestheader-allowed-names": '["front-proxy-client","aggregator"]',
            "requestheader-username-headers": '["X-Remote-User"]',
            "requestheader-group-headers": "[]",
        }
    )
    assert trust is not None
    assert trust.allowed_names == ("front-proxy-client", "aggregator")
    assert trust.username_headers == ("X-Remote-User",)
    assert trust.group_headers == ("X-Remote-Group",)  # an empty list means the default
    assert "kube-system/extension-apiserver-authentication" in trust.source


@pytest.mark.parametrize("bad", ["not json", '"one"', "[1, 2]", '{"a": 1}'])
def test_configmap_with_a_bad_list_says_which_key(bad: str) -> None:
    with pytest.raises(AuthnConfigError, match="requestheader-allowed-names"):
        from_configmap({"requestheader-client-ca-file": PEM, "requestheader-allowed-names": bad})


@given(st.lists(st.text(min_size=1, max_size=20), max_size=5))
def test_allowed_names_survive_their_json_form(names: list[str]) -> None:
    trust = from_configmap(
        {"requestheader-client-ca-file": PEM, "requestheader-allowed-names": json.dumps(names)}
    )
    assert trust is not None and trust.allowed_names == tuple(names)


def test_verdicts() -> None:
    trust = FrontProxy(PEM, allowed_names=("front-proxy-client",))
    user = {"X-Remote-User": "alice"}
    assert authenticate(trust, None, user).status == 401
    assert authenticate(trust, {}, user).status == 401
    intruder = {"subject": ((("commonName", "intruder"),),)}
    denied = authenticate(trust, intruder, user)
    assert denied.status == 403 and "intruder" in denied.message
    assert authenticate(trust, CERT, {}).status == 401  # the proxy must name the user
    ok = authenticate(trust, CERT, user)
    assert ok.allowed and ok.user == "alice"
    assert authenticate(FrontProxy(PEM), intruder, user).allowed  # no list: any CN
    assert authenticate(None, None, {}).allowed  # --insecure-allow-any-client
    assert common_name(CERT) == "front-proxy-client" and common_name(None) is None


# -- the running controller, called straight over HTTPS ------------------------------------------


def _client(certs: Certs, cert: trustme.LeafCert | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    certs.ca.configure_trust(context)
    if cert is not None:
        cert.configure_cert(context)
    return context


async def _get(
    session: aiohttp.ClientSession, port: int, context: ssl.SSLContext
) -> tuple[int, Any]:
    url = f"https://127.0.0.1:{port}/apis/external.metrics.k8s.io/v1beta1"
    async with session.get(url, ssl=context, headers={"X-Remote-User": HPA_USER}) as resp:
        return resp.status, await resp.json()


async def test_only_the_front_proxy_from_the_configmap_gets_in(
    kube: KubeStandIn,
    fake_prometheus: FakePrometheus,
    certs: Certs,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No flag: CA and allowed names come from kube-system/extension-apiserver-authentication."""
    kube.store.create(deployment("llama", NS, 1))
    kube.store.create(policy_configmap(make_policy("llama", NS)))
    assert kube.kubeconfig_path is not None
    settings = controller_settings(
        fake_prometheus.url, kube.kubeconfig_path, certs, requestheader_client_ca_file=None
    )
    caplog.set_level(logging.DEBUG, logger="autoscaler.external_metrics")
    async with run_controller(settings) as rc, aiohttp.ClientSession() as session:
        port = rc.running.secure_port
        assert port is not None
        status, _ = await _get(session, port, _client(certs, certs.client_cert))
        assert status == 200
        assert any(getattr(r, "user", None) == HPA_USER for r in caplog.records)

        status, body = await _get(session, port, _client(certs, None))
        assert (status, body["kind"], body["reason"]) == (401, "Status", "Unauthorized")

        wrong_cn = certs.client_ca.issue_cert("intruder", common_name="intruder")
        status, body = await _get(session, port, _client(certs, wrong_cn))
        assert (status, body["reason"]) == (403, "Forbidden")
        assert "intruder" in body["message"]

        other_ca = trustme.CA().issue_cert("x", common_name="front-proxy-client")
        with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
            await _get(session, port, _client(certs, other_ca))
    assert kube.requests_matching(
        "GET", "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication"
    )


async def test_a_new_front_proxy_ca_in_the_configmap_takes_over(
    kube: KubeStandIn, fake_prometheus: FakePrometheus, certs: Certs
) -> None:
    assert kube.kubeconfig_path is not None
    settings = controller_settings(
        fake_prometheus.url,
        kube.kubeconfig_path,
        certs,
        requestheader_client_ca_file=None,
        authn_refresh=0.1,
        tls_reload_interval=0.1,
    )
    rotated = FrontProxyPki.make()
    async with run_controller(settings) as rc, aiohttp.ClientSession() as session:
        port = rc.running.secure_port
        assert port is not None
        assert (await _get(session, port, _client(certs, certs.client_cert)))[0] == 200
        kube.store.create(rotated.configmap())

        async def rotated_in() -> bool:
            try:
                return (await _get(session, port, _client(certs, rotated.client_cert)))[0] == 200
            except aiohttp.ClientError:
                return False

        await wait_until(rotated_in, within=10)
        with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
            await _get(session, port, _client(certs, certs.client_cert))


async def test_no_front_proxy_ca_anywhere_refuses_to_start_unless_told(
    kube: KubeStandIn, fake_prometheus: FakePrometheus, certs: Certs
) -> None:
    kube.store.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "extension-apiserver-authentication", "namespace": "kube-system"},
            "data": {"client-ca-file": PEM},
        }
    )
    assert kube.kubeconfig_path is not None
    settings = controller_settings(
        fake_prometheus.url, kube.kubeconfig_path, certs, requestheader_client_ca_file=None
    )
    with pytest.raises(StartupError, match=r"no front-proxy CA.*--insecure-allow-any-client"):
        async with run_controller(settings):
            pass
    insecure = controller_settings(
        fake_prometheus.url,
        kube.kubeconfig_path,
        certs,
        requestheader_client_ca_file=None,
        insecure_allow_any_client=True,
    )
    async with run_controller(insecure) as rc, aiohttp.ClientSession() as session:
        assert rc.running.secure_port is not None
        status, _ = await _get(session, rc.running.secure_port, _client(certs, None))
        assert status == 200


def test_cli_lists_the_flags_and_checks_allowed_names_needs_the_file() -> None:
    from gpuscale.cli import cli

    runner = CliRunner()
    help_text = runner.invoke(cli, ["controller", "--help"]).output
    assert "--requestheader-allowed-names" in help_text
    assert "--insecure-allow-any-client" in help_text
    result = runner.invoke(
        cli,
        [
            "controller",
            "--prometheus-url",
            "http://p:9090",
            "--requestheader-allowed-names",
            "front-proxy-client",
        ],
    )
    assert result.exit_code == 1
    assert "--requestheader-allowed-names needs --requestheader-client-ca-file" in result.output
