"""The MAX Graph encoder against openai-whisper, op by op, with real compiled graphs.

Only two distinct graphs are compiled here (small random dims with every tap, tiny.en with the
default taps); everything else reuses them, which is also what this file checks about the cache.
"""

import numpy as np
import pytest
import torch
import whisper

import whisperdiff as wd
from whisperdiff.faults import FAULTS
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


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_fault_changes_the_trace_from_its_documented_op_on(tmp_path, small_pair, small_random, fault):
    clean = small_pair[1]
    buggy = wd.trace("max", model=small_random, out=tmp_path / fault, taps="all", inject=[fault])
    changed = [op for op in clean.ops if not np.array_equal(clean[op], buggy[op])]
    expected = FAULTS[fault].first_op_for(small_random.dims.n_audio_layer)
    assert changed and changed[0] == expected, changed[:3]  # earlier ops bit-identical, the named op differs
    assert buggy.manifest["injected"][0]["name"] == fault and buggy.manifest["injected"][0]["first_op"] == expected
    assert buggy.manifest["runner"]["compile_cache_hit"]  # a fault is a run-time switch, not a new graph


def test_encoder_faults_need_the_max_encoder(small_random, tmp_path):
    with pytest.raises(wd.WhisperdiffError, match="use --impl max"):
        wd.trace("torch", model=small_random, out=tmp_path / "t", inject=["missing-ln-post"])
    with pytest.raises(wd.WhisperdiffError, match="unknown fault"):
        wd.trace("max", model=small_random, out=tmp_path / "t", inject=["cosmic-rays"])


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
