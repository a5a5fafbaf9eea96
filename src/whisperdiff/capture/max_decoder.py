"""openai-whisper's TextDecoder in MAX Graph, op for op, with every canonical decoder op as a tap.

Read it beside whisper/model.py (TextDecoder, ResidualAttentionBlock with cross-attention) and
max_encoder.py, whose layer classes (LayerNorm, Linear, MLP, MultiHeadAttention, Context) it builds from.
The same two rules as the encoder:
- Weights are `max.graph.Weight`s named as openai-whisper's state dict, fed through `weights_registry`.
- Porting bugs are run-time inputs (`DecoderControls`): the correct decoder and every injectable bug
  share one compiled graph.
And the caches are graph inputs and outputs with symbolic lengths, so one compiled graph runs every step:
- the self-attention KV cache ("n_past" positions) grows by the step's tokens ("n_new"); positions and
  the causal mask come from those lengths inside the graph;
- cross-attention K/V are computed once per window, as openai-whisper's kv_cache does: the first step
  feeds the encoder output ("n_xa" = n_audio_ctx frames) and an empty cross cache, later steps an empty
  encoder output and the cross cache the first step returned ("n_cross" frames), so they project nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from max.dtype import DType
from max.graph import DeviceRef, Graph, TensorType, TensorValue, ops

from whisperdiff.capture.max_encoder import MLP, Context, LayerNorm, MultiHeadAttention, mix
from whisperdiff.capture.runner import Record
from whisperdiff.names import decoder_block_op


@dataclass
class DecoderControls:
    """Run-time switches fed as graph inputs; all 0 computes the correct decoder."""

    n_layer: int
    kv_off_by_one: float = 0.0  # 1: a cached step does not see the cache's newest entry
    pos_restart: float = 0.0  # 1: positions count from 0 at every step
    no_causal_mask: float = 0.0  # 1: self-attention sees later positions
    cross_kv_block0: float = 0.0  # 1: every block's cross-attention K/V from block 0's projections
    ln_skip: float = 0.0  # 1: the final layer norm is skipped

    NAMES = ("kv_off_by_one", "pos_restart", "no_causal_mask", "cross_kv_block0", "ln_skip")

    def arrays(self) -> list[np.ndarray]:
        return [np.array(getattr(self, n), np.float32) for n in self.NAMES]


class DecoderContext(Context):
    """The encoder's build context (float32, no encoder switches) with the decoder's run-time switches."""

    def __init__(self, device: DeviceRef, controls: list[TensorValue], taps: set[str]):
        super().__init__(DType.float32, device, taps)
        (self.kv_off_by_one, self.pos_restart, self.no_causal_mask, self.cross_kv_block0, self.ln_skip) = controls


class ResidualAttentionBlock:
    def __init__(self, cx: DecoderContext, i: int, n_state: int, n_head: int):
        name = f"decoder.blocks.{i}"
        self.cx, self.i = cx, i
        self.attn = MultiHeadAttention(cx, f"{name}.attn", n_state, n_head)
        self.attn_ln = LayerNorm(cx, f"{name}.attn_ln", n_state)
        self.cross_attn = MultiHeadAttention(cx, f"{name}.cross_attn", n_state, n_head)
        self.cross_attn_ln = LayerNorm(cx, f"{name}.cross_attn_ln", n_state)
        self.mlp = MLP(cx, f"{name}.mlp", n_state)
        self.mlp_ln = LayerNorm(cx, f"{name}.mlp_ln", n_state)

    def __call__(self, x, xa, past_k, past_v, mask, cross_k, cross_v, cross_kv0):
        """Returns (x, this block's full self-attention K and V for the cache, its cross-attention K and V for
        the cross cache, its own cross K/V projections of xa)."""
        cx, i = self.cx, self.i

        def t(op, value):
            return cx.tap(decoder_block_op(i, op), value)

        def attention(prefix, attn, q, k, v, mask):
            wv, w = attn.attend(q, k, v, mask)
            t(f"{prefix}.weights", w)
            return t(f"{prefix}.wv", wv)

        h = t("attn_ln", self.attn_ln(x))
        q = t("attn.q", self.attn.query(h))
        k = t("attn.k", self.attn.key(h))
        v = t("attn.v", self.attn.value(h))
        k_all, v_all = ops.concat([past_k, k], axis=1), ops.concat([past_v, v], axis=1)
        wv = attention("attn", self.attn, q, k_all, v_all, mask)
        x = t("attn_residual", x + t("attn.out", self.attn.out(wv)))

        h = t("cross_attn_ln", self.cross_attn_ln(x))
        q = t("cross_attn.q", self.cross_attn.query(h))
        own = (self.cross_attn.key(xa), self.cross_attn.value(xa))  # no rows once the cross cache is filled
        new_k, new_v = (
            own
            if cross_kv0 is None
            else (mix(cx.cross_kv_block0, own[0], cross_kv0[0]), mix(cx.cross_kv_block0, own[1], cross_kv0[1]))
        )
        ck = t("cross_attn.k", ops.concat([cross_k, new_k], axis=1))
        cv = t("cross_attn.v", ops.concat([cross_v, new_v], axis=1))
        wv = attention("cross_attn", self.cross_attn, q, ck, cv, None)
        x = t("cross_attn_residual", x + t("cross_attn.out", self.cross_attn.out(wv)))

        h = t("mlp_ln", self.mlp_ln(x))
        return t("out", x + self.mlp(h, t)), k_all, v_all, ck, cv, own


class TextDecoder:
    def __init__(self, cx: DecoderContext, n_vocab: int, n_ctx: int, n_state: int, n_head: int, n_layer: int):
        self.cx = cx
        self.token_embedding = cx.weight("decoder.token_embedding.weight", [n_vocab, n_state])
        self.positional_embedding = cx.weight("decoder.positional_embedding", [n_ctx, n_state])
        self.blocks = [ResidualAttentionBlock(cx, i, n_state, n_head) for i in range(n_layer)]
        self.ln = LayerNorm(cx, "decoder.ln", n_state)

    def __call__(self, tokens, xa, past_k, past_v, cross_k, cross_v):
        """tokens [1, n_new] at positions n_past.. n_past + n_new - 1; past_k/v [n_layer, 1, n_past, C];
        xa [1, n_xa, C] and cross_k/v [n_layer, 1, n_cross, C]: the encoder output or the cross cache.
        Returns (logits [1, n_new, n_vocab], new cache K and V [n_layer, 1, n_past + n_new, C], cross cache
        K and V [n_layer, 1, n_cross + n_xa, C])."""
        cx, dev, f = self.cx, self.cx.device, DType.float32
        n_new, n_past = tokens.shape[1], past_k.shape[2]
        offset = ops.cast(ops.reshape(ops.shape_to_tensor([n_past]), []), f)
        new = ops.range(0, n_new, 1, out_dim=n_new, dtype=f, device=dev)
        keys = ops.range(0, n_past + n_new, 1, out_dim=n_past + n_new, dtype=f, device=dev)
        # Positions: offset .. offset + n_new - 1 (the pos-restart bug drops the offset).
        positions = ops.cast(new + offset * (1.0 - cx.pos_restart), DType.int64)
        x = cx.tap("decoder.tok_embed", ops.gather(self.token_embedding, tokens, axis=0))
        x = cx.tap("decoder.pos_embed", x + ops.gather(self.positional_embedding, positions, axis=0))
        # Causal mask: query i (position offset + i) sees keys 0 .. offset + i. kv-cache-off-by-one also
        # hides key offset - 1 (the cache's newest entry) from a step that has a cache.
        later = (ops.reshape(keys, [1, -1]) - ops.reshape(new, [-1, 1]) - offset) * (1.0 - cx.no_causal_mask)
        newest = ops.cast(ops.equal(ops.reshape(keys, [1, -1]) + 1.0, offset), f)
        hidden = ops.greater(later + newest * cx.kv_off_by_one * 2.0, 0.0)
        mask = ops.where(hidden, ops.constant(float("-inf"), f, dev), ops.constant(0.0, f, dev))
        caches, cross0 = [], None
        for i, block in enumerate(self.blocks):
            x, *cache, own = block(x, xa, past_k[i], past_v[i], mask, cross_k[i], cross_v[i], cross0)
            cross0 = own if i == 0 else cross0
            caches.append(cache)
        x = cx.tap("decoder.ln", mix(cx.ln_skip, self.ln(x), x))
        logits = x @ ops.transpose(self.token_embedding, 0, 1)  # tied to the token embedding
        return cx.tap("decoder.logits", logits), *(ops.stack(list(c), axis=0) for c in zip(*caches, strict=True))


def build_decoder_graph(dims, taps: list[str], device: DeviceRef | None = None) -> tuple[Graph, list[str]]:
    """The decoder graph: inputs (tokens, encoder output, cache K, cache V, cross cache K, cross cache V,
    controls...), outputs (logits, new cache K, V, cross cache K, V, then every tap); returns (graph, tap
    names in output order)."""
    device = device or DeviceRef.CPU()
    d, f = dims, DType.float32
    c, n = d.n_text_state, d.n_text_layer
    cache = TensorType(f, [n, 1, "n_past", c], device=device)
    cross_cache = TensorType(f, [n, 1, "n_cross", c], device=device)
    scalar = TensorType(f, [], device=device)
    inputs = [
        TensorType(DType.int64, [1, "n_new"], device=device),
        TensorType(f, [1, "n_xa", d.n_audio_state], device=device),
        cache,
        cache,
        cross_cache,
        cross_cache,
        *[scalar] * len(DecoderControls.NAMES),
    ]
    key = f"whisper_decoder_{d.n_vocab}_{d.n_text_ctx}_{c}_{d.n_text_head}_{n}_{d.n_audio_ctx}"
    with Graph(key, input_types=inputs) as graph:
        tokens, xa, *caches = (v.tensor for v in graph.inputs)
        caches, controls = caches[:4], caches[4:]
        cx = DecoderContext(device, controls, {t for t in taps if t != "decoder.logits"})
        logits, *new_caches = TextDecoder(cx, d.n_vocab, d.n_text_ctx, c, d.n_text_head, n)(tokens, xa, *caches)
        graph.output(logits, *new_caches, *(value for _, value in cx.outputs))
    return graph, [name for name, _ in cx.outputs]


def decoder_weights(model) -> dict:
    """The decoder's state dict in float32, as the graph's Weights expect it."""
    return {
        name: model.state_dict[name].detach().cpu().float().contiguous().numpy()
        for name in model.state_dict
        if name.startswith("decoder.")  # before reading: a random model makes each tensor when it is read
    }


class MaxDecoderRunner:
    """Compiles (or loads from MAX's cache) the decoder graph once; start/step as torch_decoder's runner.

    The graph's taps are fixed at build time; which decoder faults act is chosen per run (set_faults)."""

    impl = "max"
    takes_faults = True  # decoder faults are run-time switches of this graph

    def __init__(self, model, taps: list[str] | None = None, faults=(), device: str = "cpu"):
        from max import engine

        from whisperdiff.capture.max_runner import _cache_entries, resolve_max_device
        from whisperdiff.names import decoder_op_specs

        self.loaded = model
        self.driver_device, graph_device, self.device = resolve_max_device(device)
        # The graph always has every tap (one compiled graph per model size whatever is recorded); `taps`
        # only filters what is passed on.
        every = [s.name for s in decoder_op_specs(model.dims, 1)]
        self.taps = set(taps if taps is not None else every)
        graph, self.outputs = build_decoder_graph(model.dims, every, graph_device)
        self.set_faults(faults)
        before, start = _cache_entries(), time.perf_counter()
        session = engine.InferenceSession(devices=[self.driver_device])
        self.model = session.load(graph, weights_registry=decoder_weights(model))
        self.compile_seconds = time.perf_counter() - start
        self.cache_hit = _cache_entries() == before
        self.close()

    def set_faults(self, faults=()) -> None:
        """Switch decoder faults for the next runs (the same compiled graph)."""
        self.controls = DecoderControls(self.loaded.dims.n_text_layer)
        self.faults = list(faults)
        for fault in self.faults:
            fault.decoder(self.controls)

    def facts(self) -> dict:
        return {
            "device": self.device,
            "dtype": "float32",
            "decoder": "whisperdiff.capture.max_decoder (MAX Graph)",
            "compile_seconds": round(self.compile_seconds, 3),
            "compile_cache_hit": self.cache_hit,
            "faults": [f.name for f in self.faults],
        }

    def start(self, features: np.ndarray) -> None:
        d = self.loaded.dims
        self.xa = np.ascontiguousarray(features, np.float32)
        self.k = self.v = np.zeros((d.n_text_layer, 1, 0, d.n_text_state), np.float32)
        self.cross_k = self.cross_v = self.k  # filled by the first step

    def step(self, tokens: np.ndarray, record: Record | None = None) -> np.ndarray:
        from max.driver import Buffer

        inputs = [np.ascontiguousarray(tokens, np.int64), self.xa, self.k, self.v, self.cross_k, self.cross_v]
        inputs += self.controls.arrays()
        if self.device != "cpu":
            inputs = [Buffer.from_numpy(a).to(self.driver_device) for a in inputs]
        logits, self.k, self.v, self.cross_k, self.cross_v, *taps = (r.to_numpy() for r in self.model.execute(*inputs))
        self.xa = self.xa[:, :0]  # the cross cache holds its K/V now: later steps project no frames
        if record is not None:
            for name, value in zip(self.outputs, taps, strict=True):
                if name in self.taps:
                    record(name, value)
            if "decoder.logits" in self.taps:
                record("decoder.logits", logits)
        return logits

    def close(self) -> None:
        self.k = self.v = self.cross_k = self.cross_v = self.xa = None
