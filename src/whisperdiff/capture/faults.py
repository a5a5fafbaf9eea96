"""The catalogue of injectable porting bugs: the mistakes real Whisper ports made, planted on purpose
so every later part of whisperdiff can prove it finds them (`--inject NAME`, `whisperdiff faults`).

Every encoder-side bug is a run-time control of the one compiled MAX graph (max_encoder.Controls):
injecting it never recompiles. `mel-frontend` acts on the input, so it works with any --impl.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from whisperdiff.errors import WhisperdiffError


def target_block(n_layer: int) -> int:
    """The block that single-block bugs hit: the second one (the first when there is only one)."""
    return min(1, n_layer - 1)


def _per_block(n_layer: int, value: float, default: float) -> list[float]:
    flags = [default] * n_layer
    flags[target_block(n_layer)] = value
    return flags


def librosa_style_mel(mel: np.ndarray) -> np.ndarray:
    """What a port that used another audio library fed the encoder: power_to_db(ref=max), range [-80, 0] dB.

    Whisper's frontend gives m = (max(log10 S, max - 8) + 4) / 4, so log10 S = 4m - 4 where unclamped."""
    db = 40.0 * (mel - mel.max())  # 10 * log10(S / max S)
    return np.maximum(db, -80.0).astype(np.float32)


@dataclass(frozen=True)
class Fault:
    name: str
    first_op: str  # where it first shows; {b} is the target block
    description: str
    controls: Callable | None = None  # (Controls) -> None, sets run-time switches
    mel: Callable[[np.ndarray], np.ndarray] | None = None  # input-side bug
    diagnosis: str = ""  # the finding kind `compare` names it by (tests/test_max_encoder.py checks)
    decoder: Callable | None = None  # (max_decoder.DecoderControls) -> None: a decoder bug
    first_position: int | str | None = (
        None  # decoder bugs: the first token position it acts at ("prompt": the first cached step)
    )
    depends_on: str = ""  # input-dependent faults: the clip property that decides whether it shows (corpus.PROPERTIES)

    def first_op_for(self, n_layer: int) -> str:
        return self.first_op.format(b=target_block(n_layer))

    def first_position_for(self, prompt_length: int) -> int | None:
        return prompt_length if self.first_position == "prompt" else self.first_position


def _set(**values):
    def apply(c):
        for key, value in values.items():
            setattr(c, key, value(c.n_layer) if callable(value) else value)

    return apply


FAULTS: dict[str, Fault] = {
    f.name: f
    for f in [
        Fault(
            "mel-frontend",
            "mel",
            "log-mel from another audio library's normalisation (power_to_db, ref=max, [-80, 0] dB) instead of Whisper's frontend",
            mel=librosa_style_mel,
            diagnosis="input_mismatch",
        ),
        Fault(
            "conv-middle-tap",
            "conv1",
            "conv1 uses only the centre kernel tap",
            _set(conv1_taps=(0.0, 1.0, 0.0)),
            diagnosis="conv_kernel",
        ),
        Fault(
            "no-pos-embed", "pos_embed", "positional embedding not added", _set(pos_scale=0.0), diagnosis="positional"
        ),
        Fault(
            "ln-eps",
            "blocks.0.attn_ln",
            "layer-norm epsilon 1e-3 instead of 1e-5",
            _set(ln_eps=1e-3),
            diagnosis="layer_norm_eps",
        ),
        Fault(
            "attn-scale",
            "blocks.0.attn.weights",
            "scores scaled by 1/d_head instead of 1/sqrt(d_head) (shows at blocks.0.attn.wv when probabilities are not tapped)",
            lambda c: setattr(c, "qk_scale", (c.n_state // c.n_head) ** -0.5),
            diagnosis="attention_scale",
        ),
        Fault(
            "gelu-tanh",
            "blocks.0.mlp.gelu",
            "tanh-approximate GELU in the MLP",
            _set(gelu_tanh=1.0),
            diagnosis="activation_approx",
        ),
        Fault(
            "kv-swap",
            "blocks.{b}.attn.k",
            "key and value projections swapped in one block",
            _set(kv_swap=lambda n: _per_block(n, 1.0, 0.0)),
            diagnosis="swapped_projections",
        ),
        Fault(
            "drop-residual",
            "blocks.{b}.out",
            "one block's MLP residual dropped",
            _set(mlp_residual=lambda n: _per_block(n, 0.0, 1.0)),
            diagnosis="missing_residual",
        ),
        Fault(
            "half-precision-block",
            "blocks.{b}.attn_ln",
            "one block's activations stored in float16",
            _set(half_block=lambda n: _per_block(n, 1.0, 0.0)),
            diagnosis="precision",
        ),
        Fault(
            "missing-ln-post",
            "ln_post",
            "the final layer norm is skipped",
            _set(ln_post_skip=1.0),
            diagnosis="missing_op",
        ),
        Fault(
            "variance-rescale",
            "ln_post",
            "ln_post replaced by one whole-tensor rescale to mean 0, std 1: the statistics match, the features do not",
            _set(ln_post_rescale=1.0),
            diagnosis="scale_mismatch",
        ),
    ]
}

# Decoder bugs: run-time switches of the one compiled MAX decoder graph (max_decoder.DecoderControls);
# `trace-decoder --inject NAME`. Kept apart from FAULTS (the encoder's), which `trace --inject` takes.
DECODER_FAULTS: dict[str, Fault] = {
    f.name: f
    for f in [
        Fault(
            "kv-cache-off-by-one",
            "decoder.blocks.0.attn.weights",
            "each cached step attends to the KV cache without its newest entry (the cache read one short)",
            decoder=_set(kv_off_by_one=1.0),
            diagnosis="kv_cache",
            first_position="prompt",
        ),
        Fault(
            "pos-restart",
            "decoder.pos_embed",
            "positions restart at 0 at every decoding step",
            decoder=_set(pos_restart=1.0),
            diagnosis="positional",
            first_position="prompt",
        ),
        Fault(
            "no-causal-mask",
            "decoder.blocks.0.attn.weights",
            "self-attention without the causal mask: a position sees the tokens after it",
            decoder=_set(no_causal_mask=1.0),
            diagnosis="causal_mask",
            first_position=0,
        ),
        Fault(
            "cross-kv-block0",
            "decoder.blocks.{b}.cross_attn.k",
            "every block's cross-attention uses block 0's K/V projections of the encoder output",
            decoder=_set(cross_kv_block0=1.0),
            diagnosis="wrong_weight",
            first_position=0,
        ),
        Fault(
            "skip-decoder-ln",
            "decoder.ln",
            "the decoder's final layer norm is skipped",
            decoder=_set(ln_skip=1.0),
            diagnosis="missing_op",
            first_position=0,
        ),
    ]
}


FLOAT16_MAX = 65504.0
PCM_POWER_GAIN = 1024.0  # the power gain of samples pre-scaled by 32


def float16_power_mel(mel: np.ndarray) -> np.ndarray:
    """A port that holds the mel power in float16 after pre-scaling its samples by 32: the power saturates
    at 65504, so the log-mel is capped at (log10(65504 / 1024) + 4) / 4 = 1.45. Speech at a normal level
    stays below (the shipped clip peaks at 1.27); loud and clipped audio does not."""
    cap = np.float32((np.log10(FLOAT16_MAX / PCM_POWER_GAIN) + 4) / 4)
    return np.minimum(mel, cap)


SHORT_INPUT_PADDING = 0.95  # the share of the window that is padding above which the short-input path runs


def short_input_zero_pad(mel: np.ndarray) -> np.ndarray:
    """A port whose short-input path (padding over 95% of the 30 s window, clips under ~1.5 s) pads the
    log-mel with zeros instead of Whisper's floor; it finds the padding as the trailing frames at the floor."""
    at_floor = (mel == mel.min()).all(axis=-2).reshape(-1, mel.shape[-1])[0]
    trailing = len(at_floor) if at_floor.all() else int(np.argmin(at_floor[::-1]))
    if trailing <= SHORT_INPUT_PADDING * mel.shape[-1]:
        return mel
    out = mel.copy()
    out[..., mel.shape[-1] - trailing :] = 0.0
    return out


# Input-dependent bugs: invisible on one ordinary clip (the shipped one included), found by sweeping a
# corpus (`whisperdiff sweep --inject NAME`), which names the clip property each depends on. Kept apart
# from FAULTS, whose every entry shows on the shipped clip (tests/test_max_encoder.py checks each).
INPUT_FAULTS: dict[str, Fault] = {
    f.name: f
    for f in [
        Fault(
            "fp16-mel-overflow",
            "mel",
            "mel power held in float16 after a x32 sample gain: it saturates at 65504 on loud input only",
            mel=float16_power_mel,
            diagnosis="input_mismatch",
            depends_on="loudness_dbfs",
        ),
        Fault(
            "short-pad-zeros",
            "mel",
            "clips that are over 95% padding get their log-mel padded with zeros instead of the floor",
            mel=short_input_zero_pad,
            diagnosis="input_mismatch",
            depends_on="padding_share",
        ),
    ]
}


def get_faults(names: list[str] | None, part: str = "encoder") -> list[Fault]:
    """The named faults; part "encoder" refuses decoder faults (and "decoder" encoder ones)."""
    faults, every = [], {**FAULTS, **INPUT_FAULTS, **DECODER_FAULTS}
    for name in names or []:
        if name not in every:
            raise WhisperdiffError(f"unknown fault {name!r}; `whisperdiff faults` lists them: {', '.join(every)}")
        if (every[name].decoder is not None) != (part == "decoder"):
            other = (
                "trace-decoder --inject" if part == "encoder" else "trace --inject (or trace-decoder --encoder-inject)"
            )
            raise WhisperdiffError(f"{name!r} is not an {part} fault; use it with `whisperdiff {other}`")
        faults.append(every[name])
    return faults
