"""Hands-off port style `nn` (issue 22): a Whisper encoder written as max.nn Modules of its own naming,
loaded with load_state_dict, with the bugs of benchmarks/handsoff_ports.py (BUGS) planted by `bug=`.

    enc.stem.conv_a / conv_b           nn.Conv1D(permute=True): [B, C, T] in and out, filters [out, in, k]
    enc.pos_table                      the positional embedding (a Weight)
    enc.stages.{i}.norm_attn           nn.LayerNorm
    enc.stages.{i}.self_attn.proj_q|proj_k|proj_v|proj_o   nn.Linear (proj_qkv when fused)
    enc.stages.{i}.norm_ff, ff.up, ff.down
    enc.final_norm

    from handsoff_ports_nn import NNPort, nn_weights
    port = NNPort(model.dims, bug="quick-gelu"); port.load_state_dict(nn_weights(model, port))
    with Graph("g", input_types=[mel_type]) as g:
        g.output(port(g.inputs[0].tensor))
"""

from __future__ import annotations

import numpy as np
from handsoff_ports import FP16_BLOCK, QUICK_BLOCK, RES_BLOCK, SCALE, ZERO_HEAD, _bug, encoder_arrays
from max import nn
from max.dtype import DType
from max.graph import DeviceRef, TensorValue, Weight, ops

F32, F16 = DType.float32, DType.float16


class CentreConv(nn.Module):
    """A conv whose three taps all read frame t (the filter's taps summed onto the centre frame)."""

    def __init__(self, k: int, cin: int, cout: int, dev: DeviceRef):
        super().__init__()
        self.weight = Weight("weight", F32, [cout, cin, k], dev)
        self.bias = Weight("bias", F32, [cout], dev)

    def __call__(self, x: TensorValue) -> TensorValue:  # [B, Cin, T] -> [B, Cout, T]
        w = ops.squeeze(ops.sum(self.weight, axis=2), 2)  # [out, in]
        y = ops.permute(x, [0, 2, 1]) @ ops.transpose(w, 0, 1) + self.bias
        return ops.permute(y, [0, 2, 1])


class Stem(nn.Module):
    def __init__(self, n_mels: int, c: int, dev: DeviceRef, bug: str):
        super().__init__()
        self.bug = bug
        if bug == "conv1-same-tap":
            self.conv_a = CentreConv(3, n_mels, c, dev)
        else:
            self.conv_a = nn.Conv1D(3, n_mels, c, F32, padding=1, device=dev, has_bias=True, permute=True)
        stride = 1 if bug.startswith("conv2-decimate") else 2
        self.conv_b = nn.Conv1D(3, c, c, F32, stride=stride, padding=1, device=dev, has_bias=True, permute=True)

    def __call__(self, mel: TensorValue) -> TensorValue:  # [B, n_mels, T_in] -> [B, C, T]
        x = ops.gelu(self.conv_a(mel))
        x = self.conv_b(x)
        if self.bug.startswith("conv2-decimate"):
            return ops.gelu(x)[:, :, (1 if self.bug.endswith("odd") else 0) :: 2]
        return x if self.bug == "conv2-no-gelu" else ops.gelu(x)


class SelfAttention(nn.Module):
    def __init__(self, c: int, n_head: int, dev: DeviceRef, fused: bool, scale_twice: bool, zero_head: int | None):
        super().__init__()
        self.c, self.n_head, self.fused, self.scale_twice, self.zero_head = c, n_head, fused, scale_twice, zero_head
        if fused:
            self.proj_qkv = nn.Linear(c, 3 * c, F32, dev, has_bias=True)
        else:
            self.proj_q = nn.Linear(c, c, F32, dev, has_bias=True)
            self.proj_k = nn.Linear(c, c, F32, dev, has_bias=False)
            self.proj_v = nn.Linear(c, c, F32, dev, has_bias=True)
        self.proj_o = nn.Linear(c, c, F32, dev, has_bias=True)

    def __call__(self, x: TensorValue) -> TensorValue:
        b, t, c, h = x.shape[0], x.shape[1], self.c, self.n_head
        if self.fused:
            q, k, v = ops.split(self.proj_qkv(x), [c, c, c], axis=-1)
        else:
            q, k, v = self.proj_q(x), self.proj_k(x), self.proj_v(x)
        d = c // h
        q = ops.permute(ops.reshape(q, [b, t, h, d]), [0, 2, 1, 3])
        k = ops.permute(ops.reshape(k, [b, t, h, d]), [0, 2, 1, 3])
        v = ops.permute(ops.reshape(v, [b, t, h, d]), [0, 2, 1, 3])
        scale = d**-0.5
        if self.scale_twice:
            q = q * scale
        o = ops.softmax(q @ ops.transpose(k, 2, 3) * scale) @ v
        if self.zero_head is not None:
            keep = np.ones((1, h, 1, 1), np.float32)
            keep[0, self.zero_head] = 0.0
            o = o * ops.constant(keep, F32, device=x.device)
        return self.proj_o(ops.reshape(ops.permute(o, [0, 2, 1, 3]), [b, t, c]))


class FeedForward(nn.Module):
    def __init__(self, c: int, dev: DeviceRef, quick: bool, half: bool):
        super().__init__()
        self.quick, self.half = quick, half
        self.up = nn.Linear(c, 4 * c, F32, dev, has_bias=True)
        self.down = nn.Linear(4 * c, c, F32, dev, has_bias=True)

    def __call__(self, x: TensorValue) -> TensorValue:
        f = self.up(x)
        f = f * ops.sigmoid(f * 1.702) if self.quick else ops.gelu(f)
        if not self.half:
            return self.down(f)

        def r16(z):  # rounded to float16 and back
            return ops.cast(ops.cast(z, F16), F32)

        y = r16(f) @ ops.transpose(r16(self.down.weight), 0, 1) + r16(self.down.bias)
        return r16(y)


class Stage(nn.Module):
    def __init__(self, c: int, n_head: int, dev: DeviceRef, i: int, bug: str):
        super().__init__()
        self.from_ln = bug == "residual-from-ln" and i == RES_BLOCK
        self.norm_attn = nn.LayerNorm(c, [dev], F32)
        zero = ZERO_HEAD[1] if bug == "head-zeroed" and i == ZERO_HEAD[0] else None
        self.self_attn = SelfAttention(c, n_head, dev, bug == "qkv-fused", bug == "attn-scale-twice", zero)
        self.norm_ff = nn.LayerNorm(c, [dev], F32)
        self.ff = FeedForward(
            c, dev, bug == "quick-gelu" and i == QUICK_BLOCK, bug == "fc2-float16" and i == FP16_BLOCK
        )

    def __call__(self, x: TensorValue) -> TensorValue:
        h = self.norm_attn(x)
        x = (h if self.from_ln else x) + self.self_attn(h)
        return x + self.ff(self.norm_ff(x))


class Enc(nn.Module):
    def __init__(self, dims, dev: DeviceRef, bug: str):
        super().__init__()
        c = dims.n_audio_state
        self.bug = bug
        self.stem = Stem(dims.n_mels, c, dev, bug)
        self.pos_table = Weight("pos_table", F32, [dims.n_audio_ctx, c], dev)
        self.stages = nn.LayerList([Stage(c, dims.n_audio_head, dev, i, bug) for i in range(dims.n_audio_layer)])
        self.final_norm = nn.LayerNorm(c, [dev], F32)

    def __call__(self, mel: TensorValue) -> TensorValue:
        x = ops.permute(self.stem(mel), [0, 2, 1])  # [B, T, C]
        pos = self.pos_table
        if self.bug == "pos-shift":
            n = int(pos.shape[0])
            pos = ops.concat([pos[0:1, :], pos[0 : n - 1, :]], axis=0)
        x = x + pos
        for stage in self.stages:
            x = stage(x)
        if self.bug != "no-ln-post":
            x = self.final_norm(x)
        return x * SCALE if self.bug == "out-scaled" else x


class NNPort(nn.Module):
    def __init__(self, dims, bug: str | None = None, dev: DeviceRef | None = None):
        super().__init__()
        self.enc = Enc(dims, dev or DeviceRef.CPU(), _bug(bug))

    def __call__(self, mel: TensorValue) -> TensorValue:
        return self.enc(mel)


_RENAME = {
    "attn_ln": "norm_attn",
    "attn.query": "self_attn.proj_q",
    "attn.key": "self_attn.proj_k",
    "attn.value": "self_attn.proj_v",
    "attn.out": "self_attn.proj_o",
    "mlp_ln": "norm_ff",
    "mlp.0": "ff.up",
    "mlp.2": "ff.down",
}


def nn_weights(model, port: NNPort) -> dict[str, np.ndarray]:
    """the checkpoint under this port's names (the user's own loader)."""
    w, out = encoder_arrays(model), {}
    for name, a in w.items():
        if name.startswith("conv"):
            out[f"enc.stem.conv_{'a' if name[4] == '1' else 'b'}.{name.split('.')[1]}"] = a
        elif name == "positional_embedding":
            out["enc.pos_table"] = a
        elif name.startswith("ln_post."):
            out[f"enc.final_norm.{name.split('.')[1]}"] = a
        else:
            _, i, rest = name.split(".", 2)
            mod, kind = rest.rsplit(".", 1)
            out[f"enc.stages.{i}.{_RENAME[mod]}.{kind}"] = a
    if port.enc.bug == "qkv-fused":
        for i in range(model.dims.n_audio_layer):
            p = f"enc.stages.{i}.self_attn."
            out[p + "proj_qkv.weight"] = np.concatenate([out.pop(p + f"proj_{n}.weight") for n in "qkv"])
            bq, bv = out.pop(p + "proj_q.bias"), out.pop(p + "proj_v.bias")
            out[p + "proj_qkv.bias"] = np.concatenate([bq, np.zeros_like(bq), bv])
    return out
