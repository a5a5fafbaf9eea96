"""Activation patching: which op's error actually causes the changed output?

Re-run the candidate (B's implementation, model, input and injected bugs) once per patch point with
the reference's activation (from trace A) substituted at that op, and measure
how much of the final divergence and of the transcript error disappears. The earliest op whose patch
restores the output is the cause: everything after it is right once its input is.

    p = patch("traces/torch-tiny.en-speech", "traces/max-tiny.en-speech+no-pos-embed")
    p.cause                 # 'pos_embed'
    p.results[0]            # PatchResult(op='mel', final_rel_l2=..., restored=..., text=..., wer=...)

Reading a trace never runs code: B is re-run only by the built-in torch or max encoder, or by the
implementation the caller names (`impl=`, `--impl` on the command line), never by one B's manifest
names. Its input is B's own recorded `mel` (verified by its digest), not a file the manifest points
at, and its model is found among known models only (models.model_of) or given with --model.

On MAX all patch points share the one debug graph (max_encoder.build_graph(debug=True)); on torch
the patch is a forward hook's return value.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from whisperdiff.analysis.compare import compare
from whisperdiff.capture import IMPLS
from whisperdiff.capture.faults import get_faults
from whisperdiff.capture.session import Session
from whisperdiff.capture.transcript import token_cap, wer
from whisperdiff.errors import WhisperdiffError
from whisperdiff.inputs.models import model_of
from whisperdiff.measure.metrics import rel_l2
from whisperdiff.provenance import sha256_array
from whisperdiff.store.trace import Trace, load_trace

RESTORED = 0.9  # a patch "restores" the output when it removes at least this share of the final error
NOTHING_TO_RESTORE = 1e-4  # below this final rel L2 (float32 agreement) B has no error to explain


@dataclass
class PatchResult:
    op: str
    final_rel_l2: float  # B's final output against A's, with this op patched
    restored: float  # share of the unpatched final error that disappeared (1: all of it)
    text: str | None = None
    wer: float | None = None  # of the patched transcript against A's


@dataclass
class Patching:
    a: Path
    b: Path
    impl: str
    unpatched_rel_l2: float
    reference_text: str | None
    unpatched_text: str | None
    unpatched_wer: float | None
    results: list[PatchResult] = field(default_factory=list)
    cause: str | None = None
    max_tokens: int | None = None  # each run's transcript is decoded up to this many tokens
    notes: list[str] = field(default_factory=list)  # e.g. B's manifest names another impl than the one re-run

    def result(self, op: str) -> PatchResult:
        return next(r for r in self.results if r.op == op)

    def to_json(self) -> dict:
        return {
            "a": str(self.a),
            "b": str(self.b),
            "impl": self.impl,
            "cause": self.cause,
            "unpatched_rel_l2": self.unpatched_rel_l2,
            "reference_text": self.reference_text,
            "unpatched_text": self.unpatched_text,
            "unpatched_wer": self.unpatched_wer,
            "notes": self.notes,
            "results": [r.__dict__ for r in self.results],
        }


def default_points(ops: list[str], first_divergence: str | None, n_layer: int) -> list[str]:
    """Every block boundary, the frontend and stem, ln_post, and every op inside the first divergent block."""
    keep = {"mel", "conv1", "conv1.gelu", "conv2", "conv2.gelu", "pos_embed", "ln_post"}
    keep |= {f"blocks.{i}.out" for i in range(n_layer)}
    m = re.match(r"blocks\.(\d+)\.", first_divergence or "")
    prefix = f"blocks.{m.group(1)}." if m else None
    return [op for op in ops if op in keep or (prefix and op.startswith(prefix))]


def rerun_impl(manifest_impl, impl: str | None) -> tuple[str, list[str]]:
    """The implementation that re-runs B, and notes: `impl` when the caller names one, else B's own
    only when it is built in (torch, max). A plugin named by a trace is never imported from it."""
    named = manifest_impl if isinstance(manifest_impl, str) else None
    if impl is not None:
        notes = []
        if named is not None and named != impl:
            notes.append(f"B's manifest names impl {named!r}; B was re-run with {impl!r}, as given on the command line")
        return impl, notes
    if named in IMPLS:
        return named, []
    raise WhisperdiffError(
        f"cannot re-run B: its manifest names impl {named!r}, and whisperdiff never runs code a trace "
        "names; if you trust it, name it yourself with --impl (or use torch or max)"
    )


def patch(
    a: str | Path | Trace,
    b: str | Path | Trace,
    *,
    ops: str | None = None,
    transcribe: bool = True,
    model=None,
    device: str = "auto",
    impl: str | None = None,
    on_op: Callable[[str], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    on_status: Callable[[str], None] | None = None,
    runner=None,
) -> Patching:
    """Patch B's implementation with A's activations, one op at a time (ops: a glob, default: see default_points).

    impl: what re-runs B (default: B's impl when it is torch or max; any other must be named here).
    runner: an encoder runner that re-runs B itself, given by the caller (a captured port:
    capture/torch_capture.CapturedTorchRunner); then impl and B's injected faults are not used.
    Progress, as compare and trace report it: on_total(n patch points), on_status(text) while one runs,
    on_op(op) after each."""
    ta = a if isinstance(a, Trace) else load_trace(a)
    tb = b if isinstance(b, Trace) else load_trace(b)
    if "ln_post" not in ta:
        raise WhisperdiffError(f"{ta.path} has no ln_post (the encoder output); trace A with the default taps")
    c = compare(ta, tb, replay=False)
    if not c.comparable:
        raise WhisperdiffError(f"cannot patch: the traces are not comparable ({c.comparability.summary})")
    mb = tb.manifest
    impl, notes = (
        (getattr(runner, "impl", "the caller's runner"), []) if runner is not None else rerun_impl(mb.get("impl"), impl)
    )
    if "mel" not in tb:
        raise WhisperdiffError(f"cannot re-run B: {tb.path} has no mel op (its encoder input); re-trace B")
    b_mel = np.array(tb["mel"], np.float32)  # B's own input, read from the trace and checked against its digest
    inp = mb.get("input", {})
    if inp.get("mel_sha256") and sha256_array(np.asarray(tb["mel"])) != inp["mel_sha256"]:
        raise WhisperdiffError(
            f"cannot re-run B: its mel op does not match the input digest in its manifest ({tb.path})"
        )
    loaded, reasons = model_of([mb, ta.manifest], prefer=model)
    if loaded is None:
        raise WhisperdiffError(f"cannot re-run B: no loadable model with its weights ({reasons[-1]}); pass --model")
    injected = [f["name"] for f in mb.get("injected") or []]
    session = Session(
        impl if runner is None else "torch",  # (with the caller's runner: only its decoder is used)
        model=loaded,
        device=device,
        dtype=mb.get("dtype", "float32"),
        taps="output",
        inject=[name for name in injected if _encoder_side(name)] if runner is None else [],
        patchable=runner is None,
    )
    if runner is not None:
        session.runner = runner

    reference = np.asarray(ta["ln_post"], np.float64)
    available = set(session.runner.patch_points) | {"mel"}
    if ops:
        points = [op for op in ta.ops if fnmatch.fnmatchcase(op, ops)]
        if not points:
            raise WhisperdiffError(f"--ops {ops!r} matches no op of {ta.path}; see `whisperdiff ops`")
        unsupported = [op for op in points if op not in available]
        points = [op for op in points if op in available]
        if not points:
            raise WhisperdiffError(f"{impl} cannot patch {', '.join(unsupported[:3])}; pick other ops")
    else:
        points = [op for op in default_points(ta.ops, c.first_divergence, loaded.dims.n_audio_layer) if op in available]

    def run(patch_value=None, mel=None) -> np.ndarray:
        out = {}
        session.runner.run(
            mel if mel is not None else b_mel, lambda n, x: out.__setitem__(n, np.array(x)), patch=patch_value
        )
        return out["ln_post"]

    ref_text = (ta.manifest.get("transcript", {}).get("text") or session.decode(ta["ln_post"])) if transcribe else None
    max_tokens = token_cap(ref_text) if ref_text else None

    def text_of(output):
        if not transcribe:
            return None, None
        text = session.decode(output, max_tokens)
        return text, wer(ref_text, text)

    base = run()
    base_err = rel_l2(reference, base)
    base_text, base_wer = text_of(base)
    result = Patching(
        ta.path, tb.path, impl, base_err, ref_text, base_text, base_wer, max_tokens=max_tokens, notes=notes
    )
    if on_total is not None:
        on_total(len(points))
    for op in points:
        if on_status is not None:
            on_status(f"patching {op}")
        value = np.asarray(ta[op], np.float32)
        output = run(mel=value) if op == "mel" else run(patch_value=(op, value))
        err = rel_l2(reference, output)
        text, w = text_of(output)
        restored = 1.0 - err / base_err if base_err > 0 else 1.0
        result.results.append(PatchResult(op, err, restored, text, w))
        if on_op is not None:
            on_op(op)
    if base_err > NOTHING_TO_RESTORE:
        for r in result.results:  # the earliest op whose patch restores the output (and the text)
            if r.restored >= RESTORED and (r.wer is None or r.wer == 0):
                result.cause = r.op
                break
    return result


def _encoder_side(name: str) -> bool:
    """A fault that acts inside the encoder (re-applied on the re-run); an input-side fault is already
    in B's recorded mel, so applying it again would apply it twice."""
    return all(f.controls is not None for f in get_faults([name]))
