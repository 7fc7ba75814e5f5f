"""glibc's malloc, set up for a process that holds a few large buffers and replaces them every cycle.

glibc serves an allocation of `mmap_threshold` bytes or more with a mapping of its own, which goes back to
the system when freed, and smaller ones from its heaps, which keep freed memory for reuse. It raises the
threshold to the size of each mapped block that is freed (up to 32 MB): after the first /metrics body
(7.4 MB at 5,000 users) is replaced, every later body, batch answer and large dict comes from the heaps,
and resident memory settles at the highest the heaps ever were. Fixing the threshold at glibc's own
starting value keeps large buffers in mappings of their own.
"""

from __future__ import annotations

import ctypes
import functools
import os

import structlog

M_MMAP_THRESHOLD = -3  # mallopt's parameter numbers, from glibc's <malloc.h>
MMAP_THRESHOLD = 128 * 1024  # glibc's starting value (DEFAULT_MMAP_THRESHOLD_MIN)
log = structlog.get_logger()


def is_glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError, AttributeError):  # not a name this system knows, or no confstr at all
        return False


@functools.cache
def fix_mmap_threshold(library: str = "libc.so.6") -> bool:
    """Keep glibc's mmap threshold where it starts (measured at 5,000 users, 13 cycles back to back: see
    bench/RESULTS.md). False, and nothing changed, on another C library (musl, macOS) or when the call fails."""
    if not is_glibc():
        return False
    try:
        mallopt = ctypes.CDLL(library).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done: bool = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    if not done:
        log.warning("malloc_setting_refused", setting="M_MMAP_THRESHOLD", value=MMAP_THRESHOLD)
    return done
