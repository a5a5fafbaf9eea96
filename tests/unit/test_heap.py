"""analysis/heap.py: a heap's free pages go back to the OS past the bar, and not below it."""

import ctypes
import sys

import pytest

from whisperdiff.analysis.heap import give_back, resident_mb

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's heap (Linux)")


def _fragmented_heap(n: int = 3000, size: int = 100_000):
    """n blocks of `size` bytes (under glibc's mmap threshold, which starts at 128 KB and only rises: from the
    heap), each touched; every other one is freed. The kept ones pin the freed ones between them, so glibc
    keeps those pages resident (its own trim only cuts the heap's top). Returns (libc, the kept blocks)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = []
    for _ in range(n):
        p = libc.malloc(size)
        ctypes.memset(p, 1, size)
        blocks.append(p)
    for p in blocks[::2]:
        libc.free(p)
    return libc, blocks[1::2]


def test_free_pages_go_back_past_the_bar_and_stay_below_it():
    libc, pins = _fragmented_heap()
    try:
        held = resident_mb()
        assert not give_back(above_mb=held + 1024)  # below the bar: nothing is done
        assert resident_mb() > held - 20
        assert give_back(above_mb=0)
        assert resident_mb() < held - 100, (held, resident_mb())  # 143 MB were free in the heap
    finally:
        for p in pins:
            libc.free(p)
