"""A MAX Graph decoder port hands-off (issue 22): --mark-all on a class that builds, compiles and executes its own
decoder graph with its KV cache as graph inputs and outputs (tests/plugins/max_decoder.py). Every value of the
graph is captured (capture/graphs_capture.py), the port still gets only its own outputs, and each step is aligned
by (op, token position) as a torch port's is. One compiled graph serves every test here."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli

import whisperdiff as wd

PLUGIN = str(Path(__file__).parent / "plugins" / "max_decoder.py")


@pytest.fixture(scope="module")
def reference(decoder_reference):
    return decoder_reference


def _mark_all(reference, out, factory="make", structure_only=False):
    given = (
        ["--tokens", ",".join(map(str, reference.manifest["decoder"]["tokens"]))]
        if structure_only
        else ["--tokens-from", str(reference.path)]
    )
    run_cli("trace-decoder", "--impl", f"{PLUGIN}:{factory}", "--mark-all", "-o", str(out), *given, check=True)
    return wd.load_trace(out)


@pytest.mark.parametrize("structure_only", [False, True], ids=["by-value", "structure-only"])
def test_mark_all_aligns_every_op_of_a_max_decoder_port(reference, tmp_path, structure_only):
    """Every canonical decoder op, at every step (the prompt, then one token at a time from its KV cache), by
    value or by structure alone (its layer norms are written from means, its residuals are plain adds)."""
    mine = _mark_all(reference, tmp_path / "port", structure_only=structure_only)
    capture = mine.manifest["runner"]["capture"]
    assert capture["unmatched"] == [] and "aligned 83/83" in capture["summary"], capture["summary"]
    assert "MAX graphs" in mine.manifest["runner"]["decoder"]
    assert not any(s["recomputed"] for s in capture["steps"])
    assert set(reference.ops) == set(mine.ops)
    assert structure_only == any("structure only" in n for n in capture["notes"])
    c = wd.compare(reference, mine)
    assert c.first_divergence is None and c.decoder["first_divergence"] is None and not c.findings
    assert wd.check(reference, mine, wd.load_tolerances("float32")).passed


@pytest.mark.parametrize(
    "bug,op,at_cache,kind",
    [
        ("kv_off_by_one", "decoder.blocks.0.attn.weights", True, "kv_cache"),
        ("pos_restart", "decoder.pos_embed", True, "positional"),
        ("no_causal_mask", "decoder.blocks.0.attn.weights", False, "attention_mask"),
    ],
)
def test_mark_all_finds_a_max_decoder_bug_where_it_acts(reference, tmp_path, bug, op, at_cache, kind):
    """The first divergence is at the op and token position where the bug acts (the first cached step for a
    cache or position bug, the prompt for a missing mask), and the first finding there names its cause."""
    mine = _mark_all(reference, tmp_path / bug, factory=bug)
    c = wd.compare(reference, mine)
    position = reference.manifest["decoder"]["prompt_length"] if at_cache else 0
    assert c.decoder["first_divergence"] == {"op": op, "position": position, "axis": "token position"}
    assert c.findings[0].kind == kind and c.findings[0].op == op
    assert not wd.check(reference, mine, wd.load_tolerances("float32")).passed


HELD_APART = Path(__file__).parents[1] / "benchmarks" / "max_decoder_ports.py"


@pytest.mark.parametrize("bug", ["clean", "cache-kv-swapped"])
def test_mark_all_on_a_max_decoder_written_apart(reference, tmp_path, bug):
    """A MAX decoder class from the set written apart from the alignment code (benchmarks/max_decoder_ports.py:
    raw ops, NumPy constants under its own names, cross K/V from a graph run once in start(); the whole set
    scored by `benchmarks/handsoff_decoder.py --ports max`). Its clean form and the bug that unpacks the cache
    a step returns as (values, keys) share its two compiled graphs."""
    out = tmp_path / bug
    run_cli(
        "trace-decoder",
        "--impl",
        f"{HELD_APART}:make",
        "--mark-all",
        "--tokens-from",
        str(reference.path),
        "-o",
        str(out),
        env={"WD_MAX_DECODER_BUG": bug},
        check=True,
    )
    mine = wd.load_trace(out)
    assert "aligned 83/83" in mine.manifest["runner"]["capture"]["summary"]
    c = wd.compare(reference, mine)
    passed = wd.check(reference, mine, wd.load_tolerances("float32")).passed
    if bug == "clean":
        assert c.decoder["first_divergence"] is None and not c.findings and passed
        return
    prompt = reference.manifest["decoder"]["prompt_length"]
    op = "decoder.blocks.0.attn.weights"
    assert c.decoder["first_divergence"] == {"op": op, "position": prompt, "axis": "token position"}
    assert c.findings[0].kind == "kv_cache" and "swapped" in c.findings[0].message and not passed
