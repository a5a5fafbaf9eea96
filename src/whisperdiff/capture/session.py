"""The Python API the CLI is a thin layer over: trace an implementation on one input, into one trace."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from whisperdiff.capture import make_runner
from whisperdiff.capture.faults import get_faults
from whisperdiff.errors import WhisperdiffError
from whisperdiff.inputs.audio import EncoderInput, prepare_input
from whisperdiff.inputs.models import LoadedModel, load_model
from whisperdiff.names import select_taps
from whisperdiff.provenance import sha256_array
from whisperdiff.store.manifest import build_manifest
from whisperdiff.store.trace import Trace, TraceWriter, load_trace

DEFAULT_TRACE_DIR = Path("traces")


def default_trace_path(impl: str, model_id: str, input_path: str, dtype: str = "float32", inject=()) -> Path:
    stem = Path(input_path).stem if input_path else "input"
    safe_model = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in model_id)
    suffix = ("" if dtype == "float32" else f"-{dtype}") + "".join(f"+{name}" for name in inject)
    return DEFAULT_TRACE_DIR / f"{impl}-{safe_model}-{stem}{suffix}"


def trace(
    impl: str = "torch",
    *,
    model: str | LoadedModel | None = None,
    audio: str | Path | None = None,
    mel: str | Path | None = None,
    out: str | Path | None = None,
    device: str = "auto",
    dtype: str = "float32",
    taps: str = "default",
    inject: list[str] | None = None,
    on_op: Callable[[str], None] | None = None,
    window: int = 0,
    transcribe: bool = False,
    stream: bool | None = None,
) -> Trace:
    """Run `impl` on one input window and write every tapped canonical op to a trace directory.

    model: a spec for load_model (None = embedded tiny.en) or an already LoadedModel.
    audio / mel: the input (default: the shipped speech clip); window: which 30 s window of a longer
    clip. out: the trace directory (default traces/IMPL-MODEL-INPUT). inject: porting bugs to plant
    (see faults.py; recorded in the manifest). transcribe: also decode the output with openai-whisper's
    decoder and store the text in the manifest. on_op is called after each op is written (progress).
    stream: MAX only, run the encoder block by block so that one block's taps are in memory at a time
    (None: when all the taps would pass 1 GiB, as large-v3's default taps do).
    """
    session = Session(impl, model=model, device=device, dtype=dtype, taps=taps, inject=inject, stream=stream)
    return session.trace(audio=audio, mel=mel, out=out, window=window, transcribe=transcribe, on_op=on_op)


class Session:
    """One implementation, model and set of injected bugs, ready to trace any number of windows
    (the model is loaded and the MAX graph compiled or loaded once)."""

    decoder_impl = "torch"  # what decode() runs: openai-whisper's decoder, or "max" (the MAX decoder graph)

    def __init__(
        self,
        impl: str = "torch",
        *,
        model=None,
        device: str = "auto",
        dtype: str = "float32",
        taps: str = "default",
        inject: list[str] | None = None,
        patchable: bool = False,
        bisecting: bool = False,
        on_status: Callable[[str], None] | None = None,
        stream: bool | None = None,
    ):
        """on_status(text) says what is being done while it takes time (loading, compiling). bisecting: the
        MAX encoder's pieces, from which each bisection step records its taps (`retap`, MaxRunner.start_at)."""
        t0 = time.perf_counter()
        if taps is not None and (not isinstance(taps, str) or not any(part.strip() for part in taps.split(","))):
            raise WhisperdiffError(
                f"--taps {taps!r} names no op; use default, all, output or comma-separated names/globs"
            )
        self.impl, self.dtype, self.taps, self.inject = impl, dtype, taps, list(inject or ())
        status = on_status or (lambda text: None)
        status("loading model")
        self.loaded = model if isinstance(model, LoadedModel) else load_model(model)
        self.load_seconds = time.perf_counter() - t0
        self.faults = get_faults(inject)
        self.tap_names = select_taps(self.loaded.dims, taps)
        if impl == "max":
            status("compiling the MAX graph for these dims (first run only; cached after)")
        self.runner = make_runner(
            impl,
            self.loaded,
            device=device,
            dtype=dtype,
            taps=self.tap_names,
            faults=self.faults,
            patchable=patchable,
            bisecting=bisecting,
            stream=stream,
        )
        self._decoder = None

    def retap(self, taps: str) -> bool:
        """Trace `taps` from now on without a new graph, where the runner can (a bisecting MAX runner)."""
        if not hasattr(self.runner, "retap"):
            return False
        names = select_taps(self.loaded.dims, taps)
        self.runner.retap([n for n in names if n != "mel"])
        self.taps, self.tap_names = taps, names
        return True

    def decode(self, features, max_tokens: int | None = None) -> str:
        from whisperdiff.capture.transcript import Decoder

        if self.decoder_impl != "torch":  # openai-whisper's greedy search with this decoder's logits (MAX, plugin)
            from whisperdiff.capture import make_decoder_runner
            from whisperdiff.capture.decoder import greedy

            self._decoder = self._decoder or make_decoder_runner(self.decoder_impl, self.loaded)
            return greedy(self._decoder, self.loaded, features, max_tokens)[0]
        self._decoder = self._decoder or Decoder(self.loaded)
        return self._decoder(features, max_tokens)

    def input(self, audio=None, mel=None, window: int = 0):
        encoder_input = prepare_input(self.loaded.dims.n_mels, audio=audio, mel=mel, window=window)
        for fault in self.faults:
            if fault.mel is not None:  # input-side bug: the encoder is fed a differently computed log-mel
                encoder_input.mel = fault.mel(encoder_input.mel)
                encoder_input.provenance["frontend"] += f" + injected {fault.name}"
                encoder_input.provenance["mel_sha256"] = sha256_array(encoder_input.mel)
        return encoder_input

    def trace(
        self,
        *,
        audio=None,
        mel=None,
        out=None,
        window: int = 0,
        transcribe: bool = False,
        on_op: Callable[[str], None] | None = None,
        given_input: EncoderInput | None = None,
    ) -> Trace:
        """given_input: an EncoderInput already in hand (e.g. another trace's recorded mel), used as is."""
        started = datetime.now(UTC)
        t0 = time.perf_counter()
        loaded, runner, tap_names = self.loaded, self.runner, self.tap_names
        encoder_input = given_input if given_input is not None else self.input(audio, mel, window)
        if transcribe and "ln_post" not in tap_names:
            raise WhisperdiffError("transcribing needs the encoder output: trace with taps that include ln_post")
        if out is None:
            out = default_trace_path(
                self.impl, loaded.model_id, encoder_input.provenance["path"], self.dtype, self.inject
            )
            if encoder_input.provenance.get("n_windows", 1) > 1:
                out = out.with_name(f"{out.name}.w{window}")
        out = Path(out)
        manifest = build_manifest(
            self.impl,
            runner=runner.facts(),
            model=loaded.manifest(),
            input=encoder_input.provenance,
            taps=self.taps,
            injected=[
                {"name": f.name, "first_op": f.first_op_for(loaded.dims.n_audio_layer), "description": f.description}
                for f in self.faults
            ],
        )
        with TraceWriter(out, manifest) as writer:
            outputs = {}

            def record(name: str, array) -> None:
                writer.record(name, array)
                if name == "ln_post" and transcribe:
                    outputs[name] = np.array(array, dtype=np.float32)
                if on_op is not None:
                    on_op(name)

            record("mel", encoder_input.mel)
            timings = runner.run(encoder_input.mel, record)
            recorded = [op["name"] for op in writer.ops]
            if getattr(runner, "records_what_it_yields", False):
                writer.manifest["taps"] = "plugin"  # compare treats ops it did not yield as not traced
            elif recorded != tap_names:  # a runner that skips or reorders an op must not produce a "complete" trace
                missing = [n for n in tap_names if n not in recorded]
                raise WhisperdiffError(
                    f"{self.impl} runner did not record ops as asked (missing: {missing[:5]}, got {len(recorded)} of {len(tap_names)})"
                )
            if transcribe:
                from whisperdiff.capture.transcript import DECODER

                t1 = time.perf_counter()
                decoder = {"torch": DECODER, "max": DECODER.replace("openai-whisper decode", "MAX decoder graph")}.get(
                    self.decoder_impl, DECODER.replace("openai-whisper decode", f"decoder plugin {self.decoder_impl}")
                )
                writer.manifest["transcript"] = {
                    "text": self.decode(outputs["ln_post"]),
                    "decoder": decoder,
                    "window": window,
                    "decode_seconds": round(time.perf_counter() - t1, 3),
                }
            writer.manifest["run"] = {
                "started": started.isoformat(timespec="seconds"),
                "model_load_seconds": round(self.load_seconds, 3),
                "total_seconds": round(time.perf_counter() - t0 + self.load_seconds, 3),
                **{k: round(v, 4) if isinstance(v, float) else v for k, v in timings.items()},
            }
        return load_trace(out)

    def trace_windows(
        self,
        *,
        audio=None,
        out=None,
        transcribe: bool = True,
        on_op: Callable[[str], None] | None = None,
        on_total: Callable[[int], None] | None = None,
        on_status: Callable[[str], None] | None = None,
    ) -> list[Trace]:
        """Every 30 s window of a clip, one trace each (`OUT.w0`, `OUT.w1`, ...; just OUT for a short clip).
        Progress: on_total(number of windows), on_status("window k of n") while one runs, on_op after each."""
        from whisperdiff.inputs.audio import default_audio_path, load_audio, n_windows

        count = n_windows(len(load_audio(audio if audio is not None else default_audio_path())[0]))
        traces = []
        if on_total is not None:
            on_total(count)
        for w in range(count):
            if on_status is not None:
                on_status(f"window {w + 1} of {count}")
            path = None if out is None else (Path(out) if count == 1 else Path(out).with_name(f"{Path(out).name}.w{w}"))
            traces.append(self.trace(audio=audio, out=path, window=w, transcribe=transcribe))
            if on_op is not None:
                on_op(f"window {w + 1} of {count}")
        return traces


def float64_twin(ref: Trace, out: str | Path | None = None, on_op: Callable[[str], None] | None = None) -> Trace:
    """openai-whisper's encoder in float64 on the model and input `ref` was made with: the noise-floor
    reference `whisperdiff tolerances` measures a float32 run against."""
    from whisperdiff.inputs.models import model_of

    if ref.manifest.injected:
        raise WhisperdiffError(f"{ref.path} has injected bugs; measure the noise floor on a clean reference")
    model, reasons = model_of([ref.manifest])
    if model is None:
        raise WhisperdiffError(f"cannot re-run {ref.path} in float64 ({reasons[-1]}); pass --from OTHER_TRACE instead")
    if "mel" not in ref.ops:
        raise WhisperdiffError(f"{ref.path} did not record its input (op mel); pass --from OTHER_TRACE instead")
    # The input is the trace's own recorded (and digest-verified) log-mel: reading a trace never opens a path
    # its manifest names.
    recorded = EncoderInput(np.array(ref["mel"], dtype=np.float32), ref.manifest.input.to_json())
    session = Session("torch", model=model, dtype="float64", taps=ref.manifest.taps or "default")
    return session.trace(out=out, on_op=on_op, given_input=recorded)
