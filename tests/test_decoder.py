"""The decoder, teacher-forced position by position: openai-whisper's TextDecoder (hooked, its own KV cache)
against the MAX decoder graph, every decoder fault, the encoder/decoder cross-feed, the all-MAX pipeline.

One MAX decoder graph is compiled here (tiny.en, every tap: the graph does not depend on the taps) and
every fault is a run-time switch of it; the MAX encoder graph used is tiny.en's default-taps graph, the
one tests/test_max_encoder.py compiles.
"""

import json
import tracemalloc

import numpy as np
import pytest
import torch
import whisper

from tests.conftest import assert_one_line_error, run_cli
from whisperdiff.analysis.compare import compare
from whisperdiff.capture.decoder import encoder_features, greedy, prompt_tokens, trace_decoder
from whisperdiff.capture.faults import DECODER_FAULTS, get_faults
from whisperdiff.errors import WhisperdiffError
from whisperdiff.experiments.crossfeed import crossfeed
from whisperdiff.inputs.audio import prepare_input
from whisperdiff.measure.metrics import op_metrics
from whisperdiff.names import decoder_op_specs, position_axis


@pytest.fixture(scope="module")
def mel(tiny_en):
    return prepare_input(tiny_en.dims.n_mels).mel


@pytest.fixture(scope="module")
def features(tiny_en, mel):
    return encoder_features(tiny_en, mel, "torch")


@pytest.fixture(scope="module")
def max_features(tiny_en, mel):
    """The MAX encoder's output (tiny.en's default-taps graph, as tests/test_max_encoder.py compiles it)."""
    return encoder_features(tiny_en, mel, "max")


@pytest.fixture(scope="module")
def max_decoder(tiny_en):
    from whisperdiff.capture.max_decoder import MaxDecoderRunner

    return MaxDecoderRunner(tiny_en)


@pytest.fixture(scope="module")
def ref(tmp_path_factory, tiny_en, features):
    return trace_decoder(
        "torch", model=tiny_en, features=features, taps="all", out=tmp_path_factory.mktemp("dec") / "torch"
    )


@pytest.fixture(scope="module")
def cand(tmp_path_factory, tiny_en, features, ref, max_decoder):
    max_decoder.set_faults()
    return trace_decoder(
        "max",
        model=tiny_en,
        features=features,
        taps="all",
        tokens=ref.manifest["decoder"]["tokens"],
        runner=max_decoder,
        out=tmp_path_factory.mktemp("dec") / "max",
    )


def test_every_decoder_op_has_a_token_position_axis(tiny_en):
    specs = decoder_op_specs(tiny_en.dims, 7)
    decoder_ops = [s for s in specs if s.name.startswith("decoder.")]
    assert len(decoder_ops) == 2 + 21 * tiny_en.dims.n_text_layer + 2
    for s in decoder_ops:
        axis = position_axis(s.layout)
        if s.name.endswith(("cross_attn.k", "cross_attn.v")):  # computed once from the encoder output
            assert axis is None and s.shape[1] == tiny_en.dims.n_audio_ctx
        else:
            assert s.shape[axis] == 7, s


def test_ops_command_lists_the_decoder_ops():
    proc = run_cli("ops", "--decoder", "--json", check=True)
    names = [o["name"] for o in json.loads(proc.stdout)]
    assert names[1:3] == ["decoder.tok_embed", "decoder.pos_embed"] and names[-2:] == ["decoder.ln", "decoder.logits"]
    assert "decoder.blocks.3.cross_attn.k" in names


def test_torch_reference_is_openai_whisper_and_incremental_equals_full(tmp_path, tiny_en, features, ref):
    d = ref.manifest["decoder"]
    assert (
        d["tokens"][: d["prompt_length"]] == prompt_tokens(tiny_en)
        and d["steps"] == len(d["tokens"]) - d["prompt_length"] + 1
    )
    # The hooks change nothing: the logits are those of the unhooked model on the whole sequence.
    model = tiny_en.whisper_model()
    with torch.inference_mode():
        plain = model.logits(torch.tensor([d["tokens"]]), torch.from_numpy(np.array(features))).numpy()
    assert np.abs(plain - np.asarray(ref["decoder.logits"])).max() < 1e-3
    full = trace_decoder(
        "torch",
        model=tiny_en,
        features=features,
        taps="all",
        tokens=d["tokens"],
        incremental=False,
        out=tmp_path / "full",
    )
    c = compare(ref, full, replay=False)
    assert c.first_divergence is None and c.decoder["first_divergence"] is None, c.table[c.table.diverged]
    # The greedy tokens are openai-whisper's own transcript of this encoder output.
    text = (
        tiny_en.whisper_model()
        .decode(
            torch.from_numpy(np.array(features[0])),
            whisper.DecodingOptions(language="en", fp16=False, without_timestamps=True),
        )
        .text
    )
    assert whisper.tokenizer.get_tokenizer(False).decode(d["tokens"][d["prompt_length"] :]).strip() == text.strip()


def test_max_decoder_matches_torch_at_every_op_and_position(ref, cand):
    assert cand.ops == ref.ops and cand.manifest["decoder"]["tokens"] == ref.manifest["decoder"]["tokens"]
    c = compare(ref, cand, replay=False)
    assert c.first_divergence is None, c.table[c.table.diverged]
    assert c.decoder["first_divergence"] is None
    logits = c.decoder["logits"]
    assert logits["top1_agreement"] == 1.0 and logits["first_argmax_change"] is None and logits["max_kl"] < 1e-6
    assert cand.manifest["decoder"]["argmax"] == ref.manifest["decoder"]["argmax"]
    assert np.allclose(cand.manifest["decoder"]["margin"], ref.manifest["decoder"]["margin"], atol=1e-3)


def test_all_max_greedy_pipeline_gives_openai_whispers_transcript(tiny_en, mel, max_features, max_decoder):
    max_decoder.set_faults()
    text, _ = greedy(max_decoder, tiny_en, max_features)
    reference = whisper.decode(
        tiny_en.whisper_model(),
        torch.from_numpy(mel[0]),
        whisper.DecodingOptions(language="en", fp16=False, without_timestamps=True),
    ).text
    assert text == reference.strip() and text


@pytest.mark.parametrize("name", list(DECODER_FAULTS))
def test_each_decoder_fault_is_localised_at_its_op_and_first_position_and_named(
    tmp_path, tiny_en, features, ref, max_decoder, name
):
    from whisperdiff.capture.max_runner import _cache_entries

    fault = DECODER_FAULTS[name]
    compiled, cached = max_decoder.model, _cache_entries()
    max_decoder.set_faults(get_faults([name], part="decoder"))
    try:
        buggy = trace_decoder(
            "max",
            model=tiny_en,
            features=features,
            taps="all",
            tokens=ref.manifest["decoder"]["tokens"],
            runner=max_decoder,
            out=tmp_path / name,
        )
    finally:
        max_decoder.set_faults()
    # A fault is a run-time switch of the one compiled graph: no new graph, nothing new in MAX's cache.
    assert max_decoder.model is compiled and _cache_entries() == cached
    c = compare(ref, buggy, replay=False)
    first = c.decoder["first_divergence"]
    assert (first["op"], first["position"]) == (
        fault.first_op_for(tiny_en.dims.n_text_layer),
        fault.first_position_for(ref.manifest["decoder"]["prompt_length"]),
    ), c.table[c.table.diverged].head()
    assert c.findings[0].kind == fault.diagnosis and c.findings[0].op == first["op"], c.findings[:2]


def test_crossfeed_names_the_encoder_for_missing_ln_post(tiny_en, max_decoder):
    result = crossfeed(tiny_en, encoder="max", encoder_inject=["missing-ln-post"], decoder_runner=max_decoder)
    assert result.verdict == "encoder", result.table
    assert result.texts[("reference", "candidate")] == result.texts[("reference", "reference")]


def test_crossfeed_names_the_decoder_for_a_decoder_fault(tiny_en, features, max_features, max_decoder):
    result = crossfeed(
        tiny_en,
        encoder="max",
        decoder_runner=max_decoder,
        decoder_inject=["skip-decoder-ln"],
        encoder_features={"reference": features, "candidate": max_features},
    )
    max_decoder.set_faults()
    assert result.verdict == "decoder", result.table
    assert result.texts[("candidate", "reference")] == result.texts[("reference", "reference")]


def test_comparing_decoder_traces_peaks_at_the_largest_op(tmp_path, tiny_en, features, ref, cand, max_decoder):
    """Memory while comparing is bounded by the largest op: compare's peak stays within a small multiple of
    the peak of measuring that one op alone, although the trace holds many times more."""
    largest = max(ref.manifest["ops"], key=lambda o: o["nbytes"])
    total = sum(o["nbytes"] for o in ref.manifest["ops"])
    compare(ref, cand, replay=False)  # once first: imports and caches are not what is measured
    tracemalloc.start()
    op_metrics(ref[largest["name"]], cand[largest["name"]])
    _, one_op = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    compare(ref, cand, replay=False)
    _, whole = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert total > 8 * largest["nbytes"]
    assert whole < 2 * one_op + 4 * largest["nbytes"], (whole, one_op, largest, total)


def test_decoder_faults_are_refused_by_the_encoder_and_bad_tokens_are_one_line_errors(tmp_path, tiny_en):
    with pytest.raises(WhisperdiffError, match="not an encoder fault"):
        get_faults(["no-causal-mask"])
    proc = run_cli("trace-decoder", "--tokens", "12,abc", "--out", str(tmp_path / "x"))
    assert_one_line_error(proc, "--tokens")
    proc = run_cli("trace-decoder", "--impl", "torch", "--inject", "no-causal-mask", "--out", str(tmp_path / "y"))
    assert_one_line_error(proc, "max")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_users_decoder_traced_with_tracer_compares_position_by_position(tmp_path, tiny_en, ref):
    """The capture-any-graph path for decoders: a port records its joined ops with wd.Tracer(tokens=...).
    Here the "port" replays the reference's values and breaks one op from position 5 on."""
    import whisperdiff as wd

    d = ref.manifest["decoder"]
    with wd.Tracer(tmp_path / "mine", impl="mine", model=tiny_en, tokens=d["tokens"]) as t:  # every token fed
        for op in ref.ops:
            value = np.array(ref[op])
            if op == "decoder.blocks.2.mlp.fc2":
                value[:, 5:] += 0.05 * np.abs(value).mean()
            t.record(op, value)
    mine = t.trace()
    assert mine.manifest["decoder"]["tokens"] == d["tokens"] and mine.manifest["decoder"]["argmax"] == d["argmax"]
    c = compare(ref, mine, replay=False)
    assert c.decoder["first_divergence"] == {"op": "decoder.blocks.2.mlp.fc2", "position": 5, "axis": "token position"}
    with pytest.raises(WhisperdiffError, match="shape .* every token the port fed"):
        with wd.Tracer(tmp_path / "bad", impl="mine", model=tiny_en, tokens=[383, 2068]) as t:
            t.record("decoder.tok_embed", np.zeros((1, 3, 384), np.float32))
    # tokens are kept as the port fed them: never a prompt of whisperdiff's put in front
    with wd.Tracer(tmp_path / "bare", impl="mine", model=tiny_en, tokens=[383, 2068]) as t:
        t.record("decoder.tok_embed", np.zeros((1, 2, 384), np.float32))
    bare = t.trace().manifest["decoder"]
    assert (
        bare["tokens"] == [383, 2068]
        and bare["prompt_length"] == 0
        and "without Whisper's prompt" in bare["token_source"]
    )
    # logits with NaN (a fully masked row) are a finding to make, not a trace to refuse
    logits = np.zeros((1, 2, tiny_en.dims.n_vocab), np.float32)
    logits[0, 0] = np.nan
    with wd.Tracer(tmp_path / "nan", impl="mine", model=tiny_en, tokens=[383, 2068]) as t:
        t.record("decoder.logits", logits)
    assert t.trace().manifest["decoder"]["margin"] == [None, 0.0]


def test_transcribe_impl_max_runs_max_for_both_halves(tmp_path, tiny_en, mel, max_decoder):
    proc = run_cli("transcribe", "--impl", "max", "--out", str(tmp_path / "tr"), check=True)
    manifest = json.loads((tmp_path / "tr" / "manifest.json").read_text())
    reference = whisper.decode(
        tiny_en.whisper_model(),
        torch.from_numpy(mel[0]),
        whisper.DecodingOptions(language="en", fp16=False, without_timestamps=True),
    ).text.strip()
    assert manifest["impl"] == "max" and manifest["transcript"]["decoder"].startswith("MAX decoder graph")
    assert manifest["transcript"]["text"] == reference == proc.stdout.strip().splitlines()[-1]


def test_the_report_shows_the_decoder_position_by_position(tmp_path, tiny_en, features, ref, max_decoder):
    """A KV-cache bug in the report: its own section names the (op, position), the argmax change, and draws the
    error per token position of the logits and each block; opened in headless Chromium as a person would."""
    from whisperdiff.present.browser import Browser, find_chromium
    from whisperdiff.present.report import write_report

    max_decoder.set_faults(get_faults(["kv-cache-off-by-one"], part="decoder"))
    try:
        buggy = trace_decoder(
            "max",
            model=tiny_en,
            features=features,
            taps="default",
            tokens=ref.manifest["decoder"]["tokens"],
            runner=max_decoder,
            out=tmp_path / "kv",
        )
    finally:
        max_decoder.set_faults()
    c = compare(ref, buggy, replay=False)
    path = write_report(c, tmp_path / "kv.html")
    if find_chromium() is None:
        pytest.skip("no chromium")
    with Browser() as browser:
        page = browser.open(path)
    section = page.text.split("The decoder, position by position")[1].split("Divergence along the network")[0]
    first = c.decoder["first_divergence"]
    assert f"First divergence: {first['op']} at token position {first['position']}" in section, section
    assert "The argmax first changes at position" in section
    assert any(img["alt"].startswith("Relative error per token position") and img["width"] > 0 for img in page.images)
