"""Hypotheses for a block's layer norms, activations and residual adds: another epsilon (solved from the
data), n-1 variance, no gamma or beta, RMSNorm or the wrong axis; another activation than exact GELU; the
residual or the branch dropped.

Each hypothesis function takes (replayer, recipe, inputs, candidate output, replayed output, context, add) and
calls add(kind, explanation, what the op would output under that hypothesis, **extra) for each.
"""

from __future__ import annotations

import math


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


def residual_hypotheses(rp, recipe, xs, out, e, ctx, add):
    x, y = xs
    add("missing_residual", "the residual connection is dropped (only the branch is kept)", y)
    add("missing_op", "the branch is not added (only the residual stream is kept)", x)
    add("missing_residual", "the residual is added twice", 2 * x + y)
