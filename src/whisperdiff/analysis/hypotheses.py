"""Hypotheses by op type: what a port may have done instead, each replayed on the candidate's own inputs.

Nothing here is a list of planted bugs. Each op type has the ways such an op goes wrong in general:
a linear op with its weight transposed or another layer's weight or a bias missing; an activation
that is another function; a layer norm with another epsilon (solved from the data), n-1 variance, no
gamma or beta, RMSNorm or the wrong axis; attention with the wrong softmax axis, a mask, another
scale (solved from the data), heads split in the wrong order, q and k swapped; a conv with other
padding, taps or filter layout; a positional embedding missing, shifted, scaled or recomputed; and,
for every op, another precision (float16, bfloat16, tf32), a sign, a global factor or offset, a
per-channel offset equal to one of the model's bias vectors. Each yields
(kind, explanation, rel L2 of the candidate against that replay, extra); diagnose.py picks the one
that reproduces the candidate, if any.

Only `compare` calls this, and only at an op that introduces error: a clean pair costs nothing.
"""

from __future__ import annotations

import math
import re

import numpy as np

from whisperdiff.analysis.replay import LINEAR_PARAMS, Replayer, rel, round_to

PRECISIONS = ("float16", "bfloat16", "tf32")


def hypotheses_for(rp: Replayer, recipe, xs, out, expected, context: dict) -> list[tuple]:
    found: list[tuple] = []

    def add(kind, explain, candidate, where=None, **extra):
        if candidate is None or tuple(candidate.shape) != tuple(out.shape):
            return
        if where is not None:  # only part of the output is defined by this hypothesis (a shifted table)
            candidate = rp.torch.where(where, candidate, out)
        found.append((kind, explain, rel(candidate, out), extra))

    by_type = {
        "conv": _conv,
        "activation": _activation,
        "positional": _positional,
        "norm": _norm,
        "linear": _linear,
        "attention_weights": _attention,
        "attention": _attention,
        "residual": _residual,
    }
    for group in (
        lambda: by_type[recipe.type](rp, recipe, xs, out, expected, context, add),
        lambda: _generic(rp, recipe, xs, out, expected, context, add),
        lambda: _precision(rp, recipe, xs, out, expected, add),
    ):
        try:
            group()
        except (RuntimeError, ValueError, IndexError):  # a shape a hypothesis cannot take: it is not evidence
            continue
    return found


# -- every op ------------------------------------------------------------------------------------------
def _generic(rp, recipe, xs, out, e, ctx, add):
    torch = rp.torch
    add("sign_flip", "values negated", -e)
    ee = float((e.double() * e.double()).sum())
    if ee > 0:
        c = float((out.double() * e.double()).sum()) / ee
        if c > 0 and abs(c - 1) > 0.01:
            add("scale_mismatch", f"a global factor {c:.4g} (solved from the data)", e * c, factor=c)
    m = float((out.double() - e.double()).mean())
    add("bias_shift", f"a constant offset {m:+.4g} on every element (not a model bias)", e + m, offset=m)
    # a per-channel offset, constant over time: which bias vector of the model is it?
    t_axis = 2 if recipe.type == "conv" or (recipe.type == "activation" and recipe.op.startswith("conv")) else 1
    if out.ndim == 3 and recipe.type != "attention_weights":
        d = (out.double() - e.double()).mean(t_axis, keepdim=True)
        name, coef, cos = closest_vector(rp, d.flatten())
        if name is not None and name.endswith("bias") and abs(cos) > 0.99:
            v = rp.w[name].double().reshape(d.shape)
            what = (
                "is missing"
                if abs(coef + 1) < 0.05
                else "is added twice"
                if abs(coef - 1) < 0.05
                else f"is added {coef:+.3g} times"
            )
            own = recipe.params.get("name")
            label = (
                name.removeprefix("encoder.")
                if f"{own}.bias" == name
                else f"{name.removeprefix('encoder.')} (another op's bias)"
            )
            add(
                "bias_error",
                f"B - replay is constant over time and equals {coef:+.3g} x {label} (cosine {cos:.4f}): a bias {what}",
                (e.double() + coef * v).float(),
                vector=name,
            )
    if recipe.type in ("norm",):
        x = xs[0].double()
        add(
            "scale_mismatch",
            "statistics match, content does not: the op is replaced by one whole-tensor rescale "
            "(x - mean) / std, the cosmetic fix that makes mean and std look right",
            ((x - x.mean()) / x.std(correction=0)).float(),
        )
    del torch


def closest_vector(rp, d):
    """(name, coefficient, cosine) of the model's 1-D parameter most parallel to `d` (same length)."""
    best = (None, 0.0, 0.0)
    dn = float(d.norm())
    if dn == 0:
        return best
    for name, v in rp.w.items():
        if v.ndim != 1 or v.shape[0] != d.shape[0]:
            continue
        v = v.double()
        vn = float(v.norm())
        if vn == 0:
            continue
        cos = float(d @ v) / (dn * vn)
        if abs(cos) > abs(best[2]):
            best = (name, float(d @ v) / vn**2, cos)
    return best


def _precision(rp, recipe, xs, out, expected, add):
    """The op computed from inputs and weights rounded to a lower precision (and its output rounded)."""
    for dtype in PRECISIONS:
        if dtype != "tf32":
            add(
                "precision",
                f"computed in float32, stored in {dtype} (output rounded to {dtype})",
                round_to(expected, dtype),
                dtype=dtype,
            )
        r = rp.with_weights_rounded(dtype).recipe(recipe.op)
        y = r.fn(*(round_to(x, dtype) for x in xs))
        add("precision", f"computed in {dtype} (inputs and weights rounded to {dtype})", y, dtype=dtype)
        if dtype != "tf32":
            add(
                "precision",
                f"computed in {dtype} (inputs, weights and output rounded to {dtype})",
                round_to(y, dtype),
                dtype=dtype,
            )
        if recipe.type == "linear" and f"{recipe.params['name']}.bias" in rp.w:  # a low-precision matmul, float32 bias
            name = recipe.params["name"]
            wr = round_to(rp.w[f"{name}.weight"], dtype)
            mm = round_to(xs[0], dtype) @ wr.T
            add(
                "precision",
                f"matmul in {dtype} (float32 accumulation), bias added in float32",
                mm + rp.w[f"{name}.bias"],
                dtype=dtype,
            )
            if dtype != "tf32":
                add(
                    "precision",
                    f"matmul in {dtype} with a {dtype} result, bias added in float32",
                    round_to(mm, dtype) + rp.w[f"{name}.bias"],
                    dtype=dtype,
                )


# -- convolutions --------------------------------------------------------------------------------------
def _conv(rp, recipe, xs, out, e, ctx, add):
    x = xs[0]
    name, stride = recipe.params["name"], recipe.params["stride"]
    w = rp.w[f"encoder.{name}.weight"]
    for pad in ((2, 0), (0, 2), (0, 1), (1, 0), (2, 2), (0, 0), (3, 3)):
        y = rp.conv(name, x, stride, pad=pad)
        if y.shape == out.shape:
            side = {(2, 0): "on the left only", (0, 2): "on the right only", (0, 0): "none"}.get(
                pad, f"{pad[0]} left, {pad[1]} right"
            )
            add("conv_padding", f"{name} pads {side} instead of 1 on each side", y, pad=pad)
    add(
        "conv_kernel",
        f"{name} uses the kernel flipped in time (cross-correlation vs convolution)",
        rp.conv(name, x, stride, weight=w.flip(-1)),
    )
    for taps in ((0, 1, 0), (1, 0, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1)):
        mask = rp.torch.tensor(taps, dtype=w.dtype)
        kept = "+".join(("left", "centre", "right")[i] for i in range(3) if taps[i])
        add(
            "conv_kernel",
            f"{name} uses only the {kept} kernel tap{'s' if sum(taps) > 1 else ''} of 3",
            rp.conv(name, x, stride, weight=w * mask),
        )
    for label, w2 in filter_layouts(w).items():
        add("weight_layout", f"{name}'s filter {label}", rp.conv(name, x, stride, weight=w2))
    add("bias_error", f"{name} without its bias", rp.conv(name, x, stride, bias=False))
    add("bias_error", f"{name} adds its bias twice", rp.conv(name, x, stride, bias=2 * rp.w[f"encoder.{name}.bias"]))


def filter_layouts(w) -> dict:
    """Every way a [out, in, k] filter ends up in another layout: its axes permuted (when the shape
    allows), another layout's memory read as [out, in, k], or [out, in, k] memory read as another layout."""
    import itertools

    axes = ("out", "in", "k")
    found = {}
    for p in itertools.permutations(range(3)):
        if p == (0, 1, 2):
            continue
        named = ", ".join(axes[j] for j in p)
        if tuple(w.permute(p).shape) == tuple(w.shape):
            found[f"with its axes permuted to [{named}]"] = w.permute(p)
        found[f"stored as [{named}] but read as [out, in, k]"] = w.permute(p).contiguous().reshape(w.shape)
        inverse = tuple(sorted(range(3), key=lambda j: p[j]))
        found[f"stored as [out, in, k] but read as [{named}]"] = w.reshape([w.shape[j] for j in p]).permute(inverse)
    return found


# -- activations ---------------------------------------------------------------------------------------
def _activation(rp, recipe, xs, out, e, ctx, add):
    F, x = rp.torch.nn.functional, xs[0]
    add(
        "activation_approx",
        "GELU is the tanh approximation, not Whisper's exact erf GELU",
        F.gelu(x, approximate="tanh"),
    )
    add(
        "activation_approx",
        "GELU is the sigmoid approximation x*sigmoid(1.702x) (quick GELU)",
        x * rp.torch.sigmoid(1.702 * x),
    )
    add("wrong_activation", "ReLU instead of GELU", F.relu(x))
    add("wrong_activation", "SiLU (x*sigmoid(x)) instead of GELU", F.silu(x))
    add("wrong_activation", "no activation: the identity instead of GELU", x)
    add("wrong_activation", "tanh instead of GELU", rp.torch.tanh(x))


# -- layer norm ----------------------------------------------------------------------------------------
def _norm(rp, recipe, xs, out, e, ctx, add):
    name = recipe.params["name"]
    short = name.removeprefix("encoder.")
    x = xs[0].double()
    g, b = rp.w[f"{name}.weight"].double(), rp.w[f"{name}.bias"].double()
    mu = x.mean(-1, keepdim=True)
    xc = x - mu
    var = (xc * xc).mean(-1, keepdim=True)
    n = xc / (var + 1e-5).sqrt()
    add(
        "layer_norm_variance",
        f"{short} uses the unbiased (n-1) variance",
        (xc / (x.var(-1, keepdim=True, correction=1) + 1e-5).sqrt() * g + b).float(),
    )
    add("layer_norm_affine", f"{short} without beta (no bias added)", (n * g).float())
    add("layer_norm_affine", f"{short} without gamma (no scale)", (n + b).float())
    add("layer_norm_affine", f"{short} without gamma and beta", n.float())
    rms = x / ((x * x).mean(-1, keepdim=True) + 1e-5).sqrt()
    add("rms_norm", f"{short} is RMSNorm (no mean subtraction)", (rms * g + b).float())
    add("rms_norm", f"{short} is RMSNorm without beta", (rms * g).float())
    for axis, label in ((1, "time"), ((1, 2), "time and channels (the whole tensor)")):
        m_ = x.mean(axis, keepdim=True)
        v_ = ((x - m_) ** 2).mean(axis, keepdim=True)
        add(
            "norm_axis",
            f"{short} normalises over {label} instead of channels",
            ((x - m_) / (v_ + 1e-5).sqrt() * g + b).float(),
        )
    add("missing_op", f"{short} is the identity: the layer norm is missing", xs[0])
    eps = solve_eps(x, out.double(), g, b)
    if eps is not None and not 0.5e-5 < eps < 2e-5:
        add(
            "layer_norm_eps",
            f"{short} uses epsilon {eps:.3g} (solved from the data) instead of 1e-5",
            rp.layer_norm(name, xs[0], eps),
            eps=eps,
        )


def solve_eps(x, y, g, b) -> float | None:
    """The epsilon for which layer_norm(x) * g + b == y: var + eps = ||x - mu||^2 / ||(y - b) / g||^2 per row."""
    keep = g.abs() > 0.05 * g.abs().max()
    if int(keep.sum()) < 2:
        return None
    xc = x - x.mean(-1, keepdim=True)
    var = (xc * xc).mean(-1)
    nb = ((y - b) / g)[..., keep]
    denom = (nb * nb).sum(-1)
    ok = denom > 0
    if not bool(ok.any()):
        return None
    eps_rows = (xc[..., keep] ** 2).sum(-1)[ok] / denom[ok] - var[ok]
    eps = float(eps_rows.median())
    return eps if eps > 0 and math.isfinite(eps) else None


# -- linear ops ----------------------------------------------------------------------------------------
def _op_of_weight(key: str) -> str | None:
    m = re.fullmatch(r"encoder\.blocks\.(\d+)\.(.+)\.weight", key)
    if not m:
        return None
    for op, param in LINEAR_PARAMS.items():
        if param == m.group(2):
            return f"blocks.{m.group(1)}.{op}"
    return None


def _linear(rp, recipe, xs, out, e, ctx, add):
    name = recipe.params["name"]
    short = name.removeprefix("encoder.")
    x, w = xs[0], rp.w[f"{name}.weight"]
    bias = rp.w.get(f"{name}.bias")
    xw = x @ w.T
    if bias is not None:
        add("bias_error", f"{short} without its bias", xw)
        add("bias_error", f"{short} adds its bias twice", xw + 2 * bias)
    bias_or_0 = bias if bias is not None else 0
    wt = w.T.contiguous().reshape(w.shape)  # square: the transpose; else the same memory read in W's shape
    add("weight_layout", f"{short}'s weight used transposed (x @ W instead of x @ W.T)", x @ wt.T + bias_or_0)
    for key, other in rp.w.items():
        if key == f"{name}.weight" or other.shape != w.shape or other.ndim != 2:
            continue
        xo = x @ other.T
        other_short = key.removesuffix(".weight").removeprefix("encoder.")
        uses = _op_of_weight(key)
        add("wrong_weight", f"{short} uses {other_short}'s weight", xo + bias_or_0, uses=uses)
        ob = rp.w.get(key.removesuffix("weight") + "bias")
        if ob is not None:
            add("wrong_weight", f"{short} uses {other_short}'s weight and bias", xo + ob, uses=uses)
        if bias is not None:
            add("wrong_weight", f"{short} uses {other_short}'s weight, no bias", xo, uses=uses)
    if x.shape == out.shape:
        add("missing_op", f"{short} is the identity: the projection is missing", x)


# -- attention -----------------------------------------------------------------------------------------
def _attention(rp, recipe, xs, out, e, ctx, add):
    torch = rp.torch
    weights_op = recipe.type == "attention_weights"
    q, k = xs[0], xs[1]
    v = None if weights_op else xs[2]
    t = q.shape[1]

    def run(q=q, k=k, rows=None, merge=None, **kw):
        if rows is not None:
            q = q[:, rows]
        w = rp.attention_weights(q, k, **kw)
        split = kw.get("split", "hd")
        return w if weights_op else rp.merge(w @ rp.heads(v, split), merge or split)

    scale = solve_scale(rp, q, k, out) if weights_op else search_scale(rp, run, out)
    correct = rp.d_head**-0.5
    if scale is not None and abs(scale / correct - 1) > 0.02:
        add(
            "attention_scale",
            f"attention scores are scaled by {scale:.4g} (solved from the data; "
            f"= d_head^{math.log(scale) / math.log(rp.d_head):.3g}) instead of 1/sqrt(d_head) = {correct:.4g}",
            run(scale=scale),
            scale=scale,
        )
    add("softmax_axis", "attention softmax over the query axis instead of the key axis", run(axis=-2))
    causal = torch.full((t, t), -math.inf).triu(1)
    add("attention_mask", "a causal mask in the (unmasked) encoder attention", run(mask=causal))
    valid = ctx.get("valid_steps", {}).get(t)
    if valid and valid < t:
        pad = torch.zeros(t)
        pad[valid:] = -math.inf
        add(
            "attention_mask",
            f"a padding mask: keys after the audio (step >= {valid} of {t}) are masked out",
            run(mask=pad),
        )
    add("swapped_projections", "q and k swapped in the attention scores (softmax(k q^T))", run(swap_qk=True))
    if weights_op:
        add(
            "swapped_projections",
            "attention probabilities transposed (query and key axes swapped)",
            e.transpose(-1, -2),
        )
        add(
            "head_split",
            "heads split in the wrong order ([T, d_head, n_head] instead of [T, n_head, d_head])",
            run(split="dh"),
        )
    else:
        add(
            "swapped_projections",
            "attention probabilities transposed (query and key axes swapped)",
            rp.merge(rp.attention_weights(q, k).transpose(-1, -2) @ rp.heads(v)),
        )
        for split, merge in (("dh", "dh"), ("dh", "hd"), ("hd", "dh")):
            add(
                "head_split",
                f"heads split as [T, {'d_head, n_head' if split == 'dh' else 'n_head, d_head'}] and merged as "
                f"[T, {'d_head, n_head' if merge == 'dh' else 'n_head, d_head'}] (Whisper: n_head, d_head both ways)",
                run(split=split, merge=merge),
            )
        add("missing_op", "attention returns v unchanged", v)


def solve_scale(rp, q, k, p) -> float | None:
    """The score scale s of p = softmax(s q k^T), by least squares on log p, centred per row."""
    s = rp.heads(q) @ rp.heads(k).transpose(-1, -2)
    ok = p > 1e-30
    if not bool(ok.any()):
        return None
    okf = ok.double()
    y = p.double().clamp_min(1e-30).log()
    z = s.double()
    cnt = okf.sum(-1, keepdim=True).clamp_min(1)
    yc = (y - (y * okf).sum(-1, keepdim=True) / cnt) * okf
    zc = (z - (z * okf).sum(-1, keepdim=True) / cnt) * okf
    den = float((zc * zc).sum())
    return float((yc * zc).sum()) / den if den > 0 else None


def search_scale(rp, run, out) -> float | None:
    """The score scale that best reproduces the attention output, searched on every 4th query row."""
    rows = slice(None, None, 4)
    target = out[:, rows]
    d = rp.d_head
    correct = d**-0.5

    def err(log_s):
        return rel(run(rows=rows, scale=math.exp(log_s)), target)

    grid = sorted({math.log(correct * f) for f in (1.0, d**-0.5, d**0.5, d**-0.25, d**0.25, 2.0, 0.5)})
    errs = [err(g) for g in grid]
    i = int(np.argmin(errs))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    if lo == hi:
        return math.exp(grid[i])
    phi = (math.sqrt(5) - 1) / 2  # golden-section search between the best grid point's neighbours
    a, b = lo, hi
    c, dd = b - phi * (b - a), a + phi * (b - a)
    fc, fd = err(c), err(dd)
    for _ in range(10):
        if fc < fd:
            b, dd, fd = dd, c, fc
            c = b - phi * (b - a)
            fc = err(c)
        else:
            a, c, fc = c, dd, fd
            dd = a + phi * (b - a)
            fd = err(dd)
    best = min((errs[i], grid[i]), (fc, c), (fd, dd))
    return math.exp(best[1])


# -- positional embedding --------------------------------------------------------------------------------
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


def _positional(rp, recipe, xs, out, e, ctx, add):
    torch = rp.torch
    xt = xs[0].permute(0, 2, 1)
    t, c = xt.shape[1], xt.shape[2]
    pe = rp.w["encoder.positional_embedding"][:t]
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
    full = rp.w["encoder.positional_embedding"]
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


# -- residual adds ---------------------------------------------------------------------------------------
def _residual(rp, recipe, xs, out, e, ctx, add):
    x, y = xs
    add("missing_residual", "the residual connection is dropped (only the branch is kept)", y)
    add("missing_op", "the branch is not added (only the residual stream is kept)", x)
    add("missing_residual", "the residual is added twice", 2 * x + y)


# -- the log-mel ---------------------------------------------------------------------------------------
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
        out.append(
            (
                f"an affine transform of Whisper's log-mel: B = {slope:.4g} * A {icpt:+.4g} (another normalisation)",
                score(slope * a + icpt),
            )
        )
    return out


def explain(replayer: Replayer, op: str, inputs: list[np.ndarray], context: dict | None = None) -> dict:
    """The replay plus every hypothesis of the op's type, each scored against the candidate:
    {"introduced", "expected" (the replay, numpy), "hypotheses": [(kind, explain, rel err, extra)]}."""
    recipe = replayer.recipe(op)
    *xs, out = replayer.tensors(inputs)
    with replayer.torch.no_grad():
        expected = recipe.fn(*xs)
        found = list(hypotheses_for(replayer, recipe, xs, out, expected, context or {}))
    return {"introduced": rel(expected, out), "expected": expected.numpy(), "hypotheses": found}
