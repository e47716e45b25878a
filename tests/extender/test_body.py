"""Request bodies before decoding: the decoded-size bound holds, refusals come before decoding,
and every content-coding error is a 400 with a JSON reason on every verb."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from extender.body import (
    FIXED_COST,
    BodyLimit,
    BodyReader,
    BodyRefused,
    RequestLimits,
    decoded_estimate,
    structure,
)
from tests.extender.test_filtering import pod_json

VERBS = ("/filter", "/prioritize", "/bind")

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=12) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=60,
)


def estimate(data: bytes) -> int:
    values, containers = structure(data)
    return decoded_estimate(len(data), 1 + values, containers)


def decoded_peak(data: bytes) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        value = orjson.loads(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del value
    return peak


CRAFTED = [
    b"[" + b",".join([b"{}"] * 20_000) + b"]",
    b"[" + b",".join([b"[]"] * 20_000) + b"]",
    b"[" + b",".join([b'{"a":{}}'] * 10_000) + b"]",
    b"[" + b",".join([b"1.5"] * 20_000) + b"]",
    b"[" + b",".join([b"123456789012345"] * 20_000) + b"]",
    b"[" + b",".join([b'"x"'] * 20_000) + b"]",
    b'["' + ("\U0001f600" + "a" * 500).encode() * 100 + b'"]',
    b'["' + b"\\ud83d\\ude00" * 10_000 + b'"]',
    b"[" * 500 + b"]" * 500,
    b"{" + b",".join(b'"k%06d":0' % i for i in range(20_000)) + b"}",
]


@pytest.mark.parametrize("data", CRAFTED, ids=range(len(CRAFTED)))
def test_estimate_bounds_what_decoding_takes_for_crafted_bodies(data: bytes) -> None:
    assert decoded_peak(data) <= estimate(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
@example({"Pod": pod_json(20000), "NodeNames": [f"node-{i:05d}" for i in range(500)]})
def test_estimate_bounds_what_decoding_takes(value: Any) -> None:
    data = orjson.dumps(value)
    assert decoded_peak(data) <= estimate(data)


@settings(max_examples=200, deadline=None)
@given(
    json_values,
    st.lists(st.integers(0, 10_000), max_size=6),
    st.integers(FIXED_COST, FIXED_COST + 40_000),
)
def test_refusal_and_body_do_not_depend_on_chunking(
    value: Any, cuts: list[int], max_decoded: int
) -> None:
    data = orjson.dumps(value)
    limit = BodyLimit(max_bytes=10**6, max_decoded=max_decoded)
    whole_ok = estimate(data) <= max_decoded
    reader = BodyReader(limit)
    points = sorted({min(c, len(data)) for c in cuts})
    try:
        for a, b in zip([0, *points], [*points, len(data)], strict=True):
            reader.feed(data[a:b])
        assert reader.finish() == data
        assert whole_ok
    except BodyRefused as exc:
        assert not whole_ok
        assert "too costly to decode" in str(exc)


def test_a_crafted_body_is_refused_before_it_is_all_read() -> None:
    """`[{},{},...]` in 256 KiB chunks: refused after a bounded number of chunks, long before the
    end of a 63 MiB body, so the rest is never kept (or decoded)."""
    limit = RequestLimits.cache_mode().filter
    chunk = b"{}," * (256 * 1024 // 3)
    total = 63 * 2**20 // len(chunk)
    reader = BodyReader(limit)
    fed = 0
    with pytest.raises(BodyRefused, match="too costly to decode"):
        reader.feed(b"[")
        for _ in range(total):
            reader.feed(chunk)
            fed += 1
    kept = fed * len(chunk)
    assert fed < total / 10
    assert decoded_estimate(kept, 2 * kept // 3, kept // 3) <= limit.max_decoded


def test_the_same_bytes_within_the_limit_are_accepted() -> None:
    limit = BodyLimit(max_bytes=1 << 20, max_decoded=8 << 20)
    body = orjson.dumps({"Pod": pod_json(20000), "NodeNames": ["a", "b"]})
    for coding, data in (
        (None, body),
        ("identity", body),
        ("gzip", gzip.compress(body)),
        ("x-gzip", gzip.compress(body)),
        ("deflate", zlib.compress(body)),
        (" GZIP ", gzip.compress(body)),
    ):
        reader = BodyReader(limit, coding)
        for k in range(0, len(data), 7):
            reader.feed(data[k : k + 7])
        assert reader.finish() == body, coding


def test_a_gzip_bomb_is_refused_while_inflating() -> None:
    bomb = gzip.compress(b" " * (200 * 2**20), compresslevel=9)
    limit = RequestLimits.cache_mode().filter
    reader = BodyReader(limit, "gzip")
    with pytest.raises(BodyRefused):
        reader.feed(bomb)
    assert reader.size <= limit.max_bytes  # never inflated past the limit


def _bad_codings() -> list[tuple[str, bytes, str]]:
    body = orjson.dumps({"Pod": pod_json(20000), "NodeNames": ["roomy"]})
    return [
        ("gzip", b"not gzip at all", "Content-Encoding gzip: not valid"),
        ("deflate", b"not zlib", "Content-Encoding deflate: not valid"),
        ("deflate", zlib.compress(body)[2:], "Content-Encoding deflate: not valid"),  # raw
        ("gzip", gzip.compress(body)[:-12], "ends before the compressed stream"),
        ("gzip", b"", "ends before the compressed stream"),
        ("gzip", gzip.compress(body) + b"junk", "data after the end"),
        ("gzip", gzip.compress(body) * 2, "data after the end"),
        ("gzip", gzip.compress(b" " * (80 * 2**20)), "request body"),
        ("gzip, gzip", gzip.compress(gzip.compress(body)), "at most one coding"),
        ("br", b"\x0b\x02\x80", "unsupported Content-Encoding 'br'"),
        ("zstd", b"(\xb5/\xfd", "unsupported Content-Encoding 'zstd'"),
        ("compress", body, "unsupported Content-Encoding 'compress'"),
        ("foo", body, "unsupported Content-Encoding 'foo'"),
    ]


@pytest.mark.parametrize(("coding", "data", "reason"), _bad_codings())
async def test_every_coding_error_is_a_400_with_a_reason(
    env: Any, coding: str, data: bytes, reason: str
) -> None:
    client, _, _ = env
    for verb in VERBS:
        resp = await client.post(verb, data=data, headers={"Content-Encoding": coding})
        assert resp.status == 400, (verb, coding, await resp.text())
        assert resp.content_type == "application/json"
        error = orjson.loads(await resp.read())["Error"]
        assert error.startswith("bad request: ")
        assert reason in error, (verb, error)


async def test_compressed_requests_are_served(env: Any) -> None:
    client, _, _ = env
    body = orjson.dumps({"Pod": pod_json(20000), "NodeNames": ["roomy", "full"]})
    for coding, data in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        resp = await client.post("/filter", data=data, headers={"Content-Encoding": coding})
        assert resp.status == 200
        assert orjson.loads(await resp.read())["NodeNames"] == ["roomy"]


async def test_a_costly_body_is_refused_without_being_decoded(
    env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within the byte limit but not the decoded one: 400, and the JSON decoder never runs."""
    import extender.server

    client, _, _ = env
    decoded: list[int] = []
    real = extender.server.decode_json

    def spy(body: bytes) -> Any:
        decoded.append(len(body))
        return real(body)

    monkeypatch.setattr(extender.server, "decode_json", spy)
    crafted = b"[" + b",".join([b"{}"] * 300_000) + b"]"  # 0.9 MiB < the 1 MiB byte limit
    for verb in ("/filter", "/prioritize"):
        resp = await client.post(verb, data=crafted)
        assert resp.status == 400
        assert "too costly to decode" in orjson.loads(await resp.read())["Error"]
    assert decoded == []
    fine = orjson.dumps({"Pod": pod_json(20000), "NodeNames": ["roomy"]})
    assert (await client.post("/filter", data=fine)).status == 200
    assert decoded == [len(fine)]


async def test_bind_bodies_are_capped_at_what_a_binding_needs(env: Any) -> None:
    client, _, _ = env
    args = {"PodName": "p" * 70_000, "PodNamespace": "ns", "PodUID": "", "Node": "roomy"}
    resp = await client.post("/bind", data=orjson.dumps(args))
    assert resp.status == 400
    assert "exceeds" in orjson.loads(await resp.read())["Error"]
