"""Canonical op names: the one vocabulary every part of whisperdiff speaks.

Every runner records, every trace stores and every comparison aligns activations
under these names, in this (encoder) order. Shapes and layouts are openai-whisper's
own, batch first, so a torch trace needs no transposes; other runners convert to them.

    mel                       [B, n_mels, 2*n_ctx]     log-mel input (Whisper's frontend)
    conv1, conv1.gelu         [B, n_state, 2*n_ctx]    channels first, as nn.Conv1d
    conv2, conv2.gelu         [B, n_state, n_ctx]      stride 2 halves time
    pos_embed                 [B, n_ctx, n_state]      after permute and the positional add
    blocks.{i}.attn_ln        [B, n_ctx, n_state]
    blocks.{i}.attn.q|k|v     [B, n_ctx, n_state]      projections, heads not split
    blocks.{i}.attn.weights   [B, n_head, n_ctx, n_ctx] softmax probabilities (optional: large)
    blocks.{i}.attn.wv        [B, n_ctx, n_state]      attention output before the out projection
    blocks.{i}.attn.out       [B, n_ctx, n_state]      after the out projection
    blocks.{i}.attn_residual  [B, n_ctx, n_state]      x + attn.out
    blocks.{i}.mlp_ln         [B, n_ctx, n_state]
    blocks.{i}.mlp.fc1|gelu   [B, n_ctx, 4*n_state]
    blocks.{i}.mlp.fc2        [B, n_ctx, n_state]
    blocks.{i}.out            [B, n_ctx, n_state]      attn_residual + mlp.fc2
    ln_post                   [B, n_ctx, n_state]      the encoder's output
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

# Ops inside each residual block, in execution order.
BLOCK_OPS = (
    "attn_ln",
    "attn.q",
    "attn.k",
    "attn.v",
    "attn.weights",
    "attn.wv",
    "attn.out",
    "attn_residual",
    "mlp_ln",
    "mlp.fc1",
    "mlp.gelu",
    "mlp.fc2",
    "out",
)
# Left out of the default tap set: n_head * n_ctx^2 values per block (54 MB per block for tiny).
OPTIONAL_BLOCK_OPS = frozenset({"attn.weights"})

TAP_PRESETS = ("default", "all", "output")


@dataclass(frozen=True)
class OpSpec:
    name: str
    shape: tuple[int, ...]
    layout: str
    optional: bool = False


def block_op(i: int, op: str) -> str:
    """The canonical name of op `op` in residual block `i`: block_op(0, "attn.q") == "blocks.0.attn.q"."""
    return f"blocks.{i}.{op}"


def op_specs(dims, batch: int = 1) -> list[OpSpec]:
    """Every canonical op for a model of these dims (openai-whisper ModelDimensions), in encoder order."""
    b, c, t, h = batch, dims.n_audio_state, dims.n_audio_ctx, dims.n_audio_head
    specs = [
        OpSpec("mel", (b, dims.n_mels, 2 * t), "B,n_mels,T_in"),
        OpSpec("conv1", (b, c, 2 * t), "B,C,T_in"),
        OpSpec("conv1.gelu", (b, c, 2 * t), "B,C,T_in"),
        OpSpec("conv2", (b, c, t), "B,C,T"),
        OpSpec("conv2.gelu", (b, c, t), "B,C,T"),
        OpSpec("pos_embed", (b, t, c), "B,T,C"),
    ]
    block_shapes = {
        "attn.weights": ((b, h, t, t), "B,H,T_q,T_k"),
        "mlp.fc1": ((b, t, 4 * c), "B,T,4C"),
        "mlp.gelu": ((b, t, 4 * c), "B,T,4C"),
    }
    for i in range(dims.n_audio_layer):
        for op in BLOCK_OPS:
            shape, layout = block_shapes.get(op, ((b, t, c), "B,T,C"))
            specs.append(OpSpec(block_op(i, op), shape, layout, optional=op in OPTIONAL_BLOCK_OPS))
    specs.append(OpSpec("ln_post", (b, t, c), "B,T,C"))
    return specs


def op_names(dims, *, include_optional: bool = True) -> list[str]:
    return [s.name for s in op_specs(dims) if include_optional or not s.optional]


def select_taps(dims, taps: str | None = "default") -> list[str]:
    """Resolve a tap selection to canonical names in encoder order.

    "default": every op except the optional attention probabilities; "all": every op;
    "output": only ln_post (the untapped mode); otherwise a comma-separated list of
    names or globs ("blocks.0.*,ln_post"). `mel` is always recorded: it is the input.
    """
    from whisperdiff.errors import WhisperdiffError

    specs = op_specs(dims)
    taps = (taps or "default").strip()
    if taps == "default":
        chosen = [s.name for s in specs if not s.optional]
    elif taps == "all":
        chosen = [s.name for s in specs]
    elif taps == "output":
        chosen = ["mel", "ln_post"]
    else:
        patterns = [p.strip() for p in taps.split(",") if p.strip()]
        names = [s.name for s in specs]
        for p in patterns:
            if not fnmatch.filter(names, p):
                raise WhisperdiffError(
                    f"tap pattern {p!r} matches no op of this model; "
                    f"see `whisperdiff ops` for the names, or use one of {', '.join(TAP_PRESETS)}"
                )
        chosen = [n for n in names if n == "mel" or any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    return chosen
