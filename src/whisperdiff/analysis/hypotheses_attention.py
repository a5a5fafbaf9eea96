"""Hypotheses for attention (its weights and its output): another score scale (solved from the data), the
softmax over the wrong axis, a causal or padding mask, q and k swapped, heads split or merged in the wrong order,
one head's output lost.

Each hypothesis function takes (replayer, recipe, inputs, candidate output, replayed output, context, add) and
calls add(kind, explanation, what the op would output under that hypothesis, **extra) for each.
"""

from __future__ import annotations

import math

import numpy as np

from whisperdiff.analysis.replay import rel


def attention_hypotheses(rp, recipe, xs, out, e, ctx, add):
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
        # one head's output lost (zeroed, or left out of the merge): the others are right
        n_head = e.shape[-1] // rp.d_head
        for h in range(n_head):
            dropped = e.clone()
            dropped[..., h * rp.d_head : (h + 1) * rp.d_head] = 0
            add(
                "head_missing",
                f"head {h} of {n_head} contributes nothing (its output zeroed or dropped)",
                dropped,
                head=h,
            )


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
