"""The corpus report: a whole sweep (experiments/sweep.py) as one self-contained HTML page.

    from whisperdiff.present.corpus_report import write_corpus_report
    write_corpus_report("sweeps/nightly")          # -> sweeps/nightly/report.html (+ reports/ per diverging job)

Top to bottom: the verdict per config; where divergence appears by clip property (duration, loudness,
silence share, padding share, window count), with the property that separates diverging from passing
jobs named; each op's error across clips; a histogram of first-divergence ops; clips ranked by their
worst divergence, each linking to its own report (written from the kept traces); WER across the corpus;
the jobs that failed. Same rules as `report`: Jinja2 with autoescape, figures as data: URIs, a
Content-Security-Policy that forbids scripts.
"""

from __future__ import annotations

import base64
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from markupsafe import Markup

from whisperdiff.errors import WhisperdiffError
from whisperdiff.experiments.sweep_table import by_property, load_records
from whisperdiff.inputs.corpus import PROPERTIES
from whisperdiff.present.report import CSP, STYLE, template
from whisperdiff.provenance import version
from whisperdiff.store.trace import write_text_atomic

RANKED = 40  # rows of the ranked table
JOB_REPORTS = 12  # per-job reports written (the worst kept jobs)
EXTRA_STYLE = """
.pass{color:#1a7f37} .diverged{color:#b42318;font-weight:600} .error{color:#9a6700;font-weight:600}
.depends{background:#fff4e5;border-left:4px solid #e8590c;padding:6px 10px;margin:8px 0}
.found{color:#1a7f37;font-weight:600} .missed{color:#b42318;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
"""


def _figure(fig, alt: str, caption: str) -> dict:
    import matplotlib.pyplot as plt

    from whisperdiff.present import plots

    mime, data = plots.render(fig, "svg", tight=True)  # pyplot figures: laid out by the tight crop
    plt.close(fig)
    return {"alt": alt, "caption": caption, "src": f"data:{mime};base64,{base64.b64encode(data).decode()}"}


def write_corpus_report(out: str | Path, path: str | Path | None = None, *, job_reports: int = JOB_REPORTS) -> Path:
    """Render the sweep in `out` (its records.jsonl) to `path` (default OUT/report.html); the worst
    `job_reports` diverging jobs whose traces were kept get their own report under OUT/reports/."""
    out = Path(out)
    frame = load_records(out)
    if frame.empty:
        raise WhisperdiffError(f"{out} has no job records yet; run the sweep first")
    path = Path(path) if path is not None else out / "report.html"
    links = _job_reports(frame, out, path.parent, job_reports)
    html = render(frame, out, links)
    write_text_atomic(path, html)
    return path


def render(frame, out: Path, links: dict[str, str] | None = None) -> str:
    from whisperdiff.capture.faults import get_faults

    links = links or {}
    ok = frame[frame["status"] != "error"]
    configs = []
    for key, rows in frame.groupby("config", sort=False):
        measured = rows[rows["status"] != "error"]
        inject = [f for f in str(rows["inject"].iloc[0] or "").split("+") if f]
        planted = get_faults(inject) if inject else []
        dependence = by_property(measured) if len(measured) else []
        best = [d for d in dependence if d["accuracy"] >= dependence[0]["accuracy"] - 1e-9] if dependence else []
        expected = [f.depends_on for f in planted if f.depends_on]
        configs.append(
            {
                "key": key,
                "jobs": len(rows),
                "passed": int((rows["status"] == "pass").sum()),
                "diverged": int((rows["status"] == "diverged").sum()),
                "errors": int((rows["status"] == "error").sum()),
                "tolerances": _first(measured, "tolerances"),
                "planted": [
                    {"name": f.name, "depends_on": f.depends_on, "description": f.description} for f in planted
                ],
                "dependence": [_dependence_text(d) for d in best],
                "found": [p for p in expected if any(d["property"] == p and d["accuracy"] >= 0.95 for d in best)],
                "expected": expected,
                "figure": _property_figure(measured, key, best[0]) if best else None,
                "mean_wer": _mean(measured.get("wer")),
            }
        )
    ranked = ok.assign(_worst=ok["worst_rel_l2"].astype(float).fillna(0.0)).sort_values("_worst", ascending=False)
    context = {
        "csp": Markup(CSP),
        "style": Markup(STYLE + EXTRA_STYLE),
        "out": str(out),
        "version": version("whisperdiff"),
        "now": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "a": _first(frame, "a"),
        "b": _first(frame, "b"),
        "n_clips": frame["clip"].nunique(),
        "n_jobs": len(frame),
        "configs": configs,
        "properties": list(PROPERTIES),
        "op_figures": [_op_errors_figure(rows, key) for key, rows in ok.groupby("config", sort=False)],
        "first_figure": _first_divergence_figure(ok),
        "wer_figure": _wer_figure(ok) if ok["wer"].notna().any() else None,
        "ranked": [_ranked_row(r, links) for r in ranked.head(RANKED).to_dict("records")],
        "worst_transcripts": [
            r
            for r in ranked.to_dict("records")
            if isinstance(r.get("wer"), float) and r["wer"] > 0 and r.get("transcript_a") is not None
        ][:8],
        "errors": frame[frame["status"] == "error"][["job_id", "error"]].to_dict("records"),
    }
    return template("corpus_report.html.j2").render(**context).lstrip()


def _first(frame, column: str):
    return frame[column].iloc[0] if column in frame and len(frame) else None


def _mean(series):
    if series is None:
        return None
    values = series.dropna().astype(float)
    return float(values.mean()) if len(values) else None


def _dependence_text(d: dict) -> dict:
    unit = f" {d['unit']}" if d["unit"] else ""
    return {
        **d,
        "text": f"{d['property']} {d['direction']} {d['threshold']:.3g}{unit}",
        "summary": f"balanced accuracy {d['accuracy']:.2f} over {d['diverged']} diverging and {d['passed']} passing jobs",
    }


def _ranked_row(r: dict, links: dict[str, str]) -> dict:
    props = {p: r.get(p) for p in PROPERTIES}
    return {
        "job": r["job_id"],
        "clip": r.get("clip_name") or Path(str(r["clip"])).name,
        "window": r.get("window"),
        "config": r.get("config"),
        "status": r.get("status"),
        "worst_op": r.get("worst_op"),
        "worst": _fmt(r.get("worst_rel_l2")),
        "first": r.get("first_divergence") or "",
        "finding": r.get("finding") or "",
        "wer": _fmt(r.get("wer"), "%.2f"),
        "props": ", ".join(f"{k} {_fmt(v, '%.3g')}" for k, v in props.items() if v is not None and v == v),
        "link": links.get(r["job_id"]),
    }


def _fmt(v, pattern: str = "%.2e") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return pattern % (float(v) + 0.0)  # + 0.0: no "-0"


def _job_reports(frame, out: Path, base: Path, limit: int) -> dict[str, str]:
    """Per-job reports for the worst diverging jobs whose traces were kept: job id -> relative link."""
    from whisperdiff.analysis.compare import compare
    from whisperdiff.measure.tolerances import SHIPPED, load_tolerances
    from whisperdiff.present.report import write_report

    kept = frame[(frame["status"] == "diverged") & frame["trace_b"].map(lambda v: isinstance(v, str) and v != "")]
    kept = kept.assign(_w=kept["worst_rel_l2"].astype(float).fillna(0.0)).sort_values("_w", ascending=False)
    links = {}
    for r in kept.head(limit).to_dict("records"):
        # Reading a sweep is inert like reading a trace: a record may only name traces inside the sweep's
        # own folder and the shipped tolerances, never another path (records.jsonl is just a file).
        a, b = _inside(out, r["trace_a"]), _inside(out, r["trace_b"])
        tolerances = r.get("tolerances") or "float32"
        if a is None or b is None or not (a.is_dir() and b.is_dir()) or tolerances not in SHIPPED:
            continue
        target = out / "reports" / f"{b.parent.name}.html"
        if not target.is_file():
            c = compare(a, b, tolerance=load_tolerances(tolerances))
            write_report(c, target)
        links[r["job_id"]] = str(Path("reports") / target.name) if base == out else str(target.resolve())
    return links


def _inside(out: Path, path) -> Path | None:
    """`path` (as the sweep recorded it) when it lies inside the sweep folder `out`, else None."""
    where = Path(str(path)).resolve()
    return where if where.is_relative_to(out.resolve()) else None


def _axes(width: float = 9.5, height: float = 3.4):
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def _property_figure(rows, key: str, best: dict) -> dict:
    prop = best["property"]
    fig, ax = _axes(8, 2.6)
    diverged = rows["status"] == "diverged"
    rng = np.random.default_rng(0)
    for mask, colour, name in ((~diverged, "#1a7f37", "within tolerance"), (diverged, "#b42318", "diverged")):
        values = rows.loc[mask, prop].astype(float)
        ax.scatter(
            values, rng.uniform(-0.3, 0.3, len(values)) + (1 if name == "diverged" else 0), s=22, c=colour, label=name
        )
    ax.axvline(best["threshold"], color="#e8590c", ls="--", lw=1.2, label=f"split at {best['threshold']:.3g}")
    ax.set_yticks([0, 1], ["within tolerance", "diverged"])
    ax.set_xlabel(f"{prop}" + (f" ({best['unit']})" if best["unit"] else ""))
    ax.set_title(f"{key}: each job by {prop}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _figure(
        fig,
        f"{key}: jobs by {prop}, diverged against within tolerance",
        f"Every job of {key}, placed by its clip's {prop}; the dashed line is the split that best separates "
        "diverging jobs from the others.",
    )


def _op_errors_figure(rows, key: str) -> dict:
    from whisperdiff.present.plots import label

    ops = list(next((o for o in rows["ops"] if isinstance(o, dict) and o), {}))
    data = [
        np.log10(
            np.maximum(
                [float((o.get(op) or {}).get("rel_l2") or 0.0) for o in rows["ops"] if isinstance(o, dict)], 1e-12
            )
        )
        for op in ops
    ]
    fig, ax = _axes(11, 3.6)
    if ops:
        ax.boxplot(data, showfliers=True, flierprops={"markersize": 3}, widths=0.6)
        ax.set_xticks(range(1, len(ops) + 1), [label(op) for op in ops], rotation=90, fontsize=6)
    ax.set_ylabel("log10 rel L2 (B vs A)")
    ax.set_title(f"{key}: each op's error across {len(rows)} jobs", fontsize=10)
    return _figure(
        fig,
        f"{key}: box plot of relative L2 error per op over all clips",
        f"{key}: per op (encoder order), the spread of B's relative L2 error against A over every clip window; "
        "whiskers 1.5 IQR, points beyond them are single clips. Exactly 0 is drawn at 1e-12.",
    )


def _first_divergence_figure(rows) -> dict:
    fig, ax = _axes(9.5, 2.8)
    first = rows[rows["first_divergence"].astype(str) != ""]
    if len(first):
        counts = first.groupby(["first_divergence", "config"]).size().unstack(fill_value=0)
        counts.plot.barh(stacked=True, ax=ax, width=0.7)
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no job diverged", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("jobs")
    ax.set_ylabel("")
    ax.set_title("Where jobs first diverge", fontsize=10)
    return _figure(
        fig,
        "Histogram of first-divergence ops, by config",
        "How many jobs first diverge at each op, per config; jobs within tolerance are not counted.",
    )


def _wer_figure(rows) -> dict:
    fig, ax = _axes(8, 2.6)
    groups = [(key, g["wer"].dropna().astype(float).to_numpy()) for key, g in rows.groupby("config", sort=False)]
    bins = np.linspace(0, max(1.0, max((g.max() for _, g in groups if len(g)), default=1.0)), 21)
    ax.hist([g for _, g in groups], bins=bins, label=[k for k, _ in groups], stacked=False)
    ax.set_yscale("symlog")
    ax.set_xlabel("WER of B's transcript against A's")
    ax.set_ylabel("jobs")
    ax.legend(fontsize=7)
    ax.set_title("WER across the corpus", fontsize=10)
    return _figure(
        fig,
        "Histogram of WER per job, by config",
        "B's transcript against A's per job (openai-whisper's decoder on each encoder's output); 0 is the same text.",
    )
