"""Hands-off port style `torch` (issue 22): transformers' WhisperEncoder with tiny.en's weights (loaded as
benchmarks/heldout_ports.py does), the bugs of benchmarks/handsoff_ports.py (BUGS) planted by monkeypatching
forwards. No hooks, no names: whisperdiff is to find the ops by itself.

    from handsoff_ports_torch import torch_port
    enc = torch_port(whisperdiff.load_model(), bug="quick-gelu")     # a torch.nn.Module
    y = enc(torch.from_numpy(mel)).last_hidden_state                  # [1, 1500, 384]
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from handsoff_ports import FP16_BLOCK, QUICK_BLOCK, RES_BLOCK, SCALE, ZERO_HEAD, _bug
from heldout_ports import _config, hf_state_dict


def torch_port(model, bug: str | None = None):
    """transformers.WhisperEncoder (eager attention) with the model's weights and `bug` planted."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    bug = _bug(bug)
    cfg = _config(model.dims, "encoder")
    cfg._attn_implementation = "eager"
    enc = WhisperEncoder(cfg).float()
    enc.load_state_dict(hf_state_dict(model.state_dict, "encoder", torch.float32), strict=True)
    enc.eval()
    _plant(enc, bug)
    return enc


def _plant(enc, bug: str) -> None:
    L = enc.layers
    if bug in ("out-scaled", "no-ln-post", "pos-shift", "conv2-decimate", "conv2-decimate-odd", "conv2-no-gelu"):
        if bug.startswith("conv2-decimate"):
            enc.conv2.stride = (1,)
        enc.forward = types.MethodType(_encoder_forward(bug), enc)
    elif bug == "conv1-same-tap":
        conv = enc.conv1
        conv.forward = lambda x: F.conv1d(x, conv.weight.sum(-1, keepdim=True), conv.bias)
    elif bug in ("head-zeroed", "attn-scale-twice", "qkv-fused"):
        for i, layer in enumerate(L):
            if bug == "head-zeroed" and i != ZERO_HEAD[0]:
                continue
            layer.self_attn.forward = _attention_forward(layer.self_attn, bug)
    elif bug == "quick-gelu":
        L[QUICK_BLOCK].activation_fn.forward = lambda x: x * torch.sigmoid(1.702 * x)
    elif bug == "fc2-float16":
        fc = L[FP16_BLOCK].fc2
        fc.forward = lambda x: F.linear(x.half(), fc.weight.half(), fc.bias.half()).float()
    elif bug == "residual-from-ln":
        L[RES_BLOCK].forward = _layer_forward_residual_from_ln(L[RES_BLOCK])


def _encoder_forward(bug: str):
    from transformers.modeling_outputs import BaseModelOutput

    def forward(self, input_features, attention_mask=None, **kwargs):
        x = F.gelu(self.conv1(input_features))
        x = self.conv2(x)
        if bug.startswith("conv2-decimate"):  # stride 1, GELU, then every other frame
            x = F.gelu(x)[..., (1 if bug.endswith("odd") else 0) :: 2]
        elif bug != "conv2-no-gelu":
            x = F.gelu(x)
        x = x.permute(0, 2, 1)
        pos = self.embed_positions.weight
        if bug == "pos-shift":
            pos = torch.cat([pos[:1], pos[:-1]])
        x = x + pos
        for layer in self.layers:
            x = layer(x, None)
        if bug != "no-ln-post":
            x = self.layer_norm(x)
        if bug == "out-scaled":
            x = x * SCALE
        return BaseModelOutput(last_hidden_state=x)

    return forward


def _attention_forward(attn, bug: str):
    def forward(hidden_states, attention_mask=None, **kwargs):
        b, t, c = hidden_states.shape
        h, d = attn.num_heads, attn.head_dim
        if bug == "qkv-fused":
            w = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
            bias = torch.cat([attn.q_proj.bias, torch.zeros_like(attn.q_proj.bias), attn.v_proj.bias])
            q, k, v = F.linear(hidden_states, w, bias).split(c, dim=-1)
        else:
            q, k, v = attn.q_proj(hidden_states), attn.k_proj(hidden_states), attn.v_proj(hidden_states)
        q, k, v = (z.view(b, t, h, d).transpose(1, 2) for z in (q, k, v))
        scale = d**-0.5
        if bug == "attn-scale-twice":
            q = q * scale
        p = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)
        o = p @ v
        if bug == "head-zeroed":
            o = o.clone()
            o[:, ZERO_HEAD[1]] = 0
        out = attn.out_proj(o.transpose(1, 2).reshape(b, t, c))
        return out, None

    return forward


def _layer_forward_residual_from_ln(layer):
    def forward(hidden_states, attention_mask=None, **kwargs):
        h = layer.self_attn_layer_norm(hidden_states)
        a, _ = layer.self_attn(hidden_states=h, attention_mask=attention_mask, **kwargs)
        x = h + a  # the residual takes the layer-normed input
        return x + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(x))))

    return forward
