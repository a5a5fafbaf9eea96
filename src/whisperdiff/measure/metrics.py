"""Divergence metrics of one op: pure functions of two arrays (reference a, candidate b).

Computed in float64 over row chunks along the time axis, so memory stays a small multiple of one
op whatever its size, and the per-time-step profile (cosine and error per time step: padding and
positional bugs show there) falls out of the same pass.
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np

from whisperdiff.measure.tolerances import DEFAULT_ATOL, DEFAULT_RTOL

_CHUNK_ELEMENTS = 1 << 20  # ~8 MB of float64 per side per chunk: stays in cache
_PARALLEL_ELEMENTS = 1 << 22  # ops from here on (large-v3's) spread their chunks over threads


def time_axis(layout: str | None, ndim: int) -> int:
    """Index of the time axis in a canonical layout string ("B,C,T" -> 2); the last axis if unknown."""
    if layout:
        for i, part in enumerate(layout.split(",")):
            if part.startswith(("T", "P")):  # P: the decoder's token position
                return i
    return max(ndim - 1, 0)


def op_metrics(a, b, *, layout: str | None = None, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL) -> dict:
    """Every per-op metric of `compare` for reference `a` and candidate `b` (same shape).

    Non-finite elements are counted on each side and left out of the other metrics."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    axis = time_axis(layout, a.ndim)
    steps = a.shape[axis] if a.ndim else 1
    a2 = np.moveaxis(np.asarray(a), axis, 0).reshape(steps, -1) if a.ndim else np.asarray(a).reshape(1, 1)
    b2 = np.moveaxis(np.asarray(b), axis, 0).reshape(steps, -1) if b.ndim else np.asarray(b).reshape(1, 1)
    rows = max(1, _CHUNK_ELEMENTS // max(1, a2.shape[1]))

    s = dict.fromkeys(("n", "sa", "sb", "outside"), 0.0)
    nonfinite = {"nan_a": 0, "inf_a": 0, "nan_b": 0, "inf_b": 0}
    step_ab, step_aa, step_bb, step_dd = (np.zeros(steps) for _ in range(4))
    max_abs, max_at = -1.0, (0, 0)
    starts = range(0, steps, rows)

    def chunk(i):
        return _chunk(a2[i : i + rows], b2[i : i + rows], atol, rtol)

    # numpy releases the GIL: a large op's chunks run on every core
    chunks = (_pool().map if a2.size >= _PARALLEL_ELEMENTS else map)(chunk, starts)
    for start, c in zip(starts, chunks, strict=True):
        rows_now = slice(start, start + rows)
        step_ab[rows_now], step_aa[rows_now], step_bb[rows_now], step_dd[rows_now] = c["steps"]
        for key in s:
            s[key] += c[key]
        for key in nonfinite:
            nonfinite[key] += c[key]
        if c["max_abs"] > max_abs:
            max_abs, max_at = c["max_abs"], (start + c["max_at"][0], c["max_at"][1])
    saa, sbb, sab, sdd = step_aa.sum(), step_bb.sum(), step_ab.sum(), step_dd.sum()
    n = max(s["n"], 1)
    mean_a, mean_b = s["sa"] / n, s["sb"] / n
    std_a = math.sqrt(max(saa / n - mean_a**2, 0.0))
    std_b = math.sqrt(max(sbb / n - mean_b**2, 0.0))
    norm_a, norm_b = math.sqrt(saa), math.sqrt(sbb)

    step_cos = np.where((step_aa > 0) & (step_bb > 0), step_ab / np.sqrt(np.maximum(step_aa * step_bb, 1e-300)), 1.0)
    step_cos = np.where((step_aa > 0) != (step_bb > 0), 0.0, step_cos)
    step_rel = np.sqrt(step_dd) / max(norm_a / math.sqrt(steps), 1e-300)
    rest_shape = tuple(d for i, d in enumerate(a.shape) if i != axis)
    index = list(np.unravel_index(max_at[1], rest_shape)) if rest_shape else []
    if a.ndim:
        index.insert(axis, max_at[0])
    return {
        "cosine": _cosine(sab, norm_a, norm_b),
        "worst_step_cosine": float(step_cos.min()) if steps else 1.0,
        "worst_step": int(step_cos.argmin()) if steps else 0,
        "l2": math.sqrt(sdd),
        "rel_l2": math.sqrt(sdd) / norm_a if norm_a > 0 else (0.0 if sdd == 0 else math.inf),
        "max_abs": max(max_abs, 0.0),
        "max_abs_index": [int(i) for i in index],
        "mean_a": mean_a,
        "std_a": std_a,
        "mean_b": mean_b,
        "std_b": std_b,
        "mean_diff": mean_b - mean_a,
        "std_ratio": std_b / std_a if std_a > 0 else (1.0 if std_b == 0 else math.inf),
        "snr_db": 10 * math.log10(saa / sdd) if sdd > 0 and saa > 0 else math.inf,
        "mismatch_share": float(s["outside"] / n),
        **nonfinite,
        "step_cosine": step_cos.astype(np.float32),
        "step_rel_error": step_rel.astype(np.float32),
    }


def _chunk(x, y, atol: float, rtol: float) -> dict:
    """The float64 sums of one chunk of rows (steps x rest): per row a.b, a.a, b.b, d.d, and the totals."""
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    out = {"nan_a": 0, "inf_a": 0, "nan_b": 0, "inf_b": 0, "sa": x.sum(), "sb": y.sum()}
    if math.isfinite(out["sa"]) and math.isfinite(out["sb"]):  # a NaN or Inf anywhere makes its sum one
        out["n"] = x.size
    else:
        ok = np.isfinite(x)
        ok &= np.isfinite(y)
        for side, v in (("a", x), ("b", y)):
            out[f"nan_{side}"] = int(np.isnan(v).sum())
            out[f"inf_{side}"] = int(np.isinf(v).sum())
        x, y = np.where(ok, x, 0.0), np.where(ok, y, 0.0)
        out.update(n=int(ok.sum()), sa=x.sum(), sb=y.sum())
    d = y - x
    # einsum reduces each row without a temporary product array (3x faster than (x * y).sum(1))
    out["steps"] = [np.einsum("ij,ij->i", p, q) for p, q in ((x, y), (x, x), (y, y), (d, d))]
    ad = np.abs(d, out=d)
    out["max_abs"], out["max_at"] = -1.0, (0, 0)
    if ad.size:
        flat = int(ad.argmax())
        out["max_abs"], out["max_at"] = float(ad.flat[flat]), (flat // ad.shape[1], flat % ad.shape[1])
    limit = np.abs(x, out=x)  # x is not needed any more: reuse it for atol + rtol * |a|
    limit *= rtol
    limit += atol
    out["outside"] = np.count_nonzero(ad > limit)  # masked elements have d = 0: never outside
    return out


@functools.cache
def _pool():
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="whisperdiff-metrics")


def _cosine(dot: float, norm_a: float, norm_b: float) -> float:
    if norm_a == 0 and norm_b == 0:
        return 1.0
    if norm_a == 0 or norm_b == 0:
        return 0.0
    return max(-1.0, min(1.0, dot / (norm_a * norm_b)))


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
