"""The held-out diagnosis set itself (benchmarks/heldout_bugs.py on benchmarks/heldout_ports.py), checked
cheaply on a small random model: the clean HF port runs, the set's size and vocabulary, and each bug
changes its expected op first (every earlier op, and for the decoder every earlier position of that op,
bit-identical to the clean port) and really changes that op."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import heldout_bugs as hb  # noqa: E402
import heldout_ports as hp  # noqa: E402

MODEL = "random:tiny,n_audio_layer=4,n_audio_state=32,n_audio_head=4,n_text_layer=4,n_text_state=32,n_text_head=4"
PROMPT = [50257, 50362]
TOKENS = PROMPT + [383, 2068, 7586, 21831, 4391, 625]


@pytest.fixture(scope="module")
def model():
    import whisperdiff as wd

    torch.set_num_threads(1)
    return wd.load_model(MODEL)


def _order(model, decoder=False):
    from whisperdiff.names import decoder_op_specs, op_specs

    specs = decoder_op_specs(model.dims, len(TOKENS)) if decoder else op_specs(model.dims)
    return [s.name for s in specs]


def test_set_size_and_vocabulary():
    assert len(hb.ENCODER_BUGS) >= 30 and len(hb.DECODER_BUGS) >= 20
    assert len(hb.BY_NAME) == len(hb.ALL)
    assert set(hp.ENCODER_BUGS) == {b.name for b in hb.ENCODER_BUGS}
    assert set(hp.DECODER_BUGS) == {b.name for b in hb.DECODER_BUGS}
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", (ROOT / "docs/compare.md").read_text(), re.M))
    assert hb.VOCABULARY_AT_WRITING <= documented
    undocumented = {k for b in hb.ALL for k in b.kinds} - documented
    assert undocumented <= {"kv_cache", "causal_mask"}, undocumented
    for b in hb.ALL:
        assert b.words, b.name


def test_name_map_covers_every_weight(model):
    names = {hp.hf_name(k) for k in model.state_dict}
    assert len(names) == len(model.state_dict)


@pytest.fixture(scope="module")
def clean_encoder(model):
    port = hp.HFEncoderPort(model)
    return port.mel(), port.run(port.mel())


def test_clean_frontend_matches_whisper(model):
    from whisperdiff.inputs.audio import prepare_input  # what wd.Tracer(...).mel holds: Whisper's log-mel

    want = prepare_input(model.dims.n_mels, audio=None, window=0).mel.astype(np.float64)
    got = hp.log_mel(hp.read_wav(hp.default_audio_path()), model.dims.n_mels)[None].astype(np.float64)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5


@pytest.mark.parametrize("bug", [b.name for b in hb.ENCODER_BUGS])
def test_encoder_bug_shows_first_at_its_op(model, clean_encoder, bug):
    clean_mel, clean = clean_encoder
    b = hb.BY_NAME[bug]
    want = hb.expected_op(b, weights=False)
    port = hp.HFEncoderPort(model, bug=bug)
    order = ["mel"] + _order(model)
    order = [o for o in dict.fromkeys(order) if o in clean]
    got = port.run(clean_mel if b.klass != "frontend" else port.mel(), stop_after=want)
    for op in order:
        if op == want:
            break
        if bug == "block-skipped" and op.startswith("blocks.2."):
            assert op not in got
            continue
        assert np.array_equal(got[op], clean[op]), f"{bug}: {op} changed before {want}"
    a, g = clean[want].astype(np.float64), got[want].astype(np.float64)
    assert a.shape == g.shape
    # precision bugs are too small to cross the float32 bar on a random model's flat attention: changed is enough
    bar = 0.0 if b.klass == "precision" else 1e-4
    assert np.linalg.norm(g - a) / np.linalg.norm(a) > bar, f"{bug}: {want} barely changed"


@pytest.fixture(scope="module")
def decoder_setup(model):
    enc = hp.clean_encoder_output(model)
    clean = {}
    for full in (False, True):
        clean[full] = hp.HFDecoderPort(model).run(TOKENS, enc[0], len(PROMPT), full=full, duration_s=4.32)
    return enc, clean


@pytest.mark.parametrize("bug", [b.name for b in hb.DECODER_BUGS])
def test_decoder_bug_shows_first_at_its_op_and_position(model, decoder_setup, bug):
    (ln_post, pre_ln), clean_runs = decoder_setup
    b = hb.BY_NAME[bug]
    port = hp.HFDecoderPort(model, bug=bug)
    port._pre_ln_post = pre_ln
    full = bug in hp.FULL_SEQUENCE_BUGS
    got = port.run(TOKENS, ln_post, len(PROMPT), duration_s=4.32)
    clean = clean_runs[full]
    order = [o for o in _order(model, decoder=True) if o in clean]
    for op in order:
        if op == b.op:
            break
        if "precision" in b.kinds and op.startswith(b.op.rsplit(".", 1)[0] + "."):
            continue  # a precision bug may move its attention's earlier ops by less than the bar (model-dependent)
        assert np.array_equal(got[op], clean[op]), f"{bug}: {op} changed before {b.op}"
    a, g = clean[b.op], got[b.op]
    assert a.shape == g.shape
    if b.position is None:
        assert not np.array_equal(a, g)
        return
    axis = 2 if a.ndim == 4 else 1
    for p in range(b.position):
        assert np.array_equal(np.take(a, p, axis), np.take(g, p, axis)), f"{bug}: {b.op} position {p} changed"
    pa, pg = np.take(a, b.position, axis).astype(np.float64), np.take(g, b.position, axis).astype(np.float64)
    finite = np.isfinite(pg).all()
    # precision effects are tiny on a random model's flat attention: changed is enough
    bar = 0.0 if "precision" in b.kinds else 1e-4
    assert (not finite) or np.linalg.norm(pg - pa) / np.linalg.norm(pa) > bar, (
        f"{bug}: position {b.position} barely changed"
    )
