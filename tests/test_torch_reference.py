"""The hooked reference must record exactly what openai-whisper's encoder computes."""

import numpy as np
import torch
import torch.nn.functional as F

import whisperdiff as wd
from whisperdiff.inputs.audio import prepare_input


def test_hooked_ln_post_equals_model_encoder_exactly(default_trace, tiny_en):
    model = tiny_en.whisper_model()
    mel = torch.from_numpy(np.array(default_trace["mel"]))
    with torch.inference_mode():
        expected = model.encoder(mel).numpy()
    assert np.array_equal(default_trace["ln_post"], expected)


def test_every_canonical_op_recorded_in_order_with_its_shape(default_trace, tiny_en):
    specs = wd.op_specs(tiny_en.dims)
    assert default_trace.ops == [s.name for s in specs]
    for s in specs:
        info = default_trace.info(s.name)
        assert tuple(info["shape"]) == s.shape, s.name
        assert info["dtype"] == "float32"
    assert isinstance(default_trace["ln_post"], np.memmap)


def test_taps_are_consistent_with_each_other(default_trace, tiny_en):
    t = {name: torch.from_numpy(np.array(default_trace[name])) for name in default_trace.ops}
    assert torch.equal(t["conv1.gelu"], F.gelu(t["conv1"]))
    assert torch.equal(t["conv2.gelu"], F.gelu(t["conv2"]))
    pos = tiny_en.state_dict["encoder.positional_embedding"].float()
    assert torch.equal(t["pos_embed"], t["conv2.gelu"].permute(0, 2, 1) + pos)
    assert torch.equal(t["blocks.0.attn_residual"], t["pos_embed"] + t["blocks.0.attn.out"])
    assert torch.equal(t["blocks.0.out"], t["blocks.0.attn_residual"] + t["blocks.0.mlp.fc2"])
    sd = tiny_en.state_dict
    ln = F.layer_norm(
        t["blocks.0.out"],
        (384,),
        sd["encoder.blocks.1.attn_ln.weight"].float(),
        sd["encoder.blocks.1.attn_ln.bias"].float(),
    )
    assert torch.equal(t["blocks.1.attn_ln"], ln)
    assert torch.equal(t["blocks.0.mlp.gelu"], F.gelu(t["blocks.0.mlp.fc1"]))
    # The recorded probabilities are the ones the SDPA forward used: weights @ v reproduces attn.wv.
    for i in range(tiny_en.dims.n_audio_layer):
        w, v = t[f"blocks.{i}.attn.weights"], t[f"blocks.{i}.attn.v"]
        assert torch.allclose(w.sum(-1), torch.ones(()), atol=1e-5)
        vh = v.view(1, 1500, 6, 64).permute(0, 2, 1, 3)
        wv = (w @ vh).permute(0, 2, 1, 3).reshape(1, 1500, 384)
        torch.testing.assert_close(wv, t[f"blocks.{i}.attn.wv"], rtol=1e-4, atol=1e-4)


def test_encoder_output_is_normalised_and_the_last_block_is_not(default_trace):
    ln = default_trace.summary(verify=False).set_index("op")
    assert abs(ln.loc["ln_post", "mean"]) < 0.05 and abs(ln.loc["ln_post", "std"] - 1) < 0.2
    assert ln.loc["blocks.3.out", "std"] > 3 * ln.loc["ln_post", "std"]


def test_half_precision_reference_runs_on_cpu(tmp_path, small_random):
    t = wd.trace("torch", model=small_random, dtype="float16", device="cpu", out=tmp_path / "half", taps="output")
    assert t.ops == ["mel", "ln_post"]
    assert t.info("ln_post")["dtype"] == "float16" and t.manifest["dtype"] == "float16"
    full = small_random.whisper_model().encoder
    with torch.inference_mode():
        ref = full(torch.from_numpy(prepare_input(80).mel)).numpy()
    half = np.asarray(t["ln_post"], dtype=np.float32)
    cos = float((half * ref).sum() / np.linalg.norm(half) / np.linalg.norm(ref))
    assert 0.999 < cos < 1.0 and not np.array_equal(half, ref)  # close, but really computed in float16


def test_manifest_records_provenance(default_trace, tiny_en):
    m = default_trace.manifest
    assert m["schema"] == "whisperdiff.trace" and m["schema_version"] == 2
    assert m["impl"] == "torch" and m["device"] == "cpu" and m["dtype"] == "float32"
    assert m["model"]["weights_sha256"] == tiny_en.weights_sha256
    assert m["model"]["tensor_sha256"]["encoder.ln_post.weight"] == tiny_en.tensor_digests["encoder.ln_post.weight"]
    assert m["model"]["dims"]["n_audio_layer"] == 4
    assert m["input"]["default_clip"] and len(m["input"]["sha256"]) == 64
    assert set(m["versions"]) >= {"python", "torch", "max", "openai-whisper", "numpy"}
    assert m["injected"] == [] and m["run"]["encoder_seconds"] > 0
    assert all(len(op["xxh3_128"]) == 32 and "sha256" not in op for op in m["ops"])
