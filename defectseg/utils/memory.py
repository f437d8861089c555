"""Handing freed memory back to the operating system between the stages of a large photo."""

from __future__ import annotations

import ctypes
import functools
import sys


@functools.cache
def _glibc_malloc_trim() -> ctypes._CFuncPtr | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim  # the C library this process already runs on
    except (OSError, AttributeError):  # musl and other C libraries without malloc_trim
        return None


def release_freed_memory() -> bool:
    """Return the pages of freed heap memory to the OS (glibc's ``malloc_trim``); False where there is no such call.

    glibc raises its mmap threshold after each large free, so the network's activations (tens of MB per tile batch)
    end up on the heap and stay resident after the last tile: ~100 MB that the masks, measurements and overlays of a
    24 MP photo then stack on top of (docs/speed.md). Trimming after the network pass keeps the photo's peak at the
    network pass's own.
    """
    trim = _glibc_malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
