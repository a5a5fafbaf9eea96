"""Hypotheses for the ops a weight defines, linear projections and convolutions: the weight transposed, in
another layout or another layer's; the bias missing or added twice; a conv's padding or kernel taps.

Each hypothesis function takes (replayer, recipe, inputs, candidate output, replayed output, context, add) and
calls add(kind, explanation, what the op would output under that hypothesis, **extra) for each.
"""

from __future__ import annotations

import itertools
import re

from whisperdiff.analysis.replay import LINEAR_PARAMS, rel, shape_of


def conv_hypotheses(rp, recipe, xs, out, e, ctx, add):
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
    F = rp.torch.nn.functional
    bias = rp.w[f"encoder.{name}.bias"]
    y = F.conv1d(F.pad(x, (1, 1), mode="replicate"), w, bias, stride=stride)
    add("conv_padding", f"{name} pads by repeating the edge frames (replicate) instead of zeros", y)
    y = F.conv1d(F.pad(x, (1, 1), mode="reflect"), w, bias, stride=stride)
    add("conv_padding", f"{name} pads by reflection instead of zeros", y)
    valid = F.conv1d(x, w, bias, stride=stride)  # no padding, then the output padded back to length with zeros
    for left in (0, 1, 2):
        y = (
            F.pad(valid, (left, out.shape[-1] - valid.shape[-1] - left))
            if out.shape[-1] >= valid.shape[-1] + left
            else None
        )
        if y is not None and y.shape == out.shape:
            add(
                "conv_padding",
                f"{name} runs unpadded ('valid') and its output is zero-padded back ({left} frame(s) on the left)",
                y,
            )
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
    for j, frame in ((0, "t-1"), (1, "t"), (2, "t+1")):  # every tap reads the same input frame
        collapsed = rp.torch.zeros_like(w)
        collapsed[..., j] = w.sum(-1)
        add(
            "conv_kernel",
            f"{name}'s 3 kernel taps all read frame {frame} (the taps collapsed onto one frame)",
            rp.conv(name, x, stride, weight=collapsed),
        )
    if stride > 1:  # the stride as decimation of a stride-1 output, keeping the other phase
        full = rp.conv(name, x, 1)
        for phase in range(1, stride):
            y = full[..., phase::stride]
            if y.shape == out.shape:
                add(
                    "conv_stride",
                    f"{name} computed at stride 1 then decimated from frame {phase} (every {stride}nd frame "
                    f"from {phase}, not 0)",
                    y,
                    phase=phase,
                )
    if stride > 1:  # run at stride 1 and cut to the right length instead of striding
        full = rp.conv(name, x, 1)
        n = out.shape[-1]
        if full.shape[-1] > n:
            add(
                "conv_stride",
                f"{name} run with stride 1, not {stride}, and truncated to its first {n} frames",
                full[..., :n],
            )
            add(
                "conv_stride",
                f"{name} run with stride 1, not {stride}, and truncated to its last {n} frames",
                full[..., -n:],
            )
    for dilation in (2, 3):  # the taps spread over 2 or 3 frames; padding chosen to keep the length
        for pad in (dilation, 1):
            y = F.conv1d(F.pad(x, (pad, pad)), w, rp.w[f"encoder.{name}.bias"], stride=stride, dilation=dilation)
            if y.shape == out.shape:
                add(
                    "conv_kernel",
                    f"{name} with dilation {dilation} (padding {pad}): its taps are {dilation} frames apart",
                    y,
                )
    for label, w2 in filter_layouts(w).items():
        add("weight_layout", f"{name}'s filter {label}", rp.conv(name, x, stride, weight=w2))
    add("bias_error", f"{name} without its bias", rp.conv(name, x, stride, bias=False))
    add("bias_error", f"{name} adds its bias twice", rp.conv(name, x, stride, bias=2 * rp.w[f"encoder.{name}.bias"]))


def filter_layouts(w) -> dict:
    """Every way a [out, in, k] filter ends up in another layout: its axes permuted (when the shape
    allows), another layout's memory read as [out, in, k], or [out, in, k] memory read as another layout."""
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


def _op_of_weight(key: str) -> str | None:
    """The canonical op a block weight belongs to ("encoder.blocks.1.mlp.0.weight" -> "blocks.1.mlp.fc1")."""
    from whisperdiff.analysis.replay_decoder import DECODER_LINEAR_PARAMS

    m = re.fullmatch(r"(encoder|decoder)\.blocks\.(\d+)\.(.+)\.(weight|bias)", key)
    if not m:
        return None
    params = LINEAR_PARAMS if m.group(1) == "encoder" else DECODER_LINEAR_PARAMS
    prefix = "" if m.group(1) == "encoder" else "decoder."
    for op, param in params.items():
        if param == m.group(3):
            return f"{prefix}blocks.{m.group(2)}.{op}"
    return None


def short_name(key: str) -> str:
    """A weight's name as the user reads it: the op it belongs to when it has one, else its path."""
    return _op_of_weight(key) or key.removesuffix(".weight").removesuffix(".bias").removeprefix("encoder.")


def linear_hypotheses(rp, recipe, xs, out, e, ctx, add):
    name = recipe.params["name"]
    short = recipe.op
    part = name.split(".", 1)[0] + "."  # another layer's weight: from the same encoder or decoder
    x, w = xs[0], rp.w[f"{name}.weight"]
    bias = rp.w.get(f"{name}.bias")
    xw = x @ w.T
    if bias is not None:
        add("bias_error", f"{short} without its bias", xw)
        add("bias_error", f"{short} adds its bias twice", xw + 2 * bias)
    bias_or_0 = bias if bias is not None else 0
    n_out, n_in = w.shape
    if n_out == n_in:
        add("weight_layout", f"{short}'s weight used transposed (x @ W instead of x @ W.T)", x @ w + bias_or_0)
    else:  # a non-square weight cannot be used transposed: it was reshaped, or its memory read in another shape
        add(
            "weight_layout",
            f"{short}'s weight [{n_out}, {n_in}] reshaped to [{n_in}, {n_out}] instead of transposed "
            f"(x @ W.reshape({n_in}, {n_out}))",
            x @ w.reshape(n_in, n_out) + bias_or_0,
        )
        add(
            "weight_layout",
            f"{short}'s weight read from W.T's memory as [{n_out}, {n_in}] (a transposed copy reshaped back, "
            "not transposed)",
            x @ w.T.contiguous().reshape(n_out, n_in).T + bias_or_0,
        )
    _other_weight_hypotheses(rp, name, short, part, x, w, bias, out, add)
    for key in rp.w:  # its own bias replaced by (or, without one, given) another op's bias
        if key == f"{name}.bias" or not key.endswith(".bias") or not key.startswith(part):
            continue
        if shape_of(rp.w, key) != (n_out,):  # asked before it is read: a bias of another size is never made
            continue
        ob = rp.w[key]
        add(
            "bias_error",
            f"{short} uses {short_name(key)}'s bias instead of its own"
            if bias is not None
            else f"{short} received {short_name(key)}'s bias (it has none of its own)",
            xw + ob,
            vector=key,
        )
    if x.shape == out.shape:
        add("missing_op", f"{short} is the identity: the projection is missing", x)
    _fused_rows(rp, name, short, x, out, add)
    if recipe.params.get("tied"):
        _tied_output_hypotheses(rp, recipe, xs, out, e, add)


# Time steps each other weight is first tried on, where the op has many more (1500 in every encoder).
SCREEN_STEPS = 64
# A weight is recomputed on every step where its score on the sample is within this of the best one's:
# twice the margin diagnose._reproducing looks at for a rival (2x the best), so none is lost.
SCREEN_MARGIN = 4.0


def _other_weight_hypotheses(rp, name, short, part, x, w, bias, out, add):
    """Another layer's weight of w's shape (from `part`, the same encoder or decoder): alone (with this op's
    bias), with its own bias, or with none. A large model holds a hundred such weights (large-v3: 127 of an
    attention projection's), each a full matmul, so where the op has many steps each is first scored on
    SCREEN_STEPS of them, evenly spread; only those within SCREEN_MARGIN of the best are recomputed on every
    step, the rest keep the sampled score."""
    steps = x.shape[-2] if x.ndim >= 2 else 0
    sampled = steps > 4 * SCREEN_STEPS
    if sampled:
        rows = rp.torch.linspace(0, steps - 1, SCREEN_STEPS).round().long().unique()
        x_s, out_s = x.index_select(-2, rows), out.index_select(-2, rows)
    tried = []  # (kind's text, weight key, bias added, score on the sample)
    for key in rp.w if w.ndim == 2 else ():
        if key == f"{name}.weight" or shape_of(rp.w, key) != tuple(w.shape) or not key.startswith(part):
            continue
        other = rp.w[key]
        other_short = short_name(key)
        ob = rp.w.get(key.removesuffix("weight") + "bias")
        variants = [(f"{short} uses {other_short}'s weight", bias if bias is not None else 0)]
        if ob is not None:
            variants.append((f"{short} uses {other_short}'s weight and bias", ob))
        if bias is not None:
            variants.append((f"{short} uses {other_short}'s weight, no bias", 0))
        xo = (x_s if sampled else x) @ other.T
        for text, b in variants:
            if sampled:
                tried.append((text, key, b, rel(xo + b, out_s)))
            else:
                add("wrong_weight", text, xo + b, uses=_op_of_weight(key))
    best = min((t[3] for t in tried), default=0.0)
    full = {}  # key -> x @ its weight.T on every step, for the weights that fit about as well as the best
    for text, key, b, score in tried:
        if score <= SCREEN_MARGIN * best:
            if key not in full:
                full[key] = x @ rp.w[key].T
            add("wrong_weight", text, full[key] + b, uses=_op_of_weight(key))
        else:
            add("wrong_weight", text, None, scored=score, uses=_op_of_weight(key), sampled_steps=SCREEN_STEPS)


PROJECTIONS = ("query", "key", "value")


def _fused_rows(rp, name, short, x, out, add):
    """q, k or v whose output channels are rows of the block's three projections in another order: a fused
    [q; k; v] weight (stored [3, H, D]) split or read in another layout. Each of B's channels is matched to
    the channel of x @ [Wq; Wk; Wv].T (+ biases) it equals; per-head interleaving ([H, 3, D]) is named."""
    stem, _, proj = name.rpartition(".")
    if proj not in PROJECTIONS or any(f"{stem}.{p}.weight" not in rp.w for p in PROJECTIONS):
        return
    torch = rp.torch
    ws = [rp.w[f"{stem}.{p}.weight"] for p in PROJECTIONS]
    if len({tuple(w.shape) for w in ws}) != 1 or out.shape[-1] != ws[0].shape[0]:
        return
    c = ws[0].shape[0]
    bs = [rp.w.get(f"{stem}.{p}.bias", torch.zeros(c)) for p in PROJECTIONS]
    y = torch.cat([x @ w.T + b for w, b in zip(ws, bs, strict=True)], -1)  # every row of the three: [..., 3C]
    on = out.reshape(-1, c).double()
    on /= on.norm(dim=0) + 1e-30
    best, rows = None, None
    for i in range(3):  # which row each of B's channels is, one projection's C columns of [C, 3C] at a time
        yn = y[..., i * c : (i + 1) * c].reshape(-1, c).double()
        yn /= yn.norm(dim=0) + 1e-30
        top, at = (on.T @ yn).max(dim=1)
        if best is None:
            best, rows = top, at
        else:  # ties keep the earlier column, as one max over [C, 3C] does
            better = top > best
            best, rows = torch.where(better, top, best), torch.where(better, at + i * c, rows)
    own = PROJECTIONS.index(proj)
    if float(best.min()) < 0.9999 or bool((rows == own * c + torch.arange(c)).all()):
        return
    n_head = rp.dims.n_text_head if stem.startswith("decoder.") else rp.dims.n_audio_head
    d = c // max(n_head, 1)
    j = torch.arange(c)
    interleaved = ((j // d) * 3 + own) * d + j % d  # B's channel (h, d) read as row (h, own, d) of [H, 3, D]
    counts = ", ".join(f"{int(((rows // c) == i).sum())} from {p[0]}" for i, p in enumerate(PROJECTIONS))
    if bool((rows == interleaved).all()):
        text = (
            f"{short} reads the fused q/k/v weight per head interleaved, as [H, 3, D] rows (head h's q, k, v "
            f"together), while it is stored [3, H, D] (all q, then k, then v): its channels mix q, k and v rows "
            f"({counts})"
        )
    else:
        text = (
            f"{short}'s output channels are rows of {short_name(stem)}'s q, k and v weights in another order ({counts}): "
            "a fused q/k/v weight split or read in the wrong layout"
        )
    add("weight_layout", text, y[..., rows])


def _tied_output_hypotheses(rp, recipe, xs, out, e, add):
    """The logits: the tied projection fed the value before the final layer norm, or some tokens' logits
    overwritten inside the model (suppression)."""
    torch = rp.torch
    w = rp.w[f"{recipe.params['name']}.weight"]
    before = recipe.params["before"]
    if len(xs) > 1 and xs[1].shape[-1] == w.shape[1]:
        add(
            "missing_op",
            f"the logits are computed from {before}, before the final layer norm decoder.ln (decoder.ln skipped)",
            xs[1] @ w.T,
        )
    add(
        "bias_shift",
        "the logits are log-probabilities: log_softmax applied inside the model (a constant offset per position, "
        "minus its log-sum-exp)",
        e.log_softmax(-1),
    )
    x = xs[0]
    for k in (1, -1, 2, -2):  # the vocabulary rows shifted: token t scored with row t + k
        add(
            "weight_layout",
            f"the output projection's vocabulary rows shifted by {k:+d} (token t scored with row t{k:+d})",
            x @ w.roll(-k, 0).T,
        )
    diff = (out - e).abs()
    finite = torch.isfinite(out)
    changed = ((diff > 1e-3 * (e.abs().max() + 1)) | ~finite).flatten(0, -2).all(0)  # at every position
    tokens = [int(t) for t in torch.nonzero(changed).flatten()]
    if tokens and len(tokens) < 0.05 * w.shape[0]:
        values = out[..., tokens]
        if bool((values == values.flatten()[0]).all()) or not bool(torch.isfinite(values).any()):
            v = float(values.flatten()[0])
            listed = ", ".join(map(str, tokens[:8])) + (", ..." if len(tokens) > 8 else "")
            cand = e.clone()
            cand[..., tokens] = v
            add(
                "suppression",
                f"the logits of {len(tokens)} token(s) ({listed}) are set to {v:g} inside the model at every "
                "position (suppression belongs to the decoding loop, after the logits)",
                cand,
                tokens=tokens,
            )
