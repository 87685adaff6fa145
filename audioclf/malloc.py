"""Allocator settings for the processes ``audioclf train``, ``cv``, ``serve`` and ``predict`` (PyTorch back end) start
(never at import time).

glibc's ``malloc`` serves blocks above ``M_MMAP_THRESHOLD`` (128 KiB, raised on the fly up to 32 MiB) with fresh
``mmap`` pages and returns freed heap tops to the system past ``M_TRIM_THRESHOLD``. A batched forward pass allocates
activations of a few MiB per layer, so every pass page-faults and zeroes them again. Keeping such blocks in the
heap makes batched passes and training steps faster; the price is that up to ``trim_mib`` of freed memory stays
with the process.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h


def keep_activations_in_heap(mmap_mib: int = 64, trim_mib: int = 256) -> bool:
    """Serve blocks up to ``mmap_mib`` from the heap and keep up to ``trim_mib`` of freed heap; process-wide.
    Returns False (and changes nothing) where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_mib << 20)) and bool(mallopt(M_TRIM_THRESHOLD, trim_mib << 20))
