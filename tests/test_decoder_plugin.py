"""Your own decoder behind --impl (issue 22): transformers' WhisperDecoder with its own KV cache as a plugin
(tests/plugins/hf_decoder.py), traced by trace-decoder, compared by (op, position) with openai-whisper's,
used by transcribe; a factory that gives no decoder is one error line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_cli

import whisperdiff as wd

pytest.importorskip("transformers", reason="the plugin is transformers' WhisperDecoder ([ports] extra)")
PLUGIN = str(Path(__file__).parent / "plugins" / "hf_decoder.py")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_en):
    out = tmp_path_factory.mktemp("dec") / "torch"
    run_cli("trace-decoder", "--impl", "torch", "-o", str(out), check=True)
    return wd.load_trace(out)


def test_a_decoder_plugin_with_its_own_kv_cache_matches_the_reference(reference, tmp_path):
    out = tmp_path / "hf"
    run_cli(
        "trace-decoder", "--impl", f"{PLUGIN}:make", "-o", str(out), "--tokens-from", str(reference.path), check=True
    )
    mine = wd.load_trace(out)
    d = mine.manifest["decoder"]
    assert d["tokens"] == reference.manifest["decoder"]["tokens"] and d["mode"] == "incremental (KV cache)"
    assert mine.manifest["taps"] == "plugin" and set(mine.ops) == {"ln_post", "decoder.ln", "decoder.logits"}
    c = wd.compare(reference, mine)
    assert c.first_divergence is None and c.decoder["first_divergence"] is None
    assert any("a plugin records the ops it names" in w for w in c.warnings)


def test_a_cache_bug_in_the_plugin_is_found_at_the_first_cached_position(reference, tmp_path):
    out = tmp_path / "hf-bug"
    run_cli(
        "trace-decoder",
        "--impl",
        f"{PLUGIN}:make",
        "-o",
        str(out),
        "--tokens-from",
        str(reference.path),
        env={"WD_DECODER_BUG": "cache-off-by-one"},
        check=True,
    )
    c = wd.compare(reference, out)
    prompt = reference.manifest["decoder"]["prompt_length"]
    assert c.decoder["first_divergence"] == {"op": "decoder.ln", "position": prompt, "axis": "token position"}
    assert not wd.check(reference, out, wd.load_tolerances("float32")).passed


def test_transcribe_and_errors_with_a_decoder_plugin(reference, tmp_path):
    proc = run_cli("transcribe", "--decoder", f"{PLUGIN}:make", "-o", str(tmp_path / "tr"), check=True)
    manifest = json.loads((tmp_path / "tr" / "manifest.json").read_text())
    assert manifest["transcript"]["decoder"].startswith("decoder plugin")
    assert (
        proc.stdout.strip().splitlines()[-1]
        == manifest["transcript"]["text"]
        == "The quick brown fox jump over the lazy dog."
    )
    assert_one_line_error(
        run_cli("trace-decoder", "--impl", f"{PLUGIN}:broken", "-o", str(tmp_path / "x")), "has no start() or step()"
    )
    assert not (tmp_path / "x").exists()
    assert_one_line_error(run_cli("trace-decoder", "--impl", "nosuch", "-o", str(tmp_path / "y")), "file.py:factory")
