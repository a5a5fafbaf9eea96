"""Does it matter? Transcripts of both encoders, long audio window by window, and activation patching
on the real tiny.en (MAX's patchable graph and torch's hooks)."""

from __future__ import annotations

import wave

import numpy as np
import pytest
from conftest import run_cli

import whisperdiff as wd
from whisperdiff.capture.session import Session
from whisperdiff.capture.transcript import cer, wer, word_diff
from whisperdiff.experiments.patch import patch
from whisperdiff.inputs.audio import default_audio_path


def test_error_rates_and_word_diff():
    assert wer("The quick brown fox.", "the quick brown fox") == 0
    assert wer("the quick brown fox", "the quick red fox") == 0.25
    assert cer("abcd", "abxd") == 0.25
    assert word_diff("a b c", "a x c") == [("=", "a"), ("-", "b"), ("+", "x"), ("=", "c")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_en):
    """Transcribed traces on the embedded default: torch, MAX, and MAX with four injected bugs."""
    d = tmp_path_factory.mktemp("impact")
    ref = wd.trace("torch", model=tiny_en, out=d / "torch", transcribe=True)
    runs = {
        name: wd.trace(
            "max", model=tiny_en, out=d / f"max-{name}", transcribe=True, inject=[] if name == "clean" else [name]
        )
        for name in ("clean", "missing-ln-post", "no-pos-embed", "variance-rescale", "half-precision-block")
    }
    return ref, runs


def test_max_and_torch_transcripts_are_identical(tiny):
    ref, runs = tiny
    assert "lazy dog" in ref.manifest["transcript"]["text"]
    c = wd.compare(ref, runs["clean"], replay=False)
    assert (
        c.transcripts["same"] and c.transcripts["wer"] == 0 and c.transcripts["a"] == ref.manifest["transcript"]["text"]
    )


@pytest.mark.parametrize(
    "fault, cause", [("missing-ln-post", "ln_post"), ("no-pos-embed", "pos_embed"), ("variance-rescale", "ln_post")]
)
def test_patching_names_the_op_whose_bug_changes_the_transcript(tiny, tiny_en, fault, cause):
    ref, runs = tiny
    c = wd.compare(ref, runs[fault], replay=False)
    assert not c.transcripts["same"] and c.transcripts["wer"] > 0.5, c.transcripts
    p = patch(ref, runs[fault], model=tiny_en)
    assert p.impl == "max" and p.unpatched_wer > 0.5
    assert p.cause == cause, [(r.op, r.restored, r.wer) for r in p.results]
    fixed = p.result(cause)
    assert fixed.restored > 0.99 and fixed.wer == 0 and fixed.text == p.reference_text
    before = [r for r in p.results if p.results.index(r) < p.results.index(fixed)]
    assert before and all(r.restored < 0.5 for r in before)


def test_half_precision_diverges_without_changing_the_transcript(tiny, tmp_path):
    ref, runs = tiny
    c = wd.compare(ref, runs["half-precision-block"], replay=False)
    assert c.first_divergence == "blocks.1.attn_ln" and c.transcripts["same"]
    page = wd.write_report(c, tmp_path / "r.html").read_text()
    assert "for this input the divergence does not change the text" in page
    proc = run_cli("patch", str(ref.path), str(runs["half-precision-block"].path), "--ops", "blocks.1.out")
    assert proc.returncode == 0 and "the divergence does not matter for this input" in proc.stdout, proc.stdout
    # the block stores float16 values: A's value at its output (what it stores) restores everything after it
    assert "cause: blocks.1.out" in proc.stdout, proc.stdout


def test_patching_torch_with_hooks(tiny, tiny_en):
    """Roles swapped: the buggy MAX run is the reference, torch the candidate; patching torch's
    pos_embed with MAX's value makes torch produce MAX's output."""
    ref, runs = tiny
    p = patch(runs["no-pos-embed"], ref, ops="[cp]o*", transcribe=False, model=tiny_en)  # the convs and pos_embed
    assert p.impl == "torch" and "conv2.gelu" not in [r.op for r in p.results]
    assert p.cause == "pos_embed", [(r.op, r.restored) for r in p.results]


def test_report_with_transcripts_and_patching(tiny, tiny_en, tmp_path):
    ref, runs = tiny
    out = tmp_path / "r.html"
    proc = run_cli("report", str(ref.path), str(runs["missing-ln-post"].path), "-o", str(out), "--patch", check=True)
    assert "patching: cause ln_post" in proc.stdout
    page = out.read_text()
    assert "It matters: B's transcript differs" in page and "<del>" in page
    assert "Which op causes it: activation patching" in page and "<code>ln_post</code></b>" in page


def _sixty_second_clip(path):
    """The shipped clip at 0 s and again at 32 s, in 60 s of 16 kHz audio: two 30 s windows with speech."""
    with wave.open(str(default_audio_path())) as w:
        speech = np.frombuffer(w.readframes(w.getnframes()), np.int16)
        rate = w.getframerate()
    clip = np.zeros(60 * rate, np.int16)
    clip[: len(speech)] = speech
    clip[32 * rate : 32 * rate + len(speech)] = speech
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes(clip.tobytes())
    return path


def test_sixty_seconds_are_transcribed_and_traced_window_by_window(tmp_path, tiny_en):
    clip = _sixty_second_clip(tmp_path / "sixty.wav")
    traces = Session("torch", model=tiny_en).trace_windows(audio=clip, out=tmp_path / "long")
    assert [t.path.name for t in traces] == ["long.w0", "long.w1"]
    assert [t.manifest["input"]["window"] for t in traces] == [0, 1]
    assert all(t.manifest["input"]["n_windows"] == 2 and t.ops[-1] == "ln_post" for t in traces)
    assert all("lazy dog" in t.manifest["transcript"]["text"] for t in traces)
    assert not np.array_equal(traces[0]["mel"], traces[1]["mel"])
    proc = run_cli("transcribe", "--audio", str(clip), "-o", str(tmp_path / "cli"), "--taps", "output", check=True)
    assert proc.stdout.count("lazy dog") == 2 and "window 1 (30-60 s)" in proc.stdout, proc.stdout
    assert (tmp_path / "cli.w1" / "manifest.json").is_file()
    proc = run_cli(
        "trace", "--audio", str(clip), "--window", "1", "-o", str(tmp_path / "w1"), "--taps", "output", check=True
    )
    assert wd.load_trace(tmp_path / "w1").manifest["input"]["window"] == 1
    bad = run_cli("trace", "--audio", str(clip), "--window", "2", "-o", str(tmp_path / "w2"))
    assert bad.returncode == 2 and "windows 0..1" in bad.stderr
