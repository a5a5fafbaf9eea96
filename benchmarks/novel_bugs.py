"""A held-out set of porting bugs, planted in an encoder written independently of whisperdiff.

Whisper's audio encoder (and its log-mel frontend) in plain torch functional code, read from
openai-whisper-named weights (`whisperdiff.load_model(spec).state_dict`), yielding every canonical
op (`whisperdiff ops`, attention probabilities included) and taking one bug switch. Nothing here
uses openai-whisper's modules or whisperdiff's fault catalogue: the bugs are the kind a port makes,
each with the canonical op where it first changes a value and the finding kind (docs: the issue-15
taxonomy) a diagnosis should name there. `whisperdiff faults` lists none of them.

    import novel_bugs as nb
    enc = nb.NovelEncoder(model, bug=nb.BUGS_BY_NAME["rms-norm"])
    for name, value in enc.run(mel): ...
    nb.write_trace(out, model, bug)            # through whisperdiff.Tracer (own TraceWriter for mel bugs)
    nb.first_changed_op(clean_trace, bug_trace) == bug.expected_op(n_layer)

benchmarks/diagnosis.py measures whisperdiff's diagnosis on this set; tests/test_novel_bugs.py checks
the set itself (each bug changes exactly its expected op first, bit-exact before it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

N_FFT, HOP, SAMPLE_RATE, N_FRAMES, N_SAMPLES = 400, 160, 16000, 3000, 480000


@dataclass(frozen=True)
class Bug:
    name: str
    description: str
    op: str  # the canonical op where it first changes a value; "{b}" is the block it acts in
    kind: str  # the finding kind a diagnosis should name (issue 15 taxonomy)
    block: int = 0  # preferred block; models with fewer blocks use their last one
    dtype: str | None = None  # for kind "precision": the dtype word the message must name

    def block_for(self, n_layer: int) -> int:
        return min(self.block, n_layer - 1)

    def expected_op(self, n_layer: int) -> str:
        return self.op.format(b=self.block_for(n_layer))

    @property
    def is_mel(self) -> bool:
        return self.op == "mel"


BUGS: tuple[Bug, ...] = (
    # the log-mel frontend
    Bug("mel-natural-log", "natural log instead of log10 (clamp and (x+4)/4 kept)", "mel", "input_mismatch"),
    Bug("mel-no-clamp", "no dynamic-range clamp to max - 8", "mel", "input_mismatch"),
    Bug("mel-no-normalisation", "log10 mel without the (x + 4) / 4 scaling", "mel", "input_mismatch"),
    Bug("mel-hamming-window", "Hamming window instead of Hann", "mel", "input_mismatch"),
    Bug("mel-n-fft-512", "n_fft 512 (with a 512-point Slaney filterbank) instead of 400", "mel", "input_mismatch"),
    Bug("mel-magnitude", "magnitude spectrum instead of power", "mel", "input_mismatch"),
    Bug("mel-htk-filterbank", "HTK mel scale without Slaney area norm (torchaudio's default)", "mel", "input_mismatch"),
    Bug(
        "mel-no-centre",
        "STFT frames not centred (center=False): frames start 200 samples late",
        "mel",
        "input_mismatch",
    ),
    # convolutions
    Bug("conv1-pad-right", "conv1 pads two frames on the right, none on the left", "conv1", "conv_padding"),
    Bug(
        "conv2-tf-same", "conv2 with TensorFlow 'SAME' padding for stride 2 (0 left, 1 right)", "conv2", "conv_padding"
    ),
    Bug("conv1-flipped-kernel", "conv1 is a true convolution: kernel flipped in time", "conv1", "conv_kernel"),
    Bug("conv2-missing-tap", "conv2 drops its last kernel tap", "conv2", "conv_kernel"),
    Bug(
        "conv1-filter-layout",
        "conv1 filters [out, in, k] read as [out, k, in] (reshape, not transpose)",
        "conv1",
        "weight_layout",
    ),
    Bug("conv2-no-bias", "conv2 without its bias", "conv2", "bias_error"),
    Bug("conv2-in-out-swapped", "conv2 filters with input and output channels exchanged", "conv2", "weight_layout"),
    # activations
    Bug("conv1-relu", "ReLU instead of GELU after conv1", "conv1.gelu", "wrong_activation"),
    Bug("conv2-no-activation", "no activation after conv2 (identity)", "conv2.gelu", "wrong_activation"),
    Bug("mlp-silu", "SiLU instead of GELU in block 2's MLP", "blocks.{b}.mlp.gelu", "wrong_activation", 2),
    Bug(
        "mlp-quick-gelu", "quick GELU x*sigmoid(1.702x) in block 1's MLP", "blocks.{b}.mlp.gelu", "activation_approx", 1
    ),
    # layer norms
    Bug("ln-eps-1e-2", "attn_ln epsilon 1e-2 instead of 1e-5 in block 1", "blocks.{b}.attn_ln", "layer_norm_eps", 1),
    Bug(
        "ln-unbiased-variance",
        "attn_ln with the unbiased (n-1) variance in block 2",
        "blocks.{b}.attn_ln",
        "layer_norm_variance",
        2,
    ),
    Bug("ln-no-gamma", "mlp_ln without its weight (gamma) in block 1", "blocks.{b}.mlp_ln", "layer_norm_affine", 1),
    Bug("ln-post-no-beta", "ln_post without its bias (beta)", "ln_post", "layer_norm_affine"),
    Bug(
        "rms-norm",
        "attn_ln as RMSNorm (no mean subtraction; gamma, beta kept) in block 3",
        "blocks.{b}.attn_ln",
        "rms_norm",
        3,
    ),
    Bug(
        "ln-time-axis",
        "mlp_ln normalises each channel over time instead of each frame over channels",
        "blocks.{b}.mlp_ln",
        "norm_axis",
        0,
    ),
    Bug("mlp-ln-skipped", "block 3's mlp_ln skipped (its input passes through)", "blocks.{b}.mlp_ln", "missing_op", 3),
    # linear layers
    Bug(
        "query-transposed",
        "query weight used transposed (x @ W, not x @ W.T) in block 1",
        "blocks.{b}.attn.q",
        "weight_layout",
        1,
    ),
    Bug("fc1-no-bias", "mlp.fc1 without its bias in block 2", "blocks.{b}.mlp.fc1", "bias_error", 2),
    Bug("attn-out-double-bias", "attn.out adds its bias twice in block 0", "blocks.{b}.attn.out", "bias_error", 0),
    Bug(
        "value-previous-layer",
        "block 2's value projection uses block 1's value weight",
        "blocks.{b}.attn.v",
        "wrong_weight",
        2,
    ),
    Bug(
        "key-uses-query-weight",
        "block 1's key computed with the query's weight",
        "blocks.{b}.attn.k",
        "wrong_weight",
        1,
    ),
    Bug(
        "key-gets-query-bias",
        "block 0's key (which has no bias) adds the query's bias",
        "blocks.{b}.attn.k",
        "bias_error",
        0,
    ),
    Bug("qk-swap", "query and key projections exchanged in block 3", "blocks.{b}.attn.q", "swapped_projections", 3),
    # attention
    Bug(
        "softmax-query-axis",
        "attention softmax over the query axis in block 1",
        "blocks.{b}.attn.weights",
        "softmax_axis",
        1,
    ),
    Bug("causal-mask", "causal mask in block 2's self-attention", "blocks.{b}.attn.weights", "attention_mask", 2),
    Bug(
        "padding-mask",
        "keys after the end of the audio masked out in block 0",
        "blocks.{b}.attn.weights",
        "attention_mask",
        0,
    ),
    Bug(
        "attn-no-scale",
        "attention scores not scaled (factor 1) in block 3",
        "blocks.{b}.attn.weights",
        "attention_scale",
        3,
    ),
    Bug(
        "attn-scale-model-dim",
        "scores scaled by 1/sqrt(n_state) instead of 1/sqrt(d_head) in block 1",
        "blocks.{b}.attn.weights",
        "attention_scale",
        1,
    ),
    Bug(
        "head-split-order",
        "heads split as [T, d_head, n_head] (and merged back so) in block 0",
        "blocks.{b}.attn.weights",
        "head_split",
        0,
    ),
    Bug("head-merge-order", "heads merged as [T, d_head, n_head] in block 2", "blocks.{b}.attn.wv", "head_split", 2),
    # positional embedding
    Bug("pos-shift-3", "sinusoids recomputed for positions 3..n_ctx+2", "pos_embed", "positional"),
    Bug("pos-interleaved", "sinusoids recomputed with sin and cos interleaved", "pos_embed", "positional"),
    Bug("pos-added-twice", "positional embedding added twice", "pos_embed", "positional"),
    # precision
    Bug(
        "mlp-bfloat16",
        "block 2's MLP matmuls in bfloat16 (float32 accumulation)",
        "blocks.{b}.mlp.fc1",
        "precision",
        2,
        "bfloat16",
    ),
    Bug(
        "linear-float16-block",
        "block 1's linear layers in float16 (autocast-style)",
        "blocks.{b}.attn.q",
        "precision",
        1,
        "float16",
    ),
    Bug(
        "tf32-matmuls",
        "every linear layer rounds its inputs to tf32 (allow_tf32 matmuls; convs in float32)",
        "blocks.{b}.attn.q",
        "precision",
        0,
        "tf32",
    ),
    Bug(
        "attn-probs-bfloat16",
        "block 3's attention probabilities stored in bfloat16",
        "blocks.{b}.attn.weights",
        "precision",
        3,
        "bfloat16",
    ),
    Bug(
        "softmax-float16",
        "block 0's attention softmax computed in float16",
        "blocks.{b}.attn.weights",
        "precision",
        0,
        "float16",
    ),
    # generic
    Bug("fc2-negated", "block 2's mlp.fc2 output negated", "blocks.{b}.mlp.fc2", "sign_flip", 2),
    Bug("fc1-nan", "a NaN at one position of block 1's mlp.fc1", "blocks.{b}.mlp.fc1", "nonfinite", 1),
    Bug("attn-out-halved", "block 3's attn.out multiplied by 0.5", "blocks.{b}.attn.out", "scale_mismatch", 3),
    Bug(
        "attn-residual-dropped",
        "block 2's attention residual dropped (x = attn.out)",
        "blocks.{b}.attn_residual",
        "missing_residual",
        2,
    ),
)
BUGS_BY_NAME = {b.name: b for b in BUGS}


# ---------------------------------------------------------------------------------------------- helpers


def sinusoids(length: int, channels: int, offset: int = 0, interleave: bool = False) -> torch.Tensor:
    """Whisper's positional table (sin half, then cos half), optionally shifted or interleaved."""
    step = math.log(10000) / (channels // 2 - 1)
    inv = torch.exp(-step * torch.arange(channels // 2, dtype=torch.float32))
    t = torch.arange(offset, offset + length, dtype=torch.float32)[:, None] * inv[None, :]
    if interleave:
        return torch.stack([t.sin(), t.cos()], dim=-1).reshape(length, channels)
    return torch.cat([t.sin(), t.cos()], dim=1)


def round_tf32(x: torch.Tensor) -> torch.Tensor:
    """Round float32 to tf32's 10-bit mantissa (nearest even), as tensor cores read matmul inputs."""
    if x.dtype != torch.float32:
        return x
    bits = x.contiguous().view(torch.int32)
    lsb = (bits >> 13) & 1
    rounded = (bits + 0xFFF + lsb) & ~0x1FFF
    return rounded.view(torch.float32)


def round_bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).to(x.dtype)


def gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def layer_norm(x: torch.Tensor, w, b, eps: float = 1e-5) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), w, b, eps)


def hz_to_mel(f, htk: bool):
    f = np.asarray(f, dtype=np.float64)
    if htk:
        return 2595.0 * np.log10(1.0 + f / 700.0)
    mel = f / (200.0 / 3)
    log_part = f >= 1000.0
    return np.where(log_part, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), mel)


def mel_to_hz(m, htk: bool):
    m = np.asarray(m, dtype=np.float64)
    if htk:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), m * 200.0 / 3)


def mel_filterbank(n_fft: int, n_mels: int, htk: bool = False, norm: bool = True) -> np.ndarray:
    """Triangular mel filters [n_mels, 1 + n_fft/2] (Slaney scale and area norm by default, as Whisper's)."""
    fft_freqs = np.linspace(0, SAMPLE_RATE / 2, 1 + n_fft // 2)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(0.0, htk), hz_to_mel(SAMPLE_RATE / 2, htk), n_mels + 2), htk)
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    if norm:
        weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, None]
    return weights.astype(np.float32)


def log_mel(samples: np.ndarray, n_mels: int, bug: Bug | None = None) -> np.ndarray:
    """Window 0 of Whisper's log-mel, [1, n_mels, 3000] float32, computed here; `bug` plants a frontend bug.
    Without a bug it equals whisper.audio.log_mel_spectrogram (padded by 30 s, sliced to 3000 frames)."""
    name = bug.name if bug is not None else None
    audio = F.pad(torch.from_numpy(np.asarray(samples, dtype=np.float32)), (0, N_SAMPLES))
    n_fft = 512 if name == "mel-n-fft-512" else N_FFT
    window = torch.hamming_window(n_fft) if name == "mel-hamming-window" else torch.hann_window(n_fft)
    stft = torch.stft(audio, n_fft, HOP, window=window, return_complex=True, center=name != "mel-no-centre")
    spectrum = stft[..., :-1].abs() if name == "mel-magnitude" else stft[..., :-1].abs() ** 2
    if name in ("mel-n-fft-512", "mel-htk-filterbank"):
        filters = torch.from_numpy(
            mel_filterbank(n_fft, n_mels, htk=name == "mel-htk-filterbank", norm=name != "mel-htk-filterbank")
        )
    else:
        from whisper.audio import mel_filters  # Whisper's filterbank data (librosa's Slaney filters)

        filters = mel_filters("cpu", n_mels)
    mel = filters @ spectrum
    mel = torch.clamp(mel, min=1e-10)
    mel = mel.log() if name == "mel-natural-log" else mel.log10()
    if name != "mel-no-clamp":
        mel = torch.maximum(mel, mel.max() - 8.0)
    if name != "mel-no-normalisation":
        mel = (mel + 4.0) / 4.0
    mel = mel[:, :N_FRAMES]
    return mel.numpy().astype(np.float32)[None]


# ---------------------------------------------------------------------------------------------- the encoder


class NovelEncoder:
    """Whisper's audio encoder in torch functional code, op for op, with one optional planted bug.

    dtype: the compute dtype (float32 or float64); values are yielded as numpy arrays of that dtype
    (or of `record_dtype`). valid_steps: encoder time steps covered by audio (for `padding-mask`)."""

    def __init__(
        self,
        model,
        bug: Bug | str | None = None,
        dtype: torch.dtype = torch.float32,
        valid_steps: int | None = None,
        with_weights: bool = True,
    ):
        self.bug = BUGS_BY_NAME[bug] if isinstance(bug, str) else bug
        self.dtype = dtype
        self.dims = model.dims
        self.n_layer, self.n_head = model.dims.n_audio_layer, model.dims.n_audio_head
        self.w = {
            k.removeprefix("encoder."): v.detach().to(dtype)
            for k, v in model.state_dict.items()
            if k.startswith("encoder.")
        }
        self.valid_steps = valid_steps if valid_steps is not None else model.dims.n_audio_ctx
        self.with_weights = with_weights
        self.at = self.bug.block_for(self.n_layer) if self.bug is not None else -1

    def _is(self, name: str, block: int | None = None) -> bool:
        return self.bug is not None and self.bug.name == name and (block is None or block == self.at)

    def _round(self, x: torch.Tensor, block: int | None = None, mlp: bool = False) -> torch.Tensor:
        """Matmul/conv inputs as a reduced-precision port reads them (identity when clean)."""
        if self._is("tf32-matmuls"):
            return round_tf32(x)
        if mlp and self._is("mlp-bfloat16", block):
            return round_bf16(x)
        return x

    def linear(self, x, name: str, block: int | None = None, mlp: bool = False, bias: bool = True):
        w, b = self.w[name + ".weight"], self.w.get(name + ".bias") if bias else None
        if self._is("linear-float16-block", block):
            b16 = None if b is None else b.half()
            return F.linear(x.half(), w.half(), b16).to(x.dtype)
        if self._is("tf32-matmuls") or (mlp and self._is("mlp-bfloat16", block)):
            return F.linear(self._round(x, block, mlp), self._round(w, block, mlp), b)
        return F.linear(x, w, b)

    def conv(self, x, name: str, stride: int):
        w, b = self.w[name + ".weight"], self.w[name + ".bias"]
        bug = self.bug.name if self.bug is not None else None
        pad = (1, 1)
        if name == "conv1":
            if bug == "conv1-pad-right":
                pad = (0, 2)
            elif bug == "conv1-flipped-kernel":
                w = w.flip(-1)
            elif bug == "conv1-filter-layout":
                out_c, in_c, k = w.shape
                w = w.reshape(out_c, k, in_c).permute(0, 2, 1)
        if name == "conv2":
            if bug == "conv2-tf-same":
                pad = (0, 1)
            elif bug == "conv2-missing-tap":
                w = w.clone()
                w[..., 2] = 0
            elif bug == "conv2-no-bias":
                b = None
            elif bug == "conv2-in-out-swapped":
                w = w.transpose(0, 1)
        if pad == (1, 1):
            return F.conv1d(x, w, b, stride=stride, padding=1)
        return F.conv1d(F.pad(x, pad), w, b, stride=stride)

    def activation(self, x, where: str, block: int | None = None):
        if where == "conv1" and self._is("conv1-relu"):
            return F.relu(x)
        if where == "conv2" and self._is("conv2-no-activation"):
            return x
        if where == "mlp" and self._is("mlp-silu", block):
            return F.silu(x)
        if where == "mlp" and self._is("mlp-quick-gelu", block):
            return x * torch.sigmoid(1.702 * x)
        return F.gelu(x)

    def norm(self, x, name: str, block: int | None = None):
        w, b = self.w[name + ".weight"], self.w[name + ".bias"]
        kind = name.rsplit(".", 1)[-1]
        if kind == "attn_ln" and self._is("ln-eps-1e-2", block):
            return layer_norm(x, w, b, 1e-2)
        if kind == "attn_ln" and self._is("ln-unbiased-variance", block):
            mean = x.mean(-1, keepdim=True)
            var = x.var(-1, keepdim=True, unbiased=True)
            return (x - mean) / torch.sqrt(var + 1e-5) * w + b
        if kind == "attn_ln" and self._is("rms-norm", block):
            return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-5) * w + b
        if kind == "mlp_ln" and self._is("ln-no-gamma", block):
            return layer_norm(x, None, b)
        if kind == "mlp_ln" and self._is("ln-time-axis", block):
            mean = x.mean(0, keepdim=True)
            var = ((x - mean) ** 2).mean(0, keepdim=True)
            return (x - mean) / torch.sqrt(var + 1e-5) * w + b
        if kind == "mlp_ln" and self._is("mlp-ln-skipped", block):
            return x
        if kind == "ln_post" and self._is("ln-post-no-beta"):
            return layer_norm(x, w, None)
        return layer_norm(x, w, b)

    def positional(self, t: int, c: int):
        pe = self.w["positional_embedding"][:t]
        if self._is("pos-shift-3"):
            return sinusoids(t, c, offset=3).to(self.dtype)
        if self._is("pos-interleaved"):
            return sinusoids(t, c, interleave=True).to(self.dtype)
        if self._is("pos-added-twice"):
            return pe + pe
        return pe

    def attention(self, h, i: int):
        """Yields q, k, v, weights, wv; returns nothing (the caller reads wv from the last yield)."""
        p = f"blocks.{i}.attn."
        q = self.linear(h, p + "query", i)
        k = self.linear(h, p + "key", i, bias=False)
        v = self.linear(h, p + "value", i)
        if self._is("query-transposed", i):
            q = F.linear(h, self.w[p + "query.weight"].T, self.w[p + "query.bias"])
        if self._is("key-uses-query-weight", i):
            k = F.linear(h, self.w[p + "query.weight"])
        if self._is("value-previous-layer", i) and i > 0:
            v = F.linear(h, self.w[f"blocks.{i - 1}.attn.value.weight"], self.w[p + "value.bias"])
        if self._is("key-gets-query-bias", i):
            k = F.linear(h, self.w[p + "key.weight"], self.w[p + "query.bias"])
        if self._is("qk-swap", i):
            q, k = k, q
        yield p + "q", q
        yield p + "k", k
        yield p + "v", v
        t, c = q.shape
        n_head = self.n_head
        d = c // n_head
        if self._is("head-split-order", i):
            qh, kh, vh = (m.reshape(t, d, n_head).permute(2, 0, 1) for m in (q, k, v))
        else:
            qh, kh, vh = (m.reshape(t, n_head, d).transpose(0, 1) for m in (q, k, v))
        scale = d**-0.25
        if self._is("attn-no-scale", i):
            scale = 1.0
        elif self._is("attn-scale-model-dim", i):
            scale = c**-0.25
        scores = (qh * scale) @ (kh * scale).transpose(-1, -2)
        if self._is("causal-mask", i):
            scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), -math.inf)
        if self._is("padding-mask", i):
            scores[..., self.valid_steps :] = -math.inf
        if self._is("softmax-float16", i):
            probs = torch.softmax(scores.half(), dim=-1).to(scores.dtype)
        else:
            probs = torch.softmax(scores, dim=-2 if self._is("softmax-query-axis", i) else -1)
        if self._is("attn-probs-bfloat16", i):
            probs = round_bf16(probs)
        if self.with_weights:
            yield p + "weights", probs[None]
        wv = probs @ vh  # [H, T, d]
        if self._is("head-split-order", i) or self._is("head-merge-order", i):
            wv = wv.permute(1, 2, 0).reshape(t, c)
        else:
            wv = wv.transpose(0, 1).reshape(t, c)
        yield p + "wv", wv

    def run(self, mel):
        """Yield (canonical op name, numpy array) for every op after `mel`, in encoder order."""
        with torch.no_grad():
            yield from self._run(torch.as_tensor(np.asarray(mel)).to(self.dtype))

    def _run(self, mel: torch.Tensor):
        def out(name, value):
            v = value if value.dim() >= 3 else value[None]
            return name, v.numpy()

        x = self.conv(mel, "conv1", 1)
        yield out("conv1", x)
        x = self.activation(x, "conv1")
        yield out("conv1.gelu", x)
        x = self.conv(x, "conv2", 2)
        yield out("conv2", x)
        x = self.activation(x, "conv2")
        yield out("conv2.gelu", x)
        x = x[0].T  # [T, C]
        x = x + self.positional(*x.shape)
        yield out("pos_embed", x)
        for i in range(self.n_layer):
            p = f"blocks.{i}."
            h = self.norm(x, p + "attn_ln", i)
            yield out(p + "attn_ln", h)
            wv = None
            for name, value in self.attention(h, i):
                yield out(name, value)
                wv = value
            a = self.linear(wv, p + "attn.out", i)
            if self._is("attn-out-double-bias", i):
                a = a + self.w[p + "attn.out.bias"]
            if self._is("attn-out-halved", i):
                a = a * 0.5
            yield out(p + "attn.out", a)
            x = a if self._is("attn-residual-dropped", i) else x + a
            yield out(p + "attn_residual", x)
            h = self.norm(x, p + "mlp_ln", i)
            yield out(p + "mlp_ln", h)
            h = self.linear(h, p + "mlp.0", i, mlp=True, bias=not self._is("fc1-no-bias", i))
            if self._is("fc1-nan", i):
                h = h.clone()
                h[h.shape[0] // 2, 5] = math.nan
            yield out(p + "mlp.fc1", h)
            h = self.activation(h, "mlp", i)
            yield out(p + "mlp.gelu", h)
            h = self.linear(h, p + "mlp.2", i, mlp=True)
            if self._is("fc2-negated", i):
                h = -h
            yield out(p + "mlp.fc2", h)
            x = x + h
            yield out(p + "out", x)
        x = self.norm(x, "ln_post")
        yield out("ln_post", x)


# ---------------------------------------------------------------------------------------------- traces


def default_samples() -> np.ndarray:
    from whisperdiff.inputs.audio import default_audio_path, load_audio

    return load_audio(default_audio_path())[0]


def valid_steps(samples: np.ndarray, n_ctx: int) -> int:
    """Encoder time steps that cover audio (one step = 2 mel frames = 320 samples)."""
    return min(n_ctx, int(math.ceil(len(samples) / (2 * HOP))))


def write_trace(
    out: str | Path,
    model,
    bug: Bug | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    with_weights: bool = True,
    samples: np.ndarray | None = None,
):
    """Trace this encoder (with `bug`) on the shipped clip into `out`; returns the Trace.

    Encoder bugs go through whisperdiff.Tracer, whose `mel` is Whisper's own frontend. The Tracer
    cannot record a port's own log-mel (it records Whisper's as the input), so mel bugs write the
    trace with TraceWriter and the manifest the Tracer writes, the input provenance saying which
    frontend made the recorded mel and its digest."""
    import whisperdiff as wd

    samples = default_samples() if samples is None else samples
    info = {
        "bug": bug.name if bug else None,
        "bug_description": bug.description if bug else None,
        "compute_dtype": str(dtype).removeprefix("torch."),
    }
    enc = NovelEncoder(
        model, bug, dtype=dtype, valid_steps=valid_steps(samples, model.dims.n_audio_ctx), with_weights=with_weights
    )
    record_dtype = "float64" if dtype == torch.float64 else "float32"
    if bug is None or not bug.is_mel:
        with wd.Tracer(out, impl="novel", model=model, dtype=record_dtype, info=info) as t:
            for name, value in enc.run(t.mel):
                t.record(name, value)
        return t.trace()
    return _write_own_mel_trace(out, model, enc, log_mel(samples, model.dims.n_mels, bug), info, record_dtype)


def _write_own_mel_trace(out, model, enc: NovelEncoder, mel: np.ndarray, info: dict, record_dtype: str):
    from whisperdiff.inputs.audio import prepare_input
    from whisperdiff.provenance import sha256_array, versions
    from whisperdiff.store.trace import TraceWriter, load_trace

    provenance = dict(prepare_input(model.dims.n_mels).provenance)
    provenance.update(frontend=f"novel_bugs.log_mel ({info['bug']})", mel_sha256=sha256_array(mel))
    manifest = {
        "impl": "novel",
        "device": "cpu",
        "dtype": record_dtype,
        "runner": {"device": "cpu", "dtype": record_dtype, "encoder": "novel (whisperdiff.Tracer)", **info},
        "model": model.manifest(),
        "input": provenance,
        "taps": "tracer",
        "injected": [],
        "versions": versions(),
    }
    with TraceWriter(out, manifest) as writer:
        writer.record("mel", mel)
        for name, value in enc.run(mel):
            writer.record(name, value)
    return load_trace(out)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)


def first_changed_op(clean, buggy) -> str | None:
    """The first op (in encoder order) whose stored value differs bit for bit between two traces."""
    for name in clean.ops:
        if name not in buggy or not _same(np.asarray(clean[name]), np.asarray(buggy[name])):
            return name
    return None


def check_bug(clean, buggy, bug: Bug, n_layer: int) -> None:
    """Raise unless `bug` changes exactly its expected op first (every op before it bit-identical)."""
    want, got = bug.expected_op(n_layer), first_changed_op(clean, buggy)
    if got != want:
        raise AssertionError(f"novel bug {bug.name}: first changed op is {got}, expected {want}")
