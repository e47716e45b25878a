"""The archives ``make image`` writes import into containerd under the names the node uses.

A private containerd (own root, state and socket under a temporary folder, no CRI plugin) is
started for the test, so a node's containerd, if any, is not touched. Skips without containerd,
without root, or before ``make image``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.images import (
    GPUSCALE_ARCHIVE,
    GPUSCALE_TAG,
    KUBE_SCHEDULER_ARCHIVE,
    kube_scheduler_tag,
)

_MISSING = [t for t in ("containerd", "ctr") if shutil.which(t) is None]
pytestmark = [
    pytest.mark.skipif(bool(_MISSING), reason=f"{', '.join(_MISSING)} not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="containerd needs root"),
]


@pytest.fixture(scope="module")
def socket() -> Iterator[Path]:
    root = Path(f"/tmp/gpuscale-ctr-{os.getpid()}")  # short: unix socket paths are limited
    root.mkdir()
    sock = root / "sock"
    (root / "config.toml").write_text(
        "version = 2\n"
        f'root = "{root}/root"\n'
        f'state = "{root}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{sock}"\n'
        f'[ttrpc]\n  address = "{sock}.ttrpc"\n'
    )
    log = (root / "log").open("w")
    proc = subprocess.Popen(
        ["containerd", "--config", str(root / "config.toml")], stdout=log, stderr=log
    )
    try:
        for _ in range(200):
            if sock.exists():
                break
            assert proc.poll() is None, (root / "log").read_text()[-2000:]
            time.sleep(0.05)
        yield sock
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _ctr(sock: Path, *args: str) -> str:
    done = subprocess.run(
        ["ctr", "--address", str(sock), "-n", "k8s.io", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.parametrize(
    ("archive", "tag"), [(GPUSCALE_ARCHIVE, GPUSCALE_TAG), (KUBE_SCHEDULER_ARCHIVE, None)]
)
def test_ctr_imports_and_unpacks_the_archive(socket: Path, archive: Path, tag: str | None) -> None:
    if not archive.exists():
        pytest.skip(f"{archive} not written: run `make image`")
    name = tag or kube_scheduler_tag()
    _ctr(socket, "images", "import", str(archive))
    assert name in _ctr(socket, "images", "ls", "-q").split()
    (line,) = [row for row in _ctr(socket, "images", "check").splitlines() if row.startswith(name)]
    assert "complete" in line
    assert line.split()[-1] == "true"  # unpacked for the default snapshotter
