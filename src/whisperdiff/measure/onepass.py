"""The sums of one chunk of a float32 pair in one pass over memory, compiled (numba).

metrics.py's numpy path reads each chunk about a dozen times (a.a, b.b, d.d, d.(a + b), a.b, the row sums,
b - a, b + a, |d|, its maximum, the tolerance test). For traces of gigabytes (large-v3's are 4.5 GB a side)
that is the compare's time; this kernel reads each element once, so `compare` uses it for pairs past
metrics.ONEPASS_BYTES, where numba's import and its on-disk cache (~0.4 s) pay off. Accumulated in
float64 (b - a of two float32 values is exact there), so it is at least as precise as the numpy path,
which sums each row in float32. A chunk whose sums are not finite (NaN, Inf) is redone by the numpy
path, which counts and masks them.

numba comes with openai-whisper (its word timestamps use it). Imported only by metrics._onepass.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True, fastmath={"reassoc"}, error_model="numpy")
def chunk_sums(x, y, atol, rtol, steps):
    """Per row of x and y ([rows, cols] float32): a.a, b.b, d.d, d.(a + b), a.b into steps[row] (float64,
    [rows, 5]), d = b - a. Returns (sum a, sum b, max |d|, its flat index, count of |d| > atol + rtol |a|)."""
    rows, cols = x.shape
    sa, sb, best, best_at, outside = 0.0, 0.0, -1.0, 0, 0
    for i in range(rows):
        aa, bb, dd, ds, ab, ra, rb = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
        for j in range(cols):
            a, b = np.float64(x[i, j]), np.float64(y[i, j])
            d = b - a
            aa += a * a
            bb += b * b
            dd += d * d
            ds += d * (a + b)
            ab += a * b
            ra += a
            rb += b
        top, past = 0.0, 0
        for j in range(cols):  # a second loop over the row, now in L1: the first one vectorises without it
            a = np.float64(x[i, j])
            d = abs(np.float64(y[i, j]) - a)
            top = max(top, d)
            past += d > atol + rtol * abs(a)
        if top > best:
            best = top
            for j in range(cols):
                if abs(np.float64(y[i, j]) - np.float64(x[i, j])) == top:
                    best_at = i * cols + j
                    break
        steps[i, 0], steps[i, 1], steps[i, 2], steps[i, 3], steps[i, 4] = aa, bb, dd, ds, ab
        sa += ra
        sb += rb
        outside += past
    return sa, sb, best, best_at, outside
