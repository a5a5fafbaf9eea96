"""The MAX Graph encoder against openai-whisper, op by op, with real compiled graphs.

Four distinct graphs are compiled here (small random dims with every tap, clean and debug (bugs as
run-time inputs); the same in bfloat16 with the default taps; tiny.en with the default taps), and
the three small pieces of a streamed run, clean and debug; everything else reuses them, which is
also what this file checks about the cache.
"""

import numpy as np
import pytest
import torch
import whisper
from conftest import run_cli

import whisperdiff as wd
from whisperdiff.analysis.compare import compare
from whisperdiff.capture.faults import FAULTS
from whisperdiff.capture.max_runner import MaxRunner
from whisperdiff.measure.tolerances import Tolerance

pytestmark = pytest.mark.slow  # every test here compiles or runs a MAX graph


def agreement(a, b) -> tuple[float, float]:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    rel = np.linalg.norm(a - b) / np.linalg.norm(a)
    cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    return rel, cos


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory, small_random):
    d = tmp_path_factory.mktemp("small")
    return (
        wd.trace("torch", model=small_random, out=d / "torch", taps="all"),
        wd.trace("max", model=small_random, out=d / "max", taps="all"),
    )


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


@pytest.fixture(scope="module")
def small_debug(small_pair, small_random):
    """The debug graph (bugs and patching as run-time inputs) with no bug switched on: compiled once, here."""
    runner = MaxRunner(small_random, device="cpu", taps=wd.select_taps(small_random.dims, "all"), debug=True)
    out = {}
    runner.run(np.asarray(small_pair[1]["mel"]), lambda name, array: out.__setitem__(name, np.array(array)))
    return runner, out


def test_the_clean_graph_has_no_fault_machinery_and_the_debug_graph_computes_it_bit_for_bit(small_pair, small_debug):
    """The clean graph's only input is the mel; the debug graph, with every switch off, gives the same bits."""
    runner, debug = small_debug
    assert runner.debug and runner.facts()["graph"] == "debug"
    assert small_pair[1].manifest["runner"]["graph"] == "clean"
    clean = small_pair[1]
    assert list(debug) == [op for op in clean.ops if op != "mel"]
    differ = [op for op in debug if not np.array_equal(clean[op], debug[op])]
    assert differ == [], differ


def test_a_streamed_run_gives_every_op_of_the_whole_graph_bit_for_bit(small_pair, small_random):
    """Large models run as the stem, one block graph per block (that block's weights fed as inputs) and
    ln_post, so that one block's taps are in memory at a time: the same bits as the one graph."""
    clean = small_pair[1]
    runner = MaxRunner(small_random, device="cpu", taps=wd.select_taps(small_random.dims, "all"), stream=True)
    assert runner.facts()["streamed"] and not clean.manifest["runner"]["streamed"]
    out = {}
    runner.run(np.asarray(clean["mel"]), lambda name, array: out.__setitem__(name, np.array(array)))
    assert list(out) == [op for op in clean.ops if op != "mel"]
    differ = [op for op in out if not np.array_equal(clean[op], out[op])]
    assert differ == [], differ


def test_a_streamed_run_switches_each_bug_in_its_own_piece_and_block(tmp_path, small_pair, small_debug, small_random):
    """A stem bug, a bug of one block (fed to that block's run only) and an ln_post bug, streamed: the same
    bits as the one debug graph, and each bug shows from its own op on."""
    faults = ["conv-middle-tap", "kv-swap", "missing-ln-post"]
    whole = wd.trace("max", model=small_random, out=tmp_path / "whole", taps="all", inject=faults)
    streamed = wd.trace("max", model=small_random, out=tmp_path / "streamed", taps="all", inject=faults, stream=True)
    assert streamed.manifest["runner"]["streamed"] and not whole.manifest["runner"]["streamed"]
    assert streamed.ops == whole.ops
    differ = [op for op in whole.ops if not np.array_equal(whole[op], streamed[op])]
    assert differ == [], differ
    # each switch acted: the swapped block's k is its v (a clean run's v), the other block's k is not
    swapped = FAULTS["kv-swap"].first_op_for(small_random.dims.n_audio_layer).removesuffix(".k")
    buggy_only = wd.trace("max", model=small_random, out=tmp_path / "kv", taps="all", inject=["kv-swap"], stream=True)
    clean = small_pair[1]
    changed = [op for op in clean.ops if not np.array_equal(clean[op], buggy_only[op])]
    assert changed[0] == f"{swapped}.k", changed[:3]
    assert not np.array_equal(streamed["conv1"], clean["conv1"])
    last = streamed[f"blocks.{small_random.dims.n_audio_layer - 1}.out"]  # ln_post skipped: the output is its input
    assert np.allclose(streamed["ln_post"], last, rtol=1e-5, atol=1e-5) and not np.allclose(clean["ln_post"], last)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_fault_changes_the_trace_from_its_documented_op_on(tmp_path, small_pair, small_debug, small_random, fault):
    clean = small_pair[1]
    buggy = wd.trace("max", model=small_random, out=tmp_path / fault, taps="all", inject=[fault])
    changed = [op for op in clean.ops if not np.array_equal(clean[op], buggy[op])]
    expected = FAULTS[fault].first_op_for(small_random.dims.n_audio_layer)
    assert changed and changed[0] == expected, changed[:3]  # earlier ops bit-identical, the named op differs
    assert buggy.manifest["injected"][0]["name"] == fault and buggy.manifest["injected"][0]["first_op"] == expected
    assert buggy.manifest["runner"]["compile_cache_hit"]  # a fault is a run-time switch, not a new graph

    # ... and `compare` finds it there and names it (replaying each op on the buggy trace's own inputs).
    result = compare(small_pair[0], buggy, model=small_random)
    assert result.comparable and result.first_divergence == expected
    top = result.findings[0]
    assert (top.kind, top.op) == (FAULTS[fault].diagnosis, expected), [f.to_dict() for f in result.findings[:3]]
    assert top.confidence >= 0.9 and top.severity == "error"
    if fault == "variance-rescale":
        assert top.message.startswith("statistics match, content does not")


def test_clean_max_versus_torch_has_no_divergence_and_no_findings(small_pair, small_random):
    result = compare(*small_pair, model=small_random)
    assert result.comparable and result.first_divergence is None and result.findings == [], result.findings
    assert (result.table["introduced_rel_l2"].dropna() < 1e-5).all()


def test_bfloat16_and_float32_on_max(tmp_path, small_random):
    """bfloat16 MAX against bfloat16 torch: agreement at bfloat16 rounding, and every op replays at that level."""
    ref = wd.trace("torch", model=small_random, out=tmp_path / "torch", dtype="bfloat16")
    cand = wd.trace("max", model=small_random, out=tmp_path / "max", dtype="bfloat16")
    assert cand.manifest["dtype"] == "bfloat16" and cand.ops == ref.ops
    for op in ref.ops:
        rel, cos = agreement(ref[op], cand[op])
        assert rel < 2e-2 and cos > 0.9998, (op, rel, cos)
    result = compare(ref, cand, model=small_random, tolerance=Tolerance(min_cosine=0.9998, max_rel_l2=2e-2))
    assert result.first_divergence is None and result.findings == []
    # against float32 the bfloat16 run is off by bfloat16 rounding, which compare names
    f32 = wd.trace("torch", model=small_random, out=tmp_path / "f32")
    strict = compare(f32, cand, model=small_random)
    assert strict.first_divergence == "conv1" and strict.findings[0].kind == "precision"


def test_a_bug_injected_in_bfloat16_is_traced_streamed_and_shows_from_its_op(tmp_path, small_random):
    """MAX 26.7's CPU compiler fails on the whole debug graph in half precision; the pieces carry the bug."""
    clean = wd.trace("max", model=small_random, out=tmp_path / "clean", dtype="bfloat16")
    buggy = wd.trace("max", model=small_random, out=tmp_path / "gelu", dtype="bfloat16", inject=["gelu-tanh"])
    assert buggy.manifest["runner"]["streamed"] and buggy.manifest["runner"]["graph"] == "debug"
    changed = [op for op in clean.ops if not np.array_equal(clean[op], buggy[op])]
    assert changed and changed[0] == FAULTS["gelu-tanh"].first_op_for(small_random.dims.n_audio_layer), changed[:3]
    # patching needs that whole graph: said in one line before anything compiles
    proc = run_cli("patch", str(clean.path), str(buggy.path))
    assert proc.returncode == 2 and "patch float32 traces" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


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
    result = compare(ref, cand, model=tiny_en)
    assert result.comparable and result.first_divergence is None and result.findings == []
