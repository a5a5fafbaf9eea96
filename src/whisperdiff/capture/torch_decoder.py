"""The reference decoder: openai-whisper's own TextDecoder, unmodified, with its own kv_cache hooks,
tapped with forward hooks, one step at a time.

A decoder runner (runner.DecoderRunner): start(features), step(tokens, record) -> logits, close().

Where each canonical op is read: torch_hooks.hook_table, derived from names.py, the same table as the
encoder's (decoder.logits: what TextDecoder.forward returns). Our k and v hooks run before the kv_cache
hooks, so they see this step's projections (cross-attention K/V run once: the first step).
blocks.i.*attn.weights is computed before *attn.out runs: softmax((q s)(k s)^T + causal mask) in float32
from this step's q and the cached k, as whisper's non-SDPA path.
"""

from __future__ import annotations

import numpy as np

from whisperdiff.capture.runner import Record
from whisperdiff.capture.torch_hooks import IN, hook_table
from whisperdiff.names import DECODER_BLOCK_OPS, DECODER_INPUT, decoder_op_specs


class TorchDecoderRunner:
    impl = "torch"
    takes_faults = False  # decoder faults are run-time switches of the MAX decoder graph

    def __init__(self, model, taps: list[str] | None = None, faults=(), device: str = "cpu"):
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
        logits = logits.float().numpy()  # recorded by the hook on the decoder itself (hook_table)
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

        ops = [s.name for s in decoder_op_specs(self.loaded.dims, 1) if s.name != DECODER_INPUT]
        for hook in hook_table(ops, DECODER_BLOCK_OPS, prefix="decoder."):
            if hook.compute == "weights":
                if self.wants(hook.op):
                    attn = dec.get_submodule(hook.module.rsplit(".", 1)[0])
                    handles.extend(self._attention_probabilities(attn, hook.op, causal=".attn." in hook.op))
                continue
            tap(dec.get_submodule(hook.module), hook.op, pre=hook.side == IN)
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
