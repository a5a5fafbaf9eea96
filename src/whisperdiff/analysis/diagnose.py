"""Findings: from per-op metrics, replays and manifests to "what is probably wrong, where, with numbers".

Pure functions over the rows `compare` produced; nothing here reads a trace or runs a model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

KINDS = {
    "input_mismatch": "the encoders were fed different inputs (audio or log-mel frontend)",
    "weights_mismatch": "the two runs used different weights",
    "missing_op": "an op is absent, or computes the identity where it should transform",
    "shape_mismatch": "an op's shapes differ under every known layout",
    "layout": "values match after a transpose or reshape",
    "scale_mismatch": "right direction, wrong scale; or the trap: statistics match, content does not",
    "bias_shift": "a constant offset",
    "sign_flip": "values negated",
    "activation_approx": "an approximate activation (tanh GELU)",
    "precision": "error at the level of float16/bfloat16 rounding",
    "nonfinite": "NaN or Inf appear",
    "positional": "positional embedding missing or wrong",
    "conv_kernel": "a convolution uses the wrong kernel taps",
    "layer_norm_eps": "layer-norm epsilon differs (a variance mismatch)",
    "attention_scale": "attention scores scaled wrongly",
    "swapped_projections": "two projections' weights swapped",
    "missing_residual": "a residual connection dropped",
    "divergence": "the op introduces error no known bug explains",
}
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


def manifest_findings(ma: dict, mb: dict) -> tuple[list[Finding], list[str], bool]:
    """(findings, warnings, comparable) from the two manifests alone."""
    findings, warnings = [], []
    comparable = True
    da, db = ma.get("model", {}).get("dims"), mb.get("model", {}).get("dims")
    if da and db and da != db:
        comparable = False
        diff = ", ".join(f"{k} {da.get(k)} vs {db.get(k)}" for k in sorted(set(da) | set(db)) if da.get(k) != db.get(k))
        warnings.append(f"NOT COMPARABLE: different model dims ({diff})")
    wa, wb = ma.get("model", {}).get("weights_sha256"), mb.get("model", {}).get("weights_sha256")
    if wa and wb and wa != wb:
        comparable = False
        warnings.append(f"NOT COMPARABLE: different weights (sha256 {wa[:12]} vs {wb[:12]})")
        findings.append(Finding("weights_mismatch", None, 1.0,
                                f"weights differ: {ma['model'].get('source')} (sha256 {wa[:12]}) vs "
                                f"{mb['model'].get('source')} (sha256 {wb[:12]})"))  # fmt: skip
    ia, ib = ma.get("input", {}), mb.get("input", {})
    if ia.get("sha256") and ib.get("sha256") and ia["sha256"] != ib["sha256"]:
        comparable = False
        warnings.append(f"NOT COMPARABLE: different inputs ({ia.get('path')} vs {ib.get('path')})")
        findings.append(Finding("input_mismatch", "mel", 1.0,
                                f"different input files: {ia.get('path')} (sha256 {ia['sha256'][:12]}) vs "
                                f"{ib.get('path')} (sha256 {ib['sha256'][:12]})"))  # fmt: skip
    elif ia.get("mel_sha256") and ib.get("mel_sha256") and ia["mel_sha256"] != ib["mel_sha256"]:
        warnings.append(f"same audio but different log-mel inputs (frontend: {ia.get('frontend')} vs {ib.get('frontend')})")
    for side, m in (("A", ma), ("B", mb)):
        for bug in m.get("injected") or []:
            warnings.append(f"trace {side} has an injected bug: {bug.get('name')} (acts at {bug.get('first_op')})")
    return findings, warnings, comparable


def not_comparable_reasons(warnings: list[str]) -> str:
    """The NOT COMPARABLE warnings of manifest_findings, as one clause ("different weights (...); ...")."""
    return "; ".join(w.removeprefix("NOT COMPARABLE: ") for w in warnings if w.startswith("NOT COMPARABLE"))


def untapped(ma: dict, mb: dict) -> bool:
    """B recorded a subset of A's ops on purpose (`--taps default`, a plugin...): ops absent from it are not bugs."""
    return mb.get("taps") not in (None, "all") and ma.get("taps") != mb.get("taps")


def new_nonfinite(row: dict) -> bool:
    """B has NaN/Inf that A does not."""
    return row["nan_b"] + row["inf_b"] > row["nan_a"] + row["inf_a"]


def op_finding(row: dict, replay: dict | None, rounding: dict[str, float]) -> Finding | None:
    """The finding for one op that introduces (or, without replay, shows) error; None when it does not."""
    name = row["name"]
    if new_nonfinite(row):
        return Finding("nonfinite", name, 1.0,
                       f"NaN/Inf first appear at {name}: {row['nan_b']} NaN, {row['inf_b']} Inf in B "
                       f"(A has {row['nan_a']}, {row['inf_a']})")  # fmt: skip
    if name == "mel":
        return _mel_finding(row)
    introduced = replay["introduced"] if replay else row["rel_l2"]
    if replay and replay["hypotheses"]:
        kind, explain, err = min(replay["hypotheses"], key=lambda h: h[2])
        if err < 0.3 * introduced:
            confidence = round(max(0.5, min(0.99, 1 - err / introduced)), 2)
            return Finding(kind, name, confidence,
                           f"{explain}: replaying {name} that way on B's own inputs reproduces B to rel L2 {err:.1e}, "
                           f"against {introduced:.2e} for the correct op (cosine {row['cosine']:.5f}, "
                           f"std B/A {row['std_ratio']:.3f})")  # fmt: skip
    return _statistical_finding(row, introduced, rounding, replayed=replay is not None)


def _mel_finding(row: dict) -> Finding:
    return Finding("input_mismatch", "mel", 0.95,
                   f"the log-mel inputs differ before any encoder op (rel L2 {row['rel_l2']:.3g}, cosine "
                   f"{row['cosine']:.4f}; mean {row['mean_a']:.3f} vs {row['mean_b']:.3f}, std {row['std_a']:.3f} vs "
                   f"{row['std_b']:.3f}): a different frontend or normalisation, not an encoder bug; "
                   "compute B's features with whisper.log_mel_spectrogram")  # fmt: skip


def _statistical_finding(row: dict, introduced: float, rounding: dict[str, float], replayed: bool) -> Finding:
    name, cos, ratio = row["name"], row["cosine"], row["std_ratio"]
    where = "introduced here" if replayed else "first visible here"
    if cos < -0.99:
        return Finding("sign_flip", name, 0.9, f"{name}: B is A negated (cosine {cos:.4f}); {where}")
    for dtype in ("float16", "bfloat16"):
        floor = rounding.get(dtype)
        if floor and 0.1 * floor <= introduced <= 10 * floor and cos > 0.999:
            return Finding("precision", name, 0.7,
                           f"{name}: error {introduced:.2e} ({where}) is the size of {dtype} rounding of this op "
                           f"({floor:.2e}): part of the computation runs in {dtype}")  # fmt: skip
    if cos > 0.999 and abs(ratio - 1) > 0.01:
        return Finding("scale_mismatch", name, 0.8,
                       f"{name}: direction right (cosine {cos:.5f}) but scale off: std B/A {ratio:.3f}; {where}")
    if abs(row["mean_diff"]) > 0.1 * max(row["std_a"], 1e-12) and abs(ratio - 1) < 0.05:
        return Finding("bias_shift", name, 0.7,
                       f"{name}: shifted by {row['mean_diff']:+.4g} (std A {row['std_a']:.4g}); {where}")
    if abs(ratio - 1) < 0.05 and abs(row["mean_diff"]) < 0.05 * max(row["std_a"], 1e-12) and cos < 0.99:
        return Finding("scale_mismatch", name, 0.75,
                       f"statistics match, content does not: at {name} mean and std agree (std B/A {ratio:.3f}) "
                       f"but cosine is {cos:.4f}; a rescale made the numbers look right; {where}")  # fmt: skip
    return Finding("divergence", name, 0.5,
                   f"{name}: error {where} (rel L2 {introduced:.3g}, cosine {cos:.5f}, std B/A {ratio:.3f}), "
                   "no known bug reproduces it")  # fmt: skip


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
