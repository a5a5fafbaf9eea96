"""Hypotheses for the ops a weight defines, linear projections and convolutions: the weight transposed, in
another layout or another layer's; the bias missing or added twice; a conv's padding or kernel taps.

Each hypothesis function takes (replayer, recipe, inputs, candidate output, replayed output, context, add) and
calls add(kind, explanation, what the op would output under that hypothesis, **extra) for each.
"""

from __future__ import annotations

import itertools
import re

from whisperdiff.analysis.replay import LINEAR_PARAMS


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
    m = re.fullmatch(r"encoder\.blocks\.(\d+)\.(.+)\.weight", key)
    if not m:
        return None
    for op, param in LINEAR_PARAMS.items():
        if param == m.group(2):
            return f"blocks.{m.group(1)}.{op}"
    return None


def linear_hypotheses(rp, recipe, xs, out, e, ctx, add):
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
