"""The C allocator's settings for long-running training and benchmark processes (Linux, glibc).

By default glibc serves large blocks with mmap and gives freed memory back to the kernel (heap trimming),
so every iteration of a distillation step faults in and zeroes fresh pages for the activations it
allocates: `senseflow bench iteration` measured a network pass inside an iteration up to ~1.4x slower than
the same pass alone, and the whole generator step ~10% above its passes on the digits world.
`keep_freed_memory()` makes the allocator keep and reuse freed memory instead (mallopt: heap trimming off,
mmap only above 32 MB, the heap grown in 256 MB steps of address space), the same as setting
MALLOC_TRIM_THRESHOLD_, MALLOC_MMAP_THRESHOLD_ and MALLOC_TOP_PAD_ before the process starts. The cost: the
process keeps its peak memory until it exits, which a training process does anyway.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_done: bool | None = None


def keep_freed_memory() -> bool:
    """Apply the settings once per process; True where they took effect (glibc), False elsewhere."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt; nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = all(mallopt(param, value) == 1 for param, value in (
        (_M_TRIM_THRESHOLD, 2 ** 31 - 1), (_M_MMAP_THRESHOLD, 32 * 2 ** 20), (_M_TOP_PAD, 256 * 2 ** 20)))
    return _done
