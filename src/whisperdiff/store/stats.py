"""Summary statistics of one tensor, computed in chunks so memory stays bounded for any op size."""

from __future__ import annotations

import numpy as np

CHUNK = 1 << 22  # elements per chunk: 32 MB of float64


def tensor_stats(array: np.ndarray) -> dict:
    """mean, std, min, max over the finite values (float64 accumulation), and NaN / Inf counts."""
    flat = array.reshape(-1)
    n = mean = m2 = 0.0  # running count, mean and sum of squared deviations (Chan et al.)
    lo, hi = np.inf, -np.inf
    nan = inf = 0
    for start in range(0, flat.size, CHUNK):
        chunk = np.asarray(flat[start : start + CHUNK], dtype=np.float64)
        finite = np.isfinite(chunk)
        if not finite.all():
            nan += int(np.isnan(chunk).sum())
            inf += int(np.isinf(chunk).sum())
            chunk = chunk[finite]
        if chunk.size:
            c_mean = chunk.mean()
            c_m2 = np.square(chunk - c_mean).sum()
            delta, n_new = c_mean - mean, n + chunk.size
            mean += delta * chunk.size / n_new
            m2 += c_m2 + delta * delta * n * chunk.size / n_new
            n = n_new
            lo, hi = min(lo, chunk.min()), max(hi, chunk.max())
    mean = mean if n else float("nan")
    var = m2 / n if n else float("nan")
    return {
        "mean": float(mean),
        "std": float(np.sqrt(var)),
        "min": float(lo) if n else float("nan"),
        "max": float(hi) if n else float("nan"),
        "nan": nan,
        "inf": inf,
    }
