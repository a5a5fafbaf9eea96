"""Compare two traces op by op: metrics, first divergence, introduced vs inherited error, findings.

    import whisperdiff as wd
    c = wd.compare("traces/torch-tiny.en-speech", "traces/max-tiny.en-speech")
    c.first_divergence, c.findings[:1], c.table      # table: a pandas DataFrame, one row per op
    c.result("ln_post").failures                     # the typed per-op results the table is a view of

A is the reference, B the candidate. Ops are read one at a time (memory-mapped), so memory is
bounded by the largest op, not by the trace. Nothing here prints: cli.py renders a Comparison.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from whisperdiff.analysis.comparability import Comparability
from whisperdiff.analysis.diagnose import (
    Finding,
    diagnosis_context,
    manifest_findings,
    merge_repeats,
    op_finding,
    order,
    pair_swaps,
    settle_divergences,
    untapped,
)
from whisperdiff.analysis.frontend_replay import audio_at_hand
from whisperdiff.analysis.heap import give_back
from whisperdiff.analysis.hypotheses import explain as explain_op
from whisperdiff.analysis.logits import decoder_layouts, decoder_summary
from whisperdiff.analysis.measuring import MeasureAhead, OpJob
from whisperdiff.analysis.port_output import (
    alignment_notes,
    captured_port,
    port_output_findings,
    train_mode_findings,
)
from whisperdiff.analysis.results import COLUMNS, OpResult
from whisperdiff.errors import WhisperdiffError
from whisperdiff.mapping.align import Pair, align, load_rename_rules
from whisperdiff.measure.metrics import ONEPASS_BYTES, load_onepass, rounding_error
from whisperdiff.measure.tolerances import OpFailure, Tolerance, ToleranceSet, new_nonfinite
from whisperdiff.store.documents import document
from whisperdiff.store.trace import Trace, load_trace


@dataclass
class Comparison:
    a: Path
    b: Path
    manifest_a: dict
    manifest_b: dict
    ops: list[OpResult]  # one per op: A's ops in order, then those only in B
    first_divergence: str | None
    findings: list[Finding]
    comparability: Comparability  # truthy when A and B are comparable; else the reasons (other weights...)
    warnings: list[str]
    tolerance: Tolerance  # the default; per-op limits are in `tolerances`
    profiles: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # per-time-step cosine/error
    tolerances: ToleranceSet = field(default_factory=ToleranceSet)
    transcripts: dict | None = None  # {"a", "b", "wer", "cer"} when both traces were transcribed
    traces: tuple[Trace, Trace] | None = field(default=None, repr=False)
    views: dict = field(default_factory=dict, repr=False)  # op -> B's array in A's layout
    decoder: dict | None = None  # decoder traces: first divergence as (op, position), logits measures (logits.py)
    layouts: dict[str, str | None] = field(default_factory=dict)  # op -> its canonical layout ("B,T,C", ...)

    @cached_property
    def table(self) -> pd.DataFrame:
        """A view of `ops`: one row per op (analysis.results.COLUMNS), indexed by op: c.table.loc["ln_post"]."""
        table = pd.DataFrame([r.row() for r in self.ops], columns=COLUMNS)
        table.index = pd.Index(table["op"].tolist())  # "op" as in Trace.summary()
        return table

    def result(self, op: str) -> OpResult:
        """The typed result of one op (its failures, metrics, layout)."""
        found = self._by_op.get(op)
        if found is None:
            raise WhisperdiffError(f"op {op!r} is in neither trace; pick one of: {', '.join(list(self._by_op)[:8])}...")
        return found

    @cached_property
    def _by_op(self) -> dict[str, OpResult]:
        return {r.op: r for r in self.ops}

    @property
    def op_failures(self) -> dict[str, list[OpFailure]]:
        """op -> its failures, for every op that has any."""
        return {r.op: r.failures for r in self.ops if r.failures}

    @property
    def comparable(self) -> bool:
        return self.comparability.comparable

    def values(self, op: str) -> tuple[np.ndarray, np.ndarray]:
        """A's and B's arrays at a matched op, B converted to A's layout (memory-mapped where possible)."""
        if self.traces is None or op not in self.views:
            matched = [r.op for r in self.ops if r.op in self.views]
            raise WhisperdiffError(f"op {op!r} is not in both traces; pick one of: {', '.join(matched[:8])}...")
        ta, tb = self.traces
        b_name, view = self.views[op]
        return np.asarray(ta[op]), view(np.asarray(tb[b_name]))

    def limits(self) -> str:
        """The limits applied, as numbers: "cosine >= 0.99999, rel L2 <= 0.0001 (float32, 3 per-op rules)"."""
        t, rules = self.tolerance, len(self.tolerances.rules)
        limits = [
            f"cosine ≥ {t.min_cosine:g}" if t.min_cosine is not None else "",
            f"rel L2 ≤ {t.max_rel_l2:g}" if t.max_rel_l2 is not None else "",
            f"max |B-A| ≤ {t.max_abs:g}" if t.max_abs is not None else "",
            f"|std B/A - 1| ≤ {t.max_std_ratio_dev:g}" if t.max_std_ratio_dev is not None else "",
        ]
        return (
            (", ".join(x for x in limits if x) or "none")
            + f" ({self.tolerances.source}"
            + (f"; {rules} per-op rules)" if rules else ")")
        )

    def __repr__(self) -> str:  # short: the arrays and manifests are attributes, not the summary
        return (
            f"Comparison(a={str(self.a)!r}, b={str(self.b)!r}, comparable={self.comparable}, "
            f"first_divergence={self.first_divergence!r}, findings={[f.kind for f in self.findings[:3]]}, "
            f"ops={len(self.ops)}, diverged={sum(r.diverged for r in self.ops)})"
        )

    def to_json(self) -> dict:
        """The document of `compare --json`: schema whisperdiff.compare (docs/json.md)."""
        body = {
            "a": str(self.a),
            "b": str(self.b),
            "comparable": self.comparable,
            "warnings": self.warnings,
            "first_divergence": self.first_divergence,
            "findings": [f.to_dict() for f in self.findings],
            "transcripts": self.transcripts,
            "decoder": self.decoder,
            "tolerance": self.tolerance.__dict__,
            "tolerances": self.tolerances.source,
            "ops": [r.to_json() for r in self.ops],
        }
        return document("whisperdiff.compare", body)


def compare(
    a: str | Path | Trace,
    b: str | Path | Trace,
    *,
    tolerance: Tolerance | ToleranceSet | None = None,
    rename: str | Path | None = None,
    model=None,
    replay: bool = True,
    transcribe: bool = False,
    audio: str | Path | None = None,
    on_op: Callable[[str], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> Comparison:
    """Compare reference trace `a` with candidate `b`.

    tolerance: one Tolerance for every op, or a ToleranceSet (per-op rules, `load_tolerances`).
    model: weights for the replay (a LoadedModel or a load_model spec); by default the model named in
    B's (then A's) manifest, used only when its weights hash matches. replay=False skips the
    introduced-error replay (then findings come from the metrics alone). Transcripts come from the
    manifests; transcribe=True decodes the ones missing (openai-whisper's decoder on ln_post). audio: the
    traced clip (checked by sha256), to replay frontend variants where the log-mels differ; the shipped clip
    is found without it."""
    ta = a if isinstance(a, Trace) else load_trace(a)
    tb = b if isinstance(b, Trace) else load_trace(b)
    if isinstance(model, str):  # the user's --model: an unknown one is an error, not silently no replay
        from whisperdiff.inputs.models import load_model

        model = load_model(model)
    tolerances = ToleranceSet.of(tolerance)
    rules = load_rename_rules(rename)
    findings, warnings, comparability = manifest_findings(ta.manifest, tb.manifest)
    pairs, views = align(
        {o["name"]: tuple(o["shape"]) for o in ta.manifest["ops"]},
        {o["name"]: tuple(o["shape"]) for o in tb.manifest["ops"]},
        rules,
    )
    layouts = {s["name"]: s.get("layout") for s in _specs(ta.manifest)}
    layouts.update(decoder_layouts(ta.manifest))  # decoder ops: their token-position axis
    canonical = set(layouts)
    # The replay (weights, torch) is made at the first op that diverges: a clean pair loads neither.
    unknown = _unknown_model(ta, tb) if replay and comparability and model is None else []
    warnings.extend(unknown)  # said up front, though the weights load only where an op diverges
    made_replayer = functools.cache(
        lambda: _replayer(model, ta, tb, warnings, said=bool(unknown)) if replay and comparability else None
    )

    def replayer_of():
        ahead.close()  # the replay needs the memory: the ops after this one are measured as they are asked for
        return made_replayer()

    if replay and not comparability:
        warnings.append("introduced error not computed: the traces are not comparable")

    b_names = {p.name: p.b_name for p in pairs if p.matched}
    onepass = ta.nbytes + tb.nbytes >= ONEPASS_BYTES  # gigabytes: the compiled one-pass metrics pay off

    def b_value(name):
        return views[name](np.asarray(tb[b_names[name]]))

    jobs = []
    for p in pairs:
        if p.matched:
            tol = tolerances.for_op(p.name)
            options = {"layout": layouts.get(p.name), "atol": tol.atol, "rtol": tol.rtol, "onepass": onepass}
            jobs.append(OpJob(p.name, p.b_name, views[p.name] if p.layout else None, options))

    results, profiles, op_findings, not_traced, not_aligned = [], {}, [], [], []
    capture = captured_port(tb.manifest)
    unaligned = set(capture.get("unmatched") or []) if capture else set()
    rel_l2_of = {}  # op -> its rel L2, for the ops done so far (the inherited error of the ops that read them)
    if on_total is not None:  # how many on_op calls to expect (progress bars with a total)
        on_total(len(pairs))
    first = None
    last_rel_l2 = math.nan  # the last measured op's rel L2 (what an op's error jumps from, without replay)
    nonfinite_seen = False

    def audio_samples():  # called only where the log-mels differ; never a path the trace names
        found, why_not = audio_at_hand(ta.manifest, audio)
        warnings.extend([why_not] if why_not else [])
        return found

    @functools.cache
    def diag() -> dict:  # what the diagnosis needs beyond one op's arrays, made with the replayer
        ctx = diagnosis_context(ta, replayer_of())
        ctx["b_value"] = lambda n: b_value(n) if n in b_names else None  # B's other values (wiring hypotheses)
        ctx["audio"] = audio_samples
        return ctx

    established: list[str] = []  # precisions that reproduced B at an earlier op: tried first at the next

    def explain_from_b(n, i, precision_only=None):  # op n's hypotheses by type, replayed on B's own inputs i
        values = [b_value(x) for x in i] + [b_value(n)]
        found = explain_op(replayer_of(), n, values, diag(), tuple(established), precision_only=precision_only)
        if found["established"] is not None and found["established"] not in established:
            established.append(found["established"])
        return found

    def finding_at(row: dict, rep, explain) -> Finding | None:  # the diagnosis of one op (op_finding)
        n = row["name"]
        return op_finding(
            row,
            rep,
            {dt: rounding_error(ta[n], dt) for dt in ("float16", "bfloat16")},
            a=np.asarray(ta[n]),
            b=b_value(n),
            context={**diag(), "layout": layouts.get(n), **_decoder_context(n)},
            explain=explain,
        )

    # each op read, checked and measured on workers a few ops ahead of this loop (measuring.py)
    kernel = load_onepass() if onepass else None  # a Future: None, or why there is no kernel here
    ahead = MeasureAhead(ta, tb, jobs, ready=kernel)
    try:
        for pair in pairs:
            result = OpResult(
                pair.name,
                _status(pair),
                a_shape=pair.a_shape,
                b_shape=pair.b_shape,
                b_name=pair.b_name,
                b_layout=pair.layout,
                layout=layouts.get(pair.name),
            )
            if pair.matched:
                tol = tolerances.for_op(pair.name)
                m = ahead.get(pair.name)
                profiles[pair.name] = {"step_cosine": m.pop("step_cosine"), "step_rel_error": m.pop("step_rel_error")}
                result.metrics = m
                result.failures = tol.failures(m, op=pair.name)
                result.status = "diverged" if result.diverged else "ok"
                # only where an op diverges: the error it introduces vs inherits (a clean op needs neither)
                replayer = replayer_of() if result.diverged else None
                inputs, rep = _replay(replayer, pair.name, b_names, b_value)
                if rep is not None:
                    result.introduced_rel_l2 = rep["introduced"]
                if inputs:
                    result.inherited_rel_l2 = max((rel_l2_of.get(i, math.nan) for i in inputs), default=math.nan)
                row = {**result.row(), "name": pair.name}  # what the diagnosis reads
                if row["diverged"] and first is None:
                    first = pair.name
                if row["nan_a"] + row["inf_a"]:  # the metrics skip them: without this a NaN reference reads as rel L2 0
                    op_findings.append(
                        Finding(
                            "nonfinite_reference",
                            pair.name,
                            1.0,
                            f"A (the reference) holds {row['nan_a']} NaN and {row['inf_a']} Inf values at "
                            f"{pair.name}; the metrics there leave them out and cannot be trusted: "
                            "re-trace the reference",
                        )
                    )
                bar = tol.max_rel_l2 if tol.max_rel_l2 is not None else Tolerance.max_rel_l2
                introduces = (
                    rep["introduced"] > bar if rep is not None else row["diverged"] and _jumps(row, last_rel_l2)
                )
                first_nonfinite = new_nonfinite(row) and not nonfinite_seen  # NaN/Inf appear here: always a finding
                nonfinite_seen = nonfinite_seen or new_nonfinite(row)
                if (row["diverged"] and introduces) or (pair.name == "mel" and row["diverged"]) or first_nonfinite:
                    explain = None  # hypotheses by op type, run only here where the op introduces error
                    if rep is not None:
                        explain = functools.partial(explain_from_b, pair.name, inputs)
                    elif replayer is not None and inputs and all(x in b_names or x in ta for x in inputs):

                        def explain(n=pair.name, i=inputs, precision_only=None):  # B lacks an input: A's stands in
                            values = [b_value(x) if x in b_names else np.asarray(ta[x]) for x in i]
                            found = explain_op(
                                replayer_of(), n, values + [b_value(n)], diag(), precision_only=precision_only
                            )
                            return {**found, "inputs_from_a": [x for x in i if x not in b_names]}

                    f = finding_at(row, rep, explain)
                    if f is not None:
                        op_findings.append(f)
                if pair.layout:
                    op_findings.append(
                        Finding(
                            "layout",
                            pair.name,
                            1.0,
                            f"{pair.name}: B stores {pair.layout}; matched after converting to the canonical layout",
                            severity="info",
                        )
                    )
                if replayer is not None:  # it replayed: glibc keeps what that freed, unless asked (analysis/heap.py)
                    give_back()
            elif pair.problem:
                op_findings.append(Finding("shape_mismatch", pair.name, 1.0, f"{pair.name}: {pair.problem}"))
                result.failures = [OpFailure(pair.name, "shape", math.nan, pair.problem)]
                first = first or pair.name
            elif pair.b_shape is None:
                if pair.name in unaligned:  # B's capture holds no value automap could call this op
                    not_aligned.append(pair.name)
                    result.status = "not_aligned"
                elif untapped(ta.manifest, tb.manifest):  # B chose not to record it: a note, not a bug
                    not_traced.append(pair.name)
                    result.status = "not_traced"
                else:
                    first = first or pair.name
                    op_findings.append(Finding("missing_op", pair.name, 0.9, f"{pair.name} is in A but not in B"))
                    result.failures = [OpFailure(pair.name, "missing", math.nan, "present in B")]
            elif pair.b_name in canonical:  # an op A's model has, that A chose not to record
                warnings.append(
                    f"{pair.b_name} is only in B: it is a canonical op of A's model, but A did not record it "
                    f"(A's taps={ta.manifest.get('taps')!r}; trace A with --taps all)"
                )
            else:
                warnings.append(
                    f"{pair.b_name} is only in B (no canonical op of A's model has that name; see --rename)"
                )
            results.append(result)
            rel_l2_of[result.op] = result.metric("rel_l2")
            if not math.isnan(rel_l2_of[result.op]):
                last_rel_l2 = rel_l2_of[result.op]
            if on_op is not None:
                on_op(pair.name)
    finally:
        ahead.close()

    if first is not None and not any(f.op == first and f.severity != "info" for f in op_findings):
        by_op = {r.op: r for r in results}  # a first divergence that only inherits: explained where it starts
        source = _source_of_inherited(by_op[first], rel_l2_of, replayer_of, b_names, b_value, tolerances)
        if source is not None:
            name, rep, inputs = source
            f = finding_at({**by_op[name].row(), "name": name}, rep, functools.partial(explain_from_b, name, inputs))
            if f is not None and f.kind != "divergence":  # only a named cause: "divergence" below the limit is noise
                f.message += (
                    f" (within the limit here, at rel L2 {rel_l2_of[name]:.1e}; it passes the limit at {first}, "
                    f"rel L2 {rel_l2_of[first]:.1e}, which adds only {by_op[first].introduced_rel_l2:.1e} of its own)"
                )
                op_findings.append(f)
    if not_traced:
        listed = f"{', '.join(not_traced[:4])}{', ...' if len(not_traced) > 4 else ''}"
        warnings.append(
            f"{len(not_traced)} optional ops of A are not aligned from a capture (B is a captured port; only the "
            f"default ops are): {listed}"
            if capture
            else f"{len(not_traced)} ops of A are not in B (a plugin records the ops it names): {listed}"
            if tb.manifest.get("taps") == "plugin"
            else f"{len(not_traced)} ops of A were not traced in B (taps={tb.manifest.get('taps')!r}): {listed}; "
            "trace B with --taps all"
        )
    if not_aligned:
        if isinstance(capture, dict) and "steps" in capture:  # a decoder captured step by step has no map file
            advice = "a decoder port captured step by step: name them with record() in its step (capture/plugin.py)"
            if any(n.endswith("attn.weights") for n in not_aligned):
                advice += "; a fused attention (sdpa) never computes its probabilities, so attn.weights has no value"
        else:
            advice = "name them in the map's [ops] section and pass it back (docs/ports.md)"
        warnings.append(
            f"{len(not_aligned)} ops of A were not aligned to any value of B's capture (no captured value of "
            f"their shape and kind was left between their neighbours): {', '.join(not_aligned[:4])}"
            f"{', ...' if len(not_aligned) > 4 else ''}; {advice}"
        )
    if kernel is not None and kernel.result() is not None:
        warnings.append(
            f"the one-pass kernel could not be had ({kernel.result()}): the ops were measured by numpy instead "
            "(the same figures to float precision, several times slower)"
        )
    if capture:
        op_findings.extend(port_output_findings(capture, rel_l2_of))
        warnings.extend(alignment_notes(capture))
    # Observer effect (capture/captured_trace.trace_captured): B's extra outputs can change what MAX fuses.
    effect = (tb.manifest.get("runner") or {}).get("observer_effect")
    if isinstance(effect, dict) and isinstance(effect.get("rel_l2"), int | float) and effect["rel_l2"] > 0:
        first_rel = rel_l2_of.get(first)
        explains = isinstance(first_rel, float) and first_rel <= 10 * effect["rel_l2"]
        warnings.append(
            f"observer effect: B's tapped graph gives an output rel L2 {effect['rel_l2']:.1e} (max abs "
            f"{effect.get('max_abs', float('nan')):.1e}) from its untapped graph's"
            + (f"; that is enough to explain the divergence at {first} (rel L2 {first_rel:.1e})" if explains else "")
        )
    order_names = [p.name for p in pairs]
    all_findings = order(findings + merge_repeats(pair_swaps(order(op_findings, order_names))), order_names)
    explained = frozenset(f.op for f in op_findings if f.kind not in ("divergence", "layout", "nonfinite_reference"))
    decoder, decoder_found = decoder_summary(
        ta,
        tb,
        first,
        tolerances,
        lambda n: views.get(n) if n in b_names else None,
        weights=replayer_of().w if first is not None and replayer_of() is not None else None,
        explained=explained,
    )
    all_findings = decoder_found + all_findings  # the decoder test that names the bug at (op, position) first
    all_findings = order(settle_divergences(all_findings, order_names), order_names)
    if capture:  # a port in train mode: the cause of every divergence, so it comes first
        all_findings = train_mode_findings(capture, first) + all_findings
    transcripts = transcript_comparison(ta, tb, decode=transcribe, model=model)
    return Comparison(
        a=ta.path,
        b=tb.path,
        manifest_a=ta.manifest,
        manifest_b=tb.manifest,
        ops=results,
        first_divergence=first,
        findings=all_findings,
        comparability=comparability,
        warnings=warnings,
        tolerance=tolerances.default,
        profiles=profiles,
        tolerances=tolerances,
        transcripts=transcripts,
        traces=(ta, tb),
        views={n: (b_names[n], views[n]) for n in b_names},
        decoder=decoder,
        layouts=layouts,
    )


def transcript_comparison(a: Trace, b: Trace, decode: bool = False, model=None) -> dict | None:
    """Both transcripts and B's word and character error rates against A's: from the manifests
    (`trace --transcribe`), or decoded now with openai-whisper's decoder when `decode`."""
    from whisperdiff.capture.transcript import Decoder, capped, cer, token_cap, wer

    texts = [t.manifest.get("transcript", {}).get("text") for t in (a, b)]
    if decode and None in texts and "ln_post" in a and "ln_post" in b:
        from whisperdiff.inputs.models import model_of

        loaded, reasons = model_of([b.manifest, a.manifest], prefer=model)
        if loaded is None:
            raise WhisperdiffError(
                f"cannot decode the transcripts: no loadable model with the traces' weights ({reasons[-1]})"
            )
        decoder = Decoder(loaded)
        if texts[0] is None:
            texts[0] = decoder(np.asarray(a["ln_post"]))
        if texts[1] is None:
            texts[1] = decoder(np.asarray(b["ln_post"]), max_tokens=token_cap(texts[0]))
    ta, tb = texts
    if ta is None or tb is None:
        return None
    cap = token_cap(ta)  # one cap for every WER, also for B's text stored uncapped at trace time
    tb = capped(tb, cap, multilingual=(b.manifest.get("model", {}).get("dims") or {}).get("n_vocab", 0) >= 51865)
    return {"a": ta, "b": tb, "wer": wer(ta, tb), "cer": cer(ta, tb), "same": ta == tb, "max_tokens": cap}


def _decoder_context(name: str) -> dict:
    """A decoder op's position axis is tokens, not audio frames: no audio-padding analysis of its rows (the
    cross-attention's keys are still audio frames: valid_steps stays)."""
    from whisperdiff.names import is_decoder_op

    return {"audio_frames": None} if is_decoder_op(name) else {}


def _status(pair: Pair) -> str:
    """An op's status from the pairing alone (a matched op becomes ok or diverged once measured)."""
    if pair.problem:
        return "shape_mismatch"
    if pair.b_shape is None:
        return "missing_in_b"
    if pair.a_shape is None:
        return "missing_in_a"
    return "ok"


def _jumps(row: dict, before: float) -> bool:
    """Without replay: an op introduces error when its error is 10x the previous measured op's (NaN: none)."""
    return math.isnan(before) or row["rel_l2"] > 10 * max(before, 1e-12)


def _specs(manifest: dict) -> list[dict]:
    from whisperdiff.names import op_specs  # dims alone: no whisper (or torch) import to name ops

    dims = manifest.get("model", {}).get("dims")
    try:
        return [s.__dict__ for s in op_specs(dims)] if isinstance(dims, dict) and dims else []
    except (TypeError, KeyError):
        return []


def _source_of_inherited(first: OpResult, rel_l2_of, replayer_of, b_names, b_value, tolerances):
    """(op, replay, inputs) for a first divergence that only inherits its error (an op like GELU that
    magnifies the relative error of an input that is within its own limit): the input with the largest
    error, where that input introduces error of its own; else None."""
    bar = tolerances.for_op(first.op).max_rel_l2 or Tolerance.max_rel_l2
    if replayer_of() is None or not (first.introduced_rel_l2 <= bar):  # NaN: not replayed
        return None
    inputs = replayer_of().inputs_of(first.op) or []
    erring = [i for i in inputs if i in b_names and rel_l2_of.get(i, 0) > 0]
    if not erring:
        return None
    name = max(erring, key=lambda i: rel_l2_of[i])
    own_inputs, rep = _replay(replayer_of(), name, b_names, b_value)
    if rep is None or not rep["introduced"] > rel_l2_of[name] / 2:  # it inherits most of it too
        return None
    return name, rep, own_inputs


def _replay(replayer, name: str, matched: dict, b_value, sample: int = 1):
    """(input names, replay) of one op; sample=k: every k-th step only (ops that do not diverge)."""
    if replayer is None:
        return None, None
    inputs = replayer.inputs_of(name)
    if inputs is None:
        return None, None
    if not all(i in matched for i in inputs) or name not in matched:
        return inputs, None
    try:
        return inputs, replayer.replay(name, [b_value(i) for i in inputs] + [b_value(name)], sample=sample)
    except RuntimeError:  # a shape the recipe cannot take: no replay for this op
        return inputs, None


def _replayer(model, ta: Trace, tb: Trace, warnings: list[str], said: bool = False):
    """A Replayer with weights whose sha256 matches B's manifest (or A's), else None and a warning (unless
    `said`: _unknown_model already said no model named may be loaded)."""
    from whisperdiff.analysis.replay import Replayer
    from whisperdiff.inputs.models import model_of

    loaded, reasons = model_of([tb.manifest, ta.manifest], prefer=model)
    if loaded is not None:
        rp = Replayer(loaded, parts=("encoder", "decoder") if ta.manifest.get("part") == "decoder" else ("encoder",))
        run = tb.manifest.get("decoder") or {}  # B's own run: where its incremental (KV cache) steps start
        rp.decoder_context = {"prompt_length": run.get("prompt_length"), "mode": run.get("mode")}
        return rp
    if not said:
        warnings.append(
            f"introduced error not computed (no loadable model with the trace's weights; pass --model): {reasons[-1]}"
        )
    return None


def _unknown_model(ta: Trace, tb: Trace) -> list[str]:
    """A note when neither manifest names a model whisperdiff may load (no file is opened to find out)."""
    from whisperdiff.inputs.models import known_spec

    found = [
        known_spec(t.manifest.get("model", {}).get("id"), t.manifest.get("model", {}).get("source")) for t in (tb, ta)
    ]
    if any(spec is not None for spec, _ in found):
        return []
    return [f"introduced error can be computed only with --model, where an op diverges: {found[0][1]}"]
