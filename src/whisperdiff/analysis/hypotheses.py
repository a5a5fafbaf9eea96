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

One module per op type family (hypotheses_any_op, hypotheses_weights, hypotheses_attention,
hypotheses_norm, hypotheses_frontend); this one dispatches on the op's type.

Only `compare` calls this, and only at an op that introduces error: a clean pair costs nothing.
"""

from __future__ import annotations

import numpy as np

from whisperdiff.analysis.hypotheses_any_op import PRECISIONS, generic_hypotheses, precision_hypotheses
from whisperdiff.analysis.hypotheses_attention import attention_hypotheses, search_scale, solve_scale
from whisperdiff.analysis.hypotheses_frontend import mel_hypotheses, positional_hypotheses, sinusoids
from whisperdiff.analysis.hypotheses_norm import activation_hypotheses, norm_hypotheses, residual_hypotheses, solve_eps
from whisperdiff.analysis.hypotheses_weights import conv_hypotheses, filter_layouts, linear_hypotheses
from whisperdiff.analysis.replay import Replayer, rel

__all__ = [
    "PRECISIONS",
    "explain",
    "filter_layouts",
    "ESTABLISHED_FIT",
    "hypotheses_for",
    "mel_hypotheses",
    "search_scale",
    "sinusoids",
    "solve_eps",
    "solve_scale",
]


def _collector(rp: Replayer, out, found: list):
    """add(kind, explain, candidate, where=None, scored=None, **extra): score one hypothesis against B into
    `found` (scored: its rel L2 is given, and candidate is None)."""

    def add(kind, explain, candidate, where=None, scored=None, **extra):
        if scored is not None:  # scored already, on a sample of the steps (a rival far from fitting)
            found.append((kind, explain, scored, extra))
            return
        if candidate is None or tuple(candidate.shape) != tuple(out.shape):
            return
        if where is not None:  # only part of the output is defined by this hypothesis (a shifted table)
            candidate = rp.torch.where(where, candidate, out)
        found.append((kind, explain, rel(candidate, out), extra))

    return add


def hypotheses_for(rp: Replayer, recipe, xs, out, expected, context: dict) -> list[tuple]:
    found: list[tuple] = []
    add = _collector(rp, out, found)
    by_type = {
        "conv": conv_hypotheses,
        "activation": activation_hypotheses,
        "positional": positional_hypotheses,
        "norm": norm_hypotheses,
        "linear": linear_hypotheses,
        "attention_weights": attention_hypotheses,
        "attention": attention_hypotheses,
        "residual": residual_hypotheses,
    }
    only = context.get("precision_only")  # one precision's hypotheses only
    by_op_type = lambda: by_type[recipe.type](rp, recipe, xs, out, expected, context, add)  # noqa: E731
    generic = lambda: generic_hypotheses(rp, recipe, xs, out, expected, context, add)  # noqa: E731
    precision = lambda: precision_hypotheses(rp, recipe, xs, out, expected, add, [only] if only else PRECISIONS)  # noqa: E731
    groups = [by_op_type, generic, precision]
    if only:  # the attention's hypotheses honour precision_only (their sub-ops' precisions); no other type has any
        groups = [by_op_type, precision] if recipe.type.startswith("attention") else [precision]
    for group in groups:
        try:
            group()
        except (RuntimeError, ValueError, IndexError):  # a shape a hypothesis cannot take: it is not evidence
            continue
    return found


# An established precision must fit this much better than the plain replay to stand for an op alone: far
# stricter than a finding's bar (diagnose.REPRODUCES), since no rival is tried beside it.
ESTABLISHED_FIT = 0.01


def explain(
    replayer: Replayer,
    op: str,
    inputs: list[np.ndarray],
    context: dict | None = None,
    established=(),
    precision_only: str | None = None,
) -> dict:
    """The replay plus every hypothesis of the op's type, each scored against the candidate:
    {"introduced", "expected" (the replay, numpy), "hypotheses": [(kind, explain, rel err, extra)]}.

    established: precisions (dtypes) that reproduced B at earlier ops. They are tried first, and where one
    reproduces B here too, to ESTABLISHED_FIT of the correct op's error, the other hypotheses are not: a
    port or GPU that computes in another precision throughout is named at every op for the cost of a few
    hypotheses each. The result's "established" is the precision whose hypothesis fits B that well here (by
    either path), else None: the caller's `established` for the next op. precision_only: a dtype; only the
    hypotheses of that precision, general and of the op's type (those of an attention's sub-ops)."""
    recipe = replayer.recipe(op)
    *xs, out = replayer.tensors(inputs)
    with replayer.torch.no_grad():
        expected = recipe.fn(*xs)
        introduced = rel(expected, out)
        result = {"introduced": introduced, "expected": expected.numpy()}
        if established and introduced > 0:
            found: list[tuple] = []
            try:
                precision_hypotheses(replayer, recipe, xs, out, expected, _collector(replayer, out, found), established)
            except (RuntimeError, ValueError, IndexError):  # as in hypotheses_for: then every hypothesis is tried
                found = []
            if dtype := _established(found, introduced):
                return {**result, "hypotheses": found, "established": dtype}
        context = {**(context or {}), "precision_only": precision_only}
        found = list(hypotheses_for(replayer, recipe, xs, out, expected, context))
        return {**result, "hypotheses": found, "established": _established(found, introduced)}


def _established(found: list[tuple], introduced: float) -> str | None:
    """The precision (dtype) of the best hypothesis, where it is a precision that fits B to ESTABLISHED_FIT of
    the correct op's error."""
    best = min(found, key=lambda h: h[2], default=None)
    if best is None or best[0] != "precision" or not best[2] < ESTABLISHED_FIT * introduced:
        return None
    return best[3].get("dtype") if best[3].get("dtype") in PRECISIONS else None
