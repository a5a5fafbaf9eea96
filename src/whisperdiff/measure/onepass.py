"""The sums of one chunk of a float32 pair in one pass over memory, compiled (numba).

metrics.py's numpy path reads each chunk about a dozen times (a.a, b.b, d.d, d.(a + b), a.b, the row sums,
b - a, b + a, |d|, its maximum, the tolerance test). For traces of gigabytes (large-v3's are 4.5 GB a side)
that is the compare's time; this kernel reads each element once, so `compare` uses it for pairs past
metrics.ONEPASS_BYTES. Like the numpy path it sums each row in float32 (eight lanes at a time) and the rows
in float64. Its first version, which summed rows in float64 and took a float maximum, read 5 GB/s a core;
this one reads 13-18 (33 where a row's |b - a| stays within atol: then nothing can pass the tolerance and
the count is skipped). A chunk whose sums are not finite (NaN, Inf) is redone by the numpy path, which
counts and masks them.

The kernel is a C function (numba's cfunc: pointers in, nothing allocated, nothing raised), so that its
machine code can be kept and loaded without numba (kernel.py). This module is imported only to compile
it, once per machine. numba comes with openai-whisper (its word timestamps use it).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types

F32, F64 = types.CPointer(types.float32), types.CPointer(types.float64)
# kernel.PROTOTYPE is this signature for ctypes
SIGNATURE = types.void(F32, F32, types.int64, types.int64, types.float64, types.float64, F32, F64, F64)
OPTIONS = {"fastmath": {"reassoc"}, "error_model": "numpy"}


@numba.njit(inline="always", **OPTIONS)
def _chunk_sums(x, y, atol, rtol, scratch, steps, out):
    """Per row of x and y ([rows, cols] float32): a.a, b.b, d.d, d.(a + b), a.b into steps[row] (float64,
    [rows, 5]), d = b - a. Into out: sum a, sum b, max |d|, its flat index, count of |d| > atol + rtol |a|.
    scratch: cols + 1 float32 (|d| of one row, in L1, and the float of its largest bits)."""
    rows, cols = x.shape
    sa, sb, best, best_at, outside = 0.0, 0.0, -1.0, 0, 0
    atol32, rtol32, zero = np.float32(atol), np.float32(rtol), np.float32(0)
    ad = scratch[:cols]
    ad_bits = ad.view(np.int32)  # a float >= 0 orders as its bits: an integer max vectorises, a float one does not
    top_of = scratch[cols:]
    top_bits_of = top_of.view(np.int32)
    for i in range(rows):
        aa, bb, dd, ds, ab, ra, rb = zero, zero, zero, zero, zero, zero, zero
        for j in range(cols):
            a, b = x[i, j], y[i, j]
            d = b - a
            aa += a * a
            bb += b * b
            dd += d * d
            ds += d * (a + b)
            ab += a * b
            ra += a
            rb += b
            ad[j] = abs(d)
        top_bits = np.int32(0)
        for j in range(cols):  # the row again, now in L1: the first loop vectorises without this
            top_bits = max(top_bits, ad_bits[j])
        top_bits_of[0] = top_bits
        top = np.float64(top_of[0])
        past = np.int32(0)
        if top_of[0] > atol32 or rtol32 < 0:  # else no |d| can pass atol + rtol |a| (in float32, as below)
            for j in range(cols):
                past += np.int32(ad[j] > atol32 + rtol32 * abs(x[i, j]))
        if top > best:  # only a row that beats the best so far needs the place of its maximum
            best = top
            for j in range(cols):
                if ad_bits[j] == top_bits:
                    best_at = i * cols + j
                    break
        steps[i, 0], steps[i, 1], steps[i, 2], steps[i, 3], steps[i, 4] = aa, bb, dd, ds, ab
        sa += ra
        sb += rb
        outside += past
    out[0], out[1], out[2], out[3], out[4] = sa, sb, best, best_at, outside


@numba.cfunc(SIGNATURE, **OPTIONS)
def chunk_sums(x, y, rows, cols, atol, rtol, scratch, steps, out):
    """_chunk_sums on C pointers: x, y [rows, cols] float32 (row-major), scratch [cols + 1] float32, steps
    [rows, 5] float64, out [5] float64."""
    _chunk_sums(
        numba.carray(x, (rows, cols)),
        numba.carray(y, (rows, cols)),
        atol,
        rtol,
        numba.carray(scratch, (cols + 1,)),
        numba.carray(steps, (rows, 5)),
        numba.carray(out, (5,)),
    )
