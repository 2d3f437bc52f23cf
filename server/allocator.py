"""glibc malloc settings for a long-running server (see RELIABILITY.md, "Load").

With many threads (llama.cpp, the embedder, executors) glibc opens an arena per thread, and
after a large buffer (a KV snapshot) is freed it raises its mmap threshold, so later large
buffers come from those arenas and RSS creeps up under load. Two arenas and a fixed threshold
kept a 50-client soak's RSS flat.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_MMAP_THRESHOLD = -3  # mallopt parameters from glibc's malloc.h
M_ARENA_MAX = -8
ARENA_MAX = 2
MMAP_THRESHOLD = 128 * 1024  # glibc's initial value, kept fixed


def tune() -> bool:
    """Apply the settings, unless MALLOC_* variables already choose; False off glibc."""
    if any(k.startswith("MALLOC_") for k in os.environ):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(
            libc.mallopt(M_ARENA_MAX, ARENA_MAX) and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        )
    except (OSError, AttributeError):
        return False
