"""The committed gRPC bindings are what the vendored .proto files generate (`make protos`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
PROTO = REPO / "extender" / "device_plugin" / "proto"


def test_bindings_match_the_protos(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    pytest.importorskip("mypy_protobuf")
    out = subprocess.run(
        ["sh", str(PROTO / "generate.sh"), str(tmp_path)],
        env={"PYTHON": sys.executable, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    generated = sorted((tmp_path / "extender/device_plugin/proto").iterdir())
    assert len(generated) == 8
    for path in generated:
        committed = PROTO / path.name
        assert committed.read_bytes() == path.read_bytes(), f"{committed}: run `make protos`"


def test_protos_keep_their_licence_and_source() -> None:
    for name in ("deviceplugin_v1beta1.proto", "podresources_v1.proto"):
        head = (PROTO / name).read_text().splitlines()[:6]
        assert "Apache License, Version 2.0" in head[0]
        assert "k8s.io/kubelet" in head[2] and "at commit" in head[3]
