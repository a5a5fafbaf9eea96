"""openai-whisper's AudioEncoder in MAX Graph, op for op, with every canonical op as a tap.

Read it side by side with whisper/model.py: the same classes (Linear, Conv1d, LayerNorm,
MultiHeadAttention, ResidualAttentionBlock, AudioEncoder) and the same forward order.

Four design rules:
- Weights are `max.graph.Weight`s named exactly as openai-whisper's state dict and fed at load time
  through `weights_registry`, so the compiled graph depends only on (dims, dtype, device, taps):
  a second checkpoint of the same size reuses the compiled graph.
- The clean graph is the encoder at MAX's best: attention is written as MAX's fused-attention
  pattern `softmax(scores * scale) @ v` and no fault machinery sits in its path.
- Porting bugs are switched at run time by small control inputs (see `Controls`) of one second
  graph, the debug graph (`build_graph(debug=True)`), which also takes the activation-patching
  inputs: every injectable bug and every patch point share that one compiled graph. Its clean path
  is the clean graph's ops; each bug is mixed in as `normal + flag * (buggy - normal)`, exactly
  `normal` when the flag is 0: with every switch off the two graphs agree bit for bit on every tap
  (tests/test_max_encoder.py checks).
- A trace too large to hold at once, and bisection, run the same classes as three graphs (`build_pieces`):
  the stem, one block run once per block with that block's weights as inputs, and ln_post.

What the fault machinery cost the clean encoder (issue 17; tiny.en, default taps, CPU, interleaved
rounds): computing every bug and mixing it away, about 1.10-1.14x; q and k each scaled by
d_head^-0.25 instead of `scores * scale`, about 1.04-1.05x per attention call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from max.dtype import DType
from max.graph import DeviceRef, Graph, TensorType, TensorValue, Weight, ops
from max.graph.type import FilterLayout

from whisperdiff.names import block_op, split_block_op

LN_EPS = 1e-5  # openai-whisper's (torch's) LayerNorm epsilon


@dataclass
class Controls:
    """Run-time switches fed as inputs of the debug graph; the defaults compute the correct encoder."""

    n_layer: int
    n_state: int
    n_head: int
    pos_scale: float = 1.0  # 0: positional embedding not added
    conv1_taps: tuple[float, float, float] = (1.0, 1.0, 1.0)  # (0, 1, 0): only the centre tap
    qk_scale: float | None = None  # per side: d_head^-0.25 (so scores get d_head^-0.5)
    ln_eps: float = LN_EPS
    gelu_tanh: float = 0.0  # 1: tanh-approximate GELU in the MLP
    ln_post_skip: float = 0.0  # 1: ln_post skipped
    ln_post_rescale: float = 0.0  # 1: ln_post replaced by one whole-tensor standardisation
    kv_swap: list[float] = field(default_factory=list)  # per block: key and value projections swapped
    mlp_residual: list[float] = field(default_factory=list)  # per block: 0 drops the MLP residual
    half_block: list[float] = field(default_factory=list)  # per block: activations rounded to float16

    def __post_init__(self):
        n = self.n_layer
        self.kv_swap = self.kv_swap or [0.0] * n
        self.mlp_residual = self.mlp_residual or [1.0] * n
        self.half_block = self.half_block or [0.0] * n
        if self.qk_scale is None:
            self.qk_scale = (self.n_state // self.n_head) ** -0.25

    def q_scale(self) -> float:
        """What q is multiplied by ahead of the fused attention (whose scores get d_head^-0.5): exactly 1
        for the correct scale, so that the clean path is untouched."""
        ratio = self.qk_scale**2 * (self.n_state // self.n_head) ** 0.5
        return 1.0 if abs(ratio - 1.0) < 1e-9 else ratio

    def arrays(self) -> list[np.ndarray]:
        """Graph inputs after the mel, in the order `control_types` declares them."""
        f = np.float32
        return [
            np.array(self.pos_scale, f),
            np.array(self.conv1_taps, f).reshape(1, 3, 1, 1),
            np.array(self.q_scale(), f),
            np.array(self.ln_eps, f),
            np.array(0.0 if self.ln_eps == LN_EPS else 1.0, f),
            np.array(self.gelu_tanh, f),
            np.array(self.ln_post_skip, f),
            np.array(self.ln_post_rescale, f),
            np.array(self.kv_swap, f),
            np.array(self.mlp_residual, f),
            np.array(self.half_block, f),
        ]

    def is_clean(self) -> bool:
        """True when these controls compute the correct encoder (the clean graph can run them)."""
        d = Controls(self.n_layer, self.n_state, self.n_head)
        return all(np.array_equal(a, b) for a, b in zip(self.arrays(), d.arrays(), strict=True))


CONTROL_NAMES = (
    "pos_scale",
    "conv1_taps",
    "q_scale",
    "ln_eps_bug",
    "ln_eps_on",
    "gelu_tanh",
    "ln_post_skip",
    "ln_post_rescale",
    "kv_swap",
    "mlp_residual",
    "half_block",
)


PER_BLOCK_CONTROLS = ("kv_swap", "mlp_residual", "half_block")  # one value per block (a streamed block takes its own)


def control_types(n_layer: int, device: DeviceRef) -> list[TensorType]:
    shapes = {"conv1_taps": [1, 3, 1, 1], **{name: [n_layer] for name in PER_BLOCK_CONTROLS}}
    return [TensorType(DType.float32, shapes.get(name, []), device=device) for name in CONTROL_NAMES]


class Context:
    """What every module needs while the graph is built: dtype, device, the tap sink and, in the debug
    graph only, the run-time controls (`self.debug`)."""

    def __init__(
        self,
        dtype: DType,
        device: DeviceRef,
        taps: set[str],
        controls: list[TensorValue] | None = None,
        patch: tuple[list[str], TensorValue, list[TensorValue]] | None = None,
        weight_inputs: dict[str, TensorValue] | None = None,
    ):
        self.dtype, self.device, self.taps = dtype, device, taps
        # a streamed block graph (build_pieces) takes its weights as graph inputs, by name, not as Weights
        self.weight_inputs, self.weight_types = weight_inputs, {}
        self.ln_eps = ops.constant(LN_EPS, DType.float32, device)
        self.debug = controls is not None
        self.outputs: list[tuple[str, TensorValue]] = []
        self.patch_index, self.patch_flags, self.overrides = {}, None, {}
        if controls is not None:  # float32 as fed (the LayerNorm and attention switches act in float32)
            self.raw = dict(zip(CONTROL_NAMES, controls, strict=True))
            for name, value in self.raw.items():
                setattr(self, name, self.compute(value))
            self.ln_eps_bug, self.ln_eps_on = self.raw["ln_eps_bug"], self.raw["ln_eps_on"]
        if patch is not None:  # activation patching: see build_graph
            points, flags, overrides = patch
            self.patch_index = {name: i for i, name in enumerate(points)}
            self.patch_flags = self.compute(flags)
            self.overrides = {tuple(int(d) for d in o.shape[1:]): o for o in overrides}

    def tap(self, name: str, x: TensorValue) -> TensorValue:
        """Every canonical op passes through here: patched (if asked at run time), then recorded."""
        x = self.patch(name, x)
        if name in self.taps:  # traces hold float32 (exact for float16/bfloat16 values)
            self.outputs.append((name, self.float32(x)))
        return x

    def patch(self, name: str, x: TensorValue) -> TensorValue:
        """x, or the override of its shape where the run-time flag of this patch point is 1."""
        if name not in self.patch_index:
            return x
        override = self.compute(self.overrides[tuple(int(d) for d in x.shape[1:])])
        return mix(self.patch_flags[self.patch_index[name]], x, override)

    def bug(self, flag: str | TensorValue, normal: TensorValue, buggy) -> TensorValue:
        """normal in the clean graph; in the debug graph, buggy() where the run-time flag is 1."""
        if not self.debug:
            return normal
        return mix(getattr(self, flag) if isinstance(flag, str) else flag, normal, buggy())

    def weight(self, name: str, shape: list[int], dtype: DType | None = None) -> TensorValue:
        self.weight_types[name] = TensorType(dtype or self.dtype, shape, device=self.device)
        if self.weight_inputs is not None:
            return self.weight_inputs[name]
        return Weight(name, dtype or self.dtype, shape, self.device)

    def float32(self, x: TensorValue) -> TensorValue:
        return x if x.dtype == DType.float32 else ops.cast(x, DType.float32)

    def compute(self, x: TensorValue) -> TensorValue:
        return x if x.dtype == self.dtype else ops.cast(x, self.dtype)


def mix(flag: TensorValue, normal: TensorValue, buggy: TensorValue) -> TensorValue:
    """normal where flag is 0 (exactly), buggy where it is 1: how a run-time control selects a porting bug."""
    return normal + flag * (buggy - normal)


class LayerNorm:
    """Computed in float32 whatever the model dtype, as openai-whisper's LayerNorm (`x.float()`) does."""

    def __init__(self, cx: Context, name: str, n_state: int):
        self.cx, self.weight, self.bias = (
            cx,
            cx.weight(f"{name}.weight", [n_state], DType.float32),
            cx.weight(f"{name}.bias", [n_state], DType.float32),
        )

    def normalise(self, x: TensorValue, eps: TensorValue) -> TensorValue:
        mean = ops.mean(x, axis=-1)
        centred = x - mean
        var = ops.mean(centred * centred, axis=-1)
        return centred * ops.rsqrt(var + eps) * self.weight + self.bias

    def __call__(self, x: TensorValue) -> TensorValue:
        cx = self.cx
        x = cx.float32(x)
        y = self.normalise(x, cx.ln_eps)
        if getattr(cx, "ln_eps_on", None) is not None:  # the ln-eps bug: epsilon a run-time input (debug graph)
            y = mix(cx.ln_eps_on, y, self.normalise(x, cx.ln_eps_bug))
        return cx.compute(y)


class Linear:
    def __init__(self, cx: Context, name: str, n_in: int, n_out: int, bias: bool = True):
        self.cx = cx
        self.weight = cx.weight(f"{name}.weight", [n_out, n_in])
        self.bias = cx.weight(f"{name}.bias", [n_out]) if bias else None

    def __call__(self, x: TensorValue) -> TensorValue:
        cx = self.cx  # float32 accumulation whatever the storage dtype, as torch's CPU kernels and tensor cores
        y = cx.float32(x) @ ops.transpose(cx.float32(self.weight), 0, 1)
        return cx.compute(y + cx.float32(self.bias) if self.bias is not None else y)


class Conv1d:
    """torch's Conv1d on [B, T, C] activations, as a 2-D convolution over NHWC with H = 1.

    The filter is RSCF, [1, k, in, out] (MAX 26.7's CPU kernels reject torch's FCRS layout), transposed
    from torch's [out, in, k] when the weights are fed; `taps` masks kernel taps."""

    def __init__(self, cx: Context, name: str, n_in: int, n_out: int, stride: int = 1):
        self.weight = cx.weight(f"{name}.weight", [1, 3, n_in, n_out])
        self.bias = cx.weight(f"{name}.bias", [n_out])
        self.cx, self.stride = cx, stride

    def __call__(self, x: TensorValue, taps: TensorValue | None = None) -> TensorValue:
        cx = self.cx
        b, t, c = x.shape
        weight = self.weight * taps if taps is not None else self.weight
        y = ops.conv2d(
            cx.float32(ops.reshape(x, [b, 1, t, c])),
            cx.float32(weight),
            stride=(1, self.stride),
            padding=(0, 0, 1, 1),
            bias=cx.float32(self.bias),
            filter_layout=FilterLayout.RSCF,
        )
        return cx.compute(ops.reshape(y, [y.shape[0], y.shape[2], y.shape[3]]))


class MultiHeadAttention:
    def __init__(self, cx: Context, name: str, n_state: int, n_head: int):
        self.cx, self.name, self.n_head = cx, name, n_head
        self.scale = (n_state // n_head) ** -0.5
        self.query = Linear(cx, f"{name}.query", n_state, n_state)
        self.key = Linear(cx, f"{name}.key", n_state, n_state, bias=False)
        self.value = Linear(cx, f"{name}.value", n_state, n_state)
        self.out = Linear(cx, f"{name}.out", n_state, n_state)

    def __call__(self, x: TensorValue, i: int, half) -> TensorValue:
        cx = self.cx
        q = cx.tap(block_op(i, "attn.q"), half(self.query(x)))
        k, v = self.key(x), self.value(x)
        if cx.debug:  # the kv-swap bug
            swap = cx.kv_swap[i]
            k, v = mix(swap, k, v), mix(swap, v, k)
        k = cx.tap(block_op(i, "attn.k"), half(k))
        v = cx.tap(block_op(i, "attn.v"), half(v))
        wv = cx.tap(block_op(i, "attn.wv"), half(self.qkv_attention(q, k, v, i)))
        return cx.tap(block_op(i, "attn.out"), half(self.out(wv)))

    def qkv_attention(self, q: TensorValue, k: TensorValue, v: TensorValue, i: int) -> TensorValue:
        cx = self.cx
        b, t, c = q.shape
        h = self.n_head
        f32 = cx.float32  # scores, softmax and sums in float32, as whisper's attention in half precision
        q = f32(ops.reshape(q, [b, t, h, c // h]).transpose(1, 2))
        k = f32(ops.reshape(k, [b, t, h, c // h]).transpose(1, 2))
        v = f32(ops.reshape(v, [b, t, h, c // h]).transpose(1, 2))
        if cx.debug:  # the attn-scale bug; q * 1.0 (exact) on the clean path
            q = q * cx.raw["q_scale"]
        # MAX's fused-attention pattern: exactly `softmax(scores * scale) @ v` (operands in this order).
        w = ops.softmax((q @ ops.transpose(k, 2, 3)) * self.scale)
        cx.tap(block_op(i, "attn.weights"), cx.compute(w))  # never a patch point (see PATCH_EXCLUDED)
        return cx.compute(ops.reshape((w @ v).transpose(1, 2), [b, t, c]))

    def attend(self, q: TensorValue, k: TensorValue, v: TensorValue, mask: TensorValue | None):
        """openai-whisper's own qkv_attention, for queries and keys of any lengths (the decoder's self-attention
        over its KV cache, its cross-attention over the encoder output): softmax((q s)(k s)^T + mask) v,
        s = d_head^-0.25, heads split as whisper does. Returns (wv [B, n, C], probabilities [B, H, n, m])."""
        b, n, c = q.shape
        m, h = k.shape[1], self.n_head
        scale = (int(c) // h) ** -0.25
        qh = ops.permute(ops.reshape(q, [b, n, h, int(c) // h]), [0, 2, 1, 3])
        kh = ops.permute(ops.reshape(k, [b, m, h, int(c) // h]), [0, 2, 3, 1])
        vh = ops.permute(ops.reshape(v, [b, m, h, int(c) // h]), [0, 2, 1, 3])
        scores = (qh * scale) @ (kh * scale)
        w = ops.softmax(scores + mask if mask is not None else scores)
        return ops.reshape(ops.permute(w @ vh, [0, 2, 1, 3]), [b, n, c]), w


class MLP:
    """openai-whisper's block MLP: Linear(C, 4C), GELU, Linear(4C, C); `tap(op, value)` sees (and may
    round) each step's value: mlp.fc1, mlp.gelu, mlp.fc2."""

    def __init__(self, cx: Context, name: str, n_state: int):
        self.fc1 = Linear(cx, f"{name}.0", n_state, 4 * n_state)
        self.fc2 = Linear(cx, f"{name}.2", 4 * n_state, n_state)

    def __call__(self, x: TensorValue, tap, gelu=ops.gelu) -> TensorValue:
        h = tap("mlp.fc1", self.fc1(x))
        h = tap("mlp.gelu", gelu(h))
        return tap("mlp.fc2", self.fc2(h))


class ResidualAttentionBlock:
    def __init__(self, cx: Context, i: int, n_state: int, n_head: int):
        name = f"encoder.blocks.{i}"
        self.cx, self.i = cx, i
        self.attn = MultiHeadAttention(cx, f"{name}.attn", n_state, n_head)
        self.attn_ln = LayerNorm(cx, f"{name}.attn_ln", n_state)
        self.mlp = MLP(cx, f"{name}.mlp", n_state)
        self.mlp_ln = LayerNorm(cx, f"{name}.mlp_ln", n_state)

    def __call__(self, x: TensorValue) -> TensorValue:
        cx, i = self.cx, self.i

        def half(y: TensorValue) -> TensorValue:  # the half-precision-block bug: float16 storage of activations
            return cx.bug(
                cx.half_block[i] if cx.debug else None, y, lambda: ops.cast(ops.cast(y, DType.float16), cx.dtype)
            )

        # Rounded before the tap: a trace records (and a patch replaces) the value the block stores.
        x = half(x)
        x = cx.tap(
            block_op(i, "attn_residual"),
            half(x + self.attn(cx.tap(block_op(i, "attn_ln"), half(self.attn_ln(x))), i, half)),
        )
        h = cx.tap(block_op(i, "mlp_ln"), half(self.mlp_ln(x)))
        h = self.mlp(
            h,
            lambda op, y: cx.tap(block_op(i, op), half(y)),
            gelu=lambda h: cx.bug("gelu_tanh", ops.gelu(h), lambda: ops.gelu(h, approximate="tanh")),
        )
        residual = cx.mlp_residual[i] * x if cx.debug else x  # the drop-residual bug; 1.0 * x (exact) when clean
        return cx.tap(block_op(i, "out"), half(h + residual))


class AudioEncoder:
    def __init__(self, cx: Context, n_mels: int, n_ctx: int, n_state: int, n_head: int, n_layer: int):
        self.cx = cx
        self.conv1 = Conv1d(cx, "encoder.conv1", n_mels, n_state)
        self.conv2 = Conv1d(cx, "encoder.conv2", n_state, n_state, stride=2)
        self.positional_embedding = cx.weight("encoder.positional_embedding", [n_ctx, n_state])
        self.blocks = [ResidualAttentionBlock(cx, i, n_state, n_head) for i in range(n_layer)]
        self.ln_post = LayerNorm(cx, "encoder.ln_post", n_state)

    def __call__(self, mel: TensorValue) -> TensorValue:
        x = self.stem(mel)
        for block in self.blocks:
            x = block(x)
        return self.post(x)

    def stem(self, mel: TensorValue) -> TensorValue:
        """mel: float32 [B, n_mels, 3000] (openai-whisper's layout), held in the model dtype from here; the convs
        run time-major, NHWC."""
        cx = self.cx
        x = ops.permute(cx.compute(mel), [0, 2, 1])
        x = ops.gelu(cx.tap("conv1", self.conv1(x, taps=cx.conv1_taps if cx.debug else None)))
        x = ops.gelu(cx.tap("conv2", self.conv2(cx.tap("conv1.gelu", x))))
        x = cx.tap("conv2.gelu", x)
        pos = cx.pos_scale * self.positional_embedding if cx.debug else self.positional_embedding
        return cx.tap("pos_embed", x + pos)

    def post(self, x: TensorValue) -> TensorValue:
        cx = self.cx
        out = self.ln_post(x)
        if cx.debug:  # missing-ln-post and variance-rescale (whole-tensor statistics made to look normalised)
            flat = ops.reshape(x, [-1])
            mean = ops.mean(flat, axis=-1)
            std = ops.sqrt(ops.mean((flat - mean) * (flat - mean), axis=-1))
            out = mix(cx.ln_post_rescale, mix(cx.ln_post_skip, out, x), (x - mean) / std)
        return cx.tap("ln_post", out)


# Taps whose MAX layout is time-major [B, T, C] but whose canonical layout is openai-whisper's [B, C, T].
CHANNELS_FIRST_TAPS = ("conv1", "conv1.gelu", "conv2", "conv2.gelu")


# Not patchable: the input (patch it by feeding the reference's mel) and the attention probabilities
# (n_head x T x T each: too large to feed as a dummy override on every run).
PATCH_EXCLUDED = ("mel", "attn.weights")


def patch_points(dims) -> list[str]:
    from whisperdiff.names import op_names

    return [n for n in op_names(dims) if n != "mel" and not n.endswith("attn.weights")]


def patch_types(dims, device: DeviceRef) -> list[TensorType]:
    """Flags (one per patch point) and one float32 override per activation shape, time-major."""
    d, f = dims, DType.float32
    t, c = d.n_audio_ctx, d.n_audio_state
    return [
        TensorType(f, [len(patch_points(d))], device=device),
        TensorType(f, [1, 2 * t, c], device=device),
        TensorType(f, [1, t, c], device=device),
        TensorType(f, [1, t, 4 * c], device=device),
    ]


def build_graph(
    dims,
    taps: list[str],
    dtype: DType = DType.float32,
    device: DeviceRef | None = None,
    debug: bool = False,
) -> tuple[Graph, list[str]]:
    """The encoder graph for these dims with `taps` (canonical names) as outputs; returns (graph, output names).

    debug=False: the clean encoder, whose only input is the mel. debug=True: the one graph for injected
    bugs and activation patching (`whisperdiff patch`), with the `Controls` as inputs and, for patching,
    a flag per patch point and an override per shape: at run time any one op's value is replaced by
    the reference's, so every bug and every patch point share one compiled graph."""
    device = device or DeviceRef.CPU()
    d = dims
    mel_type = TensorType(DType.float32, [1, d.n_mels, 2 * d.n_audio_ctx], device=device)
    key = f"whisper_encoder_{d.n_mels}_{d.n_audio_ctx}_{d.n_audio_state}_{d.n_audio_head}_{d.n_audio_layer}"
    extra = [*control_types(d.n_audio_layer, device), *patch_types(d, device)] if debug else []
    name = key + ("_debug" if debug else "")
    with Graph(name, input_types=[mel_type, *extra]) as graph:
        values = [v.tensor for v in graph.inputs]
        mel, n = values[0], len(CONTROL_NAMES)
        controls, patch = (values[1 : 1 + n], values[1 + n :]) if debug else (None, None)
        patching = (patch_points(d), patch[0], patch[1:]) if debug else None
        cx = Context(dtype, device, set(taps), controls, patching)
        encoder = AudioEncoder(cx, d.n_mels, d.n_audio_ctx, d.n_audio_state, d.n_audio_head, d.n_audio_layer)
        encoder(mel)
        graph.output(*(value for _, value in cx.outputs))
    return graph, [name for name, _ in cx.outputs]


@dataclass
class Pieces:
    """The encoder as three graphs run one after another, so that a run holds one block's taps at a time
    (MaxRunner's streamed run): the stem (mel to pos_embed), one block (run n_layer times, each time fed
    that block's weights as inputs) and ln_post. Each graph's first output is the activation the next one
    takes; `outputs[piece]` names the rest (the block graph's as block 0's ops)."""

    graphs: dict[str, Graph]
    outputs: dict[str, list[str]]
    block_weights: list[str]  # block 0's weight names, in the order the block graph takes them after x


def build_pieces(
    dims, taps: list[str], dtype: DType = DType.float32, device: DeviceRef | None = None, debug: bool = False
) -> Pieces:
    """The graphs of a streamed run with `taps` as outputs; debug: each also takes the `Controls` of one
    block (per-block switches fed block by block), as the debug graph does for all blocks."""
    device = device or DeviceRef.CPU()
    d, c, t = dims, dims.n_audio_state, dims.n_audio_ctx
    key = f"whisper_encoder_{d.n_mels}_{t}_{c}_{d.n_audio_head}"
    controls = control_types(1, device) if debug else []
    block_taps = {block_op(0, inside[1]) for inside in map(split_block_op, taps) if inside}
    x_type = TensorType(dtype, [1, t, c], device=device)
    with Graph(f"{key}_block_weights", input_types=[]):  # the block's weight types, by name (nothing compiled)
        scratch = Context(dtype, device, set())
        ResidualAttentionBlock(scratch, 0, c, d.n_audio_head)
    block_weights = list(scratch.weight_types)
    graphs, outputs = {}, {}
    for piece, first in (
        ("stem", TensorType(DType.float32, [1, d.n_mels, 2 * t], device=device)),
        ("block", x_type),
        ("post", x_type),
    ):
        weights = [scratch.weight_types[n] for n in block_weights] if piece == "block" else []
        with Graph(f"{key}_{piece}" + ("_debug" if debug else ""), input_types=[first, *controls, *weights]) as graph:
            values = [v.tensor for v in graph.inputs]
            x, n = values[0], 1 + len(controls)
            by_name = dict(zip(block_weights, values[n:], strict=True)) if piece == "block" else None
            cx = Context(
                dtype, device, block_taps if piece == "block" else set(taps), values[1:n] or None, weight_inputs=by_name
            )
            if piece == "block":
                x = ResidualAttentionBlock(cx, 0, c, d.n_audio_head)(x)
            else:
                encoder = AudioEncoder(cx, d.n_mels, t, c, d.n_audio_head, 0)
                x = encoder.stem(x) if piece == "stem" else encoder.post(x)
            graph.output(x, *(value for _, value in cx.outputs))
        graphs[piece], outputs[piece] = graph, [name for name, _ in cx.outputs]
    return Pieces(graphs, outputs, block_weights)
