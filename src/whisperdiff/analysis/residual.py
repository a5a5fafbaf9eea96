"""What B - A looks like where no hypothesis reproduces B: structural facts, with numbers.

The facts go into the message of a `divergence` finding; none of them names a bug by itself. Pure
NumPy over one op's arrays (E is the replay of the op on B's inputs, or A when there is no replay).
"""

from __future__ import annotations

import math

import numpy as np

from whisperdiff.measure.metrics import time_axis


def valid_steps(manifest: dict, mel: np.ndarray | None = None) -> int | None:
    """Mel frames that hold audio (Whisper pads every window to 3000 frames): from the input's recorded
    duration and window, else from the constant floor the zero padding leaves at the end of the mel."""
    inp = manifest.get("input", {}) or {}
    duration, window = inp.get("duration_s"), inp.get("window", 0) or 0
    if isinstance(duration, (int, float)) and duration > 0:
        return int(min(3000, max(0, math.ceil((duration - 30 * window) * 100))))
    if mel is not None and mel.ndim >= 2:
        frames = np.asarray(mel).reshape(-1, mel.shape[-1])
        floor = frames.min()
        steps = np.nonzero((frames > floor + 1e-6).any(0))[0]
        if steps.size:
            return int(steps[-1] + 1)
    return None


def steps_with_audio(frames: int | None, steps: int) -> int | None:
    """Of an op with `steps` time steps (3000 for conv1, 1500 after conv2), those that see audio."""
    if not frames:
        return None
    return min(steps, math.ceil(frames * steps / 3000))


def representable_share(b: np.ndarray, dtype: str) -> float:
    """Share of B's finite non-zero values that float16 or bfloat16 represents exactly."""
    x = np.asarray(b, np.float32).ravel()
    x = x[np.isfinite(x) & (x != 0)]
    if x.size > 2_000_000:
        x = x[:: x.size // 2_000_000 + 1]
    if x.size == 0:
        return 0.0
    if dtype == "bfloat16":
        return float(((x.view(np.uint32) & 0xFFFF) == 0).mean())
    with np.errstate(over="ignore"):
        return float((x.astype(np.float16).astype(np.float32) == x).mean())


def describe(
    b, e, layout: str | None, *, audio_frames: int | None = None, n_head: int | None = None, vectors: dict | None = None
) -> str:
    """One clause per structural fact about R = B - E."""
    b = np.asarray(b, np.float64)
    e = np.asarray(e, np.float64)
    if b.shape != e.shape:
        return ""
    ok = np.isfinite(b) & np.isfinite(e)
    b, e = np.where(ok, b, 0.0), np.where(ok, e, 0.0)
    r = b - e
    rr = float((r * r).sum())
    if rr == 0:
        return ""
    facts = []
    ee = float((e * e).sum())
    if ee > 0:
        c = float((b * e).sum()) / ee
        left = float(((b - c * e) ** 2).sum()) / rr
        facts.append(
            f"best global factor {c:.4g} leaves {left:.0%} of the error"
            if abs(c - 1) > 1e-3
            else "no global factor explains it"
        )
    t_ax = time_axis(layout, r.ndim)
    steps = r.shape[t_ax]
    per_step = (np.moveaxis(r, t_ax, 0).reshape(steps, -1) ** 2).sum(1)
    chan_ax = _channel_axis(layout, r.ndim)
    if chan_ax is not None and steps > 1:
        mean_t = r.mean(t_ax, keepdims=True)
        const = steps * float((mean_t**2).sum()) / rr
        if const > 0.3:
            fact = f"{const:.0%} of it is constant over time per channel"
            if vectors:
                name, coef, cos = closest_vector(mean_t.ravel(), vectors)
                if name and abs(cos) > 0.5:
                    fact += f" (closest model vector: {coef:+.3g} x {name.removeprefix('encoder.')}, cosine {cos:.3f})"
            facts.append(fact)
    valid = steps_with_audio(audio_frames, steps)
    if valid and valid < steps:
        pad_share = float(per_step[valid:].sum()) / rr
        base = (steps - valid) / steps  # the padding's share of the window: what a uniform error puts there
        verdict = (
            "uniform: no padding clue"
            if abs(pad_share - base) < 0.1
            else "concentrated in the padding"
            if pad_share > base
            else "concentrated in the audio"
        )
        facts.append(
            f"{pad_share:.0%} of it lies in the padding after the audio (steps >= {valid} of {steps}), which is "
            f"{base:.0%} of the window: {verdict}"
        )
    order = np.argsort(per_step)[::-1]
    n90 = int(np.searchsorted(np.cumsum(per_step[order]) / rr, 0.9) + 1)
    if n90 <= steps // 4:
        top = sorted(order[:n90].tolist())
        facts.append(f"90% of it in {n90} of {steps} time steps ({_ranges(top)})")
    if chan_ax is not None:
        chans = r.shape[chan_ax]
        per_chan = (np.moveaxis(r, chan_ax, 0).reshape(chans, -1) ** 2).sum(1)
        order_c = np.argsort(per_chan)[::-1]
        c90 = int(np.searchsorted(np.cumsum(per_chan[order_c]) / rr, 0.9) + 1)
        if n_head and chans % n_head == 0 and layout and layout.endswith("C"):
            per_head = per_chan.reshape(n_head, -1).sum(1) / rr
            h90 = int(np.searchsorted(np.cumsum(np.sort(per_head)[::-1]), 0.9) + 1)
            if h90 < n_head:
                facts.append(
                    f"90% of it in {h90} of {n_head} heads' channels "
                    f"({', '.join(str(h) for h in np.argsort(per_head)[::-1][:h90])})"
                )
        if c90 <= chans // 4:
            facts.append(f"90% of it in {c90} of {chans} channels ({_ranges(sorted(order_c[:c90].tolist()))})")
    if layout and layout.startswith("B,H") and r.ndim == 4:
        per_head = (np.moveaxis(r, 1, 0).reshape(r.shape[1], -1) ** 2).sum(1) / rr
        facts.append("share per head " + ", ".join(f"{s:.0%}" for s in per_head))
    return "; ".join(facts)


def _channel_axis(layout: str | None, ndim: int) -> int | None:
    if not layout:
        return None
    parts = layout.split(",")
    for i, p in enumerate(parts):
        if p in ("C", "4C", "n_mels"):
            return i
    return None


def closest_vector(d, vectors: dict) -> tuple[str | None, float, float]:
    """(name, coefficient, cosine) of the 1-D vector in `vectors` most parallel to `d` (same length), with
    d ~ coefficient x vectors[name]; (None, 0.0, 0.0) when `d` is zero or no vector has its length."""
    d = np.asarray(d, np.float64)
    best = (None, 0.0, 0.0)
    dn = float(np.linalg.norm(d))
    if dn == 0:
        return best
    for name, v in vectors.items():
        v = np.asarray(v, np.float64)
        if v.ndim != 1 or v.shape[0] != d.shape[0]:
            continue
        vn = float(np.linalg.norm(v))
        if vn == 0:
            continue
        cos = float(d @ v) / (dn * vn)
        if abs(cos) > abs(best[2]):
            best = (name, float(d @ v) / vn**2, cos)
    return best


def _ranges(idx: list[int], limit: int = 4) -> str:
    """[3,4,5,9] -> "3-5, 9"."""
    runs, start = [], None
    for i, v in enumerate(idx):
        if start is None:
            start = v
        if i + 1 == len(idx) or idx[i + 1] != v + 1:
            runs.append(f"{start}-{v}" if v > start else f"{v}")
            start = None
    return ", ".join(runs[:limit]) + (", ..." if len(runs) > limit else "")


def cosine(b, e) -> float:
    x, y = np.asarray(b, np.float64).ravel(), np.asarray(e, np.float64).ravel()
    n = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(x @ y / n) if n > 0 and np.isfinite(n) else 0.0


def nonfinite_where(b) -> str:
    """Where B's non-finite values are, when they sit in a few channels (last axis) at every row: overwritten."""
    if b is None or np.ndim(b) < 2:
        return ""
    bad = ~np.isfinite(np.asarray(b)).reshape(-1, np.shape(b)[-1])
    cols = np.nonzero(bad.any(0))[0]
    if not 0 < len(cols) <= 0.05 * bad.shape[1]:
        return ""
    rows = np.nonzero(bad.any(1))[0]
    at = "every position" if len(rows) == bad.shape[0] else "position(s) " + ", ".join(str(int(r)) for r in rows[:8])
    b2 = np.asarray(b).reshape(-1, np.shape(b)[-1])[np.ix_(rows, cols)]
    value = "-inf" if bool((b2 == -np.inf).all()) else "+inf" if bool((b2 == np.inf).all()) else "NaN/Inf"
    listed = ", ".join(str(int(c)) for c in cols[:8]) + (", ..." if len(cols) > 8 else "")
    return (
        f"; they are {value} in {len(cols)} of {bad.shape[1]} channels ({listed}) at {at}: those entries are set "
        "to -inf inside the model (for logits: tokens suppressed in the model, not in the decoding loop)"
        if value == "-inf"
        else f"; they fill {len(cols)} of {bad.shape[1]} channels ({listed}) at {at}"
    )


def random_noise(b, e) -> str | None:
    """The facts, when B - replay is white noise: zero-mean, Gaussian (kurtosis ~3), uncorrelated with the
    output, and of the same size at every time step and channel. None when it has any structure."""
    b, e = np.asarray(b, np.float64), np.asarray(e, np.float64)
    if b.shape != e.shape or b.ndim < 2 or not (np.isfinite(b).all() and np.isfinite(e).all()):
        return None
    d = (b - e).reshape(-1, b.shape[-1]) if b.ndim == 3 else (b - e).reshape(b.shape[0], -1)
    sd = float(d.std())
    if sd == 0 or d.shape[0] < 8 or d.shape[1] < 8:
        return None
    kurt = float(((d - d.mean()) ** 4).mean() / sd**4)
    corr = float(np.corrcoef(d.ravel(), e.ravel())[0, 1])
    rows, cols = d.std(1), d.std(0)
    spread = max(float(rows.std() / rows.mean()), float(cols.std() / cols.mean()))
    if abs(float(d.mean())) < 0.05 * sd and 2.6 < kurt < 3.5 and abs(corr) < 0.05 and spread < 0.25:
        return (
            f"std {sd:.3g} ({sd / max(float(e.std()), 1e-30):.3g} x the output's std), mean {float(d.mean()):+.1e}, "
            f"kurtosis {kurt:.2f} (Gaussian: 3), correlation with the output {corr:+.3f}, the same size at every "
            f"step and channel (spread {spread:.0%})"
        )
    return None
