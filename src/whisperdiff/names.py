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
import re
from dataclasses import dataclass
from typing import NamedTuple

from whisperdiff.errors import WhisperdiffError

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


class _Dims(NamedTuple):  # the encoder fields of openai-whisper's ModelDimensions
    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int


class _TextDims(NamedTuple):  # the fields of openai-whisper's ModelDimensions the decoder's ops need
    n_audio_ctx: int
    n_audio_state: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int
    n_vocab: int


ENCODER_OUTPUT = "ln_post"  # the last canonical op: what an encoder returns


def block_op(i: int, op: str) -> str:
    """The canonical name of op `op` in residual block `i`: block_op(0, "attn.q") == "blocks.0.attn.q"."""
    return f"blocks.{i}.{op}"


def block_input(i: int, prefix: str = "") -> str:
    """The canonical op block `i` reads: pos_embed for the first, else the block before's out (prefix "decoder."
    for the decoder's): block_input(2) == "blocks.1.out"."""
    return f"{prefix}pos_embed" if i == 0 else f"{prefix}{block_op(i - 1, 'out')}"


def split_block_op(name: str) -> tuple[int, str] | None:
    """block_op's inverse: split_block_op("blocks.0.attn.q") == (0, "attn.q"); None for an op outside a block."""
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    return (int(m.group(1)), m.group(2)) if m else None


def op_specs(dims, batch: int = 1) -> list[OpSpec]:
    """Every canonical op for a model of these dims, in encoder order.

    dims: openai-whisper's ModelDimensions, or any object or mapping with its n_mels, n_audio_* fields
    (a manifest's "dims"): computed from the numbers alone, so naming ops never imports whisper or torch."""
    if isinstance(dims, dict):
        dims = _Dims(**{k: dims[k] for k in _Dims._fields})
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


# ---------------------------------------------------------------------------------------------------
# The decoder (openai-whisper's TextDecoder), teacher-forced on a token sequence of length P.
#
# Every decoder op has a token-position axis P: a run with a KV cache (one token per step after the
# prompt) concatenates its steps along it, so an incremental run and a full-sequence run compare
# directly and a cache bug shows at the position where it acts. The one exception is cross-attention's
# K and V: computed once from the encoder output, their axis is the audio frame (T_audio).
#
#     ln_post                                [B, n_audio_ctx, n_audio_state]  the decoder's input (any encoder's)
#     decoder.tok_embed                      [B, P, C]        token embedding
#     decoder.pos_embed                      [B, P, C]        token + positional embedding
#     decoder.blocks.{i}.attn_ln ... out     [B, P, C]        as the encoder's blocks, plus:
#     decoder.blocks.{i}.attn.weights        [B, H, P, P]     causal softmax probabilities (zero past each row's position)
#     decoder.blocks.{i}.cross_attn_ln|q|wv|out|_residual     [B, P, C]
#     decoder.blocks.{i}.cross_attn.k|v      [B, T_audio, C]  from the encoder output, computed once
#     decoder.blocks.{i}.cross_attn.weights  [B, H, P, T_audio] (optional: large)
#     decoder.ln                             [B, P, C]        the final layer norm
#     decoder.logits                         [B, P, n_vocab]  tied to the token embedding
# ---------------------------------------------------------------------------------------------------

# A decoder block is an encoder block with cross-attention on the encoder output between its
# self-attention and its MLP (whisper/model.py ResidualAttentionBlock(cross_attention=True)).
_SELF_ATTN_OPS = BLOCK_OPS[: BLOCK_OPS.index("mlp_ln")]
DECODER_BLOCK_OPS = (
    *_SELF_ATTN_OPS,
    *(op.replace("attn", "cross_attn", 1) for op in _SELF_ATTN_OPS),
    *BLOCK_OPS[len(_SELF_ATTN_OPS) :],
)
OPTIONAL_DECODER_BLOCK_OPS = frozenset({"cross_attn.weights"})  # n_head * P * 1500 values per block
DECODER_INPUT = "ln_post"  # a decoder trace records its input (the encoder output) under the encoder's name


def decoder_block_op(i: int, op: str) -> str:
    """decoder_block_op(0, "cross_attn.k") == "decoder.blocks.0.cross_attn.k"."""
    return f"decoder.blocks.{i}.{op}"


def is_decoder_op(name: str) -> bool:
    return name.startswith("decoder.")


def decoder_op_specs(dims, n_tokens: int, batch: int = 1) -> list[OpSpec]:
    """Every canonical decoder op for a model of these dims, teacher-forced on n_tokens tokens, in order.
    dims: as op_specs (a manifest's "dims" mapping works: naming decoder ops imports neither whisper nor torch)."""
    if isinstance(dims, dict):
        dims = _TextDims(**{k: dims[k] for k in _TextDims._fields})
    b, p, c, h = batch, n_tokens, dims.n_text_state, dims.n_text_head
    s = dims.n_audio_ctx
    shapes = {
        "attn.weights": ((b, h, p, p), "B,H,P,P_k"),
        "cross_attn.k": ((b, s, c), "B,T_audio,C"),
        "cross_attn.v": ((b, s, c), "B,T_audio,C"),
        "cross_attn.weights": ((b, h, p, s), "B,H,P,T_audio"),
        "mlp.fc1": ((b, p, 4 * c), "B,P,4C"),
        "mlp.gelu": ((b, p, 4 * c), "B,P,4C"),
    }
    specs = [
        OpSpec(DECODER_INPUT, (b, s, dims.n_audio_state), "B,T_audio,C"),
        OpSpec("decoder.tok_embed", (b, p, c), "B,P,C"),
        OpSpec("decoder.pos_embed", (b, p, c), "B,P,C"),
    ]
    for i in range(dims.n_text_layer):
        for op in DECODER_BLOCK_OPS:
            shape, layout = shapes.get(op, ((b, p, c), "B,P,C"))
            specs.append(OpSpec(decoder_block_op(i, op), shape, layout, optional=op in OPTIONAL_DECODER_BLOCK_OPS))
    specs.append(OpSpec("decoder.ln", (b, p, c), "B,P,C"))
    specs.append(OpSpec("decoder.logits", (b, p, dims.n_vocab), "B,P,V"))
    return specs


def position_axis(layout: str | None) -> int | None:
    """Index of the token-position axis P in a decoder layout ("B,H,P,P_k" -> 2); None when it has none."""
    parts = (layout or "").split(",")
    return parts.index("P") if "P" in parts else None


def select_decoder_taps(dims, taps: str | None = "default", n_tokens: int = 1) -> list[str]:
    """As select_taps, for the decoder: "default" (all but cross-attention probabilities), "all",
    "output" (logits only) or names/globs. The input (ln_post) is always recorded."""
    specs = decoder_op_specs(dims, n_tokens)
    names = [s.name for s in specs]
    taps = (taps or "default").strip()
    if taps == "default":
        return [s.name for s in specs if not s.optional]
    if taps == "all":
        return names
    if taps == "output":
        return [DECODER_INPUT, "decoder.logits"]
    patterns = [p.strip() for p in taps.split(",") if p.strip()]
    for p in patterns:
        if not fnmatch.filter(names, p):
            raise WhisperdiffError(
                f"tap pattern {p!r} matches no decoder op of this model; see `whisperdiff ops --decoder`"
            )
    return [n for n in names if n == DECODER_INPUT or any(fnmatch.fnmatchcase(n, p) for p in patterns)]
