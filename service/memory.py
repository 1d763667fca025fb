"""Give large freed buffers back to the operating system.

Decoding a 36-megapixel upload allocates a few hundred MB for a moment. glibc raises its
mmap threshold after such frees and then keeps later large buffers on its heap, so RSS
stays at the high-water mark. Fixing the threshold at 8 MiB (below Pillow's 16 MiB image
blocks) makes every large buffer its own mapping, returned when freed. No-op off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)
M_MMAP_THRESHOLD = -3
THRESHOLD_BYTES = 8 * 2**20


def return_large_frees_to_os() -> bool:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES))
    except (OSError, AttributeError, TypeError):
        log.info("not glibc: large freed buffers are returned as the allocator sees fit")
        return False
