"""The HTTP extender: wire format, bad input, binding without double booking, metrics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extender.decode import BadRequest, pod_from_json
from extender.server import Extender, ExtenderSettings
from tests.extender.support import NOW, READY, make_state
from tests.extender.test_filtering import node_json, pod_json


def named(pod: dict[str, Any], name: str) -> dict[str, Any]:
    out = orjson.loads(orjson.dumps(pod))
    out["metadata"]["name"] = name
    out["metadata"]["uid"] = f"uid-{name}"
    return dict(out)


async def test_filter_cache_mode_pascal_case(env: Any) -> None:
    client, _, _ = env
    names = ["tight", "roomy", "full", "tainted", "ghost"]
    resp = await client.post(
        "/filter", data=orjson.dumps({"Pod": pod_json(20000), "Nodes": None, "NodeNames": names})
    )
    assert resp.status == 200
    body = orjson.loads(await resp.read())
    assert body["Nodes"] is None
    assert body["NodeNames"] == ["tight", "roomy"]
    assert set(body["NodeNames"]) <= set(names)
    assert body["FailedNodes"] == {
        "full": "insufficient GPU memory: need 1×20000 MiB, best device has 1920 MiB free"
    }
    assert set(body["FailedAndUnresolvableNodes"]) == {"tainted", "ghost"}
    assert body["Error"] == ""


async def test_lowercase_keys_and_full_mode(env: Any) -> None:
    client, _, _ = env
    items = [node_json("roomy", [0, 0]), node_json("full", [80000, 80000])]
    for item in items:
        item["metadata"]["resourceVersion"] = "1"
    resp = await client.post(
        "/filter", data=orjson.dumps({"pod": pod_json(20000), "nodes": {"items": items}})
    )
    body = orjson.loads(await resp.read())
    assert resp.status == 200
    assert [n["metadata"]["name"] for n in body["Nodes"]["items"]] == ["roomy"]
    assert body["Nodes"]["items"][0] == items[0]
    assert body["NodeNames"] is None
    # second request: decoded nodes reused by resourceVersion, same answer
    resp2 = await client.post(
        "/filter", data=orjson.dumps({"pod": pod_json(20000), "nodes": {"items": items}})
    )
    assert orjson.loads(await resp2.read()) == body


async def test_prioritize(env: Any) -> None:
    client, _, _ = env
    resp = await client.post(
        "/prioritize", data=orjson.dumps({"Pod": pod_json(20000), "NodeNames": ["tight", "roomy"]})
    )
    assert resp.status == 200
    scores = {h["Host"]: h["Score"] for h in orjson.loads(await resp.read())}
    assert scores["tight"] > scores["roomy"]
    assert all(isinstance(s, int) and 0 <= s <= 10 for s in scores.values())


def test_prioritize_with_a_strategy_without_array_form_takes_the_per_node_path() -> None:
    """A strategy with only ``choose``/``score`` has no array form in the index; the reply
    still names every node in request order, with the per-node reference's scores."""
    from extender.filtering import prioritize
    from extender.fit import NodeGpus
    from extender.objects import GpuNeed
    from extender.scoring import register

    class FirstDeviceFree:
        name = "test-first-device-free"

        def choose(self, gpus: NodeGpus, need: GpuNeed) -> tuple[int, ...] | None:
            return (gpus.devices[0].index,) if gpus.devices else None

        def score(self, gpus: NodeGpus, need: GpuNeed, chosen: tuple[int, ...]) -> float:
            return gpus.devices[0].free_mib / max(gpus.devices[0].total_mib, 1) * 100

    register(FirstDeviceFree())
    state = make_state()
    ext = Extender(state, ExtenderSettings(scoring="test-first-device-free"))
    names = ["roomy", "missing", "tight", "full"]
    args = {"Pod": pod_json(20000), "NodeNames": names}
    reply = ext.prioritize(args, NOW)
    assert [h["Host"] for h in reply] == names
    pod = pod_from_json(pod_json(20000))
    expected = prioritize(pod, names, state, NOW, strategy="test-first-device-free")
    assert [(h["Host"], h["Score"]) for h in reply] == expected
    assert len({h["Score"] for h in reply}) > 1  # the strategy's scores reach the reply


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"{", "bad request"),
        (b"[]", "expected a JSON object"),
        (b'{"NodeNames": ["a"]}', "no Pod"),
        (b'{"Pod": 5, "NodeNames": ["a"]}', "Pod: expected an object"),
        (b'{"Pod": {}, "NodeNames": [1]}', "NodeNames"),
        (b'{"Pod": {}}', "neither NodeNames nor Nodes"),
        (b'{"Pod": {}, "Nodes": {"items": 3}}', "Nodes.items"),
        (
            b'{"Pod": {"spec": {"containers": [{"resources": {"limits": {"cpu": "x"}}}]}},'
            b' "NodeNames": []}',
            "cpu",
        ),
    ],
)
async def test_bad_requests_get_400(env: Any, body: bytes, match: str) -> None:
    client, _, _ = env
    for verb in ("/filter", "/prioritize"):
        resp = await client.post(verb, data=body)
        assert resp.status == 400
        assert match in orjson.loads(await resp.read())["Error"]


async def test_oversized_body_is_refused(env: Any) -> None:
    client, _, _ = env
    big = b'{"Pod": {}, "NodeNames": ["' + b"x" * (1 << 20) + b'"]}'
    resp = await client.post("/filter", data=big)
    assert resp.status == 400
    assert "exceeds" in orjson.loads(await resp.read())["Error"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while reading
        for _ in range(3):
            yield b" " * (1 << 19)

    resp = await client.post("/filter", data=chunks())
    assert resp.status == 400


junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                ["Pod", "pod", "Nodes", "NodeNames", "items", "metadata", "spec", "name", "x"]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=16,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(junk)
def test_junk_never_raises_anything_but_bad_request(value: object) -> None:
    ext = Extender(make_state())
    for call in (ext.filter, ext.prioritize):
        with contextlib.suppress(BadRequest):
            call(value, NOW)
    with contextlib.suppress(BadRequest):
        asyncio.run(ext.bind(value, NOW))


async def test_junk_over_http_is_400_never_500(env: Any) -> None:
    client, _, _ = env
    for body in (
        b"\xff\xfe",
        b"null",
        b'"s"',
        b"1e999",
        b'{"Pod": {"metadata": []}, "NodeNames": null}',
        b"",
    ):
        for verb in ("/filter", "/prioritize", "/bind"):
            resp = await client.post(verb, data=body)
            assert resp.status == 400, (verb, body)


async def test_bind_reserves_and_concurrent_binds_never_double_book(env: Any) -> None:
    """Eight pods of 30000 MiB race for 'roomy' (2×81920): at most 2 per device fit."""
    client, ext, binder = env
    binder.gate.clear()
    pod = pod_json(30000)
    for i in range(8):
        binder.pods[f"ns/p{i}"] = named(pod, f"p{i}")  # in the API, not yet in the watch
        resp = await client.post(
            "/filter", data=orjson.dumps({"Pod": named(pod, f"p{i}"), "NodeNames": ["roomy"]})
        )
        assert orjson.loads(await resp.read())["NodeNames"] == ["roomy"]

    async def bind(i: int) -> str:
        args = {"PodName": f"p{i}", "PodNamespace": "ns", "PodUID": f"uid-p{i}", "Node": "roomy"}
        resp = await client.post("/bind", data=orjson.dumps(args))
        assert resp.status == 200
        return str(orjson.loads(await resp.read())["Error"])

    binder.wait_for = 4
    tasks = [asyncio.create_task(bind(i)) for i in range(8)]
    # four binds are inside the (held) API call at once, each with its own reservation
    await asyncio.wait_for(binder.entered_enough.wait(), timeout=5)
    assert len(ext.state.reservations) == 4
    binder.gate.set()
    errors = await asyncio.gather(*tasks)
    ok = [e for e in errors if e == ""]
    assert len(ok) == 4
    assert all("insufficient GPU memory" in e for e in errors if e)
    per_device: dict[int, int] = {}
    for _, node, indices in binder.bound:
        assert node == "roomy"
        for i in indices:
            per_device[i] = per_device.get(i, 0) + 30000
    assert all(v <= 81920 for v in per_device.values())
    # the filter now sees the reservations
    resp = await client.post(
        "/filter", data=orjson.dumps({"Pod": named(pod, "late"), "NodeNames": ["roomy"]})
    )
    assert orjson.loads(await resp.read())["NodeNames"] == []


async def test_reservation_released_when_pod_shows_up_or_bind_fails(env: Any) -> None:
    client, ext, binder = env
    binder.fail.add("bad")
    pod = named(pod_json(30000), "bad")
    ext.state.upsert_pod(pod_from_json(pod))  # pending, as the watch shows it
    await client.post("/filter", data=orjson.dumps({"Pod": pod, "NodeNames": ["roomy"]}))
    resp = await client.post(
        "/bind",
        data=orjson.dumps(
            {"PodName": "bad", "PodNamespace": "ns", "PodUID": "uid-bad", "Node": "roomy"}
        ),
    )
    assert "conflict" in orjson.loads(await resp.read())["Error"]
    assert ext.state.reservations == {}

    good = named(pod_json(30000), "good")
    binder.pods["ns/good"] = good  # never seen in a filter: fetched through the binder
    resp = await client.post(
        "/bind",
        data=orjson.dumps(
            {"PodName": "good", "PodNamespace": "ns", "PodUID": "uid-good", "Node": "roomy"}
        ),
    )
    assert orjson.loads(await resp.read())["Error"] == ""
    assert set(ext.state.reservations) == {"ns/good"}
    indices = ext.state.reservations["ns/good"].indices
    bound = named(pod_json(30000), "good")
    bound["spec"]["nodeName"] = "roomy"
    bound["metadata"]["annotations"]["gpuscale.io/gpu-indices"] = ",".join(map(str, indices))
    ext.state.upsert_pod(pod_from_json(bound))
    assert ext.state.reservations == {}
    g = ext.state.gpus("roomy", NOW)
    assert not isinstance(g, str)
    assert sorted(d.free_mib for d in g.devices) == [81920 - 30000, 81920]


async def test_bind_errors(env: Any) -> None:
    client, _, _ = env
    resp = await client.post("/bind", data=b'{"PodName": "x"}')
    assert resp.status == 400
    resp = await client.post(
        "/bind",
        data=orjson.dumps(
            {"PodName": "nobody", "PodNamespace": "ns", "PodUID": "", "Node": "roomy"}
        ),
    )
    assert resp.status == 200
    assert "not found" in orjson.loads(await resp.read())["Error"]


async def test_ops_endpoints(env: Any) -> None:
    client, _, _ = env
    assert (await client.get("/livez")).status == 200
    assert (await client.get("/readyz")).status == 503
    client.server.app[READY]["ok"] = True
    assert (await client.get("/readyz")).status == 200
    await client.post(
        "/filter", data=orjson.dumps({"Pod": pod_json(20000), "NodeNames": ["full", "tainted"]})
    )
    await client.post("/filter", data=b"{")
    text = await (await client.get("/metrics")).text()
    for line in (
        'gpuscale_extender_requests_total{code="200",verb="filter"} 1.0',
        'gpuscale_extender_requests_total{code="400",verb="filter"} 1.0',
        'gpuscale_extender_filter_failures_total{reason="insufficient_gpu"} 1.0',
        'gpuscale_extender_filter_failures_total{reason="untolerated_taint"} 1.0',
        'gpuscale_extender_gpus{model="A100"} 8',
        'gpuscale_extender_nodes{gpu_state="known"} 4',
        "gpuscale_extender_reservations 0",
        "gpuscale_extender_pending_gpu_pods 0",
        'gpuscale_extender_request_duration_seconds_count{verb="filter"} 2.0',
    ):
        assert line in text, line


async def test_pods_are_decoded_once_per_content(env: Any) -> None:
    """filter then prioritize of the same pod decode it once; a pod that reuses its uid and
    resourceVersion with other content is decoded anew (it cannot borrow the real pod's need)."""
    client, ext, _ = env
    pod = named(pod_json(20000), "p")
    pod["metadata"]["resourceVersion"] = "7"
    names = ["tight", "roomy"]
    for verb in ("filter", "prioritize"):
        resp = await client.post(f"/{verb}", data=orjson.dumps({"Pod": pod, "NodeNames": names}))
        assert resp.status == 200
    assert list(ext._decode_pod.cache) == [orjson.dumps(pod)]
    forged = orjson.loads(orjson.dumps(pod_json(70000)))
    forged["metadata"].update(name="p", uid="uid-p", resourceVersion="7")
    resp = await client.post("/filter", data=orjson.dumps({"Pod": forged, "NodeNames": names}))
    assert orjson.loads(await resp.read())["NodeNames"] == ["roomy"]  # its own need
    resp = await client.post("/filter", data=orjson.dumps({"Pod": pod, "NodeNames": names}))
    assert orjson.loads(await resp.read())["NodeNames"] == ["tight", "roomy"]
    bad = named(pod_json(20000), "q")
    bad["spec"]["tolerations"] = "nope"
    resp = await client.post("/filter", data=orjson.dumps({"Pod": bad, "NodeNames": names}))
    assert resp.status == 400  # a bad pod is never cached
    assert orjson.dumps(bad) not in ext._decode_pod.cache


def test_the_pod_cache_is_bounded_in_bytes() -> None:
    ext = Extender(make_state(), ExtenderSettings(pod_cache_bytes=64 * 1024))
    for i in range(200):
        ext.filter({"Pod": named(pod_json(20000 + i), f"p{i}"), "NodeNames": ["roomy"]}, NOW)
    assert 0 < ext._decode_pod.size <= 64 * 1024
    assert ext._decode_pod.size == sum(len(k) for k in ext._decode_pod.cache)
    huge = named(pod_json(20000), "huge")
    huge["metadata"]["annotations"]["x"] = "y" * 2048  # over 1/64 of the budget: not kept
    ext.filter({"Pod": huge, "NodeNames": ["roomy"]}, NOW)
    assert orjson.dumps(huge) not in ext._decode_pod.cache
