"""Where openai-whisper's modules hold each canonical op: the hook tables of both torch runners (encoder and
decoder), derived from names.py's op lists and one small table of the ops whose module is named otherwise.

An op's value is a module's output ("out": a forward hook) or its input ("in": a forward pre-hook).
Block ops are relative to their block; a cross-attention op is its self-attention op in `cross_attn`;
a residual sum (x + a sublayer's output) is the input of the next op's module (the next layer norm);
any op not in the table is the output of the module of the same name (attn_ln, attn.out, mlp_ln,
conv1, conv2, ln_post, ln). Two ops are computed by the runner from what the hook sees (`compute`).
"""

from __future__ import annotations

from typing import NamedTuple

IN, OUT = "in", "out"

# canonical op -> (openai-whisper module path, side), where they differ; shared by the encoder and the decoder.
WHISPER_MODULES = {
    "conv1.gelu": ("conv2", IN),  # AudioEncoder.forward applies GELU between the convs
    "conv2.gelu": ("conv2", OUT),  # the same F.gelu call forward makes next, on the same tensor
    "pos_embed": ("blocks.0", IN),  # after the positional add: the first block's input
    "tok_embed": ("token_embedding", OUT),
    "logits": ("", OUT),  # what TextDecoder.forward returns
    "attn.q": ("attn.query", OUT),
    "attn.k": ("attn.key", OUT),
    "attn.v": ("attn.value", OUT),
    "attn.weights": ("attn.out", IN),  # computed from q and k just before the out projection runs
    "attn.wv": ("attn.out", IN),
    "mlp.fc1": ("mlp.0", OUT),
    "mlp.gelu": ("mlp.1", OUT),
    "mlp.fc2": ("mlp.2", OUT),
    "out": ("", OUT),  # the block's own output
}
# Ops whose value the runner computes from the hooked tensor(s): F.gelu, or the attention probabilities
# (the SDPA path never materialises them).
COMPUTED = {"conv2.gelu": "gelu", "attn.weights": "weights"}


class Hook(NamedTuple):
    op: str  # canonical name
    module: str  # path under the encoder or decoder, as nn.Module.get_submodule takes it ("": itself)
    side: str  # IN or OUT
    compute: str | None = None  # COMPUTED's kind


def _module(op: str, block_ops: tuple[str, ...]) -> tuple[str, str]:
    if op.endswith("_residual"):
        return _module(block_ops[block_ops.index(op) + 1], block_ops)[0], IN
    if op.startswith("cross_"):
        module, side = _module(op.removeprefix("cross_"), block_ops)
        return f"cross_{module}", side
    return WHISPER_MODULES.get(op, (op, OUT))


def hook_table(ops: list[str], block_ops: tuple[str, ...], prefix: str = "") -> list[Hook]:
    """The hook of every op in `ops` (a model's full canonical list, in order, without its input), whose
    blocks hold `block_ops`; `prefix` is stripped first ("decoder." for the decoder's ops). Hooks come in
    canonical order: hooks on one module then fire in that order."""
    local = [name.removeprefix(prefix) for name in ops]
    has_blocks = any(n.startswith("blocks.") for n in local)
    table = []
    for j, (name, op) in enumerate(zip(ops, local, strict=True)):
        block = ""
        if op.startswith("blocks."):
            _, i, op = op.split(".", 2)
            block = f"blocks.{i}"
        module, side = _module(op, block_ops)
        if module == "blocks.0" and not has_blocks:  # no blocks: the input of whatever comes next
            module = _module(local[j + 1], block_ops)[0]
        path = ".".join(p for p in (block, module) if p)
        table.append(Hook(name, path, side, COMPUTED.get(op.removeprefix("cross_"))))
    return table
