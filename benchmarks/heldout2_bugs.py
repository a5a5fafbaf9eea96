"""The second held-out diagnosis set: porting bugs planted in a functional torch port (heldout2_ports.py).

Written without reading whisperdiff's analysis code (src/whisperdiff/analysis/), its diagnosis tests,
its own bug catalogues (benchmarks/novel_bugs.py, benchmarks/heldout_bugs.py) or docs/compare.md's
section on hypotheses: only the kinds table of docs/compare.md (the vocabulary), the op names
(src/whisperdiff/names.py) and the Tracer. The port is neither whisperdiff's nor transformers'.

Each bug: where it acts first (the expected op; for the decoder also the token position, None for
cross_attn.k/v, which have no position axis), the finding kinds that name it correctly, and wording
fragments a precise message would contain (any one, case-insensitive), in the user's terms. `wrong_words`:
phrases that name another mechanism (a message with one of them and none of `words` misleads).
`absent`: a prefix of ops the bug leaves out of the trace (a skipped block), allowed by the set check.

Decoder tokens: openai-whisper's greedy tokens on the shipped clip, prompt [<|startoftranscript|>,
<|notimestamps|>] (prompt length 2): position 2 is the first one-token (cached) step.
"""

from __future__ import annotations

from dataclasses import dataclass

# docs/compare.md's kinds table when this set was written
VOCABULARY_AT_WRITING = frozenset(
    {
        "input_mismatch",
        "weights_mismatch",
        "weight_layout",
        "wrong_weight",
        "swapped_projections",
        "bias_error",
        "activation_approx",
        "wrong_activation",
        "layer_norm_eps",
        "layer_norm_variance",
        "layer_norm_affine",
        "rms_norm",
        "norm_axis",
        "softmax_axis",
        "attention_mask",
        "attention_scale",
        "head_split",
        "head_missing",
        "conv_padding",
        "conv_stride",
        "conv_kernel",
        "positional",
        "precision",
        "missing_op",
        "missing_residual",
        "scale_mismatch",
        "bias_shift",
        "sign_flip",
        "nonfinite",
        "shape_mismatch",
        "layout",
        "stochastic",
        "head_order",
        "wiring",
        "causal_mask",
        "kv_cache",
        "suppression",
        "divergence",
        "port_output",
    }
)

# kinds that name no mechanism: a top finding of one of these is unspecific, never misleading
GENERIC = frozenset({"divergence", "layout", "nonfinite", "shape_mismatch", "port_output"})


@dataclass(frozen=True)
class Bug:
    name: str
    part: str  # "encoder" | "decoder"
    klass: str
    description: str
    op: str
    kinds: tuple[str, ...]
    words: tuple[str, ...]
    wrong_words: tuple[str, ...] = ()
    position: int | None = None
    op_weights: str | None = None  # the expected op when attention probabilities are traced
    absent: str | None = None


def expected_op(bug: Bug, weights: bool = False) -> str:
    return bug.op_weights if (weights and bug.op_weights) else bug.op


def _enc(name, klass, description, op, kinds, words, wrong_words=(), op_weights=None, absent=None):
    return Bug(name, "encoder", klass, description, op, tuple(kinds), tuple(words), tuple(wrong_words), None,
               op_weights, absent)  # fmt: skip


def _dec(name, klass, description, op, position, kinds, words, wrong_words=()):
    return Bug(name, "decoder", klass, description, op, tuple(kinds), tuple(words), tuple(wrong_words), position)


_MEL = ("input_mismatch",)
_UNSCALED = (
    "unscaled",
    "not scaled",
    "no scal",
    "without scal",
    "scale missing",
    "missing scale",
    "scale of 1",
    "scale 1.0",
    "scaled by 1.0",
    "factor 8",
    "8.0",
    "× 8",
    "x 8",
    "8x",
    "8 times",
)

ENCODER = [
    # ---- frontend ----------------------------------------------------------------------------------
    _enc(
        "mel-blackman-window",
        "frontend",
        "STFT window: a periodic Blackman window instead of the periodic Hann",
        "mel",
        _MEL,
        ("blackman",),
        ("hamming",),
    ),
    _enc(
        "mel-nfft-1024",
        "frontend",
        "n_fft 1024 (the 400-sample Hann window zero-padded), filterbank built for 513 bins",
        "mel",
        _MEL,
        ("n_fft", "1024", "fft size", "fft length", "nfft"),
    ),
    _enc(
        "mel-hop-100-librosa",
        "frontend",
        "hop length 100 (librosa's default win_length // 4) instead of 160",
        "mel",
        _MEL,
        ("hop",),
        ("blackman", "hamming"),
    ),
    _enc(
        "mel-not-centred",
        "frontend",
        "torch.stft(center=False): frames not centred (no reflect padding), every frame 200 samples (1.25 hops) early",
        "mel",
        _MEL,
        ("center", "centre", "centred", "centered", "reflect", "shift", "offset", "early", "late"),
    ),
    _enc(
        "mel-first-frame-dropped",
        "frontend",
        "the STFT's first frame dropped instead of its last: frame t holds the reference's frame t + 1",
        "mel",
        _MEL,
        ("first frame", "one frame", "1 frame", "shift", "offset", "frame t + 1", "early"),
    ),
    _enc(
        "mel-floor-per-band",
        "frontend",
        "dynamic-range floor (max - 8) taken per mel band instead of over the whole spectrogram",
        "mel",
        _MEL,
        ("per band", "per-band", "per mel", "each band", "per channel", "per bin", "band-wise", "along time"),
        ("per frame", "per-frame"),
    ),
    _enc(
        "mel-no-floor",
        "frontend",
        "the dynamic-range clamp max(x, x.max() - 8) left out",
        "mel",
        _MEL,
        ("floor", "clamp", "dynamic range", "max - 8", "max-8"),
    ),
    _enc(
        "mel-natural-log",
        "frontend",
        "natural log instead of log10 (the floor still max - 8)",
        "mel",
        _MEL,
        ("natural", "ln(", "log base", "base e", "np.log", "log10", "log e"),
    ),
    _enc(
        "mel-htk-scale",
        "frontend",
        "HTK mel scale (2595 log10(1 + f / 700)) instead of Slaney's",
        "mel",
        _MEL,
        ("htk", "mel scale", "mel-scale"),
    ),
    _enc(
        "mel-filters-unnormalised",
        "frontend",
        "mel filters without Slaney's area normalisation (peak 1)",
        "mel",
        _MEL,
        (
            "slaney",
            "area",
            "filter norm",
            "filterbank norm",
            "unnormalised filter",
            "unnormalized filter",
            "norm=none",
            "filter weights",
            "filterbank",
        ),
    ),
    _enc(
        "mel-preemphasis",
        "frontend",
        "a 0.97 pre-emphasis filter on the audio before the STFT",
        "mel",
        _MEL,
        ("pre-emphasis", "preemphasis", "pre emphasis", "high-pass", "highpass", "0.97"),
    ),
    _enc(
        "mel-int16-unscaled",
        "frontend",
        "int16 samples not divided by 32768: the log-mel shifted by log10(32768^2) / 4 = 2.26 everywhere",
        "mel",
        ("input_mismatch", "bias_shift"),
        ("32768", "int16", "16-bit", "2.26", "2.25", "unscaled", "not scaled", "9.03", "pcm"),
    ),
    _enc(
        "mel-resampled-22050-linear",
        "frontend",
        "audio resampled to 22050 Hz and back by linear interpolation",
        "mel",
        _MEL,
        ("resampl", "interpolat", "sample rate", "22050", "22.05", "low-pass", "lowpass", "band-limit", "bandlimit"),
    ),
    # ---- stride / window ---------------------------------------------------------------------------
    _enc(
        "conv2-pad-right-only",
        "stride",
        "conv2 padded on the right only (0, 1): output frame t reads input "
        "frames 2t..2t+2 instead of 2t-1..2t+1 (the stride-2 phase off by one)",
        "conv2",
        ("conv_padding", "conv_stride"),
        ("one side", "right", "phase", "odd", "wrong frame", "from frame 1", "shift", "offset", "padding (0, 1)"),
    ),
    _enc(
        "conv1-valid-then-pad",
        "stride",
        "conv1 without padding (2998 frames), its output zero-padded to 3000: "
        "the first and last frames are 0 instead of the edge convolution",
        "conv1",
        ("conv_padding",),
        ("no padding", "unpadded", "without padding", "valid", "edge", "first and last", "border", "none"),
    ),
    _enc(
        "conv1-causal-padding",
        "stride",
        "conv1 padded causally (2 frames on the left, none on the right): output t reads t-2..t",
        "conv1",
        ("conv_padding",),
        ("left", "causal", "one side", "shift", "2 frames", "two frames"),
    ),
    _enc(
        "conv2-kernel-flipped",
        "stride",
        "conv2's taps reversed (a convolution / cross-correlation mix-up)",
        "conv2",
        ("conv_kernel", "weight_layout"),
        ("flip", "revers", "mirror"),
    ),
    _enc(
        "conv1-replicate-padding",
        "stride",
        "conv1 padded by replicating the edge frames instead of zeros",
        "conv1",
        ("conv_padding",),
        ("replicat", "edge", "pad value", "padding mode", "padded with", "border", "non-zero pad"),
    ),
    # ---- stochastic ops left on ----------------------------------------------------------------------
    _enc(
        "mel-noise-augmentation",
        "stochastic",
        "training-time Gaussian noise (std 0.05) added to the log-mel inside the model, after it is recorded",
        "conv1",
        ("stochastic",),
        ("noise", "random", "deterministic", "augment", "dither"),
    ),
    _enc(
        "spec-augment-time-mask",
        "stochastic",
        "SpecAugment's time mask left on: 40 frames of the model's input zeroed (at a random start)",
        "conv1",
        ("stochastic", "input_mismatch"),
        ("mask", "augment", "zeroed", "zero"),
    ),
    _enc(
        "mlp-activation-dropout",
        "stochastic",
        "block 2: dropout p = 0.1 after the GELU (activation dropout left on)",
        "blocks.2.mlp.gelu",
        ("stochastic",),
        ("dropout", "0.1", "train"),
    ),
    _enc(
        "attn-out-dropout",
        "stochastic",
        "block 0: dropout p = 0.1 on the attention's output projection",
        "blocks.0.attn.out",
        ("stochastic",),
        ("dropout", "0.1", "train"),
    ),
    # ---- precision of one sub-op -----------------------------------------------------------------------
    _enc(
        "qk-scores-bfloat16",
        "precision",
        "block 2: q @ k^T computed in bfloat16",
        "blocks.2.attn.wv",
        ("precision",),
        ("bfloat16",),
        ("tf32",),
        op_weights="blocks.2.attn.weights",
    ),
    _enc(
        "gelu-float16",
        "precision",
        "block 1: the MLP's GELU evaluated in float16",
        "blocks.1.mlp.gelu",
        ("precision",),
        ("float16", "half", "fp16"),
        ("bfloat16",),
    ),
    _enc(
        "out-proj-tf32",
        "precision",
        "block 3: the attention output projection with TF32 inputs",
        "blocks.3.attn.out",
        ("precision",),
        ("tf32",),
        ("float16",),
    ),
    _enc(
        "ln-normalise-bfloat16",
        "precision",
        "block 1: attn_ln's normalised value (x - mean) / std rounded to bfloat16 before the affine",
        "blocks.1.attn_ln",
        ("precision",),
        ("bfloat16",),
    ),
    _enc(
        "qkv-float16-accumulate",
        "precision",
        "block 0: the fused QKV projection accumulated in float16 (chunks of 32 inputs)",
        "blocks.0.attn.q",
        ("precision",),
        ("float16", "half", "fp16"),
        ("bfloat16",),
    ),
    _enc(
        "residual-stream-float16",
        "precision",
        "block 2: the attention residual sum stored in float16",
        "blocks.2.attn_residual",
        ("precision",),
        ("float16", "half", "fp16"),
        ("bfloat16",),
    ),
    # ---- heads ---------------------------------------------------------------------------------------
    _enc(
        "head0-merge-off-by-one",
        "heads",
        "block 3: the head-merge loop starts at 1, head 0's slot stays zero",
        "blocks.3.attn.wv",
        ("head_missing",),
        ("head 0",),
    ),
    _enc(
        "head-copied-next-slot",
        "heads",
        "block 0: slot 2 of the merge holds head 1's output (head 2 lost)",
        "blocks.0.attn.wv",
        ("head_order",),
        ("head 1", "slot 2"),
    ),
    _enc(
        "heads-rotated",
        "heads",
        "block 2: heads merged rotated by one (slot h holds head h - 1)",
        "blocks.2.attn.wv",
        ("head_order",),
        ("rotat", "cyclic", "shift", "permut", "head 0", "head 5"),
    ),
    _enc(
        "heads-split-strided",
        "heads",
        "block 1: q/k/v split into heads as [T, D, H] (strided) and merged back the same way",
        "blocks.1.attn.wv",
        ("head_split",),
        ("split", "merge", "interleav", "stride", "head order"),
    ),
    # ---- block wiring ----------------------------------------------------------------------------------
    _enc(
        "parallel-attn-mlp",
        "wiring",
        "block 1: the MLP's layer norm reads the block input (parallel attention and MLP) instead of attn_residual",
        "blocks.1.mlp_ln",
        ("wiring",),
        ("parallel", "block input", "block's input", "blocks.0.out", "input of the block", "instead of attn_residual"),
    ),
    _enc(
        "attn-residual-doubled",
        "wiring",
        "block 3: the attention already returned x + out, the block adds x again (2x + out)",
        "blocks.3.attn_residual",
        ("wiring",),
        ("twice", "doubled", "double", "2x", "2 x", "2 ×", "added again"),
    ),
    _enc(
        "last-block-post-norm",
        "wiring",
        "block 3 post-norm: attention reads the raw stream, attn_ln applied after the residual",
        "blocks.3.attn_ln",
        ("wiring",),
        ("post-norm", "post norm", "postnorm", "post-ln", "after the residual"),
    ),
    _enc(
        "first-block-skipped",
        "wiring",
        "for block in blocks[1:]: block 0 never runs (its ops absent), block 1 reads pos_embed",
        "blocks.1.attn_ln",
        ("wiring", "missing_op"),
        ("skip", "pos_embed", "block 0", "blocks.0"),
        absent="blocks.0.",
    ),
    _enc(
        "last-block-repeated",
        "wiring",
        "block 3 run twice (ln_post reads its second run)",
        "ln_post",
        ("wiring",),
        ("twice", "repeat", "again", "run two"),
    ),
    _enc(
        "blocks-reversed",
        "wiring",
        "blocks run in reverse order of their weights: block 0 runs with block 3's",
        "blocks.0.attn_ln",
        ("wrong_weight", "wiring"),
        ("block 3", "blocks.3", "revers"),
    ),
    _enc(
        "mlp-ln-uses-attn-ln-weights",
        "weights",
        "block 2: mlp_ln computed with attn_ln's gamma and beta",
        "blocks.2.mlp_ln",
        ("wrong_weight",),
        ("attn_ln",),
    ),
    # ---- weights / projections -----------------------------------------------------------------------------
    _enc(
        "qkv-split-kqv",
        "weights",
        "block 1: the fused QKV rows split in the order k, q, v (q gets the key's weight, k the query's)",
        "blocks.1.attn.q",
        ("swapped_projections", "wrong_weight"),
        ("key", "swap", "k and q", "q and k", "attn.k"),
    ),
    _enc(
        "qkv-fused-interleaved",
        "weights",
        "block 2: the fused QKV weight read as per-head interleaved [H, 3, D] rows while it is stored as [3, H, D]",
        "blocks.2.attn.q",
        ("weight_layout", "wrong_weight", "head_split"),
        ("interleav", "fused", "per head", "per-head", "qkv"),
    ),
    _enc(
        "out-proj-untransposed",
        "weights",
        "block 0: the [in, out] output projection applied as [out, in] (transposed)",
        "blocks.0.attn.out",
        ("weight_layout",),
        ("transpos",),
    ),
    _enc(
        "attn-unscaled",
        "weights",
        "block 2: attention scores not scaled by 1/sqrt(d_head)",
        "blocks.2.attn.wv",
        ("attention_scale",),
        _UNSCALED,
        op_weights="blocks.2.attn.weights",
    ),
    _enc(
        "ln-post-eps-1e-3",
        "weights",
        "ln_post with epsilon 1e-3 (Keras's default) instead of 1e-5",
        "ln_post",
        ("layer_norm_eps",),
        ("0.001", "1e-3", "1e-03", "1.0e-3", "1.00e-03"),
    ),
    _enc(
        "fc2-bias-missing",
        "weights",
        "block 1: fc2's bias not added",
        "blocks.1.mlp.fc2",
        ("bias_error",),
        ("missing", "dropped", "without", "no bias", "-1", "−1", "omitted", "not added"),
    ),
]

DECODER = [
    # ---- KV cache ----------------------------------------------------------------------------------------
    _dec(
        "kv-shared-across-layers",
        "kv-cache",
        "every layer writes and reads layer 0's self-attention buffer: a "
        "cached step reads the prompt entries of the last layer",
        "decoder.blocks.0.attn.weights",
        2,
        ("kv_cache",),
        ("another layer", "other layer", "block 3", "layer 3", "blocks.3", "shared"),
    ),
    _dec(
        "kv-written-one-behind",
        "kv-cache",
        "one-token steps write their K/V one slot behind (overwriting the previous entry), their own slot stays empty",
        "decoder.blocks.0.attn.weights",
        2,
        ("kv_cache",),
        ("behind", "overwrit", "one slot back", "previous slot"),
    ),
    _dec(
        "kv-ring-buffer-8",
        "kv-cache",
        "a ring buffer of 8 entries: from position 8 on the oldest entry (slot 0, <|startoftranscript|>) is evicted",
        "decoder.blocks.0.attn.weights",
        8,
        ("kv_cache", "attention_mask"),
        ("missing", "slot 0", "evict", "ring", "dropped", "first entry", "oldest", "window", "skipped"),
    ),
    _dec(
        "kv-read-one-past",
        "kv-cache",
        "one-token steps read one slot past the current position (an unwritten, zero entry)",
        "decoder.blocks.0.attn.weights",
        2,
        ("kv_cache",),
        (
            "after the current",
            "past the current",
            "beyond",
            "unwritten",
            "not yet written",
            "extra slot",
            "stale",
            "later slot",
            "one slot too many",
            "zero entry",
            "zeros",
        ),
    ),
    _dec(
        "kv-values-bfloat16",
        "kv-cache",
        "the self-attention V cache stored in bfloat16 (K in float32)",
        "decoder.blocks.0.attn.wv",
        0,
        ("precision", "kv_cache"),
        ("bfloat16",),
    ),
    _dec(
        "cross-kv-from-block0",
        "kv-cache",
        "the cross-attention K/V cache keyed without the layer: every block uses block 0's",
        "decoder.blocks.1.cross_attn.k",
        None,
        ("kv_cache", "wrong_weight"),
        ("block 0", "layer 0", "blocks.0", "first block"),
    ),
    # ---- masks -----------------------------------------------------------------------------------------
    _dec(
        "mask-anti-causal",
        "mask",
        "the causal mask built with tril instead of triu: each position sees itself "
        "and the later ones, not the earlier (full-sequence run)",
        "decoder.blocks.0.attn.weights",
        0,
        ("attention_mask", "causal_mask"),
        ("later", "future", "transpos", "anti", "lower", "tril", "earlier positions", "revers"),
    ),
    _dec(
        "mask-skipped-with-cache",
        "mask",
        "the causal mask applied only without a cache: the incremental prompt step is unmasked",
        "decoder.blocks.0.attn.weights",
        0,
        ("attention_mask", "causal_mask"),
        (
            "no causal mask",
            "unmasked",
            "later",
            "future",
            "no mask",
            "without a mask",
            "mask missing",
            "not masked",
            "without the causal",
        ),
    ),
    _dec(
        "mask-sliding-window-4",
        "mask",
        "a sliding-window mask of 4 positions (copied from a local-attention "
        "model): from position 4 on the oldest keys are hidden",
        "decoder.blocks.0.attn.weights",
        4,
        ("attention_mask", "kv_cache"),
        ("window", "slot 0", "[0]", "4 positions", "older", "local", "missing"),
    ),
    _dec(
        "mask-diagonal-nan",
        "mask",
        "causal mask triu(0) with -inf (hides the diagonal): position 0 has no key left and its softmax is NaN",
        "decoder.blocks.0.attn.weights",
        0,
        ("attention_mask", "causal_mask", "nonfinite"),
        ("diagonal", "own position", "itself", "fully masked", "every key masked", "all keys masked", "no key"),
    ),
    _dec(
        "cross-attn-causal-mask",
        "mask",
        "the decoder's causal mask also applied to cross-attention (query p sees audio frames 0..p)",
        "decoder.blocks.0.cross_attn.weights",
        0,
        ("attention_mask",),
        ("causal", "frames after", "later frames", "triangular"),
    ),
    # ---- tied embedding / logits ---------------------------------------------------------------------------
    _dec(
        "logits-tied-rescaled",
        "logits",
        "T5's tied-embedding rescale: logits multiplied by d_model ** -0.5",
        "decoder.logits",
        0,
        ("scale_mismatch",),
        ("0.051", "0.0510", "19.6", "sqrt(384)", "d_model", "384"),
    ),
    _dec(
        "logits-vocab-rows-shifted",
        "logits",
        "the output projection reads embedding row v + 1 for token v",
        "decoder.logits",
        0,
        ("wrong_weight", "weight_layout"),
        ("row", "shift", "off by one", "off-by-one", "v + 1", "v+1", "next token", "roll"),
    ),
    _dec(
        "logits-log-softmax",
        "logits",
        "the model returns log-probabilities (log_softmax) instead of logits",
        "decoder.logits",
        0,
        ("bias_shift",),
        (
            "log_softmax",
            "log-softmax",
            "log softmax",
            "logsumexp",
            "log-prob",
            "log prob",
            "per position",
            "per-position",
        ),
    ),
    _dec(
        "logits-suppress-non-speech-finfo-min",
        "logits",
        "Whisper's non-speech tokens (84 symbols) set to float32's lowest value at every position inside the model",
        "decoder.logits",
        0,
        ("suppression",),
        ("non-speech", "84 token", "[1, 2, 7", "1, 2, 7", "-3.4e+38", "-3.40e+38", "3.4028", "finfo", "lowest"),
    ),
    _dec(
        "logits-suppress-blank-first-step",
        "logits",
        "SuppressBlank inside the model: ' ' (220) and <|endoftext|> (50256) set to -inf on the prompt's last position",
        "decoder.logits",
        1,
        ("suppression", "nonfinite"),
        ("220", "50256", "blank", "end-of-text", "endoftext", "eot"),
    ),
    # ---- tokens and positions -------------------------------------------------------------------------------
    _dec(
        "tok-embed-one-based",
        "tokens",
        "token ids looked up one-based (row id + 1) in the embedding",
        "decoder.tok_embed",
        0,
        ("wrong_weight", "input_mismatch"),
        ("50258", "another token", "other token", "token + 1", "id + 1", "off by one", "off-by-one", "next row"),
    ),
    _dec(
        "sot-row-startofprev",
        "tokens",
        "the prompt's first row taken from <|startofprev|> (50360) instead of <|startoftranscript|>",
        "decoder.tok_embed",
        0,
        ("wrong_weight", "input_mismatch"),
        ("50360", "startofprev", "another token", "other token"),
    ),
    _dec(
        "pos-offset-minus-one",
        "tokens",
        "a cached step's positional row taken at the cache's last index (position p - 1)",
        "decoder.pos_embed",
        2,
        ("positional",),
        (
            "position 1",
            "row 1",
            "previous position",
            "one position",
            "off by one",
            "off-by-one",
            "p - 1",
            "p-1",
            "another position",
        ),
    ),
    # ---- the decoder's input ---------------------------------------------------------------------------------
    _dec(
        "decoder-fed-penultimate-block",
        "input",
        "the decoder attends to the encoder's block 2 output (hidden_states[-2]) instead of ln_post",
        "ln_post",
        None,
        ("wiring", "input_mismatch", "missing_op", "wrong_weight"),
        ("block 2", "blocks.2", "penultimate", "second-to-last", "earlier block", "hidden_states[-2]"),
    ),
    _dec(
        "encoder-output-bfloat16",
        "input",
        "the encoder output handed to the decoder in bfloat16",
        "ln_post",
        None,
        ("precision",),
        ("bfloat16",),
    ),
    # ---- the encoder's twins inside the decoder ------------------------------------------------------------
    _dec(
        "dec-cross-ln-no-affine",
        "twin",
        "block 2: cross_attn_ln without its gamma and beta",
        "decoder.blocks.2.cross_attn_ln",
        0,
        ("layer_norm_affine",),
        ("affine", "gamma", "beta", "γ", "β", "weight and bias", "scale and shift"),
    ),
    _dec(
        "dec-cross-attn-unscaled",
        "twin",
        "block 1: cross-attention scores not scaled by 1/sqrt(d_head)",
        "decoder.blocks.1.cross_attn.weights",
        0,
        ("attention_scale",),
        _UNSCALED,
    ),
    _dec(
        "dec-residual-after-ln",
        "twin",
        "block 1: the self-attention residual taken from attn_ln's output",
        "decoder.blocks.1.attn_residual",
        0,
        ("wiring",),
        ("attn_ln", "layer norm", "normalised", "normalized", "after the norm", "after ln"),
    ),
    _dec(
        "dec-out-proj-transposed",
        "twin",
        "block 2: the self-attention output projection used transposed",
        "decoder.blocks.2.attn.out",
        0,
        ("weight_layout",),
        ("transpos",),
    ),
    _dec(
        "dec-cross-head-zeroed",
        "twin",
        "block 3: cross-attention head 4 zeroed in the merge",
        "decoder.blocks.3.cross_attn.wv",
        0,
        ("head_missing",),
        ("head 4",),
    ),
    _dec(
        "dec-qk-swapped",
        "twin",
        "block 1: the fused QKV split k, q, v (q and k exchanged)",
        "decoder.blocks.1.attn.q",
        0,
        ("swapped_projections", "wrong_weight"),
        ("key", "swap", "q and k", "k and q", "attn.k"),
    ),
    _dec(
        "dec-attn-prob-dropout",
        "twin",
        "block 2: dropout p = 0.1 on the self-attention probabilities",
        "decoder.blocks.2.attn.weights",
        0,
        ("stochastic",),
        ("dropout", "0.1", "train"),
    ),
    _dec(
        "dec-blocks-swapped",
        "twin",
        "blocks 2 and 3 exchanged at load",
        "decoder.blocks.2.attn_ln",
        0,
        ("wrong_weight",),
        ("block 3", "blocks.3", "layer 3", "swap"),
    ),
    _dec(
        "dec-fc1-float16",
        "twin",
        "block 3: fc1 computed in float16",
        "decoder.blocks.3.mlp.fc1",
        0,
        ("precision",),
        ("float16", "half", "fp16"),
        ("bfloat16",),
    ),
]

ALL = ENCODER + DECODER
BY_NAME = {b.name: b for b in ALL}
assert len(BY_NAME) == len(ALL), "duplicate bug names"
