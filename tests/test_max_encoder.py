"""The MAX Graph encoder against openai-whisper, op by op, with real compiled graphs.

Only two distinct graphs are compiled here (small random dims with every tap, tiny.en with the
default taps); everything else reuses them, which is also what this file checks about the cache.
"""

import numpy as np
import pytest
import torch
import whisper

import whisperdiff as wd
from whisperdiff.max_encoder import Controls
from whisperdiff.runners.max_runner import MaxRunner


def agreement(a, b) -> tuple[float, float]:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    rel = np.linalg.norm(a - b) / np.linalg.norm(a)
    cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    return rel, cos


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory, small_random):
    d = tmp_path_factory.mktemp("small")
    return (wd.trace("torch", model=small_random, out=d / "torch", taps="all"),
            wd.trace("max", model=small_random, out=d / "max", taps="all"))  # fmt: skip


def test_every_op_including_attention_probabilities_matches_torch(small_pair):
    ref, cand = small_pair
    assert cand.ops == ref.ops
    for op in ref.ops:
        assert cand.info(op)["shape"] == ref.info(op)["shape"], op
        rel, cos = agreement(ref[op], cand[op])
        assert rel < 1e-4 and cos > 0.99999, (op, rel, cos)


def test_manifest_records_the_compile(small_pair):
    runner = small_pair[1].manifest["runner"]
    assert small_pair[1].manifest["impl"] == "max" and runner["compile_seconds"] > 0
    assert isinstance(runner["compile_cache_hit"], bool)


def test_a_second_checkpoint_of_the_same_size_does_not_recompile(small_pair):
    other = wd.load_model(
        "random:tiny,n_audio_layer=2,n_audio_state=64,n_audio_head=2,n_text_layer=1,n_text_state=64,n_text_head=2,seed=7"
    )
    runner = MaxRunner(other, device="cpu", taps=wd.select_taps(other.dims, "all"))
    assert runner.cache_hit, f"recompiled in {runner.compile_seconds:.1f} s"


def run_with(model, **controls) -> dict:
    d = model.dims
    runner = MaxRunner(model, device="cpu", taps=wd.select_taps(d, "all"),
                       controls=Controls(d.n_audio_layer, d.n_audio_state, d.n_audio_head, **controls))  # fmt: skip
    from whisperdiff.audio import prepare_input

    out = {}
    runner.run(prepare_input(d.n_mels).mel, lambda name, array: out.__setitem__(name, np.array(array)))
    return out


@pytest.mark.parametrize("controls,first_changed", [
    ({"ln_post_skip": 1.0}, "ln_post"),
    ({"pos_scale": 0.0}, "pos_embed"),
    ({"conv1_taps": (0.0, 1.0, 0.0)}, "conv1"),
    ({"kv_swap": [0.0, 1.0]}, "blocks.1.attn.k"),
    ({"mlp_residual": [1.0, 0.0]}, "blocks.1.out"),
])  # fmt: skip
def test_run_time_controls_change_the_trace_from_their_op_on(small_pair, small_random, controls, first_changed):
    ref = small_pair[1]
    buggy = run_with(small_random, **controls)
    changed = [op for op in ref.ops if op != "mel" and not np.array_equal(ref[op], buggy[op])]
    assert changed and changed[0] == first_changed, changed[:3]


def test_embedded_default_matches_torch_and_transcribes_the_same(tmp_path, tiny_en):
    ref = wd.trace("torch", model=tiny_en, out=tmp_path / "torch")
    cand = wd.trace("max", model=tiny_en, out=tmp_path / "max")
    assert cand.ops == ref.ops
    for op in ref.ops:
        rel, cos = agreement(ref[op], cand[op])
        assert rel < 1e-4 and cos > 0.99999, (op, rel, cos)
    model = tiny_en.whisper_model()
    options = whisper.DecodingOptions(language="en", fp16=False, without_timestamps=True)
    texts = [whisper.decode(model, torch.from_numpy(np.array(t["ln_post"][0])), options).text for t in (ref, cand)]
    assert texts[0] == texts[1] and "lazy dog" in texts[1], texts
