"""Hands-off ports of Whisper tiny.en's encoder (issue 22): four ports whose graphs have other shapes than
whisperdiff's own MAX encoder, each with planted bugs, for benchmarks/handsoff.py to trace with no names given.

Written apart from whisperdiff's alignment code (only the public API, docs/ports.md and names.py were read).

    style   what it is                                                             where
    const   a class: raw max.graph.ops, weights as NumPy constants (ops.constant),   this file (ConstPort)
            both convolutions as matmuls over stacked shifted frames, compiles and
            runs its own model (ConstPort(model, bug).run(mel) -> np.ndarray)
    inputs  a build function: every weight is a graph input, passed at execute time this file (build_inputs_graph)
            (convs via ops.conv2d, attention one head at a time, ops.layer_norm)
    nn      max.nn Modules of its own naming (enc.stages.0.self_attn.proj_q, ...),  handsoff_ports_nn.py
            loaded with load_state_dict
    torch   transformers' WhisperEncoder with tiny.en's weights, bugs planted by     handsoff_ports_torch.py
            monkeypatching forwards

Every port takes `bug=` (None: the clean port; a name of BUGS). BUGS says for each the canonical op where it
first acts (src/whisperdiff/names.py) or None for a variant that computes the same numbers another way.

    from handsoff_ports import ConstPort, BUGS
    port = ConstPort(whisperdiff.load_model(), bug="conv1-same-tap"); y = port.run(mel)   # compiles (~1-2 min)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STYLES = ("const", "inputs", "nn", "torch")

SCALE = 0.234  # out-scaled: the factor after the final layer norm
ZERO_HEAD = (1, 3)  # head-zeroed: (block, head)
QUICK_BLOCK, FP16_BLOCK, RES_BLOCK = 1, 2, 2


@dataclass(frozen=True)
class Bug:
    name: str
    op: str | None  # the canonical op where it first acts; None: must give no divergence
    klass: str  # its class, in plain words
    description: str
    also_ok: tuple[str, ...] = ()  # other ops where it may equally be first seen (documented reasons)


BUGS: dict[str, Bug] = {
    b.name: b
    for b in (
        Bug("clean", None, "clean", "the port as written, no bug"),
        Bug(
            "out-scaled", "ln_post", "global scale", f"encoder output multiplied by {SCALE} after the final layer norm"
        ),
        Bug("no-ln-post", "ln_post", "missing op", "the final layer norm is never applied"),
        Bug("conv1-same-tap", "conv1", "conv kernel", "conv1's three taps all read the centre frame"),
        Bug(
            "conv2-decimate",
            None,
            "shape variant (equivalent)",
            "conv2 at stride 1, GELU, then every other frame from frame 0: the same numbers as stride 2 "
            "(stride-2 output t reads frames 2t-1..2t+1, as stride-1 output 2t does; GELU is elementwise)",
        ),
        Bug(
            "conv2-decimate-odd",
            "conv2",
            "conv stride phase",
            "conv2 at stride 1, GELU, then every other frame from frame 1 (the stride's phase off by one)",
            ("conv2.gelu",),  # the port never holds a [C, 1500] conv2 before its GELU
        ),
        Bug("conv2-no-gelu", "conv2.gelu", "missing activation", "conv2 without its GELU"),
        Bug(
            "head-zeroed",
            f"blocks.{ZERO_HEAD[0]}.attn.wv",
            "attention head dropped",
            f"head {ZERO_HEAD[1]} of block {ZERO_HEAD[0]} zeroed after p@v",
        ),
        Bug(
            "quick-gelu",
            f"blocks.{QUICK_BLOCK}.mlp.gelu",
            "activation approximation",
            f"quick GELU x*sigmoid(1.702x) in block {QUICK_BLOCK}'s MLP",
        ),
        Bug("fc2-float16", f"blocks.{FP16_BLOCK}.mlp.fc2", "precision", f"block {FP16_BLOCK}'s fc2 in float16"),
        Bug("qkv-fused", None, "shape variant (equivalent)", "q, k, v as one fused matmul, then split"),
        Bug(
            "attn-scale-twice",
            "blocks.0.attn.wv",
            "attention scale",
            "1/sqrt(d_head) applied twice (on q and on the scores), every block",
            ("blocks.0.attn.weights",),  # the probabilities, when traced
        ),
        Bug(
            "residual-from-ln",
            f"blocks.{RES_BLOCK}.attn_residual",
            "residual wiring",
            f"block {RES_BLOCK}'s attention residual adds the layer-normed input",
        ),
        Bug("pos-shift", "pos_embed", "positional", "positional embedding shifted by one position (row t gets t-1)"),
    )
}


def bug_names(include_clean: bool = True) -> list[str]:
    return [n for n in BUGS if include_clean or n != "clean"]


def _bug(bug: str | None) -> str:
    bug = bug or "clean"
    if bug not in BUGS:
        raise ValueError(f"unknown bug {bug!r}; one of {', '.join(BUGS)}")
    return bug


def encoder_arrays(model) -> dict[str, np.ndarray]:
    """the checkpoint's encoder tensors as float32 NumPy, openai-whisper names without `encoder.`."""
    return {
        k.removeprefix("encoder."): np.ascontiguousarray(v.float().numpy())
        for k, v in model.state_dict.items()
        if k.startswith("encoder.")
    }


# ------------------------------------------------------------------------------------------------
# style a: a class, raw ops, weights as constants, convs as matmuls over stacked shifted frames
# ------------------------------------------------------------------------------------------------


class ConstPort:
    """Builds, compiles and runs its own MAX graph; `run(mel)` returns the encoder output [1, T, C]."""

    def __init__(self, model, bug: str | None = None):
        from max import engine
        from max.driver import CPU
        from max.dtype import DType
        from max.graph import DeviceRef, Graph, TensorType

        self.bug = _bug(bug)
        self.dims = model.dims
        self.w = encoder_arrays(model)
        self.dev = DeviceRef.CPU()
        self.f32, self.f16 = DType.float32, DType.float16
        mel_type = TensorType(DType.float32, [1, self.dims.n_mels, 2 * self.dims.n_audio_ctx], device=self.dev)
        with Graph("handsoff_const", input_types=[mel_type]) as graph:
            graph.output(self._encoder(graph.inputs[0].tensor))
        self.model = engine.InferenceSession(devices=[CPU()]).load(graph)

    def run(self, mel: np.ndarray) -> np.ndarray:
        return self.model.execute(np.ascontiguousarray(mel, np.float32))[0].to_numpy()

    # --- pieces ---
    def _c(self, a):
        from max.graph import ops

        return ops.constant(np.ascontiguousarray(a, np.float32), self.f32, device=self.dev)

    def _dense(self, x, name, half=False):
        w, b = self.w[f"{name}.weight"].T, self.w.get(f"{name}.bias")
        if half:  # inputs and weights rounded to float16, the product rounded back: float16 arithmetic
            from max.graph import ops

            x = ops.cast(ops.cast(x, self.f16), self.f32)
            y = x @ self._c(w.astype(np.float16).astype(np.float32))
            y = y + self._c(b.astype(np.float16).astype(np.float32))
            return ops.cast(ops.cast(y, self.f16), self.f32)
        y = x @ self._c(w)
        return y if b is None else y + self._c(b)

    def _norm(self, x, name, eps=1e-5):
        from max.graph import ops

        mu = ops.mean(x, axis=-1)
        xc = x - mu
        var = ops.mean(xc * xc, axis=-1)
        return xc * ops.rsqrt(var + eps) * self._c(self.w[f"{name}.weight"]) + self._c(self.w[f"{name}.bias"])

    def _conv(self, x, name, stride, taps=(0, 1, 2)):
        """x [1, T, Cin] -> [1, T/stride, Cout]: frames t-1, t, t+1 side by side, one matmul."""
        from max.graph import ops

        w = self.w[f"{name}.weight"]  # [out, in, k]
        t = int(x.shape[1])
        n = t // stride
        xp = ops.pad(x, [0, 0, 1, 1, 0, 0])
        frames = ops.concat([xp[:, k : k + stride * (n - 1) + 1 : stride, :] for k in taps], axis=-1)
        return frames @ self._c(w.transpose(2, 1, 0).reshape(-1, w.shape[0])) + self._c(self.w[f"{name}.bias"])

    def _encoder(self, mel):
        from max.graph import ops

        bug = self.bug
        x = ops.permute(mel, [0, 2, 1])  # [1, 3000, n_mels]
        x = ops.gelu(self._conv(x, "conv1", 1, (1, 1, 1) if bug == "conv1-same-tap" else (0, 1, 2)))
        if bug in ("conv2-decimate", "conv2-decimate-odd"):
            x = ops.gelu(self._conv(x, "conv2", 1))
            x = x[:, (1 if bug.endswith("odd") else 0) :: 2, :]
        else:
            x = self._conv(x, "conv2", 2)
            x = x if bug == "conv2-no-gelu" else ops.gelu(x)
        pos = self.w["positional_embedding"]
        if bug == "pos-shift":
            pos = np.concatenate([pos[:1], pos[:-1]])
        x = x + self._c(pos)
        for i in range(self.dims.n_audio_layer):
            x = self._block(x, i)
        if bug != "no-ln-post":
            x = self._norm(x, "ln_post")
        return x * SCALE if bug == "out-scaled" else x

    def _block(self, x, i):
        from max.graph import ops

        bug, p = self.bug, f"blocks.{i}."
        h_n, c = self.dims.n_audio_head, self.dims.n_audio_state
        d = c // h_n
        t = int(x.shape[1])
        h = self._norm(x, p + "attn_ln")
        if bug == "qkv-fused":
            w = np.concatenate([self.w[p + f"attn.{n}.weight"] for n in ("query", "key", "value")])
            b = np.concatenate([self.w[p + "attn.query.bias"], np.zeros(c, np.float32), self.w[p + "attn.value.bias"]])
            qkv = h @ self._c(w.T) + self._c(b)
            q, k, v = qkv[:, :, 0:c], qkv[:, :, c : 2 * c], qkv[:, :, 2 * c : 3 * c]
        else:
            q, k, v = (self._dense(h, p + f"attn.{n}") for n in ("query", "key", "value"))
        q4 = ops.permute(ops.reshape(q, [1, t, h_n, d]), [0, 2, 1, 3])
        kt = ops.permute(ops.reshape(k, [1, t, h_n, d]), [0, 2, 3, 1])
        v4 = ops.permute(ops.reshape(v, [1, t, h_n, d]), [0, 2, 1, 3])
        scale = d**-0.5
        if bug == "attn-scale-twice":
            q4 = q4 * scale
        o = ops.softmax((q4 @ kt) * scale) @ v4  # [1, H, T, d]
        if bug == "head-zeroed" and i == ZERO_HEAD[0]:
            keep = np.ones((1, h_n, 1, 1), np.float32)
            keep[0, ZERO_HEAD[1]] = 0.0
            o = o * self._c(keep)
        wv = ops.reshape(ops.permute(o, [0, 2, 1, 3]), [1, t, c])
        a = self._dense(wv, p + "attn.out")
        r = (h if bug == "residual-from-ln" and i == RES_BLOCK else x) + a
        f = self._dense(self._norm(r, p + "mlp_ln"), p + "mlp.0")
        f = f * ops.sigmoid(f * 1.702) if bug == "quick-gelu" and i == QUICK_BLOCK else ops.gelu(f)
        return r + self._dense(f, p + "mlp.2", half=bug == "fc2-float16" and i == FP16_BLOCK)


# ------------------------------------------------------------------------------------------------
# style b: a build function, every weight a graph input
# ------------------------------------------------------------------------------------------------


def build_inputs_graph(dims, weights: dict[str, np.ndarray], bug: str | None = None):
    """(graph, names): the graph's inputs are the mel, then weights[name] for name in names, as stored
    in the checkpoint ([out, in] linears, [out, in, k] convs). Execute with (mel, *[weights[n] for n in names])."""
    from max.dtype import DType
    from max.graph import DeviceRef, Graph, TensorType, ops

    bug = _bug(bug)
    dev = DeviceRef.CPU()
    f32, f16 = DType.float32, DType.float16
    names = list(weights)
    types = [TensorType(f32, [1, dims.n_mels, 2 * dims.n_audio_ctx], device=dev)]
    types += [TensorType(f32, list(weights[n].shape), device=dev) for n in names]
    h_n, c = dims.n_audio_head, dims.n_audio_state
    d = c // h_n

    with Graph("handsoff_inputs", input_types=types) as graph:
        W = {n: graph.inputs[j + 1].tensor for j, n in enumerate(names)}

        def linear(x, name, half=False):
            w = ops.transpose(W[f"{name}.weight"], 0, 1)
            b = W.get(f"{name}.bias")
            if half:  # a true float16 matmul
                y = ops.cast(x, f16) @ ops.cast(w, f16) + ops.cast(b, f16)
                return ops.cast(y, f32)
            return x @ w if b is None else x @ w + b

        def conv(x, name, stride, centre_only=False):  # x [1, T, Cin] -> [1, T/stride, Cout]
            w = W[f"{name}.weight"]  # [out, in, k]
            pad = 1
            if centre_only:  # every tap reads frame t: one tap holding the sum of the three
                w, pad = ops.sum(w, axis=2), 0
            f = ops.unsqueeze(ops.permute(w, [2, 1, 0]), 0)  # [1, k, in, out] (RSCF)
            y = ops.conv2d(ops.unsqueeze(x, 1), f, (1, stride), (1, 1), (0, 0, pad, pad), 1, W[f"{name}.bias"])
            return ops.squeeze(y, 1)

        def norm(x, name):
            return ops.layer_norm(x, W[f"{name}.weight"], W[f"{name}.bias"], 1e-5)

        x = ops.permute(graph.inputs[0].tensor, [0, 2, 1])
        x = ops.gelu(conv(x, "conv1", 1, centre_only=bug == "conv1-same-tap"))
        if bug in ("conv2-decimate", "conv2-decimate-odd"):
            x = ops.gelu(conv(x, "conv2", 1))
            x = x[:, (1 if bug.endswith("odd") else 0) :: 2, :]
        else:
            x = conv(x, "conv2", 2)
            x = x if bug == "conv2-no-gelu" else ops.gelu(x)
        pos = W["positional_embedding"]
        if bug == "pos-shift":
            pos = ops.concat([pos[0:1, :], pos[0 : dims.n_audio_ctx - 1, :]], axis=0)
        x = x + pos
        t = dims.n_audio_ctx
        for i in range(dims.n_audio_layer):
            p = f"blocks.{i}."
            h = norm(x, p + "attn_ln")
            if bug == "qkv-fused":
                wqkv = ops.concat([W[p + f"attn.{n}.weight"] for n in ("query", "key", "value")], axis=0)
                zeros = ops.constant(np.zeros(c, np.float32), f32, device=dev)
                bqkv = ops.concat([W[p + "attn.query.bias"], zeros, W[p + "attn.value.bias"]], axis=0)
                qkv = h @ ops.transpose(wqkv, 0, 1) + bqkv
                q, k, v = qkv[:, :, 0:c], qkv[:, :, c : 2 * c], qkv[:, :, 2 * c : 3 * c]
            else:
                q, k, v = (linear(h, p + f"attn.{n}") for n in ("query", "key", "value"))
            heads = []
            for j in range(h_n):  # one head at a time
                qj, kj, vj = (z[0, :, j * d : (j + 1) * d] for z in (q, k, v))  # [T, d]
                s = qj @ ops.transpose(kj, 0, 1)
                s = s * (d**-0.5) * (d**-0.5) if bug == "attn-scale-twice" else s * (d**-0.5)
                o = ops.softmax(s) @ vj
                if bug == "head-zeroed" and (i, j) == ZERO_HEAD:
                    o = o * 0.0
                heads.append(o)
            wv = ops.reshape(ops.concat(heads, axis=-1), [1, t, c])
            r = (h if bug == "residual-from-ln" and i == RES_BLOCK else x) + linear(wv, p + "attn.out")
            f = linear(norm(r, p + "mlp_ln"), p + "mlp.0")
            f = f * ops.sigmoid(f * 1.702) if bug == "quick-gelu" and i == QUICK_BLOCK else ops.gelu(f)
            x = r + linear(f, p + "mlp.2", half=bug == "fc2-float16" and i == FP16_BLOCK)
        if bug != "no-ln-post":
            x = norm(x, "ln_post")
        graph.output(x * SCALE if bug == "out-scaled" else x)
    return graph, names
