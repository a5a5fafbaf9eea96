"""Hypotheses for what feeds the first block: the log-mel (another log, scale or normalisation, the clamp
missing) and the positional embedding (missing, scaled, shifted, rolled or recomputed).

positional_hypotheses takes (replayer, recipe, inputs, candidate output, replayed output, context, add) like
every op type's; mel_hypotheses compares two log-mels directly.
"""

from __future__ import annotations

import math

import numpy as np

from whisperdiff.analysis.replay import rel


def sinusoids(length: int, channels: int, base: float = 10000.0, interleave=False, cos_first=False, half=False):
    """Whisper's sinusoidal table (model.sinusoids) and the usual ways of recomputing it differently."""
    inc = math.log(base) / (channels // 2 - (0 if half else 1))
    inv = np.exp(-inc * np.arange(channels // 2))
    t = np.arange(length)[:, None] * inv[None, :]
    s, c = np.sin(t), np.cos(t)
    if cos_first:
        s, c = c, s
    if interleave:
        return np.stack([s, c], -1).reshape(length, channels)
    return np.concatenate([s, c], 1)


def positional_hypotheses(rp, recipe, xs, out, e, ctx, add):
    torch = rp.torch
    table = recipe.params.get("table", "encoder.positional_embedding")
    xt = xs[0] if recipe.params.get("channels_last") else xs[0].permute(0, 2, 1)  # [B, T, C]
    t, c = xt.shape[1], xt.shape[2]
    pe = rp.w[table][:t]
    add("positional", "the positional embedding is not added", xt)
    d = (out - xt).double()
    pn = float((pe.double() ** 2).sum())
    if pn > 0:
        s = float((d * pe.double()).sum()) / pn
        if abs(s - 1) > 0.01:
            add(
                "positional",
                f"the positional embedding is scaled by {s:.4g} (solved from the data)",
                xt + s * pe,
                factor=s,
            )
    full = rp.w[table]
    for k in list(range(-8, 0)) + list(range(1, 9)):
        shifted = torch.zeros_like(pe)
        where = torch.zeros(out.shape, dtype=torch.bool)
        lo, hi = max(0, -k), min(t, full.shape[0] - k)
        shifted[lo:hi] = full[lo + k : hi + k]
        where[:, lo:hi] = True
        add(
            "positional",
            f"positions shifted by {k:+d} (step t gets the embedding of t{k:+d}; "
            f"judged on the {hi - lo} steps where it is defined)",
            xt + shifted,
            where=where,
            shift=k,
        )
        add(
            "positional",
            f"positions rolled by {k:+d} (step t gets the embedding of (t{k:+d}) mod {t})",
            xt + pe.roll(-k, 0),
            shift=k,
        )
    if table != "encoder.positional_embedding":  # the decoder's table is learned: nothing to recompute
        return
    variants = {
        "Whisper's sinusoids": {},
        "sin and cos interleaved": {"interleave": True},
        "cos before sin": {"cos_first": True},
        "timescales over channels/2 instead of channels/2-1": {"half": True},
    }
    for label, kw in variants.items():
        table = torch.from_numpy(sinusoids(t, c, **kw).astype(np.float32))
        if rel(pe, table) > 1e-3:
            add(
                "positional",
                f"the positional embedding is recomputed ({label}) instead of the model's table",
                xt + table,
            )


def mel_hypotheses(a: np.ndarray, b: np.ndarray) -> list[tuple]:
    """How B's log-mel relates to Whisper's (A): m = (max(log10 S, max - 8) + 4) / 4, so log10 S = 4m - 4
    wherever A is above its floor. Each entry: (explanation, rel L2 of B against that candidate)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    log10 = 4 * a - 4
    top = log10.max()
    floor = a <= a.min() + 1e-6
    ln10 = math.log(10)
    cands = {
        "natural log instead of log10 (clamp and (x+4)/4 applied to ln S)": (
            np.maximum(ln10 * log10, ln10 * top - 8) + 4
        )
        / 4,
        "librosa-style power_to_db(ref=max, top_db=80): 10*log10(S/max S) in [-80, 0] dB": np.maximum(
            10 * (log10 - top), -80.0
        ),
        "power_to_db(ref=1.0): 10*log10(S) without Whisper's normalisation": 10 * log10,
        "no (x + 4) / 4 normalisation: the clamped log10 S": log10,
        "natural log without Whisper's normalisation": ln10 * log10,
    }
    out = []

    def score(c):
        n = np.linalg.norm(c)
        return float(np.linalg.norm(b - c) / n) if n > 0 else math.inf

    for label, c in cands.items():
        out.append((label, score(c)))
    if floor.any() and (~floor).any():  # the clamp at max - 8 missing: same above the floor, lower below it
        c = np.where(floor, np.minimum(b, a), a)
        out.append(("the clamp at max - 8 is missing (values below Whisper's floor)", score(c)))
        c = np.where(floor, np.minimum(b, log10), log10)
        out.append(("neither the clamp at max - 8 nor the (x + 4) / 4 normalisation", score(c)))
    va = a - a.mean()
    if float((va * va).sum()) > 0:
        slope = float((va * (b - b.mean())).sum() / (va * va).sum())
        icpt = float(b.mean() - slope * a.mean())
        if abs(slope - 1) < 1e-3:  # log10 power shifted by 4c: the waveform's amplitude scaled by 10^(2c)
            gain = 10 ** (2 * icpt)
            label = (
                f"Whisper's log-mel plus a constant {icpt:+.4g}: the audio's amplitude is scaled by {gain:.4g} "
                f"(10^(2 x {icpt:.4g}){'; int16 samples not divided by 32768' if abs(gain / 32768 - 1) < 0.01 else ''})"
            )
        else:
            label = f"an affine transform of Whisper's log-mel: B = {slope:.4g} * A {icpt:+.4g} (another normalisation)"
        out.append((label, score(slope * a + icpt)))
    return out
