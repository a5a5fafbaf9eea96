"""Hypotheses for a block's layer norms, activations and residual adds: another epsilon (solved from the
data), n-1 variance, no gamma or beta, RMSNorm or the wrong axis; another activation than exact GELU; the
residual or the branch dropped.

Each hypothesis function takes (replayer, recipe, inputs, candidate output, replayed output, context, add) and
calls add(kind, explanation, what the op would output under that hypothesis, **extra) for each.
"""

from __future__ import annotations

import math
import re

from whisperdiff.analysis.replay import b_tensor, round_to, shape_of
from whisperdiff.names import block_input


def activation_hypotheses(rp, recipe, xs, out, e, ctx, add):
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
def norm_hypotheses(rp, recipe, xs, out, e, ctx, add):
    name = recipe.params["name"]
    short = recipe.op
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
    for dtype in ("float16", "bfloat16"):  # the statistics alone in low precision, the rest in float32
        xr = x.to(getattr(rp.torch, dtype))
        mu_r = xr.mean(-1, keepdim=True)
        var_r = ((xr - mu_r) ** 2).mean(-1, keepdim=True)
        add(
            "precision",
            f"{short}'s statistics (mean and variance) computed in {dtype}, the rest in float32",
            ((x - mu_r.double()) / (var_r.double() + 1e-5).sqrt() * g + b).float(),
            dtype=dtype,
        )
        add(
            "precision",
            f"{short}'s normalised value (x - mean) / std rounded to {dtype} before its weight and bias (in float32)",
            (round_to(n.float(), dtype).double() * g + b).float(),
            dtype=dtype,
        )
    part = name.split(".", 1)[0] + "."
    for key in rp.w:  # another layer norm's gamma and beta (a block loaded with another block's weights)
        other = key.removesuffix(".weight")
        if not key.endswith(".weight") or other == name or not other.startswith(part) or f"{other}.bias" not in rp.w:
            continue
        if shape_of(rp.w, key) == tuple(g.shape) and g.ndim == 1:
            g2, b2 = rp.w[key], rp.w[f"{other}.bias"]
            add(
                "wrong_weight",
                f"{short} uses {other.removeprefix('encoder.')}'s gamma and beta (another layer norm's weights)",
                (n * g2.double() + b2.double()).float(),
                uses=other.removeprefix("encoder."),
            )
    eps = solve_eps(x, out.double(), g, b)
    if eps is not None and not 0.5e-5 < eps < 2e-5:
        add(
            "layer_norm_eps",
            f"{short} uses epsilon {eps:.3g} (solved from the data) instead of 1e-5",
            rp.layer_norm(name, xs[0], eps),
            eps=eps,
        )
    wiring_norm_hypotheses(rp, recipe, xs, out, ctx, add)


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


def residual_hypotheses(rp, recipe, xs, out, e, ctx, add):
    x, y = xs
    add("missing_residual", "the residual connection is dropped (only the branch is kept)", y)
    add("missing_op", "the branch is not added (only the residual stream is kept)", x)
    add("wiring", f"the residual stream is added twice in {recipe.op} (2x + branch)", 2 * x + y)
    # the branch added to another value of the block than the residual stream (B's own recorded values)
    for other, label in _other_streams(recipe, ctx):
        add(
            "wiring",
            f"{recipe.op} adds its branch to {other} ({label}) instead of {recipe.inputs[0]}",
            other_x(rp, ctx, other, x) + y,
        )


def _other_streams(recipe, ctx) -> list[tuple[str, str]]:
    """Values a residual add may wrongly take as its stream: the layer norm's output, the block's input."""
    m = re.fullmatch(r"((?:decoder\.)?blocks\.(\d+))\.(.+)", recipe.op)
    if not m or "b_value" not in ctx:
        return []
    p, i = m.group(1), int(m.group(2))
    prefix = "decoder." if recipe.op.startswith("decoder.") else ""
    block_in = block_input(i, prefix)
    norm_of = {"attn_residual": "attn_ln", "cross_attn_residual": "cross_attn_ln", "out": "mlp_ln"}.get(m.group(3))
    found = []
    if norm_of:
        found.append((f"{p}.{norm_of}", "the layer norm's output: the residual is taken after the layer norm"))
    if m.group(3) != "attn_residual":
        found.append((block_in, "the block's input"))
    return [(o, label) for o, label in found if o != recipe.inputs[0]]


def other_x(rp, ctx, name, like):
    t = b_tensor(rp, ctx, name, like)
    if t is None:
        raise ValueError(name)  # not recorded in B (or not in this shape): the hypothesis cannot be replayed
    return t


def wiring_norm_hypotheses(rp, recipe, xs, out, ctx, add):
    """A block's first layer norm reading something else than the block's input: the block switched to
    post-norm (the norm of x + attn(x)), or the previous block run twice."""
    if "b_value" not in ctx:
        return
    name = recipe.params["name"]
    n_layer = rp.dims.n_audio_layer
    if recipe.op == "ln_post" and n_layer > 0:  # the last block run twice (an off-by-one layer list)
        add(
            "wiring",
            f"blocks.{n_layer - 1} run twice: ln_post reads blocks.{n_layer - 1} applied again to its own output",
            rp.layer_norm(name, rp.block(n_layer - 1, xs[0])),
        )
    m = re.fullmatch(r"((?:decoder\.)?blocks\.(\d+))\.(mlp_ln|cross_attn_ln)", recipe.op)
    if m:  # the branch fed the block's input, not the residual stream after attention (a parallel block)
        prefix = "decoder." if recipe.op.startswith("decoder.") else ""
        i = int(m.group(2))
        block_in = block_input(i, prefix)
        try:
            add(
                "wiring",
                f"{recipe.op} normalises the block's input {block_in}, not {recipe.inputs[0]}: the branch runs in "
                "parallel with the attention instead of after it",
                rp.layer_norm(name, other_x(rp, ctx, block_in, xs[0])),
            )
        except ValueError:
            pass
    m = re.fullmatch(r"((?:decoder\.)?blocks\.(\d+))\.attn_ln", recipe.op)
    if not m:
        return
    p, i = m.group(1), int(m.group(2))
    try:
        branch = other_x(rp, ctx, f"{p}.attn.out", xs[0])
        add(
            "wiring",
            f"post-norm: {recipe.op} normalises x + attn(x) (the residual sum after the attention), not the block's "
            "input: the block is post-norm, Whisper is pre-norm",
            rp.layer_norm(name, xs[0] + branch),
        )
    except ValueError:
        pass
    prefix = "decoder." if recipe.op.startswith("decoder.") else ""
    for j in range(-1, i - 1):  # blocks skipped: this block reads an earlier block's output (-1: the embedding)
        source = block_input(j + 1, prefix)  # what block j + 1 reads: block j's out
        try:
            earlier = other_x(rp, ctx, source, xs[0])
        except ValueError:
            continue
        skipped = f"{prefix}blocks.{j + 1}" if j + 1 == i - 1 else f"{prefix}blocks.{j + 1}..{i - 1}"
        add(
            "missing_op",
            f"{skipped} skipped: {recipe.op} reads {source}, not {recipe.inputs[0]}",
            rp.layer_norm(name, earlier),
        )
    if i > 0 and not recipe.op.startswith("decoder."):
        add(
            "wiring",
            f"blocks.{i - 1} run twice: {recipe.op} reads blocks.{i - 1} applied again to its own output "
            "(an off-by-one layer list repeated it)",
            rp.layer_norm(name, rp.block(i - 1, xs[0])),
        )
