"""Your own decoder behind --impl (issue 22): transformers' WhisperDecoder with its own KV cache as a plugin
(tests/plugins/hf_decoder.py), traced by trace-decoder, compared by (op, position) with openai-whisper's,
used by transcribe; a factory that gives no decoder is one error line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_cli

import whisperdiff as wd
from whisperdiff.capture.decoder import trace_decoder

pytest.importorskip("transformers", reason="the plugin is transformers' WhisperDecoder ([ports] extra)")
PLUGIN = str(Path(__file__).parent / "plugins" / "hf_decoder.py")


@pytest.fixture(scope="module")
def reference(decoder_reference):
    return decoder_reference


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


def _mark_all(reference, out, *, bug=None, structure_only=False, factory="make"):
    given = (
        ["--tokens", ",".join(map(str, reference.manifest["decoder"]["tokens"]))]
        if structure_only
        else ["--tokens-from", str(reference.path)]
    )
    env = {"WD_DECODER_BUG": bug} if bug else None
    run_cli("trace-decoder", "--impl", f"{PLUGIN}:{factory}", "--mark-all", "-o", str(out), *given, env=env, check=True)
    return wd.load_trace(out)


@pytest.mark.parametrize(
    "structure_only,factory",
    [(False, "make"), (True, "make"), (False, "no_cache")],
    ids=["by-value", "structure-only", "no-kv-cache"],
)
def test_mark_all_aligns_a_decoder_port_hands_off_step_by_step(reference, tmp_path, structure_only, factory):
    """The plugin names only decoder.ln; --mark-all captures every torch op of each step and aligns it, by value
    against the --tokens-from trace, or by structure alone when there is none. Its fused attention (sdpa) never
    computes probabilities: those four ops, and only those, are said to be not aligned. A port with no KV cache
    recomputes every position at each step (at the step over 6 positions its 6 heads make [B,H,P,D] and [B,P,H,D]
    the same shape): what it computes at the step's own positions is aligned."""
    mine = _mark_all(reference, tmp_path / "hf", structure_only=structure_only, factory=factory)
    capture = mine.manifest["runner"]["capture"]
    weights = [f"decoder.blocks.{i}.attn.weights" for i in range(4)]
    assert capture["unmatched"] == weights and len(capture["steps"]) == mine.manifest["decoder"]["steps"]
    assert "aligned 79/83" in capture["summary"]
    assert [s["recomputed"] for s in capture["steps"][1:]] == [factory == "no_cache"] * (len(capture["steps"]) - 1)
    assert set(reference.ops) - set(mine.ops) == set(weights)
    assert structure_only == any("structure only" in n for n in capture["notes"])
    c = wd.compare(reference, mine)
    assert c.first_divergence is None and c.decoder["first_divergence"] is None and not c.findings
    assert any("not aligned" in w and "sdpa" in w for w in c.warnings)
    assert wd.check(reference, mine, wd.load_tolerances("float32")).passed


@pytest.mark.parametrize("structure_only", [False, True], ids=["by-value", "structure-only"])
def test_mark_all_finds_a_cache_bug_where_it_acts(reference, tmp_path, structure_only):
    """Positions off by one from the first cached step: hands-off, the first divergence is the positional add
    at that position (not the plugin's named decoder.ln, not an op after it), and the finding says why."""
    mine = _mark_all(reference, tmp_path / "hf-bug", bug="cache-off-by-one", structure_only=structure_only)
    prompt = reference.manifest["decoder"]["prompt_length"]
    c = wd.compare(reference, mine)
    assert c.decoder["first_divergence"] == {"op": "decoder.pos_embed", "position": prompt, "axis": "token position"}
    assert c.findings[0].kind == "positional" and c.findings[0].op == "decoder.pos_embed"
    assert not wd.check(reference, mine, wd.load_tolerances("float32")).passed


def test_mark_all_errors(reference, tmp_path):
    assert_one_line_error(
        run_cli("trace-decoder", "--impl", "torch", "--mark-all", "-o", str(tmp_path / "a")), "decoder port you wrote"
    )
    # (known at its first step, which has run by then: transformers' own deprecation warning is silenced)
    hidden = ("trace-decoder", "--impl", f"{PLUGIN}:hidden", "--mark-all", "-o", str(tmp_path / "b"))
    assert_one_line_error(run_cli(*hidden, env={"PYTHONWARNINGS": "ignore"}), "no torch.nn.Module and ran no MAX graph")
    shorter = reference.manifest["decoder"]["tokens"][:-1]  # a reference of other tokens cannot align by value
    with pytest.raises(wd.WhisperdiffError, match="other tokens"):
        trace_decoder(f"{PLUGIN}:make", tokens=shorter, mark_all=True, reference=reference, out=tmp_path / "c")
    assert not any((tmp_path / d).exists() for d in "abc")


HELD_APART = Path(__file__).parents[1] / "benchmarks" / "handsoff_decoder_ports.py"


@pytest.mark.parametrize(
    "bug,kind",
    [
        ("cross-residual-dropped", "missing_residual"),
        ("head-zeroed", "head_missing"),
        ("fc2-float16", "precision"),
        ("cache-k-stale", "kv_cache"),
        ("no-causal-mask", "attention_mask"),
    ],
)
def test_mark_all_on_held_apart_decoder_bugs(reference, tmp_path, bug, kind):
    """Bugs from the set written apart from the alignment code (benchmarks/handsoff_decoder_ports.py, the whole
    set scored by benchmarks/handsoff_decoder.py): hands-off, the first divergence is at the planted op (or its
    declared alternate) and position, no finding comes before it, the first names the cause, and check fails.
    The port's sdpa never computes probabilities: a cache written wrong for the keys alone, or a prompt step
    without its causal mask, is found by replaying attn.wv from B's own q, k and v."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("handsoff_decoder_ports", HELD_APART)
    ports = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ports)
    planted = ports.BUGS[bug]
    out = tmp_path / bug
    run_cli(
        *("trace-decoder", "--impl", f"{HELD_APART}:make", "--mark-all", "-o", str(out)),
        *("--tokens-from", str(reference.path)),
        env={"WD_HF_DECODER_BUG": bug},
        check=True,
    )
    c = wd.compare(reference, out)
    first = c.decoder["first_divergence"]
    assert first["op"] in [planted["op"], *planted["alternates"]], first
    assert planted["position"] is None or first["position"] == planted["position"], first
    order = [r.op for r in c.ops]
    assert all(order.index(f.op) >= order.index(first["op"]) for f in c.findings if f.severity != "info")
    assert c.findings[0].kind == kind, c.findings[0].message
    assert not wd.check(reference, out, wd.load_tolerances("float32")).passed


def test_mark_all_on_a_decoder_object_from_a_notebook(reference, tmp_path):
    """The same hands-off capture from Python, on the port object itself (no factory file)."""
    import importlib.util

    from whisperdiff.inputs.models import load_model

    spec = importlib.util.spec_from_file_location("hf_decoder_plugin", PLUGIN)
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    model = load_model(None)
    tokens = reference.manifest["decoder"]["tokens"]
    mine = trace_decoder(
        "hf decoder (notebook)",
        model=model,
        decoder=plugin.HFDecoder(model),
        mark_all=True,
        reference=reference,
        tokens=tokens,
        out=tmp_path / "nb",
    )
    assert mine.manifest["runner"]["capture"]["unmatched"] == [f"decoder.blocks.{i}.attn.weights" for i in range(4)]
    assert wd.compare(reference, mine).first_divergence is None
    with pytest.raises(wd.WhisperdiffError, match="mark_all=True"):
        trace_decoder("x", model=model, decoder=plugin.HFDecoder(model), tokens=tokens, out=tmp_path / "no")
    assert not (tmp_path / "no").exists()
