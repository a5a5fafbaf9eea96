"""names.py from dims alone (a plain mapping, no model) and inputs/dims.py."""

import pytest

from whisperdiff.errors import WhisperdiffError
from whisperdiff.inputs.dims import dims_problem, expected_shapes, preset_dims
from whisperdiff.names import (
    BLOCK_OPS,
    DECODER_BLOCK_OPS,
    block_op,
    decoder_block_op,
    decoder_op_specs,
    is_decoder_op,
    op_names,
    op_specs,
    position_axis,
    select_decoder_taps,
    select_taps,
)

DIMS = {
    "n_mels": 80,
    "n_audio_ctx": 6,
    "n_audio_state": 8,
    "n_audio_head": 2,
    "n_audio_layer": 2,
    "n_vocab": 11,
    "n_text_ctx": 4,
    "n_text_state": 8,
    "n_text_head": 2,
    "n_text_layer": 1,
}


class Dims:  # any object with the fields works as dims, as ModelDimensions does
    def __init__(self, **kw):
        self.__dict__.update(kw)


def test_op_specs_of_a_small_encoder():
    specs = op_specs(DIMS)
    assert len(specs) == 6 + 2 * len(BLOCK_OPS) + 1
    by = {s.name: s for s in specs}
    assert [s.name for s in specs[:6]] == ["mel", "conv1", "conv1.gelu", "conv2", "conv2.gelu", "pos_embed"]
    assert specs[-1].name == "ln_post"
    assert by["mel"].shape == (1, 80, 12) and by["mel"].layout == "B,n_mels,T_in"
    assert by["conv2"].shape == (1, 8, 6) and by["conv2"].layout == "B,C,T"
    assert by["blocks.1.attn.weights"].shape == (1, 2, 6, 6) and by["blocks.1.attn.weights"].optional
    assert by["blocks.0.mlp.fc1"].shape == (1, 6, 32)
    assert by["blocks.0.out"].shape == (1, 6, 8) and not by["blocks.0.out"].optional
    assert op_specs(DIMS, batch=3)[0].shape == (3, 80, 12)
    assert op_specs(Dims(**DIMS)) == specs


def test_op_names_without_the_optional_ops():
    names = op_names(DIMS, include_optional=False)
    assert "blocks.0.attn.weights" not in names and "blocks.0.attn.wv" in names
    assert len(op_names(DIMS)) == len(names) + 2


def test_select_taps_presets_and_globs():
    assert select_taps(DIMS) == op_names(DIMS, include_optional=False)
    assert select_taps(DIMS, None) == select_taps(DIMS, "default")
    assert select_taps(DIMS, "all") == op_names(DIMS)
    assert select_taps(DIMS, "output") == ["mel", "ln_post"]
    assert select_taps(DIMS, "blocks.1.attn.*, ln_post") == [
        "mel",
        *(block_op(1, op) for op in BLOCK_OPS if op.startswith("attn.")),
        "ln_post",
    ]
    with pytest.raises(WhisperdiffError, match="'blocks.9.\\*' matches no op"):
        select_taps(DIMS, "blocks.9.*")


def test_decoder_specs_and_taps():
    d = Dims(**DIMS)
    specs = {s.name: s for s in decoder_op_specs(d, n_tokens=3)}
    assert list(specs)[:3] == ["ln_post", "decoder.tok_embed", "decoder.pos_embed"]
    assert list(specs)[-2:] == ["decoder.ln", "decoder.logits"]
    assert len(specs) == 3 + len(DECODER_BLOCK_OPS) + 2
    assert specs["ln_post"].shape == (1, 6, 8)
    assert specs["decoder.blocks.0.cross_attn.k"].shape == (1, 6, 8)  # over the audio frames, not the tokens
    assert specs["decoder.blocks.0.attn.weights"].shape == (1, 2, 3, 3)
    assert specs["decoder.blocks.0.cross_attn.weights"].optional
    assert specs["decoder.logits"].shape == (1, 3, 11)
    assert select_decoder_taps(d, "output") == ["ln_post", "decoder.logits"]
    assert select_decoder_taps(d, "decoder.ln") == ["ln_post", "decoder.ln"]
    assert "decoder.blocks.0.cross_attn.weights" not in select_decoder_taps(d)
    with pytest.raises(WhisperdiffError, match="matches no decoder op"):
        select_decoder_taps(d, "decoder.blocks.5.*")


def test_name_helpers():
    assert block_op(0, "attn.q") == "blocks.0.attn.q"
    assert decoder_block_op(2, "cross_attn.k") == "decoder.blocks.2.cross_attn.k"
    assert is_decoder_op("decoder.ln") and not is_decoder_op("ln_post")
    assert position_axis("B,H,P,P_k") == 2
    assert position_axis("B,T,C") is None and position_axis(None) is None


def test_dims_problem():
    assert dims_problem(DIMS) is None
    assert dims_problem(preset_dims("large-v3")) is None
    assert dims_problem([1]) == "dims must be a mapping of the ModelDimensions fields"
    assert dims_problem({k: v for k, v in DIMS.items() if k != "n_vocab"}) == "dims lack n_vocab"
    assert dims_problem({**DIMS, "n_extra": 1}) == "dims have unknown n_extra"
    assert dims_problem({**DIMS, "n_audio_layer": True}) == "n_audio_layer=True is not an integer"
    assert "80 or 128" in dims_problem({**DIMS, "n_mels": 100})
    assert dims_problem({**DIMS, "n_audio_ctx": 1501}) == "n_audio_ctx=1501 is out of range (1..1500)"
    assert dims_problem({**DIMS, "n_audio_head": 3}) == "the state width must be a multiple of the head count"


def test_expected_shapes_of_a_small_model():
    shapes = expected_shapes(Dims(**DIMS))
    assert shapes["encoder.conv1.weight"] == (8, 80, 3)
    assert shapes["encoder.blocks.1.attn.query.weight"] == (8, 8)
    assert "encoder.blocks.1.attn.key.bias" not in shapes  # whisper's key projection has no bias
    assert shapes["encoder.blocks.0.mlp.0.weight"] == (32, 8)
    assert shapes["decoder.blocks.0.cross_attn.value.bias"] == (8,)
    assert shapes["decoder.token_embedding.weight"] == (11, 8)
    per_encoder_block = 7 + 4 + 4  # q, k, v, out with biases (k has none); 2 layer norms; 2 mlp linears
    assert sum(k.startswith("encoder.blocks.0.") for k in shapes) == per_encoder_block


def test_preset_dims():
    assert preset_dims("base.en")["n_vocab"] == 51864
    assert preset_dims("turbo")["n_text_layer"] == 4 and preset_dims("turbo")["n_mels"] == 128
    with pytest.raises(KeyError):
        preset_dims("large.en")
