"""Request bodies before they are decoded: content codings, byte limits, and a bound on the memory
the JSON decoder would take.

A byte limit alone is not enough: ``orjson.loads`` turns the 3 bytes ``{},`` into about 100
bytes of Python objects, so a 63 MiB body became 2.2 GiB and blocked the event loop for seconds.
:class:`BodyReader` keeps a running upper bound of that cost (:func:`decoded_estimate`) from a
structural count of each chunk as it arrives, so a body is refused while it is being read and
before any of it is decoded. Compressed bodies are inflated here, in bounded steps, so that the
same limits apply to what a gzip body expands to and every coding error is a
:class:`BodyRefused` (a 400), never an exception from the HTTP library.

Pure: no aiohttp, no clock.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Final

from extender.decode import BadRequest

FIXED_COST: Final = 64 * 1024
"""Per body: the parser's smallest allocation (4 KiB measured)."""
BYTE_COST: Final = 24
"""Bytes of decoder memory counted per body byte: strings (up to 4 bytes per UTF-8 byte as
Python ``str``) and the parser's own buffers. Measured at most 16 with tracemalloc."""
VALUE_COST: Final = 64
"""Per JSON value (bounded by separators and openers): a list slot, a dict entry, an int."""
CONTAINER_COST: Final = 96
"""Per object or list on top of its value cost: an empty dict is 64 bytes, a small one 184."""

_STRUCTURAL: Final = b",:[{"
_NOT_STRUCTURAL: Final = bytes(b for b in range(256) if b not in _STRUCTURAL)
_INFLATE_STEP: Final = 256 * 1024


class BodyRefused(BadRequest):
    """A body refused before decoding: too large, too costly to decode, or badly encoded."""


@dataclass(frozen=True, slots=True)
class BodyLimit:
    """What one verb accepts."""

    max_bytes: int
    """Body bytes, after content decoding."""
    max_decoded: int
    """Upper bound on :func:`decoded_estimate` of the body."""

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_decoded <= 0:
            raise ValueError(f"body limits must be positive, got {self}")


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Body limits per verb, sized for what kube-scheduler sends (see extender/README.md)."""

    filter: BodyLimit
    prioritize: BodyLimit
    bind: BodyLimit

    @classmethod
    def cache_mode(cls) -> RequestLimits:
        """``nodeCacheCapable: true``: a pod and node names. 5,000 names and a typical pod
        estimate 2 MiB; the bound admits pods of up to ~2 MiB of text beside 15,000 names."""
        names = BodyLimit(max_bytes=4 * 2**20, max_decoded=64 * 2**20)
        return cls(filter=names, prioritize=names, bind=_BIND)

    @classmethod
    def full_mode(cls) -> RequestLimits:
        """Node objects in every request: 5,000 nodes of ~1.9 KiB (9.2 MiB) estimate 300 MiB."""
        nodes = BodyLimit(max_bytes=64 * 2**20, max_decoded=512 * 2**20)
        return cls(filter=nodes, prioritize=nodes, bind=_BIND)

    def of(self, verb: str) -> BodyLimit:
        limit: BodyLimit = getattr(self, verb)
        return limit


_BIND: Final = BodyLimit(max_bytes=64 * 1024, max_decoded=4 * 2**20)
"""``ExtenderBindingArgs``: four short strings."""


def decoded_estimate(size: int, values: int, containers: int) -> int:
    """Upper bound on the bytes ``orjson.loads`` allocates for a body of ``size`` bytes with at
    most ``values`` JSON values, ``containers`` of them objects or lists (a property test holds
    it above what tracemalloc measures)."""
    return FIXED_COST + BYTE_COST * size + VALUE_COST * values + CONTAINER_COST * containers


def structure(data: bytes) -> tuple[int, int]:
    """``(separators and openers, openers)`` in ``data``. A document has at most
    ``1 + separators and openers`` values (every value but the first follows a ``,``, a ``:`` or
    an opener); brackets and commas inside strings only make the bound looser."""
    kept = data.translate(None, _NOT_STRUCTURAL)
    return len(kept), kept.count(b"[") + kept.count(b"{")


def _inflater(content_encoding: str | None) -> zlib._Decompress | None:
    codings = [c.strip().lower() for c in (content_encoding or "").split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None
    if len(codings) > 1:
        raise BodyRefused(
            f"Content-Encoding {content_encoding!r}: at most one coding (gzip or deflate)"
        )
    if codings[0] in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if codings[0] == "deflate":  # the zlib format (RFC 9110 §8.4.1.2)
        return zlib.decompressobj(zlib.MAX_WBITS)
    raise BodyRefused(
        f"unsupported Content-Encoding {codings[0]!r} (expected gzip, deflate or identity)"
    )


class BodyReader:
    """Takes a body chunk by chunk and raises :class:`BodyRefused` as soon as it breaks
    ``limit``: no more than ``max_bytes`` after inflating, no more than ``max_decoded`` by
    :func:`decoded_estimate`. Work per chunk is a few C passes over it."""

    def __init__(self, limit: BodyLimit, content_encoding: str | None = None) -> None:
        self.limit = limit
        self.coding = (content_encoding or "").strip()
        self._inflate = _inflater(content_encoding)
        self._chunks: list[bytes] = []
        self.size = 0
        self.values = 1
        self.containers = 0

    def feed(self, chunk: bytes) -> None:
        z = self._inflate
        if z is None:
            self._take(chunk)
            return
        if z.eof:
            if chunk:
                raise BodyRefused(f"data after the end of the {self.coding} stream")
            return
        data = chunk
        try:
            while True:
                out = z.decompress(data, _INFLATE_STEP)
                self._take(out)
                data = z.unconsumed_tail
                if z.eof:
                    if data or z.unused_data:
                        raise BodyRefused(f"data after the end of the {self.coding} stream")
                    return
                if not data and len(out) < _INFLATE_STEP:
                    return
        except zlib.error as exc:
            raise BodyRefused(f"Content-Encoding {self.coding}: not valid: {exc}") from None

    def _take(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        if self.size > self.limit.max_bytes:
            after = " after inflating" if self._inflate is not None else ""
            raise BodyRefused(f"request body exceeds {self.limit.max_bytes} bytes{after}")
        values, containers = structure(data)
        self.values += values
        self.containers += containers
        cost = decoded_estimate(self.size, self.values, self.containers)
        if cost > self.limit.max_decoded:
            raise BodyRefused(
                f"request body too costly to decode: {self.containers} objects or lists and up"
                f" to {self.values} values in {self.size} bytes may take {cost} bytes of memory,"
                f" more than {self.limit.max_decoded}"
            )
        self._chunks.append(data)

    def finish(self) -> bytes:
        """The whole (inflated) body; refuses a compressed stream that did not end."""
        if self._inflate is not None and not self._inflate.eof:
            raise BodyRefused(
                f"Content-Encoding {self.coding}: the body ends before the compressed stream"
            )
        return b"".join(self._chunks)
