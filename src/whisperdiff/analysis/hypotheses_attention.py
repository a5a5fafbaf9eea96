"""Hypotheses for attention (its weights and its output): another score scale (solved from the data), the
softmax over the wrong axis, a causal or padding mask, q and k swapped, heads split or merged in the wrong order,
one head's output lost.

Each hypothesis function takes (replayer, recipe, inputs, candidate output, replayed output, context, add) and
calls add(kind, explanation, what the op would output under that hypothesis, **extra) for each.
"""

from __future__ import annotations

import math

import numpy as np

from whisperdiff.analysis.replay import TENSOR_CORE, b_tensor, rel, round_to, rounded_to
from whisperdiff.analysis.replay_decoder import causal_mask


def attention_hypotheses(rp, recipe, xs, out, e, ctx, add):
    torch = rp.torch
    weights_op = recipe.type == "attention_weights"
    causal = recipe.params.get("mask") == "causal"  # the decoder's self-attention
    where = (
        "cross-attention" if recipe.params.get("cross") else "decoder self-attention" if causal else "encoder attention"
    )
    q, k = xs[0], xs[1]
    v = None if weights_op else xs[2]
    t_q, t_k = q.shape[1], k.shape[1]
    own_mask = causal_mask(torch, t_q, t_k) if causal else None

    def run(q=q, k=k, v=v, rows=None, merge=None, mask=own_mask, pv=None, **kw):
        if rows is not None:
            q = q[:, rows]
            mask = mask[rows] if mask is not None else None
        if weights_op:
            return rp.attention_weights(q, k, mask=mask, **kw)
        return rp.attention(q, k, v, merge=merge, pv=pv, mask=mask, **kw)  # one head's probabilities at a time

    if only := ctx.get("precision_only"):
        _precision_hypotheses(run, k, v, weights_op, causal or recipe.params.get("cross"), add, [only])
        return
    scale = solve_scale(rp, q, k, out) if weights_op else search_scale(rp, run, out)
    correct = rp.d_head**-0.5
    if scale is not None and abs(scale / correct - 1) > 0.02:
        add(
            "attention_scale",
            f"attention scores are scaled by {scale:.4g} (solved from the data; {scale_name(rp, scale)}) "
            f"instead of 1/sqrt(d_head) = {correct:.4g}",
            run(scale=scale),
            scale=scale,
        )
    add("softmax_axis", "attention softmax over the query axis instead of the key axis", run(axis=-2))
    if causal:
        _causal_hypotheses(rp, recipe, run, (q, k, v), e, out, add, ctx)
    else:
        add("attention_mask", f"a causal mask in the (unmasked) {where}", run(mask=causal_mask(torch, t_q, t_k)))
    valid = ctx.get("valid_steps", {}).get(t_k)
    if valid and valid < t_k and not causal:
        pad = torch.zeros(t_k)
        pad[valid:] = -math.inf
        add(
            "attention_mask",
            f"a padding mask in the {where}: keys after the audio (frame >= {valid} of {t_k}) are masked out",
            run(mask=pad),
        )
    if t_q == t_k:  # q and k swapped needs as many queries as keys (not the cross-attention)
        add("swapped_projections", "q and k swapped in the attention scores (softmax(k q^T))", run(swap_qk=True))
    _other_block_kv(rp, recipe, run, k, v, ctx, add)
    _precision_hypotheses(run, k, v, weights_op, causal or recipe.params.get("cross"), add)
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
        for h in range(e.shape[1]):  # one head's probabilities zeroed
            dropped = e.clone()
            dropped[:, h] = 0
            add(
                "head_missing",
                f"head {h} of {e.shape[1]} contributes nothing (its probabilities zeroed)",
                dropped,
                head=h,
            )
        return
    if t_q == t_k:
        vh = rp.heads(v)
        transposed = [p.transpose(-1, -2) @ vh[:, h] for h, p in enumerate(rp.head_probs(q, k, mask=own_mask))]
        add(
            "swapped_projections",
            "attention probabilities transposed (query and key axes swapped)",
            rp.merge(torch.stack(transposed, 1)),
        )
    for split, merge in (("dh", "dh"), ("dh", "hd"), ("hd", "dh")):
        add(
            "head_split",
            f"heads split as [T, {'d_head, n_head' if split == 'dh' else 'n_head, d_head'}] and merged as "
            f"[T, {'d_head, n_head' if merge == 'dh' else 'n_head, d_head'}] (Whisper: n_head, d_head both ways)",
            run(split=split, merge=merge),
        )
    if t_q == t_k:
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
    _head_order(rp, e, out, n_head, add)


def scale_name(rp, scale: float) -> str:
    """The scale in the user's terms: which usual formula it equals, else its power of d_head."""
    d_head, d_model = rp.d_head, rp.dims.n_audio_state
    named = {
        f"1/sqrt(d_model) = 1/sqrt({d_model}) = {d_model**-0.5:.3g}": d_model**-0.5,
        f"d_head^-0.25 = {d_head**-0.25:.3g}, applied to q only (Whisper splits d_head^-0.5 over q and k)": d_head
        ** -0.25,
        f"1/d_head = {1 / d_head:.3g}": 1 / d_head,
        "1: the scores are not scaled": 1.0,
        f"1/sqrt(d_model / 2) = {(d_model / 2) ** -0.5:.3g}": (d_model / 2) ** -0.5,
    }
    for label, value in named.items():
        if abs(scale / value - 1) < 0.02:
            return label
    return f"= d_head^{math.log(scale) / math.log(d_head):.3g}"


def _causal_hypotheses(rp, recipe, run, qkv, e, out, add, ctx=None):
    """The decoder's causal mask done wrong, and its KV cache read or written wrong (by replay, row by row)."""
    torch = rp.torch
    t_q, t_k = qkv[0].shape[1], qkv[1].shape[1]
    add("attention_mask", "no causal mask: every position also sees the later ones", run(mask=None))
    for shift in (1, 2, 3):
        add(
            "attention_mask",
            f"the causal mask is off by {shift}: position p also sees keys up to p + {shift}",
            run(mask=causal_mask(torch, t_q, t_k, shift)),
        )
    hides = run(mask=causal_mask(torch, t_q, t_k, -1))
    add(
        "attention_mask",
        "the causal mask also hides the diagonal: position p sees only keys before p, not its own position",
        hides,
        where=~torch.isnan(hides),
    )
    prompt = recipe.params.get("prompt_length")
    if prompt and 1 < prompt <= min(t_q, t_k):  # one-token steps need no mask; the prompt step, fed at once, does
        unmasked = causal_mask(torch, t_q, t_k)
        unmasked[:prompt, :prompt] = 0.0
        add(
            "attention_mask",
            f"no causal mask in the prompt step: its {prompt} positions, fed at once, also see the later ones "
            "(the one-token steps after it need none)",
            run(mask=unmasked),
        )
    if not prompt or t_q != t_k or t_q <= prompt:
        return
    axis = -2 if out.ndim == 4 else 1  # the query (token position) axis
    bad = [r for r in range(t_q) if rel(e.select(axis, r), out.select(axis, r)) > 1e-4]
    if not bad or bad[0] < prompt:  # the prompt step is computed without the cache: a cache bug leaves it right
        return
    for label, slots in _cache_layouts(prompt, t_q, bad[0]).items():
        add("kv_cache", label, _rows_with_slots(rp, run, qkv, slots, t_q), slots=label)
        for only in ("keys", "values"):  # a cache written wrong for one of the two
            add(
                "kv_cache",
                f"{label}, for the {only} only",
                _rows_with_slots(rp, run, qkv, slots, t_q, only),
                slots=label,
            )
    v = qkv[2] if qkv[2] is not None else b_tensor(rp, ctx, recipe.op.rsplit(".", 1)[0] + ".v", qkv[1])  # B's V
    if v is not None:
        for every_step, label in (
            (
                False,
                "KV cache: keys and values swapped: cached steps read the stored values as keys and the keys as values",
            ),
            (
                True,
                "KV cache: keys and values swapped at every step (the cache a step returns unpacked in the other "
                "order): an entry is read swapped after an odd number of steps",
            ),
        ):
            add("kv_cache", label, _rows_swapped(rp, run, (qkv[0], qkv[1], v), prompt, t_q, every_step), slots=label)


def _rows_swapped(rp, run, qkv, prompt: int, n: int, every_step: bool):
    """Each row replayed with the cached entries' keys and values swapped: entries a step computes itself are
    read right; an entry from an earlier step is swapped (once, or once per step since it was written)."""
    torch = rp.torch
    q, k, v = qkv
    rows = []
    for r in range(n):
        step = 0 if r < prompt else r - prompt + 1
        swapped = []
        for j in range(r + 1):
            written = 0 if j < prompt else j - prompt + 1
            swapped.append(written != step and (not every_step or (step - written) % 2 == 1))
        flip = torch.tensor(swapped)[None, :, None]
        keys = torch.where(flip, v[:, : r + 1], k[:, : r + 1])
        values = torch.where(flip, k[:, : r + 1], v[:, : r + 1])
        rows.append(run(q=q[:, r : r + 1], k=keys, v=values, mask=torch.zeros(1, r + 1)))
    return _scatter_rows(torch, rows, _causal_slots(n), n)


def _causal_slots(n: int) -> list[list[int]]:
    """The right cache: row r reads slots 0..r, slot j holding position j (-2: a slot the row does not read)."""
    return [list(range(r + 1)) + [-2] * (n - r - 1) for r in range(n)]


def _cache_layouts(prompt: int, n: int, first_bad: int) -> dict[str, list[list[int]]]:
    """What each incremental step (rows from `prompt` on) finds in each cache slot, under the usual KV-cache
    bugs: slots[r][j] is the position whose key/value row r reads at slot j (-1: nothing stored, zeros;
    -2: the slot is not read). Rows before `prompt` are the prompt step, computed without the cache."""
    ok = _causal_slots(n)
    found: dict[str, list[list[int]]] = {}
    # an entry j missing first shows at row max(prompt, j + 1): the candidates for the first bad row
    entries = [first_bad - 1] if first_bad > prompt else list(range(max(0, prompt - 8), prompt))
    for j in entries:
        missing = [row[:] for row in ok]
        dropped = [row[:] for row in ok]
        for r in range(max(prompt, j + 1), n):
            missing[r][j] = -1
            dropped[r] = [p for p in range(r + 1) if p != j] + [-2] * (n - r)  # the later entries move up a slot
        what = f"the prompt's last entry (position {j})" if j == prompt - 1 else f"the entry of position {j}"
        found[f"KV cache: {what} is missing: later steps read zeros in its slot (never stored)"] = missing
        found[
            f"KV cache: {what} is missing from the cache (never stored): later steps read the other entries, "
            "each one slot earlier"
        ] = dropped
    over, ahead, behind, stale = ([row[:] for row in ok] for _ in range(4))
    for r in range(prompt, n):
        for j in range(prompt, r + 1):
            stale[r][j] = j - 1
        for j in range(max(prompt - 1, 0), r):
            over[r][j] = j + 1 if j + 1 >= prompt else j
        ahead[r][prompt] = -1
        for j in range(prompt + 1, r + 1):
            ahead[r][j] = j - 1
        for j in range(max(prompt - 1, 0), r):
            behind[r][j] = j + 1
        behind[r][r] = -1
    found["KV cache: writing position p also overwrites slot p - 1 (each step's entry overwrites the previous one)"] = (
        over
    )
    found["KV cache: each step writes its entry at slot p + 1 (one ahead) and reads slots 0..p"] = ahead
    found["KV cache: each step writes its entry at slot p - 1 (one behind) and reads slots 0..p"] = behind
    found["KV cache: slot p holds the entry of position p - 1 (each step stores the previous step's, not its own)"] = (
        stale
    )
    return found


def _rows_with_slots(rp, run, qkv, slots, n, only: str | None = None):
    """Each row replayed on the keys/values its cache slots hold (zeros where nothing was stored). only:
    "keys" or "values", the other read right (slot j holds position j)."""
    torch = rp.torch
    rows = []
    for r in range(n):
        src = slots[r]
        keep = [j for j in range(n) if src[j] != -2]
        mask = torch.full((1, len(keep)), 0.0)
        idx = torch.tensor([max(src[j], 0) for j in keep])
        zero = torch.tensor([src[j] == -1 for j in keep])

        def pick(t, idx=idx, zero=zero):
            return None if t is None else torch.where(zero[None, :, None], 0.0, t[:, idx])

        def right(t, keep=keep):
            return None if t is None else t[:, torch.tensor(keep)]

        q, k, v = qkv
        k = right(k) if only == "values" else pick(k)
        v = right(v) if only == "keys" else pick(v)
        rows.append(run(q=q[:, r : r + 1], k=k, v=v, mask=mask))
    return _scatter_rows(torch, rows, slots, n)


def _scatter_rows(torch, rows, slots, n):
    """Rows of probabilities over kept slots back into [B, H, 1, n] (slot order), or [B, 1, C] outputs."""
    out = []
    for r, y in enumerate(rows):
        if y.ndim == 4:  # probabilities: put each kept slot's weight at its slot index
            full = torch.zeros(*y.shape[:3], n)
            keep = [j for j in range(n) if slots[r][j] != -2]
            full[..., keep] = y
            y = full
        out.append(y)
    return torch.cat(out, -2 if out[0].ndim == 4 else 1)


def _other_block_kv(rp, recipe, run, k, v, ctx, add):
    """K and V read from another block's (a cache shared across layers, an index off by one): B's own values."""
    import re

    m = re.fullmatch(r"((?:decoder\.)?blocks)\.(\d+)\.((?:cross_)?attn)\.(weights|wv)", recipe.op)
    if not m or "b_value" not in ctx:
        return
    blocks, i, attn = m.group(1), int(m.group(2)), m.group(3)
    for j in range(rp.dims.n_text_layer if blocks.startswith("decoder") else rp.dims.n_audio_layer):
        if j == i:
            continue
        kj, vj = (b_tensor(rp, ctx, f"{blocks}.{j}.{attn}.{n}", k) for n in ("k", "v"))
        if kj is None or vj is None:
            continue
        add(
            "wrong_weight",
            f"{recipe.op} reads {blocks}.{j}.{attn}'s K and V, not its own (a KV cache shared across layers, or "
            "indexed by the wrong layer)",
            run(k=kj, v=None if v is None else vj),
            uses=f"{blocks}.{j}.{attn}",
        )


def _precision_hypotheses(run, k, v, weights_op, cached, add, dtypes=("float16", "bfloat16", *TENSOR_CORE)):
    """One sub-op of the attention in lower precision: the softmax, p @ v, or K and V held in a cache."""
    for dtype in [d for d in ("float16", "bfloat16") if d in dtypes]:
        add("precision", f"the attention scores (q k^T, before the softmax) in {dtype}", run(sub={"scores": dtype}))
        add(
            "precision",
            f"q k^T as a {dtype} matmul (q and k rounded to {dtype}, the scores too), the softmax in float32",
            run(sub={"qk": dtype}),
        )
        if v is not None:
            where = "a {dt} KV cache" if cached else "{dt}"
            add("precision", f"V alone held in {where.format(dt=dtype)} (K in float32)", run(v=round_to(v, dtype)))
            add("precision", f"K alone held in {where.format(dt=dtype)} (V in float32)", run(k=round_to(k, dtype)))
        add(
            "precision",
            f"softmax computed in {dtype} (its input and output rounded)",
            run(sub={"scores": dtype, "probs": dtype}),
        )
        add("precision", f"softmax output (the probabilities) stored in {dtype}", run(sub={"probs": dtype}))
        k_v = "K and V held in a {dt} KV cache" if cached else "K and V rounded to {dt}"
        add("precision", k_v.format(dt=dtype), run(k=round_to(k, dtype), v=None if v is None else round_to(v, dtype)))
        if not weights_op:
            add("precision", f"probabilities @ v computed in {dtype}", run(pv=dtype))
    # A GPU's float32 matmuls run on tensor cores as tf32 by default: operands rounded or truncated to tf32,
    # products in float32.
    for dtype in [d for d in TENSOR_CORE if d in dtypes]:
        gpu = f"operands {rounded_to(dtype)}, products in float32, as a GPU's tensor cores compute float32"
        add("precision", f"q k^T as a tf32 matmul ({gpu})", run(sub={"qk": dtype}))
        if not weights_op:
            add("precision", f"probabilities @ v as a tf32 matmul ({gpu})", run(pv=dtype))
            add(
                "precision",
                f"both attention matmuls, q k^T and probabilities @ v, in tf32 ({gpu})",
                run(sub={"qk": dtype}, pv=dtype),
            )


def _head_order(rp, e, out, n_head, add):
    """Heads permuted or one head's output copied into another's slot: each output slot matched to the head
    of the replay it equals."""
    d = rp.d_head
    slot = lambda t, h: t[..., h * d : (h + 1) * d]  # noqa: E731
    source = []
    for h in range(n_head):
        errs = [rel(slot(e, g), slot(out, h)) for g in range(n_head)]
        source.append(int(np.argmin(errs)))
    if source == list(range(n_head)):
        return
    cand = torch_cat(rp, [slot(e, g) for g in source])
    moved = [h for h in range(n_head) if source[h] != h]
    if len(set(source)) < n_head:
        text = "; ".join(f"head {source[h]}'s output copied into head {h}'s slot" for h in moved)
        add("head_order", f"heads duplicated when merged: {text} (that head's own output is lost)", cand)
    else:
        pairs = ", ".join(f"slot {h} holds head {source[h]}" for h in moved)
        label = f"heads {moved[0]} and {moved[1]} exchanged" if len(moved) == 2 else "heads permuted"
        add("head_order", f"{label} when the heads are merged ({pairs})", cand)


def torch_cat(rp, parts):
    return rp.torch.cat(parts, -1)


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
