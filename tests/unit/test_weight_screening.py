"""A linear op's other weights of its shape are screened on a sample of its steps (hypotheses_weights.py): the
hypotheses that could name a finding, or stand as its rival, keep the scores a replay on every step gives."""

from __future__ import annotations

import torch

import whisperdiff.analysis.hypotheses_weights as weights
from whisperdiff.analysis.hypotheses import explain
from whisperdiff.analysis.replay import Replayer


def test_screened_weights_keep_every_score_that_could_matter(small_random, monkeypatch):
    rp = Replayer(small_random)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, small_random.dims.n_audio_ctx, small_random.dims.n_audio_state, generator=gen)
    # blocks.1.attn.k computed with block 0's query weight, plus a little noise: the best fit is not exact
    out = x @ rp.w["encoder.blocks.0.attn.query.weight"].T
    out += 1e-3 * out.std() * torch.randn(out.shape, generator=gen)
    inputs = [x.numpy(), out.numpy()]

    screened = explain(rp, "blocks.1.attn.k", inputs)["hypotheses"]
    monkeypatch.setattr(weights, "SCREEN_STEPS", 10**9)  # no op has that many steps: every weight on every step
    every_step = explain(rp, "blocks.1.attn.k", inputs)["hypotheses"]

    assert [h[:2] for h in screened] == [h[:2] for h in every_step]  # the same hypotheses, in the same order
    best = min(h[2] for h in every_step)
    assert min(h[2] for h in screened) == best and best < 1e-2
    sampled = [(s, f) for s, f in zip(screened, every_step, strict=True) if "sampled_steps" in s[3]]
    assert len(sampled) >= 6  # the other weights were screened, not replayed on every step
    for s, f in zip(screened, every_step, strict=True):
        if "sampled_steps" not in s[3]:
            assert abs(s[2] - f[2]) <= 1e-6 * max(f[2], 1e-30), s[:3]
    for s, f in sampled:  # far from the best on every step too (a rival must come within 2x), and estimated
        assert f[2] > 2 * best and abs(s[2] - f[2]) < 0.25 * f[2], (s[:3], f[2])
