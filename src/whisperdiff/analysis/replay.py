"""Replay one canonical op in torch on the candidate's own inputs: the error an op *introduces*.

`compare` feeds each op the candidate trace's recorded inputs and recomputes it with the model's
weights (openai-whisper's formulas). An op whose candidate output matches its replay is locally right
and only inherits error; one that does not introduces it. Only there does `explain` replay the
hypotheses of that op's *type* (hypotheses.py: a linear op with its weight transposed, a layer norm
without beta, a softmax over the wrong axis...): the one that reproduces the candidate names the bug.

Speed: the replay runs in float32 (torch's sgemm), with float64 only where a float32 reduction could
hide a bug (layer-norm statistics). Its own error is ~1e-7 relative: far below the 1e-4 bar at which
an op introduces error, so 1e-6 float32 noise and a bug stay apart. Attention runs head by head.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from whisperdiff.analysis.replay_decoder import decoder_recipe
from whisperdiff.names import BLOCK_OPS, block_input

# Which weight each linear op uses (openai-whisper's state-dict names, inside encoder.blocks.{i}).
LINEAR_PARAMS = {
    "attn.q": "attn.query",
    "attn.k": "attn.key",
    "attn.v": "attn.value",
    "attn.out": "attn.out",
    "mlp.fc1": "mlp.0",
    "mlp.fc2": "mlp.2",
}


# Op types whose output at one time step (one query) depends only on the inputs at that step (query).
SAMPLED = frozenset({"activation", "norm", "linear", "residual", "attention", "attention_weights"})


@dataclass(frozen=True)
class OpRecipe:
    op: str
    type: str  # conv, activation, positional, norm, linear, attention_weights, attention, residual
    inputs: tuple[str, ...]
    fn: Callable  # (*inputs as torch tensors) -> output
    params: dict = field(default_factory=dict)  # weight / bias names, stride, ...


class Replayer:
    """Recipes for every canonical op of a model; weights from the encoder's openai-whisper state dict."""

    def __init__(self, loaded, weights=None, parts: tuple[str, ...] = ("encoder",)):
        """parts: whose weights ("encoder", "decoder"): a decoder trace needs both, an encoder one only its own."""
        import torch

        self.torch = torch
        self.loaded = loaded
        self.dims = loaded.dims
        if weights is None:
            prefixes = tuple(f"{p}." for p in parts)
            weights = LazyWeights(loaded, [k for k in loaded.state_dict if k.startswith(prefixes)])
        self.w = weights
        self.decoder_context: dict = {}  # a decoder trace's prompt length (its incremental steps start there)
        self.n_head = self.dims.n_audio_head
        self.d_head = self.dims.n_audio_state // self.n_head
        self._rounded: dict[str, Replayer] = {}

    def with_weights_rounded(self, dtype: str) -> Replayer:
        """The same recipes with every weight rounded to `dtype` (float16, bfloat16, tf32)."""
        if dtype not in self._rounded:
            rounded = Replayer(self.loaded, RoundedWeights(self.w, dtype))
            rounded.decoder_context = self.decoder_context
            self._rounded[dtype] = rounded
        return self._rounded[dtype]

    # -- openai-whisper's formulas ---------------------------------------------------------------------
    def conv(self, name, x, stride, weight=None, bias=True, pad=(1, 1)):
        F = self.torch.nn.functional
        weight = self.w[f"encoder.{name}.weight"] if weight is None else weight
        b = self.w[f"encoder.{name}.bias"] if bias is True else (None if bias is False else bias)
        return F.conv1d(F.pad(x, pad), weight, b, stride=stride)

    def layer_norm(self, name, x, eps=1e-5):
        x64 = x.double()
        mu = x64.mean(-1, keepdim=True)
        var = ((x64 - mu) ** 2).mean(-1, keepdim=True)
        n = (x64 - mu) / (var + eps).sqrt()
        return (n * self.w[f"{name}.weight"].double() + self.w[f"{name}.bias"].double()).float()

    def linear(self, name, x, bias=True):
        y = x @ self.w[f"{name}.weight"].T
        return y.add_(self.w[f"{name}.bias"]) if bias and f"{name}.bias" in self.w else y  # y is new: in place

    def heads(self, x, order="hd"):
        """[B, T, C] -> [B, H, T, D]; order "dh" is the wrong split ([T, D, H])."""
        b, t, _ = x.shape
        if order == "dh":
            return x.view(b, t, self.d_head, self.n_head).permute(0, 3, 1, 2)
        return x.view(b, t, self.n_head, self.d_head).permute(0, 2, 1, 3)

    def merge(self, x, order="hd"):
        b, h, t, d = x.shape
        if order == "dh":
            return x.permute(0, 2, 3, 1).reshape(b, t, h * d)
        return x.permute(0, 2, 1, 3).reshape(b, t, h * d)

    def attention_weights(self, q, k, scale=None, split="hd", axis=-1, mask=None, swap_qk=False, sub=None):
        """Softmax probabilities [B, H, T_q, T_k], one head at a time (float32).

        sub: one sub-op in lower precision, {"scores": dtype} or {"probs": dtype} (the softmax's input or output),
        {"qk": dtype} (q k^T as a matmul in that dtype: q and k rounded, the product and the scaled scores too;
        in tf32 only q and k: see matmul_in)."""
        return self.torch.stack(list(self.head_probs(q, k, scale, split, axis, mask, swap_qk, sub)), 1)

    def head_probs(self, q, k, scale=None, split="hd", axis=-1, mask=None, swap_qk=False, sub=None):
        """attention_weights' probabilities, one head's [B, T_q, T_k] at a time (as a generator)."""
        scale = self.d_head**-0.5 if scale is None else scale
        sub = sub or {}
        qh, kh = self.heads(q, split), self.heads(k, split)
        if swap_qk:
            qh, kh = kh, qh
        if "qk" in sub:
            qh, kh = round_to(qh, sub["qk"]), round_to(kh, sub["qk"])
        half_qk = sub.get("qk") not in (None, *TENSOR_CORE)  # a tf32 matmul's product stays float32
        scores = None  # one head's scores, reused: a fresh T x T per head fragments glibc's heap (+200 MB kept)
        for h in range(qh.shape[1]):
            scores = self.torch.matmul(qh[:, h], kh[:, h].transpose(-1, -2), out=scores)
            s = round_to(round_to(scores, sub["qk"]) * scale, sub["qk"]) if half_qk else scores.mul_(scale)
            if mask is not None:  # in place where the mask broadcasts to the scores (every mask made here)
                fits = mask.dtype == s.dtype and self.torch.broadcast_shapes(s.shape, mask.shape) == s.shape
                s = s.add_(mask) if fits else s + mask
            if "scores" in sub:
                s = round_to(s, sub["scores"])
            p = s.softmax(axis)
            yield round_to(p, sub["probs"]) if "probs" in sub else p

    def attention(self, q, k, v, split="hd", merge=None, weights=None, pv=None, **kw):
        """pv: the dtype of probabilities @ v (both rounded, and the product), else float32. Without `weights`
        the probabilities are made and used one head at a time: all of them are n_head x T x T (180 MB at
        large-v3's 20 heads of 1500 x 1500)."""
        vh = self.heads(v, split)
        if weights is not None:
            return self.merge(weights @ vh if pv is None else matmul_in(weights, vh, pv), merge or split)
        heads = None  # [H, B, T_q, D]: head h's output is contiguous, written in place
        for h, p in enumerate(self.head_probs(q, k, split=split, **kw)):
            if heads is None:
                heads = vh.new_empty((vh.shape[1], *p.shape[:-1], vh.shape[-1]))
            if pv is None:
                self.torch.matmul(p, vh[:, h], out=heads[h])
            else:
                heads[h] = matmul_in(p, vh[:, h], pv)
        return self.merge(heads.transpose(0, 1), merge or split)

    def gelu(self, x, approximate="none"):
        return self.torch.nn.functional.gelu(x, approximate=approximate)

    def block(self, i: int, x, prefix: str = "encoder"):
        """One whole encoder block on x (for "a block run twice"): x + attn(ln(x)), then + mlp(ln(.))."""
        p = f"{prefix}.blocks.{i}"
        h = self.layer_norm(f"{p}.attn_ln", x)
        q, k, v = (self.linear(f"{p}.attn.{n}", h) for n in ("query", "key", "value"))
        x = x + self.linear(f"{p}.attn.out", self.attention(q, k, v))
        h = self.gelu(self.linear(f"{p}.mlp.0", self.layer_norm(f"{p}.mlp_ln", x)))
        return x + self.linear(f"{p}.mlp.2", h)

    # -- the recipe of each canonical op --------------------------------------------------------------
    def recipe(self, op: str) -> OpRecipe | None:
        if op.startswith("decoder."):
            return decoder_recipe(self, op, OpRecipe, self.decoder_context)
        if op == "conv1":
            return OpRecipe(op, "conv", ("mel",), lambda x: self.conv("conv1", x, 1), {"name": "conv1", "stride": 1})
        if op == "conv2":
            return OpRecipe(
                op, "conv", ("conv1.gelu",), lambda x: self.conv("conv2", x, 2), {"name": "conv2", "stride": 2}
            )
        if op in ("conv1.gelu", "conv2.gelu"):
            return OpRecipe(op, "activation", (op.split(".")[0],), self.gelu)
        if op == "pos_embed":
            pe = self.w["encoder.positional_embedding"]
            return OpRecipe(op, "positional", ("conv2.gelu",), lambda x: x.permute(0, 2, 1) + pe[: x.shape[-1]])
        if op == "ln_post":
            last = f"blocks.{self.dims.n_audio_layer - 1}.out"
            return OpRecipe(
                op, "norm", (last,), lambda x: self.layer_norm("encoder.ln_post", x), {"name": "encoder.ln_post"}
            )
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", op)
        if not m or m.group(2) not in BLOCK_OPS:
            return None
        i, part = int(m.group(1)), m.group(2)
        p = f"encoder.blocks.{i}"
        x_in = block_input(i)
        b = lambda s: f"blocks.{i}.{s}"  # noqa: E731
        if part in ("attn_ln", "mlp_ln"):
            x = x_in if part == "attn_ln" else b("attn_residual")
            return OpRecipe(op, "norm", (x,), lambda x: self.layer_norm(f"{p}.{part}", x), {"name": f"{p}.{part}"})
        if part in LINEAR_PARAMS:
            name = f"{p}.{LINEAR_PARAMS[part]}"
            x = {"attn.out": b("attn.wv"), "mlp.fc1": b("mlp_ln"), "mlp.fc2": b("mlp.gelu")}.get(part, b("attn_ln"))
            return OpRecipe(op, "linear", (x,), lambda x: self.linear(name, x), {"name": name, "block": i})
        if part == "attn.weights":
            return OpRecipe(op, "attention_weights", (b("attn.q"), b("attn.k")), self.attention_weights)
        if part == "attn.wv":
            return OpRecipe(op, "attention", (b("attn.q"), b("attn.k"), b("attn.v")), self.attention)
        if part == "mlp.gelu":
            return OpRecipe(op, "activation", (b("mlp.fc1"),), self.gelu)
        if part == "attn_residual":
            return OpRecipe(op, "residual", (x_in, b("attn.out")), lambda x, y: x + y)
        return OpRecipe(op, "residual", (b("attn_residual"), b("mlp.fc2")), lambda x, y: x + y)  # out

    # -- running ------------------------------------------------------------------------------------
    def tensors(self, arrays: list[np.ndarray]):
        """Writable float32 torch copies of recorded arrays (non-finite values kept)."""
        return [self.torch.from_numpy(np.array(a, np.float32)) for a in arrays]

    def replay(self, op: str, inputs: list[np.ndarray], sample: int = 1) -> dict | None:
        """{"introduced": rel error of the candidate vs its own replay, "replay_scale", "hypotheses": []}.

        `inputs[-1]` is the candidate's output for `op`, the others its recorded inputs. The hypotheses
        are filled by `explain`, which compare calls only where the op introduces error. sample=k
        replays every k-th time step only, for ops that act on each step (or each query) alone: an
        estimate for ops that do not diverge, where the figure cannot change any finding."""
        recipe = self.recipe(op)
        if recipe is None:
            return None
        if (
            sample > 1 and recipe.type in SAMPLED and not op.startswith("decoder.")
        ):  # decoder: P is small  # attention: every k-th query (and output) row, all keys
            k = sample
            if recipe.type == "attention":
                inputs = [inputs[0][:, ::k], inputs[1], inputs[2], inputs[3][:, ::k]]
            elif recipe.type == "attention_weights":
                inputs = [inputs[0][:, ::k], inputs[1], inputs[2][:, :, ::k]]
            else:
                inputs = [a[:, ::k] for a in inputs]
        *xs, out = self.tensors(inputs)
        with self.torch.no_grad():
            expected = recipe.fn(*xs)
        return {"introduced": rel(expected, out), "replay_scale": float(expected.norm()), "hypotheses": []}

    def inputs_of(self, op: str) -> tuple[str, ...] | None:
        recipe = self.recipe(op)
        return recipe.inputs if recipe else None


# Bytes of matrices the replay keeps made (vectors are always kept): a large-v3 encoder is 2.5 GB of float32,
# one of its blocks 79 MB, and the replay of the ops after a divergence reads each block's weights once, in
# order: its two 26 MB MLP matrices fit (128 MB peaked 50 MB higher at the same speed).
KEPT_BYTES = 64 << 20


class LazyWeights(Mapping):
    """A model's weights as the replay reads them (float32 torch tensors, openai-whisper's names), each made
    from the model's state dict when first read and kept while the matrices read last fit KEPT_BYTES; every
    vector (norms, biases) is kept. shape_of() answers without making one: a hypothesis that looks for another
    layer's weight of a shape reads only those."""

    def __init__(self, loaded, names: list[str], kept_bytes: int = KEPT_BYTES):
        from whisperdiff.inputs.dims import expected_shapes

        shapes = expected_shapes(loaded.dims)
        self._state, self._budget = loaded.state_dict, kept_bytes
        self._shapes = {k: tuple(shapes[k]) if k in shapes else tuple(loaded.state_dict[k].shape) for k in names}
        self._kept: OrderedDict = OrderedDict()  # name -> matrix, least recently read first
        self._bytes = 0  # of the matrices in _kept
        self._fixed: dict = {}  # name -> vector, or a tensor given with w[name] = t (a test's own): always kept

    def shape_of(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def __contains__(self, key) -> bool:  # Mapping's would make the tensor
        return key in self._shapes

    def __getitem__(self, key: str):
        if key not in self._shapes:
            raise KeyError(key)
        if key in self._fixed:
            return self._fixed[key]
        if key in self._kept:
            self._kept.move_to_end(key)
            return self._kept[key]
        import torch

        t = self._state[key].detach().to(torch.float32).contiguous()
        if t.ndim <= 1:
            self._fixed[key] = t
            return t
        self._kept[key], self._bytes = t, self._bytes + t.nbytes
        while self._bytes > self._budget and len(self._kept) > 1:  # the least recently read go; this one stays
            self._bytes -= self._kept.popitem(last=False)[1].nbytes
        return t

    def __setitem__(self, key: str, value) -> None:
        if key in self._kept:
            self._bytes -= self._kept.pop(key).nbytes
        self._fixed[key], self._shapes[key] = value, tuple(value.shape)

    def __iter__(self):
        return iter(self._shapes)

    def __len__(self) -> int:
        return len(self._shapes)


def shape_of(weights: Mapping, key: str) -> tuple[int, ...]:
    """A weight's shape, without making it where the mapping can say (LazyWeights, RoundedWeights)."""
    known = getattr(weights, "shape_of", None)
    return known(key) if known is not None else tuple(weights[key].shape)


def vectors_of(weights: Mapping, prefix: str = "") -> dict:
    """{name: tensor} of the 1-D weights whose names start with prefix (biases, norms), no matrix made."""
    return {k: weights[k] for k in weights if k.startswith(prefix) and len(shape_of(weights, k)) == 1}


class RoundedWeights(Mapping):
    """The weights rounded to a dtype, each when first read: a hypothesis reads a few, not the whole model."""

    def __init__(self, weights: Mapping, dtype: str):
        self._weights, self._dtype, self._done = weights, dtype, {}

    def __getitem__(self, key):
        if key not in self._done:
            self._done[key] = round_to(self._weights[key], self._dtype)
        return self._done[key]

    def shape_of(self, key: str) -> tuple[int, ...]:
        return shape_of(self._weights, key)

    def __contains__(self, key) -> bool:  # Mapping's would round the weight
        return key in self._weights

    def __iter__(self):
        return iter(self._weights)

    def __len__(self) -> int:
        return len(self._weights)


# Tensor-core operand formats: a float32 operand's top 19 bits, products accumulated in float32. "tf32" rounds
# to nearest (cuBLAS, torch); "tf32-trunc" drops the low 13 bits, as a tensor core reads a float32 register
# nothing rounded first: MAX's float32 matmuls on an H200 shrank values so (docs/gpu.md).
TENSOR_CORE = ("tf32", "tf32-trunc")


def round_to(t, dtype: str):
    """`t` (float32 torch) rounded to float16, bfloat16 or tf32 (10-bit mantissa, round to nearest even), or
    truncated to tf32 (tf32-trunc: toward zero)."""
    import torch

    if dtype in TENSOR_CORE:
        bits = t.float().contiguous().view(torch.int32)
        if dtype == "tf32":
            bits = bits + 0xFFF + ((bits >> 13) & 1)
        return (bits & ~0x1FFF).view(torch.float32)
    return t.to(getattr(torch, dtype)).float()


def precision_name(dtype: str) -> str:
    """How a finding names a precision: tf32-trunc is tf32 whose operands were truncated, not rounded."""
    return "tf32 with truncated operands" if dtype == "tf32-trunc" else dtype


def rounded_to(dtype: str) -> str:
    return "truncated to tf32" if dtype == "tf32-trunc" else f"rounded to {dtype}"


def matmul_in(a, b, dtype: str):
    """a @ b as a matmul in `dtype`: the operands rounded, and the product too, except in tf32, a tensor-core
    operand format whose products accumulate in float32 (a GPU's float32 matmul by default)."""
    product = round_to(a, dtype) @ round_to(b, dtype)
    return product if dtype in TENSOR_CORE else round_to(product, dtype)


def rel(expected, got) -> float:
    """||got - expected|| / ||expected|| (inf when it is NaN). float32 is enough: the difference of two
    close float32 values is exact, and torch's norm sums pairwise (relative error ~1e-6 of the ratio)."""
    n = float(expected.norm())
    d = float((got - expected).norm())
    if math.isnan(d) or math.isnan(n):  # only then look for NaN on both sides (two passes over both tensors)
        both = expected.isnan() & got.isnan()  # NaN where the replay has NaN too (a fully masked row) agrees
        if bool(both.any()):
            expected, got = expected.masked_fill(both, 0.0), got.masked_fill(both, 0.0)
            n, d = float(expected.norm()), float((got - expected).norm())
    if math.isnan(d):
        return math.inf
    return d / n if n > 0 else (0.0 if d == 0 else math.inf)


def b_tensor(rp, ctx, name: str, like):
    """B's own recorded value of canonical op `name` as a tensor shaped like `like` (for a hypothesis that
    replays with one of B's other values), or None: not recorded in B, or of another shape."""
    value = ctx["b_value"](name) if ctx and "b_value" in ctx else None
    if value is None:
        return None
    t = rp.tensors([value])[0]
    return t if t.shape == like.shape else None
