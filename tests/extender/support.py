"""Shared pieces of the extender server tests: a small cluster, a recording binder, limits."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from extender.body import BodyLimit, RequestLimits
from extender.cluster_state import ClusterState
from extender.decode import node_from_json
from extender.server import BindError
from tests.extender.test_filtering import node_json

NOW = datetime(2027, 1, 15, 8, 0, 10, tzinfo=UTC).timestamp()
SMALL = RequestLimits(
    filter=BodyLimit(1 << 20, 64 << 20),
    prioritize=BodyLimit(1 << 20, 64 << 20),
    bind=BodyLimit(1 << 16, 1 << 20),
)
READY = web.AppKey("ready", dict[str, bool])


class FakeBinder:
    """Records binds; each bind waits for ``gate`` so that binds overlap."""

    def __init__(self) -> None:
        self.bound: list[tuple[str, str, tuple[int, ...]]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: set[str] = set()
        self.pods: dict[str, Mapping[str, Any]] = {}
        self.claims: dict[str, Mapping[str, Any]] = {}
        self.entered = 0
        self.wait_for = 1
        self.entered_enough = asyncio.Event()

    async def bind(
        self, *, namespace: str, name: str, uid: str, node: str, gpu_indices: tuple[int, ...]
    ) -> None:
        self.entered += 1
        if self.entered >= self.wait_for:
            self.entered_enough.set()
        await self.gate.wait()
        if name in self.fail:
            raise BindError("conflict")
        self.bound.append((f"{namespace}/{name}", node, gpu_indices))

    async def get_claim(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return self.claims.get(f"{namespace}/{name}")

    async def get_pod(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return self.pods.get(f"{namespace}/{name}")


def make_state() -> ClusterState:
    state = ClusterState()
    for raw in (
        node_json("tight", [60000, 81000]),
        node_json("roomy", [0, 0]),
        node_json("full", [80000, 80000]),
        node_json("tainted", [0, 0], taints=[{"key": "gpu", "value": "x", "effect": "NoExecute"}]),
    ):
        state.upsert_node(node_from_json(raw))
    return state
