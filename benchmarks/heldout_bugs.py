"""The held-out bug set: porting bugs planted in a third-party port (benchmarks/heldout_ports.py,
Hugging Face transformers' Whisper), written without reading whisperdiff's analysis code.

Each bug: its name (the port's switch), what it does, where it must first show (encoder: the op;
decoder: the op and token position), the finding kinds that name it (docs/compare.md's vocabulary),
the wording a precise message contains (any one of `words`), and `wrong_words`: phrases that name
another mechanism. A specific finding (right kind, right op) with a wrong phrase is "worded wrong"
(not precise); a finding that is not specific, with a wrong phrase and none of `words`, misleads.

Expected ops follow the canonical op order (`whisperdiff ops`, `whisperdiff ops --decoder`): the
first op whose recorded value differs beyond the float32 bar (rel L2 1e-4 / cosine 0.99999); for the
decoder, the first position where that op differs. Encoder bugs inside attention are given at
`attn.weights`; a trace without the probabilities (the default taps) shows them at `attn.wv`
(`expected_op(bug, weights=False)`). A decoder op without a token axis (`ln_post`,
`cross_attn.k/v`) has position None: any position is accepted there.

Kinds: `kinds` may name a kind that docs/compare.md does not document yet (e.g. `kv_cache`); the
scorer only counts documented kinds (read from docs/compare.md when it runs). A kind documented
after this set was written (not in VOCABULARY_AT_WRITING) counts for a bug when its message also
contains one of the bug's `words`: the set does not guess the names of future kinds.
"""

from __future__ import annotations

from dataclasses import dataclass

VOCABULARY_AT_WRITING = frozenset(
    "input_mismatch weights_mismatch weight_layout wrong_weight swapped_projections bias_error "
    "activation_approx wrong_activation layer_norm_eps layer_norm_variance layer_norm_affine rms_norm "
    "norm_axis softmax_axis attention_mask attention_scale head_split conv_padding conv_stride "
    "conv_kernel positional precision missing_op missing_residual scale_mismatch bias_shift sign_flip "
    "nonfinite shape_mismatch layout divergence".split()
)
GENERIC = frozenset({"divergence"})


@dataclass(frozen=True)
class Bug:
    name: str
    klass: str
    description: str
    op: str
    kinds: tuple[str, ...]
    words: tuple[str, ...]
    position: int | None = None  # decoder bugs: token position (None: op has no token axis)
    wrong_words: tuple[str, ...] = ()
    part: str = "encoder"


def _e(name, klass, description, op, kinds, words, wrong_words=()):
    return Bug(name, klass, description, op, tuple(kinds), tuple(words), None, tuple(wrong_words), "encoder")


def _d(name, klass, description, op, position, kinds, words, wrong_words=()):
    return Bug(name, klass, description, op, tuple(kinds), tuple(words), position, tuple(wrong_words), "decoder")


STOCHASTIC_WORDS = ("dropout", "stochastic", "not deterministic", "nondeterministic", "random")

ENCODER_BUGS: tuple[Bug, ...] = (
    # --- the frontend (our own log-mel; op `mel`) ---
    _e(
        "mel-hann-symmetric",
        "frontend",
        "symmetric Hann window (n - 1 in the denominator) instead of the periodic one",
        "mel",
        ["input_mismatch"],
        ["symmetric"],
        ["missing"],
    ),
    _e(
        "mel-hamming",
        "frontend",
        "periodic Hamming window instead of Hann",
        "mel",
        ["input_mismatch"],
        ["Hamming", "hamming"],
    ),
    _e(
        "mel-nfft-512",
        "frontend",
        "n_fft 512 (window 512, filterbank for 257 bins) instead of 400",
        "mel",
        ["input_mismatch"],
        ["n_fft", "512"],
    ),
    _e(
        "mel-hop-170",
        "frontend",
        "hop length 170 instead of 160 (the frames then trimmed to 3000)",
        "mel",
        ["input_mismatch"],
        ["hop"],
    ),
    _e(
        "mel-floor-per-frame",
        "frontend",
        "clamp floor max - 8 taken per frame instead of over the whole spectrogram",
        "mel",
        ["input_mismatch"],
        ["per frame", "per-frame", "each frame", "floor"],
        ["clamp at max - 8 is missing", "no clamp"],
    ),
    _e(
        "mel-floor-10",
        "frontend",
        "clamp floor at max - 10 instead of max - 8",
        "mel",
        ["input_mismatch"],
        ["max - 10", "floor"],
        ["clamp at max - 8 is missing", "no clamp"],
    ),
    _e(
        "mel-pad-zero-frames",
        "frontend",
        "the audio is not padded with zeros; the log-mel is padded with 0.0 frames instead",
        "mel",
        ["input_mismatch"],
        ["padding", "padded", "pad value", "0.0"],
    ),
    _e(
        "mel-resampled-8k",
        "frontend",
        "audio band-limited through 8 kHz resampling (nothing above 4 kHz)",
        "mel",
        ["input_mismatch"],
        ["resampl", "8 kHz", "4 kHz", "8000", "band"],
    ),
    _e(
        "mel-magnitude",
        "frontend",
        "magnitude |X| instead of power |X|^2 before the filterbank",
        "mel",
        ["input_mismatch"],
        ["magnitude", "power"],
    ),
    # --- conv stride / dilation / truncation ---
    _e(
        "conv2-stride1-truncate",
        "conv",
        "conv2 run with stride 1, the output truncated to its first 1500 frames",
        "conv2",
        ["conv_stride"],
        ["stride", "truncat"],
    ),
    _e(
        "conv2-stride1-keep-last",
        "conv",
        "conv2 run with stride 1, the output truncated to its last 1500 frames",
        "conv2",
        ["conv_stride"],
        ["stride", "truncat"],
    ),
    _e(
        "conv1-dilation2",
        "conv",
        "conv1 with dilation 2 (padding 2 keeps the length)",
        "conv1",
        ["conv_kernel", "conv_stride"],
        ["dilation"],
    ),
    _e(
        "conv2-dilation2",
        "conv",
        "conv2 with dilation 2 (stride 2, padding 2)",
        "conv2",
        ["conv_kernel", "conv_stride"],
        ["dilation"],
    ),
    # --- stochastic ops left on ---
    _e(
        "dropout-after-pos-embed",
        "stochastic",
        "the encoder module left in train mode: dropout 0.1 after the positional add",
        "pos_embed",
        [],
        STOCHASTIC_WORDS,
        ["not added", "shifted", "recomputed"],
    ),
    _e(
        "attn-prob-dropout",
        "stochastic",
        "block 1's attention in train mode: dropout 0.1 on the probabilities",
        "blocks.1.attn.weights",
        [],
        STOCHASTIC_WORDS,
    ),
    _e(
        "mlp-noise",
        "stochastic",
        "Gaussian noise (0.02 x std) added to block 1's fc2 output",
        "blocks.1.mlp.fc2",
        [],
        ("noise", *STOCHASTIC_WORDS),
    ),
    _e(
        "residual-dropout",
        "stochastic",
        "block 2 in train mode: dropout 0.1 on both residual branches",
        "blocks.2.attn_residual",
        [],
        STOCHASTIC_WORDS,
        ["residual dropped", "dropped"],
    ),
    # --- precision of one sub-op ---
    _e(
        "softmax-float16",
        "precision",
        "block 1: softmax computed in float16 inside a float32 attention",
        "blocks.1.attn.weights",
        ["precision"],
        ["softmax"],
    ),
    _e(
        "fc2-float16-accumulate",
        "precision",
        "block 2's fc2 accumulated in float16 (running sum rounded every 64 inputs)",
        "blocks.2.mlp.fc2",
        ["precision"],
        ["accumul"],
    ),
    _e(
        "ln-stats-float16",
        "precision",
        "block 2's mlp_ln: mean and variance computed in float16, the rest in float32",
        "blocks.2.mlp_ln",
        ["precision"],
        ["statistic", "mean and variance"],
    ),
    _e(
        "pv-bfloat16",
        "precision",
        "block 3: probabilities @ v in bfloat16",
        "blocks.3.attn.wv",
        ["precision"],
        ["bfloat16"],
        ["float16 ", "tf32"],
    ),
    # --- head-level structure ---
    _e("head-zeroed", "heads", "block 1: head 3's output zeroed", "blocks.1.attn.wv", [], ["head 3", "zero"]),
    _e(
        "head-duplicated",
        "heads",
        "block 2: head 0's output copied into the last head's slot",
        "blocks.2.attn.wv",
        [],
        ["duplicat", "copied", "copy"],
    ),
    _e(
        "heads-permuted",
        "heads",
        "block 0: heads 0 and 1 exchanged when the heads are merged",
        "blocks.0.attn.wv",
        ["head_split"],
        ["permut", "exchanged", "swapped", "heads 0 and 1"],
    ),
    # --- block wiring ---
    _e(
        "post-norm-block",
        "wiring",
        "block 1 switched to post-norm: LN(x + attn(x)), LN(x + mlp(x))",
        "blocks.1.attn_ln",
        [],
        ["post-norm", "post norm", "postnorm"],
    ),
    _e(
        "residual-after-ln",
        "wiring",
        "block 0: the attention residual added to the layer norm's output, not its input",
        "blocks.0.attn_residual",
        [],
        ["after the layer norm", "normalised", "normalized", "attn_ln"],
        ["dropped"],
    ),
    _e(
        "mlp-residual-from-input",
        "wiring",
        "block 3: the MLP residual added to the block's input instead of attn_residual",
        "blocks.3.out",
        [],
        ["block's input", "block input", "pos_embed", "blocks.2.out", "instead of attn_residual"],
        ["dropped"],
    ),
    _e(
        "block-weights-from-previous",
        "wiring",
        "block 2 loaded with block 1's weights",
        "blocks.2.attn_ln",
        ["wrong_weight"],
        ["blocks.1"],
    ),
    _e(
        "blocks-swapped",
        "wiring",
        "the weights of blocks 1 and 2 swapped",
        "blocks.1.attn_ln",
        ["wrong_weight", "swapped_projections"],
        ["blocks.2"],
    ),
    _e(
        "block-run-twice",
        "wiring",
        "an off-by-one layer list: block 1 run twice, block 2 receives its second output",
        "blocks.2.attn_ln",
        [],
        ["twice", "run again", "repeated"],
    ),
    # block 2's ops are absent from B: compare pairs ops by name and counts an absent op as missing, not as
    # diverged, so the first op whose value differs is block 3's first (its input is blocks.1.out)
    _e(
        "block-skipped",
        "wiring",
        "block 2 never run (its ops absent), block 3 receives blocks.1.out",
        "blocks.3.attn_ln",
        ["missing_op"],
        ["blocks.2", "skipped"],
    ),
    # --- wrong bias, weight layouts, attention scale ---
    _e(
        "k-gets-q-bias",
        "bias",
        "block 0: the key projection (no bias) received the query's bias",
        "blocks.0.attn.k",
        ["bias_error", "wrong_weight"],
        ["attn.q's bias", "query's bias", "received"],
        ["added twice", "doubled"],
    ),
    _e(
        "v-gets-out-bias",
        "bias",
        "block 2: the value projection uses the out projection's bias instead of its own",
        "blocks.2.attn.v",
        ["bias_error", "wrong_weight"],
        ["attn.out's bias", "out's bias", "attn.out.bias"],
        ["added twice", "doubled"],
    ),
    _e(
        "fc1-reshaped",
        "layout",
        "block 1's fc1 weight [1536, 384] reshaped to [384, 1536] instead of transposed",
        "blocks.1.mlp.fc1",
        ["weight_layout"],
        ["reshape"],
        ["x @ W instead of x @ W.T"],
    ),
    _e(
        "fc2-reshaped",
        "layout",
        "block 3's fc2 weight [384, 1536] reshaped to [1536, 384] instead of transposed",
        "blocks.3.mlp.fc2",
        ["weight_layout"],
        ["reshape"],
        ["x @ W instead of x @ W.T"],
    ),
    _e(
        "v-weight-transposed",
        "layout",
        "block 2's value weight (square) used transposed",
        "blocks.2.attn.v",
        ["weight_layout"],
        ["transpose"],
    ),
    _e(
        "attn-scale-d-model",
        "scale",
        "block 0: scores scaled by 1/sqrt(d_model) instead of 1/sqrt(d_head)",
        "blocks.0.attn.weights",
        ["attention_scale"],
        ["1/sqrt(d_model)", "d_model"],
        ["d_head^-0.7"],
    ),
    _e(
        "attn-scale-q-only",
        "scale",
        "block 3: d_head^-0.25 applied to q only (Whisper splits d_head^-0.5 over q and k)",
        "blocks.3.attn.weights",
        ["attention_scale"],
        ["d_head^-0.25", "0.354", "0.35"],
    ),
)

DECODER_BUGS: tuple[Bug, ...] = (
    # --- the KV cache (incremental mode; every layer) ---
    _d(
        "kv-entry-missing",
        "kv-cache",
        "the prompt's last entry is never stored in the cache (the prompt step itself is right)",
        "decoder.blocks.0.attn.weights",
        2,
        ["kv_cache"],
        ["missing", "dropped entry", "lost"],
        ["one short", "off by one"],
    ),
    _d(
        "kv-entry-overwritten",
        "kv-cache",
        "writing position p also overwrites slot p - 1 (a slice one too wide)",
        "decoder.blocks.0.attn.weights",
        2,
        ["kv_cache"],
        ["overwrit"],
        ["one short", "off by one"],
    ),
    _d(
        "kv-stale-after-reset",
        "kv-cache",
        "a static cache whose reset() rewound the write position but not the valid "
        "length: one-token steps (unmasked) also read the previous utterance's later entries",
        "decoder.blocks.0.attn.weights",
        2,
        ["kv_cache"],
        ["stale", "previous"],
        ["no causal mask", "one short"],
    ),
    _d(
        "kv-written-one-ahead",
        "kv-cache",
        "incremental steps write their entry at slot p + 1 and read slots 0..p",
        "decoder.blocks.0.attn.weights",
        2,
        ["kv_cache"],
        ["wrong position", "written at", "one ahead", "slot"],
    ),
    _d(
        "kv-cache-float16",
        "kv-cache",
        "the self-attention KV cache stored in float16 (the probabilities move by less "
        "than the bar; the values show first)",
        "decoder.blocks.0.attn.wv",
        0,
        ["precision"],
        ["cache"],
    ),
    _d(
        "cross-kv-cache-float16",
        "kv-cache",
        "the cross-attention KV cache stored in float16",
        "decoder.blocks.0.cross_attn.weights",
        0,
        ["precision"],
        ["cache"],
    ),
    # --- masks (full-sequence runs) ---
    _d(
        "mask-off-by-one",
        "mask",
        "causal mask off by one: position p sees key p + 1 (full-sequence run)",
        "decoder.blocks.0.attn.weights",
        0,
        ["attention_mask", "causal_mask"],
        ["off by one", "p + 1", "one later", "+1"],
        ["no causal mask"],
    ),
    _d(
        "mask-off-by-two",
        "mask",
        "causal mask off by two: position p sees keys up to p + 2 (full-sequence run)",
        "decoder.blocks.0.attn.weights",
        0,
        ["attention_mask", "causal_mask"],
        ["off by two", "p + 2", "two later", "+2", "by 2"],
        ["no causal mask"],
    ),
    _d(
        "no-causal-mask",
        "mask",
        "no causal mask (full-sequence run)",
        "decoder.blocks.0.attn.weights",
        0,
        ["attention_mask", "causal_mask"],
        ["no causal mask", "without a causal mask", "causal mask missing"],
    ),
    _d(
        "mask-hides-diagonal",
        "mask",
        "the causal mask also hides the current position (full-sequence run)",
        "decoder.blocks.0.attn.weights",
        1,
        ["attention_mask", "causal_mask"],
        ["diagonal", "own position", "itself", "current position"],
        ["KV cache"],
    ),
    _d(
        "cross-padding-mask",
        "mask",
        "cross-attention masks the encoder frames after the audio's end",
        "decoder.blocks.0.cross_attn.weights",
        0,
        ["attention_mask"],
        ["padding", "after the audio"],
    ),
    # --- the tied output projection ---
    _d(
        "logits-embedding-reshaped",
        "tied",
        "logits = x @ W.reshape(C, V) instead of x @ W.T (W the token embedding)",
        "decoder.logits",
        0,
        ["weight_layout"],
        ["reshape"],
        ["x @ W instead of x @ W.T"],
    ),
    _d(
        "logits-embedding-memory-transposed",
        "tied",
        "the output projection reads W.T's memory as [V, C]",
        "decoder.logits",
        0,
        ["weight_layout"],
        ["transpose"],
    ),
    _d(
        "logits-untied",
        "tied",
        "the output projection never tied: HF's random initialisation",
        "decoder.logits",
        0,
        ["wrong_weight"],
        ["untied", "token embedding", "token_embedding", "tied"],
    ),
    # --- token rows (an input difference) ---
    _d(
        "wrong-sot-row",
        "tokens",
        "the start-of-transcript position embeds token 50258's row",
        "decoder.tok_embed",
        0,
        ["input_mismatch"],
        ["50258"],
    ),
    _d(
        "wrong-notimestamps-row",
        "tokens",
        "the no-timestamps position embeds token 50363's row",
        "decoder.tok_embed",
        1,
        ["input_mismatch"],
        ["50363"],
    ),
    _d(
        "encoder-output-before-ln-post",
        "input",
        "the decoder attends to the encoder output before ln_post (blocks.3.out)",
        "ln_post",
        None,
        ["input_mismatch", "missing_op"],
        ["ln_post", "blocks.3.out"],
    ),
    # --- logits ---
    _d(
        "logits-minus-inf-suppression",
        "logits",
        "timestamp tokens set to -inf inside the model",
        "decoder.logits",
        0,
        ["nonfinite"],
        ["inf"],
    ),
    _d(
        "logits-finite-suppression",
        "logits",
        "the end-of-text logit set to -1e4 inside the model",
        "decoder.logits",
        0,
        [],
        ["suppress", "50256", "-1e4", "-10000"],
    ),
    _d(
        "logits-before-final-ln",
        "logits",
        "logits computed from the last block's output, before decoder.ln",
        "decoder.logits",
        0,
        ["missing_op"],
        ["decoder.ln", "final layer norm", "before the layer norm", "blocks.3.out"],
    ),
    # --- encoder twins in the decoder ---
    _d(
        "dec-ln-eps",
        "twin",
        "decoder block 0's attn_ln with epsilon 1e-3",
        "decoder.blocks.0.attn_ln",
        0,
        ["layer_norm_eps"],
        ["1e-03", "0.001", "1.0e-03", "1e-3"],
    ),
    _d(
        "dec-attn-scale-d-model",
        "twin",
        "decoder block 2's self-attention scaled by 1/sqrt(d_model)",
        "decoder.blocks.2.attn.weights",
        1,
        ["attention_scale"],
        ["1/sqrt(d_model)", "d_model"],
    ),
    _d(
        "dec-cross-residual-dropped",
        "twin",
        "decoder block 0's cross-attention residual dropped",
        "decoder.blocks.0.cross_attn_residual",
        0,
        ["missing_residual"],
        ["residual"],
    ),
    _d(
        "dec-cross-head-split",
        "twin",
        "decoder block 1's cross-attention heads split as [T, d_head, n_head]",
        "decoder.blocks.1.cross_attn.weights",
        0,
        ["head_split"],
        ["head"],
    ),
    _d(
        "dec-fc1-reshaped",
        "twin",
        "decoder block 2's fc1 weight reshaped instead of transposed",
        "decoder.blocks.2.mlp.fc1",
        0,
        ["weight_layout"],
        ["reshape"],
        ["x @ W instead of x @ W.T"],
    ),
    _d(
        "dec-dropout-on",
        "stochastic",
        "the decoder module left in train mode: dropout 0.1 after the embeddings",
        "decoder.pos_embed",
        0,
        [],
        STOCHASTIC_WORDS,
        ["positional row"],
    ),
)

ALL = ENCODER_BUGS + DECODER_BUGS
BY_NAME = {b.name: b for b in ALL}


def expected_op(bug: Bug, weights: bool = True) -> str:
    """The expected first op; attention bugs given at attn.weights show at attn.wv without the probabilities."""
    if not weights and bug.part == "encoder" and bug.op.endswith(".attn.weights"):
        return bug.op[: -len("weights")] + "wv"
    return bug.op
