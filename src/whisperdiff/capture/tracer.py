"""Trace any implementation: NumPy, JAX, ONNX Runtime, C++ through bindings, a port of your own.

    import whisperdiff as wd

    with wd.Tracer("traces/mine-tiny.en-speech", impl="mine", model="default") as t:
        mel = t.mel                                  # Whisper's own log-mel of the input, [1, 80, 3000]
        # or your own frontend's: t.record("mel", my_mel) first, and it is what `mel` holds
        for name, value in my_encoder(mel):          # canonical names: `whisperdiff ops`
            t.record(name, value)

The trace has the same format and provenance as `whisperdiff trace`: model id and weights sha256
(from `model`), input path, sha256 and log-mel digest (from `audio`, default the shipped clip),
library versions, the implementation's name. `compare` and `check` then treat it like any other.
Shapes of canonical ops are checked as they are recorded (another layout of the same axes is fine:
compare converts it); a wrong size is an error at once, not a confusing comparison later.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from whisperdiff.errors import WhisperdiffError
from whisperdiff.store.manifest import build_manifest
from whisperdiff.store.trace import TraceWriter, load_trace


class Tracer:
    def __init__(
        self,
        path: str | Path,
        *,
        impl: str,
        model=None,
        audio: str | Path | None = None,
        window: int = 0,
        device: str = "cpu",
        dtype: str = "float32",
        info: dict | None = None,
        tokens: list[int] | None = None,
    ):
        """model: a load_model spec or LoadedModel (its weights digest goes into the trace).
        audio: the input clip (default: the shipped one); its Whisper log-mel is `self.mel`. Op `mel` is
        the log-mel the port consumed: `record("mel", its_own)` first if the port computes its own (it is
        compared with Whisper's frontend, so a frontend bug shows at `mel`), else self.mel. info: anything else to keep in the manifest (your version, flags...)."""
        from whisperdiff.inputs.audio import prepare_input
        from whisperdiff.inputs.models import LoadedModel, load_model
        from whisperdiff.names import op_specs

        if not impl or not isinstance(impl, str):
            raise WhisperdiffError("Tracer needs impl=NAME: what implementation this trace comes from")
        self.model = model if isinstance(model, LoadedModel) else load_model(model)
        encoder_input = prepare_input(self.model.dims.n_mels, audio=audio, window=window)
        self.mel = encoder_input.mel
        self._shapes = {s.name: tuple(s.shape) for s in op_specs(self.model.dims)}
        self._decoder = self._decoder_mode(tokens)  # tokens: a decoder trace, teacher-forced on these tokens
        self._required = self._required_ops()
        self._started, self._t0 = datetime.now(UTC), time.perf_counter()
        manifest = build_manifest(
            impl,
            device=device,
            dtype=dtype,
            runner={"device": device, "dtype": dtype, "encoder": f"{impl} (whisperdiff.Tracer)", **(info or {})},
            model=self.model.manifest(),
            input=encoder_input.provenance,
            taps="tracer",
            **({"part": "decoder", "decoder": self._decoder} if self._decoder is not None else {}),
        )
        self._writer = TraceWriter(path, manifest)
        self.path = Path(path)

    def _required_ops(self) -> list[str]:
        """The canonical ops a complete trace of this kind holds (not mel, not the optional ones)."""
        from whisperdiff.names import decoder_op_specs, op_specs

        specs = op_specs(self.model.dims) if self._decoder is None else decoder_op_specs(self.model.dims, 1)
        optional = {s.name for s in specs if s.optional}
        return [n for n in self._shapes if n != "mel" and n not in optional]

    def _decoder_mode(self, tokens) -> dict | None:
        """A decoder trace: ops `whisperdiff ops --decoder` over prompt + tokens; record ln_post (the encoder
        output your decoder attended to) and the decoder ops, each joined over every position."""
        if tokens is None:
            return None
        from whisperdiff.capture.decoder import prompt_tokens
        from whisperdiff.names import decoder_op_specs

        prompt = prompt_tokens(self.model)
        sequence = [int(t) for t in tokens]  # as the port fed them: never a prompt of ours added
        given_prompt = sequence[: len(prompt)] == prompt
        self._shapes = {s.name: tuple(s.shape) for s in decoder_op_specs(self.model.dims, len(sequence))}
        return {
            "tokens": sequence,
            "prompt_length": len(prompt) if given_prompt else 0,
            "token_source": "given" if given_prompt else "given, without Whisper's prompt",
            "mode": "whisperdiff.Tracer",
            "argmax": [],
            "margin": [],
        }

    def __enter__(self) -> Tracer:
        self._writer.__enter__()
        self._mel_written = self._decoder is not None  # a decoder trace's input is ln_post, not the mel
        return self

    def _write_mel(self, port_mel=None) -> None:
        """`mel` is the log-mel the port consumed: its own when it records one (before any other op), else
        Whisper's (self.mel). A port's own mel is compared with Whisper's frontend in the manifest."""
        from whisperdiff.provenance import sha256_array

        if self._mel_written:
            return
        self._mel_written = True
        if port_mel is None:
            self._writer.record("mel", self.mel)
            return
        ref = self.mel.astype(np.float64)
        diff = port_mel.astype(np.float64) - ref
        inp = self._writer.manifest["input"]
        inp["whisper_frontend"], inp["frontend"] = inp.get("frontend"), "the port's own (recorded as mel)"
        inp["mel_sha256"] = sha256_array(port_mel)
        inp["port_mel_vs_whisper"] = {
            "rel_l2": float(np.linalg.norm(diff) / max(np.linalg.norm(ref), 1e-30)),
            "max_abs": float(np.abs(diff).max()),
        }
        self._writer.record("mel", port_mel)

    def record(self, name: str, value) -> None:
        """Write one op now. Canonical ops must have their canonical shape (`whisperdiff ops`)."""
        array = np.asarray(value)
        if not np.issubdtype(array.dtype, np.floating):
            raise WhisperdiffError(f"{name}: record floating-point activations, not {array.dtype}")
        want = self._shapes.get(name)
        # Another layout of the same axes is fine (compare converts it, see align.py); other sizes are not.
        if want is not None and sorted(array.shape) != sorted(want):
            raise WhisperdiffError(
                f"{name}: shape {list(array.shape)}, but this model's {name} is {list(want)} "
                + (
                    f"over the {len(self._decoder['tokens'])} tokens given (give tokens= every token the port "
                    "fed, prompt included)"
                    if self._decoder is not None
                    else "(canonical shapes and layouts: `whisperdiff ops`)"
                )
            )
        if name == "mel":
            if self._mel_written:
                raise WhisperdiffError("record mel (the log-mel your port consumed) before any other op, and once")
            self._write_mel(array.astype(np.float32))
            return
        self._write_mel()
        self._writer.record(name, array)
        if name == "decoder.logits" and self._decoder is not None:
            from whisperdiff.capture.decoder import argmax_and_margin

            self._decoder["argmax"], self._decoder["margin"] = argmax_and_margin(array)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._write_mel()
            missing = [n for n in self._required if n not in {op["name"] for op in self._writer.ops}]
            if missing:  # said when it is written, not first found by compare
                import warnings

                from whisperdiff.errors import WhisperdiffWarning

                warnings.warn(
                    f"{self.path} holds {len(self._required) - len(missing)} of the model's {len(self._required)} "
                    f"canonical ops; not recorded: {', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}",
                    WhisperdiffWarning,
                    stacklevel=2,
                )
            self._writer.manifest["run"] = {
                "started": self._started.isoformat(timespec="seconds"),
                "total_seconds": round(time.perf_counter() - self._t0, 3),
            }
        self._writer.__exit__(exc_type, exc, tb)

    def trace(self):
        """The finished trace (after the with-block)."""
        return load_trace(self.path)
