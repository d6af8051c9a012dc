"""Freed large buffers go back to the system at once, so the server's RSS is what it holds.

glibc's malloc serves a block above its mmap threshold with a mapping of its own, unmapped when
freed; but each such block freed raises the threshold to its size (up to 32 MiB), and from then
on blocks that large come from the heap, whose freed pages the process keeps. The server copies
answers of up to 32 MB on their way to clients (parsed, framed for the WebSocket); with a moving
threshold every copy it ever made at once stays in its RSS, long after the answers are gone.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("insien.memory")

M_MMAP_THRESHOLD = -3
"""mallopt's parameter (malloc.h); setting it also stops the threshold from moving."""
LARGE_BLOCK = 4 * 1024 * 1024
"""Blocks from this size on get their own mapping: above the link's 1 MiB frames and the 2 MiB
download chunks, which the heap serves faster and reuses."""


def return_large_blocks(threshold: int = LARGE_BLOCK) -> bool:
    """Fix glibc's mmap threshold at `threshold`; False where the C library is not glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False  # musl, macOS: their allocators have no such threshold to pin
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, threshold))
    if not done:
        log.warning("could not set the mmap threshold: freed large buffers stay in RSS")
    return done
