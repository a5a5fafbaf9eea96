"""The replay makes each weight when it first reads it and keeps only the matrices read last (LazyWeights):
a large-v3 encoder is 2.5 GB of float32. What it replays and explains must not depend on what it keeps."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from whisperdiff.analysis.hypotheses import explain
from whisperdiff.analysis.replay import LazyWeights, Replayer


class Counting(Mapping):
    """A state dict that counts the tensors made from it."""

    def __init__(self, state):
        self.state, self.made = state, []

    def __getitem__(self, key):
        self.made.append(key)
        return self.state[key]

    def __iter__(self):
        return iter(self.state)

    def __len__(self):
        return len(self.state)


class Model:
    def __init__(self, loaded, state):
        self.dims, self.state_dict = loaded.dims, state


def test_shapes_and_membership_make_no_tensor(small_random):
    state = Counting(small_random.state_dict)
    w = LazyWeights(Model(small_random, state), [k for k in state.state if k.startswith("encoder.")])
    key = "encoder.blocks.0.attn.query.weight"
    assert key in w and "decoder.token_embedding.weight" not in w
    assert w.shape_of(key) == tuple(small_random.state_dict[key].shape)
    assert state.made == []
    assert torch.equal(w[key], small_random.state_dict[key].float())
    assert state.made == [key]


def test_kept_matrices_fit_the_budget_and_vectors_stay(small_random):
    state = Counting(small_random.state_dict)
    names = [k for k in state.state if k.startswith("encoder.")]
    matrix = small_random.state_dict["encoder.blocks.0.attn.query.weight"].float().nbytes
    w = LazyWeights(Model(small_random, state), names, kept_bytes=2 * matrix)
    for k in names:
        w[k]
        matrices = [t for t in {**w._kept, **w._fixed}.values() if t.ndim > 1]
        assert sum(t.nbytes for t in matrices) <= 2 * matrix or len(matrices) == 1  # the one just read stays
    kept = {**w._kept, **w._fixed}
    assert all(k in kept for k in names if len(w.shape_of(k)) == 1)  # every vector
    made = len(state.made)
    w[names[-1]], w["encoder.ln_post.bias"]  # the last read, and a vector: no tensor made again
    assert len(state.made) == made
    w["encoder.conv1.weight"]  # read first, dropped since: made again
    assert len(state.made) == made + 1


def test_replay_and_explain_do_not_depend_on_what_is_kept(small_random):
    gen = torch.Generator().manual_seed(0)
    d = small_random.dims
    x = torch.randn(1, d.n_audio_ctx, d.n_audio_state, generator=gen)
    full = Replayer(small_random)
    out = x @ full.w["encoder.blocks.0.attn.query.weight"].T  # blocks.1.attn.k with block 0's query weight
    inputs = [x.numpy(), out.numpy()]
    names = list(full.w)
    none_kept = Replayer(small_random, LazyWeights(small_random, names, kept_bytes=0))
    assert full.replay("blocks.1.attn.k", inputs) == none_kept.replay("blocks.1.attn.k", inputs)
    found, again = explain(full, "blocks.1.attn.k", inputs), explain(none_kept, "blocks.1.attn.k", inputs)
    assert found["hypotheses"] == again["hypotheses"]
    best = min(found["hypotheses"], key=lambda h: h[2])
    assert best[0] == "wrong_weight" and "blocks.0.attn.q" in best[1] and best[2] < 1e-5
