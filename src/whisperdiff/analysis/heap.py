"""Freed memory handed back to the OS while a replay runs (glibc keeps it in its heap otherwise).

A replay makes and frees tensors of many sizes op after op (7.7, 9, 15 and 31 MB at large-v3). glibc
serves those below its mmap threshold, which slides up to 32 MB, from its heap, and keeps what is freed
there, fragmented by the small allocations in between: a large-v3 compare's resident memory grew to
1.2 GB, of which 0.4 GB was live. malloc_trim(0) returns the free pages. It costs their page faults when
they are used again, so compare calls it only once the process is past TRIM_ABOVE_MB resident, which a
tiny model's compare never is. Elsewhere than glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

# Resident memory past which a replay gives freed memory back after each op: the replay's 1 GB goal less
# one op's working set at large-v3 (~250 MB for an attention or MLP op with its copies).
TRIM_ABOVE_MB = 768


@functools.cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # AttributeError: a libc without it (musl)
    except (OSError, AttributeError):
        return None


def resident_mb() -> float:
    """The process's resident memory now, in MB (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def peak_mb() -> float:
    """The process's peak resident memory, in MB: VmHWM, its own peak since exec. ru_maxrss only where /proc
    is not there: Linux carries a parent's peak across fork and exec, so a child of a large process would
    report that process's."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def give_back(above_mb: float = TRIM_ABOVE_MB) -> bool:
    """Hand the heap's free pages back to the OS if the process is past `above_mb` resident. True if it did."""
    trim = _malloc_trim()
    if trim is None or resident_mb() <= above_mb:
        return False
    trim(0)
    return True
