"""Decoder ops get the op-type hypotheses of their encoder twins, and the decoder's own (causal mask, KV
cache, tied output projection), each replayed on B's own inputs: real weights, real torch.

Each case computes what a buggy decoder would record for one op from inputs of the right shape, the way
the bug computes it (written here, not with the replay's helpers), and asks `explain` which hypothesis
reproduces it; the wording a user reads is part of what is asserted.
"""

import math

import numpy as np
import pytest
import torch

from whisperdiff.analysis.hypotheses import explain
from whisperdiff.analysis.logits import _decoder_input, _token_row
from whisperdiff.analysis.replay import Replayer

P = 10  # teacher-forced tokens
PROMPT = 3  # the prompt step's rows; one-token steps (through the KV cache) from here on


@pytest.fixture(scope="module")
def rp(small_random):
    r = Replayer(small_random, parts=("encoder", "decoder"))
    r.decoder_context = {"prompt_length": PROMPT}
    return r


def qkv(rp, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = rp.dims.n_text_state
    return [torch.randn(1, P, c, generator=g) * 2 for _ in range(3)]


def probs(q, k, n_head, keys_of_row):
    """Softmax rows, each over the keys (positions; None: a zero key) its cache slots hold, by slot."""
    b, t, c = q.shape
    d = c // n_head
    out = torch.zeros(b, n_head, t, t)
    for r in range(t):
        keys = keys_of_row(r)
        if not keys:  # a row that sees no key: softmax over nothing is NaN
            out[0, :, r] = math.nan
            continue
        kk = torch.stack([k[0, j] if j is not None else torch.zeros(c) for j in keys])
        for h in range(n_head):
            s = q[0, r, h * d : (h + 1) * d] @ kk[:, h * d : (h + 1) * d].T * d**-0.5
            out[0, h, r, : len(keys)] = s.softmax(-1)
    return out


def best(rp, op, inputs, out, ctx=None):
    found = explain(rp, op, [x.numpy() for x in inputs] + [out.numpy()], ctx or {})
    hyps = sorted(found["hypotheses"], key=lambda h: h[2])
    assert hyps and hyps[0][2] < 0.2 * found["introduced"], (found["introduced"], hyps[:3])
    return hyps[0]


CACHE_BUGS = {  # row r's keys, slot by slot, under each bug (rows before PROMPT: the prompt step, right)
    "mask off by two": (lambda r: list(range(min(r + 3, P))), "attention_mask", "off by 2"),
    "mask hides the diagonal": (lambda r: list(range(r)), "attention_mask", "diagonal"),
    "an entry never stored": (
        lambda r: list(range(r + 1)) if r < PROMPT else [j for j in range(r + 1) if j != PROMPT - 1],
        "kv_cache",
        "missing from the cache",
    ),
    "each write also overwrites the slot before": (
        lambda r: list(range(r + 1)) if r < PROMPT else [j + 1 if PROMPT - 1 <= j < r else j for j in range(r + 1)],
        "kv_cache",
        "overwrites slot p - 1",
    ),
    "entries written one slot ahead": (
        lambda r: (
            list(range(r + 1))
            if r < PROMPT
            else [j if j < PROMPT else None if j == PROMPT else j - 1 for j in range(r + 1)]
        ),
        "kv_cache",
        "one ahead",
    ),
}


@pytest.mark.parametrize("bug", sorted(CACHE_BUGS))
def test_self_attention_mask_and_kv_cache_bugs_are_told_apart_by_replay(rp, bug):
    keys_of_row, kind, words = CACHE_BUGS[bug]
    q, k, _ = qkv(rp)
    out = probs(q, k, rp.n_head, keys_of_row)
    got_kind, text, err, _ = best(rp, "decoder.blocks.0.attn.weights", [q, k], out)
    assert got_kind == kind and words in text, text
    assert "one short" not in text and "no causal mask" not in text


def test_keys_and_values_swapped_in_the_kv_cache_at_every_step_are_named_with_b_own_values(rp):
    """A port that unpacks the cache a step returns as (values, keys): an entry is read swapped after an odd
    number of steps since it was written. Probabilities have no V of their own: B's recorded attn.v is used."""
    q, k, v = qkv(rp)
    d, out = rp.dims.n_text_state // rp.n_head, torch.zeros(1, rp.n_head, P, P)
    for r in range(P):
        step = 0 if r < PROMPT else r - PROMPT + 1
        written = [0 if j < PROMPT else j - PROMPT + 1 for j in range(r + 1)]
        kk = torch.stack([(v if w != step and (step - w) % 2 else k)[0, j] for j, w in enumerate(written)])
        for h in range(rp.n_head):
            s = q[0, r, h * d : (h + 1) * d] @ kk[:, h * d : (h + 1) * d].T * d**-0.5
            out[0, h, r, : r + 1] = s.softmax(-1)
    ctx = {"b_value": lambda name: v.numpy() if name == "decoder.blocks.0.attn.v" else None}
    got_kind, text, _, _ = best(rp, "decoder.blocks.0.attn.weights", [q, k], out, ctx)
    assert got_kind == "kv_cache" and "swapped at every step" in text, text


def test_the_kv_cache_held_in_float16_is_named_from_the_attention_output(rp):
    q, k, v = qkv(rp)
    kh, vh = k.half().float(), v.half().float()
    p = probs(q, kh, rp.n_head, lambda r: list(range(r + 1)))
    d = k.shape[-1] // rp.n_head
    out = torch.cat([p[:, h] @ vh[..., h * d : (h + 1) * d] for h in range(rp.n_head)], -1)
    kind, text, _, _ = best(rp, "decoder.blocks.0.attn.wv", [q, k, v], out)
    assert kind == "precision" and "float16 KV cache" in text, text


def test_a_cross_attention_padding_mask_is_named_with_the_audio_length(rp):
    g = torch.Generator().manual_seed(1)
    c, t_audio, valid = rp.dims.n_text_state, 1500, 216
    q, k = torch.randn(1, P, c, generator=g), torch.randn(1, t_audio, c, generator=g)
    d = c // rp.n_head
    s = torch.stack([q[..., h * d : (h + 1) * d] @ k[..., h * d : (h + 1) * d].transpose(-1, -2) for h in range(2)], 1)
    s[..., valid:] = -math.inf
    out = (s * d**-0.5).softmax(-1)
    kind, text, _, _ = best(rp, "decoder.blocks.0.cross_attn.weights", [q, k], out, {"valid_steps": {t_audio: valid}})
    assert kind == "attention_mask" and "padding mask in the cross-attention" in text and "216" in text, text


def test_a_decoder_scale_of_one_over_sqrt_d_model_is_said_in_those_words(rp):
    q, k, _ = qkv(rp)
    d_model = rp.dims.n_text_state
    d = d_model // rp.n_head
    s = torch.stack([q[..., h * d : (h + 1) * d] @ k[..., h * d : (h + 1) * d].transpose(-1, -2) for h in range(2)], 1)
    out = (s * d_model**-0.5 + torch.full((P, P), -math.inf).triu(1)).softmax(-1)
    kind, text, _, _ = best(rp, "decoder.blocks.0.attn.weights", [q, k], out)
    assert kind == "attention_scale" and f"1/sqrt(d_model) = 1/sqrt({d_model})" in text, text


def test_a_reshaped_decoder_weight_is_called_reshaped_not_transposed(rp):
    x = qkv(rp)[0]
    w, b = rp.w["decoder.blocks.0.mlp.0.weight"], rp.w["decoder.blocks.0.mlp.0.bias"]
    out = x @ w.reshape(w.shape[1], w.shape[0]) + b
    kind, text, _, _ = best(rp, "decoder.blocks.0.mlp.fc1", [x], out)
    assert kind == "weight_layout" and "reshaped to" in text and "x @ W instead of x @ W.T" not in text, text


def test_logits_before_the_final_layer_norm_and_suppressed_tokens(rp):
    g = torch.Generator().manual_seed(2)
    before = torch.randn(1, P, rp.dims.n_text_state, generator=g)
    ln = rp.layer_norm("decoder.ln", before)
    emb = rp.w["decoder.token_embedding.weight"]
    kind, text, _, _ = best(rp, "decoder.logits", [ln, before], before @ emb.T)
    assert kind == "missing_op" and "before the final layer norm" in text, text
    suppressed = ln @ emb.T
    suppressed[..., [50256, 50257]] = -1e4
    kind, text, _, _ = best(rp, "decoder.logits", [ln, before], suppressed)
    assert kind == "suppression" and "50256, 50257" in text and "-10000" in text, text


def test_a_wrong_token_row_and_a_decoder_fed_before_ln_post_are_input_differences(rp, small_random):
    emb = rp.w["decoder.token_embedding.weight"].numpy()
    manifest = {"model": {"dims": vars(small_random.dims)}, "decoder": {"tokens": [50257, 50362, 383]}}
    f = _token_row("decoder.tok_embed", 0, emb[50258], emb, manifest)
    assert f.kind == "input_mismatch" and "token 50258" in f.message and "50257" in f.message, f.message
    assert _token_row("decoder.tok_embed", 0, emb[50257], emb, manifest) is None  # the token fed: nothing to say
    g = np.random.default_rng(0)
    x = g.normal(size=(1, 1500, rp.dims.n_audio_state)) * 3 + 1
    ln_post = rp.layer_norm("encoder.ln_post", torch.from_numpy(x).float()).numpy()
    f = _decoder_input(ln_post, x, {k: v.numpy() for k, v in rp.w.items()})
    assert f.kind == "input_mismatch" and "before the final layer norm" in f.message, f.message
    assert _decoder_input(ln_post, ln_post, {k: v.numpy() for k, v in rp.w.items()}) is None


def test_a_layer_norm_op_that_holds_no_layer_norm_output_is_named_from_b_alone(small_random):
    """B's value at a layer-norm op with nothing to replay it on (here ln_post as a decoder trace holds it:
    the decoder fed an earlier block's output). B alone shows it is not that norm's output; a value
    normalised without the norm's weight and bias is told apart; a real norm output with an error of
    another kind gets neither."""
    from whisperdiff.analysis.diagnose import norm_params, op_finding

    rp = Replayer(small_random, parts=("encoder",))
    g = np.random.default_rng(1)
    w = rp.w["encoder.ln_post.weight"]  # trained norms are far from the identity (random ones are near it)
    rp.w["encoder.ln_post.weight"] = w * torch.from_numpy(g.uniform(0.3, 4.0, w.shape)).float()
    rp.w["encoder.ln_post.bias"] = rp.w["encoder.ln_post.bias"] * 10
    c = rp.dims.n_audio_state
    stream = g.normal(size=(1, 1500, c)) * 3 + g.normal(size=(1, 1, c))  # a residual stream, per-channel offsets
    a = rp.layer_norm("encoder.ln_post", torch.from_numpy(stream).float()).numpy()
    earlier = stream * 0.7 + g.normal(size=stream.shape)  # another block's output: not normalised
    plain = (earlier - earlier.mean(-1, keepdims=True)) / earlier.std(-1, keepdims=True)
    noisy = a + 0.05 * g.normal(size=a.shape) * a.std()
    other = rp.layer_norm("encoder.blocks.0.attn_ln", torch.from_numpy(stream).float()).numpy()
    vectors = {k: v.numpy() for k, v in rp.w.items() if v.ndim == 1}
    ctx = {"norm_params": lambda op: norm_params(rp, op), "layout": "B,T,C", "vectors": vectors}

    def finding(b):
        row = {"name": "ln_post", "rel_l2": float(np.linalg.norm(b - a) / np.linalg.norm(a)), "cosine": 0.5}
        row.update(std_ratio=float(b.std() / a.std()), nan_a=0, inf_a=0, nan_b=0, inf_b=0)
        return op_finding(row, None, {}, a=a, b=b.astype(np.float32), context=ctx)

    f = finding(earlier)
    assert f.kind == "wiring" and "not the output of this layer norm" in f.message, f.message
    assert "earlier block" in f.message, f.message
    f = finding(plain)
    assert f.kind == "wrong_weight" and "without ln_post's weight and bias" in f.message, f.message
    f = finding(other)
    assert f.kind == "wrong_weight" and "blocks.0.attn_ln's weight and bias" in f.message, f.message
    assert finding(noisy).kind not in ("wiring", "wrong_weight")
    assert norm_params(rp, "blocks.0.mlp.fc1") is None  # not a layer norm: nothing to test B against
