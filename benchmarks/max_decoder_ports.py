"""Buggy MAX Graph decoder ports: a held-apart test set for whisperdiff's hands-off decoder alignment.

A decoder plugin (capture/plugin.py, PluginDecoderRunner): openai-whisper's TextDecoder written again the way a
third-party porter writes it in Modular MAX Graph (`max` 26.7): raw `ops.*` calls in its own class, its own
weight names, the per-layer weights as NumPy constants, the token embedding as a `Weight` fed through
`weights_registry`, compiled with `engine.InferenceSession` and run with `model.execute`. Two graphs:

    cross graph (run once in start()): encoder output [1, T_audio, C_audio] -> cross K, V [n_layer, 1, T_audio, C]
    step graph (every step):  tokens [1, new], self K, V [n_layer, 1, past, C], cross K, V
                              -> logits [1, new, n_vocab], self K, V [n_layer, 1, past + new, C]

Positions are the cache's length + arange(new), computed inside the step graph, so one compiled step graph
serves the prompt step and every one-token step. It never calls `record`: it only returns logits, so whatever
whisperdiff knows about its inside it has to find by itself.

    WD_MAX_DECODER_BUG=NAME whisperdiff trace-decoder --impl benchmarks/max_decoder_ports.py:make \\
        --tokens-from REF -o OUT
    python benchmarks/max_decoder_ports.py --selfcheck       # every variant against openai-whisper's logits

The variant comes from WD_MAX_DECODER_BUG (unset or "clean": clean). Each bug is made the way a porter would
make it: in the graph it builds or in its weight handling, never by writing values from outside its dataflow.
Each distinct graph costs a compile (1-4 minutes on 2 CPU cores); MAX caches compiled graphs in
~/.cache/modular, so an unchanged variant reloads in seconds.

BUGS[name]: op = the canonical decoder op (`whisperdiff ops --decoder`) where the error first appears (None:
clean); position = the first token position (0-based over prompt + forced tokens) where it appears at that op,
None where it appears from the prompt step on with no structural reason for a later position (and for ops on
the audio-frame axis); alternates = other ops that are a fair first divergence. For tiny.en and the shipped
clip the prompt is 2 tokens (<|startoftranscript|>, <|notimestamps|>: positions 0-1); position 2 is the first
one-token cached step.
"""

from __future__ import annotations

import os

import numpy as np
from max import driver, engine
from max.dtype import DType
from max.graph import DeviceRef, Graph, TensorType, Weight, ops

# name -> what the port does wrong, and where whisperdiff should say it first goes wrong
BUGS: dict[str, dict] = {
    "clean": dict(op=None, position=None, alternates=[], what="the port as meant: MAX Graph, NumPy constants"),
    "clean-fused-qkv": dict(
        op=None,
        position=None,
        alternates=[],
        what="self-attention q,k,v from one matmul with the concatenated [C, 3C] weight (zero k bias), then split",
    ),
    "pos-not-offset": dict(
        op="decoder.pos_embed",
        position=2,
        alternates=[],
        what="positions = arange(new), not offset by the cache length: the prompt is right, every cached step "
        "takes positional row 0",
    ),
    "no-causal-mask": dict(
        op="decoder.blocks.0.attn.weights",
        position=0,
        alternates=["decoder.blocks.0.attn.wv"],
        what="no causal mask in any self-attention: in the prompt step position 0 attends to position 1 (the last "
        "prompt position and the one-token steps see every key anyway)",
    ),
    "attn-scale-dhead": dict(
        op="decoder.blocks.2.attn.weights",
        position=1,
        alternates=["decoder.blocks.2.attn.wv"],
        what="block 2 self-attention scores scaled by 1/d_head instead of 1/sqrt(d_head) (position 0 attends to "
        "one key, so its softmax is 1 whatever the scale: the first change is position 1)",
    ),
    "fc1-bias-dropped": dict(
        op="decoder.blocks.3.mlp.fc1",
        position=None,
        alternates=[],
        what="block 3 fc1 without its bias (the linear helper called with no bias)",
    ),
    "gelu-tanh": dict(
        op="decoder.blocks.0.mlp.gelu",
        position=None,
        alternates=[],
        what="block 0 MLP with ops.gelu(approximate='tanh') instead of the exact (erf) GELU",
    ),
    "ln-eps": dict(
        op="decoder.blocks.0.cross_attn_ln",
        position=None,
        alternates=[],
        what="block 0 cross_attn_ln with epsilon 1e-3 instead of 1e-5 (its input's variance is ~0.01-0.016 at "
        "every position, so the output moves by a few percent from position 0 on)",
    ),
    "mlp-residual-dropped": dict(
        op="decoder.blocks.2.out",
        position=None,
        alternates=["decoder.blocks.3.attn_ln"],
        what="block 2: the MLP output replaces the stream (no residual add after fc2)",
    ),
    "cache-kv-swapped": dict(
        op="decoder.blocks.0.attn.weights",
        position=2,
        alternates=["decoder.blocks.0.attn.wv"],
        what="step() unpacks the step graph's outputs as (logits, v, k): every layer's cached keys are the values "
        "and vice versa; the prompt step is right, the first cached step's own k is right but it attends to "
        "cached values as keys",
    ),
    "cross-kv-layer0": dict(
        op="decoder.blocks.1.cross_attn.k",
        position=None,
        alternates=["decoder.blocks.1.cross_attn.v", "decoder.blocks.1.cross_attn.wv"],
        what="the cross graph projects the encoder output with block 0's k/v weights for every block (layer "
        "index not used in the loop): blocks 1-3 attend with block 0's cross K/V",
    ),
    "final-ln-skipped": dict(
        op="decoder.ln",
        position=None,
        alternates=["decoder.logits"],
        what="logits computed from the last block's output, the final layer norm never applied",
    ),
}

# openai-whisper's names inside a decoder block -> this port's names (linear weights kept as [in, out])
LAYER_KEYS = {
    "attn_ln.weight": "ln1_g",
    "attn_ln.bias": "ln1_b",
    "attn.query.weight": "wq",
    "attn.query.bias": "bq",
    "attn.key.weight": "wk",
    "attn.value.weight": "wv",
    "attn.value.bias": "bv",
    "attn.out.weight": "wo",
    "attn.out.bias": "bo",
    "cross_attn_ln.weight": "ln2_g",
    "cross_attn_ln.bias": "ln2_b",
    "cross_attn.query.weight": "xq",
    "cross_attn.query.bias": "xq_b",
    "cross_attn.key.weight": "xk",
    "cross_attn.value.weight": "xv",
    "cross_attn.value.bias": "xv_b",
    "cross_attn.out.weight": "xo",
    "cross_attn.out.bias": "xo_b",
    "mlp_ln.weight": "ln3_g",
    "mlp_ln.bias": "ln3_b",
    "mlp.0.weight": "w1",
    "mlp.0.bias": "b1",
    "mlp.2.weight": "w2",
    "mlp.2.bias": "b2",
}
LN_EPS = 1e-5


def bug_name() -> str:
    bug = os.environ.get("WD_MAX_DECODER_BUG", "").strip() or "clean"
    if bug not in BUGS:
        raise ValueError(f"WD_MAX_DECODER_BUG={bug!r} is no variant of this port; one of {', '.join(BUGS)}")
    return bug


def _numpy(t) -> np.ndarray:
    if hasattr(t, "detach"):
        t = t.detach().float().cpu().numpy()
    return np.ascontiguousarray(t, dtype=np.float32)


def load_decoder_weights(state_dict, n_layer: int) -> tuple[dict, list[dict]]:
    """openai-whisper's "decoder." parameters -> (top-level arrays, one dict per layer) under this port's names.
    Linear weights are transposed to [in, out] so the graph does x @ w."""
    top, layers = {}, [{} for _ in range(n_layer)]
    for name, value in state_dict.items():
        if not name.startswith("decoder."):
            continue
        name = name[len("decoder.") :]
        arr = _numpy(value)
        if name.startswith("blocks."):
            _, idx, rest = name.split(".", 2)
            key = LAYER_KEYS[rest]
            layers[int(idx)][key] = arr.T.copy() if arr.ndim == 2 else arr
        elif name == "token_embedding.weight":
            top["tok_emb"] = arr
        elif name == "positional_embedding":
            top["pos_emb"] = arr
        elif name == "ln.weight":
            top["lnf_g"] = arr
        elif name == "ln.bias":
            top["lnf_b"] = arr
    for i, layer in enumerate(layers):
        missing = set(LAYER_KEYS.values()) - set(layer)
        if missing:
            raise ValueError(f"decoder block {i}: no {sorted(missing)} in the state dict")
    return top, layers


class MaxWhisperDecoder:
    """openai-whisper's text decoder as two MAX graphs; start(features) / step(tokens) -> logits."""

    def __init__(self, dims, state_dict, bug: str = "clean"):
        self.bug = bug
        self.n_layer, self.n_head = dims.n_text_layer, dims.n_text_head
        self.d_model, self.n_vocab = dims.n_text_state, dims.n_vocab
        self.n_audio_ctx, self.n_audio_state = dims.n_audio_ctx, dims.n_audio_state
        self.d_head = self.d_model // self.n_head
        self.top, self.layers = load_decoder_weights(state_dict, self.n_layer)
        self.session = engine.InferenceSession(devices=[driver.CPU()])
        self.cross_model = self.session.load(self._build_cross_graph())
        self.step_model = self.session.load(self._build_step_graph(), weights_registry={"tok_emb": self.top["tok_emb"]})
        self.cross_k = self.cross_v = self.k_cache = self.v_cache = None

    # ---------------------------------------------------------------------------------------------
    # graph pieces
    # ---------------------------------------------------------------------------------------------

    def _const(self, arr):
        return ops.constant(arr, DType.float32, DeviceRef.CPU())

    def _linear(self, x, w, b=None):
        y = ops.matmul(x, self._const(w))
        return y if b is None else y + self._const(b)

    def _layer_norm(self, x, g, b, eps=LN_EPS):
        return ops.layer_norm(x, self._const(g), self._const(b), epsilon=eps)

    def _split_heads(self, x, seq):
        """[1, seq, C] -> [1, H, seq, D]"""
        return ops.permute(ops.reshape(x, [1, seq, self.n_head, self.d_head]), [0, 2, 1, 3])

    def _attend(self, q, k, v, mask=None, scale=None):
        """q [1, L, C], k/v [1, S, C] -> [1, L, C]"""
        n_q, n_k = q.shape[1], k.shape[1]
        if scale is None:
            scale = 1.0 / np.sqrt(self.d_head)
        qh = self._split_heads(q, n_q)
        kh = ops.transpose(self._split_heads(k, n_k), 2, 3)  # [1, H, D, S]
        vh = self._split_heads(v, n_k)
        scores = ops.matmul(qh, kh) * float(scale)
        if mask is not None:
            scores = scores + mask
        probs = ops.softmax(scores, axis=-1)
        out = ops.matmul(probs, vh)  # [1, H, L, D]
        return ops.reshape(ops.permute(out, [0, 2, 1, 3]), [1, n_q, self.d_model])

    # ---------------------------------------------------------------------------------------------
    # graphs
    # ---------------------------------------------------------------------------------------------

    def _build_cross_graph(self):
        """encoder output -> every block's cross-attention K and V, stacked: [n_layer, 1, T_audio, C] each."""
        enc_type = TensorType(DType.float32, [1, self.n_audio_ctx, self.n_audio_state], device=DeviceRef.CPU())
        with Graph("whisper_cross_kv", input_types=[enc_type]) as graph:
            enc = graph.inputs[0].tensor
            ks, vs = [], []
            for i in range(self.n_layer):
                p = self.layers[0 if self.bug == "cross-kv-layer0" else i]
                ks.append(self._linear(enc, p["xk"]))
                vs.append(self._linear(enc, p["xv"], p["xv_b"]))
            graph.output(ops.stack(ks, axis=0), ops.stack(vs, axis=0))
        return graph

    def _build_step_graph(self):
        cpu = DeviceRef.CPU()
        c, bug = self.d_model, self.bug
        input_types = [
            TensorType(DType.int64, [1, "new"], device=cpu),
            TensorType(DType.float32, [self.n_layer, 1, "past", c], device=cpu),
            TensorType(DType.float32, [self.n_layer, 1, "past", c], device=cpu),
            TensorType(DType.float32, [self.n_layer, 1, self.n_audio_ctx, c], device=cpu),
            TensorType(DType.float32, [self.n_layer, 1, self.n_audio_ctx, c], device=cpu),
        ]
        tok_emb = Weight("tok_emb", DType.float32, [self.n_vocab, c], device=cpu)
        with Graph("whisper_decoder_step", input_types=input_types) as graph:
            tokens, past_k, past_v, cross_k, cross_v = (v.tensor for v in graph.inputs)
            n_new, n_past = tokens.shape[1], past_k.shape[2]

            # positions: the cache's length + arange(new)
            past_len = ops.reshape(ops.shape_to_tensor([n_past]), [])
            new_len = ops.reshape(ops.shape_to_tensor([n_new]), [])
            total_len = ops.reshape(ops.shape_to_tensor([n_past + n_new]), [])
            q_pos = ops.range(past_len, past_len + new_len, 1, out_dim=n_new, dtype=DType.int64, device=cpu)
            k_pos = ops.range(0, total_len, 1, out_dim=n_past + n_new, dtype=DType.int64, device=cpu)
            if bug == "pos-not-offset":
                positions = ops.range(0, new_len, 1, out_dim=n_new, dtype=DType.int64, device=cpu)
            else:
                positions = q_pos

            x = ops.gather(tok_emb, tokens, axis=0)  # [1, new, C]
            x = x + ops.gather(self._const(self.top["pos_emb"]), positions, axis=0)

            # causal mask over the past + new keys: the query at position p sees keys 0..p
            neg_inf = ops.constant(float("-inf"), DType.float32, cpu)
            zero = ops.constant(0.0, DType.float32, cpu)
            mask = ops.where(
                ops.greater(ops.reshape(k_pos, [1, -1]), ops.reshape(q_pos, [-1, 1])), neg_inf, zero
            )  # [new, past + new]

            new_k, new_v = [], []
            for i, p in enumerate(self.layers):
                # self-attention with the cache
                h = self._layer_norm(x, p["ln1_g"], p["ln1_b"])
                if bug == "clean-fused-qkv":
                    w_qkv = np.concatenate([p["wq"], p["wk"], p["wv"]], axis=1)
                    b_qkv = np.concatenate([p["bq"], np.zeros_like(p["bq"]), p["bv"]])
                    q, k, v = ops.split(self._linear(h, w_qkv, b_qkv), [c, c, c], axis=-1)
                else:
                    q = self._linear(h, p["wq"], p["bq"])
                    k = self._linear(h, p["wk"])
                    v = self._linear(h, p["wv"], p["bv"])
                k_all = ops.concat([past_k[i], k], axis=1)
                v_all = ops.concat([past_v[i], v], axis=1)
                new_k.append(k_all)
                new_v.append(v_all)
                scale = 1.0 / self.d_head if (bug == "attn-scale-dhead" and i == 2) else None
                a = self._attend(q, k_all, v_all, mask=None if bug == "no-causal-mask" else mask, scale=scale)
                x = x + self._linear(a, p["wo"], p["bo"])

                # cross-attention on the encoder output
                eps = 1e-3 if (bug == "ln-eps" and i == 0) else LN_EPS
                h = self._layer_norm(x, p["ln2_g"], p["ln2_b"], eps=eps)
                q = self._linear(h, p["xq"], p["xq_b"])
                a = self._attend(q, cross_k[i], cross_v[i])
                x = x + self._linear(a, p["xo"], p["xo_b"])

                # MLP
                h = self._layer_norm(x, p["ln3_g"], p["ln3_b"])
                h = self._linear(h, p["w1"], None if (bug == "fc1-bias-dropped" and i == 3) else p["b1"])
                h = ops.gelu(h, approximate="tanh") if (bug == "gelu-tanh" and i == 0) else ops.gelu(h)
                h = self._linear(h, p["w2"], p["b2"])
                x = h if (bug == "mlp-residual-dropped" and i == 2) else x + h

            if bug != "final-ln-skipped":
                x = self._layer_norm(x, self.top["lnf_g"], self.top["lnf_b"])
            logits = ops.matmul(x, ops.transpose(tok_emb, 0, 1))
            graph.output(logits, ops.stack(new_k, axis=0), ops.stack(new_v, axis=0))
        return graph

    # ---------------------------------------------------------------------------------------------
    # running
    # ---------------------------------------------------------------------------------------------

    def start(self, features) -> None:
        enc = np.ascontiguousarray(features, dtype=np.float32).reshape(1, self.n_audio_ctx, self.n_audio_state)
        self.cross_k, self.cross_v = self.cross_model.execute(enc)
        empty = np.zeros((self.n_layer, 1, 0, self.d_model), dtype=np.float32)
        self.k_cache, self.v_cache = empty, empty.copy()

    def step(self, tokens) -> np.ndarray:
        ids = np.ascontiguousarray(tokens, dtype=np.int64).reshape(1, -1)
        out = self.step_model.execute(ids, self.k_cache, self.v_cache, self.cross_k, self.cross_v)
        if self.bug == "cache-kv-swapped":
            logits, self.v_cache, self.k_cache = out
        else:
            logits, self.k_cache, self.v_cache = out
        return logits.to_numpy()


class Port:
    """The plugin object (capture/plugin.py's decoder interface) around the MAX decoder."""

    def __init__(self, model, bug: str | None = None):
        self.bug = bug or bug_name()
        self.decoder = MaxWhisperDecoder(model.dims, model.state_dict, self.bug)

    def start(self, features) -> None:
        self.decoder.start(features)

    def step(self, tokens, record=None):
        """The next L tokens -> logits [1, L, n_vocab]. `record` is never called: the port names nothing."""
        return self.decoder.step(tokens)

    def close(self) -> None:
        self.decoder.cross_k = self.decoder.cross_v = self.decoder.k_cache = self.decoder.v_cache = None


def make(model, device="cpu", dtype="float32"):
    """The plugin factory: the variant named by WD_MAX_DECODER_BUG."""
    if str(device) != "cpu":
        raise ValueError(f"this port runs on the CPU only, not {device}")
    if dtype != "float32":
        raise ValueError(f"this port runs float32 only, not {dtype}")
    return Port(model)


# ------------------------------------------------------------------------------------------------
# --selfcheck: every variant through whisperdiff's plugin path, logits against openai-whisper's
# ------------------------------------------------------------------------------------------------


def selfcheck(work: str = "/tmp/md", names: list[str] | None = None, clean_limit: float = 1e-4) -> int:
    """Each variant through `whisperdiff trace-decoder --impl THIS:make --tokens-from REF`, its logits against
    openai-whisper's (REF: `trace-decoder --impl torch`): a clean variant must stay within clean_limit (rel L2),
    a bug must change the logits by more than 10x the largest clean variant's rel L2 (and than clean_limit / 10).
    Prints the time each variant took (mostly MAX's compile; a cached graph reloads in seconds)."""
    import shutil
    import time
    from pathlib import Path

    from port_selfcheck import logits_rel_l2, reference, run

    work, ref, exe = reference(work)
    me = Path(__file__).resolve()
    rows = []
    for name in names or list(BUGS):
        out = work / name
        shutil.rmtree(out, ignore_errors=True)
        env = dict(os.environ, WD_MAX_DECODER_BUG=name)
        start = time.perf_counter()
        run([exe, "trace-decoder", "--impl", f"{me}:make", "--tokens-from", str(ref), "-o", str(out)], env)
        seconds = time.perf_counter() - start
        rel, per = logits_rel_l2(ref, out)
        rows.append((name, rel, per, seconds))
        print(f"  {name:22} logits rel L2 {rel:.3e}  ({seconds:.0f} s)", flush=True)
    clean_worst = max((rel for name, rel, *_ in rows if BUGS[name]["op"] is None), default=0.0)
    bug_floor = max(10 * clean_worst, clean_limit / 10)
    ok_all = True
    head = f"{'variant':22} {'declared op':38} {'pos':>4} {'logits relL2':>12} {'seconds':>8}"
    print("\n" + head)
    print("-" * len(head))
    for name, rel, _, seconds in rows:
        spec = BUGS[name]
        ok = rel <= clean_limit if spec["op"] is None else rel > bug_floor
        ok_all &= ok
        pos = "-" if spec["position"] is None else spec["position"]
        print(
            f"{name:22} {spec['op'] or '(clean)':38} {pos:>4} {rel:12.3e} {seconds:8.0f}{'' if ok else '  <-- CHECK'}"
        )
    print("\nper-position logits rel L2 (positions 0..; the prompt is positions 0-1 for tiny.en):")
    for name, _, per, _ in rows:
        print(f"  {name:22} " + " ".join(f"{x:.0e}" if x else "0" for x in per))
    return 0 if ok_all else 1


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from port_selfcheck import main

    main(__doc__, BUGS, selfcheck, "/tmp/md")
