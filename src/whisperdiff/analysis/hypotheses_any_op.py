"""Hypotheses for every op type: a sign, a global factor or offset, a per-channel offset equal to one of the
model's bias vectors, and another precision (float16, bfloat16, tf32 rounded or truncated) for inputs, weights
or output.

Each hypothesis function takes (replayer, recipe, inputs, candidate output, replayed output, context, add) and
calls add(kind, explanation, what the op would output under that hypothesis, **extra) for each.
"""

from __future__ import annotations

from whisperdiff.analysis.hypotheses_weights import short_name
from whisperdiff.analysis.replay import TENSOR_CORE, precision_name, round_to, rounded_to, vectors_of
from whisperdiff.analysis.residual import closest_vector

PRECISIONS = ("float16", "bfloat16", *TENSOR_CORE)


def generic_hypotheses(rp, recipe, xs, out, e, ctx, add):
    add("sign_flip", "values negated", -e)
    # the op is absent: B passes its input on unchanged (any op whose output has its input's shape)
    same = [x for x in xs[:1] if tuple(x.shape) == tuple(out.shape)]
    if same:
        add("missing_op", f"{recipe.op} returns its input unchanged: the op is missing", same[0])
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
        part = recipe.op.split(".")[0] + "." if recipe.op.startswith("decoder.") else "encoder."
        vectors = vectors_of(rp.w, part)
        name, coef, cos = closest_vector(d.flatten(), vectors)
        if name is not None and name.endswith("bias") and abs(cos) > 0.99:
            v = rp.w[name].double().reshape(d.shape)
            own = recipe.params.get("name")
            times = "" if abs(coef - 1) < 0.05 else f" {coef:+.3g} times"
            if f"{own}.bias" == name:
                what = (
                    "is missing"
                    if abs(coef + 1) < 0.05
                    else "is added twice"
                    if abs(coef - 1) < 0.05
                    else f"is added{times}"
                )
                text = f"a bias {what}: B - replay is constant over time and equals {coef:+.3g} x {short_name(name)}'s bias"
            elif abs(coef + 1) < 0.05:
                text = f"{recipe.op} lacks a bias: B - replay equals -1 x {short_name(name)}'s bias"
            else:
                text = (
                    f"{recipe.op} received {short_name(name)}'s bias{times} (another op's bias; B - replay is "
                    f"constant over time and equals it)"
                )
            add("bias_error", f"{text} (cosine {cos:.4f})", (e.double() + coef * v).float(), vector=name)
    _dropout_hypotheses(rp, recipe, xs, out, e, add)
    _masked_input(rp, recipe, xs, out, e, add)
    if recipe.type in ("norm",):
        x = xs[0].double()
        add(
            "scale_mismatch",
            "statistics match, content does not: the op is replaced by one whole-tensor rescale "
            "(x - mean) / std, the cosmetic fix that makes mean and std look right",
            ((x - x.mean()) / x.std(correction=0)).float(),
        )


def _masked_input(rp, recipe, xs, out, e, add):
    """A convolution or linear op whose input was replaced by a constant over a band of time steps before it
    ran (a time mask: SpecAugment left on, frames zeroed), which the recorded input does not show. Found from
    B alone: where the input is constant c, the output step is c x (the weight's sum over its inputs) + bias;
    the steps where B is that and the replay is not make the band, and replaying with it reproduces B."""
    torch, name = rp.torch, recipe.params.get("name")
    if recipe.type not in ("conv", "linear") or not name or out.ndim != 3 or len(xs) != 1 or xs[0].ndim != 3:
        return
    key = name if f"{name}.weight" in rp.w else f"encoder.{name}"
    if f"{key}.weight" not in rp.w:
        return
    w = rp.w[f"{key}.weight"].double()
    conv = recipe.type == "conv"
    wsum = w.sum(dim=(1, 2)) if conv else w.sum(1)  # the output to a constant input of 1, without the bias
    bias = rp.w[f"{key}.bias"].double() if f"{key}.bias" in rp.w else torch.zeros_like(wsum)
    if float(wsum @ wsum) == 0:
        return

    def constant_steps(y):  # per output step: is it the response to one constant input, and which
        y = (y.double()[0].T if conv else y.double()[0]) - bias  # [T, C_out]
        c = (y @ wsum) / (wsum @ wsum)
        resid = (y - c[:, None] * wsum).norm(dim=1) / (y.norm(dim=1) + bias.norm() + 1e-30)
        return resid < 1e-3, c

    in_b, c = constant_steps(out)
    in_e, _ = constant_steps(e)
    band = in_b & ~in_e
    if int(band.sum()) < 2:
        return
    steps = torch.nonzero(band).flatten()
    t1, t2 = int(steps.min()), int(steps.max())
    if float(band[t1 : t2 + 1].double().mean()) < 0.9:  # one band, not scattered steps
        return
    value = float(c[band].median())
    stride = recipe.params.get("stride", 1) if conv else 1
    reach = (w.shape[-1] // 2) if conv else 0  # the input steps an output step reads on each side
    x = xs[0]
    length = x.shape[-1] if conv else x.shape[1]
    lo, hi = max(0, stride * t1 - reach), min(length - 1, stride * t2 + reach)
    masked = x.clone()
    if conv:
        masked[..., lo : hi + 1] = value
    else:
        masked[:, lo : hi + 1, :] = value
    add(
        "input_mismatch",
        f"{recipe.op}'s input was replaced by the constant {value:.4g} over its time steps {lo}-{hi} ({hi - lo + 1} of "
        f"{length}) before it ran: a time mask (SpecAugment-style augmentation left on, or frames zeroed) that the "
        "recorded input does not show",
        recipe.fn(masked),
        band=(lo, hi),
    )


def _dropout_hypotheses(rp, recipe, xs, out, e, add):
    """Dropout left on (the module in train mode): some values exactly zero (or, after a residual add, exactly
    the residual), the others scaled by 1 / (1 - p), with p solved from the share that was dropped."""
    torch = rp.torch
    live = e.abs() > 1e-12
    dropped = (out == 0) & live
    share = float(dropped.sum()) / max(int(live.sum()), 1)
    if 0.002 < share < 0.9:
        add(
            "stochastic",
            f"dropout left on (train mode) after {recipe.op}: {share:.1%} of its values are exactly zero, the rest "
            f"scaled by 1/(1 - p) = {1 / (1 - share):.3f} (p = {share:.2f})",
            torch.where(dropped, 0.0, e / (1 - share)),
            p=share,
        )
    if recipe.type == "residual" and len(xs) == 2:
        x, y = xs
        kept_x = (out == x) & (y.abs() > 1e-12)  # x + 0 == x exactly: the branch was dropped there
        share = float(kept_x.sum()) / max(int((y.abs() > 1e-12).sum()), 1)
        if 0.002 < share < 0.9:
            add(
                "stochastic",
                f"dropout left on (train mode) on the residual branch of {recipe.op}: {share:.1%} of the branch's "
                f"values are zeroed, the rest scaled by 1/(1 - p) = {1 / (1 - share):.3f} (p = {share:.2f})",
                torch.where(kept_x, x, x + y / (1 - share)),
                p=share,
            )


def precision_hypotheses(rp, recipe, xs, out, expected, add, dtypes=PRECISIONS):
    """The op computed from inputs and weights rounded to a lower precision (and its output rounded)."""
    for dtype in dtypes:
        if dtype not in TENSOR_CORE:
            add(
                "precision",
                f"computed in float32, stored in {dtype} (output rounded to {dtype})",
                round_to(expected, dtype),
                dtype=dtype,
            )
        r = rp.with_weights_rounded(dtype).recipe(recipe.op)
        y = r.fn(*(round_to(x, dtype) for x in xs))
        prec = precision_name(dtype)
        add("precision", f"computed in {prec} (inputs and weights {rounded_to(dtype)})", y, dtype=dtype)
        if dtype not in TENSOR_CORE:
            add(
                "precision",
                f"computed in {dtype} (inputs, weights and output rounded to {dtype})",
                round_to(y, dtype),
                dtype=dtype,
            )
        if recipe.type == "linear" and dtype == "float16":  # float32 products summed into a float16 accumulator
            w = rp.w[f"{recipe.params['name']}.weight"]
            bias = rp.w.get(f"{recipe.params['name']}.bias")
            for chunk in (16, 32, 64, 128, 256):
                if chunk >= w.shape[1]:
                    break
                acc = None
                for lo in range(0, w.shape[1], chunk):
                    part = xs[0][..., lo : lo + chunk] @ w[:, lo : lo + chunk].T
                    acc = round_to(part if acc is None else acc + part, "float16")
                add(
                    "precision",
                    f"matmul accumulated in float16: the running sum rounded to float16 every {chunk} inputs",
                    acc + (bias if bias is not None else 0),
                    dtype=dtype,
                    chunk=chunk,
                )
        if recipe.type == "linear" and f"{recipe.params['name']}.bias" in rp.w:  # a low-precision matmul, float32 bias
            name = recipe.params["name"]
            wr = round_to(rp.w[f"{name}.weight"], dtype)
            mm = round_to(xs[0], dtype) @ wr.T
            add(
                "precision",
                f"matmul in {prec} (float32 accumulation), bias added in float32",
                mm + rp.w[f"{name}.bias"],
                dtype=dtype,
            )
            if dtype not in TENSOR_CORE:
                add(
                    "precision",
                    f"matmul in {dtype} with a {dtype} result, bias added in float32",
                    round_to(mm, dtype) + rp.w[f"{name}.bias"],
                    dtype=dtype,
                )
