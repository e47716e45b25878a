"""Hand freed heap back to the kernel after a burst of connections.

glibc raises its mmap threshold each time it frees an mmapped block, so after the first few
closed TLS connections their 256 KiB read buffers come from the arenas instead; freeing them
leaves the pages mapped (RSS does not fall) until ``malloc_trim`` walks the arenas.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


def _load_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _load_trim()


def release_free_memory() -> bool:
    """Return free heap pages to the kernel; False where the C library cannot."""
    if _TRIM is None:
        return False
    return bool(_TRIM(0))
