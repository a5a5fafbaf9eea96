"""A decoder plugin as a user writes one (capture/plugin.py): transformers' WhisperDecoder with its own KV
cache, the checkpoint loaded by name. WD_DECODER_BUG=cache-off-by-one makes every cached step see its
positional embedding one position early, a bug that shows from the first cached step on."""

from __future__ import annotations

import os
import re

import numpy as np
import torch

BLOCK = {
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


def hf_decoder_state(state_dict) -> dict:
    out = {}
    for name, value in state_dict.items():
        if not name.startswith("decoder."):
            continue
        name = name.removeprefix("decoder.")
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", name)
        if m:
            name = f"layers.{m[1]}.{BLOCK[m[2]]}.{m[3]}"
        else:
            name = {
                "positional_embedding": "embed_positions.weight",
                "token_embedding.weight": "embed_tokens.weight",
                "ln.weight": "layer_norm.weight",
                "ln.bias": "layer_norm.bias",
            }[name]
        out[name] = value.float()
    return out


class HFDecoder:
    def __init__(self, model):
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperDecoder

        d = model.dims
        config = WhisperConfig(
            vocab_size=d.n_vocab,
            decoder_layers=d.n_text_layer,
            decoder_attention_heads=d.n_text_head,
            d_model=d.n_text_state,
            decoder_ffn_dim=4 * d.n_text_state,
            max_target_positions=d.n_text_ctx,
            max_source_positions=d.n_audio_ctx,
            activation_function="gelu",
            scale_embedding=False,
        )
        self.decoder = WhisperDecoder(config).eval()
        self.decoder.load_state_dict(hf_decoder_state(model.state_dict), strict=False)
        self.bug = os.environ.get("WD_DECODER_BUG")

    def start(self, features):
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        self.features = torch.from_numpy(np.asarray(features, np.float32))
        self.cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        self.position = 0

    def step(self, tokens, record=None):
        ids = torch.from_numpy(np.asarray(tokens, np.int64))
        positions = torch.arange(self.position, self.position + ids.shape[1])[None]
        if self.bug == "cache-off-by-one" and self.position > 0:
            positions = positions - 1
        with torch.no_grad():
            out = self.decoder(
                input_ids=ids,
                encoder_hidden_states=self.features,
                past_key_values=self.cache,
                use_cache=True,
                position_ids=positions,
                cache_position=torch.arange(self.position, self.position + ids.shape[1]),
            )
            logits = out.last_hidden_state @ self.decoder.embed_tokens.weight.T
        self.position += ids.shape[1]
        if record is not None:
            record("decoder.ln", out.last_hidden_state)
        return logits


def make(model, device="cpu", dtype="float32"):
    return HFDecoder(model)


def broken(model, device="cpu", dtype="float32"):
    """A factory whose result is no decoder."""
    return object()


class _Hidden:
    """The same decoder behind a plain object that holds no torch module as an attribute."""

    def __init__(self, model):
        self.parts = {"decoder": HFDecoder(model)}

    def start(self, features):
        self.parts["decoder"].start(features)

    def step(self, tokens, record=None):
        return self.parts["decoder"].step(tokens, record)


def hidden(model, device="cpu", dtype="float32"):
    return _Hidden(model)


class _NoCache(HFDecoder):
    """The same decoder with no KV cache: every step runs the whole sequence so far and returns the logits of
    the positions it was fed."""

    def start(self, features):
        super().start(features)
        self.seen = np.zeros((1, 0), np.int64)

    def step(self, tokens, record=None):
        self.seen = np.concatenate([self.seen, np.asarray(tokens, np.int64)], axis=1)
        ids = torch.from_numpy(self.seen)
        with torch.no_grad():
            out = self.decoder(input_ids=ids, encoder_hidden_states=self.features, use_cache=False)
            logits = out.last_hidden_state @ self.decoder.embed_tokens.weight.T
        return logits[:, -np.shape(tokens)[1] :]


def no_cache(model, device="cpu", dtype="float32"):
    return _NoCache(model)
