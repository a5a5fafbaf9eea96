"""Diagnosis by op type: bugs planted in an encoder of our own (torch, written here, not whisperdiff's
replay), traced with the real TraceWriter and compared with the real openai-whisper trace.

Each planted bug replaces one op's formula; its effect propagates through every later op as in a
real port. compare must name the first op that introduces error and the kind the evidence supports.
"""

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import whisperdiff as wd
from whisperdiff.analysis.compare import compare
from whisperdiff.analysis.replay import round_to


@pytest.fixture(scope="module")
def ref(tmp_path_factory, small_random):
    return wd.trace("torch", model=small_random, out=tmp_path_factory.mktemp("ref") / "torch", taps="all")


def port(model, mel, bugs=None, dtype=torch.float32):
    """A plain torch Whisper encoder: yields (canonical name, value). bugs: op -> (correct fn, *inputs) -> value."""
    bugs = bugs or {}
    sd = {k: v.to(dtype) for k, v in model.state_dict.items() if k.startswith("encoder.")}
    d = model.dims
    h = d.n_audio_head

    def w(name):
        return sd[f"encoder.{name}"]

    def op(name, fn, *xs):
        return bugs.get(name, lambda f, *a: f(*a))(fn, *xs)

    def ln(p):
        return lambda x: F.layer_norm(x, x.shape[-1:], w(f"{p}.weight"), w(f"{p}.bias"), 1e-5)

    def lin(p, bias=True):
        return lambda x: x @ w(f"{p}.weight").T + (w(f"{p}.bias") if bias else 0)

    def attn_weights(q, k):
        b, t, c = q.shape
        qh = q.view(b, t, h, -1).permute(0, 2, 1, 3)
        kh = k.view(b, t, h, -1).permute(0, 2, 3, 1)
        return ((qh @ kh) * (c // h) ** -0.5).softmax(-1)

    def wv(p, v):
        b, t, c = v.shape
        return (p @ v.view(b, t, h, -1).permute(0, 2, 1, 3)).permute(0, 2, 1, 3).reshape(b, t, c)

    x = op("mel", lambda m: m, torch.from_numpy(np.array(mel)).to(dtype))
    yield "mel", x
    x = op("conv1", lambda x: F.conv1d(x, w("conv1.weight"), w("conv1.bias"), padding=1), x)
    yield "conv1", x
    x = op("conv1.gelu", F.gelu, x)
    yield "conv1.gelu", x
    x = op("conv2", lambda x: F.conv1d(x, w("conv2.weight"), w("conv2.bias"), stride=2, padding=1), x)
    yield "conv2", x
    x = op("conv2.gelu", F.gelu, x)
    yield "conv2.gelu", x
    x = op("pos_embed", lambda x: x.permute(0, 2, 1) + w("positional_embedding"), x)
    yield "pos_embed", x
    for i in range(d.n_audio_layer):
        p = f"blocks.{i}"
        a = op(f"{p}.attn_ln", ln(f"{p}.attn_ln"), x)
        yield f"{p}.attn_ln", a
        q = op(f"{p}.attn.q", lin(f"{p}.attn.query"), a)
        k = op(f"{p}.attn.k", lin(f"{p}.attn.key", bias=False), a)
        v = op(f"{p}.attn.v", lin(f"{p}.attn.value"), a)
        yield from ((f"{p}.attn.q", q), (f"{p}.attn.k", k), (f"{p}.attn.v", v))
        pr = op(f"{p}.attn.weights", attn_weights, q, k)
        yield f"{p}.attn.weights", pr
        o = op(f"{p}.attn.wv", wv, pr, v)
        yield f"{p}.attn.wv", o
        o = op(f"{p}.attn.out", lin(f"{p}.attn.out"), o)
        yield f"{p}.attn.out", o
        x = op(f"{p}.attn_residual", lambda x, y: x + y, x, o)
        yield f"{p}.attn_residual", x
        m = op(f"{p}.mlp_ln", ln(f"{p}.mlp_ln"), x)
        yield f"{p}.mlp_ln", m
        m = op(f"{p}.mlp.fc1", lin(f"{p}.mlp.0"), m)
        yield f"{p}.mlp.fc1", m
        m = op(f"{p}.mlp.gelu", F.gelu, m)
        yield f"{p}.mlp.gelu", m
        m = op(f"{p}.mlp.fc2", lin(f"{p}.mlp.2"), m)
        yield f"{p}.mlp.fc2", m
        x = op(f"{p}.out", lambda x, y: x + y, x, m)
        yield f"{p}.out", x
    yield "ln_post", op("ln_post", ln("ln_post"), x)


def traced(ref, model, out, bugs=None, dtype=torch.float32, drop=(), taps="all"):
    manifest = {k: v for k, v in ref.manifest.items() if k not in ("ops", "schema", "schema_version", "created")}
    manifest.update(impl="test-port", taps=taps)
    with torch.no_grad(), wd.TraceWriter(out, manifest) as writer:
        for name, value in port(model, np.asarray(ref["mel"]), bugs, dtype):
            if name not in drop:
                writer.record(name, value.float().numpy())
    return wd.load_trace(out)


def heads_wrong(q, k):  # split as [T, d_head, n_head]
    b, t, c = q.shape
    h = 2
    qh = q.view(b, t, -1, h).permute(0, 3, 1, 2)
    kh = k.view(b, t, -1, h).permute(0, 3, 2, 1)
    return ((qh @ kh) * (c // h) ** -0.5).softmax(-1)


def natural_log_mel(mel):
    log10 = 4 * mel.double() - 4
    return ((torch.maximum(math.log(10) * log10, math.log(10) * log10.max() - 8) + 4) / 4).float()


def shifted_pos(f, x):
    table = f(x) - x.permute(0, 2, 1)  # the correct op's table, recovered from its output
    return x.permute(0, 2, 1) + torch.cat([table[:, 1:], table[:, -1:]], 1)  # position t gets t+1


def _ln_bug(model, name, **kw):
    sd = model.state_dict
    g, b = sd[f"encoder.{name}.weight"].float(), sd[f"encoder.{name}.bias"].float()

    def bug(f, x):
        if kw.get("rms"):
            n = x / ((x * x).mean(-1, keepdim=True) + 1e-5).sqrt()
        else:
            mu = x.mean(-1, keepdim=True)
            var = x.var(-1, keepdim=True, correction=kw.get("correction", 0))
            n = (x - mu) / (var + kw.get("eps", 1e-5)).sqrt()
        return n * g + (b if kw.get("beta", True) else 0)

    return bug


def _lin_bug(model, name, weight=None, bias=True, transpose=False):
    sd = model.state_dict
    wt = sd[f"encoder.{weight or name}.weight"].float()
    b = sd.get(f"encoder.{name}.bias")

    def bug(f, x):
        y = x @ (wt if transpose else wt.T)
        return y + b.float() if bias and b is not None else y

    return bug


def _conv_bug(model, name, stride, pad=(1, 1), flip=False, bias=True, layout=False):
    sd = model.state_dict
    wt, b = sd[f"encoder.{name}.weight"].float(), sd[f"encoder.{name}.bias"].float()
    if layout:  # a [k, in, out] filter (as MAX's conv wants) made by reshape, not permute
        wt = wt.reshape(wt.shape[2], wt.shape[1], wt.shape[0]).permute(2, 1, 0)
    return lambda f, x: F.conv1d(F.pad(x, pad), wt.flip(-1) if flip else wt, b if bias else None, stride=stride)


def _attn_bug(**kw):
    def bug(f, q, k):
        b, t, c = q.shape
        qh = q.view(b, t, 2, -1).permute(0, 2, 1, 3)
        kh = k.view(b, t, 2, -1).permute(0, 2, 1, 3)
        if kw.get("swap"):
            qh, kh = kh, qh
        if kw.get("qk") == "tf32":  # q @ k^T as a GPU's float32 matmul on tensor cores: operands rounded
            qh, kh = round_to(qh, "tf32"), round_to(kh, "tf32")
        elif kw.get("qk") is not None:  # q @ k^T as a half-precision matmul, the scale applied in it too
            qh, kh = qh.to(kw["qk"]), kh.to(kw["qk"])
        s = ((qh @ kh.transpose(-1, -2)) * kw.get("scale", (c // 2) ** -0.5)).float()
        if kw.get("causal"):
            s = s + torch.full((t, t), -math.inf).triu(1)
        if kw.get("softmax") is not None:  # the softmax alone in another precision
            return s.to(kw["softmax"]).softmax(-1).float()
        return s.softmax(kw.get("axis", -1))

    return bug


def bf16_matmul(model, name):
    sd = model.state_dict
    wt, b = sd[f"encoder.{name}.weight"], sd[f"encoder.{name}.bias"]
    return lambda f, x: (x.bfloat16() @ wt.bfloat16().T + b.bfloat16()).float()


def cases(model):
    """(bugs, expected op, expected kind, a word the message must contain)."""
    return [
        ({"mel": lambda f, m: natural_log_mel(m)}, "mel", "input_mismatch", "natural log"),
        ({"conv1": _conv_bug(model, "conv1", 1, flip=True)}, "conv1", "conv_kernel", "flipped"),
        ({"conv1": _conv_bug(model, "conv1", 1, bias=False)}, "conv1", "bias_error", "bias"),
        ({"conv2": _conv_bug(model, "conv2", 2, pad=(2, 0))}, "conv2", "conv_padding", "left"),
        ({"conv1": _conv_bug(model, "conv1", 1, layout=True)}, "conv1", "weight_layout", "read as [k, in, out]"),
        ({"conv2.gelu": lambda f, x: x * torch.sigmoid(1.702 * x)}, "conv2.gelu", "activation_approx", "quick"),
        ({"blocks.0.mlp.gelu": lambda f, x: F.relu(x)}, "blocks.0.mlp.gelu", "wrong_activation", "ReLU"),
        ({"pos_embed": shifted_pos}, "pos_embed", "positional", "shifted by +1"),
        ({"pos_embed": lambda f, x: x.permute(0, 2, 1)}, "pos_embed", "positional", "not added"),
        (
            {"blocks.1.mlp_ln": _ln_bug(model, "blocks.1.mlp_ln", beta=False)},
            "blocks.1.mlp_ln",
            "layer_norm_affine",
            "beta",
        ),
        ({"ln_post": _ln_bug(model, "ln_post", correction=1)}, "ln_post", "layer_norm_variance", "n-1"),
        ({"blocks.0.attn_ln": _ln_bug(model, "blocks.0.attn_ln", rms=True)}, "blocks.0.attn_ln", "rms_norm", "RMSNorm"),
        (
            {"blocks.1.attn_ln": _ln_bug(model, "blocks.1.attn_ln", eps=1e-2)},
            "blocks.1.attn_ln",
            "layer_norm_eps",
            "0.01",
        ),
        (
            {"blocks.0.attn.out": _lin_bug(model, "blocks.0.attn.out", transpose=True)},
            "blocks.0.attn.out",
            "weight_layout",
            "transposed",
        ),
        ({"blocks.1.mlp.fc2": _lin_bug(model, "blocks.1.mlp.2", bias=False)}, "blocks.1.mlp.fc2", "bias_error", "bias"),
        (
            {"blocks.1.attn.q": _lin_bug(model, "blocks.1.attn.query", weight="blocks.0.attn.query")},
            "blocks.1.attn.q",
            "wrong_weight",
            "uses blocks.0.attn.q's weight",
        ),
        (
            {
                "blocks.0.attn.q": _lin_bug(model, "blocks.0.attn.query", weight="blocks.0.attn.key"),
                "blocks.0.attn.k": _lin_bug(model, "blocks.0.attn.key", weight="blocks.0.attn.query"),
            },
            "blocks.0.attn.q",
            "swapped_projections",
            "swapped",
        ),
        ({"blocks.0.attn.weights": _attn_bug(axis=-2)}, "blocks.0.attn.weights", "softmax_axis", "query axis"),
        ({"blocks.1.attn.weights": _attn_bug(causal=True)}, "blocks.1.attn.weights", "attention_mask", "causal"),
        ({"blocks.0.attn.weights": _attn_bug(scale=1.0)}, "blocks.0.attn.weights", "attention_scale", "solved"),
        ({"blocks.0.attn.weights": _attn_bug(swap=True)}, "blocks.0.attn.weights", "swapped_projections", "q and k"),
        ({"blocks.1.attn.weights": lambda f, q, k: heads_wrong(q, k)}, "blocks.1.attn.weights", "head_split", "d_head"),
        ({"blocks.0.mlp.fc1": bf16_matmul(model, "blocks.0.mlp.0")}, "blocks.0.mlp.fc1", "precision", "bfloat16"),
        ({"blocks.1.attn_ln": lambda f, x: round_to(f(x), "float16")}, "blocks.1.attn_ln", "precision", "float16"),
        ({"blocks.0.out": lambda f, x, y: y}, "blocks.0.out", "missing_residual", "residual"),
        ({"blocks.0.mlp.fc2": lambda f, x: -f(x)}, "blocks.0.mlp.fc2", "sign_flip", "negated"),
        # issue 23's classes, each named in the user's terms
        ({"blocks.1.mlp.fc1": _reshaped(model, "blocks.1.mlp.0")}, "blocks.1.mlp.fc1", "weight_layout", "reshaped to"),
        (
            {"blocks.0.attn.k": _other_bias(model, "blocks.0.attn.query")},
            "blocks.0.attn.k",
            "bias_error",
            "received blocks.0.attn.q's bias",
        ),
        ({"conv2": _stride1(model, "conv2", last=True)}, "conv2", "conv_stride", "truncated to its last"),
        ({"conv1": _dilated(model, "conv1")}, "conv1", "conv_kernel", "dilation 2"),
        ({"pos_embed": _dropout(0.1)}, "pos_embed", "stochastic", "dropout"),
        ({"blocks.1.mlp.fc2": _noise(0.02)}, "blocks.1.mlp.fc2", "stochastic", "random noise"),
        (
            {"blocks.0.attn.wv": lambda f, p, v: f(p, v).roll(v.shape[-1] // 2, -1)},
            "blocks.0.attn.wv",
            "head_order",
            "exchanged",
        ),
        ({"blocks.1.mlp_ln": _ln_stats_half(model, "blocks.1.mlp_ln")}, "blocks.1.mlp_ln", "precision", "statistics"),
        ({"blocks.1.attn.weights": _attn_bug(softmax=torch.float16)}, "blocks.1.attn.weights", "precision", "softmax"),
        (
            {"blocks.0.attn.weights": _attn_bug(scale=64**-0.5)},
            "blocks.0.attn.weights",
            "attention_scale",
            "1/sqrt(d_model)",
        ),
        ({"blocks.0.attn_residual": lambda f, x, y: 2 * x + y}, "blocks.0.attn_residual", "wiring", "added twice"),
        ({"conv1": _replicate_pad(model, "conv1")}, "conv1", "conv_padding", "replicate"),
        ({"blocks.1.attn.weights": _head_zeroed(1)}, "blocks.1.attn.weights", "head_missing", "head 1 of 2"),
        ({"blocks.0.attn.weights": _attn_bug(qk=torch.bfloat16)}, "blocks.0.attn.weights", "precision", "matmul"),
        ({"blocks.0.attn.weights": _attn_bug(qk="tf32")}, "blocks.0.attn.weights", "precision", "tf32"),
        (
            {"blocks.1.attn_ln": _ln_normalised_half(model, "blocks.1.attn_ln")},
            "blocks.1.attn_ln",
            "precision",
            "normalised",
        ),
        ({"conv1": _time_masked(100, 140)}, "conv1", "input_mismatch", "time steps 100-139"),
        ({"blocks.1.attn.q": _fused_qkv_interleaved(model, 1)}, "blocks.1.attn.q", "weight_layout", "[H, 3, D]"),
    ]


def _replicate_pad(model, name):
    wt, b = model.state_dict[f"encoder.{name}.weight"].float(), model.state_dict[f"encoder.{name}.bias"].float()
    return lambda f, x: F.conv1d(F.pad(x, (1, 1), mode="replicate"), wt, b)


def _head_zeroed(h):
    def bug(f, q, k):
        p = f(q, k).clone()
        p[:, h] = 0
        return p

    return bug


def _reshaped(model, name):  # W [out, in] reshaped to [in, out] where W.T was meant
    wt, b = model.state_dict[f"encoder.{name}.weight"].float(), model.state_dict[f"encoder.{name}.bias"].float()
    return lambda f, x: x @ wt.reshape(wt.shape[1], wt.shape[0]) + b


def _other_bias(model, name):
    return lambda f, x: f(x) + model.state_dict[f"encoder.{name}.bias"].float()


def _stride1(model, name, last=False):
    wt, b = model.state_dict[f"encoder.{name}.weight"].float(), model.state_dict[f"encoder.{name}.bias"].float()

    def bug(f, x):
        n = f(x).shape[-1]
        y = F.conv1d(x, wt, b, padding=1)
        return y[..., -n:] if last else y[..., :n]

    return bug


def _dilated(model, name):
    wt, b = model.state_dict[f"encoder.{name}.weight"].float(), model.state_dict[f"encoder.{name}.bias"].float()
    return lambda f, x: F.conv1d(x, wt, b, padding=2, dilation=2)


def _dropout(p):
    def bug(f, *xs):
        g = torch.Generator().manual_seed(0)
        y = f(*xs)
        return torch.where(torch.rand(y.shape, generator=g) < p, 0.0, y / (1 - p))

    return bug


def _noise(scale):
    def bug(f, *xs):
        y = f(*xs)
        return y + scale * y.std() * torch.randn(y.shape, generator=torch.Generator().manual_seed(0))

    return bug


def _fused_qkv_interleaved(model, block):
    """q from a fused [q; k; v] weight stored [3, H, D] but read per head as [H, 3, D]."""
    sd, p = model.state_dict, f"encoder.blocks.{block}.attn"
    w = torch.cat([sd[f"{p}.{n}.weight"] for n in ("query", "key", "value")]).float()
    c = w.shape[1]
    b = torch.cat([sd[f"{p}.query.bias"], torch.zeros(c), sd[f"{p}.value.bias"]]).float()
    h = model.dims.n_audio_head
    wq = w.reshape(h, 3, c // h, c)[:, 0].reshape(c, c)
    bq = b.reshape(h, 3, c // h)[:, 0].reshape(c)
    return lambda f, x: x @ wq.T + bq


def _time_masked(start, stop):
    """SpecAugment's time mask left on: input frames [start, stop) zeroed inside the op, after the port records them."""

    def bug(f, x):
        x = x.clone()
        x[..., start:stop] = 0
        return f(x)

    return bug


def _ln_normalised_half(model, name):
    g, b = model.state_dict[f"encoder.{name}.weight"].float(), model.state_dict[f"encoder.{name}.bias"].float()

    def bug(f, x):
        n = F.layer_norm(x, x.shape[-1:], eps=1e-5)
        return n.to(torch.bfloat16).float() * g + b

    return bug


def _ln_stats_half(model, name):
    g, b = model.state_dict[f"encoder.{name}.weight"].float(), model.state_dict[f"encoder.{name}.bias"].float()

    def bug(f, x):
        mu = x.half().mean(-1, keepdim=True)
        var = ((x.half() - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu.float()) / (var.float() + 1e-5).sqrt() * g + b

    return bug


@pytest.mark.parametrize("index", range(44))
def test_planted_bug_is_localised_and_named(ref, small_random, tmp_path, index):
    bugs, op, kind, word = cases(small_random)[index]
    result = compare(ref, traced(ref, small_random, tmp_path / "b", bugs), model=small_random)
    top = result.findings[0]
    assert result.first_divergence == op
    assert (top.op, top.kind) == (op, kind), [f.to_dict() for f in result.findings[:3]]
    assert word.lower() in top.message.lower(), top.message
    clauses = [c.strip() for c in top.message.split(":") if len(c.strip()) > 20]
    assert len(clauses) == len(set(clauses)), f"a clause is said twice: {top.message}"
    if word in ("float16", "bfloat16"):  # the other half-precision dtype is not named
        other = {"float16": "bfloat16", "bfloat16": "float16"}[word]
        assert not any(w == other for w in top.message.replace(",", " ").replace("(", " ").replace(")", " ").split())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clean_port_has_no_findings(ref, small_random, tmp_path, dtype):
    result = compare(ref, traced(ref, small_random, tmp_path / "b", dtype=dtype), model=small_random)
    assert result.first_divergence is None and result.findings == [], result.findings[:2]


def test_unexplained_error_is_a_divergence_with_its_structure(ref, small_random, tmp_path):
    """A bug no hypothesis covers (channels 0-3 of conv2 zeroed after the audio ends) is `divergence`,
    and the message says where the error lives instead of guessing a name."""

    def zero_tail(f, x):
        y = f(x).clone()
        y[:, :4, 300:] = 0
        return y

    result = compare(ref, traced(ref, small_random, tmp_path / "b", {"conv2": zero_tail}), model=small_random)
    top = result.findings[0]
    assert (top.op, top.kind) == ("conv2", "divergence"), top.to_dict()
    assert "no hypothesis reproduces it" in top.message and "of 64 channels" in top.message, top.message
    assert "padding after the audio" in top.message, top.message


def test_attention_scale_solved_from_the_output_when_probabilities_are_not_tapped(ref, small_random, tmp_path):
    bugs = {"blocks.0.attn.weights": _attn_bug(scale=0.3)}
    b = traced(
        ref, small_random, tmp_path / "b", bugs, drop=("blocks.0.attn.weights", "blocks.1.attn.weights"), taps="default"
    )
    result = compare(ref, b, model=small_random)
    top = [f for f in result.findings if f.severity == "error"][0]
    assert (top.op, top.kind) == ("blocks.0.attn.wv", "attention_scale"), top.to_dict()
    solved = float(re.search(r"scaled by ([0-9.]+)", top.message).group(1))
    assert solved == pytest.approx(0.3, rel=0.01), top.message
