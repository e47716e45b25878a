from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gpuscale.cli import main

EXAMPLES = sorted((Path(__file__).parents[2] / "policies" / "examples").glob("*.yaml"))
LLM = Path(__file__).parents[2] / "policies" / "examples" / "llm-chat-vllm.yaml"


def test_check_passes_the_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", *map(str, EXAMPLES)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(EXAMPLES)
    assert any("inference/llama-chat: ok (Deployment/llama-chat, replicas 1..32" in o for o in out)
    assert any("llama-burst: ok" in o and o.endswith("burst envelope max over 10m)") for o in out)


def test_check_reports_every_error_with_file_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cm = yaml.safe_load(LLM.read_text())
    doc = yaml.safe_load(cm["data"]["policy.yaml"])
    doc["metrics"][1]["slo"] = "fast"
    doc["replicas"]["min"] = 40
    cm["data"]["policy.yaml"] = yaml.safe_dump(doc)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cm))
    assert main(["policy", "check", str(bad), str(LLM)]) == 1
    captured = capsys.readouterr()
    assert sorted(captured.err.splitlines()) == [
        f'{bad}: inference/llama-chat: metrics[1].slo: expected a duration like "2s", got "fast"',
        f"{bad}: inference/llama-chat: replicas.min: must not exceed replicas.max (32), got 40",
    ]
    assert "llama-chat: ok" in captured.out


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("a: [b\n", "YAML syntax error"),
        ("", "no YAML documents"),
        ("kind: Deployment\nmetadata: {name: x}\n", "not a ScalingPolicy: kind is 'Deployment'"),
        (
            "kind: ConfigMap\nmetadata: {name: x, namespace: y}\ndata: {}\n",
            'y/x: not a ScalingPolicy: missing label gpuscale.io/scaling-policy: "true"',
        ),
        ("- 1\n- 2\n", "expected a ConfigMap object, got a list"),
        (b"\xff\xfe bad".decode("latin-1"), "bad"),
    ],
)
def test_check_never_tracebacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, expected: str
) -> None:
    path = tmp_path / "input.yaml"
    path.write_text(content)
    assert main(["policy", "check", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(str(path))
    assert expected in err
    assert "Traceback" not in err


def test_check_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", str(tmp_path / "nope.yaml"), str(tmp_path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"{tmp_path / 'nope.yaml'}: cannot read: No such file or directory"
    assert err[1] == f"{tmp_path}: cannot read: Is a directory"


def test_console_script_runs_as_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gpuscale", "policy", "check", str(LLM)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("controller", "extender", "node-agent", "policy", "simulate"):
        assert name in out


def test_explain_prints_steps_and_winner(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "policy",
            "explain",
            str(LLM),
            "-m",
            "queue=37",
            "-m",
            "latency=1.0",
            "-m",
            "load=3",
            "--current",
            "4",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "queue" in out and "← winner" in out
    assert "Desired replicas: 8" in out  # ceil(37 / 4) = 10, capped by +4 pods per 15 s
    then = out.split("Then:")[1]
    assert "behavior.scaleUp.policies[0] (Percent 100 per 15s): 10 → 8" in then
    assert "waiting / 4 per replica" not in then  # proposals are not printed twice


def test_explain_json_for_machines(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "policy",
            "explain",
            str(LLM),
            "-m",
            "queue=2",
            "-m",
            "latency=missing",
            "--current",
            "3",
            "--json",
        ]
    )
    assert code == 0
    body = json.loads(capsys.readouterr().out)
    decision = body["decision"]
    assert body["policy"] == "inference/llama-chat"
    assert decision["desired_replicas"] == 3  # metrics missing: hold, never scale down
    assert set(decision["metrics_missing"]) == {"latency", "load"}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-m", "queue"], "expected NAME=VALUE"),
        (["-m", "queue=lots"], "queue: expected a number"),
        (["-m", "cpu=3"], "unknown metric cpu"),
    ],
)
def test_explain_bad_metrics_exit_1(
    capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    assert main(["policy", "explain", str(LLM), *args, "--current", "2"]) == 1
    assert expected in capsys.readouterr().err


def test_every_flag_has_an_environment_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GPUSCALE_POLICY_EXPLAIN_CURRENT", "3")
    assert main(["policy", "explain", str(LLM), "-m", "queue=1"]) == 0
    assert "Now: 3 replicas." in capsys.readouterr().out


def test_explain_shows_the_burst_envelope(capsys: pytest.CaptureFixture[str]) -> None:
    burst = LLM.parent / "llm-serving-burst.yaml"
    args = ["policy", "explain", str(burst), "--current", "3", "-m", "kv-cache=0.1"]
    rates = ["-m", "capacity=40", "-m", "capacity:promptTokens=80000"]
    code = main([*args, *rates, "-m", "capacity:generationTokens=8000"])
    assert code == 0
    out = capsys.readouterr().out
    # One tick from a fresh state: the envelope holds only the size now (24 with the
    # profile's alpha terms and the example's 26 ms TPOT bound).
    assert "burst envelope (max of 1 sizes over 10m) 24, no more" in out


def _with_queries(tmp_path: Path, queries: dict[int, str], *, namespace: str = "inference") -> Path:
    """The chat example in namespace ``namespace``, with metric ``i``'s query from ``queries``
    and the others' a plain ``sum(q)``."""
    cm = yaml.safe_load(LLM.read_text())
    cm["metadata"]["namespace"] = namespace
    doc = yaml.safe_load(cm["data"]["policy.yaml"])
    for i, metric in enumerate(doc["metrics"]):
        metric["query"] = queries.get(i, "sum(q)")
    cm["data"]["policy.yaml"] = yaml.safe_dump(doc)
    path = tmp_path / "tenant.yaml"
    path.write_text(yaml.safe_dump(cm))
    return path


def test_check_refuses_queries_that_read_another_namespace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _with_queries(
        tmp_path,
        {
            0: 'sum(vllm:num_requests_waiting{namespace="billing"})',
            2: "sum(rate(x{namespace=~'.+'}[1m]))",
        },
        namespace="team-a",
    )
    assert main(["policy", "check", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert err[0].startswith(
        f"{path}: team-a/llama-chat: metrics[0].query: namespace enforcement: "
    )
    assert 'reads namespace "billing", but this policy lives in "team-a"' in err[0]
    assert err[1].startswith(f"{path}: team-a/llama-chat: metrics[2].query: ")
    assert 'with "=~"' in err[1]


def test_check_tenancy_label_and_opt_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _with_queries(tmp_path, {0: 'sum(q{kubernetes_namespace="other"})'}, namespace="a")
    assert main(["policy", "check", str(path)]) == 0
    assert main(["policy", "check", "--tenancy-label", "kubernetes_namespace", str(path)]) == 1
    assert "metrics[0].query: namespace enforcement" in capsys.readouterr().err
    assert (
        main(
            [
                "policy",
                "check",
                "--no-tenancy",
                "--tenancy-label",
                "kubernetes_namespace",
                str(path),
            ]
        )
        == 0
    )


def test_check_reports_unparsable_promql_with_its_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _with_queries(tmp_path, {1: "sum(rate(x[5m])"})
    assert main(["policy", "check", str(path)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    where = f"{path}: inference/llama-chat: metrics[1].query"
    assert line == f"{where}: invalid PromQL at 1:16: unclosed left parenthesis"


@pytest.mark.parametrize("label", ["", "1abc", "name-space", "__name__"])
def test_check_refuses_a_bad_tenancy_label(label: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", "--tenancy-label", label, str(LLM)]) == 1
    err = capsys.readouterr().err
    assert "--tenancy-label" in err
    assert "Traceback" not in err


def _bare(tmp_path: Path, name: str = "policy.yaml") -> Path:
    """The policy.yaml of the LLM example, without its ConfigMap."""
    path = tmp_path / name
    path.write_text(yaml.safe_load(LLM.read_text())["data"]["policy.yaml"])
    return path


def test_check_takes_a_bare_policy_with_namespace_and_name_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _bare(tmp_path)
    args = ["policy", "check", "-n", "inference", "--name", "llama-chat", str(path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: inference/llama-chat: ok (Deployment/llama-chat")
    note = "[bare ScalingPolicy: namespace inference (--namespace), name llama-chat (--name)]"
    assert note in out


def test_check_says_what_it_assumed_for_a_bare_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The example's queries name namespace="inference": checked in "default" they are refused,
    and the message says the namespace was assumed and which flag sets it."""
    path = _bare(tmp_path, "chat.yaml")
    assert main(["policy", "check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: default/chat: metrics[0].query: namespace enforcement" in err
    assert "checked in namespace 'default'; give the namespace it will live in with" in err
    assert main(["policy", "check", "--no-tenancy", str(path)]) == 0
    out = capsys.readouterr().out
    assert "default/chat: ok" in out
    assert "namespace default (assumed; set --namespace), name chat (from the file name" in out


def test_a_bare_policy_reports_errors_under_the_name_it_was_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("apiVersion: gpuscale.io/v1alpha1\nkind: ScalingPolicy\nreplicas: {min: 1}\n")
    assert main(["policy", "check", "-n", "team-a", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert f"{path}: team-a/policy: target: required field is missing" in err


def test_explain_takes_a_bare_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _bare(tmp_path)
    args = ["policy", "explain", str(path), "-m", "queue=37", "--current", "4"]
    assert main(args) == 0
    assert "Policy default/policy scales Deployment/llama-chat" in capsys.readouterr().out


def test_explain_says_what_a_first_decision_leaves_out(capsys: pytest.CaptureFixture[str]) -> None:
    """A scale-down that the controller would hold for the stabilization window is flagged."""
    args = ["policy", "explain", str(LLM), "-m", "queue=3", "-m", "latency=0.2", "-m", "load=2"]
    assert main([*args, "--current", "4"]) == 0
    out = capsys.readouterr().out
    assert "Desired replicas: 1" in out
    assert "behavior.scaleDown.stabilizationWindow 5m: only to the highest recommendation" in out
    assert "behavior.scaleUp.stabilizationWindow 0s: off" in out


def test_explain_shows_an_unreachable_slo_and_unschedulable_pods(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A TTFT bound below one prompt's prefill is sized near that floor, and said so; pods
    with no room hold the count at the current one."""
    from dataclasses import replace

    from policies.parse import load_policy_file, policy_to_configmap
    from policies.schema import ModelCapacityMetric, ServingSlo

    [p] = load_policy_file(Path(__file__).parents[2] / "policies/examples/llm-serving-model.yaml")
    metrics = tuple(
        replace(m, slo=ServingSlo(ttft=0.01)) if isinstance(m, ModelCapacityMetric) else m
        for m in p.metrics
    )
    path = tmp_path / "unreachable.yaml"
    path.write_text(yaml.safe_dump(policy_to_configmap(replace(p, metrics=metrics))))
    load = ["-m", "capacity=40", "-m", "capacity:promptTokens=80000"]
    load += ["-m", "capacity:generationTokens=8000", "-m", "kv-cache=0.5", "-m", "itl=0.03"]
    assert main(["policy", "explain", str(path), *load, "--current", "3"]) == 0
    out = capsys.readouterr().out
    assert "SLO unreachable (capacity): TTFT bound 10ms is below" in out
    # 12 replicas bring TTFT within 10% of an idle replica's; more would not help, so not max 32
    assert re.search(r"capacity\s+modelCapacity\s+value 40\s+proposes\s+12\s", out)
    args = ["policy", "explain", str(path), *load, "--current", "3", "--unschedulable", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Now: 3 replicas, 2 of them unschedulable." in out
    assert "Desired replicas: 3" in out


VARIANTS = Path(__file__).parents[2] / "policies" / "examples" / "llm-serving-variants.yaml"
LOAD = ["-m", "capacity=200", "-m", "capacity:promptTokens=160000"]
LOAD += ["-m", "capacity:generationTokens=40000"]


def test_explain_variants_shows_the_mix_and_why_not_one_fewer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["policy", "explain", str(VARIANTS), *LOAD, "--placeable", "h100=2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "h100     Deployment/llama-h100: 2 replicas (bounds 1..2)" in out
    assert "a100     Deployment/llama-a100: 7 replicas (bounds 0..16)" in out
    assert "  - h100: at most 2 (free GPUs; max 8)" in out
    assert "  - one h100 fewer: " in out and "  - one a100 fewer: " in out
    assert "Mix: h100 2, a100 7; 22/h; meets the SLO" in out


def test_explain_variants_fills_the_preferred_one_first(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["policy", "explain", str(VARIANTS), *LOAD, "--json"]) == 0
    mix = json.loads(capsys.readouterr().out)["mix"]
    assert {v["name"]: v["replicas"] for v in mix["variants"]} == {"h100": 4, "a100": 0}
    assert mix["saturated"] is False


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            ["--placeable", "l4=2"],
            "unknown variant l4 in --placeable (policy has: ['h100', 'a100'])",
        ),
        (["--placeable", "h100"], "--placeable 'h100': expected VARIANT=N"),
        (["-m", "capacity=missing"], "metric capacity (or one of its token queries) is missing"),
    ],
)
def test_explain_variants_bad_input_exits_1(
    capsys: pytest.CaptureFixture[str], extra: list[str], expected: str
) -> None:
    args = ["policy", "explain", str(VARIANTS), *LOAD, *extra]
    if "capacity=missing" in extra:
        args = ["policy", "explain", str(VARIANTS), *extra]
    assert main(args) == 1
    assert expected in capsys.readouterr().err


def test_explain_single_target_still_needs_current(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "explain", str(LLM), "-m", "queue=3"]) == 1
    assert "--current is required" in capsys.readouterr().err
