"""Bisection (issue 24): small graphs (block outputs, then one block) find what a full trace finds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SMALL_RANDOM, run_cli

import whisperdiff as wd
from whisperdiff.analysis.compare import compare
from whisperdiff.experiments.bisect import bisect, block_taps, coarse_taps

pytestmark = pytest.mark.slow  # compiles MAX graphs


@pytest.fixture(scope="module")
def ref(tmp_path_factory, small_random) -> wd.Trace:
    return wd.trace("torch", model=small_random, out=tmp_path_factory.mktemp("bisect") / "torch")


def test_the_steps_tap_the_block_outputs_then_one_block(small_random):
    d = small_random.dims
    assert coarse_taps(d) == [
        "mel", "conv1", "conv1.gelu", "conv2", "conv2.gelu", "pos_embed", "blocks.0.out", "blocks.1.out", "ln_post"
    ]  # fmt: skip
    inside = block_taps(d, 1)
    assert inside[:2] == ["mel", "blocks.0.out"] and inside[-1] == "blocks.1.out"
    assert all(n.startswith("blocks.1.") for n in inside[2:]) and "blocks.1.attn.weights" not in inside
    assert block_taps(d, 0)[1] == "pos_embed"


@pytest.mark.parametrize("fault", ["kv-swap", "drop-residual"])
def test_bisect_finds_what_a_full_trace_finds(ref, small_random, tmp_path, fault):
    result = bisect(ref, impl="max", inject=[fault], out=tmp_path / "bisect")
    full_trace = wd.trace("max", model=small_random, inject=[fault], out=tmp_path / "full")
    full = compare(ref, full_trace)
    assert not result and len(result.steps) == 2
    assert result.steps[0].first_divergence == "blocks.1.out"
    assert result.first_divergence == full.first_divergence
    assert (result.comparison.findings[0].op, result.comparison.findings[0].kind) == (
        full.findings[0].op,
        full.findings[0].kind,
    )
    # each step's trace holds its own taps and nothing else
    for step in result.steps:
        assert wd.load_trace(step.trace).ops == step.taps
    # step 2 ran block 1 alone, fed B's own blocks.0.out from step 1, from the pieces step 1 compiled: its
    # values are the whole graph's, bit for bit
    step1, step2 = (wd.load_trace(s.trace) for s in result.steps)
    assert step1.manifest["runner"]["streamed"] and "started_at" not in step1.manifest["runner"]
    assert step2.manifest["runner"]["started_at"]["block"] == 1
    assert step2.manifest["runner"]["compile_seconds"] == step1.manifest["runner"]["compile_seconds"]
    assert np.array_equal(step2["blocks.0.out"], step1["blocks.0.out"])
    differ = [op for op in step2.ops if not np.array_equal(step2[op], full_trace[op])]
    assert differ == [], differ
    assert not any("--taps all" in w for w in result.comparison.warnings)


def test_a_bug_in_the_stem_is_named_at_step_1(ref, small_random, tmp_path):
    """Step 1 looks only for the first divergent block (no replay); where the stem diverges first, step 1 is
    the last and its comparison is replayed, so the finding is still the full trace's."""
    result = bisect(ref, impl="max", inject=["no-pos-embed"], out=tmp_path / "bisect")
    full = compare(ref, wd.trace("max", model=small_random, inject=["no-pos-embed"], out=tmp_path / "full"))
    assert not result and len(result.steps) == 1 and result.first_divergence == "pos_embed"
    top, expected = result.comparison.findings[0], full.findings[0]
    assert (top.op, top.kind) == (expected.op, expected.kind) == ("pos_embed", "positional")
    assert result.comparison.result("pos_embed").introduced_rel_l2 is not None  # replayed


def test_a_clean_port_stops_after_one_step(ref, tmp_path):
    result = bisect(ref, impl="torch", out=tmp_path / "clean")
    assert result and result.first_divergence is None and len(result.steps) == 1
    assert result.steps[0].compile_seconds < 60  # torch hooks: nothing to compile, only the model to load


def test_the_cli_prints_the_steps_and_the_finding(ref, tmp_path):
    proc = run_cli("bisect", str(ref.path), "--inject", "kv-swap", "-o", str(tmp_path / "b"))
    assert proc.returncode == 0, proc.stderr
    assert "blocks.1.out" in proc.stdout and "swapped_projections at blocks.1.attn.k" in proc.stdout
    doc = json.loads(
        run_cli("bisect", str(ref.path), "--inject", "kv-swap", "-o", str(tmp_path / "j"), "--json").stdout
    )
    assert doc["schema"] == "whisperdiff.bisect" and doc["first_divergence"] == "blocks.1.attn.k"
    assert [s["first_divergence"] for s in doc["steps"]] == ["blocks.1.out", "blocks.1.attn.k"]


def test_bisect_refuses_bad_input_in_one_line(ref, tmp_path):
    for args, says in [
        (("bisect", str(tmp_path / "missing")), "error:"),
        (("bisect", str(ref.path), "--inject", "kv-swp"), "did you mean 'kv-swap'"),
        (("bisect", str(ref.path), "--model", SMALL_RANDOM.replace("64", "32"), "-o", str(tmp_path / "x")), "error:"),
    ]:
        proc = run_cli(*args)
        assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
