"""Hypotheses for every op type: a sign, a global factor or offset, a per-channel offset equal to one of the
model's bias vectors, and another precision (float16, bfloat16, tf32) for inputs, weights or output.

Each hypothesis function takes (replayer, recipe, inputs, candidate output, replayed output, context, add) and
calls add(kind, explanation, what the op would output under that hypothesis, **extra) for each.
"""

from __future__ import annotations

from whisperdiff.analysis.replay import round_to
from whisperdiff.analysis.residual import closest_vector

PRECISIONS = ("float16", "bfloat16", "tf32")


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
        name, coef, cos = closest_vector(d.flatten(), {k: v for k, v in rp.w.items() if v.ndim == 1})
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


def precision_hypotheses(rp, recipe, xs, out, expected, add):
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
