"""GPU memory from DCGM exporter series in Prometheus (``--inventory dcgm``).

Every interval, two instant queries (``DCGM_FI_DEV_FB_FREE`` and ``DCGM_FI_DEV_FB_USED``, MiB)
become per-node reports (:func:`extender.inventory.reports_from_dcgm`) in the cluster state. When
Prometheus cannot be reached the previous reports stay, grow old, and the affected nodes fail as
``GPU inventory stale`` once older than ``--stale-after``: the extender never trusts old numbers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final

import aiohttp
import orjson

from extender.cluster_state import ClusterState
from extender.inventory import reports_from_dcgm
from extender.objects import GpuReport

log = logging.getLogger("gpuscale.extender.dcgm")

FREE: Final = "DCGM_FI_DEV_FB_FREE"
USED: Final = "DCGM_FI_DEV_FB_USED"


class DcgmError(RuntimeError):
    """Prometheus did not answer a query usefully."""


async def instant_query(
    session: aiohttp.ClientSession, base_url: str, expr: str, time_limit: float = 10.0
) -> list[dict[str, Any]]:
    """``data.result`` of an instant vector query."""
    url = f"{base_url.rstrip('/')}/api/v1/query"
    try:
        async with session.get(
            url, params={"query": expr}, timeout=aiohttp.ClientTimeout(total=time_limit)
        ) as resp:
            body = await resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise DcgmError(f"{url}: {exc!r}") from None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise DcgmError(f"{url}: HTTP {resp.status}, not JSON") from None
    if not isinstance(data, dict) or data.get("status") != "success":
        error = data.get("error") if isinstance(data, dict) else None
        raise DcgmError(f"{url}: HTTP {resp.status}: {error or 'query failed'}")
    result = (data.get("data") or {}).get("result")
    if not isinstance(result, list):
        raise DcgmError(f"{url}: expected a vector result")
    return [r for r in result if isinstance(r, dict)]


async def poll_once(
    session: aiohttp.ClientSession, base_url: str, node_label: str = "Hostname"
) -> dict[str, GpuReport]:
    free, used = await asyncio.gather(
        instant_query(session, base_url, FREE), instant_query(session, base_url, USED)
    )
    return reports_from_dcgm(free, used, node_label)


async def run_poller(
    session: aiohttp.ClientSession,
    base_url: str,
    state: ClusterState,
    *,
    node_label: str = "Hostname",
    interval: float = 15.0,
    on_poll: Callable[[bool], None] | None = None,
) -> None:
    """Poll until cancelled; ``on_poll(ok)`` is called after each attempt."""
    while True:
        ok = True
        try:
            reports = await poll_once(session, base_url, node_label)
        except DcgmError as exc:
            ok = False
            log.warning("DCGM query failed; keeping the last readings", extra={"error": str(exc)})
        else:
            state.set_dcgm(reports)
            log.debug("DCGM readings", extra={"nodes": len(reports)})
        if on_poll is not None:
            on_poll(ok)
        await asyncio.sleep(interval)
