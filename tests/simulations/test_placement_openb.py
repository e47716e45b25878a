"""openb trace readers: the published files, round trips, and errors that name file, line, field."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulations.placement.openb import (
    OpenbFormatError,
    OpenbPod,
    read_nodes,
    read_pods,
    total_gpus,
)

DATA = Path(__file__).resolve().parents[2] / "simulations" / "data"


def test_the_published_files_read_as_documented() -> None:
    nodes = read_nodes(DATA / "openb_node_list_gpu_node.csv")
    assert len(nodes) == 1213
    assert total_gpus(nodes) == 6212
    assert {n.model for n in nodes} == {"G2", "T4", "G3", "P100", "V100M32", "V100M16", "A10"}
    default = read_pods(DATA / "openb_pod_list_default.csv")
    assert len(default) == 8152
    assert sum(1 for p in default if p.num_gpu == 0) == 1088
    multi = read_pods(DATA / "openb_pod_list_multigpu50.csv")
    assert len(multi) == 9061
    assert all(p.gpu_milli == 1000 for p in multi if p.num_gpu > 1)


def test_gpu_total_counts_shares_and_whole_gpus() -> None:
    assert OpenbPod("a", 0, 0, 0, 0).gpu_total_milli == 0
    assert OpenbPod("a", 0, 0, 1, 470).gpu_total_milli == 470
    assert OpenbPod("a", 0, 0, 4, 1000).gpu_total_milli == 4000


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name,cpu_milli\nx,1\n", "missing column(s) memory_mib, num_gpu, gpu_milli"),
        (
            "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np,1,2,one,0\n",
            ":2: num_gpu: expected an integer, got 'one'",
        ),
        ("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np,1,2,1,0\n", ":2: gpu_milli: 0 for a pod"),
        (
            "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np,1,2,2,500\n",
            "multi-GPU pods use whole GPUs",
        ),
        ("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np,-1,2,1,5\n", "cpu_milli: -1 is outside"),
        ("name,cpu_milli,memory_mib,num_gpu,gpu_milli\n,1,2,1,5\n", ":2: name: empty"),
        ("name,cpu_milli,memory_mib,num_gpu,gpu_milli\n", "no pods"),
    ],
)
def test_bad_pod_lists_name_line_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(OpenbFormatError) as info:
        read_pods(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_bad_node_lists_name_line_and_field(tmp_path: Path) -> None:
    head = "sn,cpu_milli,memory_mib,gpu,model\n"
    with pytest.raises(OpenbFormatError, match=r":3: sn: duplicate node 'a'"):
        read_nodes(write(tmp_path, head + "a,1,1,1,T4\na,1,1,1,T4\n"))
    with pytest.raises(OpenbFormatError, match=r":2: model: empty for a node with 2 GPUs"):
        read_nodes(write(tmp_path, head + "a,1,1,2,\n"))
    with pytest.raises(OpenbFormatError, match="cannot read"):
        read_nodes(tmp_path / "missing.csv")


def test_floats_that_are_integers_are_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np,1000.0,2,1,470\n")
    assert read_pods(path) == [OpenbPod("p", 1000, 2, 1, 470)]


pods = st.lists(
    st.tuples(
        st.integers(0, 10**6),
        st.integers(0, 10**7),
        st.sampled_from([(0, 0), (1, 50), (1, 470), (1, 1000), (2, 1000), (8, 1000)]),
    ),
    min_size=1,
    max_size=20,
)


@settings(max_examples=50, deadline=None)
@given(rows=pods)
def test_pod_lists_round_trip(tmp_path_factory: pytest.TempPathFactory, rows: list) -> None:  # type: ignore[type-arg]
    path = tmp_path_factory.mktemp("rt") / "pods.csv"
    lines = ["name,cpu_milli,memory_mib,num_gpu,gpu_milli,qos"]
    for i, (cpu, mem, (n, milli)) in enumerate(rows):
        lines.append(f"p{i},{cpu},{mem},{n},{milli},LS")
    path.write_text("\n".join(lines) + "\n")
    got = read_pods(path)
    assert [(p.cpu_milli, p.memory_mib, (p.num_gpu, p.gpu_milli)) for p in got] == rows
