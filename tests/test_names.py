import fnmatch

import pytest

import whisperdiff as wd
from whisperdiff.inputs.models import PRESETS, preset_dims
from whisperdiff.names import BLOCK_OPS, block_input, block_op, split_block_op


def test_tiny_op_list_is_in_encoder_order(tiny_en):
    names = wd.op_names(tiny_en.dims)
    assert names[:6] == ["mel", "conv1", "conv1.gelu", "conv2", "conv2.gelu", "pos_embed"]
    assert names[6 : 6 + len(BLOCK_OPS)] == [f"blocks.0.{op}" for op in BLOCK_OPS]
    assert names[-2:] == ["blocks.3.out", "ln_post"]
    assert len(names) == 6 + 4 * len(BLOCK_OPS) + 1


def test_shapes_follow_openai_whisper_layouts(tiny_en):
    specs = {s.name: s for s in wd.op_specs(tiny_en.dims)}
    assert specs["mel"].shape == (1, 80, 3000)
    assert specs["conv1"].shape == (1, 384, 3000) and specs["conv1"].layout == "B,C,T_in"
    assert specs["conv2.gelu"].shape == (1, 384, 1500)
    assert specs["pos_embed"].shape == (1, 1500, 384) and specs["pos_embed"].layout == "B,T,C"
    assert specs["blocks.2.attn.weights"].shape == (1, 6, 1500, 1500) and specs["blocks.2.attn.weights"].optional
    assert specs["blocks.2.mlp.fc1"].shape == (1, 1500, 1536)
    assert [s.name for s in specs.values() if s.optional] == [f"blocks.{i}.attn.weights" for i in range(4)]


def test_large_v3_has_128_mel_bins_and_32_blocks():
    from whisper.model import ModelDimensions

    dims = ModelDimensions(**preset_dims("large-v3"))
    specs = wd.op_specs(dims)
    assert specs[0].shape == (1, 128, 3000)
    assert specs[-1].shape == (1, 1500, 1280)
    assert sum(1 for s in specs if s.name.endswith(".attn.q")) == 32


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_has_consistent_dims(name):
    d = preset_dims(name)
    assert d["n_audio_state"] % d["n_audio_head"] == 0
    assert d["n_mels"] == (128 if name in ("large-v3", "large-v3-turbo", "turbo") else 80)


def test_tap_selection(tiny_en):
    default = wd.select_taps(tiny_en.dims, "default")
    everything = wd.select_taps(tiny_en.dims, "all")
    assert not any(n.endswith("attn.weights") for n in default)
    assert len(everything) == len(default) + 4
    assert wd.select_taps(tiny_en.dims, "output") == ["mel", "ln_post"]
    picked = wd.select_taps(tiny_en.dims, "blocks.1.attn.*,ln_post")
    assert picked[0] == "mel" and picked[-1] == "ln_post"
    assert all(n in ("mel", "ln_post") or fnmatch.fnmatch(n, "blocks.1.attn.*") for n in picked)
    assert "blocks.1.attn.weights" in picked


def test_unknown_tap_pattern_is_an_error(tiny_en):
    with pytest.raises(wd.WhisperdiffError, match="matches no op"):
        wd.select_taps(tiny_en.dims, "blocks.9.*")


def test_split_block_op_inverts_block_op():
    for i, op in [(0, "attn.q"), (31, "mlp.fc2"), (3, "out")]:
        assert split_block_op(block_op(i, op)) == (i, op)
    for name in ("mel", "ln_post", "pos_embed", "decoder.blocks.0.out", "blocks.x.out"):
        assert split_block_op(name) is None


def test_block_input_is_the_op_each_block_reads(tiny_en):
    names = wd.op_names(tiny_en.dims)
    assert block_input(0) == "pos_embed" and block_input(1) == "blocks.0.out"
    assert all(block_input(i) in names for i in range(tiny_en.dims.n_audio_layer))
    assert block_input(0, "decoder.") == "decoder.pos_embed" and block_input(3, "decoder.") == "decoder.blocks.2.out"
