"""Replay one canonical op in torch on the candidate's own inputs: the error an op *introduces*.

`compare` feeds each op the candidate trace's recorded inputs and recomputes it with the model's
weights (float64, openai-whisper's formulas). An op whose candidate output matches its replay is
locally right and only inherits error; one that does not introduces it. For a wrong op, each
*hypothesis* (a known porting bug: tanh GELU, only the centre conv tap, epsilon 1e-3, ...) is
replayed too, and the one that reproduces the candidate names the bug.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from whisperdiff.names import BLOCK_OPS


@dataclass(frozen=True)
class Hypothesis:
    kind: str  # a finding kind (diagnose.KINDS)
    explain: str  # one line: what the port does
    fn: Callable  # (weights, *inputs) -> output, like the op's own replay


@dataclass(frozen=True)
class OpRecipe:
    inputs: tuple[str, ...]
    fn: Callable  # (*inputs as float64 torch tensors) -> output
    hypotheses: tuple[Hypothesis, ...] = ()


class Replayer:
    """Recipes for every canonical op of a model; `weights` is the encoder's openai-whisper state dict."""

    def __init__(self, loaded):
        import torch

        self.torch = torch
        self.dims = loaded.dims
        self.w = {k: v.detach().to(torch.float64) for k, v in loaded.state_dict.items() if k.startswith("encoder.")}
        self.d_head = self.dims.n_audio_state // self.dims.n_audio_head

    # -- openai-whisper's formulas, float64 ---------------------------------------------------------
    def conv(self, name, x, stride, centre_only=False):
        F = self.torch.nn.functional
        weight = self.w[f"encoder.{name}.weight"]
        if centre_only:
            weight = weight * self.torch.tensor([0.0, 1.0, 0.0], dtype=weight.dtype)
        return F.conv1d(x, weight, self.w[f"encoder.{name}.bias"], stride=stride, padding=1)

    def layer_norm(self, name, x, eps=1e-5):
        F = self.torch.nn.functional
        return F.layer_norm(x, x.shape[-1:], self.w[f"{name}.weight"], self.w[f"{name}.bias"], eps)

    def linear(self, name, x, bias=True):
        return x @ self.w[f"{name}.weight"].T + (self.w[f"{name}.bias"] if bias else 0)

    def attention_weights(self, q, k, scale_power=0.5):
        b, t, c = q.shape
        h = self.dims.n_audio_head
        q = q.view(b, t, h, -1).permute(0, 2, 1, 3)
        k = k.view(b, t, h, -1).permute(0, 2, 3, 1)
        return ((q @ k) * self.d_head**-scale_power).softmax(-1)

    def attention(self, q, k, v, scale_power=0.5):
        b, t, c = q.shape
        w = self.attention_weights(q, k, scale_power)
        v = v.view(b, t, self.dims.n_audio_head, -1).permute(0, 2, 1, 3)
        return (w @ v).permute(0, 2, 1, 3).reshape(b, t, c)

    def gelu(self, x, approximate="none"):
        return self.torch.nn.functional.gelu(x, approximate=approximate)

    # -- the recipe of each canonical op --------------------------------------------------------------
    def recipe(self, op: str) -> OpRecipe | None:
        tanh = Hypothesis("activation_approx", "GELU is the tanh approximation, not Whisper's exact erf GELU",
                          lambda x: self.gelu(x, "tanh"))  # fmt: skip
        if op == "conv1":
            return OpRecipe(("mel",), lambda x: self.conv("conv1", x, 1), (self._centre("conv1", 1),))
        if op == "conv2":
            return OpRecipe(("conv1.gelu",), lambda x: self.conv("conv2", x, 2), (self._centre("conv2", 2),))
        if op in ("conv1.gelu", "conv2.gelu"):
            return OpRecipe((op.split(".")[0],), self.gelu, (tanh,))
        if op == "pos_embed":
            pe = self.w["encoder.positional_embedding"]
            return OpRecipe(("conv2.gelu",), lambda x: x.permute(0, 2, 1) + pe, (
                Hypothesis("positional", "the positional embedding is not added", lambda x: x.permute(0, 2, 1)),
            ))  # fmt: skip
        if op == "ln_post":
            last = f"blocks.{self.dims.n_audio_layer - 1}.out"
            return OpRecipe((last,), lambda x: self.layer_norm("encoder.ln_post", x), (
                Hypothesis("missing_op", "ln_post is the identity: the final layer norm is missing", lambda x: x),
                Hypothesis("scale_mismatch", "statistics match, content does not: ln_post is replaced by one "
                           "whole-tensor rescale (x - mean) / std, the cosmetic fix that makes mean and std look right",
                           lambda x: (x - x.mean()) / x.std(correction=0)),
                self._eps("encoder.ln_post"),
            ))  # fmt: skip
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", op)
        if not m or m.group(2) not in BLOCK_OPS:
            return None
        i, part = int(m.group(1)), m.group(2)
        p = f"encoder.blocks.{i}"
        x_in = "pos_embed" if i == 0 else f"blocks.{i - 1}.out"
        b = lambda s: f"blocks.{i}.{s}"  # noqa: E731
        scale = Hypothesis("attention_scale", "attention scores are scaled by 1/d_head instead of 1/sqrt(d_head)",
                           lambda q, k, v=None: self.attention(q, k, v, 1.0) if v is not None
                           else self.attention_weights(q, k, 1.0))  # fmt: skip
        no_residual = Hypothesis("missing_residual", "the residual connection is dropped (only the branch is kept)",
                                 lambda x, y: y)  # fmt: skip
        recipes = {
            "attn_ln": OpRecipe((x_in,), lambda x: self.layer_norm(f"{p}.attn_ln", x), self._ln_bugs(f"{p}.attn_ln")),
            "attn.q": OpRecipe((b("attn_ln"),), lambda x: self.linear(f"{p}.attn.query", x)),
            "attn.k": OpRecipe((b("attn_ln"),), lambda x: self.linear(f"{p}.attn.key", x, bias=False), (
                Hypothesis("swapped_projections", "key and value projections are swapped (k is computed with the value weights)",
                           lambda x: self.linear(f"{p}.attn.value", x)),
            )),
            "attn.v": OpRecipe((b("attn_ln"),), lambda x: self.linear(f"{p}.attn.value", x), (
                Hypothesis("swapped_projections", "key and value projections are swapped (v is computed with the key weights)",
                           lambda x: self.linear(f"{p}.attn.key", x, bias=False)),
            )),
            "attn.weights": OpRecipe((b("attn.q"), b("attn.k")), self.attention_weights, (
                scale,
                Hypothesis("layout", "attention probabilities are transposed (query and key axes swapped)",
                           lambda q, k: self.attention_weights(q, k).transpose(-1, -2)),
            )),
            "attn.wv": OpRecipe((b("attn.q"), b("attn.k"), b("attn.v")), self.attention, (scale,)),
            "attn.out": OpRecipe((b("attn.wv"),), lambda x: self.linear(f"{p}.attn.out", x)),
            "attn_residual": OpRecipe((x_in, b("attn.out")), lambda x, y: x + y, (no_residual,)),
            "mlp_ln": OpRecipe((b("attn_residual"),), lambda x: self.layer_norm(f"{p}.mlp_ln", x), self._ln_bugs(f"{p}.mlp_ln")),
            "mlp.fc1": OpRecipe((b("mlp_ln"),), lambda x: self.linear(f"{p}.mlp.0", x)),
            "mlp.gelu": OpRecipe((b("mlp.fc1"),), self.gelu, (tanh,)),
            "mlp.fc2": OpRecipe((b("mlp.gelu"),), lambda x: self.linear(f"{p}.mlp.2", x)),
            "out": OpRecipe((b("attn_residual"), b("mlp.fc2")), lambda x, y: x + y, (no_residual,)),
        }  # fmt: skip
        return recipes[part]

    def _centre(self, name, stride):
        return Hypothesis("conv_kernel", f"{name} uses only the centre kernel tap (k=1 of 3)",
                          lambda x: self.conv(name, x, stride, centre_only=True))  # fmt: skip

    def _eps(self, name):
        return Hypothesis("layer_norm_eps", f"{name.removeprefix('encoder.')} uses epsilon 1e-3 instead of 1e-5 (a variance mismatch)",
                          lambda x: self.layer_norm(name, x, 1e-3))  # fmt: skip

    def _ln_bugs(self, name):
        short = name.removeprefix("encoder.")
        return (self._eps(name), Hypothesis("missing_op", f"{short} is the identity: the layer norm is missing", lambda x: x))

    # -- running ------------------------------------------------------------------------------------
    def replay(self, op: str, inputs: list[np.ndarray]) -> dict | None:
        """{"introduced": rel error of the candidate vs its own replay, "hypotheses": [(kind, explain, rel err)]}.

        `inputs[-1]` is the candidate's output for `op`, the others its recorded inputs."""
        recipe = self.recipe(op)
        if recipe is None:
            return None
        torch = self.torch
        *xs, out = (torch.from_numpy(np.array(a, np.float64)) for a in inputs)  # writable float64 copies
        with torch.no_grad():
            expected = recipe.fn(*xs)
            result = {"introduced": _rel(expected, out), "replay_scale": float(expected.norm()), "hypotheses": []}
            if result["introduced"] > 1e-6:
                for h in recipe.hypotheses:
                    result["hypotheses"].append((h.kind, h.explain, _rel(h.fn(*xs), out)))
                for dtype in ("float16", "bfloat16"):  # storage precision: inputs (and output) rounded
                    dt = getattr(torch, dtype)
                    rounded = recipe.fn(*(x.to(dt).double() for x in xs))
                    err = min(_rel(rounded, out), _rel(rounded.to(dt).double(), out))
                    result["hypotheses"].append(("precision", f"activations rounded to {dtype}", err))
        return result

    def inputs_of(self, op: str) -> tuple[str, ...] | None:
        recipe = self.recipe(op)
        return recipe.inputs if recipe else None


def _rel(expected, got) -> float:
    n = float(expected.norm())
    d = float((got - expected).norm())
    if math.isnan(d):
        return math.inf
    return d / n if n > 0 else (0.0 if d == 0 else math.inf)
