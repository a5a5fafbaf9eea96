"""Replay recipes for the decoder's canonical ops: openai-whisper's TextDecoder, teacher-forced on P tokens.

A decoder block is an encoder block with a causal self-attention and a cross-attention on the encoder
output (ln_post) between it and the MLP, so every decoder op is one of the encoder's op types: the
hypotheses of that type (hypotheses.py) run on it unchanged, position by position. What differs is
carried in the recipe's params: the self-attention's causal mask (`mask: "causal"`), the prompt length of
an incremental (KV cache) run, the positional table, and the tied output projection (`decoder.logits` is
a linear op whose weight is the token embedding, with the last block's output as a second input so that
"logits before the final layer norm" can be replayed).
"""

from __future__ import annotations

import math
import re

from whisperdiff.names import DECODER_BLOCK_OPS

# Which weight each linear decoder op uses (openai-whisper's state-dict names, inside decoder.blocks.{i}).
DECODER_LINEAR_PARAMS = {
    "attn.q": "attn.query",
    "attn.k": "attn.key",
    "attn.v": "attn.value",
    "attn.out": "attn.out",
    "cross_attn.q": "cross_attn.query",
    "cross_attn.k": "cross_attn.key",
    "cross_attn.v": "cross_attn.value",
    "cross_attn.out": "cross_attn.out",
    "mlp.fc1": "mlp.0",
    "mlp.fc2": "mlp.2",
}


def causal_mask(torch, n_q: int, n_k: int, shift: int = 0):
    """Additive mask: query p sees keys 0..p+shift (shift 0: Whisper's causal mask)."""
    return torch.full((n_q, n_k), -math.inf).triu(1 + shift)


def decoder_recipe(rp, op: str, recipe_cls, context: dict | None = None):
    """The OpRecipe of one decoder op (None for ops with no replay: the token embedding reads tokens)."""
    ctx = context or {}
    n_layer = rp.dims.n_text_layer
    if op == "decoder.pos_embed":
        pe = rp.w["decoder.positional_embedding"]
        return recipe_cls(
            op,
            "positional",
            ("decoder.tok_embed",),
            lambda x: x + pe[: x.shape[1]],
            {"table": "decoder.positional_embedding", "channels_last": True},
        )
    if op == "decoder.ln":
        return recipe_cls(
            op,
            "norm",
            (f"decoder.blocks.{n_layer - 1}.out",),
            lambda x: rp.layer_norm("decoder.ln", x),
            {"name": "decoder.ln"},
        )
    if op == "decoder.logits":
        last = f"decoder.blocks.{n_layer - 1}.out"
        return recipe_cls(
            op,
            "linear",
            ("decoder.ln", last),
            lambda x, _before_ln: rp.linear("decoder.token_embedding", x),
            {"name": "decoder.token_embedding", "tied": True, "before": last},
        )
    m = re.fullmatch(r"decoder\.blocks\.(\d+)\.(.+)", op)
    if not m or m.group(2) not in DECODER_BLOCK_OPS:
        return None
    i, part = int(m.group(1)), m.group(2)
    p = f"decoder.blocks.{i}"
    b = lambda s: f"{p}.{s}"  # noqa: E731
    x_in = "decoder.pos_embed" if i == 0 else f"decoder.blocks.{i - 1}.out"
    prompt = ctx.get("prompt_length")
    if part in ("attn_ln", "cross_attn_ln", "mlp_ln"):
        x = {"attn_ln": x_in, "cross_attn_ln": b("attn_residual"), "mlp_ln": b("cross_attn_residual")}[part]
        return recipe_cls(op, "norm", (x,), lambda x: rp.layer_norm(b(part), x), {"name": b(part)})
    if part in DECODER_LINEAR_PARAMS:
        name = b(DECODER_LINEAR_PARAMS[part])
        x = {
            "attn.out": b("attn.wv"),
            "cross_attn.q": b("cross_attn_ln"),
            "cross_attn.k": "ln_post",
            "cross_attn.v": "ln_post",
            "cross_attn.out": b("cross_attn.wv"),
            "mlp.fc1": b("mlp_ln"),
            "mlp.fc2": b("mlp.gelu"),
        }.get(part, b("attn_ln"))
        return recipe_cls(op, "linear", (x,), lambda x: rp.linear(name, x), {"name": name, "block": i})
    if part in ("attn.weights", "attn.wv"):  # causal self-attention over the P teacher-forced tokens
        qkv = (b("attn.q"), b("attn.k")) if part == "attn.weights" else (b("attn.q"), b("attn.k"), b("attn.v"))
        kind = "attention_weights" if part == "attn.weights" else "attention"
        fn = rp.attention_weights if part == "attn.weights" else rp.attention

        def causal(*xs, fn=fn):
            return fn(*xs, mask=causal_mask(rp.torch, xs[0].shape[1], xs[1].shape[1]))

        return recipe_cls(op, kind, qkv, causal, {"mask": "causal", "prompt_length": prompt, "block": i})
    if part in ("cross_attn.weights", "cross_attn.wv"):
        weights = part == "cross_attn.weights"
        qkv = (b("cross_attn.q"), b("cross_attn.k")) + (() if weights else (b("cross_attn.v"),))
        fn = rp.attention_weights if weights else rp.attention
        return recipe_cls(op, "attention_weights" if weights else "attention", qkv, fn, {"cross": True, "block": i})
    if part == "mlp.gelu":
        return recipe_cls(op, "activation", (b("mlp.fc1"),), rp.gelu)
    if part == "attn_residual":
        return recipe_cls(op, "residual", (x_in, b("attn.out")), lambda x, y: x + y)
    if part == "cross_attn_residual":
        return recipe_cls(op, "residual", (b("attn_residual"), b("cross_attn.out")), lambda x, y: x + y)
    return recipe_cls(op, "residual", (b("cross_attn_residual"), b("mlp.fc2")), lambda x, y: x + y)  # out
