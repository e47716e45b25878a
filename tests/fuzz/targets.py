"""Fuzz targets: bytes in, and nothing but the documented rejection out.

Each target decodes arbitrary bytes the way the real input arrives (a JSON request body for the
extender, a YAML file for the policy parser) and fails, by letting the exception escape, on any
error other than the one that input surface promises (``BadRequest``; ``PolicyError`` or
``NotAPolicy``). Used by atheris (:mod:`tests.fuzz.atheris_main`) and by the seeded pytest runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import zlib
from collections.abc import Callable
from typing import Any

import orjson
import yaml

from extender.body import BodyLimit, BodyReader, BodyRefused, decoded_estimate, structure
from extender.cluster_state import ClusterState
from extender.decode import BadRequest, node_from_json, pod_from_json
from extender.server import Extender
from policies.parse import (
    NotAPolicy,
    PolicyError,
    load_policy_file,
    parse_configmap,
    parse_policy_document,
)
from policies.promql import PromQLError, parse, selectors
from policies.schema import metric_inputs
from policies.tenancy import ScopeError, scope_query
from tests.extender.test_filtering import node_json, pod_json

NOW = 1_800_000_010.0


def _state() -> ClusterState:
    state = ClusterState()
    for raw in (
        node_json("tight", [60000, 81000]),
        node_json("roomy", [0, 0]),
        node_json("tainted", [0, 0], taints=[{"key": "gpu", "value": "x", "effect": "NoExecute"}]),
    ):
        state.upsert_node(node_from_json(raw))
    return state


_EXTENDER = Extender(_state())


def extender_request(data: bytes) -> None:
    """A request body as /filter, /prioritize and /bind decode it (the HTTP layer answers 400
    for bodies that are not JSON, so those are not interesting here)."""
    try:
        args: Any = orjson.loads(data)
    except orjson.JSONDecodeError:
        return
    for call in (_EXTENDER.filter, _EXTENDER.prioritize):
        with contextlib.suppress(BadRequest):
            call(args, NOW)
    with contextlib.suppress(BadRequest):
        asyncio.run(_EXTENDER.bind(args, NOW))
    if isinstance(args, dict):
        for key, decode in (("Pod", pod_from_json), ("Node", node_from_json)):
            with contextlib.suppress(BadRequest):
                decode(args.get(key, args))


_BODY_LIMIT = BodyLimit(max_bytes=1 << 16, max_decoded=1 << 20)
_CODINGS = (None, "gzip", "deflate", "identity", "br")


def extender_body(data: bytes) -> None:
    """A request body as the HTTP layer takes it: the first byte picks a content coding and a
    chunk size (and whether to compress the rest, so that valid compressed bodies come too);
    the rest goes through :class:`BodyReader` chunk by chunk, then the JSON decoder and the
    verbs. Only a refusal, a JSON error or ``BadRequest`` may come out, and a body the reader
    accepts is within its limits when counted whole."""
    if not data:
        return
    head, rest = data[0], data[1:]
    coding = _CODINGS[head % len(_CODINGS)]
    step = 1 + (head >> 3)
    if head & 4 and coding == "gzip":
        rest = gzip.compress(rest)
    elif head & 4 and coding == "deflate":
        rest = zlib.compress(rest)
    try:
        reader = BodyReader(_BODY_LIMIT, coding)
        for k in range(0, len(rest), step):
            reader.feed(rest[k : k + step])
        body = reader.finish()
    except BodyRefused:
        return
    values, containers = structure(body)
    assert len(body) <= _BODY_LIMIT.max_bytes
    assert decoded_estimate(len(body), 1 + values, containers) <= _BODY_LIMIT.max_decoded
    extender_request(body)


def policy_document(data: bytes) -> None:
    """A policy.yaml as a ConfigMap carries it, and the same document already parsed."""
    text = data.decode("utf-8", errors="replace")
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "fuzz",
            "namespace": "ns",
            "labels": {"gpuscale.io/scaling-policy": "true"},
        },
        "data": {"policy.yaml": text},
    }
    with contextlib.suppress(PolicyError, NotAPolicy):
        parse_configmap(configmap)
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError:
        return
    with contextlib.suppress(PolicyError):
        parse_policy_document(document, namespace="ns", name="fuzz")


def policy_json(data: bytes) -> None:
    """The parsed policy document, written as JSON: mutations keep the structure far more often
    than mutated YAML does, so the fuzzer gets past the YAML layer into every field check."""
    try:
        document: Any = orjson.loads(data)
    except orjson.JSONDecodeError:
        return
    with contextlib.suppress(PolicyError):
        parse_policy_document(document, namespace="ns", name="fuzz")


def promql_scope(data: bytes) -> None:
    """A policy query (text, as YAML hands it over) scoped to a namespace: PromQLError or
    ScopeError, or a query whose every selector carries exactly the namespace."""
    text = data.decode("utf-8", "replace")
    try:
        out = scope_query(text, label="namespace", namespace="ns")
    except (PromQLError, ScopeError):
        return
    for vs in selectors(parse(out)):
        pinned = [(m.op, m.value) for m in vs.matchers if m.name == "namespace"]
        assert pinned == [("=", "ns")], (text, out)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "extender_request": extender_request,
    "extender_body": extender_body,
    "policy_document": policy_document,
    "policy_json": policy_json,
    "promql_scope": promql_scope,
}


def seeds(target: str) -> list[bytes]:
    """Valid inputs to start from, so that mutations begin deep inside the decoders."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    if target == "extender_body":  # identity, gzip and deflate (compressed by the target)
        requests = seeds("extender_request")
        return [bytes([head]) + r for head in (0, 6, 12) for r in requests] + [
            b"\x01" + gzip.compress(requests[0])
        ]
    if target == "extender_request":
        pod = pod_json(30000, 1)
        return [
            orjson.dumps({"Pod": pod, "NodeNames": ["tight", "roomy", "tainted", "nope"]}),
            orjson.dumps({"Pod": pod, "Nodes": {"items": [node_json("n1", [1000, 0])]}}),
            orjson.dumps(
                {"PodName": "p", "PodNamespace": "default", "PodUID": "u", "Node": "roomy"}
            ),
        ]
    out = []
    if target == "promql_scope":
        return [
            query.encode()
            for path in sorted((repo / "policies" / "examples").glob("*.yaml"))
            for policy in load_policy_file(path)
            for metric in policy.metrics
            for _, query in metric_inputs(metric)
        ]
    for path in sorted((repo / "policies" / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and "data" in doc:
                text = doc["data"]["policy.yaml"]
                out.append(
                    orjson.dumps(yaml.safe_load(text)) if target == "policy_json" else text.encode()
                )
    return out
