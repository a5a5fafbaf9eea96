import dataclasses

import numpy as np
import pytest
import torch

import whisperdiff as wd
from whisperdiff.inputs.ct2 import read_model_bin
from whisperdiff.inputs.models import embedded_model_dir, expected_shapes, preset_dims


def test_embedded_default_is_tiny_en(tiny_en):
    assert tiny_en.model_id == "tiny.en"
    assert tiny_en.source.startswith("ctranslate2:")
    assert dataclasses.asdict(tiny_en.dims) == preset_dims("tiny.en")
    assert len(tiny_en.weights_sha256) == 64


def test_ctranslate2_fused_projections_are_split(tiny_en):
    _, variables = read_model_bin(embedded_model_dir() / "model.bin")
    sd, d = tiny_en.state_dict, 384
    fused = variables["encoder/layer_1/self_attention/linear_0/weight"]
    assert np.array_equal(sd["encoder.blocks.1.attn.query.weight"].numpy(), fused[:d])
    assert np.array_equal(sd["encoder.blocks.1.attn.key.weight"].numpy(), fused[d : 2 * d])
    assert np.array_equal(sd["encoder.blocks.1.attn.value.weight"].numpy(), fused[2 * d :])
    assert "encoder.blocks.1.attn.key.bias" not in sd  # Whisper's key projection has no bias
    cross = variables["decoder/layer_0/attention/linear_1/weight"]
    assert np.array_equal(sd["decoder.blocks.0.cross_attn.value.weight"].numpy(), cross[d:])
    assert np.array_equal(sd["encoder.ln_post.weight"].numpy(), variables["encoder/layer_norm/gamma"])


def test_openai_checkpoint_by_path_and_by_name(tmp_path, monkeypatch, small_random):
    ckpt = {"dims": dataclasses.asdict(small_random.dims), "model_state_dict": dict(small_random.state_dict)}
    path = tmp_path / "mine.pt"
    torch.save(ckpt, path)
    by_path = wd.load_model(str(path))
    assert by_path.source == f"openai-whisper:{path.resolve()}"
    assert by_path.weights_sha256 == small_random.weights_sha256

    cache = tmp_path / "xdg" / "whisper"
    cache.mkdir(parents=True)
    torch.save(ckpt, cache / "base.en.pt")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    by_name = wd.load_model("base.en")
    assert by_name.model_id == "base.en" and by_name.weights_sha256 == small_random.weights_sha256


class NotATensor:
    pass


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"dims": {}, "model_state_dict": {}, "payload": NotATensor()}, path)
    with pytest.raises(wd.WhisperdiffError, match="weights_only"):
        wd.load_model(str(path))


def test_corrupt_checkpoint_is_an_error(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(wd.WhisperdiffError, match="cannot read checkpoint"):
        wd.load_model(str(path))


def test_missing_or_misshaped_weights_are_refused_never_filled(tmp_path, small_random):
    sd = dict(small_random.state_dict)
    del sd["encoder.blocks.1.mlp.0.weight"]
    path = tmp_path / "missing.pt"
    torch.save({"dims": dataclasses.asdict(small_random.dims), "model_state_dict": sd}, path)
    with pytest.raises(wd.WhisperdiffError, match=r"missing \(e.g. encoder.blocks.1.mlp.0.weight"):
        wd.load_model(str(path))
    sd = dict(small_random.state_dict)
    sd["encoder.conv1.weight"] = sd["encoder.conv1.weight"][:, :, :1]  # the "middle tap only" conv
    torch.save({"dims": dataclasses.asdict(small_random.dims), "model_state_dict": sd}, path)
    with pytest.raises(wd.WhisperdiffError, match="wrong shape: encoder.conv1.weight"):
        wd.load_model(str(path))


def test_truncated_ctranslate2_model_is_an_error(tmp_path):
    src = embedded_model_dir() / "model.bin"
    (tmp_path / "model.bin").write_bytes(src.read_bytes()[:5_000_000])
    with pytest.raises(wd.WhisperdiffError, match="truncated or corrupt"):
        wd.load_model(str(tmp_path))


def test_unknown_model_lists_what_is_available_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(
        wd.WhisperdiffError, match=r"unknown model 'tiny-ultra'.*available offline: default \(tiny.en\)"
    ):
        wd.load_model("tiny-ultra")
    with pytest.raises(wd.WhisperdiffError, match="never downloads"):
        wd.load_model("medium")


def test_random_weights_are_deterministic_per_seed():
    a = wd.load_model("random:tiny,n_audio_layer=1,n_audio_state=32,n_audio_head=2,seed=3")
    b = wd.load_model("random:tiny,n_audio_layer=1,n_audio_state=32,n_audio_head=2,seed=3")
    c = wd.load_model("random:tiny,n_audio_layer=1,n_audio_state=32,n_audio_head=2,seed=4")
    assert a.weights_sha256 == b.weights_sha256 != c.weights_sha256
    assert a.dims.n_audio_state == 32 and a.dims.n_audio_layer == 1
    # made when read, from (seed, name) alone: the same values every time, whatever was read before
    name = "encoder.blocks.0.mlp.0.weight"
    first = a.state_dict[name]
    assert all(b.state_dict[k] is not None for k in sorted(b.state_dict, reverse=True))
    assert torch.equal(first, a.state_dict[name]) and torch.equal(first, b.state_dict[name])
    assert not torch.equal(first, c.state_dict[name])
    assert set(a.state_dict.copy()) == set(a.state_dict) and len(a.state_dict) == len(b.state_dict)


def test_random_spec_errors():
    with pytest.raises(wd.WhisperdiffError, match="unknown preset"):
        wd.load_model("random:huge")
    with pytest.raises(wd.WhisperdiffError, match="multiple of the head count"):
        wd.load_model("random:tiny,n_audio_state=100,n_audio_head=3")
    with pytest.raises(wd.WhisperdiffError, match="not an integer"):
        wd.load_model("random:tiny,seed=x")


@pytest.mark.parametrize("preset", ["tiny.en", "base", "large-v3"])
def test_expected_shapes_match_openai_whisper_modules(preset):
    """The written-out shape table agrees with openai-whisper's own modules (built on meta: no memory)."""
    from whisper.model import AudioEncoder, ModelDimensions, TextDecoder

    d = ModelDimensions(**preset_dims(preset))
    with torch.device("meta"):
        parts = {
            "encoder": AudioEncoder(d.n_mels, d.n_audio_ctx, d.n_audio_state, d.n_audio_head, d.n_audio_layer),
            "decoder": TextDecoder(d.n_vocab, d.n_text_ctx, d.n_text_state, d.n_text_head, d.n_text_layer),
        }
    reference = {f"{p}.{k}": tuple(v.shape) for p, m in parts.items() for k, v in m.state_dict().items()}
    assert expected_shapes(d) == reference


def test_whisper_checkpoint_names_match_openai_whisper():
    """Model names resolve without importing whisper; the written-out table must stay openai-whisper's."""
    import os

    import whisper

    from whisperdiff.inputs.models import WHISPER_CHECKPOINTS

    assert WHISPER_CHECKPOINTS == {name: os.path.basename(url) for name, url in whisper._MODELS.items()}
