"""The reference: openai-whisper's own AudioEncoder, unmodified, tapped with forward hooks.

Where each canonical op is read: torch_hooks.hook_table, derived from names.py. Nothing in the forward pass
is replaced, so the encoder's numerics are exactly those of `model.encoder(mel)`. Two ops are computed from
what a hook sees: conv2.gelu is F.gelu of conv2's output, the same call on the same tensor that
AudioEncoder.forward makes next (bitwise the same values); blocks.i.attn.weights is softmax((q s)(k s)^T),
s = d_head^-0.25, recomputed in float32 from the tapped q and k before attn.out runs, as openai-whisper's
non-SDPA path does (the encoder itself keeps its SDPA path, so its output is untouched).
"""

from __future__ import annotations

import time

import numpy as np

from whisperdiff.capture.runner import Record
from whisperdiff.capture.torch_hooks import IN, hook_table
from whisperdiff.errors import WhisperdiffError
from whisperdiff.names import BLOCK_OPS, op_names

DTYPES = ("float32", "float64", "float16", "bfloat16")  # float64: the noise-floor reference (`whisperdiff tolerances`)


def resolve_torch_device(device: str) -> str:
    import torch

    device = (device or "auto").lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device in ("cuda", "gpu"):
        if not torch.cuda.is_available():
            raise WhisperdiffError("no CUDA GPU is visible to torch; use --device cpu (or auto)")
        return "cuda"
    if device == "cpu":
        return "cpu"
    raise WhisperdiffError(f"unknown device {device!r} for --impl torch; use cpu, cuda or auto")


def _to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16; widening to float32 is exact
        t = t.float()
    return t.cpu().numpy()


class TorchRunner:
    """Runs openai-whisper's encoder and records every requested canonical op."""

    impl = "torch"
    takes_faults = False  # faults are run-time switches of the MAX graphs

    def __init__(
        self,
        model,
        device: str = "auto",
        dtype: str = "float32",
        taps: list[str] | None = None,
        faults=(),
        patchable: bool = True,  # torch hooks can always patch
    ):
        import torch

        if dtype not in DTYPES:
            raise WhisperdiffError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
        self.device = resolve_torch_device(device)
        self.dtype = dtype
        self.torch_dtype = getattr(torch, dtype)
        self.loaded = model
        self.taps = set(taps) if taps is not None else None
        self.encoder = model.audio_encoder(self.device, self.torch_dtype)
        # openai-whisper's LayerNorm computes in float32 (x.float()) and torch refuses float32 input with other
        # weights (on CPU, and on CUDA for bfloat16: seen on an H200). float32 LN weights: exact for half.
        self.float32_layer_norm = dtype != "float32"
        # A float32 reference is float32 throughout: cuDNN runs float32 convolutions as TF32 by default,
        # which put conv1 outside the float32 tolerances on an H200. Half runs keep torch's defaults.
        self.no_tf32 = self.device == "cuda" and dtype in ("float32", "float64")
        if self.float32_layer_norm:
            from whisper.model import LayerNorm

            for module in self.encoder.modules():
                if isinstance(module, LayerNorm):
                    module.float()

    def wants(self, name: str) -> bool:
        return self.taps is None or name in self.taps

    def facts(self) -> dict:
        import torch

        return {
            "device": self.device,
            "dtype": self.dtype,
            "threads": torch.get_num_threads(),
            "encoder": "whisper.model.AudioEncoder (unmodified, forward hooks)",
            "layer_norm_weights_float32": self.float32_layer_norm,
            **({"tf32_disabled": self.no_tf32} if self.device == "cuda" else {}),
        }

    @property
    def patch_points(self) -> list[str]:
        """Ops whose value a hook can replace without editing openai-whisper's forward: not conv2.gelu
        (computed inside AudioEncoder.forward), attn.weights (SDPA never materialises it) or
        attn_residual (the residual sum feeds mlp_ln and the block's second residual)."""
        excluded = ("mel", "conv2.gelu")
        return [
            n
            for n in op_names(self.loaded.dims)
            if n not in excluded and not n.endswith(("attn.weights", "attn_residual"))
        ]

    def run(self, mel: np.ndarray, record: Record, patch: tuple[str, np.ndarray] | None = None) -> dict:
        import torch

        if patch is not None and patch[0] not in self.patch_points:
            raise WhisperdiffError(f"the torch runner cannot patch {patch[0]!r} (see TorchRunner.patch_points)")
        x = torch.from_numpy(np.array(mel, dtype=np.float32)).to(
            self.device, self.torch_dtype
        )  # a copy: mel may be a read-only memmap
        handles = self._install_hooks(record, patch)
        flags = (torch.backends.cuda.matmul, torch.backends.cudnn) if self.no_tf32 else ()
        saved = [f.allow_tf32 for f in flags]  # global flags: off for this run, then restored
        try:
            for f in flags:
                f.allow_tf32 = False
            with torch.inference_mode():
                start = time.perf_counter()
                self.encoder(x)
                if self.device == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - start
        finally:
            for f, allowed in zip(flags, saved, strict=True):
                f.allow_tf32 = allowed
            for h in handles:
                h.remove()
        return {"encoder_seconds": seconds}

    def _install_hooks(self, record: Record, patch: tuple[str, np.ndarray] | None = None) -> list:
        import torch
        import torch.nn.functional as F

        enc, handles = self.encoder, []

        def tap(module, name, *, pre=False, fn=None):
            """Record `name` from a module's input (pre) or output, optionally through fn; replace it
            with the patch value when `name` is the patched op."""
            replace = patch is not None and patch[0] == name
            if not self.wants(name) and not replace:
                return

            def seen(t):
                if replace:
                    t = torch.from_numpy(np.array(patch[1])).to(t.device, t.dtype)  # a writable copy
                if self.wants(name):
                    record(name, _to_numpy((fn or (lambda v: v))(t)))
                return t

            def pre_hook(m, args):  # returning None keeps the module's input as it is
                t = seen(args[0])
                return (t, *args[1:]) if replace else None

            def post_hook(m, args, out):  # returning None keeps the module's output as it is
                t = seen(out)
                return t if replace else None

            handles.append(
                module.register_forward_pre_hook(pre_hook) if pre else module.register_forward_hook(post_hook)
            )

        for hook in hook_table([n for n in op_names(self.loaded.dims) if n != "mel"], BLOCK_OPS):
            if hook.compute == "weights":
                if self.wants(hook.op):
                    attn = enc.get_submodule(hook.module.rsplit(".", 1)[0])
                    handles.extend(self._attention_probabilities(attn, hook.op, record))
                continue
            fn = F.gelu if hook.compute == "gelu" else None
            tap(enc.get_submodule(hook.module), hook.op, pre=hook.side == IN, fn=fn)
        return handles

    @staticmethod
    def _attention_probabilities(attn, name: str, record: Record) -> list:
        """Side hooks that keep q and k, then compute the softmax probabilities before attn.out runs."""
        import torch

        kept = {}

        def keep(key):
            return lambda m, args, out: kept.__setitem__(key, out)

        def emit(m, args):
            q, k = kept.pop("q"), kept.pop("k")
            b, t, c = q.shape
            scale = (c // attn.n_head) ** -0.25
            qh = q.view(b, t, attn.n_head, -1).permute(0, 2, 1, 3)
            kh = k.view(b, t, attn.n_head, -1).permute(0, 2, 1, 3)
            scores = ((qh * scale) @ (kh * scale).transpose(-1, -2)).float()
            record(name, _to_numpy(torch.softmax(scores, dim=-1)))

        return [
            attn.query.register_forward_hook(keep("q")),
            attn.key.register_forward_hook(keep("k")),
            attn.out.register_forward_pre_hook(emit),
        ]
