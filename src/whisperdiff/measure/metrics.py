"""Divergence metrics of one op: pure functions of two arrays (reference a, candidate b).

Computed over row chunks along the time axis, so memory stays a small multiple of one op whatever
its size, and the per-time-step profile (cosine and error per time step: padding and positional
bugs show there) falls out of the same pass.

Float32 (and float16) ops are reduced in float32 row by row, each row's sums then added in float64:
a row has at most a few thousand elements, and BLAS sums them to about 1e-6 relative, 2.5x faster
than converting to float64 first (large-v3's traces are 4.5 GB a side). The cosine is
never taken from a.b, whose cancellation near 1 loses everything below ~1e-8 in float32 (and ~1e-13
in float64): 1 - cos = (|d|^2 - (|a| - |b|)^2) / (2|a||b|), with |a| - |b| = -d.(a + b) / (|a| + |b|)
and d = b - a, which float32 computes exactly wherever a and b are close. A chunk whose float32 sums
overflow is redone in float64.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Callable

import numpy as np

from whisperdiff.measure.tolerances import DEFAULT_ATOL, DEFAULT_RTOL

_CHUNK_ELEMENTS = 1 << 18  # 1 MB of float32 a side: a chunk and its temporaries stay in cache (4 MB: 2.4x slower)
# The one-pass kernel's chunks: 2 MB a side, so that a worker's pair stays in cache from its read to the
# kernel (analysis/measuring.py); 8 MB a side on two threads spills a 32 MB L3 and takes 1.5x as long.
_ONEPASS_CHUNK_ELEMENTS = 1 << 19
_PARALLEL_ELEMENTS = 2 * _CHUNK_ELEMENTS  # ops of two chunks or more spread them over threads


def time_axis(layout: str | None, ndim: int) -> int:
    """Index of the time axis in a canonical layout string ("B,C,T" -> 2); the last axis if unknown."""
    if layout:
        for i, part in enumerate(layout.split(",")):
            if part.startswith(("T", "P")):  # P: the decoder's token position
                return i
    return max(ndim - 1, 0)


def op_metrics(
    a,
    b,
    *,
    layout: str | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    onepass: bool = False,
    parallel: bool = True,
) -> dict:
    """Every per-op metric of `compare` for reference `a` and candidate `b` (same shape).

    Non-finite elements are counted on each side and left out of the other metrics. onepass: float32
    chunks by the compiled one-pass kernel (onepass.py; for traces past ONEPASS_BYTES), the rest by numpy.
    parallel=False keeps a large op's chunks on the calling thread; the chunks, and so the figures, are the
    same either way, and the same as an OpMeasure fed chunk by chunk."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    m = OpMeasure(a.shape, (a.dtype, b.dtype), layout=layout, atol=atol, rtol=rtol, onepass=onepass)
    a2, b2 = m.rows_of(a), m.rows_of(b)

    def chunk(i):
        return m.sums(a2[i : i + m.rows], b2[i : i + m.rows])

    # numpy releases the GIL: a large op's chunks run on every core
    chunks = (_pool().map if parallel and a2.size >= _PARALLEL_ELEMENTS else map)(chunk, m.starts)
    for start, c in zip(m.starts, chunks, strict=True):
        m.add(start, c)
    return m.result(lambda: (a2, b2))


class OpMeasure:
    """op_metrics in parts, for a caller that reads an op a chunk at a time (analysis/measuring.py). The op is
    seen as [steps, rest] (its time axis first: `rows_of`) and cut into chunks of `rows` rows starting at
    `starts`; each chunk's `sums` (on any thread) are `add`ed in order, then `result` gives op_metrics' dict.
    Where the time axis has only length-1 axes before it (`contiguous`), a chunk is one byte range of the
    op's C-order data."""

    def __init__(self, shape, dtypes, *, layout: str | None, atol: float, rtol: float, onepass: bool):
        shape = tuple(shape)
        self.shape, self.atol, self.rtol, self.onepass = shape, atol, rtol, onepass
        self.axis = time_axis(layout, len(shape))
        self.steps = shape[self.axis] if shape else 1
        self.rest_shape = tuple(d for i, d in enumerate(shape) if i != self.axis)
        self.rest = math.prod(self.rest_shape)  # (an empty op has no -1 to infer)
        kernel = onepass and all(np.dtype(d) == np.float32 for d in dtypes)
        self.rows = max(1, (_ONEPASS_CHUNK_ELEMENTS if kernel else _CHUNK_ELEMENTS) // max(1, self.rest))
        self.starts = range(0, self.steps, self.rows)
        self.contiguous = math.prod(shape[: self.axis]) == 1
        self._s = dict.fromkeys(("n", "sa", "sb", "outside"), 0.0)
        self._nonfinite = {"nan_a": 0, "inf_a": 0, "nan_b": 0, "inf_b": 0}
        self._step = np.zeros((5, self.steps))  # per step: a.a, b.b, d.d, d.(a + b), a.b
        self._max_abs, self._max_at = -1.0, (0, 0)

    def rows_of(self, x) -> np.ndarray:
        """x as [steps, rest] (a view where the layout allows)."""
        x = np.asarray(x)
        return np.moveaxis(x, self.axis, 0).reshape(self.steps, self.rest) if x.ndim else x.reshape(1, 1)

    def sums(self, x, y) -> dict:
        """The sums of one chunk ([rows, rest] of A and of B); only reads them."""
        return _chunk(x, y, self.atol, self.rtol, self.onepass)

    def add(self, start: int, c: dict) -> None:
        """Take in the sums of the chunk whose first row is `start` (chunks in order)."""
        self._step[:, start : start + self.rows] = c["steps"]
        for key in self._s:
            self._s[key] += c[key]
        for key in self._nonfinite:
            self._nonfinite[key] += c[key]
        if c["max_abs"] > self._max_abs:
            self._max_abs, self._max_at = c["max_abs"], (start + c["max_at"][0], c["max_at"][1])

    def result(self, rows_again: Callable[[], tuple[np.ndarray, np.ndarray]]) -> dict:
        """op_metrics' dict. rows_again: A's and B's [steps, rest], called only where a standard deviation
        needs a second pass (a spread under ~1% of the mean)."""
        steps, s = self.steps, self._s
        step_aa, step_bb, step_dd, step_ds, step_ab = self._step
        saa, sbb, sdd, sds, sab = step_aa.sum(), step_bb.sum(), step_dd.sum(), step_ds.sum(), step_ab.sum()
        n = max(s["n"], 1)
        mean_a, mean_b = s["sa"] / n, s["sb"] / n
        rows_again = functools.cache(rows_again)  # read once, where both sides need it
        std_a = _std(lambda: rows_again()[0], saa, n, mean_a, self.rows)
        std_b = _std(lambda: rows_again()[1], sbb, n, mean_b, self.rows)
        norm_a = math.sqrt(saa)

        step_cos = _cosine(step_aa, step_bb, step_dd, step_ds, step_ab)
        with np.errstate(over="ignore"):  # a step error against an all-zero reference is inf, as rel_l2's is
            step_rel = (np.sqrt(step_dd) / max(norm_a / math.sqrt(max(steps, 1)), 1e-300)).astype(np.float32)
        max_at = self._max_at
        index = list(np.unravel_index(max_at[1], self.rest_shape)) if self.rest_shape else []
        if self.shape:
            index.insert(self.axis, max_at[0])
        return {
            "cosine": float(_cosine(saa, sbb, sdd, sds, sab)),
            "worst_step_cosine": float(step_cos.min()) if steps else 1.0,
            "worst_step": int(step_cos.argmin()) if steps else 0,
            "l2": math.sqrt(sdd),
            "rel_l2": math.sqrt(sdd) / norm_a if norm_a > 0 else (0.0 if sdd == 0 else math.inf),
            "max_abs": max(self._max_abs, 0.0),
            "max_abs_index": [int(i) for i in index],
            "mean_a": mean_a,
            "std_a": std_a,
            "mean_b": mean_b,
            "std_b": std_b,
            "mean_diff": mean_b - mean_a,
            "std_ratio": std_b / std_a if std_a > 0 else (1.0 if std_b == 0 else math.inf),
            "snr_db": 10 * math.log10(saa / sdd) if sdd > 0 and saa > 0 else math.inf,
            "mismatch_share": float(s["outside"] / n),
            **self._nonfinite,
            "step_cosine": step_cos.astype(np.float32),
            "step_rel_error": step_rel,
        }


def _std(rows_of, sum_sq: float, n: float, mean: float, rows: int) -> float:
    """sqrt(E[x^2] - mean^2), unless the mean is so much larger than the spread that the difference is
    all rounding of the float32 sums (spread under ~1% of the mean): then sum (x - mean)^2 in float64,
    over rows_of() (the op as [steps, rest])."""
    var = sum_sq / n - mean * mean
    if var > 1e-4 * (sum_sq / n) or not math.isfinite(var):
        return math.sqrt(max(var, 0.0))
    x2 = rows_of()
    total, count = 0.0, 0
    for i in range(0, x2.shape[0], rows):
        c = x2[i : i + rows].astype(np.float64)
        c = c[np.isfinite(c)] - mean
        total, count = total + float(c @ c), count + c.size
    return math.sqrt(total / max(count, 1))


def _chunk(x, y, atol: float, rtol: float, onepass: bool = False) -> dict:
    """The sums of one chunk of rows (steps x rest): per row a.a, b.b, d.d, d.(a + b) and a.b, and the totals."""
    if onepass and x.dtype == np.float32 and y.dtype == np.float32:
        out = _onepass(x, y, atol, rtol)
        if out is not None and _finite(out):
            return out  # else a NaN or Inf (the numpy path below counts and masks them), or no kernel here
    if x.dtype in _SINGLE and y.dtype in _SINGLE:
        out = _sums(x.astype(np.float32, copy=False), y.astype(np.float32, copy=False), atol, rtol)
        if _finite(out):
            return out  # else a float32 sum overflowed (values beyond ~1e19): redo it in float64
    return _sums(x.astype(np.float64), y.astype(np.float64), atol, rtol)


def _finite(out: dict) -> bool:
    """Whether a chunk's sums are all finite (else it held a NaN or Inf, or a float32 sum overflowed)."""
    return math.isfinite(out["sa"]) and math.isfinite(out["sb"]) and bool(np.isfinite(out["steps"]).all())


_SINGLE = (np.dtype(np.float32), np.dtype(np.float16))
ONEPASS_BYTES = 1 << 30  # pairs from here on (both traces together) are compared by the one-pass kernel


def load_onepass():
    """Start loading the one-pass kernel on a thread (from whisperdiff's cache, ~0.05 s; compiled by numba
    the first time on a machine, ~1 s): a Future of None, or of why the kernel cannot be had (then the
    chunks are measured by the numpy path: the same figures to float precision, several times slower)."""
    return _pool().submit(_warm_onepass)


def _warm_onepass() -> str | None:
    from whisperdiff.measure.kernel import unavailable

    return unavailable()


def _onepass(x, y, atol: float, rtol: float) -> dict | None:
    """_chunk of a float32 chunk by onepass.chunk_sums: every element read once (None: no kernel here)."""
    from whisperdiff.measure.kernel import chunk_sums

    kernel = chunk_sums()
    if kernel is None:
        return None

    # row-major for the kernel: an op with its time axis last is strided here, and copied (a small share of a
    # trace: the mel and the two convolutions)
    x, y = np.ascontiguousarray(x), np.ascontiguousarray(y)
    rows, cols = x.shape
    steps, out = np.empty((rows, 5)), np.empty(5)
    scratch = _scratch("onepass", (cols + 1,), np.float32)
    kernel(
        x.ctypes.data,
        y.ctypes.data,
        rows,
        cols,
        float(atol),
        float(rtol),
        scratch.ctypes.data,
        steps.ctypes.data,
        out.ctypes.data,
    )
    sa, sb, top, at, outside = out.tolist()
    at, cols = int(at), max(cols, 1)
    return {
        "nan_a": 0,
        "inf_a": 0,
        "nan_b": 0,
        "inf_b": 0,
        "n": x.size,
        "sa": sa,
        "sb": sb,
        "steps": steps.T,  # [5, rows], as the numpy path's five rows
        "max_abs": top,
        "max_at": (at // cols, at % cols),
        "outside": int(outside),
    }


def _sums(x, y, atol: float, rtol: float) -> dict:
    """_chunk in x's float type, float32 or float64 (x and y are only read). Row sums by einsum, row dot
    products by vecdot (BLAS): each a single pass, no temporary array."""
    f64 = np.float64

    def total(v) -> float:  # rows in v's type, across rows in float64
        return float(np.einsum("ij->i", v).sum(dtype=f64))

    out = {"nan_a": 0, "inf_a": 0, "nan_b": 0, "inf_b": 0, "n": x.size}
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is seen by _chunk, which redoes it
        out["sa"], out["sb"] = total(x), total(y)
        if not (math.isfinite(out["sa"]) and math.isfinite(out["sb"])):  # a NaN or Inf, or an overflow
            ok = np.isfinite(x)
            ok &= np.isfinite(y)
            for side, v in (("a", x), ("b", y)):
                out[f"nan_{side}"] = int(np.isnan(v).sum())
                out[f"inf_{side}"] = int(np.isinf(v).sum())
            x, y = np.where(ok, x, 0), np.where(ok, y, 0)
            out["n"] = int(ok.sum())
            out["sa"], out["sb"] = total(x), total(y)
        d = np.subtract(y, x, out=_scratch("d", x.shape, x.dtype))
        s = np.add(y, x, out=_scratch("s", x.shape, x.dtype))
        out["steps"] = [np.vecdot(p, q).astype(f64) for p, q in ((x, x), (y, y), (d, d), (d, s), (x, y))]
    ad = np.abs(d, out=d)
    out["max_abs"], out["max_at"] = -1.0, (0, 0)
    if ad.size:
        flat = int(ad.argmax())
        out["max_abs"], out["max_at"] = float(ad.flat[flat]), (flat // ad.shape[1], flat % ad.shape[1])
    out["outside"] = _outside(ad, x, atol, rtol, spare=s)
    return out


def _outside(ad, x, atol: float, rtol: float, spare) -> int:
    """How many |d| > atol + rtol |a| (masked elements have d = 0: never outside). Only elements past atol
    can be, and in a close pair they are few: test those alone, without a full pass for the limit."""
    past = ad > atol
    count = np.count_nonzero(past)
    if count == 0:
        return 0
    if count < ad.size // 8:
        return int(np.count_nonzero(ad[past] > atol + rtol * np.abs(x[past])))
    limit = np.abs(x, out=spare)
    limit *= rtol
    limit += atol
    return int(np.count_nonzero(ad > limit))


_LOCAL = threading.local()


def _scratch(name: str, shape: tuple, dtype) -> np.ndarray:
    """A reused temporary of this thread: a fresh 1 MB array per chunk costs its page faults each time
    (the allocator maps and unmaps blocks that large), about a third of a large-v3 compare."""
    buffers = _LOCAL.__dict__.setdefault("buffers", {})
    size = math.prod(shape)
    buf = buffers.get((name, dtype))
    if buf is None or buf.size < size:
        buf = buffers[(name, dtype)] = np.empty(max(size, _CHUNK_ELEMENTS), dtype)
    return buf[:size].reshape(shape)


_THREADS = min(4, os.cpu_count() or 1)


@functools.cache
def _pool():
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=_THREADS, thread_name_prefix="whisperdiff-metrics")


def _cosine(aa, bb, dd, ds, ab):
    """cos(a, b) from |a|^2, |b|^2, |d|^2, d.(a + b) and a.b, d = b - a (scalars or per-row arrays).
    Near 1 (|d|^2 < 2|a||b|) from d, as the module's note says; further away, where d's terms grow
    past |a||b| and their difference loses what a.b keeps, as a.b / (|a||b|). 1 where both are zero,
    0 where one is."""
    aa, bb, dd, ds, ab = (np.asarray(v, np.float64) for v in (aa, bb, dd, ds, ab))
    na, nb = np.sqrt(aa), np.sqrt(bb)
    both = (aa > 0) & (bb > 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        gap = ds / (na + nb)  # |a| - |b|, up to sign
        near = 1.0 - (dd - gap * gap) / (2.0 * na * nb)
        cos = np.where(dd < 2.0 * na * nb, near, ab / (na * nb))
    return np.clip(np.where(both, cos, np.where((aa > 0) | (bb > 0), 0.0, 1.0)), -1.0, 1.0)


def rel_l2(a, b) -> float:
    """||b - a|| / ||a|| in float64 (the one-number error used by replay and diagnosis)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    na = np.linalg.norm(a)
    d = np.linalg.norm(b - a)
    return float(d / na) if na > 0 else (0.0 if d == 0 else math.inf)


def round_to(a, dtype: str) -> np.ndarray:
    """`a` rounded to float16 or bfloat16 (round to nearest even) and back to float32, in NumPy (no torch)."""
    a = np.asarray(a, np.float32)
    if dtype == "float16":
        with np.errstate(over="ignore"):  # beyond float16's range is inf, as in torch
            return a.astype(np.float16).astype(np.float32)
    if dtype != "bfloat16":
        raise ValueError(f"round_to: float16 or bfloat16, not {dtype}")
    bits = np.ascontiguousarray(a).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000  # bfloat16 keeps the top 16 bits, ties to even
    out = rounded.astype(np.uint32).view(np.float32)
    return np.where(np.isfinite(a), out, a)  # NaN/Inf stay as they are


def rounding_error(a, dtype: str) -> float:
    """Relative L2 error of rounding `a` to float16 or bfloat16: the floor of that precision for this op."""
    return rel_l2(a, round_to(a, dtype))
