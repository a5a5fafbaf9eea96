"""The reference decoder: openai-whisper's own TextDecoder, unmodified, with its own kv_cache hooks,
tapped with forward hooks, one step at a time.

A decoder runner (this one and max_decoder.MaxDecoderRunner) has two calls:
    start(features)            a new sequence attending to this encoder output [1, n_audio_ctx, C]
    step(tokens, record)       tokens [1, L] at the next L positions -> logits [1, L, n_vocab]; calls
                               record(op, value) with this step's value of each tapped op
decoder.py concatenates the steps along the token-position axis.

Where each canonical op is read:
    decoder.tok_embed                    hook on decoder.token_embedding
    decoder.pos_embed                    pre-hook on blocks[0] (or ln)
    blocks.i.attn_ln / cross_attn_ln / mlp_ln, q/k/v, out, mlp.*   hooks on the modules of the same name;
                                         k and v hooks run before the kv_cache hooks, so they see this step's
                                         projections (cross-attention K/V run once: the first step)
    blocks.i.*attn.weights               pre-hook on *attn.out: softmax((q s)(k s)^T + causal mask) in float32
                                         from this step's q and the cached k, as whisper's non-SDPA path
    blocks.i.*attn.wv                    pre-hook on *attn.out (its input)
    blocks.i.attn_residual               pre-hook on cross_attn_ln; cross_attn_residual: pre-hook on mlp_ln
    blocks.i.out                         hook on the block; decoder.ln: hook on decoder.ln
    decoder.logits                       what TextDecoder.forward returns
"""

from __future__ import annotations

import numpy as np

from whisperdiff.capture.runner import Record
from whisperdiff.names import decoder_block_op


class TorchDecoderRunner:
    impl = "torch"

    def __init__(self, model, taps: list[str] | None = None, faults=()):
        import torch

        if faults:
            from whisperdiff.errors import WhisperdiffError

            raise WhisperdiffError(
                "decoder faults are run-time switches of the MAX decoder; use --impl max to inject them"
            )
        self.loaded = model
        self.whisper = model.whisper_model("cpu", torch.float32)
        self.decoder = self.whisper.decoder
        self.taps = set(taps) if taps is not None else None
        self._handles, self._record, self.cache, self.xa = [], None, {}, None

    def wants(self, name: str) -> bool:
        return self.taps is None or name in self.taps

    def facts(self) -> dict:
        import torch

        return {
            "device": "cpu",
            "dtype": "float32",
            "threads": torch.get_num_threads(),
            "decoder": "whisper.model.TextDecoder (unmodified, its kv_cache hooks, forward hooks)",
        }

    def start(self, features: np.ndarray) -> None:
        import torch

        self.close()
        self.xa = torch.from_numpy(np.array(features, np.float32))
        self._handles = self._install_hooks()
        self.cache, cache_hooks = self.whisper.install_kv_cache_hooks()  # after ours: our k/v hooks see this step
        self._handles += cache_hooks
        self.length = 0

    def step(self, tokens: np.ndarray, record: Record | None = None) -> np.ndarray:
        import torch

        self._record = record
        self._step_len = tokens.shape[-1]
        with torch.inference_mode():
            logits = self.decoder(torch.from_numpy(np.asarray(tokens, np.int64)), self.xa, kv_cache=self.cache)
        logits = logits.float().numpy()
        if record is not None and self.wants("decoder.logits"):
            record("decoder.logits", logits)
        self.length += self._step_len
        return logits

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self.cache = [], {}

    def _install_hooks(self) -> list:
        dec, handles = self.decoder, []

        def emit(name, t):
            if self._record is not None and self.wants(name):
                self._record(name, t.detach().float().numpy())

        def tap(module, name, *, pre=False):
            if not self.wants(name):
                return
            if pre:
                handles.append(module.register_forward_pre_hook(lambda m, args: emit(name, args[0])))
            else:
                handles.append(module.register_forward_hook(lambda m, args, out: emit(name, out)))

        tap(dec.token_embedding, "decoder.tok_embed")
        tap(dec.blocks[0] if len(dec.blocks) else dec.ln, "decoder.pos_embed", pre=True)
        for i, block in enumerate(dec.blocks):

            def name(op, i=i):
                return decoder_block_op(i, op)

            for prefix, attn, ln in (
                ("attn", block.attn, block.attn_ln),
                ("cross_attn", block.cross_attn, block.cross_attn_ln),
            ):
                tap(ln, name(f"{prefix}_ln"))
                tap(attn.query, name(f"{prefix}.q"))
                tap(attn.key, name(f"{prefix}.k"))
                tap(attn.value, name(f"{prefix}.v"))
                if self.wants(name(f"{prefix}.weights")):
                    handles.extend(
                        self._attention_probabilities(attn, name(f"{prefix}.weights"), causal=prefix == "attn")
                    )
                tap(attn.out, name(f"{prefix}.wv"), pre=True)
                tap(attn.out, name(f"{prefix}.out"))
            tap(block.cross_attn_ln, name("attn_residual"), pre=True)
            tap(block.mlp_ln, name("cross_attn_residual"), pre=True)
            tap(block.mlp_ln, name("mlp_ln"))
            tap(block.mlp[0], name("mlp.fc1"))
            tap(block.mlp[1], name("mlp.gelu"))
            tap(block.mlp[2], name("mlp.fc2"))
            tap(block, name("out"))
        tap(dec.ln, "decoder.ln")
        return handles

    def _attention_probabilities(self, attn, name: str, causal: bool) -> list:
        """Keep this step's q; before attn.out runs, softmax over every key the step attends to: the
        cache (self-attention: earlier positions and this step's; cross: the encoder output's)."""
        import torch

        kept = {}

        def emit(m, args):
            q, k = kept.pop("q"), self.cache[attn.key]
            (b, n, c), h = q.shape, attn.n_head
            scale = (c // h) ** -0.25
            qh = q.view(b, n, h, -1).permute(0, 2, 1, 3)
            kh = k.view(b, k.shape[1], h, -1).permute(0, 2, 1, 3)
            scores = ((qh * scale) @ (kh * scale).transpose(-1, -2)).float()
            if causal:  # query i sits at position length + i and sees keys 0 .. length + i
                allowed = torch.arange(k.shape[1])[None, :] <= self.length + torch.arange(n)[:, None]
                scores = scores.masked_fill(~allowed, float("-inf"))
            if self._record is not None:
                self._record(name, torch.softmax(scores, dim=-1).numpy())

        return [
            attn.query.register_forward_hook(lambda m, args, out: kept.__setitem__("q", out)),
            attn.out.register_forward_pre_hook(emit),
        ]
