"""The manifests only pass flags the real ``gpuscale`` commands accept, with valid values."""

from __future__ import annotations

import re

import click
import pytest

from gpuscale.cli import cli, main
from tests.deploy.manifests import TREES, Obj, gpuscale_containers, render

# Values the kubelet substitutes for $(VAR) in args, as it would in the pod.
_FIELD_VALUES = {
    "metadata.name": "gpuscale-controller-7d4b9c-x2x9z",
    "metadata.namespace": "gpuscale-system",
    "spec.nodeName": "gpu-node-1",
}


def _env(container: Obj) -> dict[str, str]:
    env = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            env[var["name"]] = _FIELD_VALUES[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def _expand(arg: str, env: dict[str, str]) -> str:
    def sub(match: re.Match[str]) -> str:
        assert match.group(1) in env, f"$({match.group(1)}) is not defined in the container env"
        return env[match.group(1)]

    return re.sub(r"\$\((\w+)\)", sub, arg)


def _invocations() -> list[tuple[str, str, list[str], dict[str, str]]]:
    found = []
    seen: set[tuple[str, ...]] = set()
    for tree in TREES:
        for where, _spec, c in gpuscale_containers(render(tree)):
            if tuple(c["args"]) in seen:
                continue
            seen.add(tuple(c["args"]))
            where = f"{tree or 'deploy'}:{where}"
            assert "command" not in c, f"{where}: the image's ENTRYPOINT is gpuscale; set args only"
            env = _env(c)
            args = [_expand(a, env) for a in c["args"]]
            found.append((where, args[0], args[1:], env))
    return found


INVOCATIONS = _invocations()
CASES = [
    pytest.param(*inv, id=inv[0].split(":", 1)[0] + ":" + inv[0].rsplit("/", 1)[-1])
    for inv in INVOCATIONS
]


def test_all_three_commands_are_deployed() -> None:
    assert {sub for _w, sub, _a, _e in INVOCATIONS} == {"controller", "extender", "node-agent"}
    actuations = {a for _w, _s, args, _e in INVOCATIONS for a in args if "--actuation" in a}
    assert actuations == {"--actuation=hpa", "--actuation=prometheus"}


@pytest.mark.parametrize(("where", "sub", "args", "env"), CASES)
def test_help_lists_every_flag_used(
    where: str, sub: str, args: list[str], env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([sub, "--help"]) == 0
    help_text = capsys.readouterr().out
    for arg in args:
        assert arg.startswith("--"), f"{where}: positional argument {arg!r}"
        flag = arg.split("=", 1)[0]
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), (
            f"{where}: `gpuscale {sub} --help` does not list {flag}"
        )


@pytest.mark.parametrize(("where", "sub", "args", "env"), CASES)
def test_flags_parse_with_their_values(
    where: str, sub: str, args: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """click parses the exact argument list (types, choices, required options, env vars)."""
    for name in list(_FIELD_VALUES) + list(env):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    group_ctx = click.Context(cli, info_name="gpuscale", auto_envvar_prefix="GPUSCALE")
    command = cli.get_command(group_ctx, sub)
    assert command is not None
    try:
        ctx = command.make_context(sub, list(args), parent=group_ctx)
    except click.ClickException as exc:
        pytest.fail(f"{where}: gpuscale {sub} {' '.join(args)}: {exc.format_message()}")
    given = {a.split("=", 1)[0] for a in args}
    for param in command.params:
        if not isinstance(param, click.Option):
            continue
        envvars = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or [])
        from_env = [e for e in envvars if e in env]
        if param.required:
            assert set(param.opts) & given or from_env, f"{where}: required {param.opts} not set"
        if from_env and not set(param.opts) & given:
            # a value the pod passes through its environment (NODE_NAME from spec.nodeName)
            assert ctx.params[str(param.name)] == env[from_env[0]], where


def test_value_checks_are_real() -> None:
    """Guard the guard: a bad choice is rejected by the same parsing."""
    group_ctx = click.Context(cli, info_name="gpuscale", auto_envvar_prefix="GPUSCALE")
    command = cli.get_command(group_ctx, "controller")
    assert command is not None
    with pytest.raises(click.BadParameter):
        command.make_context(
            "controller", ["--prometheus-url=http://p:9090", "--actuation=keda"], parent=group_ctx
        )


def test_controller_leader_election_flags_match_its_role() -> None:
    objs = render()
    (controller,) = (a for w, s, a, _e in INVOCATIONS if s == "controller" and "hpa" in str(a))
    flags = {a.partition("=")[0]: a.partition("=")[2] for a in controller}
    assert "--leader-elect" in flags
    assert flags["--leader-elect-namespace"] == "gpuscale-system"
    role = next(
        o
        for o in objs
        if o["kind"] == "Role" and o["metadata"]["name"] == "gpuscale-controller-leader-election"
    )
    named = next(r for r in role["rules"] if r.get("resourceNames"))
    assert named["resourceNames"] == [flags["--leader-elect-lease-name"]]
