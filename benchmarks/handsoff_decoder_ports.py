"""Buggy decoder ports for scoring whisperdiff's hands-off decoder alignment (benchmarks/handsoff_decoder.py).

A decoder plugin (capture/plugin.py, PluginDecoderRunner): Hugging Face transformers' `WhisperDecoder`, built
from a `WhisperConfig` for the model's dims, loaded from openai-whisper's state dict through its own name map,
run in eval mode under torch.no_grad with its own KV cache. It never calls `record`: it only returns logits,
so whatever whisperdiff knows about its inside it has to find by itself. The transformers module is kept as
`.decoder`.

    WD_HF_DECODER_BUG=NAME whisperdiff trace-decoder --impl benchmarks/handsoff_decoder_ports.py:make \\
        --tokens-from REF -o OUT
    python benchmarks/handsoff_decoder_ports.py --selfcheck       # every variant against openai-whisper's logits

The variant comes from WD_HF_DECODER_BUG (unset or "clean": clean). Each bug is made the way a porter would
make it: in the weights (the name map), the config, or a submodule's forward (replaced or wrapped), never by
writing values anywhere but the module's own dataflow.

BUGS[name]: op = the canonical decoder op (`whisperdiff ops --decoder`) where the error first appears (None:
clean); position = the first token position (0-based over prompt + forced tokens) where it appears at that op,
None where it appears from the prompt step on with no structural reason for a later position (and for ops on
the audio-frame axis); alternates = other ops that are a fair first divergence (e.g. `attn.wv` where the port's
attention never materialises the probabilities). For tiny.en and the shipped clip the prompt is 2 tokens
(<|startoftranscript|>, <|notimestamps|>: positions 0-1); position 2 is the first one-token cached step.

Written against transformers 5.x (pinned 5.24.0 in constraints.txt): `WhisperAttention.forward(hidden_states,
key_value_states, cache, attention_mask, ...)` and `ALL_ATTENTION_FUNCTIONS`.
"""

from __future__ import annotations

import math
import os
import re
import types

import numpy as np
import torch

# name -> what the port does wrong, and where whisperdiff should say it first goes wrong
BUGS: dict[str, dict] = {
    "clean": dict(op=None, position=None, alternates=[], what="transformers' WhisperDecoder, SDPA attention"),
    "clean-eager": dict(
        op=None, position=None, alternates=[], what="attn_implementation='eager': probabilities materialised"
    ),
    "clean-fused-qkv": dict(
        op=None,
        position=None,
        alternates=[],
        what="self-attention q,k,v from one fused Linear (concatenated weights, zero k bias), then split",
    ),
    "clean-recompute": dict(
        op=None,
        position=None,
        alternates=[],
        what="no KV cache: every step reruns the whole sequence so far and returns the new positions' logits",
    ),
    "cache-off-by-one": dict(
        op="decoder.pos_embed",
        position=2,
        alternates=[],
        what="cached steps (after the prompt) take their positional row one position early",
    ),
    "attn-scale-twice": dict(
        op="decoder.blocks.0.attn.weights",
        position=1,
        alternates=["decoder.blocks.0.attn.wv"],
        what="block 0 self-attention: q pre-scaled by d_head^-0.5 and SDPA scales again (position 0 attends to "
        "one key, so its softmax is 1 whatever the scale)",
    ),
    "no-causal-mask": dict(
        op="decoder.blocks.0.attn.weights",
        position=0,
        alternates=["decoder.blocks.0.attn.wv"],
        what="every block's self-attention drops the causal mask: the prompt step attends to later prompt tokens",
    ),
    "cross-v-bias-dropped": dict(
        op="decoder.blocks.1.cross_attn.v",
        position=None,
        alternates=[],
        what="block 1 cross-attention value projection without its bias (the name map misses it)",
    ),
    "gelu-tanh": dict(
        op="decoder.blocks.0.mlp.gelu",
        position=None,
        alternates=[],
        what="activation_function='gelu_new': tanh-approximate GELU in every block's MLP",
    ),
    "fc2-float16": dict(
        op="decoder.blocks.2.mlp.fc2",
        position=None,
        alternates=[],
        what="block 2 fc2 computed in float16 (input, weight, bias and output rounded)",
    ),
    "head-zeroed": dict(
        op="decoder.blocks.1.attn.wv",
        position=None,
        alternates=[],
        what="block 1 self-attention: head 3 of softmax(qk)@v zeroed before the out projection",
    ),
    "cross-residual-dropped": dict(
        op="decoder.blocks.2.cross_attn_residual",
        position=None,
        alternates=["decoder.blocks.2.mlp_ln"],
        what="block 2: the cross-attention output replaces the stream (no residual add)",
    ),
    "ln-post-eps": dict(
        op="decoder.ln",
        position=None,
        alternates=[],
        what="final layer norm with eps 1e-2 instead of 1e-5",
    ),
    "logits-scaled": dict(
        op="decoder.logits",
        position=None,
        alternates=[],
        what="logits multiplied by 0.5 after the tied projection",
    ),
    "cache-k-stale": dict(
        op="decoder.blocks.1.attn.weights",
        position=2,
        alternates=["decoder.blocks.1.attn.wv"],
        what="block 1 self-attention key cache: the prompt's keys are right, each new token stores the previous "
        "step's key (its own k projection is right)",
    ),
    "cross-ln-swapped": dict(
        op="decoder.blocks.1.attn_ln",
        position=None,
        alternates=[],
        what="block 1: the name map swaps attn_ln and cross_attn_ln",
    ),
    "embed-scaled": dict(
        op="decoder.tok_embed",
        position=None,
        alternates=[],
        what="token embedding multiplied by sqrt(d_model) (BART-style scale_embedding; "
        "transformers' WhisperDecoder ignores the config flag, so the port applies it itself)",
    ),
    "cross-kv-layer0": dict(
        op="decoder.blocks.1.cross_attn.k",
        position=None,
        alternates=["decoder.blocks.1.cross_attn.v", "decoder.blocks.1.cross_attn.wv"],
        what="every cross-attention uses cache slot 0 (layer_idx not passed): blocks 1-3 reuse block 0's "
        "cross-attention K/V, their own k/v projections never run",
    ),
    "fc1-bias-unloaded": dict(
        op="decoder.blocks.3.mlp.fc1",
        position=None,
        alternates=[],
        what="block 3 fc1 bias missing from the name map (left at transformers' init, zeros)",
    ),
    "attn-out-transposed": dict(
        op="decoder.blocks.0.attn.out",
        position=None,
        alternates=[],
        what="block 0 self-attention out projection weight loaded transposed",
    ),
}

# openai-whisper's names inside a decoder block -> transformers' WhisperDecoderLayer
BLOCK_NAMES = {
    "attn_ln": "self_attn_layer_norm",
    "attn.query": "self_attn.q_proj",
    "attn.key": "self_attn.k_proj",
    "attn.value": "self_attn.v_proj",
    "attn.out": "self_attn.out_proj",
    "cross_attn_ln": "encoder_attn_layer_norm",
    "cross_attn.query": "encoder_attn.q_proj",
    "cross_attn.key": "encoder_attn.k_proj",
    "cross_attn.value": "encoder_attn.v_proj",
    "cross_attn.out": "encoder_attn.out_proj",
    "mlp_ln": "final_layer_norm",
    "mlp.0": "fc1",
    "mlp.2": "fc2",
}
TOP_NAMES = {
    "token_embedding.weight": "embed_tokens.weight",
    "positional_embedding": "embed_positions.weight",
    "ln.weight": "layer_norm.weight",
    "ln.bias": "layer_norm.bias",
}


def bug_name() -> str:
    bug = os.environ.get("WD_HF_DECODER_BUG", "").strip() or "clean"
    if bug not in BUGS:
        raise ValueError(f"WD_HF_DECODER_BUG={bug!r} is no variant of this port; one of {', '.join(BUGS)}")
    return bug


def hf_state_dict(state_dict, bug: str = "clean") -> dict[str, torch.Tensor]:
    """openai-whisper's decoder parameters under transformers' names (float32), with the weight bugs applied."""
    out = {}
    for name, value in state_dict.items():
        if not name.startswith("decoder."):
            continue
        name = name[len("decoder.") :]
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", name)
        if m:
            block, part, kind = int(m[1]), m[2], m[3]
            if bug == "cross-ln-swapped" and block == 1 and part in ("attn_ln", "cross_attn_ln"):
                part = {"attn_ln": "cross_attn_ln", "cross_attn_ln": "attn_ln"}[part]
            if bug == "cross-v-bias-dropped" and (block, part, kind) == (1, "cross_attn.value", "bias"):
                continue
            if bug == "fc1-bias-unloaded" and (block, part, kind) == (3, "mlp.0", "bias"):
                continue
            target = f"layers.{block}.{BLOCK_NAMES[part]}.{kind}"
        else:
            target = TOP_NAMES[name]
        value = value.detach().to(torch.float32).clone()
        if bug == "attn-out-transposed" and target == "layers.0.self_attn.out_proj.weight":
            value = value.T.contiguous()
        out[target] = value
    return out


# ------------------------------------------------------------------------------------------------
# the self-attention a porter rewrites (transformers' WhisperAttention.forward, self-attention only)
# ------------------------------------------------------------------------------------------------


def _self_attention_forward(
    self, hidden_states, key_value_states=None, cache=None, attention_mask=None, output_attentions=False, **kwargs
):
    """WhisperAttention.forward for self-attention, as transformers 5.x writes it, with the port's changes
    (self.port: fused_qkv, scale_twice, zero_head, stale_k)."""
    from transformers.cache_utils import EncoderDecoderCache
    from transformers.models.whisper.modeling_whisper import ALL_ATTENTION_FUNCTIONS, eager_attention_forward

    if key_value_states is not None:
        raise RuntimeError("this forward replaces a self-attention only")
    cache = cache if cache is not None else kwargs.pop("past_key_values", None)
    port = self.port
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, self.head_dim)
    if port.get("fused_qkv"):
        q, k, v = self.qkv_proj(hidden_states).split(self.embed_dim, dim=-1)
    else:
        q, k, v = self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)
    query_states = (q * self.scaling).view(hidden_shape).transpose(1, 2).contiguous()
    key_states = k.view(hidden_shape).transpose(1, 2).contiguous()
    value_states = v.view(hidden_shape).transpose(1, 2).contiguous()
    if isinstance(cache, EncoderDecoderCache):
        cache = cache.self_attention_cache
    if port.get("stale_k"):
        # the bug: a new token's cache slot gets the previous step's key, not its own
        cached = cache.get_seq_length(self.layer_idx) if cache is not None else 0
        own = key_states
        if cached > 0 and self._prev_key is not None:
            key_states = torch.cat([self._prev_key, own[:, :, :-1]], dim=2)
        self._prev_key = own[:, :, -1:].clone()
    if cache is not None:
        key_states, value_states = cache.update(key_states, value_states, self.layer_idx, kwargs=kwargs)
    attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
    attn_output, attn_weights = attention(
        self,
        query_states,
        key_states,
        value_states,
        attention_mask,
        dropout=0.0,
        scaling=self.scaling if port.get("scale_twice") else 1.0,  # the bug: SDPA scales q a second time
        output_attentions=output_attentions,
        **kwargs,
    )
    if port.get("zero_head") is not None:  # [B, L, H, D] after the attention's transpose
        attn_output = attn_output.clone()
        attn_output[:, :, port["zero_head"]] = 0
    attn_output = attn_output.reshape(*input_shape, -1).contiguous()
    return self.out_proj(attn_output), attn_weights


def _rewrite_self_attention(attn, **port) -> None:
    attn.port = port
    attn._prev_key = None
    if port.get("fused_qkv"):
        c = attn.embed_dim
        fused = torch.nn.Linear(c, 3 * c, bias=True)
        with torch.no_grad():
            fused.weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
            fused.bias.copy_(torch.cat([attn.q_proj.bias, torch.zeros(c), attn.v_proj.bias]))
        attn.qkv_proj = fused
        del attn.q_proj, attn.k_proj, attn.v_proj
    attn.forward = types.MethodType(_self_attention_forward, attn)


def _no_causal_mask(attn) -> None:
    """The port calls attention with no mask and is_causal off (the prompt step sees later prompt tokens)."""
    inner = attn.forward
    attn.is_causal = False

    def forward(*args, **kwargs):
        kwargs["attention_mask"] = None
        if len(args) > 3:  # (hidden_states, key_value_states, cache, attention_mask, ...)
            args = (*args[:3], None, *args[4:])
        return inner(*args, **kwargs)

    attn.forward = forward


def _layer_forward_no_cross_residual(
    self, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None, **kwargs
):
    """WhisperDecoderLayer.forward where the cross-attention output replaces the stream."""
    cache = kwargs.pop("cache", None)
    if cache is None:
        cache = kwargs.pop("past_key_values", None)
    kwargs.pop("use_cache", None)
    residual = hidden_states
    hidden_states, _ = self.self_attn(
        self.self_attn_layer_norm(hidden_states), cache=cache, attention_mask=attention_mask, **kwargs
    )
    hidden_states = residual + hidden_states
    hidden_states, _ = self.encoder_attn(
        self.encoder_attn_layer_norm(hidden_states),
        key_value_states=encoder_hidden_states,
        attention_mask=encoder_attention_mask,
        cache=cache,
        **kwargs,
    )  # the bug: no `residual + ...` here
    residual = hidden_states
    hidden_states = self.fc2(self.activation_fn(self.fc1(self.final_layer_norm(hidden_states))))
    return residual + hidden_states


def _float16_linear(linear) -> None:
    def forward(x):
        return torch.nn.functional.linear(x.half(), linear.weight.half(), linear.bias.half()).float()

    linear.forward = forward


def _scaled_embedding(embedding, scale: float) -> None:
    inner = embedding.forward

    def forward(ids):
        return inner(ids) * scale

    embedding.forward = forward


# ------------------------------------------------------------------------------------------------
# the port
# ------------------------------------------------------------------------------------------------


class HFWhisperDecoderPort:
    """start(features) / step(tokens) -> logits (capture/plugin.py's decoder plugin interface)."""

    def __init__(self, model, bug: str | None = None, device: str = "cpu"):
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperDecoder

        self.bug = bug = bug or bug_name()
        self.device = torch.device(device)
        d = model.dims
        config = WhisperConfig(
            vocab_size=d.n_vocab,
            d_model=d.n_text_state,
            decoder_layers=d.n_text_layer,
            decoder_attention_heads=d.n_text_head,
            decoder_ffn_dim=4 * d.n_text_state,
            encoder_layers=d.n_audio_layer,
            encoder_attention_heads=d.n_audio_head,
            encoder_ffn_dim=4 * d.n_audio_state,
            num_mel_bins=d.n_mels,
            max_target_positions=d.n_text_ctx,
            max_source_positions=d.n_audio_ctx,
            activation_function="gelu_new" if bug == "gelu-tanh" else "gelu",
            scale_embedding=False,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
            attn_implementation="eager" if bug == "clean-eager" else "sdpa",
        )
        decoder = WhisperDecoder(config)
        state = hf_state_dict(model.state_dict, bug)
        missing, unexpected = decoder.load_state_dict(state, strict=False)
        allowed = {
            "cross-v-bias-dropped": {"layers.1.encoder_attn.v_proj.bias"},
            "fc1-bias-unloaded": {"layers.3.fc1.bias"},
        }.get(bug, set())
        if unexpected or set(missing) - allowed:
            raise RuntimeError(f"name map: missing {sorted(set(missing) - allowed)}, unexpected {sorted(unexpected)}")
        with torch.no_grad():
            for name in missing:  # what the name map dropped stays at transformers' init: zero biases
                decoder.get_parameter(name).zero_()
        self.decoder = decoder.to(self.device).eval()
        self._apply_module_bugs(bug)
        self.features = self.cache = None
        self.position = 0
        self.tokens: list[int] = []

    def _apply_module_bugs(self, bug: str) -> None:
        layers = self.decoder.layers
        if bug == "clean-fused-qkv":
            for layer in layers:
                _rewrite_self_attention(layer.self_attn, fused_qkv=True)
        elif bug == "attn-scale-twice":
            _rewrite_self_attention(layers[0].self_attn, scale_twice=True)
        elif bug == "head-zeroed":
            _rewrite_self_attention(layers[1].self_attn, zero_head=3)
        elif bug == "cache-k-stale":
            _rewrite_self_attention(layers[1].self_attn, stale_k=True)
        elif bug == "no-causal-mask":
            for layer in layers:
                _no_causal_mask(layer.self_attn)
        elif bug == "fc2-float16":
            _float16_linear(layers[2].fc2)
        elif bug == "cross-residual-dropped":
            layers[2].forward = types.MethodType(_layer_forward_no_cross_residual, layers[2])
        elif bug == "ln-post-eps":
            self.decoder.layer_norm.eps = 1e-2
        elif bug == "embed-scaled":
            _scaled_embedding(self.decoder.embed_tokens, math.sqrt(self.decoder.config.d_model))
        elif bug == "cross-kv-layer0":
            for layer in layers:
                layer.encoder_attn.layer_idx = 0

    def start(self, features) -> None:
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        self.features = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(self.device)
        self.cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        self.position = 0
        self.tokens = []
        for layer in self.decoder.layers:
            if hasattr(layer.self_attn, "_prev_key"):
                layer.self_attn._prev_key = None

    def step(self, tokens, record=None):
        """The next L tokens -> logits [1, L, n_vocab]. `record` is never called: the port names nothing."""
        ids = torch.from_numpy(np.asarray(tokens, dtype=np.int64)).to(self.device)
        n = ids.shape[1]
        with torch.no_grad():
            if self.bug == "clean-recompute":  # no cache: the whole sequence so far, every step
                self.tokens.extend(int(t) for t in ids[0])
                every = torch.tensor([self.tokens], dtype=torch.int64, device=self.device)
                hidden = self.decoder(
                    input_ids=every,
                    encoder_hidden_states=self.features,
                    position_ids=torch.arange(every.shape[1], device=self.device)[None],
                    use_cache=False,
                ).last_hidden_state[:, -n:]
            else:
                cache_position = torch.arange(self.position, self.position + n, device=self.device)
                position_ids = cache_position[None]
                if self.bug == "cache-off-by-one" and self.position > 0:
                    position_ids = position_ids - 1
                hidden = self.decoder(
                    input_ids=ids,
                    encoder_hidden_states=self.features,
                    cache=self.cache,
                    use_cache=True,
                    position_ids=position_ids,
                    cache_position=cache_position,
                ).last_hidden_state
            logits = hidden @ self.decoder.embed_tokens.weight.T
            if self.bug == "logits-scaled":
                logits = logits * 0.5
        self.position += n
        return logits

    def close(self) -> None:
        self.features = self.cache = None


def make(model, device="cpu", dtype="float32"):
    """The plugin factory: the variant named by WD_HF_DECODER_BUG."""
    if dtype != "float32":
        raise ValueError(f"this port runs float32 only, not {dtype}")
    return HFWhisperDecoderPort(model, device=device)


# ------------------------------------------------------------------------------------------------
# --selfcheck: every variant through whisperdiff's plugin path, logits against openai-whisper's
# ------------------------------------------------------------------------------------------------


def selfcheck(work: str = "/tmp/hd", names: list[str] | None = None, clean_limit: float = 1e-4) -> int:
    """Each variant through `whisperdiff trace-decoder --impl THIS:make` and `compare --json` against openai-whisper:
    a clean rewrite must stay within clean_limit (logits rel L2) with no divergence; a bug must change the logits
    (rel L2 > clean_limit / 10, well above the clean rewrites' ~1e-6) and, where compare flags the logits, not
    before its declared position. Today a plugin trace holds the logits only, so compare's first divergence is
    (decoder.logits, position)."""
    import json
    import shutil
    from pathlib import Path

    from port_selfcheck import logits_rel_l2, reference, run

    work, ref, exe = reference(work)
    me = Path(__file__).resolve()
    rows, ok_all = [], True
    for name in names or list(BUGS):
        spec = BUGS[name]
        out = work / name
        shutil.rmtree(out, ignore_errors=True)
        env = dict(os.environ, WD_HF_DECODER_BUG=name)
        run([exe, "trace-decoder", "--impl", f"{me}:make", "--tokens-from", str(ref), "-o", str(out)], env)
        proc = run([exe, "compare", str(ref), str(out), "--json"])
        (work / f"{name}.json").write_text(proc.stdout)
        doc = json.loads(proc.stdout)
        dec = doc.get("decoder") or {}
        first = dec.get("first_divergence") or {}
        rel, per = logits_rel_l2(ref, out)
        top1 = (dec.get("logits") or {}).get("top1_agreement")
        pos = first.get("position")
        if spec["op"] is None:
            ok, note = rel <= clean_limit and not first, ""
        else:
            ok = rel > clean_limit / 10 and (not first or (pos is not None and pos >= (spec["position"] or 0)))
            note = "" if first else "changes the logits, below compare's limits there"
        ok_all &= ok
        rows.append((name, spec["op"], spec["position"], rel, first.get("op"), pos, top1, per, ok, note))
    head = f"{'variant':24} {'declared op':38} {'pos':>4} {'logits relL2':>12} {'1st div':>9} {'top1':>6}"
    print(head)
    print("-" * len(head))
    for name, op, position, rel, first_op, pos, top1, _, ok, note in rows:
        where = "-" if first_op is None else ("logits" if first_op == "decoder.logits" else first_op) + f"@{pos}"
        print(
            f"{name:24} {op or '(clean)':38} {'-' if position is None else position:>4} {rel:12.3e} {where:>9} "
            f"{'-' if top1 is None else f'{top1:.3f}':>6}{'' if ok else '  <-- CHECK'}{'  ' + note if note else ''}"
        )
    print("\nper-position logits rel L2 (positions 0..; the prompt is positions 0-1 for tiny.en):")
    for name, *_, per, _ok, _note in rows:
        print(f"  {name:24} " + " ".join(f"{x:.0e}" if x else "0" for x in per))
    return 0 if ok_all else 1


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from port_selfcheck import main

    main(__doc__, BUGS, selfcheck, "/tmp/hd")
