"""The HTML divergence report: one self-contained page a person opens when a port is wrong.

    import whisperdiff as wd
    c = wd.compare("traces/torch-tiny.en-speech", "traces/max-tiny.en-speech+missing-ln-post")
    wd.write_report(c, "reports/missing-ln-post.html")

Sections, top to bottom: verdict, divergence along the network, the first divergent op up close
(and any op asked for), the per-op table (the ops where it goes wrong pinned first), both
manifests. Markup lives in templates/report.html.j2, rendered by Jinja2 with autoescape: every
string taken from a trace is escaped by default, and a Content-Security-Policy forbids scripts
outright, so a trace whose op name is `<script>...` shows that text and runs nothing. Figures come
from plots.py, embedded as data: URIs, so the file needs no network and no other file.
"""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import numpy as np
from markupsafe import Markup

from whisperdiff.analysis.comparability import PREFIX
from whisperdiff.analysis.compare import Comparison
from whisperdiff.analysis.diagnose import KINDS
from whisperdiff.errors import WhisperdiffError
from whisperdiff.names import is_decoder_op
from whisperdiff.present.report_tables import (
    manifest_rows,
    num,
    op_table,
    short_manifest,
    top_introducers,
)
from whisperdiff.provenance import version
from whisperdiff.store.trace import write_text_atomic


class _Plots:
    """present.plots, imported on first use: `compare` uses this module's tables without drawing (no matplotlib)."""

    def __getattr__(self, name: str):
        from whisperdiff.present import plots as module

        return getattr(module, name)


plots = _Plots()

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
MAX_FINDINGS = 6


@cache
def _environment():
    from jinja2 import Environment, PackageLoader, select_autoescape

    return Environment(
        loader=PackageLoader("whisperdiff.present", "templates"),
        autoescape=select_autoescape(["html", "j2"], default=True),
    )


def template(name: str):
    return _environment().get_template(name)


def default_path(c: Comparison, directory: str | Path = "reports") -> Path:
    return Path(directory) / f"{c.a.name}--vs--{c.b.name}.html"


def write_report(
    c: Comparison,
    path: str | Path | None = None,
    *,
    ops: list[str] = (),
    head: int | None = None,
    patching=None,
    on_op=None,
    on_total=None,
) -> Path:
    """Render `c` and write it atomically (a half-written report never replaces a good one).
    Progress, as compare reports it: on_total(figures to draw), on_op(figure) after each is drawn."""
    path = Path(path) if path is not None else default_path(c)
    if path.suffix.lower() not in (".html", ".htm"):
        raise WhisperdiffError(f"report path {path} should end in .html")
    page = render(c, ops=ops, head=head, patching=patching, on_op=on_op, on_total=on_total)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, page)
    return path


def render(
    c: Comparison, *, ops: list[str] = (), head: int | None = None, patching=None, on_op=None, on_total=None
) -> str:
    """The whole report as one HTML string. patching: a patch.Patching to chart (optional)."""
    unknown = [op for op in ops if op not in c.views]
    if unknown:
        raise WhisperdiffError(f"--op {unknown[0]!r} is not an op of both traces; see `whisperdiff ops`")
    focus = list(dict.fromkeys([*focus_ops(c), *ops]))
    n_figures = 2 + 4 * len(focus) + (1 if patching else 0) + (1 if c.decoder else 0)
    done = [0]
    if on_total is not None:
        on_total(n_figures)

    pending: list[tuple[dict, object, str]] = []

    def figure(make, alt: str, caption: str, fmt: str = "svg") -> dict:
        """make() builds the figure; all are drawn together at the end (plots.draw_all), in parallel where it can."""
        entry = {"alt": alt, "caption": caption, "src": None}
        pending.append((entry, make, fmt))
        return entry

    def drawn() -> None:
        done[0] += 1
        if on_op is not None:
            on_op(f"figure {done[0]}")

    t = c.tolerance
    network = [
        figure(
            lambda: plots.divergence(c.table, c.first_divergence, t.min_cosine, t.max_rel_l2),
            "Relative L2 error and 1 - cosine per op, log scale, with the error each op introduces",
            "Lines: total error of B at each op. Green bars: the error the op itself introduces (recomputed on B's "
            "own inputs); where the line is far above the bar, the error is inherited from earlier ops. Dotted: the "
            "tolerance. Dashed red: the first divergent op. Hollow circles on the floor: exactly 0.",
        ),
        figure(
            lambda: plots.statistics(c.table, c.first_divergence, t.max_rel_l2, t.max_std_ratio_dev),
            "Std ratio and mean shift of B against A per op, with the tolerance band",
            "Top: B's std over A's. Bottom: B's mean minus A's, in units of A's std. Green band: the shift that alone "
            "would use up the rel L2 tolerance. Red points are outside it: a normalisation or scale is wrong there. "
            "Inside the band while the error above is large: the statistics look right, the content is not.",
        ),
    ]
    context = {
        "csp": Markup(CSP),
        "style": Markup(STYLE),
        "a_name": c.a.name,
        "b_name": c.b.name,
        "a_path": str(c.a),
        "b_path": str(c.b),
        "version": version("whisperdiff"),
        "now": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "verdict": _verdict(c),
        "first": c.first_divergence,
        "transcripts": _transcripts(c),
        "offer_transcribe": _offer_transcribe(c),
        "findings": _findings(c.findings[:MAX_FINDINGS]),
        "more_findings": len(c.findings) - MAX_FINDINGS,
        "warnings": c.warnings,
        "patching": _patching(patching, figure) if patching else None,
        "network": network,
        "up_close": [
            _up_close(
                c,
                op,
                head,
                figure,
                why="first divergence"
                if op == c.first_divergence
                else "largest error"
                if i == 0 and op not in ops
                else "asked for",
            )
            for i, op in enumerate(focus)
        ],
        "decoder": _decoder(c, figure),
        "top": top_introducers(c),
        **op_table(c),
        "manifest_rows": manifest_rows(c),
        "raw_manifests": [
            (side, json.dumps(short_manifest(m), indent=1)) for side, m in (("A", c.manifest_a), ("B", c.manifest_b))
        ],
    }
    if on_total is not None:
        on_total(len(pending))  # the estimate becomes the count drawn
    images = plots.draw_all([(make, fmt) for _, make, fmt in pending], on_done=drawn)
    for (entry, _, _), (mime, data) in zip(pending, images, strict=True):
        entry["src"] = f"data:{mime};base64,{base64.b64encode(data).decode()}"
    return template("report.html.j2").render(**context).lstrip()


def focus_ops(c: Comparison) -> list[str]:
    """The ops to show up close: the first divergence; with none, the op with the largest error."""
    if c.first_divergence in c.views:
        return [c.first_divergence]
    rel = c.table["rel_l2"].dropna()
    rel = rel[[n in c.views for n in rel.index]]
    return [str(rel.idxmax())] if len(rel) else []


# -- sections ------------------------------------------------------------------------------------
def verdict(c: Comparison) -> tuple[str, str]:
    """(css class, headline): the one sentence at the top of the report."""
    rows = c.table
    matched = rows[rows["rel_l2"].notna()]
    if not c.comparable:
        return "incomparable", PREFIX + c.comparability.summary
    if c.first_divergence is None:
        return "good", f"No divergence: B matches A on all {len(matched)} ops within tolerance"
    n_div = int(rows["diverged"].sum())
    compared = int((~rows["status"].isin(["not_traced", "not_aligned"])).sum())
    return "bad", f"B diverges from A first at {c.first_divergence} ({n_div} of {compared} ops diverge)"


def limits_text(c: Comparison) -> str:
    return c.limits()


def _verdict(c: Comparison) -> dict:
    cls, headline = verdict(c)
    rows = c.table[c.table["rel_l2"].notna()]
    facts = []
    if len(rows):
        worst = rows.loc[rows["rel_l2"].idxmax()]
        last = rows.iloc[-1]
        facts.append(f"largest error: rel L2 {worst['rel_l2']:.3g} at {worst['op']}")
        facts.append(f"final op {last['op']}: cosine {last['cosine']:.6f}, rel L2 {last['rel_l2']:.3g}")
    facts.append(f"tolerance: {limits_text(c)}")
    return {"cls": cls, "headline": headline, "facts": facts}


def _findings(findings) -> list[dict]:
    return [
        {
            "kind": f.kind,
            "op": f.op or "(whole run)",
            "confidence": f.confidence,
            "message": f.message,
            "severity": f.severity,
            "plain": KINDS.get(f.kind, ""),
            "also_at": list(f.also_at or []),
        }
        for f in findings
    ]


def _transcripts(c: Comparison) -> dict | None:
    from whisperdiff.capture.transcript import cap_note, word_diff

    t = c.transcripts
    if not t:
        return None
    return {**t, "diff": word_diff(t["a"], t["b"]), "note": cap_note(t.get("max_tokens"))}


def _offer_transcribe(c: Comparison) -> str | None:
    """The cheap command that adds the transcripts, when both traces have the encoder output."""
    ops = [{o.get("name") for o in m.get("ops", [])} for m in (c.manifest_a, c.manifest_b)]
    if c.transcripts or not all("ln_post" in o for o in ops):
        return None
    return f"whisperdiff report {c.a} {c.b} --transcribe"


def _patching(p, figure) -> dict:
    from whisperdiff.capture.transcript import cap_note
    from whisperdiff.experiments.patch import RESTORED

    cause = p.result(p.cause) if p.cause else None
    return {
        "cause": p.cause,
        "unpatched_wer": p.unpatched_wer,
        "note": cap_note(p.max_tokens),
        "cause_restored": cause.restored if cause else None,
        "cause_wer": cause.wer if cause else None,
        "rows": p.results,
        "figure": figure(
            lambda: plots.patching([r.op for r in p.results], [r.restored for r in p.results], p.cause, RESTORED),
            "Share of B's final error restored by patching each op",
            "Each bar: B re-run with A's activation substituted at that op; how much of B's final "
            "error (rel L2 of the last op against A) disappears. The cause is the earliest bar that "
            "reaches the dashed line.",
        ),
    }


def _up_close(c: Comparison, op: str, head: int | None, figure, why: str) -> dict:
    a, b = c.values(op)
    r = c.result(op)
    within = not r.diverged
    spec_layout = _layout(c, op)
    m = r.metric
    facts = (
        f"cosine {m('cosine'):.6f} · rel L2 {m('rel_l2'):.3g} · introduced {num(r.introduced_rel_l2)} · "
        f"inherited {num(r.inherited_rel_l2)} · max |B - A| {m('max_abs'):.3g} at {m('max_abs_index')} · "
        f"std B/A {m('std_ratio'):.4f} · shape {tuple(a.shape)}"
        + (f" (B stored {r.b_layout})" if r.b_layout else "")
        + (f" · within tolerance ({limits_text(c)})" if within else f" · fails: {r.failures_text}")
    )
    figures = [
        figure(
            lambda: plots.histograms(a, b, op),
            f"Value histograms of A and B at {op}",
            "Overlaid distributions; a shifted, squeezed or clipped B shows here.",
        )
    ]
    audio_steps = _audio_steps(c, a.shape, spec_layout)
    if spec_layout == "B,H,T_q,T_k":
        figures.append(_attention(c, op, head, figure))
    else:
        err_tc = _as_time_channel(np.abs(b.astype(np.float64) - a), spec_layout)
        if err_tc is not None:
            figures.append(
                figure(
                    lambda: plots.error_heatmap(err_tc, op, audio_steps),
                    f"Absolute error at {op}, time step x channel",
                    "Bright columns: time steps that go wrong; bright rows: channels (a wrong weight row "
                    "or bias). Grey: exactly 0.",
                    "png",
                )
            )
    profile = c.profiles.get(op)
    if profile is not None and len(profile["step_rel_error"]) > 1:
        figures.append(
            figure(
                lambda: plots.step_error(profile["step_rel_error"], profile["step_cosine"], op, audio_steps, within),
                f"Error per time step at {op}",
                "Flat: every step equally wrong. A slope or a jump at the end of the audio: positions or padding.",
            )
        )
    block = op.split(".")[1] if op.startswith("blocks.") else None
    weights = f"blocks.{block}.attn.weights" if block is not None else None
    note = None
    if weights and weights != op and weights in c.views:
        figures.append(_attention(c, weights, head, figure))
    elif weights and weights != op:
        note = (
            f"Attention probabilities of block {block} are not in both traces; trace with --taps all to see them here."
        )
    return {"op": op, "within": within, "why": why, "facts": facts, "figures": figures, "note": note}


def _attention(c: Comparison, op: str, head: int | None, figure) -> dict:
    a, b = c.values(op)
    n_head = a.shape[1]
    if head is None:  # the head where the two sides differ most
        head = int(np.argmax([np.abs(b[0, h].astype(np.float64) - a[0, h]).sum() for h in range(n_head)]))
    if not 0 <= head < n_head:
        raise WhisperdiffError(f"--head {head} is out of range: {op} has heads 0..{n_head - 1}")
    return figure(
        lambda: plots.attention(np.asarray(a[0, head]), np.asarray(b[0, head]), op, head),
        f"Attention probabilities of head {head} at {op}: A, B and their difference",
        f"Head {head} of {n_head} (pick another with --head). A transposed or mis-scaled softmax shows as a "
        "mirrored or blurred pattern.",
        "png",
    )


# -- helpers -------------------------------------------------------------------------------------
def _layout(c: Comparison, op: str) -> str | None:
    """An encoder op's time x channel layout (decoder ops' position axis is drawn in their own section)."""
    return None if is_decoder_op(op) else c.layouts.get(op)


def _as_time_channel(x: np.ndarray, layout: str | None) -> np.ndarray | None:
    """[T, C] view of a [1, C, T] or [1, T, C] tensor; None for anything else."""
    if x.ndim != 3 or layout is None:
        return None
    if layout.startswith("B,T,"):
        return x[0]
    if layout.endswith(",T") or layout.endswith(",T_in"):
        return x[0].T
    return None


def _audio_steps(c: Comparison, shape: tuple, layout: str | None) -> int | None:
    """Where the audio ends on this op's time axis (the rest of the 30 s window is padding)."""
    duration = c.manifest_a.get("input", {}).get("duration_s")
    n_ctx = (c.manifest_a.get("model", {}).get("dims") or {}).get("n_audio_ctx")
    if not duration or not n_ctx or layout is None or len(shape) != 3:
        return None
    steps = shape[1] if layout.startswith("B,T,") else shape[2]
    return int(round(min(duration, 30.0) / 30.0 * steps))


STYLE = """
*{box-sizing:border-box} body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1400px;padding:0 16px 40px;color:#1b1b1b}
header h1{margin:14px 0 2px;font-size:22px} .sub,.meta{margin:2px 0;color:#444} .meta{font-size:12px;color:#777}
nav{margin:4px 0 10px;font-size:13px} code{font:12.5px ui-monospace,Menlo,Consolas,monospace;background:#f3f3f3;padding:0 3px;border-radius:3px}
section{margin:18px 0} h2{font-size:18px;margin:8px 0;border-bottom:1px solid #ddd;padding-bottom:3px}
.verdict{padding:12px 16px;border-radius:8px;border-left:8px solid}
.verdict h2{border:0;font-size:21px;margin:2px 0 6px}
.verdict.good{background:#e9f7ec;border-color:#2e9e49} .verdict.bad{background:#fdecea;border-color:#d62728}
.verdict.incomparable{background:#f1ecf9;border-color:#6a3fb5}
.findings{margin:6px 0;padding-left:22px} .finding{margin:6px 0} .kind{font-weight:700;background:#fff;padding:1px 6px;border-radius:10px;border:1px solid #bbb}
.finding.error .kind{border-color:#d62728;color:#a31516} .finding.warning .kind{border-color:#d08700;color:#8a5a00}
.conf{color:#666;font-size:12px} .msg{margin:2px 0} .plain{color:#555;font-size:12.5px} .facts{color:#333}
.warnings{color:#7a4b00;margin:6px 0} figure{margin:8px 0} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:12.5px;color:#555} .row{display:flex;gap:16px;flex-wrap:wrap} .note{color:#666;font-style:italic}
table.ops{border-collapse:collapse;font:11.5px ui-monospace,Menlo,Consolas,monospace;white-space:nowrap;max-width:100%}
table.ops td.wrap,table.ops td.text{white-space:normal;text-align:left;min-width:180px} tbody.pinned{border-bottom:3px solid #d62728}
tr.caption td{text-align:left !important;font:italic 12px system-ui,sans-serif;color:#a31516;background:#fff}
.within{font-size:13px;color:#fff;background:#2e9e49;border-radius:10px;padding:1px 8px;vertical-align:middle} .offer{color:#333}
@media print{table.ops th{position:static} figure{break-inside:avoid} details{display:none}}
table.ops th{position:sticky;top:0;background:#fafafa;border-bottom:2px solid #ccc;padding:3px 5px;text-align:right}
table.ops td{padding:2px 5px;text-align:right;border-bottom:1px solid #f0f0f0} table.ops td:nth-child(2),table.ops td:nth-child(3){text-align:left}
table.ops tr:nth-child(even){background:#fbfbfb} td.bad{color:#c00;font-weight:700}
tr.first{background:#ffd6d6 !important} tr.introduces{background:#ffe9e0 !important} tr.diverged{background:#fff6e0 !important}
tr.missing-in-b,tr.missing-in-a,tr.shape-mismatch{background:#eee !important;color:#900} tr.not-traced{color:#999}
.legend{font-size:12.5px} .swatch{display:inline-block;width:12px;height:12px;border:1px solid #aaa;vertical-align:middle;margin:0 3px 0 10px}
.swatch.first{background:#ffd6d6} .swatch.introduces{background:#ffe9e0} .swatch.diverged{background:#fff6e0} .swatch.missing-in-b{background:#eee}
table.manifest{border-collapse:collapse;font-size:13px;width:100%} table.manifest th,table.manifest td{border-bottom:1px solid #eee;padding:3px 8px;text-align:left;vertical-align:top;word-break:break-all}
table.manifest th{white-space:nowrap;word-break:normal} del{background:#ffd6d6;color:#900} ins{background:#d6f5dc;color:#064;text-decoration:none}
.matters{font-weight:600} .matters.differ{color:#a31516} .matters.same{color:#1f6f35} tr.cause{background:#ffd6d6 !important}
table.manifest tr.differs{background:#fff1c9} pre{font-size:11.5px;background:#f7f7f7;padding:8px;overflow:auto;max-height:400px}
"""


def _decoder(c: Comparison, figure) -> dict | None:
    """Decoder traces: the first divergence as (op, position), the logits measures, and error per position
    of the logits and of each block's output."""
    d = c.decoder
    if not d:
        return None
    wanted = [
        op
        for op in c.profiles
        if op in ("decoder.ln", "decoder.logits") or re.fullmatch(r"decoder\.blocks\.\d+\.out", op)
    ]
    errors = {op: c.profiles[op]["step_rel_error"] for op in wanted}
    logits = d.get("logits") or {}
    first = d.get("first_divergence") or {}
    at = (
        (first["op"], first["position"])
        if first.get("position") is not None and first.get("axis") == "token position"
        else None
    )
    argmax_a, argmax_b = d.get("argmax_a") or [], d.get("argmax_b") or []
    changes = [p for p, (x, y) in enumerate(zip(argmax_a, argmax_b, strict=False)) if x != y]
    fig = (
        figure(
            lambda: plots.positions(errors, logits.get("kl"), changes, at),
            "Relative error per token position of the logits and each decoder block; KL of the next-token distributions",
            "Top: each op's relative error at each token position (teacher-forced: both sides saw the same tokens). "
            "Bottom: KL(A || B) of the next-token distributions; shaded positions are where the two argmaxes differ.",
        )
        if errors
        else None
    )
    return {
        "first": first or None,
        "warning": d.get("warning"),
        "figure": fig,
        "top1": logits.get("top1_agreement"),
        "max_kl": logits.get("max_kl"),
        "change": logits.get("first_argmax_change"),
    }
