"""Findings: from per-op metrics, replays and manifests to "what is probably wrong, where, with numbers".

Pure functions over the rows `compare` produced; nothing here reads a trace or runs a model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from whisperdiff.analysis.comparability import Comparability, comparability
from whisperdiff.analysis.hypotheses import mel_hypotheses
from whisperdiff.analysis.replay import vectors_of
from whisperdiff.analysis.residual import (
    cosine,
    describe,
    nonfinite_where,
    random_noise,
    representable_share,
    steps_with_audio,
    valid_steps,
)
from whisperdiff.measure.tolerances import new_nonfinite

KINDS = {
    "input_mismatch": "the encoders were fed different inputs (audio or log-mel frontend)",
    "weights_mismatch": "the two runs used different weights",
    "weight_layout": "a linear or conv weight used transposed, permuted or in the wrong filter layout",
    "wrong_weight": "an op uses another layer's (or another projection's) weight",
    "swapped_projections": "two projections exchanged (key and value, query and key)",
    "bias_error": "a bias missing, doubled or wrong",
    "activation_approx": "an approximate GELU (tanh, quick GELU) instead of the exact erf GELU",
    "wrong_activation": "another function instead of GELU (ReLU, SiLU, identity...)",
    "layer_norm_eps": "layer-norm epsilon differs (solved from the data)",
    "layer_norm_variance": "layer norm uses the unbiased (n-1) variance",
    "layer_norm_affine": "layer norm without gamma and/or beta",
    "rms_norm": "RMSNorm instead of LayerNorm",
    "norm_axis": "normalised over the wrong axis",
    "softmax_axis": "attention softmax over the wrong axis",
    "attention_mask": "a mask in the (unmasked) encoder attention: causal, padding",
    "attention_scale": "attention scores scaled wrongly (factor solved from the data)",
    "head_split": "heads split or merged in the wrong order",
    "head_missing": "one attention head contributes nothing (its output zeroed or dropped)",
    "conv_padding": "conv padding wrong: one side only, none, too much",
    "conv_stride": "conv stride wrong",
    "conv_kernel": "a convolution uses the wrong kernel taps (centre only, flipped, missing)",
    "positional": "positional embedding missing, shifted, scaled or recomputed",
    "precision": "error at the level of reduced-precision rounding (float16, bfloat16, tf32)",
    "missing_op": "an op is absent, or computes the identity where it should transform",
    "missing_residual": "a residual connection dropped",
    "scale_mismatch": "a global factor; or the trap: statistics match, content does not",
    "bias_shift": "a constant global offset that is not a model bias",
    "sign_flip": "values negated",
    "nonfinite": "NaN or Inf appear",
    "nonfinite_reference": "the reference (A) holds NaN or Inf: its metrics cannot be trusted",
    "shape_mismatch": "an op's shapes differ under every known layout",
    "layout": "values match after a transpose or reshape",
    "divergence": "the op introduces error no hypothesis reproduces",
    "port_output": "a captured port's own output is not the value aligned as the final op (ops after it)",
    "causal_mask": "decoder self-attention sees later positions (no causal mask)",
    "kv_cache": "a decoding step reads the wrong KV cache: an entry missing, overwritten, stale or written at the "
    "wrong slot (replayed row by row)",
    "stochastic": "dropout or noise left on: B differs from its replay by dropped values or random noise",
    "head_order": "attention heads permuted or duplicated when merged",
    "suppression": "some tokens' logits overwritten inside the model (set to a large negative value or -inf)",
    "wiring": "a block wired wrongly: post-norm, a residual added from the wrong value, a block skipped or run twice",
}
REPRODUCES = 0.2  # a hypothesis names the bug when it reproduces B to this share of the plain replay's error
SEVERITY_RANK = {"error": 0, "warning": 1, "info": 2}


@dataclass
class Finding:
    kind: str
    op: str | None
    confidence: float
    message: str
    severity: str = "error"
    also_at: list[str] = field(default_factory=list)  # later ops where the same kind repeats

    def to_dict(self) -> dict:
        return asdict(self)


def manifest_findings(ma: Mapping, mb: Mapping) -> tuple[list[Finding], list[str], Comparability]:
    """(findings, warnings, comparability) from the two manifests alone. The comparability is truthy
    when the traces are comparable; its reasons are among the warnings too ("NOT COMPARABLE: ...")."""
    found = comparability(ma, mb)
    findings, warnings = [], found.warnings
    if found.reason("weights") is not None:
        wa, wb = ma["model"]["weights_sha256"], mb["model"]["weights_sha256"]
        findings.append(
            Finding(
                "weights_mismatch",
                None,
                1.0,
                f"weights differ: {ma['model'].get('source')} (sha256 {wa[:12]}) vs "
                f"{mb['model'].get('source')} (sha256 {wb[:12]})",
            )
        )
    ia, ib = ma.get("input", {}), mb.get("input", {})
    if found.reason("input") is not None:
        findings.append(
            Finding(
                "input_mismatch",
                "mel",
                1.0,
                f"different input files: {ia.get('path')} (sha256 {ia['sha256'][:12]}) vs "
                f"{ib.get('path')} (sha256 {ib['sha256'][:12]})",
            )
        )
    elif ia.get("mel_sha256") and ib.get("mel_sha256") and ia["mel_sha256"] != ib["mel_sha256"]:
        warnings.append(
            f"same audio but different log-mel inputs (frontend: {ia.get('frontend')} vs {ib.get('frontend')})"
        )
    for side, m in (("A", ma), ("B", mb)):
        for bug in m.get("injected") or []:
            warnings.append(f"trace {side} has an injected bug: {bug.get('name')} (acts at {bug.get('first_op')})")
    return findings, warnings, found


def untapped(ma: dict, mb: dict) -> bool:
    """B recorded a subset of A's ops on purpose (`--taps default`, a plugin...): ops absent from it are not bugs."""
    return mb.get("taps") not in (None, "all") and ma.get("taps") != mb.get("taps")


def op_finding(
    row: dict,
    replay: dict | None,
    rounding: dict[str, float],
    *,
    a=None,
    b=None,
    context: dict | None = None,
    explain=None,
) -> Finding | None:
    """The finding for one op that introduces (or, without replay, shows) error; None when it does not.

    replay: Replayer.explain's result (hypotheses by op type, replayed on B's inputs) or None. a, b: the
    op's arrays (B in A's layout), for the tests on B itself (which values it can represent) and for
    the structure of B - A. context: layout, audio_frames, n_head, vectors (the model's 1-D parameters).
    explain: a callable returning the replay with its hypotheses (explain(precision_only=dtype): only those
    of that precision), called only where they are needed: where B's own values already show the precision (an
    op that holds only bfloat16 values, with an error of that size), only to say it more precisely."""
    name = row["name"]
    ctx = context or {}
    if new_nonfinite(row):
        why = ""
        if explain is not None:  # a hypothesis that gives NaN exactly where B has them (and B's values elsewhere)
            hyps = [h for h in explain()["hypotheses"] if h[2] < 1e-3]
            if hyps:
                why = f"; {min(hyps, key=lambda h: h[2])[1]} reproduces B, NaN included (rel L2 {min(h[2] for h in hyps):.1e})"
        return Finding(
            "nonfinite",
            name,
            1.0,
            f"NaN/Inf first appear at {name}: {row['nan_b']} NaN, {row['inf_b']} Inf in B "
            f"(A has {row['nan_a']}, {row['inf_a']}){nonfinite_where(b)}{why}",
        )
    if name == "mel":
        return _mel_finding(row, a, b, ctx.get("audio_frames"), ctx.get("audio"))
    introduced = replay["introduced"] if replay else row["rel_l2"]
    where = "introduced here" if replay else "first visible here"
    if b is not None:  # B itself says it: only low-precision values, an error of that rounding's size
        f = _precision_finding(name, b, a, introduced, rounding, where, within=10)
        if f is not None and explain is not None:  # which sub-op: a precision hypothesis says it more precisely
            replay = explain(precision_only=f._dtype)  # the finding is precision whatever else fits: refine it
            best = _reproducing(list(replay["hypotheses"]), introduced)
            if best is not None and best[0] == "precision":
                f.message = (
                    f"{best[1]}: replaying {name} that way on B's own inputs reproduces B to rel L2 {best[2]:.1e}, "
                    f"against {introduced:.2e} for the correct op (and every value of B is exactly representable "
                    "in that precision)"
                )
            return f
        if f is not None:
            return f
    if explain is not None:
        replay = explain()
    hyps = list(replay["hypotheses"]) if replay else []
    if not replay and a is not None and b is not None:
        hyps = _hypotheses_against_a(a, b)
    best = _reproducing(hyps, introduced)
    if best is not None:
        kind, text, err, extra = best
        confidence = round(max(0.5, min(0.99, 1 - err / introduced)), 2) if introduced > 0 else 0.5
        from_a = replay.get("inputs_from_a") if replay else None
        own = f" (A's {', '.join(from_a)}, which B does not record)" if from_a else ""
        f = Finding(
            kind,
            name,
            confidence,
            f"{text}: replaying {name} that way on B's own inputs{own} reproduces B to rel L2 {err:.1e}, "
            f"against {introduced:.2e} for the correct op (cosine {row['cosine']:.5f}, "
            f"std B/A {row['std_ratio']:.3f})"
            if replay
            else f"{text}: B is A that way to rel L2 {err:.1e}, against {introduced:.2e} as recorded "
            f"(cosine {row['cosine']:.5f}, std B/A {row['std_ratio']:.3f}); first visible here",
        )
        f._uses = extra.get("uses")  # for pair_swaps
        return f
    if b is not None:
        f = _precision_finding(name, b, a, introduced, rounding, where, within=30)
        if f is not None:
            return f
    e = replay.get("expected") if replay else a
    if name == "decoder.logits" and replay and e is not None and b is not None and cosine(b, e) < 0.1:
        return Finding(
            "wrong_weight",
            name,
            0.7,
            f"{name}: B's logits are not the tied projection x @ token_embedding.T in any layout replayed (cosine "
            f"{cosine(b, e):.3f} with it; rel L2 {introduced:.3g}): the output projection is untied from the token "
            "embedding (another matrix, or a freshly initialised one); tie it to decoder.token_embedding",
        )
    if e is not None and b is not None and (noise := random_noise(b, e)):
        return Finding(
            "stochastic",
            name,
            0.6,
            f"{name}: error {where} (rel L2 {introduced:.3g}) that looks like independent random noise: {noise}. "
            "Noise is added, or a stochastic op (dropout, sampling) is left on; a deterministic port gives the "
            "same values on a second run",
        )
    norm = ctx.get("norm_params", lambda _op: None)(name) if b is not None else None
    if norm is not None:
        f = _norm_finding(name, b, *norm, ctx.get("layout"), introduced, where, ctx.get("vectors") or {})
        if f is not None:
            return f
    facts = ""
    if e is not None and b is not None:
        facts = describe(
            b,
            e,
            ctx.get("layout"),
            audio_frames=ctx.get("audio_frames"),
            n_head=ctx.get("n_head"),
            vectors=ctx.get("vectors"),
        )
    closest = ""
    if hyps:
        _, text, err, _ = min(hyps, key=lambda h: h[2])
        closest = f"; the closest hypothesis ({text}) leaves rel L2 {err:.2g}"
    against = "its replay" if replay else "A"
    size = ", ".join(f"{dt} rounding {v:.1e}" for dt, v in rounding.items() if v)
    return Finding(
        "divergence",
        name,
        0.5,
        f"{name}: error {where} (rel L2 {introduced:.3g}, cosine {row['cosine']:.5f}, std B/A "
        f"{row['std_ratio']:.3f}{'; for scale: ' + size if size else ''}); no hypothesis reproduces it"
        f"{closest}{f'. Structure of B - {against}: ' + facts if facts else ''}",
    )


def _norm_finding(name, b, param, gamma, beta, layout, introduced, where, vectors) -> Finding | None:
    """A layer-norm op whose value in B is not that layer norm's output, told by B alone (no input needed):
    per row, (B - beta) / gamma of a layer-norm output has mean 0 and std 1. None when it has (the error is
    elsewhere) or when the layout has no channel axis last. param: the norm's weight name without ".weight"."""
    b = np.asarray(b, np.float64)
    if b.ndim < 2 or b.shape[-1] != gamma.shape[-1] or (layout and not str(layout).endswith(",C")):
        return None
    ok = np.abs(gamma) > 1e-6 * max(float(np.abs(gamma).max()), 1e-30)
    if ok.sum() < 2:
        return None

    def row_stats(x):
        rows = x.reshape(-1, x.shape[-1])
        rows = rows[np.isfinite(rows).all(axis=1)]
        if not len(rows):
            return None
        return float(np.median(np.abs(rows.mean(axis=1)))), float(np.median(rows.std(axis=1)))

    def normalised(stats):
        return stats is not None and stats[0] < 0.05 and abs(stats[1] - 1) < 0.05

    affine = row_stats((b[..., ok] - beta[ok]) / gamma[ok])
    plain = row_stats(b)
    if affine is None or normalised(affine):
        return None  # B is this layer norm's output in form (exactly 0 and 1, up to rounding): the error is elsewhere
    stats = f"per row, (B - bias) / weight has median |mean| {affine[0]:.3g} and std {affine[1]:.3g}"
    fits = {None: plain}  # None: normalised with no weight and bias; else another layer norm's name
    part = param.split(".", 1)[0] + "."
    for key, g in vectors.items():  # another layer norm's (a 1-D weight with a bias), as norm_hypotheses picks them
        other = key.removesuffix(".weight")
        bias = vectors.get(f"{other}.bias")
        if key == other or other == param or not other.startswith(part) or bias is None or g.shape != gamma.shape:
            continue
        g, bias = np.asarray(g, np.float64), np.asarray(bias, np.float64)
        if (np.abs(g) <= 1e-6 * np.abs(g).max()).any():
            continue
        fits[other] = row_stats((b - bias) / g)
    fits = {k: v for k, v in fits.items() if normalised(v)}
    if fits:  # the one that fits best
        other = min(fits, key=lambda k: fits[k][0] + abs(fits[k][1] - 1))
        if other is None:
            return Finding(
                "wrong_weight",
                name,
                0.7,
                f"{name}: B is normalised, (x - mean) / std per row, but without {name}'s weight and bias ({stats}; "
                f"B itself has mean {plain[0]:.2g} and std {plain[1]:.3g}): the affine of the layer norm is missing "
                f"(error {where}, rel L2 {introduced:.3g})",
            )
        return Finding(
            "wrong_weight",
            name,
            0.7,
            f"{name}: B is a layer norm's output with {other.removeprefix('encoder.')}'s weight and bias, not "
            f"{name}'s own ({stats} with its own; with those, mean 0 and std 1; error {where}, rel L2 "
            f"{introduced:.3g})",
        )
    return Finding(
        "wiring",
        name,
        0.7,
        f"{name}: B's value here is not the output of this layer norm: {stats}, where a layer norm with "
        f"{name}'s weights gives 0 and 1. It has not been through this layer norm: a value from before it (an "
        f"earlier block's output, the residual stream) stands where {name}'s output belongs, or the norm is "
        f"skipped (error {where}, rel L2 {introduced:.3g})",
    )


def _reproducing(hyps: list[tuple], introduced: float):
    """The hypothesis that reproduces B, or None when none does or two different ones do about equally."""
    if not hyps or not introduced > 0:
        return None
    ranked = sorted(hyps, key=lambda h: h[2])
    best = ranked[0]
    if not best[2] < REPRODUCES * introduced:
        return None
    label = lambda h: (h[0], h[3].get("dtype"), h[3].get("uses"))  # noqa: E731
    rival = next((h for h in ranked[1:] if label(h) != label(best)), None)
    if rival is not None and rival[2] < 2 * best[2] and best[2] > 0.01 * introduced:
        return None  # two different explanations fit about as well: evidence for neither
    if best[0] == "precision":  # float16 and tf32 round a value alike (10-bit mantissas) unless it is tiny or huge
        same = [h for h in ranked[1:] if h[0] == "precision" and h[3].get("dtype") != best[3].get("dtype")]
        same = [h for h in same if h[2] <= 1.01 * best[2]]  # the same fit: exact 0 against 1e-9 is evidence
        if same:
            text = f"{best[1]}, or equally here {same[0][1]} (both give these values)"
            return best[0], text, best[2], best[3]
    return best


def _hypotheses_against_a(a, b) -> list[tuple]:
    """Without a replay, the generic relations of B to A itself: negated, a global factor, an offset."""
    a64 = np.asarray(a, np.float64)
    b64 = np.asarray(b, np.float64)
    ok = np.isfinite(a64) & np.isfinite(b64)
    a64, b64 = np.where(ok, a64, 0.0), np.where(ok, b64, 0.0)

    def err(c):
        n = np.linalg.norm(c)
        return float(np.linalg.norm(b64 - c) / n) if n > 0 else math.inf

    out = [("sign_flip", "values negated", err(-a64), {})]
    aa = float((a64 * a64).sum())
    if aa > 0:
        c = float((a64 * b64).sum()) / aa
        if c > 0 and abs(c - 1) > 0.01:
            out.append(("scale_mismatch", f"a global factor {c:.4g} (solved from the data)", err(c * a64), {}))
    m = float((b64 - a64).mean())
    out.append(("bias_shift", f"a constant offset {m:+.4g} on every element", err(a64 + m), {}))
    sd = a64.std()
    if sd > 0:
        out.append(
            (
                "scale_mismatch",
                "statistics match, content does not: a whole-tensor rescale (x - mean) / std",
                err((a64 - a64.mean()) / sd),
                {},
            )
        )
    return out


def _precision_finding(name, b, a, introduced, rounding, where, within: float) -> Finding | None:
    """B holds only values a lower precision can represent, and its error is the size of that rounding."""
    for dtype in ("bfloat16", "float16"):
        share = representable_share(b, dtype)
        floor = rounding.get(dtype)
        if share < 0.999 or not floor or introduced > within * floor:
            continue
        if a is not None and representable_share(a, dtype) > 0.5:
            continue  # A is stored at that precision too: not evidence
        # all values on that grid (chance: 2^-13 per value for float16) and an error of that size: strong
        confidence = 0.95 if share >= 0.9999 and introduced <= 3 * floor else 0.85
        f = Finding(
            "precision",
            name,
            confidence,
            f"{name}: {share:.2%} of B's values are exactly representable in {dtype}, and the error "
            f"{introduced:.2e} ({where}) is the size of {dtype} rounding of this op ({floor:.2e}): "
            f"this op runs or is stored in {dtype}",
        )
        f._dtype = dtype  # which precision's hypotheses can say it more precisely
        return f
    return None


def _mel_finding(row: dict, a=None, b=None, audio_frames: int | None = None, audio=None) -> Finding:
    which = ""
    if a is not None and b is not None:
        padding = mel_padding(np.asarray(a), np.asarray(b), audio_frames)
        if padding is not None:
            return Finding("input_mismatch", "mel", 0.95, padding)
        audio = audio() if callable(audio) else audio
        # what B's log-mel is, from A's alone; without the audio, the clamp hypotheses can only say "consistent"
        missing_clamp = ("the clamp at max - 8 is missing", "neither the clamp")  # judged on B's own floor values
        found = [h for h in mel_hypotheses(a, b) if audio is None or not h[0].startswith(missing_clamp)]
        replayed = []
        if audio is not None:  # the frontend replayed on the audio, each usual variant
            from whisperdiff.analysis.frontend_replay import replay_frontend

            replayed = replay_frontend(audio[0], a, b, audio[1])[:1]
        best = min([(h[1], h[0], False) for h in found] + [(h[1], h[0], True) for h in replayed], default=None)
        if best is not None and best[0] < REPRODUCES * row["rel_l2"]:
            if best[2]:
                return Finding(
                    "input_mismatch",
                    "mel",
                    0.95,
                    f"B's log-mel is Whisper's frontend with {best[1]}: replaying that frontend on the audio "
                    f"reproduces B to rel L2 {best[0]:.1e}, against {row['rel_l2']:.3g} for Whisper's "
                    f"(cosine {row['cosine']:.4f}); a frontend bug, not an encoder bug",
                )
            which = f"; B is {best[1]} (reproduces B to rel L2 {best[0]:.1e})"
    return Finding(
        "input_mismatch",
        "mel",
        0.95,
        f"the log-mel inputs differ before any encoder op (rel L2 {row['rel_l2']:.3g}, cosine "
        f"{row['cosine']:.4f}; mean {row['mean_a']:.3f} vs {row['mean_b']:.3f}, std {row['std_a']:.3f} vs "
        f"{row['std_b']:.3f}){which}: a different frontend or normalisation, not an encoder bug; "
        "compute B's features with whisper.log_mel_spectrogram",
    )


def mel_padding(a: np.ndarray, b: np.ndarray, audio_frames: int | None) -> str | None:
    """The message when B's log-mel differs from A's (almost) only in the frames after the audio, with
    what B's padding holds; None when the audio frames differ too (or the audio length is unknown)."""
    t = a.shape[-1]
    if not audio_frames or audio_frames >= t or a.shape != b.shape:
        return None
    d = (b.astype(np.float64) - a.astype(np.float64)).reshape(-1, t)
    total = float((d * d).sum())
    pad_share = float((d[:, audio_frames:] ** 2).sum()) / total if total > 0 else 0.0
    if pad_share < 0.99:
        return None
    audio = np.linalg.norm(d[:, :audio_frames]) / max(np.linalg.norm(a.reshape(-1, t)[:, :audio_frames]), 1e-30)
    pad_b, pad_a = b.reshape(-1, t)[:, audio_frames:], a.reshape(-1, t)[:, audio_frames:]
    held = (
        f"the constant {float(pad_b.flat[0]):.4g}"
        if np.ptp(pad_b) == 0
        else f"values from {pad_b.min():.4g} to {pad_b.max():.4g}"
    )
    return (
        f"the log-mels differ only in the padding after the audio ({pad_share:.1%} of the difference lies in "
        f"frames >= {audio_frames} of {t}; the audio frames agree to rel L2 {audio:.1e}): B's padding holds "
        f"{held}, Whisper's holds the log-mel of zero-padded audio ({pad_a.min():.4g} to {pad_a.max():.4g}); "
        "pad the waveform with zeros to 30 s before the log-mel (whisper.pad_or_trim on the audio), "
        "not the log-mel afterwards"
    )


def diagnosis_context(ta, replayer=None) -> dict:
    """What op_finding needs beyond one op's arrays: the audio length (padding), heads, the model's vectors."""
    dims = ta.manifest.get("model", {}).get("dims") or {}
    mel = np.asarray(ta["mel"]) if "mel" in ta else None
    frames = valid_steps(ta.manifest, mel)
    ctx = {"audio_frames": frames, "n_head": dims.get("n_audio_head"), "vectors": None, "valid_steps": {}}
    if frames:
        n_ctx = dims.get("n_audio_ctx", 1500)
        ctx["valid_steps"] = {t: steps_with_audio(frames, t) for t in (n_ctx, 2 * n_ctx)}
    if replayer is not None:
        ctx["vectors"] = {k: v.numpy() for k, v in vectors_of(replayer.w).items()}
        ctx["norm_params"] = lambda op: norm_params(replayer, op)
    return ctx


def norm_params(replayer, op: str):
    """(name, weight, bias) of the layer norm that op is, the two as float64 arrays; None when op is not one."""
    recipe = replayer.recipe(op)
    if recipe is None or recipe.type != "norm" or "name" not in recipe.params:
        return None
    w = replayer.w
    name = recipe.params["name"]
    if f"{name}.weight" not in w or f"{name}.bias" not in w:
        return None
    return name, w[f"{name}.weight"].double().numpy(), w[f"{name}.bias"].double().numpy()


def pair_swaps(findings: list[Finding]) -> list[Finding]:
    """Two `wrong_weight` findings where op X uses Y's weight and Y uses X's: the pair is swapped."""
    by_op = {f.op: f for f in findings if f.kind == "wrong_weight"}
    paired: set[str] = set()
    for f in list(by_op.values()):
        other = by_op.get(getattr(f, "_uses", None))
        if other is not None and getattr(other, "_uses", None) == f.op and f.op not in paired:
            paired.update((f.op, other.op))  # each pair once: its second member would prefix both again
            projections = all(
                re.search(r"\.(attn|cross_attn)\.[qkv]$|\.out$|mlp\.fc[12]$", n) for n in (f.op, other.op)
            )
            for g, h in ((f, other), (other, f)):
                # two projections exchanged; any other pair (two blocks' layer norms) keeps wrong_weight
                g.kind = "swapped_projections" if projections else "wrong_weight"
                g.message = f"{g.op} and {h.op} are swapped (each uses the other's weights): " + g.message
    return findings


def merge_repeats(findings: list[Finding]) -> list[Finding]:
    """One finding per kind (and severity): later ops with the same kind are listed in `also_at`.

    Kept apart: unexplained divergences, shape mismatches and layouts say something different at each op."""
    merged: list[Finding] = []
    first_of_kind: dict[tuple[str, str], Finding] = {}
    for f in findings:
        key = (f.kind, f.severity)
        if f.op is not None and key in first_of_kind and f.kind not in ("divergence", "shape_mismatch", "layout"):
            first_of_kind[key].also_at.append(f.op)
            continue
        first_of_kind[key] = f
        merged.append(f)
    return merged


def order(findings: list[Finding], op_order: list[str]) -> list[Finding]:
    """Most severe first; within a severity, the op nearest the input first (inputs before any op)."""
    index = {name: i for i, name in enumerate(op_order)}
    return sorted(findings, key=lambda f: (SEVERITY_RANK[f.severity], -1 if f.op is None else index.get(f.op, 1 << 30)))


def settle_divergences(findings: list[Finding], op_order: list[str]) -> list[Finding]:
    """An unexplained divergence at an op another finding names is dropped (that finding says it better);
    one after a named finding becomes a warning that says so: the named bug may be its cause (a bug that
    acts in every layer), and an error-severity finding stays for what nothing before it explains."""
    index = {name: i for i, name in enumerate(op_order)}
    named = [f for f in findings if f.severity == "error" and f.kind != "divergence" and f.op in index]
    at = {f.op for f in named}
    out = []
    for f in findings:
        if f.kind == "divergence" and f.severity == "error" and f.op in index:
            if f.op in at:
                continue
            before = [n for n in named if index[n.op] < index[f.op]]
            if before:
                f.severity = "warning"
                f.message += (
                    f" (after {before[0].kind} at {before[0].op}, which may cause it: the same bug in a later layer)"
                )
        out.append(f)
    return out
