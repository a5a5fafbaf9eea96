"""Bisection through the capture API (issue 24): a MAX port captured with mark_all is re-built with only each
step's values as outputs, named by the map of an earlier full capture, and bisect_port names the op and the
kind the full capture names. One small port (examples/max_nn_encoder.py at SMALL_RANDOM's dims): two
graphs compile, the full capture's (its weights only change between the clean and the broken port) and the
one both steps load (PickBlock: step 2 picks the divergent block with a Weight)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest

import whisperdiff as wd
from whisperdiff.capture.captured_trace import trace_captured
from whisperdiff.mapping.maps import read_map

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.fixture(scope="module")
def port():
    """examples/max_nn_encoder.py's captured(model, select, bug) -> (cap, execute)."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        import max_nn_encoder as ex
    finally:
        sys.path.remove(str(EXAMPLES))
    return ex.captured


def test_bisect_port_names_what_a_full_capture_names_with_small_graphs(port, small_random, tmp_path, monkeypatch):
    reference = wd.trace("torch", model=small_random, out=tmp_path / "torch")
    cap, run = port(small_random)  # the full capture of the working port: its map
    trace_captured(tmp_path / "clean", cap, run, model=small_random, impl="port", map_path=tmp_path / "port.map.toml")
    saved = read_map(tmp_path / "port.map.toml")
    n_full = len(cap.chosen)

    # the same graph with block 1's key projection loaded with its query weight: what a full trace says
    cap, run = port(small_random, bug="key-from-query")
    trace_captured(tmp_path / "full", cap, run, model=small_random, impl="port", reference=reference, saved=saved)
    full = wd.compare(reference, tmp_path / "full")
    assert full.first_divergence == "blocks.1.attn.k", full.findings[:2]

    broken = lambda select: port(small_random, select, "key-from-query")  # noqa: E731
    from max.engine import InferenceSession

    loads, load = [], InferenceSession.load  # what each step's build loads: the graph's text, the block picked

    def recording_load(self, graph, **kwargs):
        pick = (kwargs.get("weights_registry") or {}).get(wd.PICK_WEIGHT)
        loads.append((hashlib.sha256(str(graph).encode()).hexdigest(), None if pick is None else int(pick[0])))
        return load(self, graph, **kwargs)

    monkeypatch.setattr(InferenceSession, "load", recording_load)
    b = wd.bisect_port(reference, broken, saved=saved, out=tmp_path / "bisect")
    monkeypatch.undo()
    assert b.first_divergence == full.first_divergence
    top, top_full = b.comparison.findings[0], full.findings[0]
    assert (top.kind, top.op) == (top_full.kind, top_full.op) == ("wrong_weight", "blocks.1.attn.k"), top.message
    first, second = b.steps
    assert first.first_divergence == "blocks.1.out" and second.first_divergence == "blocks.1.attn.k"
    assert first.tap_count == 5 + 2 + 1  # the stem (conv1 ... pos_embed), each block's output, ln_post
    assert max(s.tap_count for s in b.steps) < n_full / 2  # no step outputs every value
    assert not any("not traced" in w for w in b.comparison.warnings), b.comparison.warnings
    # one graph: step 2 loads step 1's (a cache hit, not a compile) with the Weight set to block 1
    assert len(loads) == 2 and loads[0][0] == loads[1][0] and loads[1][1] == 1, loads
    step2, whole = wd.load_trace(second.trace), wd.load_trace(tmp_path / "full")
    assert "blocks.0.attn.k" not in step2.ops  # the picked block's values, named as block 1's, are block 1's
    np.testing.assert_allclose(step2["blocks.1.attn.q"], whole["blocks.1.attn.q"], rtol=1e-4, atol=1e-5)
    cap, run = port(small_random, wd.ChosenOnly(["blocks.0"]))
    with pytest.raises(wd.WhisperdiffError, match="ln_post is the port's own output, and this graph leaves it out"):
        trace_captured(tmp_path / "alone", cap, run, model=small_random, impl="port", reference=reference)
    assert not (tmp_path / "alone").exists()

    with pytest.raises(wd.WhisperdiffError, match="the map names no value for conv1, "):
        wd.bisect_port(reference, broken, saved={"ops": {}}, out=tmp_path / "nomap")
