"""A second held-out port: Whisper written from scratch in plain, functional torch, with bugs to plant.

Neither openai-whisper's code, nor whisperdiff's, nor transformers': the encoder and decoder below are
functions over a weight dict in this file's own layout, built from `whisperdiff.load_model()`'s state dict
(openai-whisper names) by `port_weights`:

    conv{1,2}.w [C_out, C_in, 3]   applied by im2col (`conv1d`: gather the taps, one matmul), not F.conv1d
    l{i}.qkv.w  [3C, C]            query, key and value fused, rows in that order; qkv.b [3C] (zeros for k)
    l{i}.o.w    [C, C]             stored [in, out] (y = x @ W), unlike qkv
    l{i}.fc1.w  [C, 4C], fc2.w [4C, C]   [in, out]
    decoder: d{i}.* the same, plus the cross-attention: xq.w [C, C] ([out, in]), xkv.w [2C, C] (key, value
    fused), xo.w [C, C] ([in, out]); emb [V, C] (tied: logits = x @ emb.T), pos [n_ctx, C]

Attention keeps heads as [B, H, T, D] (our own split, scale, softmax and merge); layer norm, GELU (erf) and
softmax are written out. The log-mel frontend is our own (`log_mel`: torch.stft in float64, our windows,
our Slaney / HTK filterbank). The decoder has its own KV cache (`KVCache`: preallocated [B, H, n_ctx, D]
buffers per layer, written at a per-layer length, read as slots [0, length)) and cross-attention K/V
computed once per window. Every canonical op (`whisperdiff ops`, `whisperdiff ops --decoder`) is recorded
and written through `whisperdiff.Tracer`, in canonical order.

    from heldout2_ports import trace_encoder, trace_decoder
    trace_encoder("traces/fn", model="default", bug="conv2-kernel-flipped")
    trace_decoder("traces/fn-dec", model="default", tokens=[...], prompt_length=2, bug="kv-ring-buffer-8")

Recording conventions:
  * encoder: ops are recorded where the port computes them; a block run twice records its first run; a
    skipped block records nothing (absent from the trace). `attn.weights` only with weights=True.
  * decoder, incremental mode (default): the prompt (tokens[:prompt_length]) in one step, then one token per
    step; `full=True`: one step over every token, no cache. Every op is joined over steps along its
    position axis. `attn.weights` rows hold the probabilities over the cache slots the step read,
    left-aligned, zeros after them ([B, H, P, P]); `cross_attn.k/v` are the K/V the first step used
    (heads merged, [B, T_audio, C]); `cross_attn.weights` is [B, H, P, T_audio].
  * the causal mask (key slot <= query position) is applied to multi-token steps only: a one-token step
    reads only the past by construction.
  * the decoder attends to this port's own clean encoder output (ln_post), computed once.
  * the logits pass through a NaN guard (NaN -> 0, infinities kept), as a port protecting its sampler
    would: whisperdiff.Tracer cannot write a decoder trace whose logits hold NaN.
"""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np
import torch

SAMPLE_RATE, N_FFT, HOP, N_SAMPLES, N_FRAMES = 16000, 400, 160, 480000, 3000
LN_EPS = 1e-5

# --------------------------------------------------------------------------------------------
# weights in our layout
# --------------------------------------------------------------------------------------------


def port_weights(state_dict: dict, dims, dtype=torch.float32) -> dict:
    """openai-whisper state dict -> this port's weight dict (fused qkv, [in, out] output/MLP weights)."""
    sd = {k: v.detach().to(dtype) for k, v in state_dict.items()}
    C = dims.n_audio_state
    W = {
        "conv1.w": sd["encoder.conv1.weight"],
        "conv1.b": sd["encoder.conv1.bias"],
        "conv2.w": sd["encoder.conv2.weight"],
        "conv2.b": sd["encoder.conv2.bias"],
        "pos": sd["encoder.positional_embedding"],
        "lnf.g": sd["encoder.ln_post.weight"],
        "lnf.b": sd["encoder.ln_post.bias"],
    }

    def attn(dst, src, n_state):
        zeros = torch.zeros(n_state, dtype=dtype)
        W[f"{dst}.qkv.w"] = torch.cat([sd[f"{src}.query.weight"], sd[f"{src}.key.weight"], sd[f"{src}.value.weight"]])
        W[f"{dst}.qkv.b"] = torch.cat([sd[f"{src}.query.bias"], zeros, sd[f"{src}.value.bias"]])
        W[f"{dst}.o.w"] = sd[f"{src}.out.weight"].T.contiguous()
        W[f"{dst}.o.b"] = sd[f"{src}.out.bias"]

    def block(dst, src, cross):
        W[f"{dst}.ln1.g"], W[f"{dst}.ln1.b"] = sd[f"{src}.attn_ln.weight"], sd[f"{src}.attn_ln.bias"]
        attn(dst, f"{src}.attn", C)
        if cross:
            n = sd[f"{src}.cross_attn.query.weight"].shape[0]
            W[f"{dst}.lnx.g"], W[f"{dst}.lnx.b"] = sd[f"{src}.cross_attn_ln.weight"], sd[f"{src}.cross_attn_ln.bias"]
            W[f"{dst}.xq.w"], W[f"{dst}.xq.b"] = (
                sd[f"{src}.cross_attn.query.weight"],
                sd[f"{src}.cross_attn.query.bias"],
            )
            W[f"{dst}.xkv.w"] = torch.cat([sd[f"{src}.cross_attn.key.weight"], sd[f"{src}.cross_attn.value.weight"]])
            W[f"{dst}.xkv.b"] = torch.cat([torch.zeros(n, dtype=dtype), sd[f"{src}.cross_attn.value.bias"]])
            W[f"{dst}.xo.w"] = sd[f"{src}.cross_attn.out.weight"].T.contiguous()
            W[f"{dst}.xo.b"] = sd[f"{src}.cross_attn.out.bias"]
        W[f"{dst}.ln2.g"], W[f"{dst}.ln2.b"] = sd[f"{src}.mlp_ln.weight"], sd[f"{src}.mlp_ln.bias"]
        W[f"{dst}.fc1.w"], W[f"{dst}.fc1.b"] = sd[f"{src}.mlp.0.weight"].T.contiguous(), sd[f"{src}.mlp.0.bias"]
        W[f"{dst}.fc2.w"], W[f"{dst}.fc2.b"] = sd[f"{src}.mlp.2.weight"].T.contiguous(), sd[f"{src}.mlp.2.bias"]

    for i in range(dims.n_audio_layer):
        block(f"l{i}", f"encoder.blocks.{i}", cross=False)
    for i in range(dims.n_text_layer):
        block(f"d{i}", f"decoder.blocks.{i}", cross=True)
    W["emb"] = sd["decoder.token_embedding.weight"]
    W["dpos"] = sd["decoder.positional_embedding"]
    W["dlnf.g"], W["dlnf.b"] = sd["decoder.ln.weight"], sd["decoder.ln.bias"]
    return W


# --------------------------------------------------------------------------------------------
# building blocks (plain torch)
# --------------------------------------------------------------------------------------------


def layer_norm(x, g, b, eps=LN_EPS):
    mu = x.mean(-1, keepdim=True)
    d = x - mu
    var = (d * d).mean(-1, keepdim=True)
    return d * torch.rsqrt(var + eps) * g + b


def gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0))))


def softmax(s):
    e = torch.exp(s - s.amax(-1, keepdim=True))
    return e / e.sum(-1, keepdim=True)


def conv1d(x, w, b, stride=1, pad=(1, 1), dilation=1, mode="zeros"):
    """[B, C_in, T] -> [B, C_out, T_out] by im2col: gather the K taps of every output frame, one matmul."""
    c_out, c_in, k = w.shape
    if mode == "zeros":
        xp = torch.nn.functional.pad(x, pad)
    else:
        xp = torch.nn.functional.pad(x, pad, mode=mode)
    n_out = (xp.shape[-1] - dilation * (k - 1) - 1) // stride + 1
    idx = torch.arange(n_out)[:, None] * stride + torch.arange(k)[None, :] * dilation
    cols = xp[:, :, idx]  # [B, C_in, T_out, K]
    cols = cols.permute(0, 2, 1, 3).reshape(x.shape[0], n_out, c_in * k)
    y = cols @ w.reshape(c_out, c_in * k).T + b
    return y.transpose(1, 2)


def split_heads(x, n_head):
    b, t, c = x.shape
    return x.view(b, t, n_head, c // n_head).transpose(1, 2)  # [B, H, T, D]


def merge_heads(x):
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


def round_tf32(x):
    """float32 -> the nearest value with TF32's 10-bit mantissa (round to nearest even), as float32."""
    if x.dtype != torch.float32:
        return x
    i = x.contiguous().view(torch.int32)
    lsb = (i >> 13) & 1
    i = (i + 0xFFF + lsb) & ~0x1FFF
    return i.view(torch.float32)


def dropout(x, p, gen):
    keep = torch.rand(x.shape, generator=gen, dtype=torch.float64) >= p
    return x * keep.to(x.dtype) / (1.0 - p)


def linear_f16_accumulate(x, w, b, chunk=32):
    """x @ w.T + b with the running sum kept in float16 after every `chunk` inputs (w is [out, in])."""
    acc = torch.zeros(*x.shape[:-1], w.shape[0], dtype=torch.float16)
    for s in range(0, x.shape[-1], chunk):
        acc = (acc.to(x.dtype) + x[..., s : s + chunk] @ w[:, s : s + chunk].T).half()
    return acc.to(x.dtype) + b


# --------------------------------------------------------------------------------------------
# our log-mel frontend (torch.stft, float64), the frontend bugs as parameters
# --------------------------------------------------------------------------------------------


def default_audio_path() -> Path:
    from whisperdiff.inputs.audio import default_audio_path as p

    return Path(p())


def read_wav16(path) -> np.ndarray:
    with wave.open(str(path)) as w:
        if w.getsampwidth() != 2 or w.getframerate() != SAMPLE_RATE:
            raise ValueError("this frontend reads 16-bit 16 kHz WAV only")
        ch = w.getnchannels()
        raw = w.readframes(w.getnframes())
    return np.frombuffer(raw, dtype="<i2").reshape(-1, ch).mean(axis=1)  # int16 units, float64


def _slaney_hz_to_mel(f):
    f = np.asarray(f, dtype=np.float64)
    lin = f / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log, lin)


def _slaney_mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), m * (200.0 / 3))


def _htk_hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _htk_mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def filterbank(n_mels: int, n_fft: int, scale: str = "slaney", norm: bool = True) -> torch.Tensor:
    """[n_mels, n_fft // 2 + 1] triangular filters on the mel scale, area-normalised (norm), float64."""
    to_mel, to_hz = (_slaney_hz_to_mel, _slaney_mel_to_hz) if scale == "slaney" else (_htk_hz_to_mel, _htk_mel_to_hz)
    bins = np.arange(n_fft // 2 + 1) * (SAMPLE_RATE / n_fft)
    edges = to_hz(np.linspace(to_mel(0.0), to_mel(SAMPLE_RATE / 2), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (bins[None, :] - lo) / (mid - lo)
    down = (hi - bins[None, :]) / (hi - mid)
    fb = np.clip(np.minimum(up, down), 0.0, None)
    if norm:
        fb = fb * (2.0 / (hi - lo))
    return torch.from_numpy(fb)


def _window(kind: str, n: int) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)
    if kind == "hann":
        return 0.5 - 0.5 * torch.cos(2 * math.pi * k / n)
    if kind == "blackman":
        return 0.42 - 0.5 * torch.cos(2 * math.pi * k / n) + 0.08 * torch.cos(4 * math.pi * k / n)
    raise ValueError(kind)


def log_mel(
    samples_int16: np.ndarray,
    n_mels: int = 80,
    *,
    scale_int16: bool = True,
    resample_linear: int | None = None,
    preemphasis: float = 0.0,
    window: str = "hann",
    n_fft: int = N_FFT,
    hop: int = HOP,
    center: bool = True,
    drop: str = "last",
    mel_scale: str = "slaney",
    mel_norm: bool = True,
    log: str = "log10",
    floor: str | None = "global",
) -> np.ndarray:
    """[n_mels, 3000] float32. Defaults: Whisper's recipe (samples / 32768, 30 s of zeros appended, centred
    reflect-padded STFT with a periodic Hann window of 400 and hop 160, last frame dropped, power, Slaney
    mel filters, log10 clamped at 1e-10, floor at the global max - 8, (x + 4) / 4)."""
    x = torch.from_numpy(np.asarray(samples_int16, dtype=np.float64))
    if scale_int16:
        x = x / 32768.0
    if resample_linear:  # to another rate and back by linear interpolation
        n = x.numel()
        t_mid = np.arange(int(round(n * resample_linear / SAMPLE_RATE))) / resample_linear
        mid = np.interp(t_mid, np.arange(n) / SAMPLE_RATE, x.numpy())
        x = torch.from_numpy(np.interp(np.arange(n) / SAMPLE_RATE, t_mid, mid))
    if preemphasis:
        x = torch.cat([x[:1], x[1:] - preemphasis * x[:-1]])
    x = torch.cat([x, torch.zeros(N_SAMPLES, dtype=x.dtype)])
    spec = torch.stft(
        x,
        n_fft,
        hop,
        win_length=N_FFT,
        window=_window(window, N_FFT),
        center=center,
        pad_mode="reflect",
        return_complex=True,
    )
    spec = spec[:, :-1] if drop == "last" else spec[:, 1:]
    power = spec.abs() ** 2
    mel = filterbank(n_mels, n_fft, mel_scale, mel_norm) @ power
    mel = torch.clamp(mel, min=1e-10)
    logm = torch.log10(mel) if log == "log10" else torch.log(mel)
    if floor == "global":
        logm = torch.maximum(logm, logm.max() - 8.0)
    elif floor == "per-band":
        logm = torch.maximum(logm, logm.amax(dim=1, keepdim=True) - 8.0)
    elif floor is not None:
        raise ValueError(floor)
    logm = (logm + 4.0) / 4.0
    out = logm[:, :N_FRAMES]
    if out.shape[1] < N_FRAMES:
        out = torch.nn.functional.pad(out, (0, N_FRAMES - out.shape[1]))
    return out.numpy().astype(np.float32)


FRONTEND_BUGS = {
    "mel-blackman-window": dict(window="blackman"),
    "mel-nfft-1024": dict(n_fft=1024),
    "mel-hop-100-librosa": dict(hop=100),
    "mel-not-centred": dict(center=False),
    "mel-first-frame-dropped": dict(drop="first"),
    "mel-floor-per-band": dict(floor="per-band"),
    "mel-no-floor": dict(floor=None),
    "mel-natural-log": dict(log="ln"),
    "mel-htk-scale": dict(mel_scale="htk"),
    "mel-filters-unnormalised": dict(mel_norm=False),
    "mel-preemphasis": dict(preemphasis=0.97),
    "mel-int16-unscaled": dict(scale_int16=False),
    "mel-resampled-22050-linear": dict(resample_linear=22050),
}


# --------------------------------------------------------------------------------------------
# recording
# --------------------------------------------------------------------------------------------


class Recorder:
    """Values per op. Encoder: first write wins. Decoder (steps=True): one entry per step, joined along P."""

    def __init__(self, steps: bool = False):
        self.steps = steps
        self.values: dict[str, list] = {}

    def __call__(self, name, tensor, once=False):
        t = tensor.detach().clone()
        if not self.steps or once:
            self.values.setdefault(name, [t])
        else:
            self.values.setdefault(name, []).append(t)


# --------------------------------------------------------------------------------------------
# attention (shared by the encoder and the decoder)
# --------------------------------------------------------------------------------------------


def attend(q, k, v, n_head, *, scale=True, allowed=None, bug: dict | None = None, gen=None, rec_weights=None):
    """q [B, Tq, C], k/v [B, H, Tk, D] (already split) -> wv [B, Tq, C] (heads merged)."""
    bug = bug or {}
    if bug.get("split_strided"):  # heads taken as [T, D, H] (a stride mix-up), merged back the same way
        b, t, c = q.shape
        qh = q.view(b, t, c // n_head, n_head).permute(0, 3, 1, 2)
    else:
        qh = split_heads(q, n_head)
    d = qh.shape[-1]
    if bug.get("scores_bfloat16"):
        s = (qh.bfloat16() @ k.bfloat16().transpose(-1, -2)).to(q.dtype)
    else:
        s = qh @ k.transpose(-1, -2)
    if scale:
        s = s * d**-0.5
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    w = softmax(s)
    if bug.get("prob_dropout"):
        w = dropout(w, bug["prob_dropout"], gen)
    if rec_weights is not None:
        rec_weights(w)
    o = w @ v  # [B, H, Tq, D]
    if "zero_head" in bug:  # the merge loop starts at 1: head 0's slot keeps the buffer's zeros
        o = o.clone()
        o[:, bug["zero_head"]] = 0
    if "copy_head" in bug:
        src, dst = bug["copy_head"]
        o = o.clone()
        o[:, dst] = o[:, src]
    if bug.get("rotate_heads"):  # slot h holds head h - 1
        o = o.roll(1, dims=1)
    if bug.get("split_strided"):
        b, h, t, dd = o.shape
        return o.permute(0, 2, 3, 1).reshape(b, t, h * dd)
    return merge_heads(o)


# --------------------------------------------------------------------------------------------
# the encoder
# --------------------------------------------------------------------------------------------

ENCODER_BUGS = (
    *FRONTEND_BUGS,
    "conv2-pad-right-only",
    "conv1-valid-then-pad",
    "conv1-causal-padding",
    "conv2-kernel-flipped",
    "conv1-replicate-padding",
    "mel-noise-augmentation",
    "spec-augment-time-mask",
    "mlp-activation-dropout",
    "attn-out-dropout",
    "qk-scores-bfloat16",
    "gelu-float16",
    "out-proj-tf32",
    "ln-normalise-bfloat16",
    "qkv-float16-accumulate",
    "residual-stream-float16",
    "head0-merge-off-by-one",
    "head-copied-next-slot",
    "heads-rotated",
    "heads-split-strided",
    "parallel-attn-mlp",
    "attn-residual-doubled",
    "last-block-post-norm",
    "first-block-skipped",
    "last-block-repeated",
    "blocks-reversed",
    "mlp-ln-uses-attn-ln-weights",
    "qkv-split-kqv",
    "qkv-fused-interleaved",
    "out-proj-untransposed",
    "attn-unscaled",
    "ln-post-eps-1e-3",
    "fc2-bias-missing",
)


def _split_qkv(W, pre, C, n_head, order="qkv"):
    w, b = W[f"{pre}.qkv.w"], W[f"{pre}.qkv.b"]
    if order == "interleaved":  # read as per-head [H, 3, D] rows (Megatron's layout); stored as [3, H, D]
        d = C // n_head
        w3, b3 = w.view(n_head, 3, d, C), b.view(n_head, 3, d)
        return [(w3[:, j].reshape(C, C), b3[:, j].reshape(C)) for j in range(3)]
    parts = {name: (w[j * C : (j + 1) * C], b[j * C : (j + 1) * C]) for j, name in enumerate(order)}
    return [parts["q"], parts["k"], parts["v"]]


class EncoderPort:
    """The functional encoder; `bug` plants one bug of ENCODER_BUGS (None: the clean port)."""

    def __init__(self, model=None, bug: str | None = None, dtype=torch.float32, weights: bool = False, seed: int = 0):
        from whisperdiff.inputs.models import LoadedModel, load_model

        if bug is not None and bug not in ENCODER_BUGS:
            raise ValueError(f"unknown encoder bug {bug!r}")
        self.loaded = model if isinstance(model, LoadedModel) else load_model(model)
        self.dims = self.loaded.dims
        self.bug, self.dtype, self.weights, self.seed = bug, dtype, weights, seed
        self.W = port_weights(self.loaded.state_dict, self.dims, dtype)

    def mel(self, audio=None) -> np.ndarray:
        x = read_wav16(audio or default_audio_path())
        return log_mel(x, self.dims.n_mels, **FRONTEND_BUGS.get(self.bug, {}))[None]

    # -- one residual block --------------------------------------------------------------------------
    def block(self, x, i, wi, rec, gen):
        """x [B, T, C]; i: the index recorded under; wi: the weights' block index."""
        W, bug, H, C = self.W, self.bug, self.dims.n_audio_head, self.dims.n_audio_state
        p, w = f"blocks.{i}.", f"l{wi}"
        post_norm = bug == "last-block-post-norm" and i == self.dims.n_audio_layer - 1
        attn_bug = {}
        if bug == "qk-scores-bfloat16" and i == 2:
            attn_bug["scores_bfloat16"] = True
        if bug == "head0-merge-off-by-one" and i == 3:
            attn_bug["zero_head"] = 0
        if bug == "head-copied-next-slot" and i == 0:
            attn_bug["copy_head"] = (1, 2)
        if bug == "heads-rotated" and i == 2:
            attn_bug["rotate_heads"] = True
        if bug == "heads-split-strided" and i == 1:
            attn_bug["split_strided"] = True

        if post_norm:
            h = x
        elif bug == "ln-normalise-bfloat16" and i == 1:
            mu = x.mean(-1, keepdim=True)
            var = ((x - mu) ** 2).mean(-1, keepdim=True)
            n = ((x - mu) * torch.rsqrt(var + LN_EPS)).bfloat16().to(x.dtype)
            h = n * W[f"{w}.ln1.g"] + W[f"{w}.ln1.b"]
        else:
            h = layer_norm(x, W[f"{w}.ln1.g"], W[f"{w}.ln1.b"])
        if not post_norm:
            rec(p + "attn_ln", h)

        order = "kqv" if (bug == "qkv-split-kqv" and i == 1) else "qkv"
        if bug == "qkv-fused-interleaved" and i == 2:
            order = "interleaved"
        if bug == "qkv-float16-accumulate" and i == 0:
            qkv = linear_f16_accumulate(h, W[f"{w}.qkv.w"], W[f"{w}.qkv.b"])
            q, k, v = qkv.split(C, dim=-1)
        else:
            (wq, bq), (wk, bk), (wv_, bv) = _split_qkv(W, w, C, H, order)
            q, k, v = h @ wq.T + bq, h @ wk.T + bk, h @ wv_.T + bv
        rec(p + "attn.q", q)
        rec(p + "attn.k", k)
        rec(p + "attn.v", v)
        if attn_bug.get("split_strided"):
            b_, t_, _ = k.shape
            kh = k.view(b_, t_, C // H, H).permute(0, 3, 1, 2)
            vh = v.view(b_, t_, C // H, H).permute(0, 3, 1, 2)
        else:
            kh, vh = split_heads(k, H), split_heads(v, H)
        recw = (lambda t: rec(p + "attn.weights", t)) if self.weights else None
        a = attend(q, kh, vh, H, scale=not (bug == "attn-unscaled" and i == 2), bug=attn_bug, rec_weights=recw)
        rec(p + "attn.wv", a)
        if bug == "out-proj-untransposed" and i == 0:
            o = a @ W[f"{w}.o.w"].T + W[f"{w}.o.b"]
        elif bug == "out-proj-tf32" and i == 3:
            o = round_tf32(a) @ round_tf32(W[f"{w}.o.w"]) + W[f"{w}.o.b"]
        else:
            o = a @ W[f"{w}.o.w"] + W[f"{w}.o.b"]
        if bug == "attn-out-dropout" and i == 0:
            o = dropout(o, 0.1, gen)
        rec(p + "attn.out", o)
        r = x + o
        if bug == "attn-residual-doubled" and i == 3:
            r = x + r  # the attention function already returned x + out; the block adds x again
        if bug == "residual-stream-float16" and i == 2:
            r = r.half().to(x.dtype)
        if post_norm:
            rec(p + "attn_residual", r)
            r = layer_norm(r, W[f"{w}.ln1.g"], W[f"{w}.ln1.b"])
            rec(p + "attn_ln", r)
        else:
            rec(p + "attn_residual", r)

        src = x if (bug == "parallel-attn-mlp" and i == 1) else r
        if bug == "mlp-ln-uses-attn-ln-weights" and i == 2:
            m = layer_norm(src, W[f"{w}.ln1.g"], W[f"{w}.ln1.b"])
        elif post_norm:
            m = r
        else:
            m = layer_norm(src, W[f"{w}.ln2.g"], W[f"{w}.ln2.b"])
        if not post_norm:
            rec(p + "mlp_ln", m)
        f1 = m @ W[f"{w}.fc1.w"] + W[f"{w}.fc1.b"]
        rec(p + "mlp.fc1", f1)
        if bug == "gelu-float16" and i == 1:
            g = gelu(f1.half()).to(f1.dtype)
        else:
            g = gelu(f1)
        if bug == "mlp-activation-dropout" and i == 2:
            g = dropout(g, 0.1, gen)
        rec(p + "mlp.gelu", g)
        f2 = g @ W[f"{w}.fc2.w"]
        if not (bug == "fc2-bias-missing" and i == 1):
            f2 = f2 + W[f"{w}.fc2.b"]
        rec(p + "mlp.fc2", f2)
        out = r + f2
        if post_norm:
            out = layer_norm(out, W[f"{w}.ln2.g"], W[f"{w}.ln2.b"])
            rec(p + "mlp_ln", out)
        rec(p + "out", out)
        return out

    def run(self, mel: np.ndarray) -> dict:
        """{op: numpy array} for one log-mel [1, n_mels, 3000]."""
        W, bug, L = self.W, self.bug, self.dims.n_audio_layer
        rec = Recorder()
        gen = torch.Generator().manual_seed(self.seed + 23)
        with torch.no_grad():
            x = torch.as_tensor(mel, dtype=self.dtype)
            rec("mel", torch.as_tensor(mel))
            if bug == "mel-noise-augmentation":  # training-time augmentation left on: N(0, 0.05^2) on the input
                x = x + 0.05 * torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.dtype)
            if bug == "spec-augment-time-mask":  # SpecAugment left on: 40 frames of the input zeroed
                start = int(torch.randint(100, 360, (1,), generator=gen))
                x = x.clone()
                x[..., start : start + 40] = 0.0
            if bug == "conv1-causal-padding":
                c1 = conv1d(x, W["conv1.w"], W["conv1.b"], pad=(2, 0))
            elif bug == "conv1-valid-then-pad":  # no padding (2998 frames), the output zero-padded to 3000
                c1 = torch.nn.functional.pad(conv1d(x, W["conv1.w"], W["conv1.b"], pad=(0, 0)), (1, 1))
            elif bug == "conv1-replicate-padding":
                c1 = conv1d(x, W["conv1.w"], W["conv1.b"], mode="replicate")
            else:
                c1 = conv1d(x, W["conv1.w"], W["conv1.b"])
            rec("conv1", c1)
            g1 = gelu(c1)
            rec("conv1.gelu", g1)
            if bug == "conv2-pad-right-only":
                c2 = conv1d(g1, W["conv2.w"], W["conv2.b"], stride=2, pad=(0, 1))
            elif bug == "conv2-kernel-flipped":  # taps reversed (a convolution/correlation mix-up)
                c2 = conv1d(g1, W["conv2.w"].flip(-1), W["conv2.b"], stride=2)
            else:
                c2 = conv1d(g1, W["conv2.w"], W["conv2.b"], stride=2)
            rec("conv2", c2)
            g2 = gelu(c2)
            rec("conv2.gelu", g2)
            h = g2.transpose(1, 2) + W["pos"]
            rec("pos_embed", h)
            order = list(range(L))
            if bug == "first-block-skipped":  # for block in blocks[1:]
                order = order[1:]
            for i in order:
                wi = L - 1 - i if bug == "blocks-reversed" else i
                h = self.block(h, i, wi, rec, gen)
                if bug == "last-block-repeated" and i == L - 1:
                    h = self.block(h, i, wi, rec, gen)
            eps = 1e-3 if bug == "ln-post-eps-1e-3" else LN_EPS
            rec("ln_post", layer_norm(h, W["lnf.g"], W["lnf.b"], eps))
        return {k: v[0].numpy() for k, v in rec.values.items()}


def trace_encoder(
    out, model=None, bug: str | None = None, *, dtype: str = "float32", weights: bool = False, audio=None, seed: int = 0
):
    """Trace the functional encoder (with `bug`) into `out` through whisperdiff.Tracer; returns the path."""
    import whisperdiff as wd
    from whisperdiff.inputs.models import LoadedModel, load_model
    from whisperdiff.names import op_specs

    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    tdt = {"float32": torch.float32, "float64": torch.float64}[dtype]
    port = EncoderPort(loaded, bug=bug, dtype=tdt, weights=weights, seed=seed)
    values = port.run(port.mel(audio))
    info = {"port": "functional torch Whisper (benchmarks/heldout2_ports.py)", "bug": bug or "none"}
    with wd.Tracer(out, impl="fn-heldout2", model=loaded, audio=audio, dtype=dtype, info=info) as t:
        t.record("mel", values.pop("mel"))
        for s in op_specs(loaded.dims):
            if s.name in values:
                t.record(s.name, values[s.name])
    return Path(out)


def clean_encoder_output(loaded, dtype=torch.float32, audio=None) -> dict:
    """{"ln_post", "blocks.{L-2}.out"} of the clean encoder on our own log-mel, as tensors [1, T, C]."""
    port = EncoderPort(loaded, bug=None, dtype=dtype)
    vals = port.run(port.mel(audio))
    pen = f"blocks.{loaded.dims.n_audio_layer - 2}.out"
    return {"ln_post": torch.as_tensor(vals["ln_post"]), "penultimate": torch.as_tensor(vals[pen])}


# --------------------------------------------------------------------------------------------
# the decoder
# --------------------------------------------------------------------------------------------

DECODER_BUGS = (
    "kv-shared-across-layers",
    "kv-written-one-behind",
    "kv-ring-buffer-8",
    "kv-read-one-past",
    "kv-values-bfloat16",
    "cross-kv-from-block0",
    "mask-anti-causal",
    "mask-skipped-with-cache",
    "mask-sliding-window-4",
    "mask-diagonal-nan",
    "cross-attn-causal-mask",
    "logits-tied-rescaled",
    "logits-vocab-rows-shifted",
    "logits-log-softmax",
    "logits-suppress-non-speech-finfo-min",
    "logits-suppress-blank-first-step",
    "tok-embed-one-based",
    "sot-row-startofprev",
    "pos-offset-minus-one",
    "decoder-fed-penultimate-block",
    "encoder-output-bfloat16",
    "dec-cross-ln-no-affine",
    "dec-cross-attn-unscaled",
    "dec-residual-after-ln",
    "dec-out-proj-transposed",
    "dec-cross-head-zeroed",
    "dec-qk-swapped",
    "dec-attn-prob-dropout",
    "dec-blocks-swapped",
    "dec-fc1-float16",
)

# bugs traced without a KV cache (one full-sequence step): a mask bug on one-token steps would not act
FULL_SEQUENCE_BUGS = ("mask-anti-causal",)

RING = 8  # kv-ring-buffer-8: the cache keeps the last RING entries


class KVCache:
    """Self-attention K/V: preallocated [B, H, n_ctx, D] buffers per layer, a write length per layer.
    Cross-attention K/V: computed at the first step, kept per layer."""

    def __init__(self, n_layer, batch, n_head, n_ctx, d_head, dtype, bug=None):
        self.k = [torch.zeros(batch, n_head, n_ctx, d_head, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros_like(t) for t in self.k]
        self.length = [0] * n_layer
        self.cross: dict = {}
        self.bug = bug

    def update(self, layer, k, v):
        """Store this step's k/v [B, H, n, D]; return (K, V, first slot read, query positions)."""
        n, bug = k.shape[-2], self.bug
        start = self.length[layer]
        buf = 0 if bug == "kv-shared-across-layers" else layer
        write = start - 1 if (bug == "kv-written-one-behind" and start > 0) else start
        if bug == "kv-values-bfloat16":
            v = v.bfloat16().to(v.dtype)
        self.k[buf][:, :, write : write + n] = k
        self.v[buf][:, :, write : write + n] = v
        self.length[layer] = end = start + n
        first = 0
        if bug == "kv-read-one-past" and n == 1:
            end += 1
        if bug == "kv-ring-buffer-8":
            first = max(0, end - RING)
        return self.k[buf][:, :, first:end], self.v[buf][:, :, first:end], first, torch.arange(start, start + n)


class DecoderPort:
    """The functional decoder; `bug` plants one bug of DECODER_BUGS (None: the clean port)."""

    def __init__(self, model=None, bug: str | None = None, dtype=torch.float32, seed: int = 0):
        from whisperdiff.inputs.models import LoadedModel, load_model

        if bug is not None and bug not in DECODER_BUGS:
            raise ValueError(f"unknown decoder bug {bug!r}")
        self.loaded = model if isinstance(model, LoadedModel) else load_model(model)
        self.dims = self.loaded.dims
        self.bug, self.dtype, self.seed = bug, dtype, seed
        self.W = port_weights(self.loaded.state_dict, self.dims, dtype)
        if bug == "dec-blocks-swapped":  # blocks 2 and 3 exchanged at load
            for k in [k for k in self.W if k.startswith("d2.")]:
                k3 = "d3." + k[3:]
                self.W[k], self.W[k3] = self.W[k3], self.W[k]

    def _block(self, x, i, xa, cache, rec, P, gen):
        W, bug, H, C = self.W, self.bug, self.dims.n_text_head, self.dims.n_text_state
        p, w = f"decoder.blocks.{i}.", f"d{i}"
        n = x.shape[1]
        # self-attention
        h = layer_norm(x, W[f"{w}.ln1.g"], W[f"{w}.ln1.b"])
        rec(p + "attn_ln", h)
        order = "kqv" if (bug == "dec-qk-swapped" and i == 1) else "qkv"
        (wq, bq), (wk, bk), (wv_, bv) = _split_qkv(W, w, C, H, order)
        q, k, v = h @ wq.T + bq, h @ wk.T + bk, h @ wv_.T + bv
        rec(p + "attn.q", q)
        rec(p + "attn.k", k)
        rec(p + "attn.v", v)
        K, V, first, qpos = cache.update(i, split_heads(k, H), split_heads(v, H))
        slots = torch.arange(first, first + K.shape[-2])
        allowed = None
        # the port masks only when it runs without a cache (full): its incremental prompt step is unmasked
        masked_step = n > 1 and not (bug == "mask-skipped-with-cache" and not self._full)
        if masked_step:
            if bug == "mask-anti-causal":
                allowed = slots[None, :] >= qpos[:, None]
            elif bug == "mask-diagonal-nan":
                allowed = slots[None, :] < qpos[:, None]
            else:
                allowed = slots[None, :] <= qpos[:, None]
        if bug == "mask-sliding-window-4":
            window = slots[None, :] > qpos[:, None] - 4
            allowed = window if allowed is None else allowed & window

        def self_w(t, name=p + "attn.weights"):
            padded = torch.zeros(*t.shape[:-1], P, dtype=t.dtype)
            m = min(P, t.shape[-1])
            padded[..., :m] = t[..., :m]
            rec(name, padded)

        attn_bug = {"prob_dropout": 0.1} if (bug == "dec-attn-prob-dropout" and i == 2) else {}
        a = attend(q, K, V, H, allowed=allowed, bug=attn_bug, gen=gen, rec_weights=self_w)
        rec(p + "attn.wv", a)
        ow = W[f"{w}.o.w"].T if (bug == "dec-out-proj-transposed" and i == 2) else W[f"{w}.o.w"]
        o = a @ ow + W[f"{w}.o.b"]
        rec(p + "attn.out", o)
        x = (h if (bug == "dec-residual-after-ln" and i == 1) else x) + o
        rec(p + "attn_residual", x)
        # cross-attention
        if bug == "dec-cross-ln-no-affine" and i == 2:
            h = layer_norm(x, 1.0, 0.0)
        else:
            h = layer_norm(x, W[f"{w}.lnx.g"], W[f"{w}.lnx.b"])
        rec(p + "cross_attn_ln", h)
        q = h @ W[f"{w}.xq.w"].T + W[f"{w}.xq.b"]
        rec(p + "cross_attn.q", q)
        key = "cross" if bug == "cross-kv-from-block0" else ("cross", i)
        if key not in cache.cross:
            kv = xa @ W[f"{w}.xkv.w"].T + W[f"{w}.xkv.b"]
            cache.cross[key] = kv.split(C, dim=-1)
        ck, cv = cache.cross[key]
        rec(p + "cross_attn.k", ck, once=True)
        rec(p + "cross_attn.v", cv, once=True)
        callowed = None
        if bug == "cross-attn-causal-mask":  # the decoder's causal mask also applied to the audio frames
            frames = torch.arange(ck.shape[1])
            callowed = frames[None, :] <= qpos[:, None]
        xbug = {"zero_head": 4} if (bug == "dec-cross-head-zeroed" and i == 3) else {}
        a = attend(
            q,
            split_heads(ck, H),
            split_heads(cv, H),
            H,
            scale=not (bug == "dec-cross-attn-unscaled" and i == 1),
            allowed=callowed,
            bug=xbug,
            rec_weights=lambda t, name=p + "cross_attn.weights": rec(name, t),
        )
        rec(p + "cross_attn.wv", a)
        o = a @ W[f"{w}.xo.w"] + W[f"{w}.xo.b"]
        rec(p + "cross_attn.out", o)
        x = x + o
        rec(p + "cross_attn_residual", x)
        # MLP
        h = layer_norm(x, W[f"{w}.ln2.g"], W[f"{w}.ln2.b"])
        rec(p + "mlp_ln", h)
        if bug == "dec-fc1-float16" and i == 3:
            f1 = (h.half() @ W[f"{w}.fc1.w"].half() + W[f"{w}.fc1.b"].half()).to(h.dtype)
        else:
            f1 = h @ W[f"{w}.fc1.w"] + W[f"{w}.fc1.b"]
        rec(p + "mlp.fc1", f1)
        g = gelu(f1)
        rec(p + "mlp.gelu", g)
        f2 = g @ W[f"{w}.fc2.w"] + W[f"{w}.fc2.b"]
        rec(p + "mlp.fc2", f2)
        x = x + f2
        rec(p + "out", x)
        return x

    def _logits(self, x, step_start, prompt_length):
        W, bug = self.W, self.bug
        E = W["emb"]
        if bug == "logits-vocab-rows-shifted":  # the output projection reads embedding row v + 1
            E = torch.roll(E, -1, dims=0)
        logits = x @ E.T
        if bug == "logits-tied-rescaled":  # T5's tied-embedding rescale, d_model ** -0.5
            logits = logits * self.dims.n_text_state**-0.5
        if bug == "logits-log-softmax":  # the model returns log-probabilities
            logits = torch.log_softmax(logits, dim=-1)
        if bug == "logits-suppress-non-speech-finfo-min":
            from whisper.tokenizer import get_tokenizer

            ids = list(get_tokenizer(self.dims.n_vocab >= 51865).non_speech_tokens)
            logits = logits.clone()
            logits[..., ids] = torch.finfo(logits.dtype).min
        if bug == "logits-suppress-blank-first-step":  # SuppressBlank inside the model, on the prompt's last row
            row = prompt_length - 1 - step_start
            if 0 <= row < logits.shape[1]:
                logits = logits.clone()
                logits[:, row, [220, 50256]] = float("-inf")
        return logits

    def run(self, tokens, encoder_out: dict, prompt_length: int, full: bool | None = None) -> dict:
        """{op: numpy array} over the token sequence (prompt included), teacher-forced."""
        bug, W, d = self.bug, self.W, self.dims
        if full is None:
            full = bug in FULL_SEQUENCE_BUGS
        xa = encoder_out["ln_post"].to(self.dtype)
        if bug == "decoder-fed-penultimate-block":  # hidden_states[-2] instead of the encoder's output
            xa = encoder_out["penultimate"].to(self.dtype)
        if bug == "encoder-output-bfloat16":
            xa = xa.bfloat16().to(self.dtype)
        P = len(tokens)
        ids = torch.tensor([list(tokens)])
        if bug == "tok-embed-one-based":
            ids = ids + 1
        if bug == "sot-row-startofprev":
            ids[0, 0] = 50360
        steps = [(0, P)] if full else [(0, prompt_length)] + [(s, s + 1) for s in range(prompt_length, P)]
        cache = KVCache(
            d.n_text_layer, 1, d.n_text_head, d.n_text_ctx, d.n_text_state // d.n_text_head, self.dtype, bug
        )
        self._full = full
        rec = Recorder(steps=True)
        gen = torch.Generator().manual_seed(self.seed + 7)
        logits = []
        with torch.no_grad():
            rec("ln_post", xa, once=True)
            for s, e in steps:
                tok = W["emb"][ids[:, s:e]]
                rec("decoder.tok_embed", tok)
                pos = torch.arange(s, e)
                if bug == "pos-offset-minus-one" and e - s == 1:  # offset = the cache's last index
                    pos = pos - 1
                x = tok + W["dpos"][pos]
                rec("decoder.pos_embed", x)
                for i in range(d.n_text_layer):
                    x = self._block(x, i, xa, cache, rec, P, gen)
                x = layer_norm(x, W["dlnf.g"], W["dlnf.b"])
                rec("decoder.ln", x)
                logits.append(self._logits(x, s, prompt_length))
        # the port's guard for its sampler: NaN logits become 0 (whisperdiff.Tracer cannot write a decoder
        # trace whose logits hold NaN: the argmax margins in its manifest would not be valid JSON); no-op when finite
        logits = [torch.nan_to_num(t, nan=0.0, posinf=float("inf"), neginf=float("-inf")) for t in logits]
        rec.values["decoder.logits"] = [torch.cat(logits, 1)]
        out = {}
        for name, vals in rec.values.items():
            if len(vals) == 1:
                out[name] = vals[0].numpy()
            else:
                out[name] = torch.cat(vals, dim=2 if vals[0].dim() == 4 else 1).numpy()
        return out


def trace_decoder(
    out,
    model=None,
    bug: str | None = None,
    *,
    tokens,
    prompt_length: int,
    dtype: str = "float32",
    encoder_output: dict | None = None,
    full: bool | None = None,
    seed: int = 0,
):
    """Trace the functional decoder (with `bug`), teacher-forced on `tokens` (prompt included), into `out`."""
    import whisperdiff as wd
    from whisperdiff.inputs.models import LoadedModel, load_model
    from whisperdiff.names import decoder_op_specs

    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    tdt = {"float32": torch.float32, "float64": torch.float64}[dtype]
    if encoder_output is None:
        encoder_output = clean_encoder_output(loaded, tdt)
    port = DecoderPort(loaded, bug=bug, dtype=tdt, seed=seed)
    values = port.run(list(tokens), encoder_output, prompt_length, full=full)
    info = {"port": "functional torch Whisper decoder (benchmarks/heldout2_ports.py)", "bug": bug or "none"}
    with wd.Tracer(out, impl="fn-heldout2-decoder", model=loaded, dtype=dtype, info=info, tokens=list(tokens)) as t:
        for s in decoder_op_specs(loaded.dims, len(tokens)):
            if s.name in values:
                t.record(s.name, values[s.name])
    return Path(out)
