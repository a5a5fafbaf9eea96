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

    def first_op_for(self, n_layer: int) -> str:
        return self.first_op.format(b=target_block(n_layer))


def _set(**values):
    def apply(c):
        for key, value in values.items():
            setattr(c, key, value(c.n_layer) if callable(value) else value)

    return apply


FAULTS: dict[str, Fault] = {
    f.name: f
    for f in [
        Fault("mel-frontend", "mel", "log-mel from another audio library's normalisation (power_to_db, ref=max, [-80, 0] dB) instead of Whisper's frontend", mel=librosa_style_mel, diagnosis="input_mismatch"),
        Fault("conv-middle-tap", "conv1", "conv1 uses only the centre kernel tap", _set(conv1_taps=(0.0, 1.0, 0.0)), diagnosis="conv_kernel"),
        Fault("no-pos-embed", "pos_embed", "positional embedding not added", _set(pos_scale=0.0), diagnosis="positional"),
        Fault("ln-eps", "blocks.0.attn_ln", "layer-norm epsilon 1e-3 instead of 1e-5", _set(ln_eps=1e-3), diagnosis="layer_norm_eps"),
        Fault("attn-scale", "blocks.0.attn.weights", "scores scaled by 1/d_head instead of 1/sqrt(d_head) (shows at blocks.0.attn.wv when probabilities are not tapped)",
              lambda c: setattr(c, "qk_scale", (c.n_state // c.n_head) ** -0.5), diagnosis="attention_scale"),  # fmt: skip
        Fault("gelu-tanh", "blocks.0.mlp.gelu", "tanh-approximate GELU in the MLP", _set(gelu_tanh=1.0), diagnosis="activation_approx"),
        Fault("kv-swap", "blocks.{b}.attn.k", "key and value projections swapped in one block", _set(kv_swap=lambda n: _per_block(n, 1.0, 0.0)), diagnosis="swapped_projections"),
        Fault("drop-residual", "blocks.{b}.out", "one block's MLP residual dropped", _set(mlp_residual=lambda n: _per_block(n, 0.0, 1.0)), diagnosis="missing_residual"),
        Fault("half-precision-block", "blocks.{b}.attn_ln", "one block's activations stored in float16", _set(half_block=lambda n: _per_block(n, 1.0, 0.0)), diagnosis="precision"),
        Fault("missing-ln-post", "ln_post", "the final layer norm is skipped", _set(ln_post_skip=1.0), diagnosis="missing_op"),
        Fault("variance-rescale", "ln_post", "ln_post replaced by one whole-tensor rescale to mean 0, std 1: the statistics match, the features do not", _set(ln_post_rescale=1.0), diagnosis="scale_mismatch"),
    ]
}  # fmt: skip


def get_faults(names: list[str] | None) -> list[Fault]:
    faults = []
    for name in names or []:
        if name not in FAULTS:
            raise WhisperdiffError(f"unknown fault {name!r}; `whisperdiff faults` lists them: {', '.join(FAULTS)}")
        faults.append(FAULTS[name])
    return faults
