"""A third-party port for the held-out diagnosis set: Hugging Face transformers' Whisper, hooked.

Neither openai-whisper's code nor whisperdiff's: the encoder and the decoder are
`transformers.models.whisper.modeling_whisper.WhisperEncoder` / `WhisperDecoder`, built from a
`transformers.WhisperConfig` with the loaded model's dims and loaded with its weights (the state
dict of `whisperdiff.load_model()`, openai-whisper names, mapped to HF names by `hf_state_dict`
below). The log-mel frontend is our own (`log_mel`, numpy, written for this set). Every canonical
op (`whisperdiff ops`, `whisperdiff ops --decoder`) is recorded by forward hooks and written into a
trace through `whisperdiff.Tracer`. Each wrapper takes one bug switch (`bug=NAME`, the names of
benchmarks/heldout_bugs.py); `bug=None` is the clean port.

    from heldout_ports import trace_encoder, trace_decoder
    trace_encoder("traces/hf", model="default", bug="conv2-stride1-truncate")
    trace_decoder("traces/hf-dec", model="default", tokens=[...], bug="kv-entry-missing")

How the ops are read (HF module -> canonical op):

    encoder  conv1 -> conv1 (output); conv2 input -> conv1.gelu; conv2 -> conv2, F.gelu(conv2) -> conv2.gelu;
             layers[0] input -> pos_embed; per layer i (blocks.i): self_attn_layer_norm -> attn_ln,
             self_attn.q_proj/k_proj/v_proj -> attn.q/k/v, softmax probabilities -> attn.weights (our
             attention function, registered through transformers' AttentionInterface; only with
             weights=True), out_proj input -> attn.wv, out_proj -> attn.out, final_layer_norm input ->
             attn_residual, final_layer_norm -> mlp_ln, fc1 / activation_fn / fc2 -> mlp.fc1 / gelu / fc2,
             layer output -> out; layer_norm -> ln_post.
    decoder  embed_tokens -> decoder.tok_embed; layers[0] input -> decoder.pos_embed; per layer the same
             self-attention names as the encoder, encoder_attn_layer_norm input -> attn_residual,
             encoder_attn_layer_norm -> cross_attn_ln, encoder_attn.* -> cross_attn.*, final_layer_norm
             input -> cross_attn_residual; layer_norm -> decoder.ln; the tied output projection
             (an nn.Linear sharing embed_tokens.weight, like WhisperForConditionalGeneration.proj_out)
             -> decoder.logits; the encoder output passed in -> ln_post.

Decoder conventions (docs/decoder.md, plus what we had to infer from a reference trace of
`whisperdiff trace-decoder --impl torch --taps all`):
  * incremental mode runs the prompt (tokens[:prompt_length]) in one step, then one token per step,
    like the reference; `full=True` runs one step over every token (no KV cache);
  * every op is joined over steps along its position axis P;
  * `attn.weights` is [B, H, P, P]: row p holds the probabilities over the keys (cache slots) the step
    read, left-aligned in slot order, zeros after them (the reference's rows have zeros on later keys);
  * `cross_attn.k` / `cross_attn.v` are the projections of the first step (later steps reuse the
    cache and call no projection); `cross_attn.weights` is [B, H, P, T_audio];
  * position ids are passed explicitly (0..P-1), never read back from the cache, so a cache bug
    does not also move the positional rows.
  * the encoder output the decoder attends to is the clean HF encoder's ln_post, computed once.
  * the causal mask is ours (the attention function ignores HF's mask): key slot <= query position;
    the KV-cache bugs wrap the self-attention DynamicCache's update (every layer); kv-stale-after-reset
    and kv-written-one-ahead emulate a static buffer, and the stale one masks nothing on one-token steps.

Encoder conventions: a block run twice records its first run (first write wins); a skipped block
records nothing (its ops are absent from the trace). `conv2.gelu` is F.gelu of conv2's output (HF
calls the functional gelu; the reference reads it the same way).
"""

from __future__ import annotations

import math
import re
import wave
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ATTN_IMPL = "heldout_eager"

# --------------------------------------------------------------------------------------------
# weights: openai-whisper names -> HF names
# --------------------------------------------------------------------------------------------

_BLOCK_MAP = {
    "attn.query": "self_attn.q_proj",
    "attn.key": "self_attn.k_proj",
    "attn.value": "self_attn.v_proj",
    "attn.out": "self_attn.out_proj",
    "attn_ln": "self_attn_layer_norm",
    "cross_attn.query": "encoder_attn.q_proj",
    "cross_attn.key": "encoder_attn.k_proj",
    "cross_attn.value": "encoder_attn.v_proj",
    "cross_attn.out": "encoder_attn.out_proj",
    "cross_attn_ln": "encoder_attn_layer_norm",
    "mlp.0": "fc1",
    "mlp.2": "fc2",
    "mlp_ln": "final_layer_norm",
}
_TOP_MAP = {
    "encoder.conv1": "conv1",
    "encoder.conv2": "conv2",
    "encoder.ln_post": "layer_norm",
    "decoder.ln": "layer_norm",
}


def hf_name(name: str) -> tuple[str, str]:
    """openai-whisper state-dict name -> ("encoder" | "decoder", HF name inside WhisperEncoder/Decoder)."""
    part = name.split(".", 1)[0]
    if name == "encoder.positional_embedding":
        return part, "embed_positions.weight"
    if name == "decoder.positional_embedding":
        return part, "embed_positions.weight"
    if name == "decoder.token_embedding.weight":
        return part, "embed_tokens.weight"
    m = re.fullmatch(r"(encoder|decoder)\.blocks\.(\d+)\.(.+)\.(weight|bias)", name)
    if m:
        return part, f"layers.{m.group(2)}.{_BLOCK_MAP[m.group(3)]}.{m.group(4)}"
    m = re.fullmatch(r"(encoder\.conv[12]|encoder\.ln_post|decoder\.ln)\.(weight|bias)", name)
    if m:
        return part, f"{_TOP_MAP[m.group(1)]}.{m.group(2)}"
    raise KeyError(f"no HF name for {name}")


def hf_state_dict(state_dict: dict, part: str, dtype=torch.float32) -> dict:
    out = {}
    for name, value in state_dict.items():
        p, hf = hf_name(name)
        if p == part:
            out[hf] = value.detach().to(dtype).clone()
    return out


def _config(dims, part: str):
    from transformers import WhisperConfig

    d = dims
    d_model = d.n_audio_state if part == "encoder" else d.n_text_state
    heads = d.n_audio_head if part == "encoder" else d.n_text_head
    cfg = WhisperConfig(
        vocab_size=d.n_vocab,
        num_mel_bins=d.n_mels,
        encoder_layers=d.n_audio_layer,
        encoder_attention_heads=heads,
        decoder_layers=d.n_text_layer,
        decoder_attention_heads=heads,
        d_model=d_model,
        encoder_ffn_dim=4 * d_model,
        decoder_ffn_dim=4 * d_model,
        max_source_positions=d.n_audio_ctx,
        max_target_positions=d.n_text_ctx,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        activation_function="gelu",
        encoder_layerdrop=0.0,
        decoder_layerdrop=0.0,
        scale_embedding=False,
        pad_token_id=None,
    )
    _register_attention()
    cfg._attn_implementation = ATTN_IMPL
    return cfg


# --------------------------------------------------------------------------------------------
# our attention function (HF calls it with q already scaled by module.scaling and scaling=1.0)
# --------------------------------------------------------------------------------------------

_REGISTERED = False


def _register_attention():
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(ATTN_IMPL, _attention)
    AttentionMaskInterface.register(ATTN_IMPL, AttentionMaskInterface._global_mapping["eager"])
    _REGISTERED = True


def _split_wrong(x):
    """[B, H, T, D] (HF's split) -> the port's wrong split: merge, then view as [B, T, D, H]."""
    b, h, t, d = x.shape
    merged = x.transpose(1, 2).reshape(b, t, h * d)
    return merged.view(b, t, d, h).permute(0, 3, 1, 2)


def _merge_wrong(x):
    """inverse layout of _split_wrong for the output [B, H, T, D] -> [B, H, T, D] read back as HF merges it."""
    b, h, t, d = x.shape
    merged = x.permute(0, 2, 3, 1).reshape(b, t, h * d)  # the port merges [B, T, D, H]
    return merged.view(b, t, h, d).transpose(1, 2)


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    bug = getattr(module, "_ho_bug", {}) or {}
    if scaling is None:
        scaling = 1.0
    if bug.get("head_split"):
        query, key, value = _split_wrong(query), _split_wrong(key), _split_wrong(value)
    if bug.get("scores_float16"):
        scores = (query.half() @ key.half().transpose(2, 3)).to(query.dtype) * scaling
    else:
        scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    n_q, n_k = scores.shape[-2], scores.shape[-1]
    allowed = None
    qpos = getattr(module, "_ho_qpos", None)
    single_step_unmasked = bug.get("mask_multi_token_steps_only") and n_q == 1
    if getattr(module, "_ho_causal", False) and not bug.get("no_mask") and not single_step_unmasked:
        if qpos is None:
            qpos = torch.arange(n_k - n_q, n_k)
        kslot = torch.arange(n_k)
        shift = int(bug.get("mask_shift", 0))
        allowed = kslot[None, :] <= (qpos[:, None] + shift)
        if shift < 0:  # a position with no key left keeps its own (no NaN rows)
            allowed = allowed | ((kslot[None, :] == qpos[:, None]) & (qpos[:, None] + shift < 0))
    if bug.get("pad_mask_after") is not None:
        allowed = (torch.arange(n_k) < int(bug["pad_mask_after"]))[None, :].expand(n_q, n_k)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    if bug.get("softmax_float16"):
        weights = F.softmax(scores.half(), dim=-1).to(scores.dtype)
    else:
        weights = F.softmax(scores, dim=-1)
    if module.training and dropout > 0:
        weights = F.dropout(weights, p=dropout, training=True)
    rec = getattr(module, "_ho_record_weights", None)
    if rec is not None:
        rec(weights)
    if bug.get("pv_bfloat16"):
        out = (weights.bfloat16() @ value.bfloat16()).to(value.dtype)
    else:
        out = torch.matmul(weights, value)
    if bug.get("head_split"):
        out = _merge_wrong(out)
    if "zero_head" in bug:
        out = out.clone()
        out[:, bug["zero_head"]] = 0
    if "dup_head" in bug:
        src, dst = bug["dup_head"]
        out = out.clone()
        out[:, dst] = out[:, src]
    if "swap_heads" in bug:
        a, b = bug["swap_heads"]
        out = out.clone()
        out[:, [a, b]] = out[:, [b, a]]
    return out.transpose(1, 2).contiguous(), weights


# --------------------------------------------------------------------------------------------
# our log-mel frontend (numpy), with the frontend bugs as parameters
# --------------------------------------------------------------------------------------------

SAMPLE_RATE, N_FFT, HOP, N_SAMPLES, N_FRAMES = 16000, 400, 160, 480000, 3000


def read_wav(path) -> np.ndarray:
    with wave.open(str(path)) as w:
        n, width, rate, ch = w.getnframes(), w.getsampwidth(), w.getframerate(), w.getnchannels()
        raw = w.readframes(n)
    if width != 2 or rate != SAMPLE_RATE:
        raise ValueError("this frontend reads 16-bit 16 kHz WAV only")
    x = np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0
    return x.reshape(-1, ch).mean(axis=1)


def default_audio_path() -> Path:
    import whisperdiff

    return Path(whisperdiff.__file__).parent / "data" / "speech.wav"


def _hz_to_mel(f):
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)


def _mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filters(n_mels: int, n_fft: int, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Slaney-style triangular filters, area-normalised (the usual Whisper filterbank), float64."""
    fft_freqs = np.linspace(0, sr / 2, 1 + n_fft // 2)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    w = np.zeros((n_mels, fft_freqs.size))
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        w[i] = np.maximum(0, np.minimum(lower, upper))
    w *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, None]
    return w.astype(np.float32).astype(np.float64)  # filterbanks are shipped as float32


def _window(kind: str, n: int) -> np.ndarray:
    k = np.arange(n)
    if kind == "hann":  # periodic
        return 0.5 - 0.5 * np.cos(2 * np.pi * k / n)
    if kind == "hann-symmetric":
        return 0.5 - 0.5 * np.cos(2 * np.pi * k / (n - 1))
    if kind == "hamming":  # periodic
        return 0.54 - 0.46 * np.cos(2 * np.pi * k / n)
    raise ValueError(kind)


def log_mel(
    audio: np.ndarray,
    n_mels: int = 80,
    *,
    window: str = "hann",
    n_fft: int = N_FFT,
    hop: int = HOP,
    power: float = 2.0,
    floor: str = "global",
    floor_db: float = 8.0,
    pad: str = "audio",
    resample_via: int | None = None,
) -> np.ndarray:
    """[n_mels, 3000] log-mel of the first 30 s window, float32. The defaults are Whisper's recipe:
    audio padded with 30 s of zeros, centred reflect-padded STFT (periodic Hann, 400, hop 160, last frame
    dropped), power, mel, log10 clamped at 1e-10, floor at (global max - 8), (x + 4) / 4."""
    x = np.asarray(audio, dtype=np.float64)
    if resample_via:  # resampled down to resample_via Hz and back up (a band-limited copy)
        spec = np.fft.rfft(x)
        freqs = np.fft.rfftfreq(x.size, 1 / SAMPLE_RATE)
        spec[freqs >= resample_via / 2] = 0
        x = np.fft.irfft(spec, n=x.size)
    n_audio = x.size
    if pad == "audio":
        x = np.concatenate([x, np.zeros(N_SAMPLES)])
    padded = np.pad(x, (n_fft // 2, n_fft // 2), mode="reflect")
    n_frames = 1 + (padded.size - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]
    frames = padded[idx] * _window(window, n_fft)[None, :]
    stft = np.fft.rfft(frames, axis=1).T[:, :-1]  # [freq, frames], last frame dropped
    mag = np.abs(stft) ** power
    mel = mel_filters(n_mels, n_fft) @ mag
    logm = np.log10(np.maximum(mel, 1e-10))
    if floor == "global":
        logm = np.maximum(logm, logm.max() - floor_db)
    elif floor == "per-frame":
        logm = np.maximum(logm, logm.max(axis=0, keepdims=True) - floor_db)
    else:
        raise ValueError(floor)
    logm = (logm + 4.0) / 4.0
    if pad == "mel-zeros":  # the audio's own frames, then the log-mel padded with 0.0 to 3000 frames
        n_own = n_audio // hop
        logm = logm[:, :n_own]
        logm = np.concatenate([logm, np.zeros((n_mels, max(0, N_FRAMES - n_own)))], axis=1)
    out = logm[:, :N_FRAMES]
    if out.shape[1] < N_FRAMES:
        out = np.pad(out, ((0, 0), (0, N_FRAMES - out.shape[1])))
    return out.astype(np.float32)


FRONTEND_BUGS = {
    "mel-hann-symmetric": dict(window="hann-symmetric"),
    "mel-hamming": dict(window="hamming"),
    "mel-nfft-512": dict(n_fft=512),
    "mel-hop-170": dict(hop=170),
    "mel-floor-per-frame": dict(floor="per-frame"),
    "mel-floor-10": dict(floor_db=10.0),
    "mel-pad-zero-frames": dict(pad="mel-zeros"),
    "mel-resampled-8k": dict(resample_via=8000),
    "mel-magnitude": dict(power=1.0),
}


# --------------------------------------------------------------------------------------------
# recording
# --------------------------------------------------------------------------------------------


class _Stop(Exception):
    pass


class _Recorder:
    """Values per op name. Encoder: first write wins (a block run twice keeps its first run).
    Decoder: one entry per step, joined along P at the end. stop_after: stop the run once that op is in."""

    def __init__(self, steps: bool, stop_after: str | None = None):
        self.steps, self.stop_after = steps, stop_after
        self.values: dict[str, list] = {}

    def put(self, name, tensor, once=False):
        t = tensor.detach().clone()
        if not self.steps or once:
            self.values.setdefault(name, [t])
        else:
            self.values.setdefault(name, []).append(t)
        if name == self.stop_after:
            raise _Stop


def _out(o):
    return o[0] if isinstance(o, tuple) else o


def _hook_out(rec, name, once=False):
    def hook(module, args, output):
        rec.put(name, _out(output), once)

    return hook


def _hook_in(rec, name, once=False):
    def hook(module, args):
        rec.put(name, args[0], once)

    return hook


def _attach_block(rec, layer, prefix, decoder: bool):
    h = []
    sa = layer.self_attn
    h.append(layer.self_attn_layer_norm.register_forward_hook(_hook_out(rec, f"{prefix}.attn_ln")))
    for proj, nm in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v")):
        h.append(getattr(sa, proj).register_forward_hook(_hook_out(rec, f"{prefix}.attn.{nm}")))
    h.append(sa.out_proj.register_forward_pre_hook(_hook_in(rec, f"{prefix}.attn.wv")))
    h.append(sa.out_proj.register_forward_hook(_hook_out(rec, f"{prefix}.attn.out")))
    if decoder:
        ca = layer.encoder_attn
        h.append(layer.encoder_attn_layer_norm.register_forward_pre_hook(_hook_in(rec, f"{prefix}.attn_residual")))
        h.append(layer.encoder_attn_layer_norm.register_forward_hook(_hook_out(rec, f"{prefix}.cross_attn_ln")))
        h.append(ca.q_proj.register_forward_hook(_hook_out(rec, f"{prefix}.cross_attn.q")))
        h.append(ca.k_proj.register_forward_hook(_hook_out(rec, f"{prefix}.cross_attn.k", once=True)))
        h.append(ca.v_proj.register_forward_hook(_hook_out(rec, f"{prefix}.cross_attn.v", once=True)))
        h.append(ca.out_proj.register_forward_pre_hook(_hook_in(rec, f"{prefix}.cross_attn.wv")))
        h.append(ca.out_proj.register_forward_hook(_hook_out(rec, f"{prefix}.cross_attn.out")))
        h.append(layer.final_layer_norm.register_forward_pre_hook(_hook_in(rec, f"{prefix}.cross_attn_residual")))
    else:
        h.append(layer.final_layer_norm.register_forward_pre_hook(_hook_in(rec, f"{prefix}.attn_residual")))
    h.append(layer.final_layer_norm.register_forward_hook(_hook_out(rec, f"{prefix}.mlp_ln")))
    h.append(layer.fc1.register_forward_hook(_hook_out(rec, f"{prefix}.mlp.fc1")))
    h.append(layer.activation_fn.register_forward_hook(_hook_out(rec, f"{prefix}.mlp.gelu")))
    h.append(layer.fc2.register_forward_hook(_hook_out(rec, f"{prefix}.mlp.fc2")))
    h.append(layer.register_forward_hook(_hook_out(rec, f"{prefix}.out")))
    return h


# --------------------------------------------------------------------------------------------
# bug helpers (hooks registered BEFORE the recording hooks, so what is recorded is what ran)
# --------------------------------------------------------------------------------------------


def _replace_output(module, fn):
    """forward hook replacing the module's output by fn(module, input, output)."""
    return module.register_forward_hook(lambda m, a, o: fn(m, a[0], o))


def _ln_float16_stats(m, x, o):
    xh = x.half()
    mu = xh.mean(-1, keepdim=True)
    var = ((xh - mu) ** 2).mean(-1, keepdim=True)
    y = (x - mu.to(x.dtype)) / torch.sqrt(var.to(x.dtype) + m.eps)
    return y * m.weight + m.bias


def _linear_float16_accumulate(m, x, o, chunk=64):
    """x @ W.T accumulated in float16: products summed in chunks of `chunk` inputs, the running sum
    rounded to float16 after each chunk (what a half-precision accumulator does), bias added in float32."""
    w = m.weight
    acc = torch.zeros(*x.shape[:-1], w.shape[0], dtype=torch.float16)
    for s in range(0, x.shape[-1], chunk):
        part = x[..., s : s + chunk] @ w[:, s : s + chunk].T
        acc = (acc.to(x.dtype) + part).half()
    return acc.to(x.dtype) + m.bias


def _block_forward_post_norm(layer):
    def forward(hidden_states, attention_mask=None, **kwargs):
        h, _ = layer.self_attn(hidden_states=hidden_states, attention_mask=attention_mask, **kwargs)
        x = layer.self_attn_layer_norm(hidden_states + h)
        h = layer.fc2(layer.activation_fn(layer.fc1(x)))
        return layer.final_layer_norm(x + h)

    return forward


def _block_forward_residual_after_ln(layer):
    def forward(hidden_states, attention_mask=None, **kwargs):
        n = layer.self_attn_layer_norm(hidden_states)
        h, _ = layer.self_attn(hidden_states=n, attention_mask=attention_mask, **kwargs)
        x = n + h  # the residual taken after the layer norm
        h = layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(x))))
        return x + h

    return forward


def _block_forward_mlp_residual_from_input(layer):
    def forward(hidden_states, attention_mask=None, **kwargs):
        h, _ = layer.self_attn(
            hidden_states=layer.self_attn_layer_norm(hidden_states), attention_mask=attention_mask, **kwargs
        )
        x = hidden_states + h
        h = layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(x))))
        return hidden_states + h  # the MLP residual added to the block's input, not to attn_residual

    return forward


# --------------------------------------------------------------------------------------------
# the encoder
# --------------------------------------------------------------------------------------------

ENCODER_BUGS = (
    *FRONTEND_BUGS,
    "conv2-stride1-truncate",
    "conv2-stride1-keep-last",
    "conv1-dilation2",
    "conv2-dilation2",
    "dropout-after-pos-embed",
    "attn-prob-dropout",
    "mlp-noise",
    "residual-dropout",
    "softmax-float16",
    "fc2-float16-accumulate",
    "ln-stats-float16",
    "pv-bfloat16",
    "head-zeroed",
    "head-duplicated",
    "heads-permuted",
    "post-norm-block",
    "residual-after-ln",
    "mlp-residual-from-input",
    "block-weights-from-previous",
    "blocks-swapped",
    "block-run-twice",
    "block-skipped",
    "k-gets-q-bias",
    "v-gets-out-bias",
    "fc1-reshaped",
    "fc2-reshaped",
    "v-weight-transposed",
    "attn-scale-d-model",
    "attn-scale-q-only",
)


class HFEncoderPort:
    """transformers' WhisperEncoder with the model's weights, hooked; `bug` plants one bug."""

    def __init__(self, model=None, bug: str | None = None, dtype=torch.float32, weights: bool = False, seed: int = 0):
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        from whisperdiff.inputs.models import LoadedModel, load_model

        if bug is not None and bug not in ENCODER_BUGS:
            raise ValueError(f"unknown encoder bug {bug!r}")
        self.loaded = model if isinstance(model, LoadedModel) else load_model(model)
        self.dims = self.loaded.dims
        self.bug, self.dtype, self.weights, self.seed = bug, dtype, weights, seed
        sd = hf_state_dict(self.loaded.state_dict, "encoder", dtype)
        n = self.dims.n_audio_layer
        if bug == "block-weights-from-previous":  # block 2 (or the last) loaded with block 1's weights
            dst, src = min(2, n - 1), min(2, n - 1) - 1
            for k in list(sd):
                if k.startswith(f"layers.{src}."):
                    sd[k.replace(f"layers.{src}.", f"layers.{dst}.", 1)] = sd[k].clone()
        if bug == "blocks-swapped":  # blocks 1 and 2 (or 0 and 1) exchanged
            a, b = (1, 2) if n > 2 else (0, 1)
            swapped = {}
            for k, v in sd.items():
                if k.startswith(f"layers.{a}."):
                    swapped[k.replace(f"layers.{a}.", f"layers.{b}.", 1)] = v
                elif k.startswith(f"layers.{b}."):
                    swapped[k.replace(f"layers.{b}.", f"layers.{a}.", 1)] = v
                else:
                    swapped[k] = v
            sd = swapped
        self.enc = WhisperEncoder(_config(self.dims, "encoder")).to(dtype)
        self.enc.load_state_dict(sd, strict=True)
        self.enc.eval()
        self._orig_layers = list(self.enc.layers)  # before block-run-twice / block-skipped rewire the list
        self._plant()

    # which block a block-level bug lands in, clipped to the model's depth
    def _blk(self, i):
        return min(i, self.dims.n_audio_layer - 1)

    def _plant(self):
        enc, bug, L = self.enc, self.bug, self.enc.layers
        self._bug_hooks = []
        H = self.dims.n_audio_head
        if bug is None or bug in FRONTEND_BUGS or bug in ("block-weights-from-previous", "blocks-swapped"):
            return  # frontend bugs act on the log-mel, weight bugs at load
        if bug == "conv2-stride1-truncate":
            self._bug_hooks.append(
                _replace_output(
                    enc.conv2, lambda m, x, o: F.conv1d(x, m.weight, m.bias, stride=1, padding=1)[..., : o.shape[-1]]
                )
            )
        elif bug == "conv2-stride1-keep-last":
            self._bug_hooks.append(
                _replace_output(
                    enc.conv2, lambda m, x, o: F.conv1d(x, m.weight, m.bias, stride=1, padding=1)[..., -o.shape[-1] :]
                )
            )
        elif bug == "conv1-dilation2":
            self._bug_hooks.append(
                _replace_output(
                    enc.conv1, lambda m, x, o: F.conv1d(x, m.weight, m.bias, stride=1, padding=2, dilation=2)
                )
            )
        elif bug == "conv2-dilation2":
            self._bug_hooks.append(
                _replace_output(
                    enc.conv2, lambda m, x, o: F.conv1d(x, m.weight, m.bias, stride=2, padding=2, dilation=2)
                )
            )
        elif bug == "dropout-after-pos-embed":  # the encoder module alone left in train mode, dropout 0.1
            enc.dropout, enc.layerdrop = 0.1, 0.0
            enc.training = True
        elif bug == "attn-prob-dropout":  # block 1's attention in train mode, attention_dropout 0.1
            a = L[self._blk(1)].self_attn
            a.dropout, a.training = 0.1, True
        elif bug == "mlp-noise":  # Gaussian noise (std 0.02 x the op's std) on block 1's fc2 output
            g = torch.Generator().manual_seed(self.seed + 11)

            def noise(m, x, o):
                return o + 0.02 * o.std() * torch.randn(o.shape, generator=g, dtype=o.dtype)

            self._bug_hooks.append(_replace_output(L[self._blk(1)].fc2, noise))
        elif bug == "residual-dropout":  # block 2 in train mode, dropout 0.1 on both residual branches
            layer = L[self._blk(2)]
            layer.dropout, layer.training = 0.1, True
        elif bug == "softmax-float16":
            L[self._blk(1)].self_attn._ho_bug = {"softmax_float16": True}
        elif bug == "fc2-float16-accumulate":
            self._bug_hooks.append(_replace_output(L[self._blk(2)].fc2, _linear_float16_accumulate))
        elif bug == "ln-stats-float16":
            self._bug_hooks.append(_replace_output(L[self._blk(2)].final_layer_norm, _ln_float16_stats))
        elif bug == "pv-bfloat16":
            L[self._blk(3)].self_attn._ho_bug = {"pv_bfloat16": True}
        elif bug == "head-zeroed":
            L[self._blk(1)].self_attn._ho_bug = {"zero_head": min(3, H - 1)}
        elif bug == "head-duplicated":
            L[self._blk(2)].self_attn._ho_bug = {"dup_head": (0, H - 1)}
        elif bug == "heads-permuted":
            L[0].self_attn._ho_bug = {"swap_heads": (0, 1)}
        elif bug == "post-norm-block":
            L[self._blk(1)].forward = _block_forward_post_norm(L[self._blk(1)])
        elif bug == "residual-after-ln":
            L[0].forward = _block_forward_residual_after_ln(L[0])
        elif bug == "mlp-residual-from-input":
            L[self._blk(3)].forward = _block_forward_mlp_residual_from_input(L[self._blk(3)])
        elif bug == "block-run-twice":  # an off-by-one layer list: block 1 twice, then the rest
            b = self._blk(1)
            enc.layers = torch.nn.ModuleList([*L[: b + 1], L[b], *L[b + 1 :]])
        elif bug == "block-skipped":  # block 2 (or the last) never run
            b = self._blk(2)
            enc.layers = torch.nn.ModuleList([m for i, m in enumerate(L) if i != b])
        elif bug == "k-gets-q-bias":
            a = L[0].self_attn
            self._bug_hooks.append(_replace_output(a.k_proj, lambda m, x, o: o + a.q_proj.bias))
        elif bug == "v-gets-out-bias":
            a = L[self._blk(2)].self_attn
            self._bug_hooks.append(_replace_output(a.v_proj, lambda m, x, o: o - a.v_proj.bias + a.out_proj.bias))
        elif bug == "fc1-reshaped":  # a [out, in] weight read as [in, out] by reshape: y = x @ W.reshape(in, out)
            fc = L[self._blk(1)].fc1
            with torch.no_grad():
                fc.weight.copy_(fc.weight.reshape(fc.in_features, fc.out_features).T.clone())
        elif bug == "fc2-reshaped":
            fc = L[self._blk(3)].fc2
            with torch.no_grad():
                fc.weight.copy_(fc.weight.reshape(fc.in_features, fc.out_features).T.clone())
        elif bug == "v-weight-transposed":
            v = L[self._blk(2)].self_attn.v_proj
            with torch.no_grad():
                v.weight.copy_(v.weight.T.clone())
        elif bug == "attn-scale-d-model":  # 1/sqrt(d_model) instead of 1/sqrt(d_head)
            L[0].self_attn.scaling = self.dims.n_audio_state**-0.5
        elif bug == "attn-scale-q-only":  # d_head^-0.25 on q only (Whisper splits d_head^-0.5 over q and k)
            a = L[self._blk(3)].self_attn
            a.scaling = a.head_dim**-0.25
        else:
            raise ValueError(bug)

    def _attach(self, rec):
        enc = self.enc
        hooks = [
            enc.conv1.register_forward_hook(_hook_out(rec, "conv1")),
            enc.conv2.register_forward_pre_hook(_hook_in(rec, "conv1.gelu")),
            enc.conv2.register_forward_hook(_hook_out(rec, "conv2")),
            enc.conv2.register_forward_hook(lambda m, a, o: rec.put("conv2.gelu", F.gelu(o))),
            enc.layers[0].register_forward_pre_hook(_hook_in(rec, "pos_embed")),
            enc.layer_norm.register_forward_hook(_hook_out(rec, "ln_post")),
        ]
        seen = set()
        for layer in enc.layers:
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            idx = self._orig_index(layer)
            hooks += _attach_block(rec, layer, f"blocks.{idx}", decoder=False)
            a = layer.self_attn
            a._ho_causal = False
            a._ho_record_weights = (lambda w, n=f"blocks.{idx}.attn.weights": rec.put(n, w)) if self.weights else None
        return hooks

    def _orig_index(self, layer):
        if not hasattr(self, "_index"):
            self._index = {id(m): i for i, m in enumerate(self._orig_layers)}
        return self._index[id(layer)]

    def mel(self, audio=None) -> np.ndarray:
        """our frontend's log-mel [1, n_mels, 3000] (with the frontend bug, if any)."""
        x = read_wav(audio or default_audio_path())
        kw = FRONTEND_BUGS.get(self.bug, {})
        return log_mel(x, self.dims.n_mels, **kw)[None]

    def run(self, mel: np.ndarray, stop_after: str | None = None) -> dict:
        """{op: numpy array} for one log-mel [1, n_mels, 3000] (up to `stop_after` when given)."""
        rec = _Recorder(steps=False, stop_after=stop_after)
        hooks = []
        try:
            rec.put("mel", torch.as_tensor(mel))
            hooks = self._attach(rec)
            torch.manual_seed(self.seed)
            with torch.no_grad():
                self.enc(torch.as_tensor(mel, dtype=self.dtype))
        except _Stop:
            pass
        finally:
            for h in hooks:
                h.remove()
        return {k: v[0].numpy() for k, v in rec.values.items()}


def trace_encoder(
    out, model=None, bug: str | None = None, *, dtype: str = "float32", weights: bool = False, audio=None, seed: int = 0
):
    """Trace the HF encoder port (with `bug`) into `out` through whisperdiff.Tracer; returns the path."""
    import whisperdiff as wd
    from whisperdiff.inputs.models import LoadedModel, load_model

    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    tdt = {"float32": torch.float32, "float64": torch.float64}[dtype]
    port = HFEncoderPort(loaded, bug=bug, dtype=tdt, weights=weights, seed=seed)
    mel = port.mel(audio)
    values = port.run(mel)
    from whisperdiff.names import op_specs

    order = [s.name for s in op_specs(loaded.dims)]
    info = {"port": "transformers WhisperEncoder (benchmarks/heldout_ports.py)", "bug": bug or "none"}
    with wd.Tracer(out, impl="hf-heldout", model=loaded, audio=audio, dtype=dtype, info=info) as t:
        t.record("mel", values.pop("mel"))
        for name in order:
            if name in values:
                t.record(name, values[name])
    return Path(out)


# --------------------------------------------------------------------------------------------
# the decoder
# --------------------------------------------------------------------------------------------

DECODER_BUGS = (
    "kv-entry-missing",
    "kv-entry-overwritten",
    "kv-stale-after-reset",
    "kv-written-one-ahead",
    "mask-off-by-one",
    "mask-off-by-two",
    "no-causal-mask",
    "mask-hides-diagonal",
    "cross-padding-mask",
    "kv-cache-float16",
    "cross-kv-cache-float16",
    "logits-embedding-reshaped",
    "logits-embedding-memory-transposed",
    "logits-untied",
    "wrong-sot-row",
    "wrong-notimestamps-row",
    "encoder-output-before-ln-post",
    "logits-minus-inf-suppression",
    "logits-finite-suppression",
    "dec-ln-eps",
    "dec-attn-scale-d-model",
    "dec-cross-residual-dropped",
    "dec-cross-head-split",
    "dec-fc1-reshaped",
    "logits-before-final-ln",
    "dec-dropout-on",
)

FULL_SEQUENCE_BUGS = ("mask-off-by-one", "mask-off-by-two", "no-causal-mask", "mask-hides-diagonal")


def _dec_layer_forward_no_cross_residual(layer):
    def forward(
        hidden_states,
        attention_mask=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        cache=None,
        use_cache=True,
        **kwargs,
    ):
        residual = hidden_states
        h, _ = layer.self_attn(
            layer.self_attn_layer_norm(hidden_states), cache=cache, attention_mask=attention_mask, **kwargs
        )
        hidden_states = residual + h
        h, _ = layer.encoder_attn(
            layer.encoder_attn_layer_norm(hidden_states),
            key_value_states=encoder_hidden_states,
            attention_mask=None,
            cache=cache,
            **kwargs,
        )
        hidden_states = h  # the cross-attention residual dropped
        residual = hidden_states
        h = layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(hidden_states))))
        return residual + h

    return forward


class _CacheBug:
    """Wraps a DynamicCache's update with one of the KV-cache bugs (every layer)."""

    def __init__(self, cache, kind, prompt_length, stale=None):
        self.cache, self.kind, self.prompt_length = cache, kind, prompt_length
        self.orig = cache.update
        self.stale = stale  # {layer: (K, V)} from an earlier decode, for kv-stale-after-reset
        self.buf = {}
        self.pos = {}
        cache.update = self.update

    def update(self, k, v, layer_idx, *args, **kwargs):
        n = k.shape[-2]
        kind = self.kind
        if kind == "kv-cache-float16":
            K, V = self.orig(k.half().to(k.dtype), v.half().to(v.dtype), layer_idx, *args, **kwargs)
            return K, V
        if kind in ("kv-entry-missing", "kv-entry-overwritten"):
            K, V = self.orig(k, v, layer_idx, *args, **kwargs)
            lay = self.cache.layers[layer_idx]
            p = K.shape[-2] - n  # first position written by this step
            if kind == "kv-entry-missing" and n == self.prompt_length and p == 0:
                # the step itself read every key; the store loses the prompt's last entry
                keep = [i for i in range(K.shape[-2]) if i != self.prompt_length - 1]
                lay.keys, lay.values = K[..., keep, :].contiguous(), V[..., keep, :].contiguous()
                return K, V
            if kind == "kv-entry-overwritten" and p >= self.prompt_length:
                # a slice one too wide: the new entry also lands on the previous slot
                K, V = K.clone(), V.clone()
                K[..., p - 1, :], V[..., p - 1, :] = k[..., 0, :], v[..., 0, :]
                lay.keys, lay.values = K, V
            return K, V
        if kind == "kv-stale-after-reset":
            # a static buffer holding the previous utterance's entries; reset() rewound the write position
            # but not the valid length, so every step reads slots [0, max(p + n, previous length))
            if layer_idx not in self.buf:
                sk, sv = self.stale[layer_idx]
                bk = torch.zeros(*k.shape[:2], 512, k.shape[-1], dtype=k.dtype)
                bv = torch.zeros_like(bk)
                bk[..., : sk.shape[-2], :], bv[..., : sv.shape[-2], :] = sk, sv
                self.buf[layer_idx], self.pos[layer_idx], self.hw = [bk, bv], 0, sk.shape[-2]
            bk, bv = self.buf[layer_idx]
            p = self.pos[layer_idx]
            bk[..., p : p + n, :], bv[..., p : p + n, :] = k, v
            self.pos[layer_idx] = p + n
            end = max(p + n, self.hw)
            return bk[..., :end, :], bv[..., :end, :]
        if kind == "kv-written-one-ahead":
            # a static buffer: write at a position counter, read slots [0, p + n)
            if layer_idx not in self.buf:
                bk = torch.zeros(*k.shape[:2], 512, k.shape[-1], dtype=k.dtype)
                self.buf[layer_idx] = [bk, torch.zeros_like(bk)]
                self.pos[layer_idx] = 0
            bk, bv = self.buf[layer_idx]
            p = self.pos[layer_idx]
            w = p + 1 if p >= self.prompt_length else p
            bk[..., w : w + n, :], bv[..., w : w + n, :] = k, v
            self.pos[layer_idx] = p + n
            return bk[..., : p + n, :], bv[..., : p + n, :]
        raise ValueError(kind)


class HFDecoderPort:
    """transformers' WhisperDecoder with the model's weights and a tied output projection, hooked."""

    def __init__(self, model=None, bug: str | None = None, dtype=torch.float32, seed: int = 0):
        from transformers.models.whisper.modeling_whisper import WhisperDecoder

        from whisperdiff.inputs.models import LoadedModel, load_model

        if bug is not None and bug not in DECODER_BUGS:
            raise ValueError(f"unknown decoder bug {bug!r}")
        self.loaded = model if isinstance(model, LoadedModel) else load_model(model)
        self.dims = self.loaded.dims
        self.bug, self.dtype, self.seed = bug, dtype, seed
        self.dec = WhisperDecoder(_config(self.dims, "decoder")).to(dtype)
        self.dec.load_state_dict(hf_state_dict(self.loaded.state_dict, "decoder", dtype), strict=True)
        self.dec.eval()
        V, C = self.dims.n_vocab, self.dims.n_text_state
        self.proj_out = torch.nn.Linear(C, V, bias=False).to(dtype)
        self.proj_out.weight = self.dec.embed_tokens.weight  # tied
        self._bug_hooks = []
        self._plant()

    def _plant(self):
        bug, L, dec = self.bug, self.dec.layers, self.dec
        n = len(L)
        for layer in L:
            layer.self_attn._ho_causal = True
            layer.encoder_attn._ho_causal = False
        if bug == "mask-off-by-one":
            L[0].self_attn._ho_bug = {"mask_shift": 1}
        elif bug == "mask-off-by-two":
            L[0].self_attn._ho_bug = {"mask_shift": 2}
        elif bug == "no-causal-mask":
            L[0].self_attn._ho_bug = {"no_mask": True}
        elif bug == "mask-hides-diagonal":
            L[0].self_attn._ho_bug = {"mask_shift": -1}
        elif bug == "cross-padding-mask":
            pass  # set per run (needs the audio's duration)
        elif bug == "kv-stale-after-reset":  # a one-token step masks nothing: every cached slot is "the past"
            for layer in L:
                layer.self_attn._ho_bug = {"mask_multi_token_steps_only": True}
        elif bug == "logits-embedding-reshaped":  # W [V, C] read as [C, V]: logits = x @ W.reshape(C, V)
            W = dec.embed_tokens.weight
            self.proj_out = torch.nn.Linear(W.shape[1], W.shape[0], bias=False).to(self.dtype)
            with torch.no_grad():
                self.proj_out.weight.copy_(W.reshape(W.shape[1], W.shape[0]).T)
        elif bug == "logits-embedding-memory-transposed":  # W.T's memory read as [V, C]
            W = dec.embed_tokens.weight
            self.proj_out = torch.nn.Linear(W.shape[1], W.shape[0], bias=False).to(self.dtype)
            with torch.no_grad():
                self.proj_out.weight.copy_(W.T.contiguous().reshape(W.shape[0], W.shape[1]))
        elif bug == "logits-untied":  # proj_out never tied: HF's own initialisation (normal, std 0.02)
            W = dec.embed_tokens.weight
            g = torch.Generator().manual_seed(self.seed + 5)
            self.proj_out = torch.nn.Linear(W.shape[1], W.shape[0], bias=False).to(self.dtype)
            with torch.no_grad():
                self.proj_out.weight.copy_(torch.randn(W.shape, generator=g, dtype=self.dtype) * 0.02)
        elif bug == "logits-minus-inf-suppression":  # timestamp tokens set to -inf inside the model
            V = self.dims.n_vocab
            ids = torch.arange(50363, V) if V > 50363 else torch.tensor([V - 1])

            def sup(m, a, o):
                o = o.clone()
                o[..., ids] = -torch.inf
                return o

            self._bug_hooks.append(self.proj_out.register_forward_hook(sup))
        elif bug == "logits-finite-suppression":  # the end-of-text logit pushed to -1e4 inside the model
            eot = min(50256, self.dims.n_vocab - 1)

            def sup(m, a, o):
                o = o.clone()
                o[..., eot] = -1e4
                return o

            self._bug_hooks.append(self.proj_out.register_forward_hook(sup))
        elif bug == "dec-ln-eps":
            L[0].self_attn_layer_norm.eps = 1e-3
        elif bug == "dec-attn-scale-d-model":
            a = L[min(2, n - 1)].self_attn
            a.scaling = self.dims.n_text_state**-0.5
        elif bug == "dec-cross-residual-dropped":
            L[0].forward = _dec_layer_forward_no_cross_residual(L[0])
        elif bug == "dec-cross-head-split":
            L[min(1, n - 1)].encoder_attn._ho_bug = {"head_split": True}
        elif bug == "dec-fc1-reshaped":
            fc = L[min(2, n - 1)].fc1
            with torch.no_grad():
                fc.weight.copy_(fc.weight.reshape(fc.in_features, fc.out_features).T.clone())
        elif bug == "dec-dropout-on":  # the decoder module left in train mode, dropout 0.1 after the embeddings
            dec.dropout, dec.layerdrop, dec.training = 0.1, 0.0, True

    def _attach(self, rec, P):
        dec = self.dec
        hooks = [
            dec.embed_tokens.register_forward_hook(_hook_out(rec, "decoder.tok_embed")),
            dec.layers[0].register_forward_pre_hook(_hook_in(rec, "decoder.pos_embed")),
            dec.layer_norm.register_forward_hook(_hook_out(rec, "decoder.ln")),
        ]
        for i, layer in enumerate(dec.layers):
            pre = f"decoder.blocks.{i}"
            hooks += _attach_block(rec, layer, pre, decoder=True)

            def self_w(w, name=f"{pre}.attn.weights"):
                padded = torch.zeros(*w.shape[:-1], P, dtype=w.dtype)
                padded[..., : w.shape[-1]] = w
                rec.put(name, padded)

            layer.self_attn._ho_record_weights = self_w
            layer.encoder_attn._ho_record_weights = lambda w, name=f"{pre}.cross_attn.weights": rec.put(name, w)
        return hooks

    def _forward(self, rec, tokens, encoder_out, full, prompt_length, cache_bug_stale=None, record=True, plant=True):
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        dec = self.dec
        P = len(tokens)
        steps = [(0, P)] if full else [(0, prompt_length)] + [(p, p + 1) for p in range(prompt_length, P)]
        cache = None

        if not full:
            import copy

            cfg = copy.deepcopy(dec.config)
            cfg.num_hidden_layers = dec.config.decoder_layers
            cache = EncoderDecoderCache(DynamicCache(config=cfg), DynamicCache(config=cfg))
            if plant and self.bug in (
                "kv-entry-missing",
                "kv-entry-overwritten",
                "kv-written-one-ahead",
                "kv-stale-after-reset",
                "kv-cache-float16",
            ):
                _CacheBug(cache.self_attention_cache, self.bug, prompt_length, stale=cache_bug_stale)
            if plant and self.bug == "cross-kv-cache-float16":
                _CacheBug(cache.cross_attention_cache, "kv-cache-float16", prompt_length)
        hooks = self._attach(rec, P) if record else []
        logits = []
        pre_ln = []
        h_pre = dec.layers[-1].register_forward_hook(lambda m, a, o: pre_ln.append(_out(o)))
        try:
            torch.manual_seed(self.seed)
            ids_all = torch.tensor([tokens])
            if self.bug == "wrong-sot-row":
                ids_all[0, 0] = 50258 if self.dims.n_vocab > 50258 else 1
            if self.bug == "wrong-notimestamps-row" and prompt_length > 1:
                ids_all[0, prompt_length - 1] = 50363 if self.dims.n_vocab > 50363 else 2
            for s, e in steps:
                qpos = torch.arange(s, e)
                for layer in dec.layers:
                    layer.self_attn._ho_qpos = qpos
                with torch.no_grad():
                    out = dec(
                        input_ids=ids_all[:, s:e],
                        encoder_hidden_states=encoder_out,
                        cache=cache,
                        use_cache=not full,
                        position_ids=qpos[None],
                    )
                    x = out.last_hidden_state
                    if self.bug == "logits-before-final-ln":
                        x = pre_ln[-1]
                    logits.append(self.proj_out(x))
        finally:
            h_pre.remove()
            for h in hooks:
                h.remove()
        return torch.cat(logits, 1), cache

    def run(
        self,
        tokens,
        encoder_out: torch.Tensor,
        prompt_length: int,
        full: bool | None = None,
        duration_s: float | None = None,
    ) -> dict:
        """{op: numpy array} over the token sequence (prompt included)."""
        if full is None:
            full = self.bug in FULL_SEQUENCE_BUGS
        enc_in = encoder_out.to(self.dtype)
        if self.bug == "encoder-output-before-ln-post":
            enc_in = self._pre_ln_post.to(self.dtype)
        if self.bug == "cross-padding-mask":
            frames = int(math.ceil((duration_s or 30.0) * 50))  # encoder frames are 20 ms
            self.dec.layers[0].encoder_attn._ho_bug = {"pad_mask_after": frames}
        stale = None
        if self.bug == "kv-stale-after-reset":
            # the previous utterance: the same prompt, other text (this text reversed), as long as this one
            other = list(tokens[:prompt_length]) + list(reversed(tokens[prompt_length:]))
            warm = _Recorder(steps=True)
            _, warm_cache = self._forward(warm, other, enc_in, False, prompt_length, record=False, plant=False)
            stale = {i: (lay.keys, lay.values) for i, lay in enumerate(warm_cache.self_attention_cache.layers)}
        rec = _Recorder(steps=True)
        rec.put("ln_post", enc_in)
        logits, _ = self._forward(rec, list(tokens), enc_in, full, prompt_length, cache_bug_stale=stale)
        rec.values["decoder.logits"] = [logits]
        out = {}
        for name, vals in rec.values.items():
            if name in ("ln_post",) or name.endswith(("cross_attn.k", "cross_attn.v")):
                out[name] = vals[0].numpy()
            else:
                out[name] = torch.cat(vals, dim=-2 if vals[0].dim() == 4 else 1).numpy()
        return out


def clean_encoder_output(loaded, dtype=torch.float32, audio=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ln_post, the input of ln_post) of the clean HF encoder on our frontend's log-mel."""
    port = HFEncoderPort(loaded, bug=None, dtype=dtype)
    vals = port.run(port.mel(audio))
    last = f"blocks.{loaded.dims.n_audio_layer - 1}.out"
    return torch.as_tensor(vals["ln_post"]), torch.as_tensor(vals[last])


def trace_decoder(
    out,
    model=None,
    bug: str | None = None,
    *,
    tokens,
    prompt_length: int,
    dtype: str = "float32",
    encoder_output=None,
    duration_s: float | None = None,
    full: bool | None = None,
    seed: int = 0,
):
    """Trace the HF decoder port (with `bug`), teacher-forced on `tokens` (prompt included), into `out`."""
    import whisperdiff as wd
    from whisperdiff.inputs.models import LoadedModel, load_model
    from whisperdiff.names import decoder_op_specs

    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    tdt = {"float32": torch.float32, "float64": torch.float64}[dtype]
    if encoder_output is None:
        encoder_output = clean_encoder_output(loaded, tdt)
    ln_post, pre_ln = encoder_output
    port = HFDecoderPort(loaded, bug=bug, dtype=tdt, seed=seed)
    port._pre_ln_post = pre_ln
    values = port.run(tokens, ln_post, prompt_length, full=full, duration_s=duration_s)
    order = [s.name for s in decoder_op_specs(loaded.dims, len(tokens))]
    info = {"port": "transformers WhisperDecoder (benchmarks/heldout_ports.py)", "bug": bug or "none"}
    with wd.Tracer(out, impl="hf-heldout-decoder", model=loaded, dtype=dtype, info=info, tokens=list(tokens)) as t:
        for name in order:
            if name in values:
                t.record(name, values[name])
    return Path(out)
