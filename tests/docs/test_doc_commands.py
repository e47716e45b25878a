"""Every `gpuscale policy` and `gpuscale simulate` command the READMEs and docs show runs as
shown (no cluster needed for these), so a newcomer who copies them never meets a stale flag or a
missing file.

Commands are taken from ```sh and ```console blocks, with backslash continuations joined and a
leading ``$ `` dropped, and run through the CLI's ``main`` from the repository root. ``--out``
is redirected into a temporary folder. A command that names a file the repository does not hold
(the reader's own scenario) is skipped only if listed in :data:`NEEDS_YOUR_DATA`, so a typo in a
path fails instead of disappearing.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from gpuscale.cli import main

ROOT = Path(__file__).resolve().parents[2]
DOCS = [
    ROOT / "README.md",
    ROOT / "docs" / "vllm-policy.md",
    ROOT / "deploy" / "README.md",
    ROOT / "policies" / "README.md",
]
RUN = ("gpuscale policy ", "gpuscale simulate")
NEEDS_YOUR_DATA = {
    "gpuscale simulate my-service.yaml --policy deploy/examples/llama-chat.yaml "
    "--baseline hpa,keda,kpa --out my-report/",
}
"""Commands on the reader's own files (a scenario replaying their Prometheus)."""


def doc_commands(text: str) -> list[str]:
    """The shell commands of a Markdown text's ``sh``/``console`` blocks, one per command."""
    commands = []
    for block in re.findall(r"```(?:sh|console)\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", "", block)
        for line in joined.splitlines():
            line = line.strip().removeprefix("$ ")
            if line and not line.startswith("#"):
                commands.append(" ".join(line.split()))
    return commands


def _cases() -> list[tuple[str, str]]:
    cases = []
    for doc in DOCS:
        for command in doc_commands(doc.read_text()):
            if command.startswith(RUN):
                cases.append((doc.relative_to(ROOT).as_posix(), command))
    return cases


CASES = _cases()


def _missing_files(args: list[str]) -> list[str]:
    return [a for a in args if a.endswith((".yaml", ".csv")) and not (ROOT / a).exists()]


def test_the_docs_show_the_commands_a_newcomer_needs() -> None:
    """Guard the extraction: the quickstart and the policy guide are found."""
    shown = {(doc, command.split()[1]) for doc, command in CASES}
    assert ("README.md", "policy") in shown and ("README.md", "simulate") in shown
    assert ("docs/vllm-policy.md", "policy") in shown
    assert ("docs/vllm-policy.md", "simulate") in shown
    assert {command for _, command in CASES} >= NEEDS_YOUR_DATA


@pytest.mark.parametrize(("doc", "command"), CASES, ids=[f"{d}: {c}"[:90] for d, c in CASES])
def test_doc_command_runs_as_shown(
    doc: str,
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = shlex.split(command)[1:]
    if _missing_files(args):
        assert command in NEEDS_YOUR_DATA, f"{doc}: no such file: {_missing_files(args)}"
        pytest.skip("runs on the reader's own data")
    if "--out" in args:
        args[args.index("--out") + 1] = str(tmp_path / "out")
    monkeypatch.chdir(ROOT)
    code = main(args)
    captured = capsys.readouterr()
    assert code == 0, f"{doc}: {command}\n{captured.err}"
    assert "Traceback" not in captured.err
    if "--out" in args:
        assert (tmp_path / "out" / "report.json").exists()


HELM_INSTALLS = [
    (doc.relative_to(ROOT).as_posix(), command)
    for doc in DOCS
    for command in doc_commands(doc.read_text())
    if command.startswith("helm install ")
]


def test_the_readme_installs_with_helm() -> None:
    assert any(doc == "README.md" for doc, _ in HELM_INSTALLS)


def _values_file(doc: str, name: str, tmp_path: Path) -> str:
    """A ``--values`` file the doc shows as a ```yaml block whose first line is ``# <name>``,
    written out; a file the doc names but does not show fails the test."""
    text = (ROOT / doc).read_text()
    blocks = re.findall(rf"```yaml\n(# {re.escape(name)}\n.*?)```", text, flags=re.S)
    assert len(blocks) == 1, f"{doc}: --values {name}, but no ```yaml block '# {name}'"
    path = tmp_path / name
    path.write_text(blocks[0])
    return str(path)


@pytest.mark.parametrize(("doc", "command"), HELM_INSTALLS, ids=[d for d, _ in HELM_INSTALLS])
def test_helm_install_commands_render(doc: str, command: str, tmp_path: Path) -> None:
    """``helm install`` as shown, rendered with ``helm template`` (no cluster): the values the
    docs set (and the values files they show) exist and reach the objects."""
    from tests.deploy.test_helm import HELM, helm

    if not HELM.is_file():
        pytest.skip(f"{HELM} not built: run `make helm`")
    args = [a for a in shlex.split(command)[2:] if a != "--create-namespace"]
    args = [str(ROOT / a) if a.startswith("deploy/") else a for a in args]
    for i, arg in enumerate(args[:-1]):
        if arg in ("--values", "-f") and not (ROOT / args[i + 1]).exists():
            args[i + 1] = _values_file(doc, args[i + 1], tmp_path)
    out = helm("template", *args)
    assert out.returncode == 0, f"{doc}: {command}\n{out.stderr}"
    for value in re.findall(r"--set [\w.]+=(\S+)", command):
        assert value in out.stdout, f"{doc}: {value} is not in the rendered objects"
