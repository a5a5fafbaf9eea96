"""The HTML divergence report: one self-contained page a person opens when a port is wrong.

    import whisperdiff as wd
    c = wd.compare("traces/torch-tiny.en-speech", "traces/max-tiny.en-speech+missing-ln-post")
    wd.write_report(c, "reports/missing-ln-post.html")

Sections, top to bottom: verdict, divergence along the network, the first divergent op up close
(and any op asked for), the per-op table, both manifests. Figures come from plots.py, embedded as
data: URIs, so the file needs no network and no other file. Every string taken from a trace goes
through `esc` (html.escape), and a Content-Security-Policy forbids scripts outright: a trace whose
op name is `<script>...` shows that text and runs nothing.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from whisperdiff.analysis.compare import Comparison
from whisperdiff.analysis.diagnose import KINDS, not_comparable_reasons
from whisperdiff.errors import WhisperdiffError
from whisperdiff.present import plots
from whisperdiff.provenance import versions

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
MAX_FINDINGS = 6


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def default_path(c: Comparison, directory: str | Path = "reports") -> Path:
    return Path(directory) / f"{c.a.name}--vs--{c.b.name}.html"


def write_report(c: Comparison, path: str | Path | None = None, *, ops: list[str] = (), head: int | None = None,
                 patching=None) -> Path:  # fmt: skip
    """Render `c` and write it atomically (a half-written report never replaces a good one)."""
    path = Path(path) if path is not None else default_path(c)
    if path.suffix.lower() not in (".html", ".htm"):
        raise WhisperdiffError(f"report path {path} should end in .html")
    page = render(c, ops=ops, head=head, patching=patching)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise WhisperdiffError(f"cannot write {path}: {e.strerror}") from None
    return path


def render(c: Comparison, *, ops: list[str] = (), head: int | None = None, patching=None) -> str:
    """The whole report as one HTML string. patching: a patch.Patching to chart (optional)."""
    extra_sections = [_section("patching", "Which op causes it: activation patching", _patching(patching))] if patching else []
    unknown = [op for op in ops if op not in c.views]
    if unknown:
        raise WhisperdiffError(f"--op {unknown[0]!r} is not an op of both traces; see `whisperdiff ops`")
    focus = list(dict.fromkeys([*focus_ops(c), *ops]))
    body = [
        _header(c),
        _verdict(c),
        _section("transcripts", "Transcripts", _transcripts(c)) if c.transcripts else "",
        *extra_sections,
        _section("divergence", "Divergence along the network", _network(c)),
        *[_section(f"op-{i}", f"Up close: {esc(op)}", _up_close(c, op, head), raw_title=True) for i, op in enumerate(focus)],
        _section("table", "Every op", _table(c)),
        _section("manifests", "The two runs", _manifests(c)),
    ]
    title = f"whisperdiff: {c.a.name} vs {c.b.name}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title>\n<style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")  # fmt: skip


def focus_ops(c: Comparison) -> list[str]:
    """The ops to show up close: the first divergence; with none, the op with the largest error."""
    if c.first_divergence in c.views:
        return [c.first_divergence]
    rel = c.table.set_index("name")["rel_l2"].dropna()
    rel = rel[[n in c.views for n in rel.index]]
    return [str(rel.idxmax())] if len(rel) else []


# -- sections ------------------------------------------------------------------------------------
def _header(c: Comparison) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<header><h1>whisperdiff report</h1><p class=sub><b>A</b> (reference) <code>{esc(c.a)}</code> "
            f"&nbsp;vs&nbsp; <b>B</b> (candidate) <code>{esc(c.b)}</code></p>"
            f"<nav><a href='#divergence'>divergence</a> · <a href='#op-0'>up close</a> · <a href='#table'>every op</a>"
            f" · <a href='#manifests'>the two runs</a></nav><p class=meta>whisperdiff {esc(versions().get('whisperdiff'))}, {now}</p>"
            "</header>")  # fmt: skip


def verdict(c: Comparison) -> tuple[str, str]:
    """(css class, headline): the one sentence at the top of the report."""
    rows = c.table
    matched = rows[rows["rel_l2"].notna()]
    if not c.comparable:
        return "incomparable", "NOT COMPARABLE: " + not_comparable_reasons(c.warnings)
    if c.first_divergence is None:
        return "good", f"No divergence: B matches A on all {len(matched)} ops within tolerance"
    n_div = int(rows["diverged"].sum())
    compared = int((rows["status"] != "not_traced").sum())
    return "bad", f"B diverges from A first at {c.first_divergence} ({n_div} of {compared} ops diverge)"


def _verdict(c: Comparison) -> str:
    cls, headline = verdict(c)
    rows = c.table[c.table["rel_l2"].notna()]
    facts = []
    if len(rows):
        worst = rows.loc[rows["rel_l2"].idxmax()]
        last = rows.iloc[-1]
        facts.append(f"largest error: rel L2 {worst['rel_l2']:.3g} at <code>{esc(worst['name'])}</code>")
        facts.append(f"final op <code>{esc(last['name'])}</code>: cosine {last['cosine']:.6f}, rel L2 {last['rel_l2']:.3g}")
    t = c.tolerance
    limits = [f"cosine ≥ {t.min_cosine:g}" if t.min_cosine is not None else "",
              f"rel L2 ≤ {t.max_rel_l2:g}" if t.max_rel_l2 is not None else ""]
    facts.append(f"tolerance ({esc(c.tolerances.source)}): {', '.join(x for x in limits if x) or 'none'}"
                 + (f", {len(c.tolerances.rules)} per-op rules" if c.tolerances.rules else ""))
    findings = "".join(
        f"<li class='finding {esc(f.severity)}'><span class=kind title='{esc(KINDS.get(f.kind, ''))}'>{esc(f.kind)}</span>"
        f" at <code>{esc(f.op or '(whole run)')}</code> <span class=conf>confidence {f.confidence:.2f}</span>"
        f"<div class=msg>{esc(f.message)}</div><div class=plain>{esc(KINDS.get(f.kind, ''))}"
        + (f"; same kind also at {esc(', '.join(f.also_at))}" if f.also_at else "") + "</div></li>"
        for f in c.findings[:MAX_FINDINGS]
    )  # fmt: skip
    matters = ""
    if c.transcripts:
        t = c.transcripts
        if t["same"]:
            matters = ("<p class='matters same'>Transcripts identical (WER 0): "
                       + ("for this input the divergence does not change the text." if c.first_divergence
                          else "B decodes to the same text as A.") + "</p>")  # fmt: skip
        else:
            matters = (f"<p class='matters differ'>It matters: B's transcript differs from A's (WER {t['wer']:.1%}, "
                       f"CER {t['cer']:.1%}); see <a href='#transcripts'>the transcripts</a>.</p>")  # fmt: skip
    more = len(c.findings) - MAX_FINDINGS
    warnings = "".join(f"<li>{esc(w)}</li>" for w in c.warnings)
    return (f"<section id=verdict class='verdict {cls}'><h2>{esc(headline)}</h2>"
            f"<p class=facts>{' · '.join(facts)}</p>" + matters
            + (f"<ol class=findings>{findings}</ol>" if findings else "<p>No findings.</p>")
            + (f"<p>{more} more findings in the table below.</p>" if more > 0 else "")
            + (f"<ul class=warnings>{warnings}</ul>" if warnings else "") + "</section>")  # fmt: skip


def _transcripts(c: Comparison) -> str:
    from whisperdiff.analysis.transcript import word_diff

    t = c.transcripts
    runs = "".join(esc(text) + " " if tag == "=" else f"<del>{esc(text)}</del> " if tag == "-" else f"<ins>{esc(text)}</ins> "
                   for tag, text in word_diff(t["a"], t["b"]))  # fmt: skip
    return (f"<table class=manifest><tr><th>A (reference)</th><td>{esc(t['a'])}</td></tr>"
            f"<tr><th>B (candidate)</th><td>{esc(t['b'])}</td></tr>"
            f"<tr><th>difference</th><td class=diff>{runs}</td></tr></table>"
            f"<p>WER {t['wer']:.1%}, CER {t['cer']:.1%} (B against A, after Whisper's English normaliser). Both decoded by "
            "openai-whisper's own decoder from each encoder's output, so any difference comes from the encoders.</p>")  # fmt: skip


def _patching(p) -> str:
    rows = "".join(
        f"<tr class='{'cause' if r.op == p.cause else ''}'><td><code>{esc(r.op)}</code></td><td>{r.final_rel_l2:.3g}</td>"
        f"<td>{r.restored:.1%}</td><td>{'' if r.wer is None else f'{r.wer:.1%}'}</td><td>{esc(r.text or '')}</td></tr>"
        for r in p.results)  # fmt: skip
    matters = ("<p class='matters same'>B's transcript is already A's (WER 0): the divergence does not matter for "
               "this input.</p>" if p.unpatched_wer == 0 else
               f"<p class='matters differ'>Unpatched, B's transcript has WER {p.unpatched_wer:.0%} against A's (every "
               f"run here is decoded up to {p.max_tokens} tokens, so a decoder stuck in a loop scores lower than in "
               "the full transcript above).</p>"
               if p.unpatched_wer is not None else "")  # fmt: skip
    verdict = matters + (f"<p class=facts><b>Cause: <code>{esc(p.cause)}</code></b>: substituting A's value there restores "
               f"{p.result(p.cause).restored:.0%} of B's output{_restores_text(p)}; no earlier patch does.</p>"
               if p.cause else "<p class=facts>No single patched op restores B's output: the error enters at several "
               "ops, or before the first patch point.</p>")  # fmt: skip
    return (verdict + _figure(plots.patching([r.op for r in p.results], [r.final_rel_l2 for r in p.results],
                                             p.unpatched_rel_l2, p.cause),
                              "Final error after patching each op", "Each bar: B re-run with A's activation substituted at "
                              "that op; the final op's relative L2 error against A. The dashed line is B unpatched.")
            + f"<table class=ops><thead><tr><th>patched op</th><th>final rel L2</th><th>restored</th><th>WER</th>"
            f"<th>transcript</th></tr></thead><tbody>{rows}</tbody></table>")  # fmt: skip


def _restores_text(p) -> str:
    r = p.result(p.cause)
    return "" if r.wer is None else f" and its transcript (WER {r.wer:.0%})"


def _network(c: Comparison) -> str:
    t = c.tolerance
    return (_figure(plots.divergence(c.table, c.first_divergence, t.min_cosine, t.max_rel_l2),
                    "Relative L2 error and 1 - cosine per op, log scale, with the error each op introduces",
                    "Lines: total error of B at each op. Green bars: the error the op itself introduces (recomputed "
                    "on B's own inputs); where the line is far above the bar, the error is inherited from earlier ops. "
                    "Dotted: the tolerance. Dashed red: the first divergent op.")
            + _figure(plots.statistics(c.table, c.first_divergence), "Mean and std of both sides per op",
                      "Where B's std or mean leaves A's, a normalisation or scale is wrong; where they agree while "
                      "the error above is large, the numbers only look right."))  # fmt: skip


def _up_close(c: Comparison, op: str, head: int | None) -> str:
    a, b = c.values(op)
    row = c.table.set_index("name").loc[op]
    layout = row["layout"] if isinstance(row["layout"], str) else None
    spec_layout = _layout(c, op)
    parts = [f"<p class=facts>cosine {row['cosine']:.6f} · rel L2 {row['rel_l2']:.3g} · introduced "
             f"{_num(row['introduced_rel_l2'])} · inherited {_num(row['inherited_rel_l2'])} · max |B - A| "
             f"{row['max_abs']:.3g} at {esc(row['max_abs_index'])} · std B/A {row['std_ratio']:.4f} · shape "
             f"{esc(tuple(a.shape))}" + (f" (B stored {esc(layout)})" if layout else "") + "</p>"]  # fmt: skip
    parts.append("<div class=row>" + _figure(plots.histograms(a, b, op), f"Value histograms of A and B at {op}",
                                             "Overlaid distributions; a shifted, squeezed or clipped B shows here.")
                 + "</div>")  # fmt: skip
    audio_steps = _audio_steps(c, a.shape, spec_layout)
    if spec_layout == "B,H,T_q,T_k":
        parts.append(_attention(c, op, head))
    else:
        err = np.abs(b.astype(np.float64) - a)
        err_tc = _as_time_channel(err, spec_layout)
        if err_tc is not None:
            parts.append(_figure(plots.error_heatmap(err_tc, op, audio_steps), f"Absolute error at {op}, time step x channel",
                                 "Bright columns: time steps that go wrong; bright rows: channels (a wrong weight row or bias)."))  # fmt: skip
    profile = c.profiles.get(op)
    if profile is not None and len(profile["step_rel_error"]) > 1:
        parts.append(_figure(plots.step_error(profile["step_rel_error"], profile["step_cosine"], op, audio_steps),
                             f"Error per time step at {op}",
                             "Flat: every step equally wrong. A slope or a jump at the end of the audio: positions or padding."))  # fmt: skip
    block = op.split(".")[1] if op.startswith("blocks.") else None
    weights = f"blocks.{block}.attn.weights" if block is not None else None
    if weights and weights != op and weights in c.views:
        parts.append(_attention(c, weights, head))
    elif weights and weights != op:
        parts.append(f"<p class=note>Attention probabilities of block {esc(block)} are not in both traces; trace with "
                     "<code>--taps all</code> to see them here.</p>")  # fmt: skip
    return "".join(parts)


def _attention(c: Comparison, op: str, head: int | None) -> str:
    a, b = c.values(op)
    n_head = a.shape[1]
    if head is None:  # the head where the two sides differ most
        head = int(np.argmax([np.abs(b[0, h].astype(np.float64) - a[0, h]).sum() for h in range(n_head)]))
    if not 0 <= head < n_head:
        raise WhisperdiffError(f"--head {head} is out of range: {op} has heads 0..{n_head - 1}")
    return _figure(plots.attention(np.asarray(a[0, head]), np.asarray(b[0, head]), op, head),
                   f"Attention probabilities of head {head} at {op}: A, B and their difference",
                   f"Head {head} of {n_head} (pick another with --head). A transposed or mis-scaled softmax shows as a "
                   "mirrored or blurred pattern.")  # fmt: skip


def _table(c: Comparison) -> str:
    t = c.tolerance
    head = ("<tr><th>#</th><th>op</th><th>status</th><th>cosine</th><th>worst step cos (step)</th><th>rel L2</th>"
            "<th>introduced</th><th>inherited</th><th>max |B-A| (at)</th><th>mean A</th><th>mean B</th><th>std A</th>"
            "<th>std B</th><th>std B/A</th><th>SNR dB</th><th>mismatch</th><th>NaN/Inf B</th><th>shape</th><th>fails</th></tr>")  # fmt: skip
    body = []
    for i, r in enumerate(c.table.to_dict("records")):
        introduces = r["diverged"] and not (r["introduced_rel_l2"] <= (t.max_rel_l2 or 0))  # NaN (no replay) counts
        cls = ("first" if r["name"] == c.first_divergence else "introduces" if introduces and r["status"] == "diverged"
               else r["status"].replace("_", "-"))  # fmt: skip
        failed = {part.split()[0] for part in (r["failures"] or "").split("; ") if part}
        bad_cos = "bad" if "cosine" in failed else ""
        bad_rel = "bad" if "rel_l2" in failed else ""
        bad_intro = "bad" if r["introduced_rel_l2"] > (t.max_rel_l2 or 0) else ""
        shape = r["a_shape"] if r["a_shape"] is not None and not _isnan(r["a_shape"]) else r["b_shape"]
        if r["status"] == "shape_mismatch":
            shape = f"A {r['a_shape']} / B {r['b_shape']}"
        cells = [str(i), f"<code>{esc(r['name'])}</code>" + (f" <small>(B: {esc(r['b_name'])})</small>"
                 if isinstance(r["b_name"], str) and r["b_name"] != r["name"] else ""),  # fmt: skip
                 esc(r["status"]), _td(_num(r["cosine"], ".6f"), bad_cos),
                 _num(r["worst_step_cosine"], ".5f") + (f" ({_int(r['worst_step'])})" if not _isnan(r["worst_step"]) else ""), _td(_num(r["rel_l2"]), bad_rel),
                 _td(_num(r["introduced_rel_l2"]), bad_intro), _num(r["inherited_rel_l2"]),
                 _num(r["max_abs"]) + (f" ({esc(r['max_abs_index'])})" if isinstance(r["max_abs_index"], (list, tuple)) else ""),
                 _num(r["mean_a"], ".4g"), _num(r["mean_b"], ".4g"), _num(r["std_a"], ".4g"), _num(r["std_b"], ".4g"),
                 _num(r["std_ratio"], ".4f"), _num(r["snr_db"], ".1f"), _num(r["mismatch_share"] * 100, ".2g") + ("%" if not _isnan(r["mismatch_share"]) else ""),
                 f"{_int(r['nan_b'])}/{_int(r['inf_b'])}", esc(shape), esc(r["failures"] or "")]  # fmt: skip
        body.append(f"<tr class='{cls}'>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in cells) + "</tr>")
    legend = ("<p class=legend><span class='swatch first'></span> first divergence <span class='swatch introduces'>"
              "</span> diverges and introduces error <span class='swatch diverged'></span> diverges, error inherited "
              "<span class='swatch missing-in-b'></span> missing or mismatched; red numbers are past the tolerance.</p>")  # fmt: skip
    top = c.table.dropna(subset=["introduced_rel_l2"]).nlargest(5, "introduced_rel_l2")
    top_html = ", ".join(f"<code>{esc(r['name'])}</code> {r['introduced_rel_l2']:.2g}" for r in top.to_dict("records"))
    return (legend + (f"<p>Ops that introduce the most error: {top_html}.</p>" if top_html else "")
            + f"<div class=scroll><table class=ops><thead>{head}</thead><tbody>{''.join(body)}</tbody></table></div>")


MANIFEST_FIELDS = [
    ("trace", lambda m, p: str(p)), ("implementation", lambda m, p: m.get("impl")),
    ("runner", lambda m, p: m.get("runner", {}).get("encoder")),
    ("device", lambda m, p: m.get("device")), ("dtype", lambda m, p: m.get("dtype")),
    ("threads", lambda m, p: m.get("runner", {}).get("threads")),
    ("model", lambda m, p: m.get("model", {}).get("id")), ("model source", lambda m, p: m.get("model", {}).get("source")),
    ("weights sha256", lambda m, p: m.get("model", {}).get("weights_sha256")),
    ("dims", lambda m, p: json.dumps(m.get("model", {}).get("dims"))),
    ("input", lambda m, p: m.get("input", {}).get("path")),
    ("input sha256", lambda m, p: m.get("input", {}).get("sha256")),
    ("duration s", lambda m, p: m.get("input", {}).get("duration_s")),
    ("window", lambda m, p: f"{m.get('input', {}).get('window')} of {m.get('input', {}).get('n_windows')}"),
    ("frontend", lambda m, p: m.get("input", {}).get("frontend")),
    ("log-mel sha256", lambda m, p: m.get("input", {}).get("mel_sha256")),
    ("taps", lambda m, p: m.get("taps")), ("ops", lambda m, p: len(m.get("ops", []))),
    ("injected bugs", lambda m, p: ", ".join(str(f.get("name")) for f in m.get("injected") or []) or "none"),
    ("versions", lambda m, p: ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items())),
    ("started", lambda m, p: m.get("run", {}).get("started")),
    ("run time s", lambda m, p: m.get("run", {}).get("total_seconds")),
    ("encoder s", lambda m, p: m.get("run", {}).get("encoder_seconds")),
    ("compile cache hit", lambda m, p: m.get("run", {}).get("compile_cache_hit")),
]  # fmt: skip


def _manifests(c: Comparison) -> str:
    rows = []
    for label, get in MANIFEST_FIELDS:
        va, vb = get(c.manifest_a, c.a), get(c.manifest_b, c.b)
        if va is None and vb is None:
            continue
        differs = label not in ("trace", "started", "run time s", "encoder s") and va != vb
        rows.append(f"<tr class='{'differs' if differs else ''}'><th>{esc(label)}</th><td>{esc(va)}</td>"
                    f"<td>{esc(vb)}</td></tr>")  # fmt: skip
    raw = "".join(f"<details><summary>full manifest of {side}</summary><pre>{esc(json.dumps(_short(m), indent=1))}</pre>"
                  "</details>" for side, m in (("A", c.manifest_a), ("B", c.manifest_b)))  # fmt: skip
    return ("<p>Highlighted rows differ between the runs.</p><table class=manifest><thead><tr><th></th><th>A (reference)"
            f"</th><th>B (candidate)</th></tr></thead><tbody>{''.join(rows)}</tbody></table>{raw}")  # fmt: skip


# -- helpers -------------------------------------------------------------------------------------
def _section(anchor: str, title: str, content: str, raw_title: bool = False) -> str:
    return f"<section id='{anchor}'><h2>{title if raw_title else esc(title)}</h2>{content}</section>"


def _figure(figure: tuple[str, bytes], alt: str, caption: str) -> str:
    mime, data = figure
    return (f"<figure><img alt='{esc(alt)}' src='data:{mime};base64,{base64.b64encode(data).decode()}'>"
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def _td(text: str, cls: str) -> str:
    return f"<td class='{cls}'>{text}</td>" if cls else text


def _isnan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _num(v, fmt: str = ".3g") -> str:
    return "" if v is None or _isnan(v) else format(v, fmt)


def _int(v) -> str:
    return "" if v is None or _isnan(v) else str(int(v))


def _layout(c: Comparison, op: str) -> str | None:
    from whisperdiff.analysis.compare import _specs

    return {s["name"]: s.get("layout") for s in _specs(c.manifest_a)}.get(op)


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


def _short(m: dict) -> dict:
    """A manifest without its long per-tensor lists (they are in the trace)."""
    out = {k: v for k, v in m.items() if k != "ops"}
    if "tensor_sha256" in out.get("model", {}):
        out["model"] = {**out["model"], "tensor_sha256": f"({len(out['model']['tensor_sha256'])} tensors)"}
    out["ops"] = f"({len(m.get('ops', []))} ops)"
    return out


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1400px;padding:0 18px 40px;color:#1b1b1b}
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
.scroll{overflow:auto;max-height:80vh;border:1px solid #ddd}
table.ops{border-collapse:collapse;font:12px ui-monospace,Menlo,Consolas,monospace;white-space:nowrap}
table.ops th{position:sticky;top:0;background:#fafafa;border-bottom:2px solid #ccc;padding:3px 6px;text-align:right}
table.ops td{padding:2px 6px;text-align:right;border-bottom:1px solid #f0f0f0} table.ops td:nth-child(2),table.ops td:nth-child(3){text-align:left}
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
