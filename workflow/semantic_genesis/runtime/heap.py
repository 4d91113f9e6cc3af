"""The C heap's settings for jobs that allocate and free the same large arrays over and over (training, transforms).

glibc serves every block above an adaptive threshold (128 KiB to 32 MiB) with fresh pages from the kernel and hands
them back when it is freed, and trims the heap's free top as soon as it exceeds twice that threshold. A training step's
activations and a transform's temporaries (0.5-1 MiB per 64x64x32 patch) then cost a page fault per 4 KiB every
time: measured on the project's 2-core VM, `benchmarks/pretrain.py` spent 58 s in the kernel instead of 22 s, and the
Models Genesis transforms ran 1.5x slower. Keeping freed memory for reuse removes both; peak memory is unchanged, and
memory freed after a peak stays with the process (at most TRIM of it) until the job ends.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP = 32 << 20  # blocks above this still get their own pages (glibc's largest threshold)
TRIM = 256 << 20  # free memory kept at the heap's top


@functools.cache
def reuse_freed_memory() -> bool:
    """Fix glibc's thresholds at MMAP and TRIM for this process and the workers it forks; False where the C library
    is not glibc (macOS, musl), which keeps its own policy."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM))
