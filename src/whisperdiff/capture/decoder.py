"""The decoder, teacher-forced: run any decoder runner on one token sequence, step by step, into one trace.

    import whisperdiff as wd
    from whisperdiff.capture.decoder import trace_decoder
    ref = trace_decoder("torch", out="traces/dec-torch")                       # the reference's greedy tokens
    cand = trace_decoder("max", out="traces/dec-max", tokens=ref.manifest["decoder"]["tokens"])
    wd.compare(ref, cand).first_divergence                                      # (op, position) in c.decoder

Both sides decode the same tokens (teacher forcing), so every position stays comparable even where the
candidate would have chosen another token; each side's own argmax and logit margin (top-1 minus top-2
logit) per position go into the manifest. The first step feeds the prompt (Whisper's start-of-transcript
sequence) at once, as openai-whisper does; every later step one token, through the KV cache. Steps are
concatenated along the token-position axis P (names.py), so `incremental=False` (one full-sequence step)
gives a trace that compares directly with an incremental one.

`greedy` runs openai-whisper's own DecodingTask (greedy, its logit filters) with any decoder runner behind
its Inference interface: the all-MAX pipeline and the encoder/decoder cross-feed (analysis/crossfeed) use it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from whisperdiff.capture import decoder_runner_class, make_decoder_runner, make_runner
from whisperdiff.errors import WhisperdiffError
from whisperdiff.names import DECODER_INPUT, decoder_op_specs, position_axis, select_decoder_taps
from whisperdiff.provenance import sha256_array
from whisperdiff.store.manifest import build_manifest
from whisperdiff.store.trace import TraceWriter, load_trace


def decoding_options(model, max_tokens: int | None = None):
    import whisper

    return whisper.DecodingOptions(
        language=None if model.is_multilingual else "en",
        fp16=False,
        without_timestamps=True,
        temperature=0.0,
        sample_len=max_tokens,
    )


def prompt_tokens(loaded) -> list[int]:
    """openai-whisper's initial tokens for greedy decoding without timestamps (start-of-transcript ...)."""
    from whisper.decoding import DecodingTask

    return list(DecodingTask(_model_stub(loaded), decoding_options(_model_stub(loaded)))._get_initial_tokens())


def _model_stub(loaded):
    from types import SimpleNamespace

    d = loaded.dims
    multilingual = d.n_vocab >= 51865
    # What DecodingTask reads of a Whisper model (its PyTorchInference, replaced at once, lists decoder.blocks).
    return SimpleNamespace(
        dims=d,
        is_multilingual=multilingual,
        num_languages=d.n_vocab - 51765 - int(multilingual),
        decoder=SimpleNamespace(blocks=[]),
    )


class _RunnerInference:
    """openai-whisper's Inference interface over a decoder runner (start + one step per call)."""

    def __init__(self, runner, initial_token_length: int):
        self.runner, self.initial_token_length, self.started = runner, initial_token_length, False

    def logits(self, tokens, audio_features):
        import torch

        if not self.started:
            self.runner.start(audio_features.float().numpy())
            self.started = True
        if tokens.shape[-1] > self.initial_token_length:
            tokens = tokens[:, -1:]
        return torch.from_numpy(self.runner.step(tokens.numpy()))

    def rearrange_kv_cache(self, source_indices) -> None:
        if list(source_indices) != list(range(len(source_indices))):
            raise WhisperdiffError("the decoder runners decode one sequence (greedy); beam search is not supported")

    def cleanup_caching(self) -> None:
        self.started = False


def greedy(runner, loaded, features: np.ndarray, max_tokens: int | None = None, whisper_model=None):
    """openai-whisper's greedy decoding (its filters, its stopping rule) with `runner` computing the logits.
    Returns (text, text tokens)."""
    import torch
    from whisper.decoding import DecodingTask

    model = whisper_model or _model_stub(loaded)
    task = DecodingTask(model, decoding_options(model, max_tokens))
    task.inference = _RunnerInference(runner, len(task.initial_tokens))
    with torch.inference_mode():
        result = task.run(torch.from_numpy(np.array(features, np.float32)))[0]
    return result.text.strip(), list(result.tokens)


class Steps:
    """Collects each step's value of every op and joins them along the token-position axis."""

    def __init__(self, dims, n_tokens: int):
        self.specs = {s.name: s for s in decoder_op_specs(dims, n_tokens)}
        self.parts: dict[str, list[np.ndarray]] = defaultdict(list)
        self.n_tokens = n_tokens

    def record(self, name: str, value: np.ndarray) -> None:
        if name not in self.specs:
            raise WhisperdiffError(
                f"the decoder recorded {name!r}, no decoder op of this model (`whisperdiff ops --decoder`)"
            )
        if position_axis(self.specs[name].layout) is None and self.parts[name]:
            return  # computed once (cross-attention K/V): the first step's value is the op's
        self.parts[name].append(np.array(value, np.float32))

    def joined(self, name: str) -> np.ndarray:
        spec, parts = self.specs[name], self.parts[name]
        axis = position_axis(spec.layout)
        if axis is None:  # cross-attention K/V: computed once, from the first step
            return parts[0]
        if name.endswith(".attn.weights"):  # keys grow with the cache: pad each step to every position (zeros: masked)
            parts = [np.pad(p, [(0, 0)] * (p.ndim - 1) + [(0, self.n_tokens - p.shape[-1])]) for p in parts]
        return np.concatenate(parts, axis=axis)


def argmax_and_margin(logits: np.ndarray) -> tuple[list[int], list[float]]:
    """Per position: the top token and its logit lead over the runner-up."""
    flat = np.asarray(logits, np.float32).reshape(-1, logits.shape[-1])
    top2 = np.partition(flat, -2, axis=-1)[:, -2:]
    # a margin that is not a number (NaN or -inf logits) is stored as None: the manifest is strict JSON
    margins = [float(m) if np.isfinite(m) else None for m in (top2[:, 1] - top2[:, 0])]
    return [int(i) for i in flat.argmax(-1)], margins


def encoder_features(loaded, mel: np.ndarray, impl: str = "torch", faults=()) -> np.ndarray:
    """The encoder output (ln_post) of `impl` on this mel (taps: the output only... or the suite's graph)."""
    from whisperdiff.names import select_taps

    kept = {}
    taps = select_taps(
        loaded.dims, "default" if impl == "max" else "output"
    )  # default: the graph the suite already has
    runner = make_runner(impl, loaded, device="cpu", dtype="float32", taps=[t for t in taps], faults=list(faults))
    runner.run(
        mel, lambda name, value: kept.__setitem__(name, np.array(value, np.float32)) if name == "ln_post" else None
    )
    return kept["ln_post"]


def teacher_forced(
    runner, features: np.ndarray, tokens: list[int], prompt_length: int, dims, record, *, incremental: bool = True
) -> dict:
    """Run `runner` on `tokens` and call record(op, value) with each op joined over every position, in
    canonical order; returns the manifest's "decoder" facts (argmax, margin, timings)."""
    steps = Steps(dims, len(tokens))
    chunks = [tokens[:prompt_length]] + [[t] for t in tokens[prompt_length:]] if incremental else [tokens]
    start = time.perf_counter()
    runner.start(features)
    for chunk in chunks:
        runner.step(np.array([chunk], np.int64), steps.record)
    seconds = time.perf_counter() - start
    for name, parts in list(steps.parts.items()):  # a plugin records what it can name: at every step, or never
        if position_axis(steps.specs[name].layout) is not None and len(parts) != len(chunks):
            if hasattr(runner, "drop"):  # a captured port: an op aligned at some steps only is said, not traced
                runner.drop(name)
                del steps.parts[name]
                continue
            raise WhisperdiffError(
                f"the decoder recorded {name} at {len(parts)} of its {len(chunks)} steps; record it at every step"
            )
    logits = None
    for name in steps.specs:
        if name in steps.parts:
            value = steps.joined(name)
            record(name, value)
            if name == "decoder.logits":
                logits = value
    if logits is None:
        raise WhisperdiffError("the decoder trace needs decoder.logits among its taps")
    argmax, margin = argmax_and_margin(logits)
    return {"argmax": argmax, "margin": margin, "steps": len(chunks), "decoder_seconds": round(seconds, 4)}


def trace_decoder(
    impl: str = "torch",
    *,
    model=None,
    audio=None,
    out: str | Path | None = None,
    tokens: list[int] | None = None,
    encoder: str = "torch",
    features: np.ndarray | None = None,
    taps: str = "default",
    inject: list[str] | None = None,
    incremental: bool = True,
    encoder_inject: list[str] | None = None,
    runner=None,
    mark_all: bool = False,
    reference=None,
    decoder=None,
):
    """Teacher-force decoder `impl` on the encoder output of `encoder` for one input window.

    tokens: the text tokens to force (after the prompt); default: openai-whisper's greedy tokens on the
    same encoder output. inject: decoder faults (MAX only); encoder_inject: encoder faults for `encoder`.
    features: an encoder output to use as is (then `encoder` only names it). runner: a decoder runner
    already built for these taps (its compiled graph is reused). mark_all: `impl` is a torch decoder port
    that names nothing; every op it runs is captured and aligned step by step (decoder_capture.py), by
    value against `reference` (a decoder trace, or its path, teacher-forced on the same tokens and
    encoder output) where given, else by structure. decoder: with mark_all, the port object itself (start,
    step: capture/plugin.py; from a notebook), `impl` its name."""
    from whisperdiff.capture.faults import get_faults
    from whisperdiff.inputs.audio import prepare_input
    from whisperdiff.inputs.models import LoadedModel, load_model

    started, t0 = datetime.now(UTC), time.perf_counter()
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    faults = get_faults(inject, part="decoder")
    if decoder is not None and not mark_all:
        raise WhisperdiffError("decoder= is traced hands-off: pass mark_all=True too (or give --impl a factory)")
    if decoder is None:
        decoder_runner_class(impl, faults)  # an unknown impl, or faults it cannot take: say so before any work
    enc_faults = get_faults(encoder_inject)
    encoder_input = prepare_input(loaded.dims.n_mels, audio=audio)
    if features is None:
        features = encoder_features(loaded, encoder_input.mel, encoder, enc_faults)
    prompt = prompt_tokens(loaded)
    source = "given"
    if tokens is None:
        tokens, source = (
            greedy(make_decoder_runner("torch", loaded), loaded, features)[1],
            "greedy (openai-whisper, this encoder output)",
        )
    tokens = [int(t) for t in tokens]
    if tokens[: len(prompt)] == prompt:
        tokens = tokens[len(prompt) :]
    if any(not 0 <= t < loaded.dims.n_vocab for t in tokens):
        raise WhisperdiffError(f"tokens must be ids in 0..{loaded.dims.n_vocab - 1}")
    sequence = prompt + tokens
    if len(sequence) > loaded.dims.n_text_ctx:
        raise WhisperdiffError(f"{len(sequence)} tokens: more than the decoder's {loaded.dims.n_text_ctx} positions")
    tap_names = select_decoder_taps(loaded.dims, taps, len(sequence))
    if "decoder.logits" not in tap_names:
        tap_names.append("decoder.logits")
    if mark_all and runner is None:
        from whisperdiff.capture.decoder_capture import CapturedDecoderRunner
        from whisperdiff.capture.runner import runner_class

        if runner_class("decoder", impl) is not None:
            raise WhisperdiffError(
                f"--mark-all captures a decoder port you wrote (file.py:factory); {impl} is traced with its own taps"
            )
        reference = _alignment_reference(reference, sequence, features)
        runner = CapturedDecoderRunner(
            impl, loaded, taps=tap_names, faults=faults, reference=reference, decoder=decoder
        )
    runner = runner or make_decoder_runner(impl, loaded, taps=tap_names, faults=faults)
    if out is None:
        safe = "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in Path(impl.split(":")[0]).stem or impl)
        out = Path("traces") / f"decoder-{safe}-{loaded.model_id.replace(':', '_').replace(',', '_')}"
    manifest = build_manifest(
        impl,
        part="decoder",
        device="cpu",
        dtype="float32",
        runner=runner.facts(),
        model=loaded.manifest(),
        input=encoder_input.provenance,
        taps="plugin" if getattr(runner, "records_what_it_records", False) else taps,
        injected=[
            {"name": f.name, "first_op": f.first_op_for(loaded.dims.n_text_layer), "description": f.description}
            for f in faults
        ],
        encoder={
            "impl": encoder,
            "injected": [f.name for f in enc_faults],
            "ln_post_sha256": sha256_array(np.asarray(features, np.float32)),
        },
    )
    with TraceWriter(out, manifest) as writer:
        writer.record(DECODER_INPUT, np.asarray(features, np.float32))
        facts = teacher_forced(
            runner,
            features,
            sequence,
            len(prompt),
            loaded.dims,
            lambda n, v: writer.record(n, v) if n in tap_names else None,
            incremental=incremental,
        )
        if hasattr(runner, "capture_record"):
            writer.manifest["runner"]["capture"] = runner.capture_record()
            if reference is None:
                writer.manifest["runner"]["capture"]["notes"].insert(
                    0, "aligned by structure only: no reference trace of the same tokens and encoder output"
                )
        writer.manifest["decoder"] = {
            "tokens": sequence,
            "prompt_length": len(prompt),
            "token_source": source,
            "mode": "incremental (KV cache)" if incremental else "full sequence",
            "argmax": facts["argmax"],
            "margin": facts["margin"],
            "steps": facts["steps"],
        }
        writer.manifest["run"] = {
            "started": started.isoformat(timespec="seconds"),
            "total_seconds": round(time.perf_counter() - t0, 3),
            "decoder_seconds": facts["decoder_seconds"],
        }
    return load_trace(out)


def _alignment_reference(reference, sequence: list[int], features: np.ndarray):
    """The reference trace for a captured decoder's alignment, when it can serve: teacher-forced on the same
    tokens from the same encoder output (else its values are other numbers, and structure alone decides)."""
    if reference is None:
        return None
    trace = load_trace(reference) if isinstance(reference, str | Path) else reference
    decoder = trace.manifest.get("decoder") or {}
    if decoder.get("tokens") != sequence:
        raise WhisperdiffError(
            f"{trace.path}: the reference decoded other tokens than these; trace with --tokens-from {trace.path}"
        )
    if DECODER_INPUT in trace and sha256_array(np.asarray(trace[DECODER_INPUT], np.float32)) != sha256_array(
        np.asarray(features, np.float32)
    ):
        raise WhisperdiffError(
            f"{trace.path}: the reference attended to another encoder output; use the same --encoder and audio"
        )
    return trace
